//! The metadata database: the key schema and the only module that imports rocksdb.
//!
//! Keys are a one-byte table tag followed by big-endian fields, so that rocksdb's byte order is
//! the order the store needs. Versioned tables (inodes, dentries, extents) end their keys with
//! the bitwise-inverted snapshot id, so the newest version of a key sorts first and one seek finds
//! the nearest version visible from a snapshot, however deep its chain (docs/imgfs-format.md).

use std::path::Path;

use rocksdb::{DB, DBRawIteratorWithThreadMode, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::error::{Error, Result};
use crate::ids::{ChunkDigest, DataId, Ino, PackId, SnapshotId};
use crate::space::{FREEING_ROOM, META_SLACK, Space};

/// Builders for every key the store writes, and `Key::parse`, which decodes them.
pub mod key {
    use super::*;

    pub const META: u8 = b'M';
    pub const SNAPSHOT: u8 = b'N';
    pub const NAME: u8 = b'K';
    pub const INODE: u8 = b'I';
    pub const DENTRY: u8 = b'D';
    pub const EXTENT: u8 = b'E';
    pub const CHUNK: u8 = b'C';
    pub const PACK: u8 = b'P';
    pub const CHANGE: u8 = b'X';

    fn with_tag(tag: u8, cap: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(cap);
        k.push(tag);
        k
    }

    pub fn meta(name: &str) -> Vec<u8> {
        let mut k = with_tag(META, 1 + name.len());
        k.extend_from_slice(name.as_bytes());
        k
    }

    pub fn snapshot(id: SnapshotId) -> Vec<u8> {
        let mut k = with_tag(SNAPSHOT, 9);
        k.extend_from_slice(&id.0.to_be_bytes());
        k
    }

    pub fn name(name: &str) -> Vec<u8> {
        let mut k = with_tag(NAME, 1 + name.len());
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// `I ino` — the unversioned part of an inode key.
    pub fn inode_base(ino: Ino) -> Vec<u8> {
        let mut k = with_tag(INODE, 17);
        k.extend_from_slice(&ino.0.to_be_bytes());
        k
    }

    /// `D dir name 0x00` — the unversioned part of a directory entry key. Names never contain
    /// NUL, so the separator keeps the versions of "a" apart from those of "ab".
    pub fn dentry_base(dir: Ino, name: &[u8]) -> Vec<u8> {
        let mut k = with_tag(DENTRY, 18 + name.len());
        k.extend_from_slice(&dir.0.to_be_bytes());
        k.extend_from_slice(name);
        k.push(0);
        k
    }

    /// `D dir` — every entry version of one directory.
    pub fn dir_prefix(dir: Ino) -> Vec<u8> {
        let mut k = with_tag(DENTRY, 9);
        k.extend_from_slice(&dir.0.to_be_bytes());
        k
    }

    /// `E data index` — the unversioned part of an extent key.
    pub fn extent_base(data: DataId, index: u64) -> Vec<u8> {
        let mut k = with_tag(EXTENT, 25);
        k.extend_from_slice(&data.0.to_be_bytes());
        k.extend_from_slice(&index.to_be_bytes());
        k
    }

    /// `E data` — every extent version of one file content.
    pub fn data_prefix(data: DataId) -> Vec<u8> {
        let mut k = with_tag(EXTENT, 9);
        k.extend_from_slice(&data.0.to_be_bytes());
        k
    }

    pub fn chunk(digest: &ChunkDigest) -> Vec<u8> {
        let mut k = with_tag(CHUNK, 33);
        k.extend_from_slice(&digest.0);
        k
    }

    pub fn pack(pack: PackId) -> Vec<u8> {
        let mut k = with_tag(PACK, 5);
        k.extend_from_slice(&pack.0.to_be_bytes());
        k
    }

    /// Appends the version suffix (inverted snapshot id) to an unversioned key.
    pub fn versioned(base: &[u8], snap: SnapshotId) -> Vec<u8> {
        let mut k = Vec::with_capacity(base.len() + 8);
        k.extend_from_slice(base);
        k.extend_from_slice(&(!snap.0).to_be_bytes());
        k
    }

    /// A key greater than every version of `base` and smaller than any other base's keys: where a
    /// scan resumes to skip the remaining versions of `base`.
    pub fn after_versions(base: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(base.len() + 9);
        k.extend_from_slice(base);
        k.extend_from_slice(&[0xff; 9]);
        k
    }

    /// Splits a versioned key into its unversioned part and snapshot id.
    pub fn split_version(key: &[u8]) -> (&[u8], SnapshotId) {
        let (base, v) = key.split_at(key.len() - 8);
        (
            base,
            SnapshotId(!u64::from_be_bytes(v.try_into().expect("8 bytes"))),
        )
    }

    /// `X snap base` — the change index: one key per versioned key a snapshot wrote, so its
    /// own changes can be listed (diff, export, remove, usage) without touching anything else.
    pub fn change(snap: SnapshotId, base: &[u8]) -> Vec<u8> {
        let mut k = with_tag(CHANGE, 9 + base.len());
        k.extend_from_slice(&snap.0.to_be_bytes());
        k.extend_from_slice(base);
        k
    }

    pub fn change_prefix(snap: SnapshotId) -> Vec<u8> {
        let mut k = with_tag(CHANGE, 9);
        k.extend_from_slice(&snap.0.to_be_bytes());
        k
    }

    pub fn read_u64(b: &[u8]) -> u64 {
        u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
    }

    /// Any key of the store, decoded: what the builders above encode. The one place that reads
    /// fields out of a key's bytes.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Key {
        /// `M name`: a store setting.
        Meta(Vec<u8>),
        /// `N snap`: a snapshot record.
        Snapshot(SnapshotId),
        /// `K name`: the name index.
        Name(Vec<u8>),
        /// `base !snap`: the version of an inode, entry or extent that `snap` wrote.
        Version { base: Base, snap: SnapshotId },
        /// `C digest`: a chunk record.
        Chunk(ChunkDigest),
        /// `P pack`: a pack record.
        Pack(PackId),
        /// `X snap base`: the change index.
        Change { snap: SnapshotId, base: Base },
    }

    impl Key {
        /// Decodes a whole key; `None` if it is not one the store writes.
        pub fn parse(k: &[u8]) -> Option<Key> {
            let (&tag, rest) = k.split_first()?;
            match tag {
                META => Some(Key::Meta(rest.to_vec())),
                SNAPSHOT => Some(Key::Snapshot(SnapshotId(u64::from_be_bytes(
                    rest.try_into().ok()?,
                )))),
                NAME => Some(Key::Name(rest.to_vec())),
                INODE | DENTRY | EXTENT if k.len() > 8 => {
                    let (base, snap) = split_version(k);
                    Some(Key::Version {
                        base: Base::parse(base)?,
                        snap,
                    })
                }
                CHUNK => Some(Key::Chunk(ChunkDigest(rest.try_into().ok()?))),
                PACK => Some(Key::Pack(PackId(u32::from_be_bytes(rest.try_into().ok()?)))),
                CHANGE if k.len() > 9 => {
                    let (snap, base) = rest.split_at(8);
                    Some(Key::Change {
                        snap: SnapshotId(read_u64(snap)),
                        base: Base::parse(base)?,
                    })
                }
                _ => None,
            }
        }
    }

    /// The unversioned part of an inode, directory entry or extent key, decoded.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Base {
        /// `I ino`.
        Inode(Ino),
        /// `D dir name 0x00`.
        Dentry { dir: Ino, name: Vec<u8> },
        /// `E data index`.
        Extent { data: DataId, index: u64 },
    }

    impl Base {
        /// Decodes the unversioned part of a key; `None` if it is not one the store writes.
        pub fn parse(base: &[u8]) -> Option<Base> {
            match *base.first()? {
                INODE if base.len() == 9 => Some(Base::Inode(Ino(read_u64(&base[1..])))),
                EXTENT if base.len() == 17 => Some(Base::Extent {
                    data: DataId(read_u64(&base[1..])),
                    index: read_u64(&base[9..]),
                }),
                DENTRY
                    if base.len() >= 11
                        && base[base.len() - 1] == 0
                        && !base[9..base.len() - 1].contains(&0) =>
                {
                    Some(Base::Dentry {
                        dir: Ino(read_u64(&base[1..])),
                        name: base[9..base.len() - 1].to_vec(),
                    })
                }
                _ => None,
            }
        }

        /// The key's bytes: `parse` undone.
        pub fn encode(&self) -> Vec<u8> {
            match self {
                Base::Inode(ino) => inode_base(*ino),
                Base::Dentry { dir, name } => dentry_base(*dir, name),
                Base::Extent { data, index } => extent_base(*data, *index),
            }
        }

        /// The key of the version `snap` wrote.
        pub fn versioned(&self, snap: SnapshotId) -> Vec<u8> {
            versioned(&self.encode(), snap)
        }

        /// The key of this base in `snap`'s change index.
        pub fn change(&self, snap: SnapshotId) -> Vec<u8> {
            change(snap, &self.encode())
        }
    }

    impl std::fmt::Display for Base {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Base::Inode(ino) => write!(f, "inode {ino}"),
                Base::Dentry { dir, name } => write!(
                    f,
                    "entry {:?} in directory {dir}",
                    String::from_utf8_lossy(name)
                ),
                Base::Extent { data, index } => write!(f, "chunk {index} of data {}", data.0),
            }
        }
    }
}

