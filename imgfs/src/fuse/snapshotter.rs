//! `FuseSnapshotter`: imgfs's store as a snapshot backend, its snapshots mounted over FUSE by
//! threads of this process; and `FuseMount`, the guard of one such mount.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::MountOptions;
use crate::error::Result;
use crate::layer::{ExportReport, ImportLimits};
use crate::records::{SnapshotKind, SnapshotRecord};
use crate::snapshot::{AppliedLayer, Mounted, SnapshotInfo, Snapshotter};
use crate::store::{Store, StoreOptions, Usage};

/// imgfs as a snapshot backend: the store's verbs, and mounts served over FUSE.
pub struct FuseSnapshotter {
    store: Store,
    options: MountOptions,
    /// Whether `mount_volatile` stacks kernel overlayfs over the snapshot (`overlaid`).
    overlaid_steps: bool,
    /// Set once a step could not have its overlay, which is said once per backend.
    overlay_refused: std::sync::atomic::AtomicBool,
    /// The overlaid steps' lower layers, kept from one step to the next (`overlaid::Stack`);
    /// dropping the backend ends them.
    stacks: std::sync::Arc<super::overlaid::Stacks>,
}

impl FuseSnapshotter {
    /// Opens the store at `root` for writing, creating it if missing.
    pub fn open_or_create(root: &Path) -> Result<FuseSnapshotter> {
        let store = if root.join("meta").exists() {
            Store::open(root)?
        } else {
            Store::create(root, StoreOptions::default())?
        };
        super::overlaid::remove_leftovers(&store);
        Ok(FuseSnapshotter::new(store))
    }

    /// Opens the store at `root` to mount committed snapshots only, without its lock: another
    /// process may have it open for writing meanwhile. The changing verbs fail.
    pub fn open_read_only(root: &Path) -> Result<FuseSnapshotter> {
        Ok(FuseSnapshotter::new(Store::open_read_only(root)?))
    }

    /// Serves the snapshots of an open store, with the default mount options.
    pub fn new(store: Store) -> FuseSnapshotter {
        FuseSnapshotter {
            store,
            options: MountOptions::default(),
            overlaid_steps: true,
            overlay_refused: Default::default(),
            stacks: Default::default(),
        }
    }

    /// Whether `mount_volatile` mounts kernel overlayfs over a read-only FUSE view of the
    /// snapshot and folds what was written into it at unmount (the default), or serves the
    /// snapshot over FUSE alone, every write a FUSE request. Where the kernel refuses the
    /// overlay, it is FUSE alone either way.
    pub fn with_overlaid_steps(mut self, on: bool) -> FuseSnapshotter {
        self.overlaid_steps = on;
        self
    }

    /// The options every mount of this backend gets.
    pub fn with_options(mut self, options: MountOptions) -> FuseSnapshotter {
        self.options = options;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn info(&self, rec: SnapshotRecord) -> Result<SnapshotInfo> {
        let parent = match rec.parent {
            Some(p) => Some(self.store.record(p)?.name),
            None => None,
        };
        Ok(SnapshotInfo {
            name: rec.name,
            parent,
            kind: rec.kind,
            created: rec.created,
            labels: rec.labels,
        })
    }
}

impl Snapshotter for FuseSnapshotter {
    fn backend(&self) -> &'static str {
        "fuse"
    }

    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<SnapshotInfo> {
        let rec = self.store.prepare(key, parent)?;
        self.info(rec)
    }

    fn view(&self, key: &str, parent: &str) -> Result<SnapshotInfo> {
        let rec = self.store.view(key, parent)?;
        self.info(rec)
    }

    fn commit(&self, name: &str, key: &str) -> Result<SnapshotInfo> {
        let rec = self.store.commit(name, key)?;
        self.info(rec)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.store.remove(key)
    }

    fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let rec = self.store.stat(key)?;
        self.info(rec)
    }

    fn walk(&self) -> Result<Vec<SnapshotInfo>> {
        self.store
            .list()?
            .into_iter()
            .map(|r| self.info(r))
            .collect()
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.store.usage(key)
    }

    fn apply(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &mut dyn Read,
        limits: &ImportLimits,
    ) -> Result<AppliedLayer> {
        let rep = crate::layer::import_layer(&self.store, name, parent, layer, limits)?;
        Ok(AppliedLayer {
            info: self.info(rep.snapshot)?,
            diff_id: rep.diff_id,
            entries: rep.entries,
            tar_bytes: rep.tar_bytes,
        })
    }

    fn diff(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport> {
        crate::layer::export_layer(&self.store, key, false, out)
    }

    fn export(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport> {
        crate::layer::export_layer(&self.store, key, true, out)
    }

    fn mount(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>> {
        // A view of what a build stage's last step left (a `COPY --from` source) is the
        // read-only overlay of that stage's stack, if it is still there.
        if self.overlaid_steps
            && let Ok(rec) = self.store.stat(key)
            && let Some(mounted) = super::overlaid::mount_view(&self.stacks, &rec, target)
        {
            match mounted {
                Ok(m) => return Ok(Box::new(m)),
                Err(e) => tracing::debug!(key, "a view over the build's overlay failed: {e}"),
            }
        }
        self.mount_with(key, target, &self.options)
    }

    fn mount_volatile(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>> {
        // The kernel serves a step's writes at its own speed; they reach imgfs once, at the
        // unmount (`overlaid`). The overlay is volatile, and the fold writes into the chunk
        // store, which the commit syncs.
        if self.overlaid_steps && !self.store.is_read_only() {
            match super::overlaid::mount(&self.store, &self.stacks, key, target, &self.options) {
                Ok(m) => return Ok(Box::new(m)),
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => return Err(e),
                Err(e) => {
                    let said = self
                        .overlay_refused
                        .swap(true, std::sync::atomic::Ordering::Relaxed);
                    if !said {
                        tracing::warn!(
                            "build steps run on imgfs's FUSE mount alone, which is slower for \
                             steps that write many files: overlayfs over imgfs failed: {e}"
                        );
                    }
                }
            }
        }
        // The commit needs nothing more: it copies the scratch data into packs it fsyncs and
        // writes its metadata in a synced batch, which syncs the log before it.
        let options = MountOptions {
            volatile: true,
            ..self.options.clone()
        };
        self.mount_with(key, target, &options)
    }
}

impl FuseSnapshotter {
    fn mount_with(
        &self,
        key: &str,
        target: &Path,
        options: &MountOptions,
    ) -> io::Result<Box<dyn Mounted>> {
        let info = self.store.stat(key).map_err(io::Error::other)?;
        let tree = match info.kind {
            SnapshotKind::Active => self.store.tree(key),
            _ => self.store.tree_read_only(key),
        }
        .map_err(io::Error::other)?;
        Ok(Box::new(super::mount(tree, target, options)?))
    }
}

/// A FUSE mount served by threads of this process. Dropping it unmounts (and logs a failure);
/// `unmount` reports it. Either way, every write made through the mount is in the snapshot
/// once it returns.
pub struct FuseMount {
    pub(super) path: PathBuf,
    pub(super) session: Option<fuser::BackgroundSession>,
}

impl FuseMount {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the threads serving the mount.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => end(&self.path, s),
            None => Ok(()),
        }
    }

    /// Whether the session still serves the mount; `false` once its threads have ended, which
    /// before an unmount means the server is gone (a failed ring ended the connection).
    pub fn serving(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Waits until the mount ends because something else unmounted it (`fusermount3 -u`,
    /// umount(2)), and for the threads serving it.
    pub fn join(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.join(),
            None => Ok(()),
        }
    }
}

impl Mounted for FuseMount {
    fn path(&self) -> &Path {
        &self.path
    }

    fn unmount(self: Box<Self>) -> io::Result<()> {
        FuseMount::unmount(*self)
    }
}

/// Unmounts the mount of session `s` at `path` and joins its threads. A mount whose session has
/// ended already has nobody to serve it: if it cannot be unmounted (busy: a file in it is still
/// open), it is ended through fusectl and detached rather than left behind.
fn end(path: &Path, s: fuser::BackgroundSession) -> io::Result<()> {
    if !s.guard.is_finished() {
        return s.umount_and_join();
    }
    let unmounted = nix::mount::umount2(path, nix::mount::MntFlags::empty());
    if unmounted.is_err() {
        super::fusectl::end_mount(path)?;
    }
    s.join()
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = end(&self.path, s)
        {
            tracing::warn!(path = %self.path.display(), "failed to unmount: {e}");
        }
    }
}
