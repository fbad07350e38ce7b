//! Build steps on kernel overlayfs over imgfs: `FuseSnapshotter::mount_volatile` mounts a
//! kernel overlay over a read-only FUSE view of the step's snapshot, whose upper dir is a plain
//! directory of the store's file system, so that everything a step writes (dpkg's thousands of
//! small files, each a create, a write, a chown, a chmod, a utime and a rename) is served by
//! the kernel, not by a FUSE round trip per operation. Unmounting folds the upper dir into the
//! snapshot (`fold`), which then holds exactly what a FUSE mount would have recorded.
//! stargz-snapshotter stacks its FUSE layers under overlayfs the same way.
//!
//! The lower layers outlive the step (`Stack`): the next step of a build, prepared from the
//! snapshot this one was folded into, mounts its overlay over the same FUSE mount with the
//! upper dirs of the steps before it stacked on top, as the overlayfs backend stacks its
//! layers. The FUSE mount and its kernel caches then last the whole build, and what earlier
//! steps wrote (the compiler or interpreter a package step installed) is read from the store's
//! file system. A stack ends when its backend is dropped, at the end of a build.
//!
//! Layout: `<store>/steps/<id>/` holds `lower` (the FUSE mount point, or an empty dir for an
//! empty base), `work` and one upper dir per step, `1`, `2`, ... It is scratch: a process that
//! dies leaves it behind, and the next one to open the store for writing removes it
//! (`remove_leftovers`), as it removes the snapshot.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ids::{Ino, SnapshotId};
use crate::overlay::{mount_overlay, sys, umount_overlay};
use crate::records::{FileKind, Inode, SnapshotKind, SnapshotRecord, Timestamp};
use crate::snapshot::Mounted;
use crate::store::Store;
use crate::tree::Tree;

use super::{FuseMount, MountOptions};

/// The most upper dirs a stack holds; the next step starts a stack of its own. Keeps the
/// overlay's options (every lower dir's path) well under the page the kernel takes.
const MAX_LAYERS: usize = 32;

/// The most stacks kept between steps (each holds a FUSE mount and its steps' upper dirs); the
/// oldest goes first. A build uses one per stage that is running.
const MAX_IDLE: usize = 4;

/// Where a store keeps the scratch dirs of its overlaid steps.
fn steps_dir(store: &Store) -> PathBuf {
    store.root().join("steps")
}

/// The lower layers of an overlaid step: a read-only FUSE mount of the committed snapshot the
/// stack started from (none for an empty one), and the upper dir of every step folded since,
/// oldest first. Together they show the tree of the snapshot `head`.
pub(super) struct Stack {
    scratch: Arc<Scratch>,
    layers: Vec<PathBuf>,
    head: SnapshotId,
    /// Whether steps may go on stacking: not when the FUSE mount shows the step's own snapshot
    /// (one written to before the step), which the fold changes underneath it.
    reusable: bool,
}

/// A stack's dir and FUSE mount, shared with the read-only overlays of it (`StackView`).
/// Dropping the last holder unmounts the FUSE mount and removes the dir.
pub(super) struct Scratch {
    dir: PathBuf,
    lower: Option<FuseMount>,
}

impl Stack {
    /// Starts a stack in `<store>/steps/<id>`, its FUSE lower mounting `base` (if any).
    fn new(
        store: &Store,
        id: SnapshotId,
        base: Option<&SnapshotRecord>,
        head: SnapshotId,
        options: &MountOptions,
    ) -> io::Result<Stack> {
        let dir = steps_dir(store).join(id.0.to_string());
        std::fs::create_dir_all(steps_dir(store))?;
        sys::spread_subdirs(&steps_dir(store));
        std::fs::create_dir(&dir)?;
        let mut scratch = Scratch { dir, lower: None };
        for d in ["lower", "work"] {
            std::fs::create_dir(scratch.dir.join(d))?;
        }
        if let Some(base) = base {
            let tree = store.tree_read_only(&base.name).map_err(io::Error::other)?;
            // Passthrough stays on (as root): overlayfs opens the lower file again for every
            // open in a step, each an OPEN and a RELEASE round trip with it (an apt-get install
            // of gcc: 8,000), but without it a compiler's 30 MB executable comes through READs,
            // which cost a one-line change's gcc step more than the opens cost a package step.
            let lower_options = MountOptions {
                volatile: false,
                ..options.clone()
            };
            scratch.lower = Some(super::mount(
                tree,
                &scratch.dir.join("lower"),
                &lower_options,
            )?);
        }
        Ok(Stack {
            scratch: Arc::new(scratch),
            layers: Vec::new(),
            head,
            reusable: base.is_none_or(|b| b.kind == SnapshotKind::Committed),
        })
    }