/// The smallest key greater than every key that starts with `prefix` (an iteration bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn db_err(e: rocksdb::Error) -> Error {
    let msg = e.into_string();
    if msg.contains("No space left on device") || msg.contains("NoSpace") {
        return Error::NoSpace(format!("writing the metadata database ({msg})"));
    }
    Error::Db(msg)
}

/// The bytes of the write-ahead logs in the database directory `path`: what the next flush
/// (or the next open, which replays them into a table) writes.
fn wal_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// How long `MetaDb::check_space` trusts its last listing of the write-ahead logs.
const LOGS_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// The metadata database of one store.
pub struct MetaDb {
    db: DB,
    path: std::path::PathBuf,
    /// When the write-ahead logs were last measured, and their bytes then.
    logs: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
    read_only: bool,
    /// The free space of the database's file system: every write checks it first
    /// (`crate::space`).
    space: Space,
    /// How many times `sync_wal` ran: what tells tests that a volatile mount's fsync stops
    /// short of the disk.
    log_syncs: std::sync::atomic::AtomicU64,
}

/// Write-ahead logs past which a writer's clean close turns them into a table. Below that the
/// next open replays them quickly; above, every open until a flush pays for it (a read-only one
/// again each time): 0.18 s for the 7 MiB a build installing python3 leaves, 0.77 s after one
/// installing build-essential, and every img command opens the store.
const FLUSH_AT_CLOSE: u64 = 1 << 20;

