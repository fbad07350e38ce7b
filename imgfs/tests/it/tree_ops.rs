//! File operations on active snapshots, commit, and what children see.

use imgfs::{FileKind, Ino, NewNode, RenameMode, SetAttr, Store, StoreOptions};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    (dir, store)
}

fn file(perm: u32) -> NewNode {
    NewNode::new(FileKind::File, perm, 0, 0)
}

#[test]
fn child_sees_parent_files_and_its_own_changes_only() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (ino, _) = t.mknod(Ino::ROOT, b"f", &file(0o644)).unwrap();
    t.write(ino, 0, b"hello").unwrap();
    drop(t);
    s.commit("A", "a").unwrap();

    s.prepare("b", Some("A")).unwrap();
    let t = s.tree("b").unwrap();
    let (ino2, _) = t.lookup(Ino::ROOT, b"f").unwrap();
    assert_eq!(ino2, ino, "inode numbers survive into children");
    t.write(ino, 1, b"E").unwrap();
    assert_eq!(t.read(ino, 0, 100).unwrap(), b"hEllo");
    t.unlink(Ino::ROOT, b"f").unwrap();
    assert!(t.lookup(Ino::ROOT, b"f").is_err());
    drop(t);
    s.commit("B", "b").unwrap();
    assert!(s.tree("B").unwrap().lookup(Ino::ROOT, b"f").is_err());
    let parent = s.tree("A").unwrap();
    assert_eq!(parent.read(ino, 0, 100).unwrap(), b"hello");
}

#[test]
fn a_write_in_the_middle_of_a_big_committed_file_copies_one_chunk() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (ino, _) = t.mknod(Ino::ROOT, b"big", &file(0o644)).unwrap();
    let cs = t.chunk_size() as usize;
    let data: Vec<u8> = (0..cs * 8).map(|i| (i % 251) as u8 + 1).collect();
    t.write(ino, 0, &data).unwrap();
    drop(t);
    s.commit("A", "a").unwrap();
    s.prepare("b", Some("A")).unwrap();
    let t = s.tree("b").unwrap();
    t.write(ino, (cs * 3 + 100) as u64, &[0xAA; 4096]).unwrap();
    let mut expect = data.clone();
    expect[cs * 3 + 100..cs * 3 + 100 + 4096].fill(0xAA);
    assert_eq!(t.read(ino, 0, (cs * 8) as u32).unwrap(), expect);
    drop(t);
    let committed = s.commit("B", "b").unwrap();
    assert_eq!(committed.name, "B");
    let u = s.usage("B").unwrap();
    assert_eq!(u.bytes, cs as u64, "only the one rewritten chunk is new");
    assert_eq!(
        s.tree("B").unwrap().read(ino, 0, (cs * 8) as u32).unwrap(),
        expect
    );
    assert_eq!(
        s.tree("A").unwrap().read(ino, 0, (cs * 8) as u32).unwrap(),
        data
    );
}

#[test]
fn punch_hole_zeros_the_range_in_the_child_only_and_keeps_the_size() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (ino, _) = t.mknod(Ino::ROOT, b"f", &file(0o644)).unwrap();
    let cs = t.chunk_size() as usize;
    let data: Vec<u8> = (0..cs * 4 + 100).map(|i| (i % 251) as u8 + 1).collect();
    t.write(ino, 0, &data).unwrap();
    drop(t);
    s.commit("A", "a").unwrap();
    s.prepare("b", Some("A")).unwrap();
    let t = s.tree("b").unwrap();
    // Part of chunk 0, all of chunks 1 and 2, part of chunk 3; then the tail through the end.
    let (from, to) = (cs / 2, cs * 3 + 10);
    t.punch_hole(ino, from as u64, (to - from) as u64).unwrap();
    t.write(ino, (cs * 2) as u64, b"new").unwrap();
    t.punch_hole(ino, (cs * 4) as u64, 1 << 30).unwrap();
    let mut expect = data.clone();
    expect[from..to].fill(0);
    expect[cs * 2..cs * 2 + 3].copy_from_slice(b"new");
    expect[cs * 4..].fill(0);
    let size = data.len() as u32;
    assert_eq!(t.getattr(ino).unwrap().size, size as u64);
    assert_eq!(t.read(ino, 0, size).unwrap(), expect);
    drop(t);
    s.commit("B", "b").unwrap();
    assert_eq!(s.tree("B").unwrap().read(ino, 0, size).unwrap(), expect);
    assert_eq!(s.tree("A").unwrap().read(ino, 0, size).unwrap(), data);
}