    fn dir(&self) -> &Path {
        &self.scratch.dir
    }

    /// The overlay's lower dirs, the top one first.
    fn lowers(&self) -> Vec<PathBuf> {
        let mut lowers: Vec<PathBuf> = self.layers.iter().rev().cloned().collect();
        lowers.push(self.dir().join("lower"));
        lowers
    }
}

impl Scratch {
    /// Unmounts the FUSE lower and removes the dirs. A lower that cannot be unmounted keeps
    /// its dirs, which the next open of the store for writing removes (`remove_leftovers`).
    fn end(&mut self) -> io::Result<()> {
        if let Some(lower) = self.lower.take() {
            lower.unmount()?;
        }
        std::fs::remove_dir_all(&self.dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            let dir = self.dir.display();
            tracing::warn!(dir = %dir, "cannot remove a build step's scratch dir: {e}");
        }
    }
}

/// The stacks that no step uses at the moment, kept for the next step of the same build.
#[derive(Default)]
pub(super) struct Stacks {
    idle: Mutex<Vec<Stack>>,
}

impl Stacks {
    /// Takes the stack that shows `parent` with room for another layer, if there is one.
    fn take(&self, parent: SnapshotId) -> Option<Stack> {
        let mut idle = self.idle.lock().expect("poisoned");
        let i = idle
            .iter()
            .position(|s| s.head == parent && s.layers.len() < MAX_LAYERS)?;
        Some(idle.remove(i))
    }

    /// The lower dirs of the idle stack that shows `head`, and its scratch to hold them, if a
    /// stack shows it with at least one step on its FUSE lower (a read-only overlay needs two
    /// lower dirs).
    fn layers_of(&self, head: SnapshotId) -> Option<(Arc<Scratch>, Vec<PathBuf>)> {
        let idle = self.idle.lock().expect("poisoned");
        let stack = idle
            .iter()
            .find(|s| s.head == head && !s.layers.is_empty())?;
        Some((stack.scratch.clone(), stack.lowers()))
    }

    fn put(&self, stack: Stack) {
        let gone = {
            let mut idle = self.idle.lock().expect("poisoned");
            idle.push(stack);
            let over = idle.len().saturating_sub(MAX_IDLE);
            idle.drain(..over).collect::<Vec<_>>()
        };
        // Unmounted and removed outside the lock.
        drop(gone);
    }
}

/// Mounts the active snapshot `key` at `target` as an overlay over a stack of lower layers
/// that shows it: an idle one of `stacks` that shows the snapshot's parent if the snapshot has
/// nothing of its own yet (as a step's has, just prepared), else a new one. Fails if the kernel
/// refuses the overlay (the caller then mounts the snapshot over FUSE alone); nothing is left
/// behind then.
pub(super) fn mount(
    store: &Store,
    stacks: &Arc<Stacks>,
    key: &str,
    target: &Path,
    options: &MountOptions,
) -> io::Result<OverlaidMount> {
    let rec = store.stat(key).map_err(io::Error::other)?;
    // The snapshot is claimed for writing from here to the fold, as a FUSE mount of it would
    // be, so that nothing else writes to it meanwhile.
    let writer = store.tree(key).map_err(|_| {
        io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("snapshot {key} is already mounted"),
        )
    })?;
    let fresh = store.is_unchanged(rec.id).map_err(io::Error::other)?;
    let stack = match (fresh, rec.parent) {
        (true, Some(parent)) => match stacks.take(parent) {
            Some(stack) => stack,
            None => {
                let base = store.record(parent).map_err(io::Error::other)?;
                Stack::new(store, rec.id, Some(&base), parent, options)?
            }
        },
        (true, None) => Stack::new(store, rec.id, None, rec.id, options)?,
        // Shown as it is, by a stack that ends with this step.
        (false, _) => Stack::new(store, rec.id, Some(&rec), rec.id, options)?,
    };
    // Should any of this fail, the stack goes with `stack` (and this step's upper dir with it).
    let upper = stack.dir().join((stack.layers.len() + 1).to_string());
    std::fs::create_dir(&upper)?;
    // The merged root shows the upper dir's attributes, so it starts as the snapshot's root.
    copy_root_attrs(&writer.inode(Ino::ROOT).map_err(io::Error::other)?, &upper)?;
    let work = stack.dir().join("work");
    mount_overlay(target, &stack.lowers(), Some((&upper, &work)), true)?;
    Ok(OverlaidMount {
        writer: Some(writer),
        key: key.to_string(),
        id: rec.id,
        target: target.to_path_buf(),
        upper,
        stack: Some(stack),
        stacks: stacks.clone(),
        overlay: true,
    })
}

