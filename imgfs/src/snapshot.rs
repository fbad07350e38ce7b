//! The snapshot API: containerd's snapshotter verbs as one trait that both backends implement,
//! `fuse::FuseSnapshotter` (imgfs's store, mounted over FUSE) and `overlay::OverlaySnapshotter`
//! (plain directories stacked by kernel overlayfs).
//!
//! Keys name active snapshots and views; names name committed ones; both share one namespace.
//! Layers go in and out through `apply` and `diff` (containerd's separate diff service), whole
//! trees out through `export`, and `mount` makes a snapshot a directory (containerd's `Mounts`,
//! done for the caller).

use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::layer::{ExportReport, ImportLimits};
use crate::records::{SnapshotKind, Timestamp};
use crate::store::Usage;

/// What a backend reports about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: Option<String>,
    pub kind: SnapshotKind,
    pub created: Timestamp,
    pub labels: Vec<(String, String)>,
}

/// What `Snapshotter::apply` produced: the committed snapshot and the layer's identity.
#[derive(Clone, Debug)]
pub struct AppliedLayer {
    pub info: SnapshotInfo,
    /// The sha256 of the uncompressed tar: the layer's OCI diff id.
    pub diff_id: String,
    pub entries: u64,
    /// Bytes of uncompressed tar stream.
    pub tar_bytes: u64,
}

/// A copy-on-write snapshot backend.
pub trait Snapshotter: Send + Sync {
    /// The name users pick the backend by: `fuse` or `overlayfs`.
    fn backend(&self) -> &'static str;
    /// Creates the active (writable) snapshot `key` on top of the committed snapshot `parent`,
    /// or empty. Costs O(1) whatever the size of the parent.
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<SnapshotInfo>;
    /// Creates the read-only view `key` of the committed snapshot `parent`.
    fn view(&self, key: &str, parent: &str) -> Result<SnapshotInfo>;
    /// Turns the active snapshot `key` into the immutable snapshot `name`, atomically.
    fn commit(&self, name: &str, key: &str) -> Result<SnapshotInfo>;
    /// Removes a snapshot without children, freeing what only it used.
    fn remove(&self, key: &str) -> Result<()>;
    fn stat(&self, key: &str) -> Result<SnapshotInfo>;
    /// Every snapshot, parents before children.
    fn walk(&self) -> Result<Vec<SnapshotInfo>>;
    /// What removing the snapshot would free.
    fn usage(&self, key: &str) -> Result<Usage>;
    /// Applies an OCI layer (tar or tar+gzip) on `parent` as the committed snapshot `name`.
    fn apply(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &mut dyn Read,
        limits: &ImportLimits,
    ) -> Result<AppliedLayer>;
    /// Writes the OCI layer of `key`: its changes from its parent.
    fn diff(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport>;
    /// Writes the whole file tree of `key` as one tar in the layer format (no whiteouts), the
    /// same bytes from every backend for the same tree.
    fn export(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport>;
    /// Makes the snapshot `key` visible at `target`, an existing empty directory, until the
    /// returned guard is unmounted or dropped. Writes through an active snapshot's mount land
    /// in that snapshot; committed snapshots and views are mounted read-only. An active
    /// snapshot is mounted at most once at a time, and a mounted snapshot cannot be committed
    /// or removed by this process.
    fn mount(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>>;
    /// `mount` for a snapshot whose content need not survive a crash before its commit, such
    /// as a build step's: fsync, fdatasync and syncfs through the mount return without making
    /// anything durable (overlayfs's `volatile`), and `commit` makes it all durable at once.
    /// After a crash the snapshot may hold any mix of what was written; remove it.
    fn mount_volatile(&self, key: &str, target: &Path) -> io::Result<Box<dyn Mounted>>;
}

/// A mounted snapshot. Dropping it unmounts (and logs a failure); `unmount` reports it.
pub trait Mounted: Send {
    fn path(&self) -> &Path;
    /// Unmounts and waits until every write made through the mount is in the snapshot.
    fn unmount(self: Box<Self>) -> io::Result<()>;
}

/// The one rule for snapshot names and keys, whichever the backend.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 1024 || name.contains('\0') {
        return Err(Error::Invalid(format!("snapshot name {name:?}")));
    }
    Ok(())
}
