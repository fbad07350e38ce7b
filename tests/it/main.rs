//! The cross-crate integration test binary: one binary for the whole workspace, one module per
//! subject, so the test support library is linked once.

mod imgfs_layers;
mod mount;
mod overlaid;
mod owner;
mod posix;
mod runc;
mod snapshotters;
mod support_selftest;
mod tidy;
