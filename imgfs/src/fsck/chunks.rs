//! Checks 4, 5 and 7 for chunks and packs: reference counts, every chunk read back and hashed,
//! pack records against their chunks and files, and pack files nothing owns.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::repair::Fix;
use super::{Checker, Problem, Refs};
use crate::error::Result;
use crate::ids::{ChunkDigest, PackId};
use crate::meta::key::{self, Base, Key};
use crate::records::{ChunkRecord, PackRecord};

/// The chunk and pack metadata, read once for checks 4, 5 and 7.
struct ChunkMeta {
    /// Chunk records per pack, in file order.
    by_pack: BTreeMap<PackId, Vec<(ChunkDigest, ChunkRecord)>>,
    /// Pack records; `None` for one that does not decode.
    records: BTreeMap<PackId, Option<PackRecord>>,
    /// Pack files on disk, with their lengths.
    files: BTreeMap<PackId, u64>,
    /// Whether every chunk and pack key, and every chunk record, decoded.
    known: bool,
    /// Chunks no extent names.
    orphans: HashSet<ChunkDigest>,
    /// Chunks only unfinished imports name: synced when the import commits, not before.
    importing_only: HashSet<ChunkDigest>,
}

impl Checker<'_> {
    /// Checks 4, 5 and 7 for chunks and packs: recomputed reference counts against the chunk
    /// records, every chunk read back and hashed, pack records against their chunks and files.
    pub(super) fn chunks_and_packs(&mut self) -> Result<()> {
        let mut cm = self.read_chunk_meta()?;
        // Chunk records are only changed when every reference is accounted for: a reference count
        // recomputed from extents that did not all decode could be short, and dropping a record
        // whose extent did not decode would lose a snapshot's data.
        let fixes = self.extents_known && cm.known;
        self.check_refs(&mut cm, fixes);
        let mut buf = Vec::new();
        for (&pack, list) in &cm.by_pack {
            self.check_pack_contents(&cm, pack, list, fixes, &mut buf)?;
        }
        self.check_pack_records(&cm, fixes);
        self.orphan_packs(&cm);
        Ok(())
    }

    fn read_chunk_meta(&mut self) -> Result<ChunkMeta> {
        let meta = self.meta;
        let packs = &self.store.packs();
        let mut cm = ChunkMeta {
            by_pack: BTreeMap::new(),
            records: BTreeMap::new(),
            files: packs.files()?.into_iter().collect(),
            known: true,
            orphans: HashSet::new(),
            importing_only: HashSet::new(),
        };
        let mut scan = meta.prefix(&[key::CHUNK]);
        while let Some((k, v)) = scan.next_entry()? {
            let Some(Key::Chunk(digest)) = Key::parse(k) else {
                self.bad_key(k);
                cm.known = false;
                continue;
            };
            match ChunkRecord::decode(v) {
                Ok(rec) => {
                    self.counts.chunks += 1;
                    cm.by_pack.entry(rec.pack).or_default().push((digest, rec));
                }
                Err(e) => {
                    cm.known = false;
                    self.problem(Problem::BadRecord {
                        what: format!("chunk record {digest}"),
                        reason: e.to_string(),
                    });
                }
            }
        }
        drop(scan);
        for list in cm.by_pack.values_mut() {
            list.sort_by_key(|(d, r)| (r.offset, *d));
        }
        let mut scan = meta.prefix(&[key::PACK]);
        while let Some((k, v)) = scan.next_entry()? {
            let Some(Key::Pack(id)) = Key::parse(k) else {
                self.bad_key(k);
                cm.known = false;
                continue;
            };
            self.counts.packs += 1;
            let rec = PackRecord::decode(v);
            if let Err(e) = &rec {
                self.problem(Problem::BadRecord {
                    what: format!("pack record of {}", packs.path(id).display()),
                    reason: e.to_string(),
                });
            }
            cm.records.insert(id, rec.ok());
        }
        Ok(cm)
    }

    /// Check 4: the reference count of every chunk record against the stored extents that name
    /// it; finds orphans and chunks named by extents but without a record.
    fn check_refs(&mut self, cm: &mut ChunkMeta, fixes: bool) {
        for (digest, rec) in cm.by_pack.values().flatten() {
            let digest = *digest;
            let Some(refs) = self.refs.remove(&digest) else {
                cm.orphans.insert(digest);
                continue;
            };
            if refs.importing_only {
                cm.importing_only.insert(digest);
            }
            if refs.count != rec.refs {
                let fixed = ChunkRecord {
                    refs: refs.count,
                    ..*rec
                };
                self.fixable(
                    Problem::RefsMismatch {
                        digest,
                        stored: rec.refs,
                        actual: refs.count,
                    },
                    fixes.then(|| Fix::Put {
                        key: key::chunk(&digest),
                        value: fixed.encode(),
                    }),
                );
            }
            let (snap, data, index, len) = refs.first;
            if len != rec.len {
                self.problem(Problem::ExtentLenMismatch {
                    digest,
                    chunk: rec.len,
                    extent: len,
                    first: Base::Extent { data, index }.to_string(),
                    snapshot: self.name_of(snap),
                });
            }
        }
        let mut missing: Vec<(ChunkDigest, Refs)> = self.refs.drain().collect();
        missing.sort_by_key(|(d, _)| *d);
        for (digest, refs) in missing {
            let (snap, data, index, _) = refs.first;
            let snapshot = self.name_of(snap);
            self.problem(Problem::MissingChunk {
                digest,
                refs: refs.count,
                first: Base::Extent { data, index }.to_string(),
                snapshot,
            });
        }
    }

    /// Checks 5 and 4 for the chunks of one pack (`list`, in file order): each lies in the synced
    /// part of a recorded pack file and hashes to its digest; orphans get a fix that frees their
    /// bytes only where nothing else lies.
    fn check_pack_contents(
        &mut self,
        cm: &ChunkMeta,
        pack: PackId,
        list: &[(ChunkDigest, ChunkRecord)],
        fixes: bool,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let path = self.store.packs().path(pack);
        let n = list.len() as u64;
        let record = cm.records.get(&pack).copied();
        if record.is_none() {
            self.problem(Problem::MissingPackRecord {
                path: path.clone(),
                chunks: n,
            });
        }
        let synced = record.flatten().map(|r| r.synced_len);
        let exists = cm.files.contains_key(&pack);
        if !exists {
            self.problem(Problem::MissingPackFile {
                path: path.clone(),
                chunks: n,
            });
        }
        // Orphans that this repair drops are not judged: a report about a record that no longer
        // exists would only mislead.
        let dropped = |d: &ChunkDigest| self.repair && fixes && cm.orphans.contains(d);
        let judged: Vec<(ChunkDigest, ChunkRecord)> =
            list.iter().filter(|(d, _)| !dropped(d)).copied().collect();
        if let Some(synced) = synced {
            for (digest, rec) in &judged {
                if rec.offset.saturating_add(rec.len as u64) > synced
                    && !cm.importing_only.contains(digest)
                {
                    self.problem(Problem::ChunkPastSynced {
                        digest: *digest,
                        path: path.clone(),
                        offset: rec.offset,
                        len: rec.len,
                        synced,
                    });
                }
            }
        }
        if exists {
            self.verify_pack(&path, &judged, buf)?;
        }

        let kept: Vec<(u64, u64)> = list
            .iter()
            .filter(|(d, _)| !cm.orphans.contains(d))
            .map(|(_, r)| (r.offset, r.offset + r.len as u64))
            .collect();
        // Running maximum of the kept chunks' ends, so an overlap test is one binary search.
        let max_end: Vec<u64> = kept
            .iter()
            .scan(0, |m, &(_, e)| {
                *m = (*m).max(e);
                Some(*m)
            })
            .collect();
        for (digest, rec) in list.iter().filter(|(d, _)| cm.orphans.contains(d)) {
            let (start, end) = (rec.offset, rec.offset + rec.len as u64);
            let before = kept.partition_point(|&(s, _)| s < end);
            let shared = before > 0 && max_end[before - 1] > start;
            let punch = exists && !shared && synced.is_some_and(|s| end <= s);
            self.fixable(
                Problem::OrphanChunk {
                    digest: *digest,
                    path: path.clone(),
                },
                fixes.then(|| Fix::DropChunk {
                    rec: *rec,
                    key: key::chunk(digest),
                    punch,
                }),
            );
        }
        Ok(())
    }

    /// Check 7 for pack records: live bytes match their chunk records, and files hold every byte
    /// that was synced.
    fn check_pack_records(&mut self, cm: &ChunkMeta, fixes: bool) {
        for (&pack, record) in &cm.records {
            let Some(record) = record else { continue };
            let path = self.store.packs().path(pack);
            let list = cm.by_pack.get(&pack).map_or(&[][..], Vec::as_slice);
            let all: u64 = list.iter().map(|(_, r)| r.len as u64).sum();
            let kept: u64 = list
                .iter()
                .filter(|(d, _)| !cm.orphans.contains(d))
                .map(|(_, r)| r.len as u64)
                .sum();
            // With repair, orphans lose their records in the same batch, so the count written
            // is what the kept chunks hold.
            let fix = fixes.then(|| Fix::Put {
                key: key::pack(pack),
                value: PackRecord {
                    live_bytes: kept,
                    ..*record
                }
                .encode(),
            });
            if record.live_bytes != all {
                self.fixable(
                    Problem::LiveBytesMismatch {
                        path: path.clone(),
                        recorded: record.live_bytes,
                        actual: all,
                    },
                    fix,
                );
            } else if kept != all {
                self.extra.extend(fix);
            }
            if let Some(&len) = cm.files.get(&pack)
                && len < record.synced_len
            {
                self.problem(Problem::PackTruncated {
                    path,
                    len,
                    synced: record.synced_len,
                });
            }
        }
    }

    /// Check 7 for pack files: each has a record. A file that chunk records point into is never
    /// an orphan, record or not; and while some chunk or pack key does not decode, no file is.
    fn orphan_packs(&mut self, cm: &ChunkMeta) {
        for &pack in cm.files.keys() {
            if cm.records.contains_key(&pack) || cm.by_pack.contains_key(&pack) {
                continue;
            }
            self.fixable(
                Problem::OrphanPack {
                    path: self.store.packs().path(pack),
                },
                cm.known.then_some(Fix::RemovePack(pack)),
            );
        }
    }

    /// Check 5: reads every chunk of one pack with plain reads (not the store's memory map, where
    /// a pack shorter than a record says would fault instead of failing) and hashes it.
    fn verify_pack(
        &mut self,
        path: &Path,
        list: &[(ChunkDigest, ChunkRecord)],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                for (digest, rec) in list {
                    self.problem(Problem::ChunkUnreadable {
                        digest: *digest,
                        path: path.to_path_buf(),
                        offset: rec.offset,
                        len: rec.len,
                        reason: e.to_string(),
                    });
                }
                return Ok(());
            }
        };
        for (digest, rec) in list {
            buf.resize(rec.len as usize, 0);
            let unreadable = |reason: String| Problem::ChunkUnreadable {
                digest: *digest,
                path: path.to_path_buf(),
                offset: rec.offset,
                len: rec.len,
                reason,
            };
            if let Err(e) = file.read_exact_at(buf, rec.offset) {
                let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "the pack file ends before it".to_string()
                } else {
                    e.to_string()
                };
                self.problem(unreadable(reason));
                continue;
            }
            self.counts.bytes_verified += rec.len as u64;
            let actual = ChunkDigest::of(buf);
            if actual != *digest {
                self.problem(Problem::DigestMismatch {
                    digest: *digest,
                    path: path.to_path_buf(),
                    offset: rec.offset,
                    len: rec.len,
                    actual,
                });
            }
        }
        Ok(())
    }
}
