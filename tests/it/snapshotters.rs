//! The snapshot backends side by side: one conformance suite run against imgfs's
//! `FuseSnapshotter` and `OverlaySnapshotter`, layers that must come out byte for byte the same from both,
//! and the overlay backend's mounts (which need root, as every overlay mount here does).

use std::path::Path;

use imgfs::layer::ImportLimits;
use imgfs::{
    Error, FuseSnapshotter, OverlaySnapshotter, SnapshotKind, Snapshotter, Store, StoreOptions,
};
use tests::LayerBuilder;
use tests::fixtures;
use tests::layer::{hostile, listing};

fn imgfs_store(dir: &Path) -> FuseSnapshotter {
    FuseSnapshotter::new(Store::create(&dir.join("imgfs"), StoreOptions::default()).unwrap())
}

fn overlay(dir: &Path) -> OverlaySnapshotter {
    OverlaySnapshotter::create(&dir.join("overlayfs")).unwrap()
}

/// Runs one test body against each backend, as ripgrep's `rgtest!` runs one against each regex
/// engine: `mod $name { fn imgfs(); fn overlayfs(); }`.
macro_rules! conformance {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn imgfs() {
                let dir = tempfile::tempdir().unwrap();
                let s = imgfs_store(dir.path());
                let body: fn(&dyn Snapshotter) = $body;
                body(&s);
            }

            #[test]
            fn overlayfs() {
                let dir = tempfile::tempdir().unwrap();
                let s = overlay(dir.path());
                let body: fn(&dyn Snapshotter) = $body;
                body(&s);
            }
        }
    };
}

fn apply(s: &dyn Snapshotter, name: &str, parent: Option<&str>, tar: &[u8]) -> imgfs::Result<()> {
    s.apply(name, parent, &mut &tar[..], &ImportLimits::default())
        .map(|_| ())
}

fn diff(s: &dyn Snapshotter, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    s.diff(key, &mut out).unwrap();
    out
}

fn paths(tar: &[u8]) -> Vec<String> {
    listing(tar)
        .into_iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn simple_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = LayerBuilder::new();
    for (name, data) in files {
        b = b.file(name, 0o644, data);
    }
    b.finish()
}

conformance!(the_snapshot_verbs_behave_like_containerds, |s| {
    let base = simple_layer(&[("a", b"1"), ("b", b"2")]);
    let rep = s
        .apply("base", None, &mut &base[..], &ImportLimits::default())
        .unwrap();
    assert!(rep.diff_id.starts_with("sha256:"));
    assert_eq!(rep.tar_bytes, base.len() as u64);
    assert_eq!(s.stat("base").unwrap().kind, SnapshotKind::Committed);

    let active = s.prepare("work", Some("base")).unwrap();
    assert_eq!(active.kind, SnapshotKind::Active);
    assert_eq!(active.parent.as_deref(), Some("base"));
    assert!(
        matches!(s.prepare("work", Some("base")), Err(Error::Exists(_))),
        "keys are unique"
    );
    assert!(
        matches!(s.prepare("x", Some("work")), Err(Error::Invalid(_))),
        "an active snapshot cannot be a parent"
    );

    let committed = s.commit("layer1", "work").unwrap();
    assert_eq!(committed.kind, SnapshotKind::Committed);
    assert_eq!(committed.parent.as_deref(), Some("base"));
    assert!(
        matches!(s.stat("work"), Err(Error::NotFound(_))),
        "the active key is gone after commit"
    );
    let v = s.view("look", "layer1").unwrap();
    assert_eq!(v.kind, SnapshotKind::View);

    assert!(
        matches!(s.remove("base"), Err(Error::Invalid(_))),
        "a snapshot with children cannot be removed"
    );
    let names: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "layer1", "look"]);
    assert!(s.usage("base").unwrap().bytes > 0);
    assert!(s.usage("base").unwrap().inodes >= 2);

    let out = diff(s, "base");
    let again = s
        .apply("copy", None, &mut &out[..], &ImportLimits::default())
        .unwrap();
    let exp = s.diff("base", &mut Vec::new()).unwrap();
    assert_eq!(
        exp.diff_id, again.diff_id,
        "a layer's diff id is the sha256 of its bytes"
    );

    s.remove("look").unwrap();
    s.remove("layer1").unwrap();
    s.remove("base").unwrap();
    assert!(matches!(s.remove("base"), Err(Error::NotFound(_))));
});

