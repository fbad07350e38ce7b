//! Integration tests of the imgfs library (no FUSE, no root needed).

mod crash;
mod fsck;
mod layers;
mod model;
mod mount_cli;
mod snapshotter;
mod tree_ops;