#[test]
fn rename_and_truncate_behave_like_posix() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (d, _) = t
        .mknod(Ino::ROOT, b"d", &NewNode::new(FileKind::Dir, 0o755, 0, 0))
        .unwrap();
    let (f, _) = t.mknod(d, b"f", &file(0o600)).unwrap();
    t.write(f, 0, b"0123456789").unwrap();
    t.setattr(
        f,
        &SetAttr {
            size: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    t.setattr(
        f,
        &SetAttr {
            size: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(t.read(f, 0, 100).unwrap(), b"0123\0\0\0\0");
    t.rename(Ino::ROOT, b"d", Ino::ROOT, b"e", RenameMode::Replace)
        .unwrap();
    assert!(t.lookup(Ino::ROOT, b"d").is_err());
    assert_eq!(t.lookup(Ino::ROOT, b"e").unwrap().0, d);
    assert_eq!(t.resolve(b"e/f", false).unwrap(), f);
    assert!(
        t.rename(Ino::ROOT, b"e", d, b"x", RenameMode::Replace)
            .is_err(),
        "no move below itself"
    );
    let names: Vec<_> = t
        .readdir(Ino::ROOT)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![b"e".to_vec()]);
}

#[test]
fn lookup_of_an_overlong_name_is_name_too_long_not_not_found() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let long = vec![b'x'; imgfs::tree::NAME_MAX + 1];
    assert!(matches!(
        t.lookup(Ino::ROOT, &long),
        Err(imgfs::Error::NameTooLong(_))
    ));
    let max = vec![b'x'; imgfs::tree::NAME_MAX];
    assert!(matches!(
        t.lookup(Ino::ROOT, &max),
        Err(imgfs::Error::NotFound(_))
    ));
}

#[test]
fn many_siblings_changing_the_same_keys_stay_invisible_to_each_other() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (dir, _) = t
        .mknod(Ino::ROOT, b"d", &NewNode::new(FileKind::Dir, 0o755, 0, 0))
        .unwrap();
    let (f, _) = t.mknod(dir, b"f", &file(0o644)).unwrap();
    t.write(f, 0, b"base").unwrap();
    for n in [b"x".as_slice(), b"y", b"z"] {
        t.mknod(dir, n, &file(0o644)).unwrap();
    }
    drop(t);
    s.commit("base", "a").unwrap();

    // Each sibling rewrites f, deletes y, adds its own name: many versions of the same keys,
    // all outside the chain of any other sibling.
    for i in 0..40 {
        let key = format!("w{i}");
        s.prepare(&key, Some("base")).unwrap();
        let t = s.tree(&key).unwrap();
        t.write(f, 0, format!("sibling {i:02}").as_bytes()).unwrap();
        t.unlink(dir, b"y").unwrap();
        t.mknod(dir, format!("s{i}").as_bytes(), &file(0o600))
            .unwrap();
        drop(t);
        s.commit(&format!("sib{i}"), &key).unwrap();
    }
    let names = |t: &imgfs::Tree| -> Vec<String> {
        t.readdir(dir)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    };
    s.prepare("fresh", Some("base")).unwrap();
    let t = s.tree("fresh").unwrap();
    assert_eq!(t.read(f, 0, 100).unwrap(), b"base");
    assert_eq!(names(&t), ["f", "x", "y", "z"]);
    assert!(t.lookup(dir, b"s7").is_err());
    drop(t);
    s.prepare("on17", Some("sib17")).unwrap();
    let t = s.tree("on17").unwrap();
    assert_eq!(t.read(f, 0, 100).unwrap(), b"sibling 17");
    assert_eq!(names(&t), ["f", "s17", "x", "z"]);
    assert!(t.lookup(dir, b"y").is_err());
}