conformance!(misuse_of_the_verbs_fails_with_the_same_errors, |s| {
    apply(s, "base", None, &simple_layer(&[("a", b"1")])).unwrap();
    assert!(matches!(
        s.prepare("w", Some("nope")),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(s.prepare("", None), Err(Error::Invalid(_))));
    assert!(matches!(s.commit("again", "base"), Err(Error::Invalid(_))));
    s.prepare("w", Some("base")).unwrap();
    assert!(matches!(s.view("v", "w"), Err(Error::Invalid(_))));
    assert!(matches!(s.commit("base", "w"), Err(Error::Exists(_))));
    assert!(matches!(
        apply(s, "base", None, &simple_layer(&[])),
        Err(Error::Exists(_))
    ));
    s.commit("w", "w").unwrap();
    assert_eq!(s.stat("w").unwrap().kind, SnapshotKind::Committed);
});

conformance!(hostile_layers_are_refused_or_contained, |s| {
    let base = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
    apply(s, "base", None, &base).unwrap();
    let before = diff(s, "base");
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
        let err = apply(s, "evil", Some("base"), &tar).expect_err(what);
        eprintln!("{what}: {err}");
        assert!(
            matches!(s.stat("evil"), Err(Error::NotFound(_))),
            "{what}: a failed apply left its snapshot"
        );
    }

    // Whiteouts that name nothing, `.` or `..`, that are directories, or that the image spec
    // does not define, are refused with the entry's name.
    for name in [
        &b".wh."[..],
        b"etc/.wh..",
        b".wh...",
        b".wh..wh.plnk/x",
        b"etc/.wh..wh.other",
    ] {
        let tar = LayerBuilder::new().raw_file(name, 0o644, b"").finish();
        let err = apply(s, "evil", Some("base"), &tar).expect_err("bad whiteout");
        let shown = String::from_utf8_lossy(name).into_owned();
        assert!(err.to_string().contains(&shown), "{shown}: {err}");
        assert!(matches!(s.stat("evil"), Err(Error::NotFound(_))));
    }

    // Contained: absolute paths land inside the tree, symlinked parents resolve inside it.
    apply(s, "abs", Some("base"), &hostile::absolute_path()).unwrap();
    assert_eq!(paths(&diff(s, "abs")), ["abs/", "abs/x"]);
    // `..` stops at the root, so `evil -> ../../..` is the root itself.
    for (name, tar, want) in [
        (
            "sym",
            hostile::write_through_absolute_symlink(),
            &["etc/", "etc/passwd", "evil"][..],
        ),
        (
            "rel",
            hostile::write_through_relative_symlink(),
            &["evil", "passwd"][..],
        ),
    ] {
        apply(s, name, Some("base"), &tar).unwrap();
        let layer = diff(s, name);
        let p = paths(&layer);
        let passwd = p.iter().position(|p| p.ends_with("passwd")).unwrap();
        assert_eq!(p, want, "{name}");
        let mut a = tar::Archive::new(&layer[..]);
        let mut e = a.entries().unwrap().nth(passwd).unwrap().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut e, &mut text).unwrap();
        assert!(
            text.contains("owned"),
            "{name}: the write landed in the tree's etc/passwd"
        );
    }
    apply(s, "dup", Some("base"), &hostile::duplicate_entries()).unwrap();
    let layer = diff(s, "dup");
    let mut a = tar::Archive::new(&layer[..]);
    let mut e = a.entries().unwrap().next().unwrap().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut e, &mut text).unwrap();
    assert_eq!(text, "second\n");

    let limits = ImportLimits {
        max_bytes: 64 << 20,
        max_entries: 10_000,
        ..Default::default()
    };
    let bomb = hostile::gzip_of_zeros(1 << 30);
    let err = s.apply("bomb", None, &mut &bomb[..], &limits).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    assert!(err.to_string().contains("--max-bytes"), "{err}");
    let err = s
        .apply(
            "flood",
            None,
            &mut &hostile::many_entries(20_000)[..],
            &limits,
        )
        .unwrap_err();
    assert!(err.to_string().contains("--max-entries"), "{err}");
    assert!(s.stat("bomb").is_err() && s.stat("flood").is_err());
    assert_eq!(diff(s, "base"), before, "nothing stored was changed");
});

