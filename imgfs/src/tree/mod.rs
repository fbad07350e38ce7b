//! The file tree of one snapshot: POSIX-style operations by inode number, as the FUSE adapter,
//! the layer importer and the tests call them. Knows nothing about FUSE or mounts.
//!
//! Reads resolve every key to its newest version visible from the snapshot's chain (one seek each,
//! `MetaDb::visible`). Writes go to the head snapshot only, each operation one atomic batch; a
//! per-tree mutex serialises the operations that change metadata. File data written here lands in
//! the snapshot's scratch file, a sparse file of chunk-sized slots (one per dirty chunk), and is
//! hashed into the chunk store when the snapshot is committed (`seal`).
//!
//! This file holds the `Tree` type, its `Cache`, `Txn` (one atomic group of writes) and the helpers
//! the others share; each job has a file of its own: `read`, `write`, `namespace`, `xattr`,
//! `fill` (the layer importer's), `seal` and `path`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ids::{ChunkDigest, DataId, Ino, SnapshotId};
use crate::meta::key::{self, Base};
use crate::meta::{Batch, Chain};
use crate::records::{Dentry, Extent, FileKind, Inode, SnapshotRecord, Timestamp};
use crate::store::Store;

mod fill;
mod namespace;
mod path;
mod read;
mod seal;
mod write;
mod xattr;

pub use fill::OBJECT_MIN;

/// The longest file name a directory entry may have.
pub const NAME_MAX: usize = 255;

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
    /// 512-byte blocks the content takes (`Tree::blocks`): what `du` sums.
    pub blocks: u64,
    pub rdev: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl Attr {
    /// The attributes of `inode`, with `blocks` as `Tree::blocks` counts them; `Tree::attr` is
    /// the one caller, so that every reply reports the same blocks.
    fn of(ino: Ino, inode: &Inode, blocks: u64) -> Attr {
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
            blocks,
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
    /// The blocks (`Tree::blocks`) of content larger than one chunk, with the file size they
    /// were counted for: a stat of a big file after the first reads no extents. Dropped by
    /// every `Txn` that writes or deletes an extent of that content.
    blocks: HashMap<DataId, (u64, u64)>,
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

    fn insert_blocks(&mut self, data: DataId, size: u64, blocks: u64) {
        if self.blocks.len() >= Self::CAPACITY {
            self.blocks.clear();
        }
        self.blocks.insert(data, (size, blocks));
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
            self.store.release_writer(self.rec.id);
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
            cache.blocks.remove(&data);
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
            return store.meta().write(batch, false);
        }
        let _g = store.chunks().lock();
        let mut batch = batch;
        let freed = store.chunks().unref_chunks(&mut batch, &self.unref)?;
        store.meta().write(batch, false)?;
        store.chunks().release_chunks(&freed)
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
        if writable && !store.claim_writer(rec.id) {
            return Err(Error::Invalid(format!(
                "snapshot {} is already open for writing",
                rec.name
            )));
        }
        // Slots already used by the head's dirty chunks (a reopened active snapshot).
        let mut next_slot = 0;
        if writable {
            for base in store.meta().changes(rec.id) {
                let base = base?;
                if let Base::Extent { .. } = base
                    && let Some(v) = store.meta().get(&base.versioned(rec.id))?
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
        self.store.chunk_size() as u64
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
