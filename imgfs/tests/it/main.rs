//! Integration tests of the imgfs library (no FUSE, no root needed).

mod crash;
mod fsck;
mod layers;
mod model;
mod mount_cli;
mod owner;
mod snapshotter;
mod tree_ops;

/// The stdout of a command that must have succeeded; its stderr is the failure message.
fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