/// A base layer with every kind of entry, and a layer on it that deletes, replaces and
/// re-creates.
fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/group", 0o640, b"root:x:0:\n")
        .owner(0, 42)
        .dir("home", 0o755)
        .dir("home/user", 0o700)
        .owner(1000, 1000)
        .file("home/user/.profile", 0o600, b"export A=1\n")
        .owner(1000, 1000)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", 0o4755, b"#!/bin/sh\n")
        .xattr("user.note", b"kept")
        // Hard links live in the root, which no layer lists: imgfs's importer sets the mtime of
        // a directory it links into to the time of the import.
        .hardlink("tool2", "usr/bin/tool")
        .symlink("bin", "usr/bin")
        .char_dev("null", 1, 3)
        .fifo("pipe")
        .dir("var", 0o755)
        .file("var/log", 0o644, b"old\n")
        .finish();
    let top = LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc/group")
        .file("etc/hosts", 0o644, b"127.0.0.1 localhost\n")
        .mtime(1_600_000_000)
        .dir("home", 0o755)
        .opaque("home")
        .file("home/readme", 0o644, b"fresh\n")
        .whiteout("pipe")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/new", 0o755, b"new\n")
        .hardlink("new2", "usr/bin/new")
        .hardlink("passwd", "etc/passwd")
        .whiteout("var")
        .file("var", 0o644, b"now a file\n")
        .finish();
    (base, top)
}

#[test]
fn both_backends_write_the_same_layer_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = imgfs_store(dir.path());
    let b = overlay(dir.path());
    let backends: [&dyn Snapshotter; 2] = [&a, &b];
    let busybox = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
    let (base, top) = two_layers();
    let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
    for s in backends {
        apply(s, "busybox", None, &busybox).unwrap();
        apply(s, "base", None, &base).unwrap();
        apply(s, "top", Some("base"), &top).unwrap();
        apply(s, "busybox-top", Some("busybox"), &top).unwrap();
        let mut whole = Vec::new();
        s.export("busybox-top", &mut whole).unwrap();
        out.push(vec![
            diff(s, "busybox"),
            diff(s, "base"),
            diff(s, "top"),
            whole,
        ]);
    }
    let whats = ["busybox", "base", "top", "export of busybox+top"];
    for (i, what) in whats.iter().enumerate() {
        assert_eq!(
            listing(&out[0][i]),
            listing(&out[1][i]),
            "{what}: imgfs (left) and overlayfs (right) list different entries"
        );
        assert!(
            out[0][i] == out[1][i],
            "{what}: same entries, different bytes"
        );
    }
    let top_paths = paths(&out[1][2]);
    for want in [
        "etc/.wh.group",
        "home/.wh..wh..opq",
        ".wh.pipe",
        "var",
        "new2",
        "passwd",
        "etc/passwd",
    ] {
        assert!(
            top_paths.iter().any(|p| p == want),
            "{want} in {top_paths:?}"
        );
    }
    // The export is the merged tree: what the whiteouts hid is gone, and so are they.
    let whole = paths(&out[1][3]);
    assert!(whole.iter().all(|p| !p.contains(".wh.")), "{whole:?}");
    for want in ["bin/busybox", "usr/bin/new", "var", "home/readme"] {
        assert!(whole.iter().any(|p| p == want), "{want} in {whole:?}");
    }
    for gone in ["etc/group", "pipe"] {
        assert!(!whole.iter().any(|p| p == gone), "{gone} in {whole:?}");
    }
}

