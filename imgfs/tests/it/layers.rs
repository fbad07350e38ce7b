//! Layer import and export: whiteouts, opaque directories, diffs, determinism, hostile input.

use std::io::Write;

use imgfs::layer::{self, ImportLimits};
use imgfs::{FileKind, Ino, NewNode, Store, StoreOptions};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions { chunk_size: 4096 }).unwrap();
    (dir, store)
}

/// A minimal layer writer: raw GNU headers so tests can also write names the tar crate refuses.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
        size: u64,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Directory,
            0o755,
            b"",
            b"",
            0,
        )
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Regular,
            0o644,
            b"",
            data,
            data.len() as u64,
        )
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
            0,
        )
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            tar::EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
            0,
        )
    }
    fn done(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        v.extend(std::iter::repeat_n(0u8, 1024));
        v
    }
}

fn import(
    s: &Store,
    name: &str,
    parent: Option<&str>,
    tar: &[u8],
) -> imgfs::Result<layer::ImportReport> {
    layer::import_layer(s, name, parent, tar, &ImportLimits::default())
}

fn export(s: &Store, name: &str, full: bool) -> Vec<u8> {
    let mut out = Vec::new();
    layer::export_layer(s, name, full, &mut out).unwrap();
    out
}

/// (path, type, size, link) of every entry of a tar, in order.
fn listing(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let kind = format!("{:?}", e.header().entry_type());
            format!(
                "{} {kind} {} {link}",
                String::from_utf8_lossy(&e.path_bytes()),
                e.size()
            )
        })
        .collect()
}

fn read(s: &Store, snap: &str, path: &str) -> Option<Vec<u8>> {
    let t = s.tree_read_only(snap).unwrap();
    let ino = t.resolve(path.as_bytes(), false).ok()?;
    Some(t.read(ino, 0, 1 << 20).unwrap())
}