impl Drop for MetaDb {
    /// A writer flushes what its logs hold into a table as it closes, when that is worth it
    /// and the disk has room for it (a flush that cannot finish must not start:
    /// `crate::space`). Nothing is lost without the flush: the next open replays the logs.
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        let logs = wal_bytes(&self.path);
        if logs < FLUSH_AT_CLOSE {
            return;
        }
        if self
            .space
            .take(logs.saturating_mul(2), META_SLACK, String::new)
            .is_err()
        {
            return;
        }
        let mut wait = rocksdb::FlushOptions::default();
        wait.set_wait(true);
        if let Err(e) = self.db.flush_opt(&wait) {
            tracing::debug!(
                "flushing the metadata logs of {} at close: {e}",
                self.path.display()
            );
        }
    }
}

/// A group of writes applied atomically.
#[derive(Default)]
pub struct Batch {
    inner: WriteBatch,
}

impl Batch {
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.inner.put(key, value);
    }
    pub fn delete(&mut self, key: &[u8]) {
        self.inner.delete(key);
    }
    pub fn len(&self) -> usize {
        self.inner.len()
    }
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// Turns off rocksdb's per-thread perf counters for the calling thread, once. Their default
/// level counts every key comparison through a thread-local in the shared library: a third of
/// the CPU of the operations `tar -x` makes per file (`examples/opmix.rs`: 111 -> 73 µs per file),
/// most of it inside memtable inserts. img reads none of them.
fn no_perf_counts() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    DONE.with(|done| {
        if !done.get() {
            rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
            done.set(true);
        }
    });
}

