//! Kill -9 at any moment of an import or a removal: the store reopens, fsck finds nothing wrong,
//! every committed snapshot reads as before, and the interrupted work is either whole or absent.

use std::process::Command;
use std::time::{Duration, Instant};

use imgfs::layer::{self, ImportLimits};
use imgfs::{Store, StoreOptions};

/// A layer big enough that an import takes a noticeable time: many small files and a few large
/// ones with distinct content (so every chunk is new and has to be written).
fn big_layer(seed: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in 0..20 {
        for f in 0..100 {
            let data = format!("{seed}-{d}-{f}").repeat(50);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("d{d}/f{f}"), data.as_bytes())
                .unwrap();
        }
    }
    for i in 0..4u32 {
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|x| (x.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed ^ i as u8)
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, format!("big{i}"), &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn full_export(store: &Store, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    layer::export_layer(store, name, true, &mut out).unwrap();
    out
}

fn assert_clean(store: &Store) {
    let report = imgfs::fsck::check(store, false).unwrap();
    assert!(report.is_clean(), "fsck after a kill:\n{report}");
}

#[test]
fn kill_during_import_and_remove_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let layer_path = dir.path().join("layer.tar");
    std::fs::write(&layer_path, big_layer(1)).unwrap();
    let base_tar = big_layer(2);
    let base_export = {
        let s = Store::create(&root, StoreOptions::default()).unwrap();
        layer::import_layer(&s, "base", None, &base_tar[..], &ImportLimits::default()).unwrap();
        full_export(&s, "base")
    };
    let bin = env!("CARGO_BIN_EXE_imgfs");
    let import = |name: &str| {
        Command::new(bin)
            .args(["import", "--store"])
            .arg(&root)
            .args(["--name", name, "--parent", "base"])
            .arg(&layer_path)
            .spawn()
            .unwrap()
    };

    // How long an undisturbed import takes, to spread the kills over it.
    let t0 = Instant::now();
    assert!(import("timing").wait().unwrap().success());
    let full = t0.elapsed();
    let reference = full_export(&Store::open(&root).unwrap(), "timing");
    let mut completed = 0;
    let rounds = 12;
    for i in 0..rounds {
        let name = format!("killed-{i}");
        let mut child = import(&name);
        std::thread::sleep(full.mul_f64(i as f64 / rounds as f64 * 1.2));
        let _ = child.kill();
        child.wait().unwrap();

        let s = Store::open(&root).unwrap();
        assert_clean(&s);
        assert_eq!(
            full_export(&s, "base"),
            base_export,
            "round {i}: base changed"
        );
        match s.stat(&name) {
            Ok(rec) => {
                assert_eq!(rec.kind, imgfs::SnapshotKind::Committed, "round {i}");
                assert_eq!(
                    full_export(&s, &name),
                    reference,
                    "round {i}: a committed import is whole"
                );
                completed += 1;
            }
            Err(imgfs::Error::NotFound(_)) => {}
            Err(e) => panic!("round {i}: {e}"),
        }
    }
    assert!(
        completed < rounds,
        "every import finished before its kill: the test did not test"
    );

    // Removal: kill a process that removes every committed import.
    let names: Vec<String> = Store::open(&root)
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .filter(|n| n != "base")
        .collect();
    for (i, name) in names.iter().enumerate() {
        let mut child = Command::new(bin)
            .args(["rm", "--store"])
            .arg(&root)
            .arg(name)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(i as u64 * 7));
        let _ = child.kill();
        child.wait().unwrap();
        let s = Store::open(&root).unwrap();
        assert_clean(&s);
        assert_eq!(full_export(&s, "base"), base_export);
    }
}
