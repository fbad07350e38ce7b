//! Regression tests for imgfs bugs this model test found. They call `Tree` directly, need no
//! root, and say in a comment where the cause was.

use imgfs::{FileKind, Ino, NewNode, RenameMode, Store, StoreOptions};

/// Found by the model test as: create a, link a b, rename(a, b, RENAME_EXCHANGE), unlink a.
/// Linux does nothing for an exchange (or any rename) of two names of one inode (vfs_rename
/// returns early when source and target are the same inode; POSIX says so for rename(2)),
/// so b remains with nlink 1. imgfs reports nlink 0 for b, and the commit then purges the
/// inode as an orphan: b names a stale inode and the file's content is gone.
///
/// Cause: the `RenameMode::Exchange` arm of `Tree::rename` lacks the `tino == sino` early
/// return that the replace arm has. Its two `relink` calls each read the inode from the
/// database rather than from the pending batch, so the second overwrites the first: the
/// links become [(root, "a"), (root, "a")] instead of [(root, "a"), (root, "b")], and
/// unlinking a removes both.
#[test]
fn exchange_of_two_names_of_one_inode_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let file = NewNode::new(FileKind::File, 0o644, 0, 0);
    let (ino, _) = t.mknod(Ino::ROOT, b"a", &file).unwrap();
    t.write(ino, 0, b"hello").unwrap();
    t.link(ino, Ino::ROOT, b"b").unwrap();
    t.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", RenameMode::Exchange)
        .unwrap();
    let names: Vec<Vec<u8>> = t
        .inode(ino)
        .unwrap()
        .links
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(
        names,
        [b"a".to_vec(), b"b".to_vec()],
        "back-links after the exchange"
    );
    t.unlink(Ino::ROOT, b"a").unwrap();
    assert_eq!(t.getattr(ino).unwrap().nlink, 1, "b still names the file");
    drop(t);
    s.commit("A", "a").unwrap();
    let t = s.tree("A").unwrap();
    let (ino, _) = t.lookup(Ino::ROOT, b"b").unwrap();
    assert_eq!(t.read(ino, 0, 100).unwrap(), b"hello");
}

/// `Tree::resolve_parent(b"f/x")` where f is a regular file returns `Ok((f, "x"))`. Path
/// resolution in the kernel fails with ENOTDIR there, and so does imgfs one level deeper
/// (`resolve_parent(b"f/x/y")`), because `walk` only fails when it looks a name up in a
/// non-directory. Callers get ENOTDIR later from the operation itself (mknod, rename and
/// link check their directory), so the harm is small: an error reported late, after the
/// second path of a rename or link was resolved, which can change which errno comes back.
///
/// Cause: `resolve_parent` does not check that the last directory it walked into is one.
#[test]
fn resolve_parent_below_a_file_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let file = NewNode::new(FileKind::File, 0o644, 0, 0);
    t.mknod(Ino::ROOT, b"f", &file).unwrap();
    assert_eq!(
        t.resolve_parent(b"f/x/y").map_err(|e| e.errno()),
        Err(libc::ENOTDIR)
    );
    assert_eq!(
        t.resolve_parent(b"f/x").map_err(|e| e.errno()),
        Err(libc::ENOTDIR)
    );
}
