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
