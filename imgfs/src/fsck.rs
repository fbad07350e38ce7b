//! fsck: checks a store's metadata against the invariants of its key schema and every stored chunk
//! against its digest, and repairs what it can prove is miscounted or referenced by nothing.
//!
//! Repair never deletes or rewrites anything a snapshot refers to: it fixes reference counts and
//! live-byte counts, drops chunk records no extent names, and removes pack files and scratch
//! directories nothing owns. Corrupt chunks, dangling entries and broken snapshot records are only
//! reported, because the data they stand for cannot be recreated here and deleting it would turn
//! a readable-but-damaged snapshot into a lost one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ids::{ChunkDigest, DataId, Ino, PackId, SnapshotId};
use crate::meta::key::{Base, Key};
use crate::meta::{Batch, Chain, MetaDb, key};
use crate::records::{
    ChunkRecord, Dentry, Extent, FileKind, Inode, PackRecord, SnapshotKind, SnapshotRecord,
};
use crate::store::Store;

/// What a check found and, with repair, what it fixed.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// What is wrong with the store now: everything found, less what repair fixed.
    pub problems: Vec<Problem>,
    /// What repair fixed (empty unless repair was asked for).
    pub repaired: Vec<Problem>,
    /// How much the check looked at.
    pub counts: Counts,
}

impl Report {
    /// True if nothing is wrong (after repair, if repair was asked for).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.repaired {
            writeln!(f, "repaired: {p}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        let c = &self.counts;
        write!(
            f,
            "{} snapshots, {} inode versions, {} entry versions, {} extent versions, \
             {} chunks in {} packs, {} bytes verified: {} problems, {} repaired",
            c.snapshots,
            c.inode_versions,
            c.dentry_versions,
            c.extent_versions,
            c.chunks,
            c.packs,
            c.bytes_verified,
            self.problems.len(),
            self.repaired.len()
        )
    }
}

/// How many objects of each kind a check examined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub snapshots: u64,
    pub inode_versions: u64,
    pub dentry_versions: u64,
    pub extent_versions: u64,
    pub change_keys: u64,
    pub chunks: u64,
    pub packs: u64,
    /// Chunk bytes read back from the packs and hashed.
    pub bytes_verified: u64,
}

