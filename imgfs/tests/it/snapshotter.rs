//! The snapshot verbs through the `Snapshotter` trait, as the builder calls them.

use imgfs::layer::ImportLimits;
use imgfs::{Error, SnapshotKind, Snapshotter, Store, StoreOptions};

fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn conformance(s: &dyn Snapshotter) {
    let base = layer(&[("a", b"1"), ("b", b"2")]);
    let rep = s
        .apply("base", None, &mut &base[..], &ImportLimits::default())
        .unwrap();
    assert!(rep.diff_id.starts_with("sha256:"));
    assert_eq!(s.stat("base").unwrap().kind, SnapshotKind::Committed);

    let active = s.prepare("work", Some("base")).unwrap();
    assert_eq!(active.kind, SnapshotKind::Active);
    assert_eq!(active.parent.as_deref(), Some("base"));
    assert!(
        matches!(s.prepare("work", Some("base")), Err(Error::Exists(_))),
        "keys are unique"
    );
    assert!(
        s.prepare("x", Some("work")).is_err(),
        "an active snapshot cannot be a parent"
    );

    let committed = s.commit("layer1", "work").unwrap();
    assert_eq!(committed.kind, SnapshotKind::Committed);
    assert!(
        s.stat("work").is_err(),
        "the active key is gone after commit"
    );
    let v = s.view("look", "layer1").unwrap();
    assert_eq!(v.kind, SnapshotKind::View);

    assert!(
        s.remove("base").is_err(),
        "a snapshot with children cannot be removed"
    );
    let names: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "layer1", "look"]);
    assert!(s.usage("base").unwrap().bytes > 0);

    let mut out = Vec::new();
    let exp = s.diff("base", &mut out).unwrap();
    let again = s
        .apply("copy", None, &mut &out[..], &ImportLimits::default())
        .unwrap();
    assert_eq!(
        exp.diff_id, again.diff_id,
        "a layer's diff id is the sha256 of its bytes"
    );

    s.remove("look").unwrap();
    s.remove("layer1").unwrap();
    s.remove("base").unwrap();
}

#[test]
fn imgfs_store_implements_the_snapshot_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    conformance(&store);
}

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
