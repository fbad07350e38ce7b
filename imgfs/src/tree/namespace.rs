//! Namespace changes: mknod, link, unlink, rmdir and rename, and the orphans that unlinking
//! leaves (files whose space `forget` and `punch_forgotten` free before the commit).

use std::collections::HashMap;

use super::{NewNode, RenameMode, Tree, Txn, check_name, dirty_slot, punch, show};
use crate::error::{Error, Result};
use crate::ids::Ino;
use crate::records::{Dentry, FileKind, Inode, Link, Timestamp};

impl Tree {
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
    pub(super) fn remove_entry(&self, txn: &mut Txn<'_>, dir: Ino, name: &[u8]) -> Result<()> {
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
    pub(super) fn unlink_inode(
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

    /// Whether deleted files wait for `punch_forgotten` to free their space.
    pub(super) fn has_forgotten(&self) -> bool {
        !self.orphans.lock().expect("poisoned").forgotten.is_empty()
    }

    /// How many forgotten orphans `forget` lets gather before it frees their space itself.
    const PUNCH_BATCH: usize = 4096;

    /// Frees the scratch space of forgotten orphans' dirty chunks (see `Orphans`). Their
    /// metadata stays as it is for the commit to purge: nothing can read it any more, and
    /// slots are not reused before the commit, so it costs no metadata write here.
    pub(super) fn punch_forgotten(&self) -> Result<()> {
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
}
