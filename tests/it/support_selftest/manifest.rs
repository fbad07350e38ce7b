//! Self-tests of `tests::manifest`: every field read from a real tree, non-UTF-8 names, and the
//! wording of differences.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use anyhow::Context;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tests::manifest::{DeviceNumber, Entry, Kind, Manifest, assert_same};

/// sha256 of `hello\n`.
const HELLO_SHA256: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    // Explicit, because the process umask would otherwise decide what a test "created".
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {path:?}"))
}

/// Builds the tree the manifest tests describe; needs root for the chown and the device node.
fn hand_made_tree(root: &Path) -> anyhow::Result<()> {
    fs::create_dir(root.join("d"))?;
    chmod(&root.join("d"), 0o750)?;
    fs::write(root.join("d/f"), "hello\n")?;
    chmod(&root.join("d/f"), 0o644)?;
    std::os::unix::fs::chown(root.join("d/f"), Some(1000), Some(1001))?;
    xattr::set(root.join("d/f"), "user.test", b"value")?;
    fs::hard_link(root.join("d/f"), root.join("g"))?;
    symlink("d/f", root.join("s"))?;
    nix::unistd::mkfifo(&root.join("p"), Mode::from_bits_truncate(0o640))?;
    chmod(&root.join("p"), 0o640)?;
    fs::write(root.join("suid"), "#!/bin/sh\n")?;
    chmod(&root.join("suid"), 0o4755)?;
    mknod(
        &root.join("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )?;
    chmod(&root.join("null"), 0o666)?;
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock"))?;
    chmod(&root.join("sock"), 0o755)?;
    Ok(())
}

#[test]
fn manifest_records_kind_mode_owner_content_links_devices_and_xattrs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    hand_made_tree(dir.path())?;
    let manifest = Manifest::of_dir(dir.path())?.without_mtime();

    let file = Entry::file(0o644, b"hello\n")
        .owned_by(1000, 1001)
        .with_xattr("user.test", b"value");
    let file = Entry {
        hardlink_group: Some("d/f".into()),
        ..file
    };
    let mut expected = Manifest::new();
    expected
        .insert("d", Entry::dir(0o750))
        .insert("d/f", file.clone())
        .insert("g", file)
        .insert("null", Entry::device(Kind::CharDevice, 0o666, 1, 3))
        .insert("p", Entry::fifo(0o640))
        .insert(
            "sock",
            Entry {
                kind: Kind::Socket,
                ..Entry::fifo(0o755)
            },
        )
        .insert("s", Entry::symlink("d/f"))
        .insert("suid", Entry::file(0o4755, b"#!/bin/sh\n"));
    assert_same(&expected, &manifest);

    // The generic comparison above could hide a helper bug shared by both sides, so pin the
    // fields against values computed independently.
    let f = manifest.get("d/f").expect("d/f is described");
    assert_eq!(f.sha256.as_deref(), Some(HELLO_SHA256));
    assert_eq!(f.size, Some(6));
    assert_eq!((f.uid, f.gid), (1000, 1001));
    assert_eq!(
        f.xattrs.get(OsStr::new("user.test")).map(Vec::as_slice),
        Some(&b"value"[..])
    );
    assert_eq!(
        manifest.get("null").and_then(|e| e.device),
        Some(DeviceNumber { major: 1, minor: 3 })
    );
    assert_eq!(manifest.get("suid").map(|e| e.mode), Some(0o4755));
    assert_eq!(
        manifest
            .iter()
            .map(|(p, _)| p.to_str().unwrap())
            .collect::<Vec<_>>(),
        ["d", "d/f", "g", "null", "p", "s", "sock", "suid"]
    );
    Ok(())
}

#[test]
fn manifest_records_mtime_unless_asked_not_to() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("f"), "x")?;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567_890);
    fs::File::options()
        .write(true)
        .open(dir.path().join("f"))?
        .set_modified(when)?;
    let with = Manifest::of_dir(dir.path())?;
    assert_eq!(with.get("f").and_then(|e| e.mtime), Some(1_234_567_890));

    chmod(&dir.path().join("f"), 0o644)?;
    let with = Manifest::of_dir(dir.path())?;
    let mut other = Manifest::new();
    other.insert("f", Entry::file(0o644, b"x").with_mtime(1));
    assert_eq!(with.diff(&other), ["f: mtime 1234567890 != 1"]);
    assert_eq!(with.without_mtime().diff(&other), Vec::<String>::new());
    Ok(())
}

