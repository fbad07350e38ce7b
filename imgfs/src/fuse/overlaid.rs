//! Build steps on kernel overlayfs over imgfs: `FuseSnapshotter::mount_volatile` mounts the
//! active snapshot read-only over FUSE as the lower layer of a kernel overlay whose upper dir is
//! a plain directory of the store's file system, so that everything a step writes (dpkg's
//! thousands of small files, each a create, a write, a chown, a chmod, a utime and a rename) is
//! served by the kernel, not by a FUSE round trip per operation. Unmounting folds the upper dir
//! into the snapshot (`fold`), which then holds exactly what a FUSE mount would have recorded,
//! and the upper dir goes. stargz-snapshotter stacks its FUSE layers under overlayfs the same way.
//!
//! Layout: `<store>/steps/<snapshot id>/` holds `lower` (the FUSE mount point), `upper` and
//! `work`. It is scratch: a process that dies leaves it behind, and the next one to open the
//! store for writing removes it (`remove_leftovers`), as it removes the snapshot.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ids::Ino;
use crate::overlay::{mount_overlay, sys, umount_overlay};
use crate::records::{FileKind, Inode, Timestamp};
use crate::snapshot::Mounted;
use crate::store::Store;
use crate::tree::Tree;

use super::{FuseMount, MountOptions};

/// Where a store keeps the scratch dirs of its overlaid steps.
fn steps_dir(store: &Store) -> PathBuf {
    store.root().join("steps")
}

/// Mounts the active snapshot `key` at `target` as an overlay over a read-only FUSE view of it.
/// Fails if the kernel refuses the overlay (the caller then mounts the snapshot over FUSE
/// alone); nothing is left behind then.
pub(super) fn mount(
    store: &Store,
    key: &str,
    target: &Path,
    options: &MountOptions,
) -> io::Result<OverlaidMount> {
    let rec = store.stat(key).map_err(io::Error::other)?;
    let dir = steps_dir(store).join(rec.id.0.to_string());
    // The snapshot is claimed for writing from here to the fold, as a FUSE mount of it would
    // be, so that nothing else writes to it meanwhile.
    let busy = || {
        io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("snapshot {key} is already mounted"),
        )
    };
    if dir.exists() {
        return Err(busy());
    }
    let writer = store.tree(key).map_err(|_| busy())?;
    let mut m = OverlaidMount {
        writer: Some(writer),
        key: key.to_string(),
        target: target.to_path_buf(),
        dir,
        lower: None,
        overlay: false,
        fold: false,
    };
    std::fs::create_dir_all(steps_dir(store))?;
    sys::spread_subdirs(&steps_dir(store));
    let (lower, upper, work) = m.dirs();
    for d in [&lower, &upper, &work] {
        std::fs::create_dir_all(d)?;
    }
    // The merged root shows the upper dir's attributes, so it starts as the snapshot's root.
    let tree = store.tree_read_only(key).map_err(io::Error::other)?;
    copy_root_attrs(&tree.inode(Ino::ROOT).map_err(io::Error::other)?, &upper)?;
    let lower_options = MountOptions {
        volatile: false,
        ..options.clone()
    };
    m.lower = Some(super::mount(tree, &lower, &lower_options)?);
    mount_overlay(target, &[lower], Some((&upper, &work)), true)?;
    m.overlay = true;
    m.fold = true;
    Ok(m)
}

/// Gives the upper dir `upper` the mode, owner, times and xattrs of the snapshot's root.
fn copy_root_attrs(root: &Inode, upper: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(upper, Some(root.uid), Some(root.gid))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(root.perm))?;
    for (name, value) in &root.xattrs {
        // One that cannot be set (a trusted.* one in a user namespace) would read as removed
        // at the fold: the caller mounts over FUSE alone instead.
        sys::lsetxattr(upper, name, value)?;
    }
    let ts = |t: Timestamp| nix::sys::time::TimeSpec::new(t.sec, t.nsec.into());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        upper,
        &ts(root.atime),
        &ts(root.mtime),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Removes what overlaid steps of processes that are gone left in the store: their FUSE lower
