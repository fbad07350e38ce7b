//! Layer export: the diff of a child that changed one file, over parents of 1k and 100k entries
//! (which should cost the same: export walks the child's change index, not the parent), and for
//! scale a full export of a 1k-entry tree.

use std::time::Duration;

use bench::{Fixture, commit_writes};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use imgfs::layer::export_layer;

/// Parents as (label, directories, files per directory).
const PARENTS: [(&str, usize, usize); 2] = [("1k", 10, 100), ("100k", 100, 1000)];

fn export(c: &mut Criterion) {
    let parents: Vec<(&str, Fixture)> = PARENTS
        .iter()
        .map(|&(label, dirs, files)| {
            let fx = Fixture::with_base("imgfs-bench-export", dirs, files)
                .expect("failed to build the parent snapshot");
            commit_writes(&fx.store, "one", "base", &[(0, 0)], b"changed\n")
                .expect("failed to commit the one-file child");
            (label, fx)
        })
        .collect();

    let mut g = c.benchmark_group("export");
    g.measurement_time(Duration::from_secs(4));
    for (label, fx) in &parents {
        g.bench_function(BenchmarkId::new("diff_one_file", label), |b| {
            b.iter(|| export_layer(&fx.store, "one", false, std::io::sink()).expect("export"))
        });
    }
    let (_, small) = &parents[0];
    g.bench_function(BenchmarkId::new("full", "1k"), |b| {
        b.iter(|| export_layer(&small.store, "base", true, std::io::sink()).expect("export"))
    });
    g.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
