//! Chunk store throughput: appending 64 MiB as 64 KiB chunks to a fresh pack store and syncing
//! it, and reading them back through the memory map touching every byte; beside them, sha256 and
//! memcpy of the same bytes, the floors that a write (which hashes at commit) and a read compare to.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bench::scratch_dir;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use imgfs::chunks::PackStore;
use imgfs::ids::PackId;
use sha2::{Digest, Sha256};

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 64 << 20;

/// Incompressible, distinct bytes (xorshift64).
fn data() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(TOTAL);
    while out.len() < TOTAL {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Reads every byte, so that a read through the map really faults the pages in.
fn touch(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |acc, &b| acc.wrapping_add(u64::from(b)))
}

fn write_all(packs: &PackStore, data: &[u8]) -> Vec<(PackId, u64)> {
    let at = data
        .chunks(CHUNK)
        .map(|c| packs.append(c).expect("append"))
        .collect();
    packs.sync().expect("sync");
    at
}

fn read_all(packs: &PackStore, at: &[(PackId, u64)]) -> u64 {
    at.iter()
        .map(|&(pack, offset)| touch(&packs.read(pack, offset, CHUNK as u32).expect("read")))
        .fold(0, u64::wrapping_add)
}

fn chunks(c: &mut Criterion) {
    let data = data();
    let mut g = c.benchmark_group("chunks");
    g.throughput(Throughput::Bytes(TOTAL as u64))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    g.bench_function("pack_write", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = scratch_dir("imgfs-bench-packs").expect("scratch directory");
                let packs = PackStore::open(dir.path(), false, &BTreeMap::new()).expect("open");
                let start = Instant::now();
                black_box(write_all(&packs, &data));
                total += start.elapsed();
            }
            total
        })
    });

    let dir = scratch_dir("imgfs-bench-packs").expect("scratch directory");
    let packs = PackStore::open(dir.path(), false, &BTreeMap::new()).expect("open");
    let at = write_all(&packs, &data);
    assert_eq!(read_all(&packs, &at), touch(&data));
    // A store keeps its packs mapped for as long as it is open: this is the steady state.
    g.bench_function("pack_read", |b| b.iter(|| read_all(&packs, &at)));
    // The first read after opening a store maps the pack afresh and takes its page faults.
    g.bench_function("pack_read_new_map", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = PackStore::open(dir.path(), true, &BTreeMap::new()).expect("open");
                let start = Instant::now();
                black_box(read_all(&fresh, &at));
                total += start.elapsed();
            }
            total
        })
    });
    g.bench_function("sha256", |b| {
        b.iter(|| {
            for c in data.chunks(CHUNK) {
                black_box(Sha256::digest(c));
            }
        })
    });
    let mut dst = vec![1u8; TOTAL];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            for (d, s) in dst.chunks_mut(CHUNK).zip(data.chunks(CHUNK)) {
                d.copy_from_slice(black_box(s));
            }
            black_box(&dst);
        })
    });
    g.finish();
}

criterion_group!(benches, chunks);
criterion_main!(benches);