/// mounts (detached, their server being dead) and their dirs. Called with the store open for
/// writing, so no live process uses them. What cannot be removed is said and left: it costs
/// disk space, not correctness, since a step never reuses a dir.
pub(super) fn remove_leftovers(store: &Store) {
    let steps = steps_dir(store);
    let Ok(list) = std::fs::read_dir(&steps) else {
        return;
    };
    for ent in list.flatten() {
        let dir = ent.path();
        let _ = nix::mount::umount2(&dir.join("lower"), nix::mount::MntFlags::MNT_DETACH);
        let shown = dir.display();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %shown, "removed a cut-short build step's scratch"),
            Err(e) => {
                tracing::warn!(dir = %shown, "cannot remove a cut-short build step's scratch: {e}")
            }
        }
    }
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        context: path.display().to_string(),
        source,
    }
}

/// An overlaid step's mount. Unmounting takes the overlay and the FUSE lower away, folds the
/// upper dir into the snapshot and removes the scratch dir; dropping does the same and logs
/// what failed.
pub struct OverlaidMount {
    /// The snapshot, open for writing: what the fold writes through.
    writer: Option<Tree>,
    key: String,
    target: PathBuf,
    dir: PathBuf,
    lower: Option<FuseMount>,
    /// The overlay is mounted at `target`.
    overlay: bool,
    /// The upper dir is still to be folded into the snapshot.
    fold: bool,
}

impl OverlaidMount {
    fn dirs(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.dir.join("lower"),
            self.dir.join("upper"),
            self.dir.join("work"),
        )
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.overlay {
            umount_overlay(&self.target)?;
            self.overlay = false;
        }
        if let Some(lower) = self.lower.take() {
            lower.unmount()?;
        }
        if !self.dir.exists() {
            return Ok(());
        }
        let (_, upper, _) = self.dirs();
        let folded = match (std::mem::take(&mut self.fold), self.writer.take()) {
            (true, Some(tree)) => tracing::info_span!("fold").in_scope(|| fold(&tree, &upper)),
            _ => Ok(()),
        };
        // The upper dir goes whether the fold worked or not: a failed fold leaves the snapshot
        // half-written, which the caller removes. What cannot be removed waits for the next
        // open of the store (`remove_leftovers`); the snapshot is whole without it.
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            let dir = self.dir.display();
            tracing::warn!(dir = %dir, "cannot remove a build step's scratch dir: {e}");
        }
        folded.map_err(|e| io::Error::other(format!("snapshot {}: {e}", self.key)))
    }
}

impl Mounted for OverlaidMount {
    fn path(&self) -> &Path {
        &self.target
    }

    fn unmount(mut self: Box<Self>) -> io::Result<()> {
        self.finish()
    }
}

impl Drop for OverlaidMount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            let target = self.target.display();
            tracing::error!(%target, error = %e, "could not unmount a build step's snapshot");
        }
    }
}

/// Folds the overlay upper dir `upper` into `tree`, the active snapshot that was its lower
/// layer: whiteouts remove, opaque directories replace, every other entry replaces what the
/// tree had under its name, and directories that were only copied up keep their inode (their
/// attributes are set only where they changed). File content goes straight into the chunk
/// store, hashed, as a layer import's does.
pub fn fold(tree: &Tree, upper: &Path) -> Result<()> {
    let mut links = HashMap::new();
    let root = std::fs::symlink_metadata(upper).map_err(|e| io_err(upper, e))?;
    fold_dir(tree, upper, Ino::ROOT, &mut links)?;
    set_dir_attrs(tree, Ino::ROOT, upper, &root)
}

/// Upper files with more than one link, by (device, inode), and the tree inode each became.
type Links = HashMap<(u64, u64), Ino>;

