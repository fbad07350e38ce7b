//! Times the tree operations `tar -x` makes per file, without FUSE: what the server itself costs.
use std::time::Instant;

use imgfs::{FileKind, Ino, NewNode, SetAttr, Store, StoreOptions, Timestamp};

fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let s = Store::create(&dir.path().join("s"), StoreOptions::default()).unwrap();
    s.prepare("a", None).unwrap();
    let t = s.tree("a").unwrap();
    let n = 12_000;
    let start = Instant::now();
    let mut dirs = Vec::new();
    for d in 0..100 {
        dirs.push(
            t.mknod(
                Ino::ROOT,
                format!("d{d}").as_bytes(),
                &NewNode::new(FileKind::Dir, 0o755, 0, 0),
            )
            .unwrap()
            .0,
        );
    }
    for i in 0..n {
        let dir = dirs[i % 100];
        let name = format!("f{i}");
        assert!(t.lookup(dir, name.as_bytes()).is_err());
        let (ino, _) = t
            .mknod(
                dir,
                name.as_bytes(),
                &NewNode::new(FileKind::File, 0o600, 0, 0),
            )
            .unwrap();
        let _ = t.getxattr(ino, b"security.capability");
        t.write(ino, 0, &[7u8; 3000]).unwrap();
        t.setattr(
            ino,
            &SetAttr {
                mtime: Some(Timestamp::from_secs(1)),
                ..Default::default()
            },
        )
        .unwrap();
        let _ = t.getxattr(ino, b"security.capability");
        t.setattr(
            ino,
            &SetAttr {
                uid: Some(0),
                gid: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        t.setattr(
            ino,
            &SetAttr {
                perm: Some(0o644),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let el = start.elapsed();
    println!("{n} files: {:?} total, {:?} per file", el, el / n as u32);
}
