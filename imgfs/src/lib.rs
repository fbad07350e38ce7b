//! imgfs: a copy-on-write snapshot store for container images, and its FUSE view.

/// The version of the imgfs crate (and of the on-disk format it writes).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
