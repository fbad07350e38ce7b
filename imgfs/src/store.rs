//! A store on disk: opening and locking it, allocating ids, the snapshot lifecycle (prepare,
//! view, commit, remove), usage and recovery after a crash. Chunks and their reference counts
//! are the chunk store's (`chunks::ChunkStore`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::chunks::{ChunkStore, PackStore};
use crate::error::{Error, IoContext, Result};
use crate::ids::{ChunkDigest, Ino, SnapshotId};
use crate::meta::key::Base;
use crate::meta::{Batch, Chain, MetaDb, key};
use crate::records::{
    ChunkRecord, Extent, FileKind, Inode, SnapshotKind, SnapshotRecord, Timestamp,
};
use crate::tree::Tree;

/// The on-disk format version this code reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// The default size of a file chunk: the unit of copy-on-write and of deduplication.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// How many ids are reserved per write of the id high-water mark.
const ID_LEASE: u64 = 4096;

/// Settings fixed when a store is created.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    pub chunk_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Bytes and inodes that belong to one snapshot alone: what removing it frees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Inode versions written by the snapshot.
    pub inodes: u64,
    /// Chunk bytes referenced by this snapshot and nothing else, plus its unhashed dirty data.
    pub bytes: u64,
}

struct Ids {
    next: u64,
    high: u64,
}

struct Inner {
    root: PathBuf,
    meta: Arc<MetaDb>,
    chunks: ChunkStore,
    chunk_size: u32,
    ids: Mutex<Ids>,
    /// Active snapshots that a `Tree` has open for writing in this process.
    writers: Mutex<HashSet<SnapshotId>>,
    _lock: Option<File>,
}

