//! File content changes in the head snapshot: the scratch file of dirty chunks, write, truncate,
//! punch_hole, setattr, the kernel's writeback of large writes, and fsync.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Attr, SetAttr, Tree, Txn, XATTR_CAPS, is_zero, punch};
use crate::chunks::{WRITEBACK_STEP, start_writeback};
use crate::error::{Error, IoContext, Result};
use crate::ids::{DataId, Ino, SnapshotId};
use crate::meta::key;
use crate::records::{Extent, FileKind, Inode, Timestamp};

/// A write at least this large counts as streaming (`Tree::kick_writeback`); tar writes 10 KiB
/// at a time, dd and cp 128 KiB to 1 MiB (FUSE sends up to 1 MiB per WRITE).
const STREAM_WRITE: usize = 128 << 10;

impl Tree {
    pub(super) fn scratch(&self) -> Result<Arc<File>> {
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
    pub(super) fn known_dirty(
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
            let (_, bytes) = self.store.chunks().chunk(&digest)?;
            let n = ((keep_upto - cstart) as usize).min(bytes.len());
            self.store
                .packs()
                .take_space(n, || format!("copying up chunk {index} of data {}", data.0))?;
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
        match self.write_once(ino, offset, buf, kill_suid) {
            // The space of deleted files is freed lazily (`punch_forgotten`); a full disk is the
            // moment to free it, so that deleting files makes room for the next write at once.
            // A failed attempt recorded nothing, so it can be made again.
            Err(Error::NoSpace(_)) if self.has_forgotten() => {
                self.punch_forgotten()?;
                self.write_once(ino, offset, buf, kill_suid)
            }
            r => r,
        }
    }

    fn write_once(&self, ino: Ino, offset: u64, buf: &[u8], kill_suid: bool) -> Result<usize> {
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
            // All of it before any of it is written: a write that fails for space leaves the
            // file as it was (only the chunks it copies up are checked on their own).
            self.store
                .packs()
                .take_space(buf.len(), || format!("writing inode {ino}"))?;
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
                                .meta()
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
        self.attr(ino, &inode)
    }

    /// Makes the metadata of this tree durable (names, attributes, sizes: the log), not file
    /// data: fsync(2) of a directory, which POSIX asks to make its entries durable, as ext4
    /// does. Data written since the last `fsync` may read as zeros after a power loss (never as
    /// other data: slots are not reused before the commit). Syncing the scratch file here made
    /// a directory fsync write every file's data, an earlier untar's included (0.4 s in
    /// fsbench's small_files).
    pub fn fsync_metadata(&self) -> Result<()> {
        self.punch_forgotten()?;
        self.store.meta().sync_wal()
    }

    /// Makes this tree's writes durable: scratch data and the metadata log.
    pub fn fsync(&self) -> Result<()> {
        self.punch_forgotten()?;
        let file = self.scratch.lock().expect("poisoned").clone();
        if let Some(f) = file {
            f.sync_data().ctx(|| "sync scratch file".into())?;
        }
        self.store.meta().sync_wal()
    }
}
