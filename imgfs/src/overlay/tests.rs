//! Unit tests of the overlay backend without mounts: the merge rules of `lookup`, what `apply`
//! leaves in an upper dir, what `diff` makes of one, and recovery at open. They make device
//! nodes and trusted xattrs, so they run as root, as the backend does.

use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};

use crate::layer::ImportLimits;
use crate::{Error, Snapshotter};

use super::*;

fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn apply(s: &OverlaySnapshotter, name: &str, parent: Option<&str>, tar: &[u8]) -> Result<()> {
    s.apply(name, parent, &mut &tar[..], &ImportLimits::default())
        .map(|_| ())
}

fn fs_of(s: &OverlaySnapshotter, name: &str) -> PathBuf {
    let state = s.state.lock().unwrap();
    s.fs_dir(state.get(name).unwrap().id)
}

fn whiteout(p: &Path) -> bool {
    let m = std::fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && m.rdev() == 0
}

fn opaque(p: &Path) -> bool {
    sys::is_opaque(p).unwrap()
}

fn entry_paths(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

fn mknod_whiteout(p: &Path) {
    let c = sys::cstr(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is NUL-terminated.
    sys::check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) }).unwrap();
}

#[test]
fn lookup_follows_overlayfs_merge_rules() {
    let dir = tempfile::tempdir().unwrap();
    let layers: Vec<PathBuf> = (0..4).map(|i| dir.path().join(i.to_string())).collect();
    for l in &layers {
        std::fs::create_dir_all(l.join("d")).unwrap();
    }
    // Layer 0 deletes `gone`, 1 makes `d` opaque, 2 has a file `f` over 3's directory `f`.
    mknod_whiteout(&layers[0].join("gone"));
    std::fs::write(layers[3].join("gone"), b"").unwrap();
    sys::lsetxattr(&layers[1].join("d"), b"trusted.overlay.opaque", b"y").unwrap();
    std::fs::write(layers[2].join("f"), b"file").unwrap();
    std::fs::create_dir(layers[3].join("f")).unwrap();
    let all = [0, 1, 2, 3];
    let at = |name: &str| lookup(&layers, &all, Path::new(""), OsStr::new(name)).unwrap();

    assert!(at("gone").is_none(), "a whiteout hides lower entries");
    assert!(at("nothing").is_none());
    let d = at("d").unwrap();
    assert_eq!(
        (d.layer, d.merging),
        (0, vec![0, 1]),
        "an opaque dir stops the merge"
    );
    let f = at("f").unwrap();
    assert_eq!(f.layer, 2);
    assert!(
        f.meta.is_file() && f.merging.is_empty(),
        "a file hides a lower dir"
    );
}

#[test]
fn apply_turns_oci_whiteouts_into_overlayfs_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::create(dir.path()).unwrap();
    apply(
        &s,
        "base",
        None,
        &layer(&[
            ("a", Some(b"1")),
            ("d/", None),
            ("d/x", Some(b"x")),
            ("e/", None),
            ("e/y", Some(b"y")),
        ]),
    )
    .unwrap();
    apply(
        &s,
        "top",
        Some("base"),
        &layer(&[
            (".wh.a", Some(b"")),
            (".wh.never", Some(b"")),
            ("d/.wh..wh..opq", Some(b"")),
            ("d/z", Some(b"z")),
            (".wh.e", Some(b"")),
            ("e/", None),
            ("mine", Some(b"m")),
            (".wh.mine", Some(b"")),
        ]),
    )
    .unwrap();
    let fs = fs_of(&s, "top");
    assert!(whiteout(&fs.join("a")));
    assert!(
        !fs.join("never").exists(),
        "a whiteout of a name no lower layer has is no change"
    );
    assert!(opaque(&fs.join("d")));
    assert_eq!(std::fs::read(fs.join("d/z")).unwrap(), b"z");
    assert!(opaque(&fs.join("e")), "a deleted and re-made dir is opaque");
    assert_eq!(
        std::fs::read(fs.join("mine")).unwrap(),
        b"m",
        "a whiteout deletes from lower layers only"
    );

    let mut out = Vec::new();
    s.diff("top", &mut out).unwrap();
    assert_eq!(
        entry_paths(&out),
        [
            ".wh.a",
            "d/",
            "d/.wh..wh..opq",
            "d/z",
            "e/",
            "e/.wh..wh..opq",
            "mine"
        ]
    );
}

