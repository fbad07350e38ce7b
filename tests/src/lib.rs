//! Support code for img's cross-crate integration tests (the `it` test binary) and benchmarks:
//! tree manifests, layer tars (well-formed and hostile), GNU tar as a reference, cached
//! root file system fixtures, and images made and read with umoci, skopeo and buildah. Nothing here depends on img's own crates, so it can check them.

pub mod fixtures;
pub mod gnutar;
pub mod images;
pub mod layer;
pub mod manifest;

pub use layer::LayerBuilder;
pub use manifest::{Manifest, assert_same};
