//! Integration tests of the imgfs library (no FUSE, no root needed).

mod tree_ops;
