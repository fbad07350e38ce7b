//! Integration tests of the imgfs library (no FUSE, no root needed).

mod fsck;
mod layers;
mod tree_ops;
