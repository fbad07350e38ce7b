//! fsck on stores built through the public API: clean stores check clean, damage on disk is
//! named, and repair removes only what nothing refers to.

use std::os::unix::fs::FileExt;
use std::path::Path;

use imgfs::fsck::{self, Problem};
use imgfs::records::Extent;
use imgfs::{ChunkDigest, FileKind, Ino, NewNode, RenameMode, SetAttr, Store, StoreOptions};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    (dir, store)
}

fn file() -> NewNode {
    NewNode::new(FileKind::File, 0o644, 0, 0)
}

/// Bytes that differ from chunk to chunk, so nothing deduplicates by accident.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed ^ (i / 65536) as u8)
        .collect()
}

fn assert_clean(s: &Store) -> fsck::Report {
    let report = fsck::check(s, false).unwrap();
    assert!(report.is_clean(), "expected a clean store, got:\n{report}");
    report
}

/// A committed base `A` with a directory, a two-chunk file, a symlink and a hard link, and a
/// committed child `B` that rewrites, truncates, renames and deletes some of it.
fn two_snapshots(s: &Store) -> (Ino, Ino) {
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (d, _) = t
        .mknod(Ino::ROOT, b"d", &NewNode::new(FileKind::Dir, 0o755, 0, 0))
        .unwrap();
    let (big, _) = t.mknod(d, b"big", &file()).unwrap();
    let cs = t.chunk_size() as usize;
    t.write(big, 0, &pattern(cs * 2 + 100, 1)).unwrap();
    let (small, _) = t.mknod(Ino::ROOT, b"small", &file()).unwrap();
    t.write(small, 0, b"small file").unwrap();
    t.link(small, d, b"hard").unwrap();
    let mut link = NewNode::new(FileKind::Symlink, 0o777, 0, 0);
    link.target = b"d/big".to_vec();
    t.mknod(Ino::ROOT, b"sym", &link).unwrap();
    drop(t);
    s.commit("A", "a").unwrap();

    s.prepare("b", Some("A")).unwrap();
    let t = s.tree("b").unwrap();
    t.write(big, cs as u64 + 7, b"changed in B").unwrap();
    t.unlink(Ino::ROOT, b"small").unwrap();
    t.rename(Ino::ROOT, b"sym", d, b"sym2", RenameMode::Replace)
        .unwrap();
    let (tmp, _) = t.mknod(Ino::ROOT, b"tmp", &file()).unwrap();
    t.write(tmp, 0, b"gone before commit").unwrap();
    t.unlink(Ino::ROOT, b"tmp").unwrap();
    let (cut, _) = t.mknod(Ino::ROOT, b"cut", &file()).unwrap();
    t.write(cut, 0, &pattern(cs + 10, 2)).unwrap();
    t.setattr(
        cut,
        &SetAttr {
            size: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    drop(t);
    s.commit("B", "b").unwrap();
    (big, small)
}

#[test]
fn a_store_with_committed_active_and_view_snapshots_checks_clean() {
    let (_d, s) = store();
    let (big, _) = two_snapshots(&s);
    s.view("v", "B").unwrap();
    s.prepare("c", Some("B")).unwrap();
    let t = s.tree("c").unwrap();
    t.write(big, 3, b"dirty, not committed").unwrap();
    let (n, _) = t.mknod(Ino::ROOT, b"new", &file()).unwrap();
    t.write(n, 0, b"also dirty").unwrap();
    drop(t);

    let report = assert_clean(&s);
    let c = report.counts;
    assert_eq!(c.snapshots, 4);
    assert!(c.inode_versions > 0 && c.dentry_versions > 0 && c.extent_versions > 0);
    assert!(
        c.chunks >= 4,
        "two chunks of big, its rewrite, small and cut"
    );
    assert!(c.bytes_verified >= 2 * s.chunk_size() as u64);
    assert_eq!(report.repaired, Vec::new());
}

#[test]
fn a_flipped_byte_in_a_pack_is_a_digest_mismatch_naming_the_chunk_and_is_never_repaired() {
    let (_d, s) = store();
    let f = one_small_file(&s);
    let map = s.tree("A").unwrap().chunk_map(f).unwrap();
    let [(0, Extent::Stored { digest, .. })] = map[..] else {
        panic!("one stored chunk expected, got {map:?}");
    };
    assert_clean(&s);

    // The file's only chunk is the first thing appended to the first pack.
    let pack = s.root().join("chunks/00000001.pack");
    flip_byte(&pack, 10);

    for repair in [false, true] {
        let report = fsck::check(&s, repair).unwrap();
        let mismatch: Vec<&Problem> = report
            .problems
            .iter()
            .filter(|p| matches!(p, Problem::DigestMismatch { digest: d, .. } if *d == digest))
            .collect();
        assert_eq!(mismatch.len(), 1, "repair={repair}:\n{report}");
        let message = mismatch[0].to_string();
        assert!(message.contains(&digest.to_string()), "{message}");
        assert!(message.contains("00000001.pack"), "{message}");
        assert_eq!(report.problems.len(), 1, "{report}");
        assert!(report.repaired.is_empty(), "{report}");
    }
}

/// Commits snapshot `A` holding one 1000-byte file, `f`, whose only chunk is the first thing
/// appended to the first pack; returns the file's inode.
fn one_small_file(s: &Store) -> Ino {
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let (f, _) = t.mknod(Ino::ROOT, b"f", &file()).unwrap();
    t.write(f, 0, &pattern(1000, 3)).unwrap();
    drop(t);
    s.commit("A", "a").unwrap();
    f
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

#[test]
fn a_stray_scratch_dir_and_pack_file_are_orphans_that_repair_removes() {
    let (_d, s) = store();
    two_snapshots(&s);
    let scratch = s.root().join("scratch/987654");
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(scratch.join("5"), b"left behind").unwrap();
    let pack = s.root().join("chunks/00000042.pack");
    std::fs::write(&pack, b"no record knows me").unwrap();

    let report = fsck::check(&s, false).unwrap();
    assert_eq!(
        report.problems,
        vec![
            Problem::OrphanPack { path: pack.clone() },
            Problem::OrphanScratch {
                path: scratch.clone()
            },
        ],
        "{report}"
    );
    assert!(report.problems[0].to_string().contains("00000042.pack"));
    assert!(
        scratch.exists() && pack.exists(),
        "a check alone changes nothing"
    );

    let report = fsck::check(&s, true).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.repaired.len(), 2, "{report}");
    assert!(!scratch.exists() && !pack.exists());
    assert_clean(&s);
    assert_eq!(s.list().unwrap().len(), 2, "snapshots are untouched");
}

#[test]
fn removing_snapshots_keeps_the_store_clean_and_frees_their_chunks() {
    let (_d, s) = store();
    let (big, _) = two_snapshots(&s);
    let before = assert_clean(&s).counts;
    let b_map = s.tree("B").unwrap().chunk_map(big).unwrap();
    let a_map = s.tree("A").unwrap().chunk_map(big).unwrap();
    let only_in_b: Vec<ChunkDigest> = b_map
        .iter()
        .filter(|e| !a_map.contains(e))
        .filter_map(|(_, e)| match e {
            Extent::Stored { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    assert_eq!(only_in_b.len(), 1, "B rewrote one chunk of big");

    s.remove("B").unwrap();
    let after = assert_clean(&s).counts;
    // B's own chunks were the rewritten chunk of big and the cut file's first chunk.
    assert_eq!(after.chunks, before.chunks - 2);
    assert_eq!(after.snapshots, 1);

    s.remove("A").unwrap();
    let empty = assert_clean(&s).counts;
    assert_eq!(
        (empty.snapshots, empty.chunks, empty.bytes_verified),
        (0, 0, 0)
    );
}

#[test]
fn a_read_only_store_checks_but_refuses_repair() {
    let (d, s) = store();
    two_snapshots(&s);
    drop(s);
    let ro = Store::open_read_only(&d.path().join("s")).unwrap();
    let report = fsck::check(&ro, false).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.counts.snapshots, 2);
    let err = fsck::check(&ro, true).unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}

#[test]
fn a_writer_drops_what_a_pack_holds_past_its_synced_length() {
    let (_d, s) = store();
    one_small_file(&s);
    let root = s.root().to_path_buf();
    drop(s);
    // What a writer killed between appending to a pack and syncing its record leaves.
    let pack = root.join("chunks/00000001.pack");
    let synced = std::fs::metadata(&pack).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&pack)
        .unwrap();
    f.write_all_at(&[0xee; 4096], synced).unwrap();
    drop(f);
    let s = Store::open(&root).unwrap();
    assert_eq!(std::fs::metadata(&pack).unwrap().len(), synced);
    assert_clean(&s);
}