/// One thing wrong with a store. Each message names the object: a snapshot by its name (or
/// `#id` when it has no readable record), an inode by number, a chunk by digest, a pack or
/// scratch directory by path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("snapshot record {id} does not decode: {reason}")]
    BadSnapshotRecord { id: SnapshotId, reason: String },
    #[error("snapshot record stored under id {key} says its id is {id} (snapshot {snapshot})")]
    SnapshotIdMismatch {
        key: SnapshotId,
        id: SnapshotId,
        snapshot: String,
    },
    #[error("snapshot {snapshot}: parent {parent} does not exist")]
    MissingParent {
        snapshot: String,
        parent: SnapshotId,
    },
    #[error("snapshot {snapshot}: parent {parent} is not older than it")]
    ParentNotOlder { snapshot: String, parent: String },
    #[error("snapshot {snapshot}: parent {parent} is {kind:?}, not committed")]
    ParentNotCommitted {
        snapshot: String,
        parent: String,
        kind: SnapshotKind,
    },
    #[error("snapshot {snapshot}: depth is {depth}, expected {expected}")]
    WrongDepth {
        snapshot: String,
        depth: u32,
        expected: u32,
    },
    #[error("snapshot {snapshot}: its name is missing from the name index")]
    NameNotIndexed { snapshot: String },
    #[error(
        "snapshot {snapshot} (id {id}): the name index sends its name to snapshot id {points_to}"
    )]
    NameIndexedElsewhere {
        snapshot: String,
        id: SnapshotId,
        points_to: SnapshotId,
    },
    #[error("name {name:?} points at snapshot {id}, which does not exist")]
    DanglingName { name: String, id: SnapshotId },
    #[error("name {name:?} points at snapshot {id}, which is named {actual:?}")]
    NameMismatch {
        name: String,
        id: SnapshotId,
        actual: String,
    },
    #[error(
        "snapshot {snapshot}: an import that never finished (opening the store for writing rolls it back)"
    )]
    UnfinishedImport { snapshot: String },
    #[error("snapshot {snapshot}: has no root directory")]
    MissingRoot { snapshot: String },
    #[error(
        "ids up to {max} are in use but the id high-water mark is {next_id}: new ids would collide"
    )]
    IdPastHighWater { max: u64, next_id: u64 },
    #[error("malformed key {key} in the {table} table")]
    BadKey { table: &'static str, key: String },
    #[error("{what} does not decode: {reason}")]
    BadRecord { what: String, reason: String },
    #[error("{what} in snapshot {snapshot} does not decode: {reason}")]
    BadValue {
        what: String,
        snapshot: String,
        reason: String,
    },
    #[error("{what} belongs to snapshot {snapshot}, which has no record")]
    UnknownSnapshot { what: String, snapshot: SnapshotId },
    #[error("{what} in snapshot {snapshot} is missing from the change index")]
    MissingChange { what: String, snapshot: String },
    #[error("change index of snapshot {snapshot} lists {what}, which does not exist")]
    StaleChange { what: String, snapshot: String },
    #[error("snapshot {snapshot}: {what} refers to inode {ino}, which the snapshot cannot see")]
    DanglingEntry {
        snapshot: String,
        what: String,
        ino: Ino,
    },
    #[error("snapshot {snapshot}: {what} says {entry:?} but inode {ino} is a {inode:?}")]
    EntryKindMismatch {
        snapshot: String,
        what: String,
        ino: Ino,
        entry: FileKind,
        inode: FileKind,
    },
    #[error(
        "snapshot {snapshot} is {kind:?} but its {what} is dirty (not hashed into the chunk store)"
    )]
    DirtyOutsideActive {
        snapshot: String,
        kind: SnapshotKind,
        what: String,
    },
    #[error("snapshot {snapshot}: {what} is dirty but its scratch file {path} is missing")]
    MissingScratch {
        snapshot: String,
        what: String,
        path: PathBuf,
    },
    #[error(
        "chunk {digest} is named by {refs} extent versions (first: {first} in snapshot {snapshot}) but has no record"
    )]
    MissingChunk {
        digest: ChunkDigest,
        refs: u64,
        first: String,
        snapshot: String,
    },
    #[error(
        "chunk {digest}: its record counts {stored} references but {actual} extent versions name it"
    )]
    RefsMismatch {
        digest: ChunkDigest,
        stored: u64,
        actual: u64,
    },
    #[error("chunk {digest} in {path}: no extent names it")]
    OrphanChunk { digest: ChunkDigest, path: PathBuf },
    #[error("chunk {digest} is {chunk} bytes but {first} in snapshot {snapshot} says {extent}")]
    ExtentLenMismatch {
        digest: ChunkDigest,
        chunk: u32,
        extent: u32,
        first: String,
        snapshot: String,
    },
    #[error("chunk {digest} at {path}:{offset}+{len} lies past the {synced} bytes synced there")]
    ChunkPastSynced {
        digest: ChunkDigest,
        path: PathBuf,
        offset: u64,
        len: u32,
        synced: u64,
    },
    #[error("chunk {digest} at {path}:{offset}+{len} cannot be read: {reason}")]
    ChunkUnreadable {
        digest: ChunkDigest,
        path: PathBuf,
        offset: u64,
        len: u32,
        reason: String,
    },
    #[error("chunk {digest} at {path}:{offset}+{len} is corrupt: its bytes hash to {actual}")]
    DigestMismatch {
        digest: ChunkDigest,
        path: PathBuf,
        offset: u64,
        len: u32,
        actual: ChunkDigest,
    },
    #[error("pack file {path} is missing but {chunks} chunk records point into it")]
    MissingPackFile { path: PathBuf, chunks: u64 },
    #[error(
        "pack file {path} has {chunks} chunk records pointing into it but no pack record (opening the store for writing would delete it)"
    )]
    MissingPackRecord { path: PathBuf, chunks: u64 },
    #[error("pack file {path} is {len} bytes but its record says {synced} were synced")]
    PackTruncated {
        path: PathBuf,
        len: u64,
        synced: u64,
    },
    #[error(
        "pack file {path}: its record counts {recorded} live bytes, its chunk records {actual}"
    )]
    LiveBytesMismatch {
        path: PathBuf,
        recorded: u64,
        actual: u64,
    },
    #[error("pack file {path} has no pack record and no chunk record points into it")]
    OrphanPack { path: PathBuf },
    #[error("snapshot {snapshot}: inode {ino} names object pack {pack}, but {reason}")]
    BadObject {
        snapshot: String,
        ino: Ino,
        pack: u32,
        reason: String,
    },
    #[error("scratch directory {path} belongs to no snapshot")]
    OrphanScratch { path: PathBuf },
    #[error(
        "scratch directory {path} belongs to snapshot {snapshot}, which is {kind:?} and keeps no dirty data"
    )]
    StaleScratch {
        path: PathBuf,
        snapshot: String,
        kind: SnapshotKind,
    },
}

