//! Integration tests of the imgfs library (no FUSE; the model test needs root, see model.rs).

mod model;
mod tree_ops;
