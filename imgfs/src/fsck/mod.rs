//! fsck: checks a store's metadata against the invariants of its key schema and every stored chunk
//! against its digest, and repairs what it can prove is miscounted or referenced by nothing.
//!
//! Repair never deletes or rewrites anything a snapshot refers to: it fixes reference counts and
//! live-byte counts, drops chunk records no extent names, and removes pack files and scratch
//! directories nothing owns. Corrupt chunks, dangling entries and broken snapshot records are only
//! reported, because the data they stand for cannot be recreated here and deleting it would turn
//! a readable-but-damaged snapshot into a lost one.
//!
//! `check` runs the checks in order, one family per file: `snapshots` (snapshot records, the name
//! index, the change index, the id high-water mark), `versioned` (inode, dentry and extent
//! versions), `objects` (object packs), `chunks` (chunk records, pack records and pack files,
//! every chunk's digest) and `scratch` (scratch space); `repair` applies the fixes they collect.

mod chunks;
mod objects;
mod repair;
mod scratch;
mod snapshots;
mod versioned;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use self::repair::Fix;
use crate::error::{Error, Result};
use crate::ids::{ChunkDigest, DataId, Ino, PackId, SnapshotId};
use crate::meta::key::Base;
use crate::meta::{Chain, MetaDb, key};
use crate::records::{FileKind, SnapshotKind, SnapshotRecord};
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

    /// True if something is wrong and all of it is what a killed writer leaves, which opening
    /// the store for writing puts right (`Problem::needs_recovery`).
    pub fn needs_recovery(&self) -> bool {
        !self.problems.is_empty() && self.problems.iter().all(Problem::needs_recovery)
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

impl Problem {
    /// Whether this is what a writer killed half-way leaves and the recovery at
    /// `Store::open` undoes: an import that never finished, a pack file it started whose record
    /// was never written. A store opened read-only (fsck without repair) sees them as they are.
    pub fn needs_recovery(&self) -> bool {
        matches!(
            self,
            Problem::UnfinishedImport { .. }
                | Problem::MissingPackRecord { .. }
                | Problem::OrphanPack { .. }
        )
    }
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

    fn bad_value(&mut self, snap: SnapshotId, what: &Base, e: Error) {
        self.problem(Problem::BadValue {
            what: what.to_string(),
            snapshot: self.name_of(snap),
            reason: e.to_string(),
        });
    }
}

#[cfg(test)]
mod tests;
