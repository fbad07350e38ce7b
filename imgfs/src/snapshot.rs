//! The snapshot API the builder uses: containerd's snapshotter verbs, as one trait that every
//! backend implements (imgfs's `Store` here; kernel overlayfs in the builder).
//!
//! Keys name active snapshots and views; names name committed ones; both share one namespace.
//! Layers go in and out through `apply` and `diff` (containerd's separate diff service).

use std::io::{Read, Write};

use crate::error::Result;
use crate::layer::{ExportReport, ImportLimits};
use crate::records::{SnapshotKind, Timestamp};
use crate::store::{Store, Usage};

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
}

impl Store {
    fn info(&self, rec: crate::records::SnapshotRecord) -> Result<SnapshotInfo> {
        let parent = match rec.parent {
            Some(p) => Some(self.record(p)?.name),
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

impl Snapshotter for Store {
    fn prepare(&self, key: &str, parent: Option<&str>) -> Result<SnapshotInfo> {
        let rec = Store::prepare(self, key, parent)?;
        self.info(rec)
    }

    fn view(&self, key: &str, parent: &str) -> Result<SnapshotInfo> {
        let rec = Store::view(self, key, parent)?;
        self.info(rec)
    }

    fn commit(&self, name: &str, key: &str) -> Result<SnapshotInfo> {
        let rec = Store::commit(self, name, key)?;
        self.info(rec)
    }

    fn remove(&self, key: &str) -> Result<()> {
        Store::remove(self, key)
    }

    fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let rec = Store::stat(self, key)?;
        self.info(rec)
    }

    fn walk(&self) -> Result<Vec<SnapshotInfo>> {
        self.list()?.into_iter().map(|r| self.info(r)).collect()
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        Store::usage(self, key)
    }

    fn apply(
        &self,
        name: &str,
        parent: Option<&str>,
        layer: &mut dyn Read,
        limits: &ImportLimits,
    ) -> Result<AppliedLayer> {
        let rep = crate::layer::import_layer(self, name, parent, layer, limits)?;
        Ok(AppliedLayer {
            info: self.info(rep.snapshot)?,
            diff_id: rep.diff_id,
            entries: rep.entries,
            tar_bytes: rep.tar_bytes,
        })
    }

    fn diff(&self, key: &str, out: &mut dyn Write) -> Result<ExportReport> {
        crate::layer::export_layer(self, key, false, out)
    }
}
