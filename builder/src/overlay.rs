//! The kernel overlayfs backend: snapshots as directories, implementing the `Snapshotter` verbs.