impl MetaDb {
    fn options() -> Options {
        let mut opts = Options::default();
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // Buffer the write-ahead log in memory between syncs: unsynced batches (file operations
        // on active snapshots, import progress) then cost no write(2) each. Synced batches
        // (commit, remove) still reach the disk before they return. A killed process loses
        // its last unsynced batches, which only ever belong to active or importing snapshots.
        opts.set_manual_wal_flush(true);
        // Every open starts a new info log and keeps the old one; the default of 1000 old logs
        // (~25 KB each) would be a store's largest metadata on a small file system.
        opts.set_keep_log_file_num(4);
        // rocksdb 7.8 aborts when it appends to its info log after an append to it failed
        // (`EnvLogger`, the same assertion as its other files), and the info log is the one file
        // it writes on its own, at any time (closing, flushing, compacting). At the error
        // level it writes only the header at open (which `space_to_open` makes room for) and
        // errors, so a disk that something else filled cannot abort an idle store.
        opts.set_log_level(rocksdb::LogLevel::Error);
        // Each open starts a manifest and fallocates 4 MiB for it by default: on a full disk,
        // the room that `rm` needs to record what it frees. A manifest holds a few KiB.
        opts.set_manifest_preallocation_size(64 << 10);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(256 << 20));
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
        opts
    }

    /// Creates a new, empty database; fails if one exists.
    pub fn create(path: &Path) -> Result<MetaDb> {
        let mut opts = Self::options();
        opts.create_if_missing(true);
        opts.set_error_if_exists(true);
        let space = Self::space_to_open(path, "creating")?;
        Ok(MetaDb {
            db: DB::open(&opts, path).map_err(db_err)?,
            path: path.to_path_buf(),
            logs: Default::default(),
            read_only: false,
            space,
            log_syncs: Default::default(),
        })
    }

    /// A writer's open writes a manifest, an options file, a log and the recovered write-ahead
    /// log's table: refused on a file system without `META_SLACK` free, as rocksdb would abort.
    fn space_to_open(path: &Path, doing: &str) -> Result<Space> {
        let dir = path
            .ancestors()
            .find(|p| p.is_dir())
            .unwrap_or(Path::new("/"));
        let space = Space::new(dir);
        space.take(wal_bytes(path), META_SLACK, || {
            format!("{doing} the metadata database {}", path.display())
        })?;
        Ok(space)
    }

    /// Opens an existing database. A read-only open sees the state as of the open and does not
    /// need the writer's lock, so it works while a writer is running.
    pub fn open(path: &Path, read_only: bool) -> Result<MetaDb> {
        let opts = Self::options();
        let (db, space) = if read_only {
            (DB::open_for_read_only(&opts, path, false), Space::new(path))
        } else {
            let space = Self::space_to_open(path, "opening")?;
            (DB::open(&opts, path), space)
        };
        Ok(MetaDb {
            db: db.map_err(db_err)?,
            path: path.to_path_buf(),
            logs: Default::default(),
            read_only,
            space,
            log_syncs: Default::default(),
        })
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        no_perf_counts();
        Ok(self.db.get_pinned(key).map_err(db_err)?.map(|v| v.to_vec()))
    }

    /// Fails with `Error::NoSpace` unless `bytes` more of write-ahead log and as much again
    /// for the table a flush makes of them, the next flush of what the logs hold already,
    /// `META_SLACK` and `keep` fit on the file system: rocksdb must never start a write that
    /// cannot finish (`crate::space`). The logs' size, not the memtables' (whose arena blocks
    /// count megabytes for a few records), is what a flush writes; it is read again every
    /// `LOGS_RECHECK`, and what grows meanwhile is the batches counted here.
    fn check_space(&self, bytes: u64, keep: u64, doing: impl FnOnce() -> String) -> Result<()> {
        let logs = {
            let mut logs = self.logs.lock().expect("poisoned");
            if logs.0.is_none_or(|at| at.elapsed() >= LOGS_RECHECK) {
                *logs = (Some(std::time::Instant::now()), wal_bytes(&self.path));
            }
            logs.1
        };
        self.space
            .take(bytes.saturating_mul(2), keep + logs + META_SLACK, doing)
    }

    /// Applies a batch atomically. With `sync`, the write-ahead log is fsynced before returning:
    /// the batch survives power loss. Without, it survives a killed process (the log is written
    /// to the page cache) but not a crash of the machine.
    ///
    /// It fails with `Error::NoSpace`, writing nothing, unless `FREEING_ROOM` stays free after
    /// it for the writes that free space (`write_to_free`).
    pub fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        self.write_keeping(batch, sync, FREEING_ROOM)
    }

    /// `write` for a batch that lets space be freed (removing a snapshot, rolling an import
    /// back, fsck's repairs): it may use the `FREEING_ROOM` that other writes leave.
    pub fn write_to_free(&self, batch: Batch, sync: bool) -> Result<()> {
        self.write_keeping(batch, sync, 0)
    }

    fn write_keeping(&self, batch: Batch, sync: bool, keep: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("store opened read-only".into()));
        }
        no_perf_counts();
        // An empty batch only syncs the log (what is in it has been counted already).
        if !batch.is_empty() {
            self.check_space(batch.inner.size_in_bytes() as u64, keep, || {
                format!("writing {} metadata records", batch.len())
            })?;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch.inner, &wo).map_err(db_err)
    }

    /// Hands the buffered write-ahead log to the kernel without syncing it: what was written so
    /// far survives a killed process and is seen by read-only opens.
    pub fn flush_wal(&self) -> Result<()> {
        self.db.flush_wal(false).map_err(db_err)
    }

    /// Makes every batch written so far durable.
    pub fn sync_wal(&self) -> Result<()> {
        self.log_syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.db.flush_wal(true).map_err(db_err)
    }

    /// How many times `sync_wal` ran in this process.
    pub fn log_syncs(&self) -> u64 {
        self.log_syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Iterates over the keys that start with `prefix`, from the first key >= `start`.
    pub fn scan(&self, prefix: &[u8], start: &[u8]) -> Scan<'_> {
        no_perf_counts();
        let mut ro = ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(if start > prefix { start } else { prefix });
        Scan {
            it,
            prefix: prefix.to_vec(),
            started: false,
        }
    }

    /// Iterates over every key that starts with `prefix`.
    pub fn prefix(&self, prefix: &[u8]) -> Scan<'_> {
        self.scan(prefix, prefix)
    }

    /// The change index of `snap`: the unversioned key of every version it wrote, in key order.
    /// A key there that does not decode is an error (fsck reports it).
    pub fn changes(&self, snap: SnapshotId) -> Changes<'_> {
        Changes {
            scan: self.prefix(&key::change_prefix(snap)),
            snap,
        }
    }

    /// The newest version of `base` that is visible from `chain`: one seek to the head's
    /// version. Versions written outside the chain (siblings, descendants) are stepped over a few
    /// at a time, then jumped over with a seek to the next chain id below them, so the cost is
    /// bounded by the chain's depth however many siblings wrote the key.
    pub fn visible(&self, base: &[u8], chain: &Chain) -> Result<Option<(SnapshotId, Vec<u8>)>> {
        let start = key::versioned(base, chain.head());
        let mut scan = self.scan(base, &start);
        let mut strays = 0;
        while let Some((k, v)) = scan.next_entry()? {
            if k.len() != base.len() + 8 {
                continue;
            }
            let (_, snap) = key::split_version(k);
            if chain.contains(snap) {
                return Ok(Some((snap, v.to_vec())));
            }
            strays += 1;
            if strays >= STRAY_STEPS {
                match chain.next_below(snap) {
                    Some(id) => scan.seek(&key::versioned(base, id)),
                    None => return Ok(None),
                }
            }
        }
        Ok(None)
    }

    /// Calls `f(base, snapshot, value)` for each distinct unversioned key under `prefix` (from
    /// `start` on), in key order, with its version visible from `chain`; keys with no visible
    /// version are left out. Stops when `f` returns false. One range scan: versions outside the
    /// chain and those older than the visible one are stepped over, then skipped with a seek, as
    /// in `visible`.
    pub fn visible_range(
        &self,
        prefix: &[u8],
        start: &[u8],
        chain: &Chain,
        mut f: impl FnMut(&[u8], SnapshotId, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut scan = self.scan(prefix, start);
        let mut current: Vec<u8> = Vec::new();
        let mut decided = false;
        let mut strays = 0;
        while let Some((k, v)) = scan.next_entry()? {
            let (base, snap) = key::split_version(k);
            if base != current.as_slice() {
                current.clear();
                current.extend_from_slice(base);
                decided = false;
                strays = 0;
            }
            if !decided && chain.contains(snap) {
                decided = true;
                if !f(base, snap, v)? {
                    return Ok(());
                }
                continue;
            }
            strays += 1;
            if strays >= STRAY_STEPS {
                let target = match (decided, chain.next_below(snap)) {
                    (false, Some(id)) => key::versioned(&current, id),
                    _ => key::after_versions(&current),
                };
                scan.seek(&target);
                strays = 0;
            }
        }
        Ok(())
    }
}

