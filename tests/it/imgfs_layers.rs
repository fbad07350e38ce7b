//! imgfs against GNU tar on real root file systems: importing a layer and exporting it gives the
//! tree GNU tar unpacks from the same layer; whiteouts and opaque directories give the tree an OCI
//! applier would make; hostile layers are refused or contained without damage to the store.

use std::path::Path;
use std::process::Command;

use imgfs::layer::{self, ImportLimits};
use imgfs::{Store, StoreOptions};
use tests::fixtures;
use tests::gnutar::extract_with_gnu_tar;
use tests::layer::hostile;
use tests::{LayerBuilder, Manifest, assert_same};

fn new_store(dir: &Path) -> Store {
    Store::create(&dir.join("store"), StoreOptions::default()).unwrap()
}

fn import(
    store: &Store,
    name: &str,
    parent: Option<&str>,
    tar: &[u8],
) -> imgfs::Result<layer::ImportReport> {
    layer::import_layer(store, name, parent, tar, &ImportLimits::default())
}

fn export(store: &Store, name: &str, full: bool) -> Vec<u8> {
    let mut out = Vec::new();
    layer::export_layer(store, name, full, &mut out).unwrap();
    out
}

/// The tree GNU tar makes of `tar` in a fresh directory.
fn gnu_tree(tar: &[u8], scratch: &Path, name: &str) -> Manifest {
    let dest = scratch.join(name);
    std::fs::create_dir_all(&dest).unwrap();
    extract_with_gnu_tar(tar, &dest).unwrap();
    Manifest::of_dir(&dest).unwrap().without_mtime()
}

