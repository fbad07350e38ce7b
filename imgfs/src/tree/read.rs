//! Reads: inode records and directory entries (through the tree's `Cache`), listings, symlink
//! targets, file content and chunk maps, each resolved to the version the snapshot's chain sees.

use super::{Attr, DirEntry, NAME_MAX, Tree, read_full_at, show};
use crate::error::{Error, Result};
use crate::ids::{DataId, Ino, SnapshotId};
use crate::meta::Chain;
use crate::meta::key::{self, Base};
use crate::records::{Dentry, Extent, FileKind, Inode};

impl Tree {
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
            .meta()
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
        self.attr(ino, &self.inode(ino)?)
    }

    /// What stat reports about inode `ino`, whose record is `inode`: every reply that carries
    /// attributes is built here, so all of them report the same `blocks`.
    pub fn attr(&self, ino: Ino, inode: &Inode) -> Result<Attr> {
        Ok(Attr::of(ino, inode, self.blocks(inode)?))
    }

    /// The 512-byte blocks a file's content takes, as ext4 reports the ones it allocated: each
    /// chunk with data (stored or dirty) counts, the last one with its real length, and holes
    /// (chunks of zeros, chunks with no extent) do not. `du` inside a mount then shows a sparse
    /// file as sparse. Other kinds report their size, as before.
    ///
    /// A file of at most one chunk reports its size without looking at its extent: a stat of a
    /// tree (lookup, readdirplus, `ls -l` of many small files) then costs no read per file. Such
    /// a file is a hole only when its one chunk is all zeros (written or imported so), which ext4
    /// would have allocated too unless the writer skipped it; the count is off by one chunk at
    /// most. A larger file's extents are read once, and the count is kept in the tree's `Cache`
    /// until a `Txn` writes one of them.
    fn blocks(&self, inode: &Inode) -> Result<u64> {
        let sectors = |bytes: u64| bytes.div_ceil(512);
        let cs = self.chunk_size();
        let data = match (inode.kind, inode.data) {
            (FileKind::File, None) => return Ok(0),
            (FileKind::File, Some(data)) if inode.size > cs => data,
            (FileKind::Symlink, _) => return Ok(sectors(inode.target.len() as u64)),
            _ => return Ok(sectors(inode.size)),
        };
        let epoch = {
            let cache = self.cache.lock().expect("poisoned");
            if let Some(&(size, blocks)) = cache.blocks.get(&data)
                && size == inode.size
            {
                return Ok(blocks);
            }
            cache.epoch
        };
        let mut blocks = 0;
        for (index, extent, _) in self.extents(data, 0, (inode.size - 1) / cs)? {
            let left = inode.size - index * cs;
            blocks += match extent {
                Extent::Zero => 0,
                Extent::Stored { len, .. } => sectors(u64::from(len).min(left)),
                Extent::Dirty { .. } => sectors(cs.min(left)),
            };
        }
        let mut cache = self.cache.lock().expect("poisoned");
        if cache.epoch == epoch {
            cache.insert_blocks(data, inode.size, blocks);
        }
        Ok(blocks)
    }

    pub(super) fn dir_inode(&self, dir: Ino) -> Result<Inode> {
        let inode = self.inode(dir)?;
        if inode.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {dir}")));
        }
        Ok(inode)
    }

    /// The entry `name` in `dir`, as seen from `chain`.
    pub(super) fn entry_in(
        &self,
        chain: &Chain,
        dir: Ino,
        name: &[u8],
    ) -> Result<Option<(Ino, FileKind)>> {
        match self
            .store
            .meta()
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

    pub(super) fn entries(&self, dir: Ino, limit: usize) -> Result<Vec<DirEntry>> {
        let prefix = key::dir_prefix(dir);
        let mut out = Vec::new();
        self.store
            .meta()
            .visible_range(&prefix, &prefix, &self.chain, |base, _, v| {
                if let Dentry::Entry { ino, kind } = Dentry::decode(v)? {
                    let Some(Base::Dentry { name, .. }) = Base::parse(base) else {
                        return Err(bad_key(base));
                    };
                    out.push(DirEntry { name, ino, kind });
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
    pub(super) fn extents(
        &self,
        data: DataId,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, Extent, SnapshotId)>> {
        let prefix = key::data_prefix(data);
        let start = key::extent_base(data, first);
        let mut out = Vec::new();
        self.store
            .meta()
            .visible_range(&prefix, &start, &self.chain, |base, snap, v| {
                let Some(Base::Extent { index, .. }) = Base::parse(base) else {
                    return Err(bad_key(base));
                };
                if index > last {
                    return Ok(false);
                }
                out.push((index, Extent::decode(v)?, snap));
                Ok(true)
            })?;
        Ok(out)
    }

    /// Where the next data (`data`) or hole (not `data`) starts at or after `offset`, as
    /// lseek's SEEK_DATA and SEEK_HOLE answer: holes are chunks of zeros and chunks with no
    /// extent, and the end of the file is a hole. `None` when `offset` is at or past the end,
    /// or, for data, when only holes follow.
    pub fn seek_data(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(Error::Invalid(format!("inode {ino} is not a file")));
        }
        if offset >= inode.size {
            return Ok(None);
        }
        let Some(id) = inode.data else {
            return Ok((!data).then_some(offset));
        };
        let cs = self.chunk_size();
        let first = offset / cs;
        let mut expect = first;
        for (index, extent, _) in self.extents(id, first, (inode.size - 1) / cs)? {
            let is_data = !matches!(extent, Extent::Zero);
            if !data && index > expect {
                // A chunk without an extent before this one.
                break;
            }
            if is_data == data {
                return Ok(Some(offset.max(index * cs)));
            }
            expect = index + 1;
        }
        if data {
            return Ok(None);
        }
        Ok(Some(offset.max(expect * cs).min(inode.size)))
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
                    let (_, bytes) = self.store.chunks().chunk(&digest)?;
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
}

/// The error for a key under a directory's or a content's prefix that does not decode.
pub(super) fn bad_key(base: &[u8]) -> Error {
    Error::Corrupt(format!("key {} does not decode", hex::encode(base)))
}
