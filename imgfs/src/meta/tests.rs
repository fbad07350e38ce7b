//! Unit tests of the key schema (every key the builders make decodes back to what made it)
//! and of what a writer leaves when it closes.

use super::key::{self, Base, Key};
use crate::ids::{ChunkDigest, DataId, Ino, PackId, SnapshotId};

#[test]
fn every_key_parses_back_to_what_built_it() {
    let snap = SnapshotId(7);
    let bases = [
        Base::Inode(Ino(42)),
        Base::Dentry {
            dir: Ino(1),
            name: b"a b".to_vec(),
        },
        Base::Extent {
            data: DataId(9),
            index: 3,
        },
    ];
    for base in bases {
        let encoded = base.encode();
        assert_eq!(Base::parse(&encoded), Some(base.clone()));
        assert_eq!(
            Key::parse(&key::versioned(&encoded, snap)),
            Some(Key::Version {
                base: base.clone(),
                snap
            })
        );
        assert_eq!(
            Key::parse(&key::change(snap, &encoded)),
            Some(Key::Change { snap, base })
        );
    }
    assert_eq!(Key::parse(&key::snapshot(snap)), Some(Key::Snapshot(snap)));
    assert_eq!(
        Key::parse(&key::name("app")),
        Some(Key::Name(b"app".to_vec()))
    );
    assert_eq!(
        Key::parse(&key::meta("next_id")),
        Some(Key::Meta(b"next_id".to_vec()))
    );
    let digest = ChunkDigest::of(b"x");
    assert_eq!(Key::parse(&key::chunk(&digest)), Some(Key::Chunk(digest)));
    assert_eq!(
        Key::parse(&key::pack(PackId(5))),
        Some(Key::Pack(PackId(5)))
    );
}

#[test]
fn malformed_keys_do_not_parse() {
    // A name with NUL, an entry without its separator, short and long fixed-size keys.
    let mut nul = key::dentry_base(Ino(1), b"a");
    nul.insert(9, 0);
    assert_eq!(Base::parse(&nul), None);
    let mut open = key::dentry_base(Ino(1), b"a");
    open.pop();
    assert_eq!(Base::parse(&open), None);
    assert_eq!(Key::parse(&key::snapshot(SnapshotId(1))[..8]), None);
    let mut long = key::pack(PackId(1));
    long.push(0);
    assert_eq!(Key::parse(&long), None);
    assert_eq!(Key::parse(b""), None);
    assert_eq!(Key::parse(b"Z123"), None);
}

/// A writer that logged more than `FLUSH_AT_CLOSE` leaves a table, not logs, when it closes:
/// the next open (every img command opens its store) has nothing to replay, and loses nothing.
#[test]
fn a_writer_that_logged_much_leaves_its_logs_flushed_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    let db = super::MetaDb::create(&path).unwrap();
    let value = vec![7u8; 1024];
    for i in 0..3 * 1024u32 {
        let mut b = super::Batch::default();
        b.put(&i.to_be_bytes(), &value);
        db.write(b, false).unwrap();
    }
    db.flush_wal().unwrap();
    assert!(super::wal_bytes(&path) > super::FLUSH_AT_CLOSE);
    drop(db);
    assert!(
        super::wal_bytes(&path) < 64 << 10,
        "{} bytes of logs left",
        super::wal_bytes(&path)
    );
    let db = super::MetaDb::open(&path, true).unwrap();
    assert_eq!(db.get(&3071u32.to_be_bytes()).unwrap(), Some(value));
}