conformance!(a_volatile_mount_keeps_its_writes_and_mounts_again, |s| {
    apply(s, "base", None, &simple_layer(&[("a", b"1")])).unwrap();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mnt = dir.path();
    s.prepare("step", Some("base")).unwrap();
    let m = s.mount_volatile("step", mnt).unwrap();
    let mut f = std::fs::File::create(mnt.join("synced")).unwrap();
    std::io::Write::write_all(&mut f, b"fsynced").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    drop(f);
    std::fs::File::open(mnt).unwrap().sync_all().unwrap();
    m.unmount().unwrap();
    // overlayfs marks a volatile work dir against remounts; the backend clears the mark.
    let m = s.mount("step", mnt).unwrap();
    assert_eq!(read(&mnt.join("synced")), "fsynced");
    std::fs::write(mnt.join("later"), b"2").unwrap();
    m.unmount().unwrap();
    let m = s.mount_volatile("step", mnt).unwrap();
    m.unmount().unwrap();
    s.commit("layer", "step").unwrap();
    assert_eq!(paths(&diff(s, "layer")), ["later", "synced"]);
    let m = s.mount("layer", mnt).unwrap();
    assert_eq!(read(&mnt.join("synced")), "fsynced");
    assert_eq!(read(&mnt.join("a")), "1");
    m.unmount().unwrap();
});

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn writes_through_an_overlay_mount_become_exactly_the_diff() {
    let dir = tempfile::tempdir().unwrap();
    let s = overlay(dir.path());
    let busybox = std::fs::read(fixtures::busybox_rootfs_tar().unwrap()).unwrap();
    apply(&s, "base", None, &busybox).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    s.view("look", "base").unwrap();
    let m = s.mount("look", &mnt).unwrap();
    assert!(read(&mnt.join("etc/passwd")).contains("root:"));
    assert!(mnt.join("bin/busybox").metadata().unwrap().len() > 100_000);
    assert!(
        std::fs::write(mnt.join("x"), b"no").is_err(),
        "a view is mounted read-only"
    );
    m.unmount().unwrap();
    s.remove("look").unwrap();

    s.prepare("step", Some("base")).unwrap();
    let m = s.mount("step", &mnt).unwrap();
    std::fs::write(mnt.join("etc/motd"), b"hello\n").unwrap();
    std::fs::remove_file(mnt.join("etc/group")).unwrap();
    std::fs::remove_dir_all(mnt.join("home")).unwrap();
    std::fs::create_dir(mnt.join("home")).unwrap();
    std::fs::write(mnt.join("home/new"), b"fresh\n").unwrap();
    assert!(
        s.commit("layer", "step").is_err(),
        "a mounted snapshot is not committed under its writers"
    );
    drop(m);
    s.commit("layer", "step").unwrap();
    let layer = diff(&s, "layer");
    assert_eq!(
        paths(&layer),
        [
            "etc/",
            "etc/.wh.group",
            "etc/motd",
            "home/",
            "home/.wh..wh..opq",
            "home/new"
        ]
    );

    // The same change applied to imgfs comes out as the same bytes.
    let store = imgfs_store(dir.path());
    apply(&store, "base", None, &busybox).unwrap();
    apply(&store, "layer", Some("base"), &layer).unwrap();
    assert_eq!(listing(&diff(&store, "layer")), listing(&layer));
    assert!(diff(&store, "layer") == layer);

    // And applying it back to the overlay backend gives the same tree as the mount made.
    apply(&s, "again", Some("base"), &layer).unwrap();
    s.view("look", "again").unwrap();
    let m = s.mount("look", &mnt).unwrap();
    assert_eq!(read(&mnt.join("home/new")), "fresh\n");
    assert!(
        !mnt.join("home/user").exists(),
        "the opaque home hides the old one"
    );
    assert!(!mnt.join("etc/group").exists());
    assert!(read(&mnt.join("etc/passwd")).contains("root:"));
    m.unmount().unwrap();
}

/// The super block options of the mount at `path` (/proc/self/mountinfo's last field).
fn super_options(path: &Path) -> String {
    let want = path.canonicalize().unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == want.to_str())
        .unwrap_or_else(|| panic!("{} is not mounted", want.display()));
    line.rsplit(' ').next().unwrap().to_string()
}

/// Whether overlay super block options say volatile (Linux 6.x shows it as `fsync=volatile`).
fn is_volatile(opts: &str) -> bool {
    opts.split(',')
        .any(|o| o == "volatile" || o == "fsync=volatile")
}

#[test]
fn only_a_volatile_overlay_mount_skips_the_upper_dirs_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let s = overlay(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    s.prepare("step", None).unwrap();
    let m = s.mount_volatile("step", &mnt).unwrap();
    let opts = super_options(&mnt);
    assert!(is_volatile(&opts), "{opts}");
    m.unmount().unwrap();
    let m = s.mount("step", &mnt).unwrap();
    let opts = super_options(&mnt);
    assert!(!is_volatile(&opts), "{opts}");
    m.unmount().unwrap();
}

#[test]
fn an_active_snapshot_mounts_once_and_unmounts_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let s = overlay(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    s.prepare("scratch", None).unwrap();
    let m = s.mount("scratch", &a).unwrap();
    assert_eq!(m.path(), a);
    std::fs::write(a.join("f"), b"1").unwrap();
    assert!(
        s.mount("scratch", &b).is_err(),
        "one writer mount at a time"
    );
    assert!(s.remove("scratch").is_err(), "a mounted snapshot stays");
    drop(m);
    assert!(!a.join("f").exists(), "dropping the guard unmounted");
    s.commit("one", "scratch").unwrap();
    assert_eq!(paths(&diff(&s, "one")), ["f"]);
    let m = s.mount("one", &b).unwrap();
    assert_eq!(
        read(&b.join("f")),
        "1",
        "a committed snapshot mounts read-only"
    );
    assert!(std::fs::write(b.join("g"), b"").is_err());
    m.unmount().unwrap();
}