fn round_trip(rootfs: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let original = std::fs::read(rootfs).unwrap();
    import(&store, "rootfs", None, &original).unwrap();
    let exported = export(&store, "rootfs", true);
    let want = gnu_tree(&original, dir.path(), "want");
    let got = gnu_tree(&exported, dir.path(), "got");
    assert!(want.len() > 100, "the fixture is a real tree");
    assert_same(&want, &got);
    assert_eq!(
        export(&store, "rootfs", true),
        exported,
        "export is deterministic"
    );
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn busybox_rootfs_round_trips_like_gnu_tar() {
    round_trip(&fixtures::busybox_rootfs_tar().unwrap());
}

#[test]
fn debootstrap_rootfs_round_trips_like_gnu_tar() {
    round_trip(&fixtures::debootstrap_rootfs_tar().unwrap());
}

/// What an OCI applier makes of `top` over the tree in `root`: whiteouts and opaque markers
/// delete from the lower tree, then the other entries are extracted (GNU tar knows no whiteouts).
fn apply_reference(root: &Path, top: &[u8]) {
    let mut a = tar::Archive::new(top);
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parent = root.join(path.parent().unwrap());
        if name == ".wh..wh..opq" {
            for child in std::fs::read_dir(&parent).unwrap() {
                let p = child.unwrap().path();
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        } else if let Some(target) = name.strip_prefix(".wh.") {
            let p = parent.join(target);
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p).unwrap();
            } else if p.symlink_metadata().is_ok() {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    let status = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(root)
        .args(["--exclude=.wh.*"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(top)?;
            c.wait()
        })
        .unwrap();
    assert!(status.success());
}

#[test]
fn whiteouts_and_opaque_dirs_over_a_real_rootfs_match_an_oci_applier() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let base = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
    import(&store, "base", None, &base).unwrap();
    let top = LayerBuilder::new()
        .whiteout("etc/passwd")
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .whiteout("usr")
        .dir("tmp", 0o1777)
        .opaque("tmp")
        .file("tmp/new", 0o600, b"n")
        .owner(1000, 1000)
        .xattr("user.note", b"kept")
        .dir("etc/app", 0o750)
        .owner(0, 1000)
        .hardlink("etc/app/sh", "bin/busybox")
        .symlink("etc/app/link", "../passwd")
        .fifo("etc/app/fifo")
        .char_dev("etc/app/null", 1, 3)
        .finish();
    import(&store, "top", Some("base"), &top).unwrap();

    let want_root = dir.path().join("want");
    std::fs::create_dir_all(&want_root).unwrap();
    extract_with_gnu_tar(&base[..], &want_root).unwrap();
    apply_reference(&want_root, &top);
    let want = Manifest::of_dir(&want_root).unwrap().without_mtime();
    let got = gnu_tree(&export(&store, "top", true), dir.path(), "got");
    assert_same(&want, &got);

    // The diff layer, applied by the reference applier over the base, gives the same tree again.
    let diff_root = dir.path().join("diff");
    std::fs::create_dir_all(&diff_root).unwrap();
    extract_with_gnu_tar(&base[..], &diff_root).unwrap();
    apply_reference(&diff_root, &export(&store, "top", false));
    assert_same(
        &want,
        &Manifest::of_dir(&diff_root).unwrap().without_mtime(),
    );
}

#[test]
fn hostile_layers_are_refused_or_contained_and_the_store_survives() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let base = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
    import(&store, "base", None, &base).unwrap();
    let before = export(&store, "base", true);

    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("parent dir escape", hostile::parent_dir_escape()),
        ("nested parent escape", hostile::nested_parent_escape()),
        ("hard link outside", hostile::hardlink_outside()),
        (
            "hard link to a missing file",
            hostile::hardlink_missing_target(),
        ),
        (
            "entry shorter than its header",
            hostile::truncated_entry(1 << 20, b"short"),
        ),
        ("gzip cut in the middle", hostile::truncated_gzip_layer()),
        ("gzip with a bad crc", hostile::corrupt_crc_gzip_layer()),
    ];
    for (what, tar) in refused {
        let err = import(&store, "evil", Some("base"), &tar).expect_err(what);
        eprintln!("{what}: {err}");
        assert!(
            store.stat("evil").is_err(),
            "{what}: a failed import left its snapshot"
        );
        let report = imgfs::fsck::check(&store, false).unwrap();
        assert!(report.is_clean(), "{what}: {report}");
    }

    // Contained: absolute paths land inside the tree, symlinked parents resolve inside it.
    import(&store, "abs", Some("base"), &hostile::absolute_path()).unwrap();
    let t = store.tree_read_only("abs").unwrap();
    assert!(t.resolve(b"abs/x", false).is_ok());
    import(
        &store,
        "sym",
        Some("base"),
        &hostile::write_through_absolute_symlink(),
    )
    .unwrap();
    import(
        &store,
        "rel",
        Some("base"),
        &hostile::write_through_relative_symlink(),
    )
    .unwrap();
    import(&store, "dup", Some("base"), &hostile::duplicate_entries()).unwrap();
    let t = store.tree_read_only("dup").unwrap();
    let ino = t.resolve(b"dup", false).unwrap();
    assert_eq!(t.read(ino, 0, 100).unwrap(), b"second\n");

    // Limits stop bombs and floods with a clear error.
    let limits = ImportLimits {
        max_bytes: 64 << 20,
        max_entries: 10_000,
        ..Default::default()
    };
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "contained: {report}");
    let err = layer::import_layer(
        &store,
        "bomb",
        None,
        &hostile::zero_bomb(8 << 30)[..],
        &limits,
    )
    .unwrap_err();
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "bomb: {report}");
    assert!(err.to_string().contains("--max-bytes"), "{err}");
    let err = layer::import_layer(
        &store,
        "flood",
        None,
        &hostile::many_entries(20_000)[..],
        &limits,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--max-entries"), "{err}");

    assert_eq!(
        export(&store, "base", true),
        before,
        "nothing stored was changed"
    );
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn files_of_a_mib_and_more_are_stored_whole_in_an_object_pack_when_they_can_be() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    let big = tests::layer::noise(1, 3_000_000);
    let mut holes = vec![0u8; 200_000];
    holes.extend(tests::layer::noise(2, 1_500_000));
    let mut shares = tests::layer::noise(3, 1_200_000);
    shares[..65536].copy_from_slice(&big[..65536]);
    let tar = LayerBuilder::new()
        .file("big", 0o644, &big)
        .file("copy", 0o644, &big)
        .file("holes", 0o644, &holes)
        .file("shares", 0o644, &shares)
        .file("small", 0o644, &big[..100_000])
        .finish();
    import(&store, "base", None, &tar).unwrap();
    let tree = store.tree_read_only("base").unwrap();
    let object = |path: &str| {
        let ino = tree.resolve(path.as_bytes(), false).unwrap();
        tree.inode(ino).unwrap().object
    };
    let big_pack = object("/big").expect("a new file gets its own object");
    assert_eq!(
        object("/copy"),
        Some(big_pack),
        "a second copy reads from the first's object"
    );
    assert!(
        object("/holes").is_some(),
        "zero chunks are holes of a new object"
    );
    assert_eq!(
        object("/shares"),
        None,
        "one chunk is stored elsewhere: not whole anywhere"
    );
    assert_eq!(object("/small"), None, "below 1 MiB");
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "{report}");

    // A change of the content in a child leaves the parent's object to the parent.
    store.prepare("child", Some("base")).unwrap();
    let child = store.tree("child").unwrap();
    let ino = child.resolve(b"/big", false).unwrap();
    child.write(ino, 100, b"changed").unwrap();
    assert_eq!(child.inode(ino).unwrap().object, None);
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "{report}");
    drop(child);
    store.commit("child-done", "child").unwrap();
    assert_eq!(object("/big"), Some(big_pack));
    let mut got = Vec::new();
    layer::export_layer(&store, "base", true, &mut got).unwrap();
    let want = gnu_tree(&tar, dir.path(), "want");
    assert_same(&want, &gnu_tree(&got, dir.path(), "got"));

    // Removing the snapshots frees the objects with the chunks.
    drop(tree);
    store.remove("child-done").unwrap();
    store.remove("base").unwrap();
    let object_file = dir
        .path()
        .join(format!("store/chunks/{:08}.pack", big_pack.0));
    assert!(!object_file.exists(), "the object was deleted");
    let packs = std::fs::read_dir(dir.path().join("store/chunks"))
        .unwrap()
        .count();
    assert!(
        packs <= 1,
        "only the shared pack appends go to may stay: {packs}"
    );
    let report = imgfs::fsck::check(&store, false).unwrap();
    assert!(report.is_clean(), "{report}");
}
