//! Kill -9 at any moment of an import or a removal: the store reopens, fsck finds nothing wrong,
//! every committed snapshot reads as before, and the interrupted work is either whole or absent.
//! Before that reopening, `imgfs fsck` says the store needs recovery (exit 2), not that it is
//! damaged.

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

/// `imgfs fsck`, its exit code and standard error.
fn fsck_cli(root: &std::path::Path, repair: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgfs"));
    cmd.arg("fsck").arg(root);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fsck_says_a_store_whose_writer_was_killed_needs_recovery_until_it_is_recovered() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    drop(Store::create(&root, StoreOptions::default()).unwrap());
    // An import that reads its layer from a pipe stays half done for as long as the pipe
    // stays open: its writer is alive, then killed, at moments the test chooses.
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgfs"))
        .args(["import", "--store"])
        .arg(&root)
        .args(["--name", "half", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let layer = big_layer(3);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&layer[..layer.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let start = Instant::now();
    loop {
        let s = Store::open_read_only(&root).unwrap();
        if s.stat("half")
            .is_ok_and(|r| r.kind == imgfs::SnapshotKind::Importing)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the import never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // While the writer lives, its work in progress is not something to recover.
    let (code, err) = fsck_cli(&root, false);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "which process {} has open for writing",
            child.id()
        )),
        "{err}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let (code, err) = fsck_cli(&root, false);
    assert!(
        err.contains("needs recovery: open it for writing or run fsck --repair"),
        "{err}"
    );
    assert_eq!(code, Some(2), "{err}");

    let (code, err) = fsck_cli(&root, true);
    assert_eq!(code, Some(0), "fsck --repair: {err}");
    let (code, err) = fsck_cli(&root, false);
    assert_eq!(code, Some(0), "fsck after the recovery: {err}");
}