#[test]
fn the_overlay_backend_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("overlayfs");
    {
        let s = OverlaySnapshotter::create(&root).unwrap();
        apply(&s, "base", None, &simple_layer(&[("a", b"1")])).unwrap();
        s.prepare("work", Some("base")).unwrap();
        assert!(
            matches!(OverlaySnapshotter::open(&root), Err(Error::Locked { .. })),
            "one process at a time"
        );
    }
    let s = OverlaySnapshotter::open(&root).unwrap();
    let names: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "work"]);
    assert_eq!(paths(&diff(&s, "base")), ["a"]);
}

conformance!(zstd_and_gzip_layers_apply_like_the_plain_tar, |s| {
    // `dir/` has an entry of its own: a parent made by the import gets the time of the apply,
    // which differs between the three when they straddle a second.
    let plain = LayerBuilder::new()
        .file("a", 0o644, b"alpha")
        .dir("dir", 0o755)
        .file("dir/b", 0o644, b"beta")
        .finish();
    let zstd = zstd::encode_all(&plain[..], 3).unwrap();
    let gzip = tests::layer::gzip(&plain);
    let mut ids = Vec::new();
    for (name, bytes) in [("plain", &plain), ("zstd", &zstd), ("gzip", &gzip)] {
        let applied = s
            .apply(name, None, &mut &bytes[..], &ImportLimits::default())
            .unwrap();
        ids.push(applied.diff_id);
        assert_eq!(
            listing(&diff(s, name)),
            listing(&diff(s, "plain")),
            "{name}"
        );
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one diff id, the uncompressed tar's: {ids:?}"
    );
    // A zstd stream cut short is refused, and leaves nothing under the name.
    let cut = &zstd[..zstd.len() / 2];
    assert!(
        s.apply("cut", None, &mut &cut[..], &ImportLimits::default())
            .is_err()
    );
    assert!(s.stat("cut").is_err());
});

/// A 40 MiB file with data only at 1 MiB and at its end, as GNU tar archives it with
/// `--sparse --format=FORMAT [--sparse-version=V]`; returns the layer and the file's content.
fn sparse_layer(format: &str, version: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let size = 40u64 << 20;
    let mut content = vec![0u8; size as usize];
    content[1 << 20..(1 << 20) + 4].copy_from_slice(b"data");
    content[size as usize - 4..].copy_from_slice(b"tail");
    let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
    f.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data", 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tail", size - 4).unwrap();
    let mut tar = std::process::Command::new("tar");
    tar.args(["--sparse", &format!("--format={format}"), "-cf", "-", "-C"])
        .arg(dir.path());
    if let Some(v) = version {
        tar.arg(format!("--sparse-version={v}"));
    }
    let out = tar.arg("sparse").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, content)
}

/// The content of `path` in the whole-tree export of `key`.
fn exported_file(s: &dyn Snapshotter, key: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    s.export(key, &mut out).unwrap();
    let mut ar = tar::Archive::new(&out[..]);
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(path) {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            return content;
        }
    }
    panic!("{path} is not in the export of {key}");
}

conformance!(
    sparse_files_of_gnu_and_pax_1_0_tars_apply_with_their_content_and_size_limit,
    |s| {
        for (name, format) in [("gnu", "gnu"), ("pax", "posix")] {
            let (layer, content) = sparse_layer(format, None);
            // The holes are not in the stream: the layer is a few KiB.
            assert!(layer.len() < 64 << 10, "{name}: {} bytes", layer.len());
            apply(s, name, None, &layer).unwrap();
            assert!(
                exported_file(s, name, "sparse") == content,
                "{name}: the content differs"
            );
        }
        let (old, _) = sparse_layer("posix", Some("0.1"));
        let err = apply(s, "old", None, &old).unwrap_err();
        assert!(err.to_string().contains("only 1.0 is read"), "{err}");
        // A file over the byte limit is refused by its declared size, holes included.
        let limits = ImportLimits {
            max_bytes: 16 << 20,
            ..Default::default()
        };
        for format in ["gnu", "posix"] {
            let (layer, _) = sparse_layer(format, None);
            let err = s
                .apply("big", None, &mut &layer[..], &limits)
                .unwrap_err()
                .to_string();
            assert!(err.contains("file of 41943040 bytes"), "{format}: {err}");
            assert!(err.contains("--max-bytes"), "{format}: {err}");
        }
    }
);
