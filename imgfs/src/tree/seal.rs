//! Commit's half of the tree: `seal` purges orphans and hashes the head's dirty chunks into the
//! chunk store.

use std::collections::HashMap;

use super::{Orphans, Tree, is_zero, read_full_at};
use crate::error::Result;
use crate::ids::{DataId, Ino};
use crate::meta::key::{self, Base};
use crate::records::{Extent, Inode};

impl Tree {
    /// Prepares the head snapshot for commit: purges inodes that lost their last link, and hashes
    /// every dirty chunk into the chunk store (all-zero chunks become holes). Each batch of chunks
    /// is fsynced in the packs before the metadata that refers to it is written.
    pub(crate) fn seal(&self) -> Result<()> {
        let _g = self.writer()?;
        // Every orphan goes below, freed or not.
        *self.orphans.lock().expect("poisoned") = Orphans::default();
        let head = self.head();
        let meta = self.store.meta();
        let mut sizes: HashMap<DataId, u64> = HashMap::new();
        let mut orphans: Vec<(Ino, Inode)> = Vec::new();
        let mut dirty: Vec<(DataId, u64, u64)> = Vec::new();
        {
            for base in meta.changes(head) {
                let base = base?;
                match base {
                    Base::Inode(ino) => {
                        let Some(v) = meta.get(&base.versioned(head))? else {
                            continue;
                        };
                        let inode = Inode::decode(&v)?;
                        if inode.links.is_empty() && ino != Ino::ROOT {
                            orphans.push((ino, inode));
                        } else if let Some(d) = inode.data {
                            sizes.insert(d, inode.size);
                        }
                    }
                    Base::Extent { data, index } => {
                        let Some(v) = meta.get(&base.versioned(head))? else {
                            continue;
                        };
                        if let Extent::Dirty { slot } = Extent::decode(&v)? {
                            dirty.push((data, index, slot));
                        }
                    }
                    Base::Dentry { .. } => {}
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
            let _cg = self.store.chunks().lock();
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
                        digest: self
                            .store
                            .chunks()
                            .put_chunk(chunk, &mut pending, &mut live)?,
                        len: len as u32,
                    }
                };
                txn.put_extent(data, index, extent);
            }
            self.store
                .chunks()
                .flush_chunks(&mut txn.b, pending, live, true)?;
            txn.write()?;
        }
        *self.scratch.lock().expect("poisoned") = None;
        Ok(())
    }
}
