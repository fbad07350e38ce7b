//! Path resolution inside one tree: symlinks are followed without ever leaving it.

use super::{Tree, show};
use crate::error::{Error, Result};
use crate::ids::Ino;
use crate::records::FileKind;

/// How many symlinks path resolution follows before it gives up.
const SYMLINK_MAX: usize = 40;

impl Tree {
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
