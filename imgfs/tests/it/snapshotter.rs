//! The store as other processes meet it: its single-writer lock, and the open files an import
//! of many big files needs. The `Snapshotter` verbs have one conformance suite for every
//! backend, in the workspace tests (`tests/it/snapshotters.rs`).

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

#[test]
fn an_import_of_more_big_files_than_the_soft_open_file_limit_succeeds() {
    // Each file of 1 MiB or more gets an object pack, which stays open while the store is.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = dir.path().join("s");
    Store::create(&root, StoreOptions::default()).unwrap();
    let tar_path = dir.path().join("big.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    let mut content = vec![0u8; 1 << 20];
    for i in 1..=300u32 {
        content[..4].copy_from_slice(&i.to_le_bytes());
        content[65536..65540].copy_from_slice(&i.to_le_bytes());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("f{i}"), &content[..])
            .unwrap();
    }
    b.into_inner().unwrap();
    crate::ok(
        std::process::Command::new("prlimit")
            .arg("--nofile=200:")
            .arg(env!("CARGO_BIN_EXE_imgfs"))
            .args(["import", "--store"])
            .arg(&root)
            .args(["--name", "base"])
            .arg(&tar_path)
            .output()
            .unwrap(),
    );
    let packs = std::fs::read_dir(root.join("chunks")).unwrap().count();
    assert!(
        packs >= 300,
        "every file has its own object pack: {packs} packs"
    );
}