/// Mounts the view `rec` at `target` read-only as an overlay of the idle stack that shows its
/// parent (the last step of a stage, for a `COPY --from` of it), if there is one: no FUSE
/// mount of its own, and what the stack's steps wrote is read from the store's file system.
/// `None` when no stack shows the parent.
pub(super) fn mount_view(
    stacks: &Stacks,
    rec: &SnapshotRecord,
    target: &Path,
) -> Option<io::Result<StackView>> {
    if rec.kind != SnapshotKind::View {
        return None;
    }
    let (scratch, lowers) = stacks.layers_of(rec.parent?)?;
    Some(
        mount_overlay(target, &lowers, None, false).map(|()| StackView {
            target: target.to_path_buf(),
            scratch: Some(scratch),
        }),
    )
}

/// A read-only overlay of a stack's layers (`mount_view`). The stack's FUSE mount and dirs last
/// until it is unmounted, whatever becomes of the stack meanwhile.
pub struct StackView {
    target: PathBuf,
    /// Dropped once the overlay is unmounted.
    scratch: Option<Arc<Scratch>>,
}

impl StackView {
    fn finish(&mut self) -> io::Result<()> {
        if self.scratch.is_some() {
            umount_overlay(&self.target)?;
            self.scratch = None;
        }
        Ok(())
    }
}

impl Mounted for StackView {
    fn path(&self) -> &Path {
        &self.target
    }

    fn unmount(mut self: Box<Self>) -> io::Result<()> {
        self.finish()
    }
}

impl Drop for StackView {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            let target = self.target.display();
            tracing::error!(%target, error = %e, "could not unmount a view of a build stage");
            // The stack's FUSE mount stays under the overlay: leave it for `remove_leftovers`.
            if let Some(scratch) = self.scratch.take() {
                std::mem::forget(scratch);
            }
        }
    }
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

/// An overlaid step's mount. Unmounting takes the overlay away and folds the upper dir into the
/// snapshot; the stack then goes back to the idle ones, with the upper dir as its top layer (or
/// ends, if the fold failed). Dropping does the same and logs what failed.
pub struct OverlaidMount {
    /// The snapshot, open for writing: what the fold writes through.
    writer: Option<Tree>,
    key: String,
    id: SnapshotId,
    target: PathBuf,
    /// This step's upper dir, in the stack's dir.
    upper: PathBuf,
    stack: Option<Stack>,
    stacks: Arc<Stacks>,
    /// The overlay is still mounted at `target`.
    overlay: bool,
}

impl OverlaidMount {
    fn finish(&mut self) -> io::Result<()> {
        if self.overlay {
            umount_overlay(&self.target)?;
            self.overlay = false;
        }
        let Some(mut stack) = self.stack.take() else {
            return Ok(());
        };
        let Some(tree) = self.writer.take() else {
            return Ok(());
        };
        let folded = tracing::info_span!("fold").in_scope(|| fold(&tree, &self.upper));
        // What the stack shows now: the snapshot, unless the step changed nothing.
        let folded = folded.and_then(|()| tree.store().is_unchanged(self.id));
        match folded {
            Ok(unchanged) if stack.reusable => {
                stack.layers.push(std::mem::take(&mut self.upper));
                if !unchanged {
                    stack.head = self.id;
                }
                self.stacks.put(stack);
                Ok(())
            }
            // The stack ends here, whatever the fold did: a failed fold leaves the snapshot
            // half-written, which the caller removes.
            folded => {
                drop(stack);
                folded
                    .map(|_| ())
                    .map_err(|e| io::Error::other(format!("snapshot {}: {e}", self.key)))
            }
        }
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
