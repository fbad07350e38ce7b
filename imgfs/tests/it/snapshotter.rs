//! The store's single-writer lock as other processes meet it. The `Snapshotter` verbs have
//! one conformance suite for every backend, in the workspace tests (`tests/it/snapshotters.rs`).

use imgfs::{Store, StoreOptions};

#[test]
fn a_second_writer_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let _store = Store::create(&root, StoreOptions::default()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .args(["rm", "--store"])
        .arg(&root)
        .arg("nothing")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("locked by pid {}", std::process::id())),
        "{err}"
    );
    let ro = std::process::Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .args(["list", "--store"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        ro.status.success(),
        "read-only opens work beside the writer"
    );
}