/// A directory made in the head answers lookups of missing names from memory (`Cache::
/// complete`); what moves in, out, or goes away must show at once, in this tree and in a fresh
/// one that reads the store.
#[test]
fn a_new_directory_knows_its_names_through_creates_renames_and_unlinks() {
    let (_d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let dir = NewNode::new(FileKind::Dir, 0o755, 0, 0);
    let (n, _) = t.mknod(Ino::ROOT, b"new", &dir).unwrap();
    let (old, _) = t.mknod(Ino::ROOT, b"old", &file(0o644)).unwrap();
    assert!(t.lookup(n, b"x").is_err(), "empty");
    let (x, _) = t.mknod(n, b"x", &file(0o644)).unwrap();
    t.rename(Ino::ROOT, b"old", n, b"in", RenameMode::Replace)
        .unwrap();
    t.link(x, n, b"x2").unwrap();
    t.mknod(n, b"gone", &file(0o644)).unwrap();
    t.unlink(n, b"gone").unwrap();
    t.rename(n, b"x2", Ino::ROOT, b"out", RenameMode::Replace)
        .unwrap();
    let (sub, _) = t.mknod(n, b"sub", &dir).unwrap();
    t.mknod(sub, b"deep", &file(0o644)).unwrap();
    t.rename(Ino::ROOT, b"new", Ino::ROOT, b"moved", RenameMode::Replace)
        .unwrap();

    let check = |tree: &imgfs::Tree| {
        assert_eq!(tree.lookup(n, b"x").unwrap().0, x);
        assert_eq!(tree.lookup(n, b"in").unwrap().0, old);
        assert!(tree.lookup(n, b"gone").is_err());
        assert!(tree.lookup(n, b"x2").is_err());
        assert!(tree.lookup(n, b"never").is_err());
        assert!(tree.resolve(b"moved/sub/deep", false).is_ok());
        assert_eq!(tree.lookup(Ino::ROOT, b"out").unwrap().0, x);
    };
    check(&t);
    drop(t);
    check(&s.tree("a").unwrap());
}

/// Blocks taken by the store's scratch files.
fn scratch_blocks(store_dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(store_dir.join("scratch"))
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().blocks()).sum())
        .unwrap_or(0)
}

#[test]
fn whole_chunks_of_zeros_are_written_as_holes_over_new_dirty_and_committed_chunks() {
    let (d, s) = store();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (f, _) = t.mknod(Ino::ROOT, b"f", &file(0o644)).unwrap();
    let cs = t.chunk_size() as usize;
    let data: Vec<u8> = (0..cs * 4).map(|i| (i % 251) as u8 + 1).collect();
    t.write(f, 0, &data).unwrap();
    drop(t);
    s.commit("A", "a").unwrap();

    s.prepare("b", Some("A")).unwrap();
    let t = s.tree("b").unwrap();
    // Over committed chunks: chunk 1 whole, chunk 2 whole and 100 bytes of chunk 3.
    t.write(f, cs as u64, &vec![0; cs]).unwrap();
    t.write(f, (cs * 2) as u64, &vec![0; cs + 100]).unwrap();
    let mut expect_f = data.clone();
    expect_f[cs..cs * 3 + 100].fill(0);
    // A new file: 3 chunks of zeros and a short tail; then data in chunk 0, zeroed again.
    let (g, _) = t.mknod(Ino::ROOT, b"g", &file(0o644)).unwrap();
    let mut expect_g = vec![0u8; cs * 3];
    expect_g.extend_from_slice(b"tail");
    t.write(g, 0, &expect_g).unwrap();
    t.write(g, 0, &data[..cs]).unwrap();
    t.write(g, 0, &vec![0; cs]).unwrap();
    assert_eq!(t.read(f, 0, (cs * 4) as u32).unwrap(), expect_f);
    assert_eq!(t.read(g, 0, (cs * 4) as u32).unwrap(), expect_g);
    assert_eq!(t.getattr(g).unwrap().size, expect_g.len() as u64);
    // Only f's chunk 3 and g's tail chunk hold scratch space.
    let blocks = scratch_blocks(&d.path().join("s"));
    assert!(blocks <= 2 * cs as u64 / 512, "{blocks} blocks of scratch");
    drop(t);
    s.commit("B", "b").unwrap();
    let t = s.tree("B").unwrap();
    assert_eq!(t.read(f, 0, (cs * 4) as u32).unwrap(), expect_f);
    assert_eq!(t.read(g, 0, (cs * 4) as u32).unwrap(), expect_g);
    assert_eq!(
        s.tree("A").unwrap().read(f, 0, (cs * 4) as u32).unwrap(),
        data
    );
    let report = imgfs::fsck::check(&s, false).unwrap();
    assert!(report.is_clean(), "{report}");
}