fn fold_dir(tree: &Tree, abs: &Path, dir: Ino, links: &mut Links) -> Result<()> {
    let ctx = |e| io_err(abs, e);
    let mut list: Vec<(Vec<u8>, Metadata)> = Vec::new();
    for ent in std::fs::read_dir(abs).map_err(ctx)? {
        let ent = ent.map_err(ctx)?;
        let m = ent.metadata().map_err(ctx)?;
        list.push((ent.file_name().as_bytes().to_vec(), m));
    }
    list.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, m) in list {
        let path = abs.join(std::ffi::OsStr::from_bytes(&name));
        let ctx = |e| io_err(&path, e);
        let existing = tree.entry(dir, &name)?;
        if sys::is_whiteout(&path, &m).map_err(ctx)? {
            if existing.is_some() {
                tree.remove_any(dir, &name)?;
            }
            continue;
        }
        if m.is_dir() {
            let ino = match existing {
                Some((_, FileKind::Dir)) if sys::is_opaque(&path).map_err(ctx)? => {
                    tree.make_opaque(dir, &name)?
                }
                Some((ino, FileKind::Dir)) => ino,
                Some(_) => {
                    tree.remove_any(dir, &name)?;
                    tree.create_node(dir, &name, new_inode(FileKind::Dir, &path, &m)?)?
                }
                None => tree.create_node(dir, &name, new_inode(FileKind::Dir, &path, &m)?)?,
            };
            fold_dir(tree, &path, ino, links)?;
            set_dir_attrs(tree, ino, &path, &m)?;
            continue;
        }
        let key = (m.dev(), m.ino());
        if m.nlink() > 1
            && let Some(&target) = links.get(&key)
        {
            if existing.is_some() {
                tree.remove_any(dir, &name)?;
            }
            tree.link(target, dir, &name)?;
            continue;
        }
        if existing.is_some() {
            tree.remove_any(dir, &name)?;
        }
        let kind = sys::file_kind(&m);
        let mut inode = new_inode(kind, &path, &m)?;
        let ino = match kind {
            FileKind::File => {
                // The overlay is gone, so nothing changes the upper dir any more; O_NOFOLLOW
                // all the same, as the entry was a regular file when listed.
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(ctx)?;
                let (ino, read) = tree.create_file(dir, &name, inode, &mut f, m.len(), u64::MAX)?;
                if read != m.len() {
                    return Err(Error::Invalid(format!(
                        "{}: changed while it was folded into the snapshot",
                        path.display()
                    )));
                }
                ino
            }
            FileKind::Symlink => {
                inode.target = std::fs::read_link(&path)
                    .map_err(ctx)?
                    .into_os_string()
                    .into_encoded_bytes();
                tree.create_node(dir, &name, inode)?
            }
            _ => {
                inode.rdev = m.rdev();
                tree.create_node(dir, &name, inode)?
            }
        };
        if m.nlink() > 1 {
            links.insert(key, ino);
        }
    }
    Ok(())
}

fn times(m: &Metadata) -> (Timestamp, Timestamp, Timestamp) {
    let ts = |sec: i64, nsec: i64| Timestamp {
        sec,
        nsec: nsec as u32,
    };
    (
        ts(m.atime(), m.atime_nsec()),
        ts(m.mtime(), m.mtime_nsec()),
        ts(m.ctime(), m.ctime_nsec()),
    )
}

/// The record of an upper entry: its mode, owner, times and xattrs (overlayfs's own marks left
/// out).
fn new_inode(kind: FileKind, path: &Path, m: &Metadata) -> Result<Inode> {
    let (atime, mtime, ctime) = times(m);
    let mut inode = Inode::new(kind, m.mode() & 0o7777, m.uid(), m.gid(), mtime);
    inode.atime = atime;
    inode.ctime = ctime;
    inode.xattrs = sys::layer_xattrs(path).map_err(|e| io_err(path, e))?;
    Ok(inode)
}

/// Gives the tree's directory `ino` the attributes of the upper dir at `path`, if any of those
/// a layer records (mode, owner, mtime, xattrs) differ: a directory overlayfs only copied up
/// stays unchanged in the snapshot.
fn set_dir_attrs(tree: &Tree, ino: Ino, path: &Path, m: &Metadata) -> Result<()> {
    let mut inode = tree.inode(ino)?;
    let (atime, mtime, ctime) = times(m);
    let xattrs = sys::layer_xattrs(path).map_err(|e| io_err(path, e))?;
    if inode.perm == m.mode() & 0o7777
        && inode.uid == m.uid()
        && inode.gid == m.gid()
        && inode.mtime == mtime
        && inode.xattrs == xattrs
    {
        return Ok(());
    }
    inode.perm = m.mode() & 0o7777;
    inode.uid = m.uid();
    inode.gid = m.gid();
    inode.atime = atime;
    inode.mtime = mtime;
    inode.ctime = ctime;
    inode.xattrs = xattrs;
    tree.put_inode(ino, &inode)
}