fn base_layer() -> Vec<u8> {
    Tar::default()
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0\n")
        .file("etc/group", b"root:x:0:\n")
        .dir("usr/")
        .dir("usr/lib/")
        .file("usr/lib/a.so", &[7u8; 10_000])
        .symlink("lib", "usr/lib")
        .hardlink("etc/passwd-", "etc/passwd")
        .done()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn whiteouts_delete_lower_files_and_directories() {
    let (_d, s) = store();
    import(&s, "base", None, &base_layer()).unwrap();
    let top = Tar::default()
        .file("etc/.wh.group", b"")
        .file(".wh.usr", b"")
        .file("etc/new", b"n")
        .done();
    import(&s, "top", Some("base"), &top).unwrap();
    assert_eq!(read(&s, "top", "etc/group"), None);
    assert_eq!(read(&s, "top", "usr/lib/a.so"), None);
    assert_eq!(read(&s, "top", "etc/new").unwrap(), b"n");
    assert_eq!(
        read(&s, "base", "etc/group").unwrap(),
        b"root:x:0:\n",
        "the parent is untouched"
    );
    let diff = listing(&export(&s, "top", false));
    assert_eq!(
        diff,
        strs(&[
            ".wh.usr Regular 0 ",
            "etc/ Directory 0 ",
            "etc/.wh.group Regular 0 ",
            "etc/new Regular 1 "
        ])
    );
}

#[test]
fn opaque_directory_hides_lower_entries_but_keeps_its_own() {
    let (_d, s) = store();
    import(&s, "base", None, &base_layer()).unwrap();
    let top = Tar::default()
        .dir("etc/")
        .file("etc/hosts", b"h")
        .file("etc/.wh..wh..opq", b"")
        .done();
    import(&s, "top", Some("base"), &top).unwrap();
    assert_eq!(read(&s, "top", "etc/passwd"), None);
    assert_eq!(read(&s, "top", "etc/hosts").unwrap(), b"h");
    let diff = listing(&export(&s, "top", false));
    assert_eq!(
        diff,
        strs(&[
            "etc/ Directory 0 ",
            "etc/.wh..wh..opq Regular 0 ",
            "etc/hosts Regular 1 "
        ])
    );
}

#[test]
fn a_layer_round_trips_to_identical_bytes() {
    let (_d, s) = store();
    import(&s, "base", None, &base_layer()).unwrap();
    let first = export(&s, "base", true);
    let report = import(&s, "again", None, &first).unwrap();
    let second = export(&s, "again", true);
    assert_eq!(
        first, second,
        "export is deterministic and import loses nothing it writes"
    );
    assert_eq!(export(&s, "base", true), first, "same snapshot, same bytes");
    assert!(report.diff_id.starts_with("sha256:"));
    let l = listing(&first);
    assert!(
        l.contains(&"etc/passwd- Link 0 etc/passwd".to_string()),
        "{l:?}"
    );
    assert!(l.contains(&"lib Symlink 0 usr/lib".to_string()), "{l:?}");
}

#[test]
fn diff_export_of_a_one_file_change_lists_only_that_file_and_its_parents() {
    let (_d, s) = store();
    import(&s, "base", None, &base_layer()).unwrap();
    s.prepare("work", Some("base")).unwrap();
    let t = s.tree("work").unwrap();
    let lib = t.resolve(b"usr/lib", false).unwrap();
    let (ino, _) = t
        .mknod(lib, b"b.so", &NewNode::new(FileKind::File, 0o755, 0, 0))
        .unwrap();
    t.write(ino, 0, b"elf").unwrap();
    drop(t);
    s.commit("child", "work").unwrap();
    let diff = listing(&export(&s, "child", false));
    assert_eq!(
        diff,
        strs(&[
            "usr/ Directory 0 ",
            "usr/lib/ Directory 0 ",
            "usr/lib/b.so Regular 3 "
        ])
    );
}

#[test]
fn renamed_directory_becomes_a_whiteout_and_a_full_copy() {
    let (_d, s) = store();
    import(&s, "base", None, &base_layer()).unwrap();
    s.prepare("work", Some("base")).unwrap();
    let t = s.tree("work").unwrap();
    t.rename(
        Ino::ROOT,
        b"usr",
        Ino::ROOT,
        b"opt",
        imgfs::RenameMode::Replace,
    )
    .unwrap();
    drop(t);
    s.commit("moved", "work").unwrap();
    let diff = listing(&export(&s, "moved", false));
    assert_eq!(
        diff,
        strs(&[
            ".wh.usr Regular 0 ",
            "opt/ Directory 0 ",
            "opt/lib/ Directory 0 ",
            "opt/lib/a.so Regular 10000 "
        ])
    );
    assert_eq!(
        read(&s, "moved", "opt/lib/a.so").unwrap(),
        vec![7u8; 10_000]
    );
}

#[test]
fn hostile_paths_are_refused_and_leave_no_snapshot() {
    let (_d, s) = store();
    import(&s, "base", None, &base_layer()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", Tar::default().file("../escape", b"x").done()),
        (
            "inner dotdot",
            Tar::default().file("etc/../../escape", b"x").done(),
        ),
        (
            "hard link outside",
            Tar::default().hardlink("x", "../../etc/shadow").done(),
        ),
        (
            "hard link to missing",
            Tar::default().hardlink("x", "nope").done(),
        ),
        ("size lies", {
            let mut t = Tar::default();
            t.raw(b"big", tar::EntryType::Regular, 0o644, b"", b"short", 4096);
            t.0.clone()
        }),
    ];
    for (what, tar) in cases {
        let err = import(&s, "bad", Some("base"), &tar).expect_err(what);
        assert!(!err.to_string().is_empty(), "{what}");
        assert!(
            s.stat("bad").is_err(),
            "{what}: the failed import left a snapshot"
        );
    }
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn writes_through_symlinks_stay_inside_the_tree() {
    let (_d, s) = store();
    let tar = Tar::default()
        .symlink("evil", "/etc")
        .symlink("up", "../../..")
        .file("evil/passwd", b"owned")
        .file("up/x", b"y")
        .done();
    import(&s, "t", None, &tar).unwrap();
    // The symlinks resolve inside the tree: /etc of the snapshot, and its root.
    assert_eq!(read(&s, "t", "etc/passwd").unwrap(), b"owned");
    assert_eq!(read(&s, "t", "x").unwrap(), b"y");
    assert!(!std::path::Path::new("/x").exists());
}

#[test]
fn decompression_bombs_and_entry_floods_hit_the_limits() {
    let (_d, s) = store();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut t = Tar::default();
    let header_only = t
        .raw(b"zeros", tar::EntryType::Regular, 0o644, b"", b"", 64 << 20)
        .0
        .clone();
    gz.write_all(&header_only).unwrap();
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 200_000);
    let limits = ImportLimits {
        max_bytes: 16 << 20,
        ..Default::default()
    };
    let err = layer::import_layer(&s, "bomb", None, &bomb[..], &limits).unwrap_err();
    assert!(err.to_string().contains("max-bytes"), "{err}");

    let mut many = Tar::default();
    for i in 0..100 {
        many.file(&format!("f{i}"), b"");
    }
    let limits = ImportLimits {
        max_entries: 50,
        ..Default::default()
    };
    let err = layer::import_layer(&s, "flood", None, &many.done()[..], &limits).unwrap_err();
    assert!(err.to_string().contains("max-entries"), "{err}");
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn truncated_and_corrupt_gzip_is_an_error() {
    let (_d, s) = store();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&base_layer()).unwrap();
    let good = gz.finish().unwrap();
    import(&s, "ok", None, &good).unwrap();
    let cut = &good[..good.len() / 2];
    assert!(import(&s, "cut", None, cut).is_err());
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff; // CRC32 in the trailer
    assert!(import(&s, "crc", None, &bad).is_err());
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn duplicate_entries_take_the_last_one() {
    let (_d, s) = store();
    let tar = Tar::default()
        .file("f", b"one")
        .file("f", b"two")
        .dir("d/")
        .file("d", b"file now")
        .done();
    import(&s, "t", None, &tar).unwrap();
    assert_eq!(read(&s, "t", "f").unwrap(), b"two");
    assert_eq!(read(&s, "t", "d").unwrap(), b"file now");
}
