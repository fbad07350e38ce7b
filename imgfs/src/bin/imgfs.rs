//! The `imgfs` command line: store administration, layer import/export and mounting.
fn main() {}
