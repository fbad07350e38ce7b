//! Self-tests of the test-support library (`tests/src`): a helper that lies would make every test
//! built on it pass for the wrong reason, so each helper is checked against the real thing
//! (the kernel's view of a tree, GNU tar's view of an archive).

mod fixtures;
mod hostile;
mod layer;
mod manifest;
