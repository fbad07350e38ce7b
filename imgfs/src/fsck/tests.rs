//! Unit tests of fsck: damage that only raw metadata writes can cause, and what repair does with it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;
use crate::meta::Batch;
use crate::records::{ChunkRecord, Dentry, Extent, PackRecord};
use crate::store::StoreOptions;
use crate::tree::NewNode;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    /// The two chunks of `/f` in the committed snapshot `A`.
    chunks: [(ChunkDigest, ChunkRecord); 2],
    file: Ino,
    data: DataId,
    id: SnapshotId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    store.prepare("a", None).unwrap();
    let t = store.tree("a").unwrap();
    let (file, _) = t
        .mknod(Ino::ROOT, b"f", &NewNode::new(FileKind::File, 0o644, 0, 0))
        .unwrap();
    let cs = t.chunk_size() as usize;
    let content: Vec<u8> = (0..2 * cs).map(|i| (i % 253) as u8 + 1).collect();
    t.write(file, 0, &content).unwrap();
    let data = t.inode(file).unwrap().data.unwrap();
    drop(t);
    let id = store.commit("A", "a").unwrap().id;
    let map = store.tree("A").unwrap().chunk_map(file).unwrap();
    let chunks = [0, 1].map(|i| match map[i].1 {
        Extent::Stored { digest, .. } => (digest, store.chunks().chunk(&digest).unwrap().0),
        e => panic!("chunk {i} is {e:?}"),
    });
    let f = Fixture {
        _dir: dir,
        store,
        chunks,
        file,
        data,
        id,
    };
    assert!(check(&f.store, false).unwrap().is_clean());
    f
}

impl Fixture {
    fn meta(&self) -> &MetaDb {
        self.store.meta()
    }

    fn write(&self, puts: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>]) {
        let mut b = Batch::default();
        for (k, v) in puts {
            b.put(k, v);
        }
        for k in deletes {
            b.delete(k);
        }
        self.meta().write(b, true).unwrap();
    }

    fn chunk_record(&self, digest: &ChunkDigest) -> Option<ChunkRecord> {
        let v = self.meta().get(&key::chunk(digest)).unwrap()?;
        Some(ChunkRecord::decode(&v).unwrap())
    }

    fn pack_record(&self, pack: PackId) -> PackRecord {
        PackRecord::decode(&self.meta().get(&key::pack(pack)).unwrap().unwrap()).unwrap()
    }

    /// Checks, repairs, checks again, and returns the three reports.
    fn check_repair_check(&self) -> [Report; 3] {
        [
            check(&self.store, false).unwrap(),
            check(&self.store, true).unwrap(),
            check(&self.store, false).unwrap(),
        ]
    }
}

#[test]
fn repair_sets_a_wrong_reference_count_to_the_number_of_extents_naming_the_chunk() {
    let f = fixture();
    let (digest, rec) = f.chunks[0];
    let wrong = ChunkRecord { refs: 5, ..rec };
    f.write(&[(key::chunk(&digest), wrong.encode())], &[]);

    let [found, repaired, after] = f.check_repair_check();
    let expected = Problem::RefsMismatch {
        digest,
        stored: 5,
        actual: 1,
    };
    assert_eq!(found.problems, vec![expected.clone()]);
    assert_eq!(repaired.repaired, vec![expected]);
    assert!(repaired.is_clean() && after.is_clean(), "{after}");
    assert_eq!(f.chunk_record(&digest), Some(rec));
}

#[test]
fn an_orphan_chunk_loses_its_record_and_its_space() {
    let f = fixture();
    let (digest, rec) = f.chunks[1];
    // Forget the only extent that names the second chunk, as a crash between two batches could.
    let base = key::extent_base(f.data, 1);
    f.write(&[(key::versioned(&base, f.id), Extent::Zero.encode())], &[]);
    let live_before = f.pack_record(rec.pack).live_bytes;

    let [found, repaired, after] = f.check_repair_check();
    let path = f.store.packs().path(rec.pack);
    let expected = Problem::OrphanChunk { digest, path };
    assert_eq!(found.problems, vec![expected.clone()], "{found}");
    assert_eq!(repaired.repaired, vec![expected]);
    assert!(after.is_clean(), "{after}");
    assert_eq!(f.chunk_record(&digest), None);
    assert_eq!(
        f.pack_record(rec.pack).live_bytes,
        live_before - rec.len as u64
    );
    let mut bytes = vec![1u8; rec.len as usize];
    File::open(f.store.packs().path(rec.pack))
        .unwrap()
        .read_exact_at(&mut bytes, rec.offset)
        .unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "the chunk's space is punched"
    );
    let t = f.store.tree("A").unwrap();
    assert_eq!(
        t.read(f.file, 0, 16).unwrap().len(),
        16,
        "chunk 0 still reads"
    );
}

