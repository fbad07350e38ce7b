//! Bulk operations for the layer importer: whole inode records, nodes created with their
//! content in one batch (`fill`, which hashes straight into the chunk store and writes object
//! packs), removal of whole subtrees, and opaque directories.

use std::collections::HashMap;

use super::read::bad_key;
use super::{DirEntry, Tree, Txn, check_name, is_zero, show};
use crate::chunks::PACK_MAX;
use crate::error::{Error, IoContext, Result};
use crate::ids::{ChunkDigest, DataId, Ino, PackId};
use crate::meta::key::{self, Base, Key};
use crate::records::{ChunkRecord, Dentry, Extent, FileKind, Inode, Link, Timestamp};

/// The smallest file that layer import stores in an object pack of its own. A mount passes
/// reads of such a file straight to the pack (FUSE passthrough), which pays off for big files;
/// for small ones it would cost a pack file each.
pub const OBJECT_MIN: u64 = 1 << 20;

/// A file's content as a layer gives it: `size` bytes expected, at most `limit` accepted.
pub(super) struct Content<'r> {
    reader: &'r mut dyn std::io::Read,
    size: u64,
    limit: u64,
}

impl Tree {
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
    pub(super) fn create_with(
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
                let guard = self.store.chunks().lock();
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
    /// `txn` and its size, data id and object pack to `inode`. Caller holds the chunk store's `lock`.
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
                    let (digest, pack, offset) = self.store.chunks().put_chunk_at(
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
        self.store
            .chunks()
            .flush_chunks(&mut txn.b, pending, live, false)?;
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
            let mut scan = self.store.meta().prefix(&prefix);
            let mut own = Vec::new();
            while let Some((k, v)) = scan.next_entry()? {
                let Some(Key::Version { base, snap }) = Key::parse(k) else {
                    return Err(bad_key(k));
                };
                if snap == self.head()
                    && let Dentry::Entry { ino, kind } = Dentry::decode(v)?
                {
                    let Base::Dentry { name, .. } = base else {
                        return Err(bad_key(k));
                    };
                    own.push(DirEntry { name, ino, kind });
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