/// How many versions from outside a chain a scan steps over one by one before it seeks past the
/// rest: a step is much cheaper than a seek, and most keys have one or two versions.
pub const STRAY_STEPS: usize = 4;

/// A bounded forward iterator over a key range.
pub struct Scan<'a> {
    it: DBRawIteratorWithThreadMode<'a, DB>,
    prefix: Vec<u8>,
    started: bool,
}

impl Scan<'_> {
    /// The next key and value, borrowed until the next call.
    pub fn next_entry(&mut self) -> Result<Option<(&[u8], &[u8])>> {
        if self.started {
            self.it.next();
        }
        self.started = true;
        if !self.it.valid() {
            self.it.status().map_err(db_err)?;
            return Ok(None);
        }
        let k = self.it.key().expect("valid iterator has a key");
        if !k.starts_with(&self.prefix) {
            return Ok(None);
        }
        Ok(Some((
            k,
            self.it.value().expect("valid iterator has a value"),
        )))
    }

    /// Moves to the first key >= `target` (within the same prefix).
    pub fn seek(&mut self, target: &[u8]) {
        self.it.seek(target);
        self.started = false;
    }
}

/// One snapshot's change index (`MetaDb::changes`).
pub struct Changes<'a> {
    scan: Scan<'a>,
    snap: SnapshotId,
}