/// Checks `store` and, with `repair`, fixes what can be fixed without touching data a snapshot
/// refers to (see the module docs). Repair needs a store opened for writing.
///
/// The check holds the store's chunk lock throughout, so commits, removals and new snapshots in
/// this process wait for it and reference counts cannot move under it. File operations on trees
/// open for writing do not take that lock: their changes in flight can show up as problems, so
/// check a store whose active snapshots are idle. A read-only store sees the metadata as of its
/// open while a writer in another process may since have freed chunks; confirm a digest mismatch
/// found that way with the writer stopped.
pub fn check(store: &Store, repair: bool) -> Result<Report> {
    if repair && store.is_read_only() {
        return Err(Error::NotPermitted(format!(
            "repair of store {} opened read-only",
            store.root().display()
        )));
    }
    let _g = store.chunks().lock();
    let mut c = Checker::new(store, repair);
    c.snapshots()?;
    c.versioned()?;
    c.objects()?;
    c.changes()?;
    c.high_water()?;
    c.chunks_and_packs()?;
    c.scratch()?;
    c.finish()
}

fn table_name(tag: u8) -> &'static str {
    match tag {
        key::SNAPSHOT => "snapshot",
        key::NAME => "name",
        key::INODE => "inode",
        key::DENTRY => "dentry",
        key::EXTENT => "extent",
        key::CHUNK => "chunk",
        key::PACK => "pack",
        key::CHANGE => "change index",
        _ => "unknown",
    }
}

/// The stored-extent versions that name one chunk.
struct Refs {
    count: u64,
    /// The first extent seen, to name in reports: its snapshot, data id, index and length.
    first: (SnapshotId, DataId, u64, u32),
    /// True while every reference comes from an unfinished import, whose chunks are synced only
    /// when it commits.
    importing_only: bool,
}

/// A repair, applied only when repair was asked for.
enum Fix {
    /// A put in the repair batch.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deleting a chunk record no extent names (in the batch). `punch` says whether its bytes can
    /// be freed too: only when they lie in the synced part of a recorded pack and no other chunk
    /// record shares them.
    DropChunk {
        rec: ChunkRecord,
        key: Vec<u8>,
        punch: bool,
    },
    RemovePack(PackId),
    RemoveScratch(PathBuf),
}

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

struct Checker<'a> {
    store: &'a Store,
    repair: bool,
    meta: &'a MetaDb,
    counts: Counts,
    /// Problems in the order found, each with its fix if it has one that is safe to apply.
    found: Vec<(Problem, Option<Fix>)>,
    /// Fixes that belong to another fix and are not problems of their own.
    extra: Vec<Fix>,
    snapshots: BTreeMap<SnapshotId, SnapshotRecord>,
    chains: HashMap<SnapshotId, Chain>,
    refs: HashMap<ChunkDigest, Refs>,
    /// Whether every snapshot record decoded: otherwise a scratch directory may belong to the
    /// snapshot that did not, and repair leaves scratch directories alone.
    snapshots_known: bool,
    /// Whether every extent key and value decoded: otherwise the recomputed reference counts may
    /// be short, and repair leaves chunk records alone.
    extents_known: bool,
    max_id: u64,
    /// Inode versions that name an object pack: (snapshot, inode, data, size, pack).
    objects: Vec<(SnapshotId, Ino, Option<DataId>, u64, PackId)>,
}