#[test]
fn manifest_does_not_follow_symlinks_to_directories() -> anyhow::Result<()> {
    let outside = tempfile::tempdir()?;
    fs::write(outside.path().join("secret"), "x")?;
    let dir = tempfile::tempdir()?;
    symlink(outside.path(), dir.path().join("link"))?;
    let manifest = Manifest::of_dir(dir.path())?;
    assert_eq!(manifest.len(), 1);
    assert_eq!(manifest.get("link").map(|e| e.kind), Some(Kind::Symlink));
    Ok(())
}

#[test]
fn manifest_keeps_names_that_are_not_utf8() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let name = OsStr::from_bytes(b"caf\xe9");
    fs::write(dir.path().join(name), "latin-1")?;
    symlink(name, dir.path().join("link"))?;
    let manifest = Manifest::of_dir(dir.path())?;
    let entry = manifest
        .get(name)
        .context("the latin-1 name is described")?;
    assert_eq!(entry.kind, Kind::File);
    assert_eq!(
        manifest
            .get("link")
            .and_then(|e| e.symlink_target.as_deref()),
        Some(Path::new(name))
    );
    let shown = manifest.to_string();
    assert!(shown.contains("caf\\xe9 file"), "{shown}");
    assert!(shown.contains("-> caf\\xe9"), "{shown}");
    Ok(())
}

#[test]
fn hardlink_groups_are_named_after_their_first_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fs::create_dir(dir.path().join("z"))?;
    fs::write(dir.path().join("z/one"), "1")?;
    fs::hard_link(dir.path().join("z/one"), dir.path().join("b"))?;
    fs::hard_link(dir.path().join("z/one"), dir.path().join("c"))?;
    fs::write(dir.path().join("alone"), "2")?;
    let manifest = Manifest::of_dir(dir.path())?;
    for path in ["b", "c", "z/one"] {
        assert_eq!(
            manifest.get(path).and_then(|e| e.hardlink_group.as_deref()),
            Some(Path::new("b")),
            "{path}"
        );
    }
    assert_eq!(
        manifest.get("alone").and_then(|e| e.hardlink_group.clone()),
        None
    );
    Ok(())
}

#[test]
fn diff_names_missing_paths_and_each_differing_field() {
    let mut left = Manifest::new();
    left.insert("a", Entry::file(0o644, b"one"))
        .insert("b", Entry::dir(0o755))
        .insert("l", Entry::symlink("x"));
    let mut right = Manifest::new();
    right
        .insert(
            "a",
            Entry::file(0o600, b"two!")
                .owned_by(1, 2)
                .with_xattr("user.k", b"v"),
        )
        .insert("c", Entry::dir(0o755))
        .insert("l", Entry::dir(0o755));
    let diff = left.diff(&right);
    let sha = |s: &[u8]| Entry::file(0, s).sha256.unwrap();
    assert_eq!(
        diff,
        [
            "a: mode 0o644 != 0o600".to_owned(),
            "a: owner 0:0 != 1:2".to_owned(),
            "a: size 3 != 4".to_owned(),
            format!("a: sha256 {} != {}", sha(b"one"), sha(b"two!")),
            "a: xattr \"user.k\" missing != \"v\"".to_owned(),
            "b: only in left (dir)".to_owned(),
            "c: only in right (dir)".to_owned(),
            "l: kind symlink != dir".to_owned(),
        ]
    );
    assert!(left.diff(&left).is_empty());
}

#[test]
fn assert_same_panics_listing_the_differences() {
    let mut left = Manifest::new();
    for i in 0..60 {
        left.insert(format!("f{i:02}"), Entry::dir(0o755));
    }
    let right = Manifest::new();
    let panic =
        std::panic::catch_unwind(|| assert_same(&left, &right)).expect_err("the manifests differ");
    let message = panic
        .downcast_ref::<String>()
        .expect("assert_same panics with a formatted message");
    assert!(
        message.starts_with("manifests differ in 60 places"),
        "{message}"
    );
    assert!(message.contains("f00: only in left (dir)"), "{message}");
    assert!(message.contains("f49: only in left"), "{message}");
    assert!(!message.contains("f50: only in left"), "{message}");
    assert!(message.contains("... and 10 more"), "{message}");
}