impl Iterator for Changes<'_> {
    type Item = Result<key::Base>;

    fn next(&mut self) -> Option<Result<key::Base>> {
        let k = match self.scan.next_entry() {
            Ok(Some((k, _))) => k,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(match key::Key::parse(k) {
            Some(key::Key::Change { snap, base }) if snap == self.snap => Ok(base),
            _ => Err(Error::Corrupt(format!(
                "change index key {} does not decode",
                hex::encode(k)
            ))),
        })
    }
}

/// A snapshot and its ancestors, newest first: the versions a snapshot can see.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Strictly decreasing, because a child's id is larger than its parent's.
    ids: Vec<SnapshotId>,
}

impl Chain {
    pub fn new(ids: Vec<SnapshotId>) -> Chain {
        debug_assert!(ids.windows(2).all(|w| w[0] > w[1]));
        Chain { ids }
    }

    pub fn head(&self) -> SnapshotId {
        self.ids[0]
    }

    pub fn contains(&self, id: SnapshotId) -> bool {
        self.ids.binary_search_by(|x| id.cmp(x)).is_ok()
    }

    /// The newest snapshot of the chain older than `id`.
    pub fn next_below(&self, id: SnapshotId) -> Option<SnapshotId> {
        let i = self.ids.partition_point(|x| *x >= id);
        self.ids.get(i).copied()
    }

    /// The chain without its head: what the parent sees.
    pub fn parent(&self) -> Option<Chain> {
        (self.ids.len() > 1).then(|| Chain {
            ids: self.ids[1..].to_vec(),
        })
    }

    pub fn ids(&self) -> &[SnapshotId] {
        &self.ids
    }
}

#[cfg(test)]
mod tests;
