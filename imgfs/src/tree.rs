//! The file tree of one snapshot: POSIX-style operations by inode number, as the FUSE adapter,
//! the layer importer and the tests call them. Knows nothing about FUSE or mounts.
//!
//! Reads resolve every key to its newest version visible from the snapshot's chain (one seek each,
//! `MetaDb::visible`). Writes go to the head snapshot only, each operation one atomic batch; a
//! per-tree mutex serialises the operations that change metadata. File data written here lands in
//! a per-snapshot scratch file, one sparse file per data id with chunk `i` at `i * chunk_size`, and
//! is hashed into the chunk store when the snapshot is committed (`seal`).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::chunks::{PACK_MAX, WRITEBACK_STEP, start_writeback};
use crate::error::{Error, IoContext, Result};
use crate::ids::{ChunkDigest, DataId, Ino, PackId, SnapshotId};
use crate::meta::{Batch, Chain, key};
use crate::records::{
    ChunkRecord, Dentry, Extent, FileKind, Inode, Link, SnapshotRecord, Timestamp,
};
use crate::store::Store;

/// A write at least this large counts as streaming (`Tree::kick_writeback`); tar writes 10 KiB
/// at a time, dd and cp 128 KiB to 1 MiB (FUSE sends up to 1 MiB per WRITE).
const STREAM_WRITE: usize = 128 << 10;

/// The longest file name a directory entry may have.
pub const NAME_MAX: usize = 255;
/// How many symlinks path resolution follows before it gives up.
const SYMLINK_MAX: usize = 40;

/// The smallest file that layer import stores in an object pack of its own. A mount passes
/// reads of such a file straight to the pack (FUSE passthrough), which pays off for big files;
/// for small ones it would cost a pack file each.
pub const OBJECT_MIN: u64 = 1 << 20;

/// A file's content as a layer gives it: `size` bytes expected, at most `limit` accepted.
pub(crate) struct Content<'r> {
    reader: &'r mut dyn std::io::Read,
    size: u64,
    limit: u64,
}

/// What stat reports about an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl Attr {
    pub fn of(ino: Ino, inode: &Inode) -> Attr {
        Attr {
            ino,
            kind: inode.kind,
            perm: inode.perm,
            nlink: inode.nlink(),
            uid: inode.uid,
            gid: inode.gid,
            size: match inode.kind {
                FileKind::Symlink => inode.target.len() as u64,
                _ => inode.size,
            },
            rdev: inode.rdev,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// What a new inode looks like (mknod, mkdir, symlink, create).
#[derive(Clone, Debug)]
pub struct NewNode {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    /// Symlink target.
    pub target: Vec<u8>,
}

impl NewNode {
    pub fn new(kind: FileKind, perm: u32, uid: u32, gid: u32) -> NewNode {
        NewNode {
            kind,
            perm,
            uid,
            gid,
            rdev: 0,
            target: Vec::new(),
        }
    }
}

/// Attribute changes (chmod, chown, truncate, utimens). `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    /// Clear setuid, and setgid where the group may execute (what chown does, and a truncate
    /// by a caller without CAP_FSETID).
    pub kill_suid: bool,
    /// Remove the `security.capability` attribute (what chown and truncate do).
    pub kill_caps: bool,
}

/// The extended attribute that holds file capabilities; writes and chown remove it.
pub const XATTR_CAPS: &[u8] = b"security.capability";

impl Inode {
    /// Clears the setuid bit, and setgid where it means "set group id" (group-executable), as
    /// the kernel's `should_remove_suid` does.
    pub(crate) fn kill_suid(&mut self) {
        self.perm &= !libc::S_ISUID;
        if self.perm & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
            self.perm &= !libc::S_ISGID;
        }
    }
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target (rename(2)).
    Replace,
    /// Fail with `Exists` if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target, which must both exist (RENAME_EXCHANGE).
    Exchange,
}

/// The file tree of one snapshot. Writable when the snapshot is active.
pub struct Tree {
    store: Store,
    rec: SnapshotRecord,
    chain: Chain,
    parent: Option<Chain>,
    writable: bool,
    lock: Mutex<()>,
    /// The head snapshot's scratch file, opened on first use.
    scratch: Mutex<Option<Arc<File>>>,
    /// The next free slot of the scratch file.
    next_slot: AtomicU64,
    /// Scratch bytes written by large writes and not yet handed to the kernel's writeback
    /// (`kick_writeback`).
    unkicked: Mutex<Option<std::ops::Range<u64>>>,
    /// Inode records and directory entries read or written lately (see `Cache`).
    cache: Mutex<Cache>,
    /// Files of this tree that lost their last link (see `Orphans`).
    orphans: Mutex<Orphans>,
}

/// Files that lost their last link while a FUSE mount served this tree. Their content stays
/// readable through open descriptors until the kernel forgets the inode (`Tree::forget`);
/// from then on nothing can reach it, and `Tree::punch_forgotten` frees the scratch slots of
/// its dirty chunks before an fsync, instead of letting the fsync write dead data (10,000
/// created and deleted 4 KiB files made a directory's fsync take 0.26 s). The commit purges
/// their metadata, as for every orphan.
#[derive(Default)]
struct Orphans {
    /// Unlinked, maybe still referenced by the kernel.
    unlinked: HashSet<Ino>,
    /// Unlinked and forgotten by the kernel.
    forgotten: Vec<Ino>,
}

/// A directory entry as a tree sees it: the inode and its kind, or `None` for no such name.
type EntryValue = Option<(Ino, FileKind)>;

/// Inode records and directory entries of one tree kept in memory, so that the requests that
/// read the same ones over and over (every SETATTR, GETATTR and GETXATTR reads the inode; a
/// CREATE looks up the name the kernel's LOOKUP just missed; `tar -x` sends ~11 requests per
/// file) do not each build a rocksdb iterator and seek it (~5-10 µs). What a tree sees changes
/// only through its own `Txn`s (lower snapshots are immutable, the head has one writer), which
/// update the cache after their batch is written.
#[derive(Default)]
struct Cache {
    /// Each record, and whether it is the head's own version (whose change key is written).
    inodes: HashMap<Ino, (Inode, bool)>,
    entries: HashMap<(Ino, Vec<u8>), EntryValue>,
    /// Directories made by this tree whose every entry is in `entries`: a name missing there is
    /// missing from the directory. Their inode numbers are new, so no lower snapshot has
    /// entries in them, and every entry since came through a `Txn`. A LOOKUP that misses in
    /// such a directory (each file an untar or a compiler creates) then reads nothing.
    complete: HashSet<Ino>,
    /// The head's own dirty chunks and their scratch slots, so that the second and later writes
    /// into a chunk (tar writes a file 10 KiB at a time) need not scan for its extent.
    dirty: HashMap<(DataId, u64), u64>,
    /// Bumped by every write. A read that began before a write does not insert what it read,
    /// which may be the version that write replaced.
    epoch: u64,
}

impl Cache {
    /// Enough for the working set of any build step; a map is cleared when full, which is rare
    /// and cheap.
    const CAPACITY: usize = 65536;

    fn insert_inode(&mut self, ino: Ino, inode: Inode, in_head: bool) {
        if self.inodes.len() >= Self::CAPACITY {
            self.inodes.clear();
        }
        self.inodes.insert(ino, (inode, in_head));
    }

    fn insert_dirty(&mut self, data: DataId, index: u64, slot: u64) {
        if self.dirty.len() >= Self::CAPACITY {
            self.dirty.clear();
        }
        self.dirty.insert((data, index), slot);
    }

    fn insert_entry(&mut self, dir: Ino, name: &[u8], value: EntryValue) {
        if self.entries.len() >= Self::CAPACITY {
            self.entries.clear();
            self.complete.clear();
        }
        self.entries.insert((dir, name.to_vec()), value);
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.writable {
            self.store
                .inner
                .writers
                .lock()
                .expect("poisoned")
                .remove(&self.rec.id);
        }
    }
}

