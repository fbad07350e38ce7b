//! Snapshot backends as the builder sees them: the `Snapshotter` verbs plus mounting a snapshot
//! as a directory, which is what runc and COPY need.
//!
//! The builder never names a concrete backend; the `img` binary picks one (`--backend`).

use std::io;
use std::path::Path;

use imgfs::Snapshotter;

/// A snapshot backend the builder can run steps on.
pub trait Backend: Snapshotter {
    /// The name users pick it by (`--backend fuse|overlayfs`).
    fn name(&self) -> &'static str;

    /// Makes the active snapshot or view `key` visible at `target`, an existing empty directory,
    /// until the returned guard is unmounted or dropped. Writes through an active snapshot's
    /// mount land in that snapshot; a view is mounted read-only.
    fn mount(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>>;
}

/// A mounted snapshot. Dropping it unmounts (and logs a failure); `unmount` reports it.
pub trait Mounted: Send {
    fn path(&self) -> &Path;
    /// Unmounts and waits until every write made through the mount is in the snapshot.
    fn unmount(self: Box<Self>) -> io::Result<()>;
}

/// imgfs as a build backend: the store's snapshot verbs, and mounts served over FUSE by threads
/// of this process.
pub struct ImgfsBackend {
    store: std::sync::Arc<imgfs::Store>,
}

impl ImgfsBackend {
    /// Opens the store at `root` for writing, creating it if missing.
    pub fn open(root: &Path) -> imgfs::Result<ImgfsBackend> {
        let store = if root.join("meta").exists() {
            imgfs::Store::open(root)?
        } else {
            imgfs::Store::create(root, imgfs::StoreOptions::default())?
        };
        Ok(ImgfsBackend {
            store: std::sync::Arc::new(store),
        })
    }

    pub fn store(&self) -> &imgfs::Store {
        &self.store
    }
}

struct FuseMount {
    path: std::path::PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted for FuseMount {
    fn path(&self) -> &Path {
        &self.path
    }

    fn unmount(mut self: Box<Self>) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            tracing::warn!(path = %self.path.display(), "failed to unmount: {e}");
        }
    }
}

impl Backend for ImgfsBackend {
    fn name(&self) -> &'static str {
        "fuse"
    }

    fn mount(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>> {
        let info = self.store.stat(key).map_err(io::Error::other)?;
        let tree = match info.kind {
            imgfs::SnapshotKind::Active => self.store.tree(key),
            _ => self.store.tree_read_only(key),
        }
        .map_err(io::Error::other)?;
        let opts = imgfs::fuse::MountOptions::default();
        let session = imgfs::fuse::mount(tree, target, &opts)?;
        Ok(Box::new(FuseMount {
            path: target.to_owned(),
            session: Some(session),
        }))
    }
}

macro_rules! delegate_snapshotter {
    ($ty:ty, $field:ident) => {
        impl imgfs::Snapshotter for $ty {
            fn prepare(
                &self,
                key: &str,
                parent: Option<&str>,
            ) -> imgfs::Result<imgfs::SnapshotInfo> {
                imgfs::Snapshotter::prepare(&*self.$field, key, parent)
            }
            fn view(&self, key: &str, parent: &str) -> imgfs::Result<imgfs::SnapshotInfo> {
                imgfs::Snapshotter::view(&*self.$field, key, parent)
            }
            fn commit(&self, name: &str, key: &str) -> imgfs::Result<imgfs::SnapshotInfo> {
                imgfs::Snapshotter::commit(&*self.$field, name, key)
            }
            fn remove(&self, key: &str) -> imgfs::Result<()> {
                imgfs::Snapshotter::remove(&*self.$field, key)
            }
            fn stat(&self, key: &str) -> imgfs::Result<imgfs::SnapshotInfo> {
                imgfs::Snapshotter::stat(&*self.$field, key)
            }
            fn walk(&self) -> imgfs::Result<Vec<imgfs::SnapshotInfo>> {
                imgfs::Snapshotter::walk(&*self.$field)
            }
            fn usage(&self, key: &str) -> imgfs::Result<imgfs::Usage> {
                imgfs::Snapshotter::usage(&*self.$field, key)
            }
            fn apply(
                &self,
                name: &str,
                parent: Option<&str>,
                layer: &mut dyn std::io::Read,
                limits: &imgfs::layer::ImportLimits,
            ) -> imgfs::Result<imgfs::AppliedLayer> {
                imgfs::Snapshotter::apply(&*self.$field, name, parent, layer, limits)
            }
            fn diff(
                &self,
                key: &str,
                out: &mut dyn std::io::Write,
            ) -> imgfs::Result<imgfs::layer::ExportReport> {
                imgfs::Snapshotter::diff(&*self.$field, key, out)
            }
        }
    };
}

delegate_snapshotter!(ImgfsBackend, store);