#[test]
fn an_orphan_chunk_record_over_live_bytes_is_dropped_without_freeing_them() {
    let f = fixture();
    let (live_digest, live) = f.chunks[0];
    // A record for a slice of a live chunk's bytes: hashing passes, nothing names it.
    let (offset, len) = (live.offset + 4096, 8192u32);
    let mut slice = vec![0u8; len as usize];
    File::open(f.store.packs().path(live.pack))
        .unwrap()
        .read_exact_at(&mut slice, offset)
        .unwrap();
    let digest = ChunkDigest::of(&slice);
    let orphan = ChunkRecord {
        pack: live.pack,
        offset,
        len,
        refs: 1,
    };
    let mut pack = f.pack_record(live.pack);
    pack.live_bytes += len as u64;
    f.write(
        &[
            (key::chunk(&digest), orphan.encode()),
            (key::pack(live.pack), pack.encode()),
        ],
        &[],
    );

    let [found, repaired, after] = f.check_repair_check();
    assert!(
        matches!(found.problems[..], [Problem::OrphanChunk { digest: d, .. }] if d == digest),
        "{found}"
    );
    assert_eq!(repaired.repaired.len(), 1, "{repaired}");
    assert!(
        after.is_clean(),
        "the live chunk still hashes right: {after}"
    );
    assert_eq!(f.chunk_record(&digest), None);
    assert!(f.chunk_record(&live_digest).is_some());
}

#[test]
fn a_pack_that_chunk_records_point_into_is_kept_without_a_pack_record() {
    let f = fixture();
    let pack = f.chunks[0].1.pack;
    f.write(&[], &[key::pack(pack)]);

    let [found, repaired, _] = f.check_repair_check();
    let path = f.store.packs().path(pack);
    assert_eq!(
        found.problems,
        vec![Problem::MissingPackRecord {
            path: path.clone(),
            chunks: 2
        }],
        "{found}"
    );
    assert!(repaired.repaired.is_empty(), "{repaired}");
    assert!(path.exists());
}

#[test]
fn damaged_metadata_is_named_and_left_alone_by_repair() {
    let f = fixture();
    let a = f.id;
    let ghost = Ino(999);
    let dangling = key::dentry_base(Ino::ROOT, b"ghost");
    let stale = key::inode_base(Ino(998));
    let inode_key = key::inode_base(f.file);
    let dirty = key::extent_base(f.data, 7);
    f.write(
        &[
            (
                key::versioned(&dangling, a),
                Dentry::Entry {
                    ino: ghost,
                    kind: FileKind::File,
                }
                .encode(),
            ),
            (key::change(a, &dangling), vec![]),
            (key::change(a, &stale), vec![]),
            (
                key::versioned(&dirty, a),
                Extent::Dirty { slot: 0 }.encode(),
            ),
            (key::change(a, &dirty), vec![]),
            (key::name("lost"), 12345u64.to_be_bytes().to_vec()),
        ],
        &[key::change(a, &inode_key)],
    );

    let [found, repaired, after] = f.check_repair_check();
    let expected = vec![
        Problem::DanglingName {
            name: "lost".into(),
            id: SnapshotId(12345),
        },
        Problem::MissingChange {
            what: format!("inode {}", f.file),
            snapshot: "A".into(),
        },
        Problem::DanglingEntry {
            snapshot: "A".into(),
            what: "entry \"ghost\" in directory 1".into(),
            ino: ghost,
        },
        Problem::DirtyOutsideActive {
            snapshot: "A".into(),
            kind: SnapshotKind::Committed,
            what: format!("chunk 7 of data {}", f.data.0),
        },
        Problem::StaleChange {
            what: "inode 998".into(),
            snapshot: "A".into(),
        },
    ];
    assert_eq!(found.problems, expected, "{found}");
    assert!(repaired.repaired.is_empty(), "{repaired}");
    assert_eq!(after.problems, expected);
}

#[test]
fn an_unfinished_import_is_reported_by_a_read_only_check() {
    let f = fixture();
    f.store.prepare_import("importing", Some("A")).unwrap();
    let ro = Store::open_read_only(f.store.root()).unwrap();
    let report = check(&ro, false).unwrap();
    assert_eq!(
        report.problems,
        vec![Problem::UnfinishedImport {
            snapshot: "importing".into()
        }],
        "{report}"
    );
}

#[test]
fn an_inode_that_names_a_pack_which_is_not_its_content_is_reported() {
    // Named pack is a shared pack, not an object.
    let f = fixture();
    let t = f.store.tree_read_only("A").unwrap();
    let mut inode = t.inode(f.file).unwrap();
    let shared = f.chunks[0].1.pack;
    inode.object = Some(shared);
    let base = key::inode_base(f.file);
    f.write(&[(key::versioned(&base, f.id), inode.encode())], &[]);
    let found = check(&f.store, false).unwrap();
    assert!(
        matches!(&found.problems[..], [Problem::BadObject { pack, .. }] if *pack == shared.0),
        "{found}"
    );

    // An imported file's object, then one of its chunks made zeros in the metadata only.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    let content: Vec<u8> = (0..(3u32 << 19)).map(|i| (i % 251) as u8 + 1).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "big", &content[..]).unwrap();
    let tar = b.into_inner().unwrap();
    crate::layer::import_layer(&store, "L", None, &tar[..], &Default::default()).unwrap();
    let t = store.tree_read_only("L").unwrap();
    let ino = t.resolve(b"/big", false).unwrap();
    let inode = t.inode(ino).unwrap();
    assert!(
        inode.object.is_some(),
        "a 1.5 MiB imported file has an object"
    );
    assert!(check(&store, false).unwrap().is_clean());
    let snap = store.stat("L").unwrap().id;
    let base = key::extent_base(inode.data.unwrap(), 3);
    let mut batch = Batch::default();
    batch.put(&key::versioned(&base, snap), &Extent::Zero.encode());
    store.meta().write(batch, true).unwrap();
    let found = check(&store, false).unwrap();
    assert!(
        found
            .problems
            .iter()
            .any(|p| matches!(p, Problem::BadObject { reason, .. } if reason.contains("chunk 3 is zeros"))),
        "{found}"
    );
}