impl<'a> Checker<'a> {
    fn new(store: &'a Store, repair: bool) -> Checker<'a> {
        Checker {
            store,
            repair,
            meta: store.meta(),
            counts: Counts::default(),
            found: Vec::new(),
            extra: Vec::new(),
            snapshots: BTreeMap::new(),
            chains: HashMap::new(),
            refs: HashMap::new(),
            snapshots_known: true,
            extents_known: true,
            max_id: 0,
            objects: Vec::new(),
        }
    }

    fn problem(&mut self, p: Problem) {
        self.found.push((p, None));
    }

    fn fixable(&mut self, p: Problem, fix: Option<Fix>) {
        self.found.push((p, fix));
    }

    fn bad_key(&mut self, k: &[u8]) {
        let table = table_name(k.first().copied().unwrap_or(0));
        self.problem(Problem::BadKey {
            table,
            key: hex::encode(k),
        });
    }

    fn note_id(&mut self, id: u64) {
        self.max_id = self.max_id.max(id);
    }

    /// The snapshot's name for reports, or `#id` if it has no readable record.
    fn name_of(&self, id: SnapshotId) -> String {
        self.snapshots
            .get(&id)
            .map_or_else(|| format!("#{id}"), |r| r.name.clone())
    }

    /// Check 1: snapshot records, their parents and depths, and the name index in both directions.
    fn snapshots(&mut self) -> Result<()> {
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

    /// Checks 2, 3 and 6, and the reference counting half of 4: every inode, dentry and extent
    /// version decodes, belongs to a snapshot, is in its change index; entries lead to inodes the
    /// snapshot sees; dirty extents are in active snapshots and have their scratch file.
    fn versioned(&mut self) -> Result<()> {
        let meta = self.meta;
        let mut scratch_seen: HashMap<(SnapshotId, DataId), bool> = HashMap::new();
        for tag in [key::INODE, key::DENTRY, key::EXTENT] {
            let mut scan = meta.prefix(&[tag]);
            while let Some((k, v)) = scan.next_entry()? {
                let Some(Key::Version { base: parsed, snap }) = Key::parse(k) else {
                    self.bad_key(k);
                    if tag == key::EXTENT {
                        self.extents_known = false;
                    }
                    continue;
                };
                if !self.snapshots.contains_key(&snap) {
                    self.problem(Problem::UnknownSnapshot {
                        what: parsed.to_string(),
                        snapshot: snap,
                    });
                }
                if meta.get(&parsed.change(snap))?.is_none() {
                    self.problem(Problem::MissingChange {
                        what: parsed.to_string(),
                        snapshot: self.name_of(snap),
                    });
                }
                match parsed {
                    Base::Inode(ino) => {
                        self.counts.inode_versions += 1;
                        self.note_id(ino.0);
                        match Inode::decode(v) {
                            Ok(inode) => {
                                self.note_id(inode.data.map_or(0, |d| d.0));
                                if let Some(pack) = inode.object {
                                    self.objects.push((snap, ino, inode.data, inode.size, pack));
                                }
                            }
                            Err(e) => self.bad_value(snap, &parsed, e),
                        }
                    }
                    Base::Dentry { dir, .. } => {
                        self.counts.dentry_versions += 1;
                        self.note_id(dir.0);
                        match Dentry::decode(v) {
                            Ok(Dentry::Entry { ino, kind }) => {
                                self.note_id(ino.0);
                                self.check_entry(snap, &parsed, ino, kind)?;
                            }
                            Ok(Dentry::Deleted) => {}
                            Err(e) => self.bad_value(snap, &parsed, e),
                        }
                    }
                    Base::Extent { data, index } => {
                        self.counts.extent_versions += 1;
                        self.note_id(data.0);
                        match Extent::decode(v) {
                            Ok(Extent::Stored { digest, len }) => {
                                let importing = self
                                    .snapshots
                                    .get(&snap)
                                    .is_some_and(|r| r.kind == SnapshotKind::Importing);
                                let refs = self.refs.entry(digest).or_insert(Refs {
                                    count: 0,
                                    first: (snap, data, index, len),
                                    importing_only: true,
                                });
                                refs.count += 1;
                                refs.importing_only &= importing;
                            }
                            Ok(Extent::Dirty { .. }) => {
                                self.check_dirty(snap, &parsed, data, &mut scratch_seen)
                            }
                            Ok(Extent::Zero) => {}
                            Err(e) => {
                                self.extents_known = false;
                                self.bad_value(snap, &parsed, e);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Check 7: an inode version that names an object pack sees its whole content there, each
    /// stored chunk at its own offset and zeros where the file has zero chunks, and the pack is
    /// exactly the file's size.
    fn objects(&mut self) -> Result<()> {
        let cs = self.store.chunk_size() as u64;
        for (snap, ino, data, size, pack) in std::mem::take(&mut self.objects) {
            let mut bad = |reason: String| {
                self.found.push((
                    Problem::BadObject {
                        snapshot: self
                            .snapshots
                            .get(&snap)
                            .map_or_else(|| format!("#{snap}"), |r| r.name.clone()),
                        ino,
                        pack: pack.0,
                        reason,
                    },
                    None,
                ))
            };
            let rec = match self.meta.get(&key::pack(pack))? {
                Some(v) => PackRecord::decode(&v).ok(),
                None => None,
            };
            let Some(rec) = rec else {
                bad("the pack has no readable record".into());
                continue;
            };
            if !rec.object {
                bad("the pack is not an object pack".into());
                continue;
            }
            let committed = self
                .snapshots
                .get(&snap)
                .is_some_and(|r| r.kind == SnapshotKind::Committed);
            if committed && rec.synced_len != size {
                bad(format!(
                    "the pack is {} bytes, the file {size}",
                    rec.synced_len
                ));
                continue;
            }
            let (Some(data), Some(chain)) = (data, self.chains.get(&snap)) else {
                continue;
            };
            let Ok(file) = self.store.packs().open_file(pack) else {
                bad("the pack file cannot be opened".into());
                continue;
            };
            let mut wrong = None;
            let mut buf = vec![0u8; cs as usize];
            self.meta.visible_range(
                &key::data_prefix(data),
                &key::extent_base(data, 0),
                chain,
                |base, _, v| {
                    let Some(Base::Extent { index, .. }) = Base::parse(base) else {
                        wrong = Some(format!("extent key {} does not decode", hex::encode(base)));
                        return Ok(false);
                    };
                    let at = match Extent::decode(v)? {
                        // A zero chunk must be zeros (a hole) in the pack too.
                        Extent::Zero => {
                            let n = cs.min(size.saturating_sub(index * cs)) as usize;
                            let zero = std::os::unix::fs::FileExt::read_exact_at(
                                &file,
                                &mut buf[..n],
                                index * cs,
                            )
                            .is_ok_and(|()| buf[..n].iter().all(|&b| b == 0));
                            if !zero {
                                wrong = Some(format!("chunk {index} is zeros, the pack's is not"));
                            }
                            return Ok(zero);
                        }
                        Extent::Dirty { .. } => None,
                        Extent::Stored { digest, .. } => self
                            .meta
                            .get(&key::chunk(&digest))?
                            .and_then(|v| ChunkRecord::decode(&v).ok())
                            .map(|c| (c.pack, c.offset)),
                    };
                    if at != Some((pack, index * cs)) {
                        wrong = Some(format!("chunk {index} is elsewhere ({at:?})"));
                        return Ok(false);
                    }
                    Ok(true)
                },
            )?;
            if let Some(reason) = wrong {
                bad(reason);
            }
        }
        Ok(())
    }

    fn bad_value(&mut self, snap: SnapshotId, what: &Base, e: Error) {
        self.problem(Problem::BadValue {
            what: what.to_string(),
            snapshot: self.name_of(snap),
            reason: e.to_string(),
        });
    }

    /// Check 3: the inode an entry names has a version visible from the entry's snapshot.
    fn check_entry(
        &mut self,
        snap: SnapshotId,
        what: &Base,
        ino: Ino,
        kind: FileKind,
    ) -> Result<()> {
        let Some(chain) = self.chains.get(&snap) else {
            // The snapshot has no record (reported): there is no chain to look through.
            return Ok(());
        };
        match self.meta.visible(&key::inode_base(ino), chain)? {
            None => self.problem(Problem::DanglingEntry {
                snapshot: self.name_of(snap),
                what: what.to_string(),
                ino,
            }),
            // An inode version that does not decode is reported by the inode scan.
            Some((_, v)) => {
                if let Ok(inode) = Inode::decode(&v)
                    && inode.kind != kind
                {
                    self.problem(Problem::EntryKindMismatch {
                        snapshot: self.name_of(snap),
                        what: what.to_string(),
                        ino,
                        entry: kind,
                        inode: inode.kind,
                    });
                }
            }
        }
        Ok(())
    }

    /// Check 6. Importing snapshots may hold dirty extents too: they are writable trees like
    /// active ones, and an unfinished import is already reported on its own.
    fn check_dirty(
        &mut self,
        snap: SnapshotId,
        what: &Base,
        data: DataId,
        seen: &mut HashMap<(SnapshotId, DataId), bool>,
    ) {
        let Some(kind) = self.snapshots.get(&snap).map(|r| r.kind) else {
            return;
        };
        if !matches!(kind, SnapshotKind::Active | SnapshotKind::Importing) {
            self.problem(Problem::DirtyOutsideActive {
                snapshot: self.name_of(snap),
                kind,
                what: what.to_string(),
            });
            return;
        }
        let path = self.store.scratch_path(snap);
        let exists = *seen.entry((snap, data)).or_insert_with(|| path.is_file());
        if !exists {
            self.problem(Problem::MissingScratch {
                snapshot: self.name_of(snap),
                what: what.to_string(),
                path,
            });
        }
    }

    /// The other half of check 2: every change index key has its versioned key. Together with
    /// `versioned`, which looked up the change key of every versioned key, this makes the two a
    /// one-to-one match.
    fn changes(&mut self) -> Result<()> {
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
    fn high_water(&mut self) -> Result<()> {
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

    /// Checks 4, 5 and 7 for chunks and packs: recomputed reference counts against the chunk
    /// records, every chunk read back and hashed, pack records against their chunks and files.
    fn chunks_and_packs(&mut self) -> Result<()> {
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

    /// Check 7 for scratch space: a file per active snapshot, nothing else.
    fn scratch(&mut self) -> Result<()> {
        let dir = self.store.root().join("scratch");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut entries = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
            entries.push(entry.path());
        }
        entries.sort();
        for path in entries {
            let owner = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .and_then(|id| self.snapshots.get(&SnapshotId(id)));
            let problem = match owner {
                None => Problem::OrphanScratch { path: path.clone() },
                Some(rec) if matches!(rec.kind, SnapshotKind::Committed | SnapshotKind::View) => {
                    Problem::StaleScratch {
                        path: path.clone(),
                        snapshot: rec.name.clone(),
                        kind: rec.kind,
                    }
                }
                Some(_) => continue,
            };
            let fix = self.snapshots_known.then_some(Fix::RemoveScratch(path));
            self.fixable(problem, fix);
        }
        Ok(())
    }

    /// Applies the fixes (with `repair`) and sorts the problems into fixed and remaining. The
    /// metadata fixes go in one synced batch before any file is removed or punched, so a crash
    /// part-way leaves records that still describe every byte on disk.
    fn finish(self) -> Result<Report> {
        let mut report = Report {
            counts: self.counts,
            ..Report::default()
        };
        if !self.repair {
            report.problems = self.found.into_iter().map(|(p, _)| p).collect();
            return Ok(report);
        }
        let store = self.store;
        let mut batch = Batch::default();
        let mut release = Vec::new();
        for fix in self
            .found
            .iter()
            .filter_map(|(_, f)| f.as_ref())
            .chain(&self.extra)
        {
            match fix {
                Fix::Put { key, value } => batch.put(key, value),
                Fix::DropChunk { rec, key, punch } => {
                    batch.delete(key);
                    if *punch {
                        release.push(*rec);
                    }
                }
                Fix::RemovePack(_) | Fix::RemoveScratch(_) => {}
            }
        }
        if !batch.is_empty() {
            tracing::warn!(writes = batch.len(), "fsck: repairing metadata");
            store.meta().write(batch, true)?;
        }
        store.chunks().release_chunks(&release)?;
        for (problem, fix) in self.found {
            let done = match &fix {
                None => false,
                Some(Fix::Put { .. } | Fix::DropChunk { .. }) => true,
                Some(Fix::RemovePack(pack)) => store.packs().remove_pack(*pack)?,
                Some(Fix::RemoveScratch(path)) => {
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(path)
                    } else {
                        std::fs::remove_file(path)
                    };
                    match removed {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "fsck: cannot remove scratch space");
                            false
                        }
                    }
                }
            };
            if done {
                tracing::info!(%problem, "fsck: repaired");
                report.repaired.push(problem);
            } else {
                report.problems.push(problem);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
