//! Import throughput of a real root file system (Debian bookworm minbase, built by
//! `bench/rootfs.sh`) into a fresh store, against GNU `tar -x` of the same tar onto a fresh ext4
//! directory. Both end durable: an import ends with an fsynced commit, so `tar -x` is followed by
//! `sync -f` (syncfs) of the directory's file system.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bench::{rootfs_tar, scratch_dir};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use imgfs::layer::{ImportLimits, import_layer};
use imgfs::{Store, StoreOptions};

/// Flushes everything dirty, so that the write-back of the previous iteration (and of deleting
/// its output) does not land in the next timed one.
fn settle() {
    run(&mut Command::new("sync"));
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn import(c: &mut Criterion) {
    let Some(tar) = rootfs_tar() else {
        eprintln!(
            "import: skipped; the root file system tar is missing. Build it once (root, a few \
             minutes) with `bench/rootfs.sh`, or point IMG_ROOTFS_TAR at a tar"
        );
        return;
    };
    let size = std::fs::metadata(&tar).expect("stat the rootfs tar").len();

    let mut g = c.benchmark_group("import_rootfs");
    // One iteration takes seconds: ten samples of one iteration each.
    g.throughput(Throughput::Bytes(size))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(12));

    // Every iteration's output is kept until the group ends. This file system has no journal,
    // and for inode allocation ext4 then skips inodes freed in the last minute or more
    // (`recently_deleted` in fs/ext4/ialloc.c): deleting one extracted tree before extracting the
    // next made `tar -x` 4 to 10 times slower, measuring our own clean-up rather than tar.
    let mut keep: Vec<tempfile::TempDir> = Vec::new();
    g.bench_function("imgfs", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = scratch_dir("imgfs-bench-import").expect("create a directory");
                let store = Store::create(&dir.path().join("store"), StoreOptions::default())
                    .expect("create a store");
                let input = File::open(&tar).expect("open the rootfs tar");
                settle();
                let start = Instant::now();
                import_layer(&store, "rootfs", None, input, &ImportLimits::default())
                    .expect("import the rootfs tar");
                total += start.elapsed();
                keep.push(dir);
            }
            total
        })
    });

    g.bench_function("tar_x", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = scratch_dir("imgfs-bench-tar").expect("create a directory");
                settle();
                let start = Instant::now();
                untar(&tar, dir.path());
                run(Command::new("sync").arg("-f").arg(dir.path()));
                total += start.elapsed();
                keep.push(dir);
            }
            total
        })
    });
    g.finish();
    drop(keep);
}

fn untar(tar: &Path, dir: &Path) {
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-xf"])
        .arg(tar)
        .arg("-C")
        .arg(dir));
}

criterion_group!(benches, import);
criterion_main!(benches);
