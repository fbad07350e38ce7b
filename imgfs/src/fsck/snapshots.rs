//! Check 1 and the second half of check 2: snapshot records, their parents and depths, the name
//! index in both directions, every change index key against its versioned key, and the id
//! high-water mark.

use super::{Checker, Problem};
use crate::error::{Error, Result};
use crate::ids::{Ino, SnapshotId};
use crate::meta::Chain;
use crate::meta::key::{self, Key};
use crate::records::{SnapshotKind, SnapshotRecord};

impl Checker<'_> {
    /// Check 1: snapshot records, their parents and depths, and the name index in both directions.
    pub(super) fn snapshots(&mut self) -> Result<()> {
        let meta = self.meta;
        let mut scan = meta.prefix(&[key::SNAPSHOT]);
        while let Some((k, v)) = scan.next_entry()? {
            let Some(Key::Snapshot(id)) = Key::parse(k) else {
                self.bad_key(k);
                self.snapshots_known = false;
                continue;
            };
            self.note_id(id.0);
            match SnapshotRecord::decode(v) {
                Err(e) => {
                    self.snapshots_known = false;
                    self.problem(Problem::BadSnapshotRecord {
                        id,
                        reason: e.to_string(),
                    });
                }
                Ok(rec) if rec.id != id => {
                    self.snapshots_known = false;
                    self.problem(Problem::SnapshotIdMismatch {
                        key: id,
                        id: rec.id,
                        snapshot: rec.name,
                    });
                }
                Ok(rec) => {
                    self.snapshots.insert(id, rec);
                }
            }
        }
        drop(scan);
        self.counts.snapshots = self.snapshots.len() as u64;

        let records: Vec<SnapshotRecord> = self.snapshots.values().cloned().collect();
        for rec in &records {
            if rec.kind == SnapshotKind::Importing {
                self.problem(Problem::UnfinishedImport {
                    snapshot: rec.name.clone(),
                });
            }
            match rec.parent {
                None if rec.depth != 0 => self.problem(Problem::WrongDepth {
                    snapshot: rec.name.clone(),
                    depth: rec.depth,
                    expected: 0,
                }),
                None => {}
                Some(p) => match self.snapshots.get(&p).cloned() {
                    None => self.problem(Problem::MissingParent {
                        snapshot: rec.name.clone(),
                        parent: p,
                    }),
                    Some(parent) => {
                        if p >= rec.id {
                            self.problem(Problem::ParentNotOlder {
                                snapshot: rec.name.clone(),
                                parent: parent.name.clone(),
                            });
                        }
                        if parent.kind != SnapshotKind::Committed {
                            self.problem(Problem::ParentNotCommitted {
                                snapshot: rec.name.clone(),
                                parent: parent.name.clone(),
                                kind: parent.kind,
                            });
                        }
                        if rec.depth != parent.depth.wrapping_add(1) {
                            self.problem(Problem::WrongDepth {
                                snapshot: rec.name.clone(),
                                depth: rec.depth,
                                expected: parent.depth.wrapping_add(1),
                            });
                        }
                    }
                },
            }
            // A name entry that does not decode is reported by the name scan below.
            match meta.get(&key::name(&rec.name))? {
                None => self.problem(Problem::NameNotIndexed {
                    snapshot: rec.name.clone(),
                }),
                Some(v) if v.len() == 8 && key::read_u64(&v) != rec.id.0 => {
                    self.problem(Problem::NameIndexedElsewhere {
                        snapshot: rec.name.clone(),
                        id: rec.id,
                        points_to: SnapshotId(key::read_u64(&v)),
                    })
                }
                Some(_) => {}
            }
            self.chains.insert(rec.id, self.chain_of(rec));
        }

        let mut scan = meta.prefix(&[key::NAME]);
        while let Some((k, v)) = scan.next_entry()? {
            let Some(Key::Name(name)) = Key::parse(k) else {
                self.bad_key(k);
                continue;
            };
            let name = String::from_utf8_lossy(&name).into_owned();
            if v.len() != 8 {
                self.problem(Problem::BadRecord {
                    what: format!("name index entry {name:?}"),
                    reason: format!("{} bytes, expected 8", v.len()),
                });
                continue;
            }
            let id = SnapshotId(key::read_u64(v));
            match self.snapshots.get(&id) {
                None => self.problem(Problem::DanglingName { name, id }),
                Some(rec) if rec.name != name => {
                    let actual = rec.name.clone();
                    self.problem(Problem::NameMismatch { name, id, actual })
                }
                Some(_) => {}
            }
        }
        drop(scan);

        for rec in &records {
            let chain = &self.chains[&rec.id];
            if meta.visible(&key::inode_base(Ino::ROOT), chain)?.is_none() {
                self.problem(Problem::MissingRoot {
                    snapshot: rec.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The snapshot and its ancestors, built from the records read so far rather than with
    /// `Store::chain`, which fails on the first broken link: a chain that stops at a missing or
    /// out-of-order parent (reported above) still lets the rest of the check run.
    fn chain_of(&self, rec: &SnapshotRecord) -> Chain {
        let mut ids = vec![rec.id];
        let mut parent = rec.parent;
        while let Some(p) = parent {
            if p >= *ids.last().expect("not empty") {
                break;
            }
            let Some(prec) = self.snapshots.get(&p) else {
                break;
            };
            ids.push(p);
            parent = prec.parent;
        }
        Chain::new(ids)
    }

    /// The other half of check 2: every change index key has its versioned key. Together with
    /// `versioned`, which looked up the change key of every versioned key, this makes the two a
    /// one-to-one match.
    pub(super) fn changes(&mut self) -> Result<()> {
        let meta = self.meta;
        let mut scan = meta.prefix(&[key::CHANGE]);
        while let Some((k, _)) = scan.next_entry()? {
            self.counts.change_keys += 1;
            let Some(Key::Change { snap, base: parsed }) = Key::parse(k) else {
                self.bad_key(k);
                continue;
            };
            if meta.get(&parsed.versioned(snap))?.is_none() {
                self.problem(Problem::StaleChange {
                    what: parsed.to_string(),
                    snapshot: self.name_of(snap),
                });
            }
        }
        Ok(())
    }

    /// Ids are handed out below the high-water mark in the metadata; an id in use at or above it
    /// would be handed out again after the next open.
    pub(super) fn high_water(&mut self) -> Result<()> {
        let next_id = self
            .meta
            .get(&key::meta("next_id"))?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| Error::Corrupt("missing or malformed next_id".into()))?;
        if self.max_id >= next_id {
            self.problem(Problem::IdPastHighWater {
                max: self.max_id,
                next_id,
            });
        }
        Ok(())
    }
}