/// An open store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Creates an empty store in `root` (which may exist but must not hold a store).
    pub fn create(root: &Path, opts: StoreOptions) -> Result<Store> {
        if !opts.chunk_size.is_power_of_two() || !(4096..=(16 << 20)).contains(&opts.chunk_size) {
            return Err(Error::Invalid(format!(
                "chunk size {} (must be a power of two from 4 KiB to 16 MiB)",
                opts.chunk_size
            )));
        }
        std::fs::create_dir_all(root).ctx(|| format!("create {}", root.display()))?;
        if root.join("meta").exists() {
            return Err(Error::Exists(format!("store {}", root.display())));
        }
        let lock = crate::lock::lock_dir(root)?;
        let meta = MetaDb::create(&root.join("meta"))?;
        let mut b = Batch::default();
        b.put(&key::meta("format"), &FORMAT_VERSION.to_le_bytes());
        b.put(
            &key::meta("chunk_size"),
            &(opts.chunk_size as u64).to_le_bytes(),
        );
        b.put(&key::meta("next_id"), &2u64.to_le_bytes());
        meta.write(b, true)?;
        drop(meta);
        drop(lock);
        Store::open(root)
    }

    /// Opens a store for writing. Only one process may do so at a time; a second gets
    /// `Error::Locked` naming the first one's pid. Recovers from an earlier crash.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_inner(root, false)
    }

    /// The pid of the process that has the store in `root` open for writing, if one has
    /// ("unknown" when it has not written its pid yet).
    pub fn writer(root: &Path) -> Option<String> {
        crate::lock::holder(root)
    }

    /// Opens a store for reading, without the writer's lock: it sees the store as it was when
    /// opened, even while a writer changes it.
    pub fn open_read_only(root: &Path) -> Result<Store> {
        Store::open_inner(root, true)
    }

    fn open_inner(root: &Path, read_only: bool) -> Result<Store> {
        if !root.join("meta").is_dir() {
            return Err(Error::NotFound(format!("store {}", root.display())));
        }
        let lock = if read_only {
            None
        } else {
            let lock = crate::lock::lock_dir(root)?;
            crate::space::release_reserve_if_full(root);
            Some(lock)
        };
        let meta = MetaDb::open(&root.join("meta"), read_only)?;
        let read_u64 = |name: &str| -> Result<u64> {
            let v = meta
                .get(&key::meta(name))?
                .ok_or_else(|| Error::Corrupt(format!("missing {name}")))?;
            Ok(u64::from_le_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt(format!("bad {name}")))?,
            ))
        };
        let format = read_u64("format")?;
        if format != FORMAT_VERSION {
            return Err(Error::Corrupt(format!(
                "store format {format}; this imgfs reads format {FORMAT_VERSION}"
            )));
        }
        let chunk_size = read_u64("chunk_size")? as u32;
        let next = read_u64("next_id")?;
        let meta = Arc::new(meta);
        let chunks = ChunkStore::open(meta.clone(), &root.join("chunks"), read_only)?;
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                meta,
                chunks,
                chunk_size,
                ids: Mutex::new(Ids { next, high: next }),
                writers: Mutex::new(HashSet::new()),
                _lock: lock,
            }),
        };
        if !read_only {
            store.recover()?;
            crate::space::refill_reserve(root);
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn chunk_size(&self) -> u32 {
        self.inner.chunk_size
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.meta.is_read_only()
    }

    /// Rolls back imports that a crash interrupted and deletes scratch files of snapshots that
    /// no longer exist. Pack tails past the synced length were already cut by `PackStore::open`.
    fn recover(&self) -> Result<()> {
        let mut live = HashSet::new();
        for rec in self.list()? {
            if rec.kind == SnapshotKind::Importing {
                tracing::warn!(snapshot = %rec.name, "rolling back an import that did not finish");
                self.remove_record(&rec)?;
            } else {
                live.insert(rec.id);
            }
        }
        let scratch = self.inner.root.join("scratch");
        if let Ok(rd) = std::fs::read_dir(&scratch) {
            for entry in rd.flatten() {
                let id = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse().ok())
                    .map(SnapshotId);
                if !id.is_some_and(|id| live.contains(&id)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Allocates a store-wide unique id (inode numbers, data ids and snapshot ids share it).
    pub(crate) fn alloc_id(&self) -> Result<u64> {
        let mut ids = self.inner.ids.lock().expect("poisoned");
        if ids.next >= ids.high {
            // Write the new high-water mark before handing out ids below it: records that use
            // them are written after this in the log, so they can never outlive it.
            let high = ids.next + ID_LEASE;
            let mut b = Batch::default();
            b.put(&key::meta("next_id"), &high.to_le_bytes());
            self.inner.meta.write(b, false)?;
            ids.high = high;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    // ---- snapshot records ----

    pub(crate) fn record(&self, id: SnapshotId) -> Result<SnapshotRecord> {
        let v = self
            .inner
            .meta
            .get(&key::snapshot(id))?
            .ok_or_else(|| Error::Corrupt(format!("snapshot {id} has no record")))?;
        SnapshotRecord::decode(&v)
    }

    /// The record of the snapshot named `name` (a committed name or an active key).
    pub fn stat(&self, name: &str) -> Result<SnapshotRecord> {
        let v = self
            .inner
            .meta
            .get(&key::name(name))?
            .ok_or_else(|| Error::NotFound(format!("snapshot {name}")))?;
        self.record(SnapshotId(key::read_u64(&v)))
    }

    /// Every snapshot, in creation order.
    pub fn list(&self) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        let mut scan = self.inner.meta.prefix(&[key::SNAPSHOT]);
        while let Some((_, v)) = scan.next_entry()? {
            out.push(SnapshotRecord::decode(v)?);
        }
        Ok(out)
    }

    /// The chain of `rec`: itself and its ancestors, newest first.
    pub(crate) fn chain(&self, rec: &SnapshotRecord) -> Result<Chain> {
        let mut ids = vec![rec.id];
        let mut parent = rec.parent;
        while let Some(p) = parent {
            if ids.len() > 100_000 {
                return Err(Error::Corrupt(format!(
                    "snapshot {} has a parent cycle",
                    rec.name
                )));
            }
            ids.push(p);
            parent = self.record(p)?.parent;
        }
        Ok(Chain::new(ids))
    }

    /// Writes the record of a new snapshot, with `labels` from the start so that no crash can
    /// leave it without them.
    pub(crate) fn new_snapshot(
        &self,
        name: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
        labels: Vec<(String, String)>,
    ) -> Result<SnapshotRecord> {
        crate::snapshot::check_name(name)?;
        let _g = self.inner.chunks.lock();
        if self.inner.meta.get(&key::name(name))?.is_some() {
            return Err(Error::Exists(format!("snapshot {name}")));
        }
        let parent = match parent {
            None => None,
            Some(p) => {
                let rec = self.stat(p)?;
                if rec.kind != SnapshotKind::Committed {
                    return Err(Error::Invalid(format!(
                        "snapshot {p} is not committed and cannot be a parent"
                    )));
                }
                Some(rec)
            }
        };
        let rec = SnapshotRecord {
            id: SnapshotId(self.alloc_id()?),
            parent: parent.as_ref().map(|p| p.id),
            kind,
            name: name.to_string(),
            created: Timestamp::now(),
            depth: parent.as_ref().map_or(0, |p| p.depth + 1),
            labels,
        };
        let mut b = Batch::default();
        b.put(&key::snapshot(rec.id), &rec.encode());
        b.put(&key::name(name), &rec.id.0.to_be_bytes());
        if parent.is_none() {
            // A base snapshot starts with an empty root directory owned by root.
            let root = Inode::new(FileKind::Dir, 0o755, 0, 0, rec.created);
            let base = key::inode_base(Ino::ROOT);
            b.put(&key::versioned(&base, rec.id), &root.encode());
            b.put(&key::change(rec.id, &base), &[]);
        }
        self.inner.meta.write(b, false)?;
        // Lifecycle changes are rare: let other processes (read-only opens) see them now.
        self.inner.meta.flush_wal()?;
        Ok(rec)
    }

    /// Creates a writable snapshot `key` on top of the committed snapshot `parent` (or empty).
    /// Writes a constant number of keys, whatever the size of the parent.
    pub fn prepare(&self, key: &str, parent: Option<&str>) -> Result<SnapshotRecord> {
        self.new_snapshot(key, parent, SnapshotKind::Active, Vec::new())
    }

    /// Creates a read-only view `key` of the committed snapshot `parent`.
    pub fn view(&self, key: &str, parent: &str) -> Result<SnapshotRecord> {
        self.new_snapshot(key, Some(parent), SnapshotKind::View, Vec::new())
    }

    /// Starts an import: a snapshot that is rolled back if the store is reopened before
    /// `commit` turns it into a committed one.
    pub(crate) fn prepare_import(&self, key: &str, parent: Option<&str>) -> Result<SnapshotRecord> {
        self.new_snapshot(key, parent, SnapshotKind::Importing, Vec::new())
    }

    /// Opens the file tree of a snapshot. Active and importing snapshots open writable (once per
    /// process at a time); committed snapshots and views open read-only.
    pub fn tree(&self, name: &str) -> Result<Tree> {
        let rec = self.stat(name)?;
        let chain = self.chain(&rec)?;
        let writable = matches!(rec.kind, SnapshotKind::Active | SnapshotKind::Importing)
            && !self.is_read_only();
        Tree::new(self.clone(), rec, chain, writable)
    }

    /// Opens the file tree of any snapshot for reading only (export, diff, inspection): it does
    /// not claim the snapshot for writing, so it works beside a writer of the same snapshot.
    pub fn tree_read_only(&self, name: &str) -> Result<Tree> {
        let rec = self.stat(name)?;
        let chain = self.chain(&rec)?;
        Tree::new(self.clone(), rec, chain, false)
    }

    /// Commits the active snapshot `key` as the immutable snapshot `name`: hashes its dirty
    /// chunks into the chunk store, drops inodes that lost their last link, then makes it all
    /// durable with one synced batch. Costs O(what the snapshot changed).
    pub fn commit(&self, name: &str, key: &str) -> Result<SnapshotRecord> {
        crate::snapshot::check_name(name)?;
        let rec = self.stat(key)?;
        if !matches!(rec.kind, SnapshotKind::Active | SnapshotKind::Importing) {
            return Err(Error::Invalid(format!("snapshot {key} is not active")));
        }
        if name != key && self.inner.meta.get(&key::name(name))?.is_some() {
            return Err(Error::Exists(format!("snapshot {name}")));
        }
        let tree = self.tree(key)?;
        tree.seal()?;
        drop(tree);
        let _g = self.inner.chunks.lock();
        let mut b = Batch::default();
        self.inner
            .chunks
            .flush_chunks(&mut b, HashMap::new(), HashMap::new(), true)?;
        let mut done = rec.clone();
        done.kind = SnapshotKind::Committed;
        done.name = name.to_string();
        // Only an active snapshot has a writer that can be gone (`owner`).
        let owner = crate::owner::owner_pid(&done.labels);
        crate::owner::drop_owner_labels(&mut done.labels);
        b.put(&key::snapshot(rec.id), &done.encode());
        if name != key {
            b.delete(&key::name(key));
        }
        b.put(&key::name(name), &rec.id.0.to_be_bytes());
        self.inner.meta.write(b, true)?;
        if owner == Some(std::process::id()) {
            crate::owner::remove_marker(self.root(), std::process::id());
        }
        let _ = std::fs::remove_file(self.scratch_path(rec.id));
        Ok(done)
    }

    /// Sets a label on a snapshot record.
    pub fn set_label(&self, name: &str, label: &str, value: &str) -> Result<()> {
        self.edit_labels(
            name,
            |labels| {
                labels.retain(|(k, _)| k != label);
                labels.push((label.to_string(), value.to_string()));
            },
            false,
        )
    }

    /// Rewrites a snapshot record's labels with `edit`, in one synced write. With `keeps_data`
    /// (a write that, if it failed, would have the snapshot removed: `release_owned`) the
    /// write may use the room kept for writes that free space, as a removal's may.
    pub(crate) fn edit_labels(
        &self,
        name: &str,
        edit: impl FnOnce(&mut Vec<(String, String)>),
        keeps_data: bool,
    ) -> Result<()> {
        let _g = self.inner.chunks.lock();
        let mut rec = self.stat(name)?;
        edit(&mut rec.labels);
        let mut b = Batch::default();
        b.put(&key::snapshot(rec.id), &rec.encode());
        if keeps_data {
            self.inner.meta.write_to_free(b, true)
        } else {
            self.inner.meta.write(b, true)
        }
    }

    /// Whether the snapshot `id` has written nothing of its own (its tree is its parent's).
    pub(crate) fn is_unchanged(&self, id: SnapshotId) -> Result<bool> {
        Ok(self.inner.meta.changes(id).next().transpose()?.is_none())
    }

    /// Removes a snapshot that has no children, and frees every chunk that only it referred to.
    pub fn remove(&self, name: &str) -> Result<()> {
        let rec = self.stat(name)?;
        if let Some(child) = self.list()?.into_iter().find(|r| r.parent == Some(rec.id)) {
            return Err(Error::Invalid(format!(
                "snapshot {name} has a child ({}); remove that first",
                child.name
            )));
        }
        if self
            .inner
            .writers
            .lock()
            .expect("poisoned")
            .contains(&rec.id)
        {
            return Err(Error::Invalid(format!(
                "snapshot {name} is open for writing"
            )));
        }
        self.remove_record(&rec)
    }

    fn remove_record(&self, rec: &SnapshotRecord) -> Result<()> {
        let _g = self.inner.chunks.lock();
        let meta = &self.inner.meta;
        let mut b = Batch::default();
        let mut unref: HashMap<ChunkDigest, u64> = HashMap::new();
        for base in meta.changes(rec.id) {
            let base = base?;
            let vkey = base.versioned(rec.id);
            if let Base::Extent { .. } = base
                && let Some(v) = meta.get(&vkey)?
                && let Extent::Stored { digest, .. } = Extent::decode(&v)?
            {
                *unref.entry(digest).or_default() += 1;
            }
            b.delete(&vkey);
            b.delete(&base.change(rec.id));
        }
        let freed = self.inner.chunks.unref_chunks(&mut b, &unref)?;
        b.delete(&key::snapshot(rec.id));
        if let Some(v) = meta.get(&key::name(&rec.name))?
            && key::read_u64(&v) == rec.id.0
        {
            b.delete(&key::name(&rec.name));
        }
        meta.write_to_free(b, true)?;
        self.inner.chunks.release_chunks(&freed)?;
        let _ = std::fs::remove_file(self.scratch_path(rec.id));
        crate::space::refill_reserve(&self.inner.root);
        Ok(())
    }

    /// The pack store (for object packs: `Tree::fill` and FUSE passthrough).
    pub(crate) fn packs(&self) -> &PackStore {
        self.inner.chunks.packs()
    }

    /// The chunk store: content addressing, reference counts and the store-wide lock.
    pub(crate) fn chunks(&self) -> &ChunkStore {
        &self.inner.chunks
    }

    /// The metadata database.
    pub(crate) fn meta(&self) -> &MetaDb {
        &self.inner.meta
    }

    /// How many times this process synced the metadata log outside a commit (an fsync or
    /// fsyncdir through a mount): none while only volatile mounts are written to.
    pub fn log_syncs(&self) -> u64 {
        self.inner.meta.log_syncs()
    }

    /// Claims the active snapshot `id` for a writable `Tree` of this process; false if one
    /// has it already.
    pub(crate) fn claim_writer(&self, id: SnapshotId) -> bool {
        self.inner.writers.lock().expect("poisoned").insert(id)
    }

    /// Gives up the claim of `claim_writer`.
    pub(crate) fn release_writer(&self, id: SnapshotId) {
        self.inner.writers.lock().expect("poisoned").remove(&id);
    }

    /// The scratch file of an active snapshot: a sparse file of chunk-sized slots holding the
    /// snapshot's dirty chunks.
    pub(crate) fn scratch_path(&self, snap: SnapshotId) -> PathBuf {
        self.inner.root.join("scratch").join(snap.0.to_string())
    }

    /// What removing the snapshot would free: the inode versions it wrote, the chunk bytes that
    /// only it refers to, and its dirty data.
    pub fn usage(&self, name: &str) -> Result<Usage> {
        let rec = self.stat(name)?;
        let meta = &self.inner.meta;
        let mut usage = Usage::default();
        let mut own: HashMap<ChunkDigest, (u64, u32)> = HashMap::new();
        for base in meta.changes(rec.id) {
            let base = base?;
            match base {
                Base::Inode(_) => usage.inodes += 1,
                Base::Extent { .. } => match meta
                    .get(&base.versioned(rec.id))?
                    .map(|v| Extent::decode(&v))
                {
                    Some(Ok(Extent::Stored { digest, len })) => {
                        own.entry(digest).or_insert((0, len)).0 += 1
                    }
                    Some(Ok(Extent::Dirty { .. })) => usage.bytes += self.inner.chunk_size as u64,
                    Some(Err(e)) => return Err(e),
                    _ => {}
                },
                _ => {}
            }
        }
        for (digest, (n, len)) in own {
            if let Some(v) = meta.get(&key::chunk(&digest))?
                && ChunkRecord::decode(&v)?.refs <= n
            {
                usage.bytes += len as u64;
            }
        }
        Ok(usage)
    }
}