/// One atomic group of writes to the head snapshot.
struct Txn<'a> {
    tree: &'a Tree,
    b: Batch,
    /// References to stored chunks that this group's overwrites and deletions drop.
    unref: HashMap<ChunkDigest, u64>,
    /// The inode records this group writes (`None`: the head's version is deleted), for the
    /// tree's cache once the batch is in.
    inodes: Vec<(Ino, Option<Inode>)>,
    /// The same for directory entries (`None`: the head's version is deleted, so what shows
    /// is the lower snapshots' entry, which the cache must read again).
    entries: Vec<(Ino, Vec<u8>, Option<EntryValue>)>,
    /// Directories this group creates, empty (`Cache::complete`).
    new_dirs: Vec<Ino>,
    /// The extents this group writes or deletes: the slot of a dirty one, else `None`.
    extents: Vec<(DataId, u64, Option<u64>)>,
}

impl Txn<'_> {
    fn put(&mut self, base: &[u8], value: &[u8]) {
        let head = self.tree.head();
        self.b.put(&key::versioned(base, head), value);
        self.b.put(&key::change(head, base), &[]);
    }

    /// Deletes the head's own version of `base`.
    fn delete(&mut self, base: &[u8]) {
        let head = self.tree.head();
        self.b.delete(&key::versioned(base, head));
        self.b.delete(&key::change(head, base));
    }

    fn put_inode(&mut self, ino: Ino, inode: &Inode) {
        let base = key::inode_base(ino);
        let head = self.tree.head();
        self.b.put(&key::versioned(&base, head), &inode.encode());
        // The head's own version was written together with its change key, which therefore
        // exists: SETATTR after SETATTR need not write it again (tar sends four per file).
        let in_head = matches!(
            self.tree.cache.lock().expect("poisoned").inodes.get(&ino),
            Some((_, true))
        );
        if !in_head {
            self.b.put(&key::change(head, &base), &[]);
        }
        self.inodes.push((ino, Some(inode.clone())));
    }

    /// Deletes the head's own version of an inode record.
    fn delete_inode(&mut self, ino: Ino) {
        self.delete(&key::inode_base(ino));
        self.inodes.push((ino, None));
    }

    fn put_dentry(&mut self, dir: Ino, name: &[u8], d: Dentry) {
        self.put(&key::dentry_base(dir, name), &d.encode());
        let value = match d {
            Dentry::Entry { ino, kind } => Some((ino, kind)),
            Dentry::Deleted => None,
        };
        self.entries.push((dir, name.to_vec(), Some(value)));
    }

    /// Deletes the head's own version of a directory entry.
    fn delete_dentry(&mut self, dir: Ino, name: &[u8]) {
        self.delete(&key::dentry_base(dir, name));
        self.entries.push((dir, name.to_vec(), None));
    }

    fn put_extent(&mut self, data: DataId, index: u64, e: Extent) {
        self.put(&key::extent_base(data, index), &e.encode());
        let slot = match e {
            Extent::Dirty { slot } => Some(slot),
            _ => None,
        };
        self.extents.push((data, index, slot));
    }

    /// Deletes the head's own version of an extent.
    fn delete_extent(&mut self, data: DataId, index: u64) {
        self.delete(&key::extent_base(data, index));
        self.extents.push((data, index, None));
    }

    /// Notes that the head's own version `old` of an extent is being overwritten or deleted: if
    /// it names a stored chunk, that reference goes away when the group is written.
    fn drop_ref(&mut self, old: Extent, snap: SnapshotId) {
        if let (Extent::Stored { digest, .. }, true) = (old, snap == self.tree.head()) {
            *self.unref.entry(digest).or_default() += 1;
        }
    }

    fn write(mut self) -> Result<()> {
        let inodes = std::mem::take(&mut self.inodes);
        let entries = std::mem::take(&mut self.entries);
        let written = self.write_batch();
        let mut cache = self.tree.cache.lock().expect("poisoned");
        cache.epoch += 1;
        // Deleted here, or not known to be written: read again next time.
        for (ino, inode) in inodes {
            match (inode, written.is_ok()) {
                (Some(inode), true) => cache.insert_inode(ino, inode, true),
                _ => {
                    cache.inodes.remove(&ino);
                }
            }
        }
        for (dir, name, value) in entries {
            match (value, written.is_ok()) {
                (Some(value), true) => cache.insert_entry(dir, &name, value),
                // Nothing below a complete directory shows through a deleted head entry.
                (None, true) if cache.complete.contains(&dir) => {
                    cache.insert_entry(dir, &name, None)
                }
                _ => {
                    cache.complete.remove(&dir);
                    cache.entries.remove(&(dir, name));
                }
            }
        }
        if written.is_ok() {
            cache.complete.extend(std::mem::take(&mut self.new_dirs));
        }
        for (data, index, slot) in std::mem::take(&mut self.extents) {
            match (slot, written.is_ok()) {
                (Some(slot), true) => cache.insert_dirty(data, index, slot),
                _ => {
                    cache.dirty.remove(&(data, index));
                }
            }
        }
        written
    }

    fn write_batch(&mut self) -> Result<()> {
        let store = &self.tree.store;
        let batch = std::mem::take(&mut self.b);
        if self.unref.is_empty() {
            return store.inner.meta.write(batch, false);
        }
        let _g = store.inner.chunk_lock.lock().expect("poisoned");
        let mut batch = batch;
        let freed = store.unref_chunks(&mut batch, &self.unref)?;
        store.inner.meta.write(batch, false)?;
        store.release_chunks(&freed)
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid(format!(
            "file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong(
            String::from_utf8_lossy(name).into_owned(),
        ));
    }
    Ok(())
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Tree {
    pub(crate) fn new(
        store: Store,
        rec: SnapshotRecord,
        chain: Chain,
        writable: bool,
    ) -> Result<Tree> {
        if writable && !store.inner.writers.lock().expect("poisoned").insert(rec.id) {
            return Err(Error::Invalid(format!(
                "snapshot {} is already open for writing",
                rec.name
            )));
        }
        // Slots already used by the head's dirty chunks (a reopened active snapshot).
        let mut next_slot = 0;
        if writable {
            let prefix = key::change_prefix(rec.id);
            let mut scan = store.inner.meta.prefix(&prefix);
            while let Some((k, _)) = scan.next_entry()? {
                let base = &k[prefix.len()..];
                if base[0] == key::EXTENT
                    && let Some(v) = store.inner.meta.get(&key::versioned(base, rec.id))?
                    && let Extent::Dirty { slot } = Extent::decode(&v)?
                {
                    next_slot = next_slot.max(slot + 1);
                }
            }
        }
        let parent = chain.parent();
        Ok(Tree {
            store,
            rec,
            chain,
            parent,
            writable,
            lock: Mutex::new(()),
            scratch: Mutex::new(None),
            next_slot: AtomicU64::new(next_slot),
            unkicked: Mutex::new(None),
            cache: Mutex::new(Cache::default()),
            orphans: Mutex::new(Orphans::default()),
        })
    }

    pub fn record(&self) -> &SnapshotRecord {
        &self.rec
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn chunk_size(&self) -> u64 {
        self.store.inner.chunk_size as u64
    }

    fn head(&self) -> SnapshotId {
        self.chain.head()
    }

    fn writer(&self) -> Result<MutexGuard<'_, ()>> {
        if !self.writable {
            return Err(Error::ReadOnly(self.rec.name.clone()));
        }
        Ok(self.lock.lock().expect("poisoned"))
    }

    fn txn(&self) -> Txn<'_> {
        Txn {
            tree: self,
            b: Batch::default(),
            unref: HashMap::new(),
            inodes: Vec::new(),
            entries: Vec::new(),
            new_dirs: Vec::new(),
            extents: Vec::new(),
        }
    }

    // ---- reads ----

    /// The inode's current record.
    pub fn inode(&self, ino: Ino) -> Result<Inode> {
        let epoch = {
            let cache = self.cache.lock().expect("poisoned");
            if let Some((inode, _)) = cache.inodes.get(&ino) {
                return Ok(inode.clone());
            }
            cache.epoch
        };
        let (inode, snap) = match self
            .store
            .inner
            .meta
            .visible(&key::inode_base(ino), &self.chain)?
        {
            Some((snap, v)) => (Inode::decode(&v)?, snap),
            None => return Err(Error::Stale(ino)),
        };
        let mut cache = self.cache.lock().expect("poisoned");
        if cache.epoch == epoch {
            cache.insert_inode(ino, inode.clone(), self.writable && snap == self.head());
        }
        Ok(inode)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        Ok(Attr::of(ino, &self.inode(ino)?))
    }

    fn dir_inode(&self, dir: Ino) -> Result<Inode> {
        let inode = self.inode(dir)?;
        if inode.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {dir}")));
        }
        Ok(inode)
    }

    /// The entry `name` in `dir`, as seen from `chain`.
    fn entry_in(&self, chain: &Chain, dir: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        match self
            .store
            .inner
            .meta
            .visible(&key::dentry_base(dir, name), chain)?
        {
            Some((_, v)) => match Dentry::decode(&v)? {
                Dentry::Entry { ino, kind } => Ok(Some((ino, kind))),
                Dentry::Deleted => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The inode that `name` in `dir` refers to, without reading it.
    pub fn entry(&self, dir: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        let epoch = {
            let cache = self.cache.lock().expect("poisoned");
            // A borrowed key cannot look up a (Ino, Vec<u8>) map; names are short.
            if let Some(value) = cache.entries.get(&(dir, name.to_vec())) {
                return Ok(*value);
            }
            if cache.complete.contains(&dir) {
                return Ok(None);
            }
            cache.epoch
        };
        let value = self.entry_in(&self.chain, dir, name)?;
        let mut cache = self.cache.lock().expect("poisoned");
        if cache.epoch == epoch {
            cache.insert_entry(dir, name, value);
        }
        Ok(value)
    }

    /// Looks up `name` in `dir`.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<(Ino, Inode)> {
        // The kernel leaves the NAME_MAX check to the file system (FUSE only refuses names over
        // 1024 bytes), and POSIX wants ENAMETOOLONG for an overlong component, not ENOENT.
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong(show(name)));
        }
        match self.entry(dir, name)? {
            Some((ino, _)) => Ok((ino, self.inode(ino)?)),
            None => {
                self.dir_inode(dir)?;
                Err(Error::NotFound(show(name)))
            }
        }
    }

    /// Lists a directory in name order with one range scan: for each name, the newest version
    /// visible from this snapshot wins, and deleted names are left out.
    pub fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        self.dir_inode(dir)?;
        self.entries(dir, usize::MAX)
    }

    fn entries(&self, dir: Ino, limit: usize) -> Result<Vec<DirEntry>> {
        let prefix = key::dir_prefix(dir);
        let mut out = Vec::new();
        self.store
            .inner
            .meta
            .visible_range(&prefix, &prefix, &self.chain, |base, _, v| {
                if let Dentry::Entry { ino, kind } = Dentry::decode(v)? {
                    out.push(DirEntry {
                        name: base[prefix.len()..base.len() - 1].to_vec(),
                        ino,
                        kind,
                    });
                }
                Ok(out.len() < limit)
            })?;
        Ok(out)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Symlink {
            return Err(Error::Invalid(format!("inode {ino} is not a symlink")));
        }
        Ok(inode.target)
    }

    /// The visible extent of each chunk index in `first..=last` that has one.
    fn extents(
        &self,
        data: DataId,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, Extent, SnapshotId)>> {
        let prefix = key::data_prefix(data);
        let start = key::extent_base(data, first);
        let mut out = Vec::new();
        self.store
            .inner
            .meta
            .visible_range(&prefix, &start, &self.chain, |base, snap, v| {
                let index = key::read_u64(&base[9..]);
                if index > last {
                    return Ok(false);
                }
                out.push((index, Extent::decode(v)?, snap));
                Ok(true)
            })?;
        Ok(out)
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if offset >= inode.size || size == 0 {
            return Ok(Vec::new());
        }
        let end = inode.size.min(offset + size as u64);
        let mut buf = vec![0u8; (end - offset) as usize];
        let Some(data) = inode.data else {
            return Ok(buf);
        };
        let cs = self.chunk_size();
        for (index, extent, _) in self.extents(data, offset / cs, (end - 1) / cs)? {
            let cstart = index * cs;
            let from = offset.max(cstart);
            let to = end.min(cstart + cs);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match extent {
                Extent::Zero => {}
                Extent::Stored { digest, .. } => {
                    let (_, bytes) = self.store.chunk(&digest)?;
                    let lo = (from - cstart) as usize;
                    let hi = ((to - cstart) as usize).min(bytes.len());
                    if lo < hi {
                        dst[..hi - lo].copy_from_slice(&bytes[lo..hi]);
                    }
                }
                Extent::Dirty { slot } => {
                    read_full_at(&*self.scratch()?, dst, slot * cs + (from - cstart))?;
                }
            }
        }
        Ok(buf)
    }

    /// The chunk references of a file's content, in order (for export and fsck).
    pub fn chunk_map(&self, ino: Ino) -> Result<Vec<(u64, Extent)>> {
        let inode = self.inode(ino)?;
        match inode.data {
            None => Ok(Vec::new()),
            Some(d) => Ok(self
                .extents(d, 0, u64::MAX)?
                .into_iter()
                .map(|(i, e, _)| (i, e))
                .collect()),
        }
    }

    // ---- scratch files ----

    fn scratch(&self) -> Result<Arc<File>> {
        let mut file = self.scratch.lock().expect("poisoned");
        if let Some(f) = &*file {
            return Ok(f.clone());
        }
        let path = self.store.scratch_path(self.head());
        if self.writable
            && let Some(dir) = path.parent()
        {
            std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        }
        let f = OpenOptions::new()
            .read(true)
            .write(self.writable)
            .create(self.writable)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("open scratch file {}", path.display()))?;
        let f = Arc::new(f);
        *file = Some(f.clone());
        Ok(f)
    }

    /// Frees a slot's space; the slot number is not reused until the snapshot is committed.
    fn free_slot(&self, slot: u64) -> Result<()> {
        let cs = self.chunk_size();
        punch(&*self.scratch()?, slot * cs, cs)
    }

    /// The head's extents of chunks `first..=last` of `data` when all of them are dirty chunks
    /// in the cache; `None` when any is not known.
    fn known_dirty(
        &self,
        data: DataId,
        first: u64,
        last: u64,
    ) -> Option<HashMap<u64, (Extent, SnapshotId)>> {
        let cache = self.cache.lock().expect("poisoned");
        (first..=last)
            .map(|index| {
                let slot = *cache.dirty.get(&(data, index))?;
                Some((index, (Extent::Dirty { slot }, self.head())))
            })
            .collect()
    }

    /// Makes chunk `index` of `data` dirty in the head snapshot and returns its slot, copying
    /// the chunk's current bytes below `keep_upto` (a file offset) into the slot.
    fn copy_up_chunk(
        &self,
        txn: &mut Txn<'_>,
        data: DataId,
        index: u64,
        current: Option<(Extent, SnapshotId)>,
        keep_upto: u64,
    ) -> Result<u64> {
        if let Some((Extent::Dirty { slot }, snap)) = current
            && snap == self.head()
        {
            return Ok(slot);
        }
        if let Some((old, snap)) = current {
            txn.drop_ref(old, snap);
        }
        let cs = self.chunk_size();
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let cstart = index * cs;
        if let Some((Extent::Stored { digest, .. }, _)) = current
            && keep_upto > cstart
        {
            let (_, bytes) = self.store.chunk(&digest)?;
            let n = ((keep_upto - cstart) as usize).min(bytes.len());
            self.scratch()?
                .write_all_at(&bytes[..n], slot * cs)
                .ctx(|| "copy up a chunk".into())?;
        }
        txn.put_extent(data, index, Extent::Dirty { slot });
        Ok(slot)
    }

    /// Writes `buf` at `offset`. Only the chunks the write touches are copied up.
    /// Like the kernel's write path, it removes `security.capability`.
    pub fn write(&self, ino: Ino, offset: u64, buf: &[u8]) -> Result<usize> {
        self.write_as(ino, offset, buf, false)
    }

    /// `write`, also clearing setuid/setgid when `kill_suid` (the caller lacks CAP_FSETID and the
    /// kernel asked, as FUSE_WRITE_KILL_SUIDGID does).
    pub fn write_as(&self, ino: Ino, offset: u64, buf: &[u8], kill_suid: bool) -> Result<usize> {
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if kill_suid {
            inode.kill_suid();
        }
        inode.remove_xattr(XATTR_CAPS);
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::Invalid("offset".into()))?;
        let mut txn = self.txn();
        if !buf.is_empty() {
            let (data, fresh) = match inode.data {
                Some(d) => (d, false),
                None => {
                    let d = DataId(self.store.alloc_id()?);
                    inode.data = Some(d);
                    (d, true)
                }
            };
            let cs = self.chunk_size();
            let (first, last) = (offset / cs, (end - 1) / cs);
            // New content has no extents yet: no need to look (the first write of every file).
            // Chunks this tree already made dirty are known without looking either.
            let existing: HashMap<u64, (Extent, SnapshotId)> = if fresh {
                HashMap::new()
            } else if let Some(known) = self.known_dirty(data, first, last) {
                known
            } else {
                self.extents(data, first, last)?
                    .into_iter()
                    .map(|(i, e, s)| (i, (e, s)))
                    .collect()
            };
            let f = self.scratch()?;
            // Slots are handed out in order, so a large write's chunks usually sit side by side
            // in the scratch file: one pwrite per run of them instead of one per chunk. Each
            // chunk's copy-up (which writes only its own slot) happens before the run that
            // covers it is written.
            let mut run: Option<(u64, std::ops::Range<usize>)> = None;
            // The scratch bytes this write covered, for `kick_writeback`.
            let written = std::cell::Cell::new(None::<(u64, u64)>);
            let flush = |run: &mut Option<(u64, std::ops::Range<usize>)>| -> Result<()> {
                if let Some((at, bytes)) = run.take() {
                    let len = bytes.len() as u64;
                    f.write_all_at(&buf[bytes], at)
                        .ctx(|| format!("write inode {ino}"))?;
                    let (lo, hi) = written.get().unwrap_or((at, at + len));
                    written.set(Some((lo.min(at), hi.max(at + len))));
                }
                Ok(())
            };
            for index in first..=last {
                let cstart = index * cs;
                let current = existing.get(&index).copied();
                // Old bytes outside the written range survive only below the old size.
                let covers_start = offset <= cstart;
                let covers_end = end >= (cstart + cs).min(inode.size.max(cstart));
                let keep = if covers_start && covers_end {
                    0
                } else {
                    inode.size
                };
                let from = offset.max(cstart);
                let to = end.min(cstart + cs);
                let bytes = (from - offset) as usize..(to - offset) as usize;
                if to - from == cs && is_zero(&buf[bytes.clone()]) {
                    // A whole chunk of zeros is a hole, as the commit would make it: no scratch
                    // space, no page cache, nothing to write back (dd from /dev/zero,
                    // preallocated database files).
                    flush(&mut run)?;
                    match current {
                        // No extent anywhere: a hole already.
                        None => {}
                        Some((Extent::Zero, snap)) if snap == self.head() => {}
                        Some((Extent::Dirty { slot }, snap)) if snap == self.head() => {
                            self.free_slot(slot)?;
                            txn.put_extent(data, index, Extent::Zero);
                        }
                        Some((old, snap)) => {
                            txn.drop_ref(old, snap);
                            txn.put_extent(data, index, Extent::Zero);
                        }
                    }
                    continue;
                }
                let slot = self.copy_up_chunk(&mut txn, data, index, current, keep)?;
                let at = slot * cs + (from - cstart);
                match &mut run {
                    Some((start, r)) if *start + r.len() as u64 == at && r.end == bytes.start => {
                        r.end = bytes.end;
                    }
                    _ => {
                        flush(&mut run)?;
                        run = Some((at, bytes));
                    }
                }
            }
            flush(&mut run)?;
            if let (true, Some((lo, hi))) = (buf.len() >= STREAM_WRITE, written.get()) {
                self.kick_writeback(&f, lo..hi);
            }
            inode.size = inode.size.max(end);
            inode.object = None;
        }
        let now = Timestamp::now();
        inode.mtime = now;
        inode.ctime = now;
        txn.put_inode(ino, &inode);
        txn.write()?;
        Ok(buf.len())
    }

    /// Adds `range` of the scratch file, just written by a large write, to what the kernel
    /// will be told to write out once it reaches `chunks::WRITEBACK_STEP`: a stream of large
    /// writes (cp or dd of a big file) is then on its way to disk before its fsync, as
    /// overlayfs's would be after ext4's writeback. Small writes (untar, compilers) are left
    /// to the kernel: starting their writeback early cost untar 10% here and wrote back files
    /// deleted soon after.
    fn kick_writeback(&self, file: &File, range: std::ops::Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut pending = self.unkicked.lock().expect("poisoned");
        let merged = match pending.take() {
            Some(p) if p.start <= range.end && range.start <= p.end => {
                p.start.min(range.start)..p.end.max(range.end)
            }
            _ => range,
        };
        if merged.end - merged.start >= WRITEBACK_STEP {
            start_writeback(file, merged.start, merged.end - merged.start);
        } else {
            *pending = Some(merged);
        }
    }

    /// Changes the size of a file: chunks past the new end become zeros in this snapshot, and the
    /// chunk holding the new end is copied up and cut.
    fn truncate(&self, txn: &mut Txn<'_>, ino: Ino, inode: &mut Inode, size: u64) -> Result<()> {
        if inode.kind != FileKind::File {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if size < inode.size
            && let Some(data) = inode.data
        {
            if size == 0 {
                // New content id: all old chunks vanish at once. Drop the head's own
                // versions of the old content, which nothing else can see.
                for (index, extent, snap) in self.extents(data, 0, u64::MAX)? {
                    if snap == self.head() {
                        txn.drop_ref(extent, snap);
                        if let Extent::Dirty { slot } = extent {
                            self.free_slot(slot)?;
                        }
                        txn.delete_extent(data, index);
                    }
                }
                inode.data = None;
            } else {
                let cs = self.chunk_size();
                let boundary = size / cs;
                for (index, extent, snap) in self.extents(data, boundary, u64::MAX)? {
                    let cstart = index * cs;
                    if cstart >= size {
                        let below = match &self.parent {
                            Some(p) => self
                                .store
                                .inner
                                .meta
                                .visible(&key::extent_base(data, index), p)?,
                            None => None,
                        };
                        let lower_has_data = below
                            .map(|(_, v)| Extent::decode(&v))
                            .transpose()?
                            .is_some_and(|e| e != Extent::Zero);
                        txn.drop_ref(extent, snap);
                        if lower_has_data {
                            txn.put_extent(data, index, Extent::Zero);
                        } else if snap == self.head() {
                            txn.delete_extent(data, index);
                        }
                        if let (Extent::Dirty { slot }, true) = (extent, snap == self.head()) {
                            self.free_slot(slot)?;
                        }
                    } else if extent != Extent::Zero {
                        // Bytes past the new end must read as zeros if the file grows again.
                        let slot =
                            self.copy_up_chunk(txn, data, index, Some((extent, snap)), size)?;
                        punch(
                            &*self.scratch()?,
                            slot * cs + (size - cstart),
                            cstart + cs - size,
                        )?;
                    }
                }
            }
        }
        inode.size = size;
        inode.object = None;
        Ok(())
    }

    /// Zeros `len` bytes at `offset` without changing the size (fallocate with
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). Whole chunks in the range become holes in this
    /// snapshot; a chunk the range only partly covers is copied up and zeroed there. Writing
    /// zeros through `write` instead was rejected: it would store a range of any length as data.
    pub fn punch_hole(&self, ino: Ino, offset: u64, len: u64) -> Result<()> {
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        let end = offset.saturating_add(len).min(inode.size);
        let mut txn = self.txn();
        if let (Some(data), true) = (inode.data, offset < end) {
            let cs = self.chunk_size();
            let (first, last) = (offset / cs, (end - 1) / cs);
            for (index, extent, snap) in self.extents(data, first, last)? {
                if extent == Extent::Zero {
                    continue;
                }
                let cstart = index * cs;
                let from = offset.max(cstart);
                let to = end.min(cstart + cs);
                // Bytes past the size read as zeros anyway, so a range to the end is whole.
                if from == cstart && (to == cstart + cs || to == inode.size) {
                    txn.drop_ref(extent, snap);
                    txn.put_extent(data, index, Extent::Zero);
                    if let (Extent::Dirty { slot }, true) = (extent, snap == self.head()) {
                        self.free_slot(slot)?;
                    }
                } else {
                    let slot = self.copy_up_chunk(
                        &mut txn,
                        data,
                        index,
                        Some((extent, snap)),
                        inode.size,
                    )?;
                    punch(&*self.scratch()?, slot * cs + (from - cstart), to - from)?;
                }
            }
            inode.object = None;
        }
        let now = Timestamp::now();
        inode.mtime = now;
        inode.ctime = now;
        txn.put_inode(ino, &inode);
        txn.write()
    }

    /// chmod, chown, truncate and utimens in one call.
    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        let mut txn = self.txn();
        let now = Timestamp::now();
        if let Some(size) = set.size {
            self.truncate(&mut txn, ino, &mut inode, size)?;
            inode.mtime = now;
        }
        if set.kill_suid && inode.kind != FileKind::Dir {
            inode.kill_suid();
        }
        if set.kill_caps {
            inode.remove_xattr(XATTR_CAPS);
        }
        if let Some(p) = set.perm {
            inode.perm = p & 0o7777;
        }
        if let Some(u) = set.uid {
            inode.uid = u;
        }
        if let Some(g) = set.gid {
            inode.gid = g;
        }
        if let Some(t) = set.atime {
            inode.atime = t;
        }
        if let Some(t) = set.mtime {
            inode.mtime = t;
        }
        inode.ctime = set.ctime.unwrap_or(now);
        txn.put_inode(ino, &inode);
        txn.write()?;
        Ok(Attr::of(ino, &inode))
    }

    // ---- namespace changes ----

    /// Creates a file, directory, symlink, device, fifo or socket named `name` in `dir`.
    pub fn mknod(&self, dir: Ino, name: &[u8], node: &NewNode) -> Result<(Ino, Inode)> {
        let now = Timestamp::now();
        let mut inode = Inode::new(node.kind, node.perm, node.uid, node.gid, now);
        inode.rdev = node.rdev;
        inode.target = node.target.clone();
        let (ino, inode, _) = self.create_with(dir, name, inode, None, Some(now))?;
        Ok((ino, inode))
    }

    /// Adds the name `name` in `dir` for the existing non-directory `ino`.
    pub fn link(&self, ino: Ino, dir: Ino, name: &[u8]) -> Result<Inode> {
        check_name(name)?;
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        if inode.kind == FileKind::Dir {
            return Err(Error::NotPermitted(format!(
                "hard link to directory inode {ino}"
            )));
        }
        let mut parent = self.dir_inode(dir)?;
        if self.entry(dir, name)?.is_some() {
            return Err(Error::Exists(show(name)));
        }
        let now = Timestamp::now();
        inode.links.push(Link {
            dir,
            name: name.to_vec(),
        });
        inode.links.sort();
        inode.ctime = now;
        parent.mtime = now;
        parent.ctime = now;
        let mut txn = self.txn();
        txn.put_inode(ino, &inode);
        txn.put_dentry(
            dir,
            name,
            Dentry::Entry {
                ino,
                kind: inode.kind,
            },
        );
        txn.put_inode(dir, &parent);
        txn.write()?;
        Ok(inode)
    }

    /// Removes the head's entry `name` from `dir`: a deletion marker when an ancestor has the
    /// name, otherwise the head's own key goes away entirely.
    fn remove_entry(&self, txn: &mut Txn<'_>, dir: Ino, name: &[u8]) -> Result<()> {
        let new_dir = self.cache.lock().expect("poisoned").complete.contains(&dir);
        let lower = match &self.parent {
            Some(p) if !new_dir => self.entry_in(p, dir, name)?,
            _ => None,
        };
        if lower.is_some() {
            txn.put_dentry(dir, name, Dentry::Deleted);
        } else {
            txn.delete_dentry(dir, name);
        }
        Ok(())
    }

    /// Drops the link (`dir`, `name`) from an inode's record. An inode left without links stays
    /// readable through open handles and is purged when the snapshot is committed.
    fn unlink_inode(
        &self,
        txn: &mut Txn<'_>,
        ino: Ino,
        dir: Ino,
        name: &[u8],
        now: Timestamp,
    ) -> Result<Inode> {
        let mut inode = self.inode(ino)?;
        inode.links.retain(|l| !(l.dir == dir && l.name == name));
        inode.ctime = now;
        txn.put_inode(ino, &inode);
        if inode.links.is_empty() && inode.data.is_some() {
            let mut orphans = self.orphans.lock().expect("poisoned");
            orphans.unlinked.insert(ino);
        }
        Ok(inode)
    }

    /// The kernel dropped its last reference to `ino` (FUSE FORGET): no descriptor, mapping or
    /// name of it is left in the kernel. An inode without links can then never be reached
    /// again (imgfs offers no file handles to open by), so its content may go.
    pub fn forget(&self, ino: Ino) {
        let many = {
            let mut orphans = self.orphans.lock().expect("poisoned");
            if orphans.unlinked.remove(&ino) {
                orphans.forgotten.push(ino);
            }
            orphans.forgotten.len() >= Self::PUNCH_BATCH
        };
        // A long build that deletes many files and never calls fsync frees their space too.
        if many && let Err(e) = self.punch_forgotten() {
            tracing::warn!("cannot free the space of deleted files: {e}");
        }
    }

    /// How many forgotten orphans `forget` lets gather before it frees their space itself.
    const PUNCH_BATCH: usize = 4096;

    /// Frees the scratch space of forgotten orphans' dirty chunks (see `Orphans`). Their
    /// metadata stays as it is for the commit to purge: nothing can read it any more, and
    /// slots are not reused before the commit, so it costs no metadata write here.
    fn punch_forgotten(&self) -> Result<()> {
        let forgotten = std::mem::take(&mut self.orphans.lock().expect("poisoned").forgotten);
        if forgotten.is_empty() {
            return Ok(());
        }
        let _g = self.writer()?;
        let head = self.head();
        let cs = self.chunk_size();
        let mut slots = Vec::new();
        for ino in forgotten {
            let inode = match self.inode(ino) {
                Ok(inode) => inode,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let Some(data) = inode.data.filter(|_| inode.links.is_empty()) else {
                continue;
            };
            let last = inode.size.div_ceil(cs).saturating_sub(1);
            match self.known_dirty(data, 0, last) {
                Some(known) => slots.extend(known.values().filter_map(|&(e, _)| dirty_slot(e))),
                None => slots.extend(
                    self.extents(data, 0, u64::MAX)?
                        .into_iter()
                        .filter(|&(_, _, snap)| snap == head)
                        .filter_map(|(_, e, _)| dirty_slot(e)),
                ),
            }
        }
        // Runs of neighbouring slots (files written one after another) go in one call.
        slots.sort_unstable();
        let f = self.scratch()?;
        let mut i = 0;
        while i < slots.len() {
            let mut j = i + 1;
            while j < slots.len() && slots[j] == slots[j - 1] + 1 {
                j += 1;
            }
            punch(&f, slots[i] * cs, (j - i) as u64 * cs)?;
            i = j;
        }
        Ok(())
    }

    /// unlink(2).
    pub fn unlink(&self, dir: Ino, name: &[u8]) -> Result<()> {
        let _g = self.writer()?;
        let mut parent = self.dir_inode(dir)?;
        let (ino, kind) = self
            .entry(dir, name)?
            .ok_or_else(|| Error::NotFound(show(name)))?;
        if kind == FileKind::Dir {
            return Err(Error::IsDir(show(name)));
        }
        let now = Timestamp::now();
        let mut txn = self.txn();
        self.unlink_inode(&mut txn, ino, dir, name, now)?;
        self.remove_entry(&mut txn, dir, name)?;
        parent.mtime = now;
        parent.ctime = now;
        txn.put_inode(dir, &parent);
        txn.write()
    }

    /// True if the directory has no visible entries.
    pub fn is_empty_dir(&self, dir: Ino) -> Result<bool> {
        Ok(self.entries(dir, 1)?.is_empty())
    }

    /// rmdir(2).
    pub fn rmdir(&self, dir: Ino, name: &[u8]) -> Result<()> {
        let _g = self.writer()?;
        let mut parent = self.dir_inode(dir)?;
        let (ino, kind) = self
            .entry(dir, name)?
            .ok_or_else(|| Error::NotFound(show(name)))?;
        if kind != FileKind::Dir {
            return Err(Error::NotDir(show(name)));
        }
        if !self.is_empty_dir(ino)? {
            return Err(Error::NotEmpty(show(name)));
        }
        let now = Timestamp::now();
        let mut txn = self.txn();
        self.unlink_inode(&mut txn, ino, dir, name, now)?;
        self.remove_entry(&mut txn, dir, name)?;
        parent.subdirs = parent.subdirs.saturating_sub(1);
        parent.mtime = now;
        parent.ctime = now;
        txn.put_inode(dir, &parent);
        txn.write()
    }

    /// True if `ino` is `dir` or one of its ancestors (a directory may not move below itself).
    fn is_ancestor(&self, ino: Ino, mut dir: Ino) -> Result<bool> {
        for _ in 0..100_000 {
            if dir == ino {
                return Ok(true);
            }
            if dir == Ino::ROOT {
                return Ok(false);
            }
            dir = match self.inode(dir)?.links.first() {
                Some(l) => l.dir,
                None => return Ok(false),
            };
        }
        Err(Error::Corrupt("directory parent cycle".into()))
    }

    /// rename(2), renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE. Directories move by
    /// rewriting two entries and one back-link, whatever their size: no EXDEV, no copy.
    pub fn rename(
        &self,
        odir: Ino,
        oname: &[u8],
        ndir: Ino,
        nname: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        check_name(nname)?;
        let _g = self.writer()?;
        self.dir_inode(odir)?;
        self.dir_inode(ndir)?;
        let (sino, skind) = self
            .entry(odir, oname)?
            .ok_or_else(|| Error::NotFound(show(oname)))?;
        let target = self.entry(ndir, nname)?;
        if odir == ndir && oname == nname {
            return match (mode, target) {
                (RenameMode::NoReplace, _) => Err(Error::Exists(show(nname))),
                _ => Ok(()),
            };
        }
        if skind == FileKind::Dir && self.is_ancestor(sino, ndir)? {
            return Err(Error::Invalid(format!(
                "cannot move {} below itself",
                show(oname)
            )));
        }
        let now = Timestamp::now();
        let mut txn = self.txn();
        let mut subdir_delta: HashMap<Ino, i64> = HashMap::new();
        match (mode, target) {
            (RenameMode::NoReplace, Some(_)) => return Err(Error::Exists(show(nname))),
            (RenameMode::Exchange, None) => return Err(Error::NotFound(show(nname))),
            (RenameMode::Exchange, Some((tino, tkind))) => {
                if tino == sino {
                    // Two names of one inode: like rename(2), an exchange of them changes nothing.
                    return Ok(());
                }
                if tkind == FileKind::Dir && self.is_ancestor(tino, odir)? {
                    return Err(Error::Invalid(format!(
                        "cannot move {} below itself",
                        show(nname)
                    )));
                }
                self.relink(&mut txn, sino, (odir, oname), (ndir, nname), now)?;
                self.relink(&mut txn, tino, (ndir, nname), (odir, oname), now)?;
                txn.put_dentry(
                    ndir,
                    nname,
                    Dentry::Entry {
                        ino: sino,
                        kind: skind,
                    },
                );
                txn.put_dentry(
                    odir,
                    oname,
                    Dentry::Entry {
                        ino: tino,
                        kind: tkind,
                    },
                );
                if skind == FileKind::Dir {
                    *subdir_delta.entry(odir).or_default() -= 1;
                    *subdir_delta.entry(ndir).or_default() += 1;
                }
                if tkind == FileKind::Dir {
                    *subdir_delta.entry(ndir).or_default() -= 1;
                    *subdir_delta.entry(odir).or_default() += 1;
                }
            }
            (_, target) => {
                if let Some((tino, tkind)) = target {
                    if tino == sino {
                        // Two names of one inode: rename(2) does nothing.
                        return Ok(());
                    }
                    match (skind == FileKind::Dir, tkind == FileKind::Dir) {
                        (true, false) => return Err(Error::NotDir(show(nname))),
                        (false, true) => return Err(Error::IsDir(show(nname))),
                        (true, true) if !self.is_empty_dir(tino)? => {
                            return Err(Error::NotEmpty(show(nname)));
                        }
                        _ => {}
                    }
                    self.unlink_inode(&mut txn, tino, ndir, nname, now)?;
                    if tkind == FileKind::Dir {
                        *subdir_delta.entry(ndir).or_default() -= 1;
                    }
                }
                self.relink(&mut txn, sino, (odir, oname), (ndir, nname), now)?;
                self.remove_entry(&mut txn, odir, oname)?;
                txn.put_dentry(
                    ndir,
                    nname,
                    Dentry::Entry {
                        ino: sino,
                        kind: skind,
                    },
                );
                if skind == FileKind::Dir {
                    *subdir_delta.entry(odir).or_default() -= 1;
                    *subdir_delta.entry(ndir).or_default() += 1;
                }
            }
        }
        let mut dirs = vec![odir];
        if ndir != odir {
            dirs.push(ndir);
        }
        for d in dirs {
            let mut inode = self.inode(d)?;
            inode.subdirs =
                (inode.subdirs as i64 + subdir_delta.get(&d).copied().unwrap_or(0)).max(0) as u32;
            inode.mtime = now;
            inode.ctime = now;
            txn.put_inode(d, &inode);
        }
        txn.write()
    }

    /// Moves one back-link of `ino` from `from` to `to`.
    fn relink(
        &self,
        txn: &mut Txn<'_>,
        ino: Ino,
        from: (Ino, &[u8]),
        to: (Ino, &[u8]),
        now: Timestamp,
    ) -> Result<()> {
        let mut inode = self.inode(ino)?;
        inode
            .links
            .retain(|l| !(l.dir == from.0 && l.name == from.1));
        inode.links.push(Link {
            dir: to.0,
            name: to.1.to_vec(),
        });
        inode.links.sort();
        inode.ctime = now;
        txn.put_inode(ino, &inode);
        Ok(())
    }

    // ---- extended attributes ----

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?
            .xattr(name)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::NoAttr(show(name)))
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .inode(ino)?
            .xattrs
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > 255 || value.len() > 65536 {
            return Err(Error::Invalid(format!("xattr {}", show(name))));
        }
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        inode.set_xattr(name, value);
        inode.ctime = Timestamp::now();
        let mut txn = self.txn();
        txn.put_inode(ino, &inode);
        txn.write()
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let _g = self.writer()?;
        let mut inode = self.inode(ino)?;
        if !inode.remove_xattr(name) {
            return Err(Error::NoAttr(show(name)));
        }
        inode.ctime = Timestamp::now();
        let mut txn = self.txn();
        txn.put_inode(ino, &inode);
        txn.write()
    }

    /// Makes the metadata of this tree durable (names, attributes, sizes: the log), not file
    /// data: fsync(2) of a directory, which POSIX asks to make its entries durable, as ext4
    /// does. Data written since the last `fsync` may read as zeros after a power loss (never as
    /// other data: slots are not reused before the commit). Syncing the scratch file here made
    /// a directory fsync write every file's data, an earlier untar's included (0.4 s in
    /// fsbench's small_files).
    pub fn fsync_metadata(&self) -> Result<()> {
        self.punch_forgotten()?;
        self.store.inner.meta.sync_wal()
    }

    /// Makes this tree's writes durable: scratch data and the metadata log.
    pub fn fsync(&self) -> Result<()> {
        self.punch_forgotten()?;
        let file = self.scratch.lock().expect("poisoned").clone();
        if let Some(f) = file {
            f.sync_data().ctx(|| "sync scratch file".into())?;
        }
        self.store.inner.meta.sync_wal()
    }

    // ---- bulk operations for the layer importer ----

    /// Replaces an inode's record as a whole (import sets every attribute from a tar header).
    pub(crate) fn put_inode(&self, ino: Ino, inode: &Inode) -> Result<()> {
        let _g = self.writer()?;
        let mut txn = self.txn();
        txn.put_inode(ino, inode);
        txn.write()
    }

    /// Creates `name` in `dir` with a complete inode record in one batch, without touching the
    /// directory's times (a layer sets those from its own entry, as tar does).
    pub(crate) fn create_node(&self, dir: Ino, name: &[u8], inode: Inode) -> Result<Ino> {
        Ok(self.create_with(dir, name, inode, None, None)?.0)
    }

    /// Creates the regular file `name` in `dir` with its whole content from `reader` (`size`
    /// bytes expected), hashed straight into the chunk store (no scratch file), all in one
    /// batch. Returns the inode and the number of bytes read.
    pub(crate) fn create_file(
        &self,
        dir: Ino,
        name: &[u8],
        inode: Inode,
        reader: &mut dyn std::io::Read,
        size: u64,
        limit: u64,
    ) -> Result<(Ino, u64)> {
        let content = Content {
            reader,
            size,
            limit,
        };
        let (ino, _, total) = self.create_with(dir, name, inode, Some(content), None)?;
        Ok((ino, total))
    }

    /// Inserts `name` in `dir` pointing at a new inode with record `inode` (and, for a file, its
    /// whole content from `content`), in one batch. With `touch`, the directory's mtime and ctime
    /// become that time, as a create through the file system does; a layer sets them itself.
    fn create_with(
        &self,
        dir: Ino,
        name: &[u8],
        mut inode: Inode,
        content: Option<Content<'_>>,
        touch: Option<Timestamp>,
    ) -> Result<(Ino, Inode, u64)> {
        check_name(name)?;
        let _g = self.writer()?;
        let mut parent = self.dir_inode(dir)?;
        if self.entry(dir, name)?.is_some() {
            return Err(Error::Exists(show(name)));
        }
        let ino = Ino(self.store.alloc_id()?);
        inode.links = vec![Link {
            dir,
            name: name.to_vec(),
        }];
        let mut txn = self.txn();
        let mut total = 0;
        let _chunks = match content {
            Some(content) => {
                let guard = self.store.inner.chunk_lock.lock().expect("poisoned");
                total = self.fill(&mut txn, &mut inode, content)?;
                Some(guard)
            }
            None => None,
        };
        txn.put_inode(ino, &inode);
        txn.put_dentry(
            dir,
            name,
            Dentry::Entry {
                ino,
                kind: inode.kind,
            },
        );
        if inode.kind == FileKind::Dir {
            parent.subdirs += 1;
            txn.new_dirs.push(ino);
        }
        if let Some(now) = touch {
            parent.mtime = now;
            parent.ctime = now;
        }
        if inode.kind == FileKind::Dir || touch.is_some() {
            txn.put_inode(dir, &parent);
        }
        txn.write()?;
        Ok((ino, inode, total))
    }

    /// Removes `name` from `dir` whatever it is; a directory goes with everything below it (the
    /// subtree becomes unreachable from this snapshot in O(1)). Directory times are kept.
    pub(crate) fn remove_any(&self, dir: Ino, name: &[u8]) -> Result<()> {
        let _g = self.writer()?;
        let (ino, kind) = self
            .entry(dir, name)?
            .ok_or_else(|| Error::NotFound(show(name)))?;
        let mut txn = self.txn();
        let now = Timestamp::now();
        self.unlink_inode(&mut txn, ino, dir, name, now)?;
        self.remove_entry(&mut txn, dir, name)?;
        if kind == FileKind::Dir {
            let mut parent = self.dir_inode(dir)?;
            parent.subdirs = parent.subdirs.saturating_sub(1);
            txn.put_inode(dir, &parent);
        }
        txn.write()
    }

    /// Reads a file's whole content into new chunks, adding its extents and chunk records to
    /// `txn` and its size, data id and object pack to `inode`. Caller holds `chunk_lock`.
    ///
    /// A file of `OBJECT_MIN..=PACK_MAX` bytes gets its own object pack: its new chunks are
    /// written there at the file's offsets, so when all of them are new (or all already stored
    /// at those offsets of one earlier object, as for a second copy of the same file) the pack is
    /// the file's exact content and a mount can pass reads through to it.
    fn fill(&self, txn: &mut Txn<'_>, inode: &mut Inode, content: Content<'_>) -> Result<u64> {
        let Content {
            reader,
            size,
            limit,
        } = content;
        let cs = self.chunk_size() as usize;
        let data = DataId(self.store.alloc_id()?);
        let packs = self.store.packs();
        let object = if (OBJECT_MIN..=PACK_MAX).contains(&size) {
            Some(packs.begin_object()?)
        } else {
            None
        };
        // Whether every non-zero chunk so far is stored at its own offset of one pack `home`.
        let mut home: Option<PackId> = None;
        let mut identity = object.is_some();
        let mut zeros = false;
        let mut used = false;
        let mut buf = vec![0u8; cs];
        let mut total = 0u64;
        let mut index = 0u64;
        let mut pending: HashMap<ChunkDigest, ChunkRecord> = HashMap::new();
        let mut live: HashMap<PackId, u64> = HashMap::new();
        let mut read_all = || -> Result<()> {
            loop {
                let n = read_full(reader, &mut buf)
                    .ctx(|| "read file content from the layer".into())?;
                if n == 0 {
                    return Ok(());
                }
                total += n as u64;
                if total > limit {
                    return Err(Error::Limit(format!("layer content exceeds {limit} bytes")));
                }
                let chunk = &buf[..n];
                let at = index * cs as u64;
                if is_zero(chunk) {
                    txn.put_extent(data, index, Extent::Zero);
                    zeros = true;
                } else {
                    let (digest, pack, offset) = self.store.put_chunk_at(
                        chunk,
                        object.map(|o| (o, at)),
                        &mut pending,
                        &mut live,
                    )?;
                    used |= Some(pack) == object;
                    identity &= offset == at && *home.get_or_insert(pack) == pack;
                    txn.put_extent(
                        data,
                        index,
                        Extent::Stored {
                            digest,
                            len: n as u32,
                        },
                    );
                }
                index += 1;
                if n < cs {
                    return Ok(());
                }
            }
        };
        let result = read_all();
        if let Some(o) = object {
            packs.finish_object(o, total, used && result.is_ok())?;
        }
        result?;
        self.store.flush_chunks(&mut txn.b, pending, live, false)?;
        inode.size = total;
        inode.data = (total > 0).then_some(data);
        // A new object holds zeros where it has holes; an earlier one may not, so a file found
        // whole in an earlier object must have no zero chunk.
        inode.object = match home {
            Some(p) if identity && Some(p) == object => Some(p),
            Some(p) if identity && !zeros && packs.object_len(p)? == Some(total) => Some(p),
            _ => None,
        };
        Ok(total)
    }

    /// Replaces directory `name` in `dir` by a new, empty directory inode with the given record:
    /// everything an ancestor had below it disappears (an OCI opaque directory). Entries the head
    /// snapshot already added there move to the new inode.
    pub(crate) fn make_opaque(&self, dir: Ino, name: &[u8]) -> Result<Ino> {
        let _g = self.writer()?;
        let (old, kind) = self
            .entry(dir, name)?
            .ok_or_else(|| Error::NotFound(show(name)))?;
        if kind != FileKind::Dir {
            return Err(Error::NotDir(show(name)));
        }
        let mut inode = self.inode(old)?;
        let ino = Ino(self.store.alloc_id()?);
        let mut txn = self.txn();
        let own: Vec<DirEntry> = {
            let prefix = key::dir_prefix(old);
            let mut scan = self.store.inner.meta.prefix(&prefix);
            let mut own = Vec::new();
            while let Some((k, v)) = scan.next_entry()? {
                let (base, snap) = key::split_version(k);
                if snap == self.head()
                    && let Dentry::Entry { ino, kind } = Dentry::decode(v)?
                {
                    own.push(DirEntry {
                        name: base[prefix.len()..base.len() - 1].to_vec(),
                        ino,
                        kind,
                    });
                }
            }
            own
        };
        inode.subdirs = 0;
        for e in &own {
            txn.delete_dentry(old, &e.name);
            txn.put_dentry(
                ino,
                &e.name,
                Dentry::Entry {
                    ino: e.ino,
                    kind: e.kind,
                },
            );
            let mut child = self.inode(e.ino)?;
            for l in &mut child.links {
                if l.dir == old && l.name == e.name {
                    l.dir = ino;
                }
            }
            child.links.sort();
            txn.put_inode(e.ino, &child);
            if e.kind == FileKind::Dir {
                inode.subdirs += 1;
            }
        }
        // The old directory loses its name; it stays in the ancestors' trees only.
        let mut old_inode = self.inode(old)?;
        old_inode.links.clear();
        txn.put_inode(old, &old_inode);
        txn.put_inode(ino, &inode);
        txn.put_dentry(
            dir,
            name,
            Dentry::Entry {
                ino,
                kind: FileKind::Dir,
            },
        );
        txn.write()?;
        Ok(ino)
    }

    // ---- commit ----

    /// Prepares the head snapshot for commit: purges inodes that lost their last link, and hashes
    /// every dirty chunk into the chunk store (all-zero chunks become holes). Each batch of chunks
    /// is fsynced in the packs before the metadata that refers to it is written.
    pub(crate) fn seal(&self) -> Result<()> {
        let _g = self.writer()?;
        // Every orphan goes below, freed or not.
        *self.orphans.lock().expect("poisoned") = Orphans::default();
        let head = self.head();
        let meta = &self.store.inner.meta;
        let prefix = key::change_prefix(head);
        let mut sizes: HashMap<DataId, u64> = HashMap::new();
        let mut orphans: Vec<(Ino, Inode)> = Vec::new();
        let mut dirty: Vec<(DataId, u64, u64)> = Vec::new();
        {
            let mut scan = meta.prefix(&prefix);
            while let Some((k, _)) = scan.next_entry()? {
                let base = &k[prefix.len()..];
                match base[0] {
                    key::INODE => {
                        let ino = Ino(key::read_u64(&base[1..]));
                        let Some(v) = meta.get(&key::versioned(base, head))? else {
                            continue;
                        };
                        let inode = Inode::decode(&v)?;
                        if inode.links.is_empty() && ino != Ino::ROOT {
                            orphans.push((ino, inode));
                        } else if let Some(d) = inode.data {
                            sizes.insert(d, inode.size);
                        }
                    }
                    key::EXTENT => {
                        let Some(v) = meta.get(&key::versioned(base, head))? else {
                            continue;
                        };
                        if let Extent::Dirty { slot } = Extent::decode(&v)? {
                            dirty.push((
                                DataId(key::read_u64(&base[1..])),
                                key::read_u64(&base[9..]),
                                slot,
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut txn = self.txn();
        for (ino, inode) in &orphans {
            // Whether the inode was new here or inherited, nothing in this tree names it now.
            let lower = match &self.parent {
                Some(p) => meta.visible(&key::inode_base(*ino), p)?.is_some(),
                None => false,
            };
            if lower {
                // Keep the head's version (it records the lost links) so diffs see the change.
                continue;
            }
            txn.delete_inode(*ino);
            if let Some(d) = inode.data {
                for (index, extent, snap) in self.extents(d, 0, u64::MAX)? {
                    if snap == head {
                        txn.drop_ref(extent, snap);
                        txn.delete_extent(d, index);
                    }
                }
            }
        }
        txn.write()?;
        let cs = self.chunk_size();
        for group in dirty.chunks(1024) {
            let mut txn = self.txn();
            let _cg = self.store.inner.chunk_lock.lock().expect("poisoned");
            let mut pending = HashMap::new();
            let mut live = HashMap::new();
            let mut buf = vec![0u8; cs as usize];
            let f = self.scratch()?;
            for &(data, index, slot) in group {
                let Some(&size) = sizes.get(&data) else {
                    // Content no inode of this snapshot uses any more (an orphan's).
                    txn.delete_extent(data, index);
                    continue;
                };
                let cstart = index * cs;
                if cstart >= size {
                    txn.delete_extent(data, index);
                    continue;
                }
                let len = (size - cstart).min(cs) as usize;
                read_full_at(&f, &mut buf[..len], slot * cs)?;
                let chunk = &buf[..len];
                let extent = if is_zero(chunk) {
                    Extent::Zero
                } else {
                    Extent::Stored {
                        digest: self.store.put_chunk(chunk, &mut pending, &mut live)?,
                        len: len as u32,
                    }
                };
                txn.put_extent(data, index, extent);
            }
            self.store.flush_chunks(&mut txn.b, pending, live, true)?;
            txn.write()?;
        }
        *self.scratch.lock().expect("poisoned") = None;
        Ok(())
    }

    // ---- paths ----

    /// Resolves a slash-separated path from the root. Symlinks in every component but the last
    /// are followed, inside this tree only: an absolute target restarts at this tree's root and
    /// `..` stops at it, so no path leads outside (as a chroot would).
    pub fn resolve_parent<'p>(&self, path: &'p [u8]) -> Result<(Ino, &'p [u8])> {
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        let Some((last, dirs)) = comps.split_last() else {
            return Err(Error::Invalid("empty path".into()));
        };
        let mut follows = 0;
        let mut dir = Ino::ROOT;
        for c in dirs {
            dir = self.walk(dir, c, &mut follows)?;
        }
        if dir != Ino::ROOT {
            self.dir_inode(dir)?;
        }
        Ok((dir, last))
    }

    /// Resolves a whole path, following symlinks in the last component too when `follow`.
    pub fn resolve(&self, path: &[u8], follow: bool) -> Result<Ino> {
        if path
            .split(|&b| b == b'/')
            .all(|c| c.is_empty() || c == b".")
        {
            return Ok(Ino::ROOT);
        }
        let (dir, last) = self.resolve_parent(path)?;
        if follow {
            let mut follows = 0;
            return self.walk(dir, last, &mut follows);
        }
        if last == b".." {
            return self.parent_of(dir);
        }
        Ok(self.lookup(dir, last)?.0)
    }

    /// The parent of directory `dir` (the root is its own parent).
    pub(crate) fn parent_of(&self, dir: Ino) -> Result<Ino> {
        if dir == Ino::ROOT {
            return Ok(Ino::ROOT);
        }
        Ok(self.inode(dir)?.links.first().map_or(Ino::ROOT, |l| l.dir))
    }

    /// One step of path resolution from `dir`, following a symlink if `name` is one.
    fn walk(&self, dir: Ino, name: &[u8], follows: &mut usize) -> Result<Ino> {
        if name == b".." {
            return self.parent_of(dir);
        }
        let (ino, inode) = self.lookup(dir, name)?;
        if inode.kind != FileKind::Symlink {
            return Ok(ino);
        }
        *follows += 1;
        if *follows > SYMLINK_MAX {
            return Err(Error::Loop(show(name)));
        }
        let mut at = if inode.target.starts_with(b"/") {
            Ino::ROOT
        } else {
            dir
        };
        for c in inode
            .target
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            at = self.walk(at, c, follows)?;
        }
        Ok(at)
    }
}

fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zeros (sparse
/// scratch files end at their last written byte).
fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => {
                buf[n..].fill(0);
                break;
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read scratch file", e)),
        }
    }
    Ok(())
}

/// True if every byte of `b` is zero (a chunk the store keeps as a hole); stops at the first
/// word that is not.
fn is_zero(b: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128.
    let (head, words, tail) = unsafe { b.align_to::<u128>() };
    head.iter().all(|&x| x == 0)
        && words
            .chunks(8)
            .all(|w| w.iter().fold(0, |acc, &x| acc | x) == 0)
        && tail.iter().all(|&x| x == 0)
}

/// The scratch slot of a dirty extent.
fn dirty_slot(extent: Extent) -> Option<u64> {
    match extent {
        Extent::Dirty { slot } => Some(slot),
        _ => None,
    }
}

/// Zeros a range of a scratch file by freeing it.
fn punch(f: &File, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    nix::fcntl::fallocate(
        f,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .map_err(|e| Error::io("free scratch space", e.into()))
}
