//! Snapshot lifecycle latency on parents of 1k and 100k entries: `prepare` alone, `commit` of an
//! unchanged child, and `commit` after one small file write. The parent's size should not show:
//! both operations are meant to cost O(what the child changed).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bench::{Fixture, file_ino, scratch_dir};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main,
};

/// Parents as (label, directories, files per directory).
const PARENTS: [(&str, usize, usize); 2] = [("1k", 10, 100), ("100k", 100, 1000)];

/// A snapshot name no earlier iteration used. Children are never removed: `remove` costs a synced
/// write and a scan of every snapshot, which would dwarf what is measured, and leaving siblings of
/// the parent behind changes nothing that prepare or commit reads.
fn fresh(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn snapshot(c: &mut Criterion) {
    let parents: Vec<(&str, Fixture)> = PARENTS
        .iter()
        .map(|&(label, dirs, files)| {
            let fx = Fixture::with_base("imgfs-bench-commit", dirs, files)
                .expect("failed to build the parent snapshot");
            (label, fx)
        })
        .collect();

    let mut g = c.benchmark_group("prepare");
    g.measurement_time(Duration::from_secs(3));
    for (label, fx) in &parents {
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_batched(
                || fresh("p"),
                |key| fx.store.prepare(&key, Some("base")).expect("prepare"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("commit_unchanged");
    g.sample_size(50).measurement_time(Duration::from_secs(5));
    floor(&mut g);
    for (label, fx) in &parents {
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_batched(
                || {
                    let key = fresh("u");
                    fx.store.prepare(&key, Some("base")).expect("prepare");
                    (format!("{key}-done"), key)
                },
                |(name, key)| fx.store.commit(&name, &key).expect("commit"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("commit_write");
    g.sample_size(50).measurement_time(Duration::from_secs(5));
    floor(&mut g);
    for (label, fx) in &parents {
        let ino = file_ino(&fx.store, "base", 0, 0).expect("d000/f0000 exists");
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_batched(
                || {
                    let key = fresh("w");
                    fx.store.prepare(&key, Some("base")).expect("prepare");
                    let tree = fx.store.tree(&key).expect("open the child");
                    // New content each time, so that commit stores a new chunk rather than
                    // finding the previous iteration's one.
                    tree.write(ino, 0, format!("{key}\n").as_bytes())
                        .expect("write");
                    (format!("{key}-done"), key)
                },
                |(name, key)| fx.store.commit(&name, &key).expect("commit"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// What any durable commit costs on this disk: appending 100 bytes to a file and `fdatasync`. A
/// commit that changed nothing makes one such sync (the metadata log); one that stored a new chunk
/// makes two (the pack, then the log that points into it).
fn floor(g: &mut BenchmarkGroup<'_, WallTime>) {
    let dir = scratch_dir("imgfs-bench-fsync").expect("scratch directory");
    let mut f = std::fs::File::create(dir.path().join("log")).expect("create a file");
    g.bench_function("fdatasync_floor", |b| {
        b.iter(|| {
            f.write_all(&[b'x'; 100]).expect("append");
            f.sync_data().expect("fdatasync")
        })
    });
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
