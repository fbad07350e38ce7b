//! imgfs: a copy-on-write snapshot store for container images, and its FUSE view.
//!
//! A [`Store`] holds snapshots: file trees stacked on a parent, each storing only what it changed.
//! Metadata lives in rocksdb (`meta`), file content in a content-addressed chunk store (`chunks`).
//! [`Tree`] is the POSIX view of one snapshot; `layer` converts snapshots to and from OCI layers.
//! [`Snapshotter`] is the API builders use, with two backends: [`FuseSnapshotter`] (the store,
//! mounted over FUSE by `fuse`) and [`OverlaySnapshotter`] (directories stacked by kernel
//! overlayfs).

pub mod atomic;
pub mod chunks;
pub(crate) mod error;
pub mod fsck;
pub mod fuse;
pub mod ids;
pub mod layer;
mod lock;
pub mod logging;
pub(crate) mod meta;
pub mod overlay;
pub mod owner;
pub mod records;
pub mod snapshot;
pub mod space;
pub mod store;
pub mod tree;

pub use error::{Error, Result};
pub use fuse::FuseSnapshotter;
pub use ids::{ChunkDigest, DataId, Ino, SnapshotId};
pub use overlay::OverlaySnapshotter;
pub use owner::AbandonedMount;
pub use records::{FileKind, Inode, SnapshotKind, SnapshotRecord, Timestamp};
pub use snapshot::{AppliedLayer, Mounted, SnapshotInfo, Snapshotter};
pub use store::{Store, StoreOptions, Usage};
pub use tree::{Attr, DirEntry, NewNode, RenameMode, SetAttr, Tree};

/// The version of the imgfs crate (and of the on-disk format it writes).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
