//! Integration tests of the imgfs library (no FUSE, no root needed).

mod layers;
mod tree_ops;
