//! Snapshot backends as the builder sees them: the `Snapshotter` verbs plus mounting a snapshot as a directory.
