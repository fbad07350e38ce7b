//! Path lookup (`Tree::lookup` + `getattr`) of an unchanged file in a snapshot 1 deep and 64 deep
//! over a 10k-entry base, each snapshot of the chain changing some other files. One seek finds the
//! newest visible version whatever the depth, so depth 64 should cost about what depth 1 does.
//! The `open_tree` group shows the one cost that does grow with depth: reading the chain, and
//! `lookup_siblings` what versions written by snapshots outside the chain cost: a file that 1000
//! sibling snapshots each changed, against an untouched one, looked up in a later child.

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

/// How many committed siblings change the looked-up file in `lookup_siblings`.
const SIBLINGS: usize = 1000;

fn siblings(c: &mut Criterion) {
    let fx =
        Fixture::with_base("imgfs-bench-siblings", 10, 1000).expect("failed to build the base");
    for i in 0..SIBLINGS {
        commit_writes(
            &fx.store,
            &format!("sib{i}"),
            "base",
            &[TARGET],
            format!("sibling {i}\n").as_bytes(),
        )
        .expect("failed to commit a sibling");
    }
    // Created after the siblings, so its id is above theirs and every sibling version of the
    // target sorts between the child's seek position and the base's version.
    commit_writes(&fx.store, "child", "base", &[(0, 0)], b"child\n").expect("commit the child");
    let tree = fx.store.tree("child").expect("open");
    let (dir, _) = tree
        .lookup(Ino::ROOT, dir_name(TARGET.0).as_bytes())
        .expect("directory");

    let mut g = c.benchmark_group("lookup_siblings");
    g.measurement_time(Duration::from_secs(3));
    for (label, f) in [("untouched", TARGET.1 + 1), ("changed_by_1000", TARGET.1)] {
        let name = file_name(f);
        g.bench_function(label, |b| {
            b.iter(|| {
                let (ino, _) = tree
                    .lookup(dir, black_box(name.as_bytes()))
                    .expect("lookup");
                tree.getattr(ino).expect("getattr")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, siblings);
criterion_main!(benches);