#[test]
fn an_opaque_root_becomes_a_whiteout_per_lower_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::create(dir.path()).unwrap();
    apply(&s, "base", None, &layer(&[("a", Some(b"1")), ("b/", None)])).unwrap();
    apply(
        &s,
        "top",
        Some("base"),
        &layer(&[(".wh..wh..opq", Some(b"")), ("c", Some(b"c"))]),
    )
    .unwrap();
    let fs = fs_of(&s, "top");
    assert!(whiteout(&fs.join("a")) && whiteout(&fs.join("b")));
    let mut out = Vec::new();
    s.diff("top", &mut out).unwrap();
    assert_eq!(entry_paths(&out), [".wh.a", ".wh.b", "c"]);
}

#[test]
fn writes_stay_beneath_the_new_layer() {
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    std::fs::create_dir_all(up.join("d")).unwrap();
    symlink("/etc", up.join("l")).unwrap();
    let root = std::fs::File::open(&up).unwrap();
    assert!(sys::open_dir_beneath(&root, Path::new("d")).is_ok());
    assert!(sys::open_dir_beneath(&root, Path::new("")).is_ok());
    assert!(
        sys::open_dir_beneath(&root, Path::new("l")).is_err(),
        "symlinks are refused"
    );
    let ino = |f: &std::fs::File| f.metadata().unwrap().ino();
    let d = sys::open_dir_beneath(&root, Path::new("/d")).unwrap();
    assert_eq!(
        ino(&d),
        up.join("d").metadata().unwrap().ino(),
        "`/` is the layer"
    );
    let top = sys::open_dir_beneath(&root, Path::new("d/../../..")).unwrap();
    assert_eq!(ino(&top), ino(&root), "`..` stops at the layer");
}

#[test]
fn open_drops_unfinished_imports_and_orphan_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    {
        let s = OverlaySnapshotter::create(root).unwrap();
        apply(&s, "base", None, &layer(&[("a", Some(b"1"))])).unwrap();
        s.prepare("work", Some("base")).unwrap();
        // As a crash in the middle of apply leaves it: a record and a half-filled dir.
        let mut state = s.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        state.records.insert(
            id,
            Record {
                id,
                name: "half".into(),
                parent: None,
                kind: Kind::Importing,
                created_sec: 0,
                created_nsec: 0,
                labels: Vec::new(),
            },
        );
        write_state(root, &state).unwrap();
        std::fs::create_dir_all(s.fs_dir(id)).unwrap();
        std::fs::create_dir_all(s.fs_dir(1000)).unwrap();
    }
    let s = OverlaySnapshotter::open(root).unwrap();
    let names: Vec<String> = s.walk().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "work"]);
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["1", "2"]);
    assert!(matches!(s.stat("half"), Err(Error::NotFound(_))));
}

#[test]
fn create_refuses_an_existing_backend_and_open_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        OverlaySnapshotter::open(dir.path()),
        Err(Error::NotFound(_))
    ));
    drop(OverlaySnapshotter::create(dir.path()).unwrap());
    assert!(matches!(
        OverlaySnapshotter::create(dir.path()),
        Err(Error::Exists(_))
    ));
    assert!(OverlaySnapshotter::open_or_create(dir.path()).is_ok());
}

#[test]
fn mount_options_escape_overlayfs_separators() {
    assert_eq!(escape_option(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
}
