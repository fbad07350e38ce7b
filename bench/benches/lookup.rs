//! Path lookup (`Tree::lookup` + `getattr`) of an unchanged file in a snapshot 1 deep and 64 deep
//! over a 10k-entry base, each snapshot of the chain changing some other files. One seek finds the
//! newest visible version whatever the depth, so depth 64 should cost about what depth 1 does.
//! The `open_tree` group shows the one cost that does grow with depth: reading the chain.

use std::hint::black_box;
use std::time::Duration;

use bench::{Fixture, commit_writes, dir_name, file_name};
use criterion::{Criterion, criterion_group, criterion_main};
use imgfs::Ino;

const DEPTH: usize = 64;
const WRITES_PER_LAYER: usize = 8;
/// The file looked up: `d005/f0777`. Layers write files 0..520 only, so none touches it.
const TARGET: (usize, usize) = (5, 777);

fn lookup(c: &mut Criterion) {
    let fx = Fixture::with_base("imgfs-bench-lookup", 10, 1000).expect("failed to build the base");
    let mut parent = "base".to_string();
    for i in 1..=DEPTH {
        let name = format!("s{i}");
        let files: Vec<(usize, usize)> = (0..WRITES_PER_LAYER)
            .map(|j| (i % 10, i * WRITES_PER_LAYER + j))
            .collect();
        commit_writes(
            &fx.store,
            &name,
            &parent,
            &files,
            format!("layer {i}\n").as_bytes(),
        )
        .expect("failed to build the chain");
        parent = name;
    }

    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(3));
    for depth in [1, DEPTH] {
        let tree = fx.store.tree(&format!("s{depth}")).expect("open");
        assert_eq!(tree.record().depth as usize, depth);
        let (dir, _) = tree
            .lookup(Ino::ROOT, dir_name(TARGET.0).as_bytes())
            .expect("directory");
        let name = file_name(TARGET.1);
        g.bench_function(format!("depth{depth}"), |b| {
            b.iter(|| {
                let (ino, _) = tree
                    .lookup(dir, black_box(name.as_bytes()))
                    .expect("lookup");
                tree.getattr(ino).expect("getattr")
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("open_tree");
    g.measurement_time(Duration::from_secs(2));
    for depth in [1, DEPTH] {
        let name = format!("s{depth}");
        g.bench_function(format!("depth{depth}"), |b| {
            b.iter(|| fx.store.tree(black_box(&name)).expect("open"))
        });
    }
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
