//! Memory backend vs raw moka on the same Zipf workload (criterion).
//!
//! `cargo bench -p keel-cache --bench memory` — groups `get_heavy_90_10` and
//! `write_heavy_20_80`; contenders `raw_moka` (the anchor: `moka::sync::Cache<String, Bytes>`),
//! `raw_quick_cache`, `keel_memory` (through `dyn Cache`, all metrics on),
//! `keel_memory_no_eviction_count` and `keel_memory_time_every_call`;
//! 1 and 2 threads; wall time per operation across all threads. With
//! `KEEL_BENCH_MOKA_VARIANTS=1` it adds raw moka with an expiry policy and with an eviction
//! listener. `scripts/bench-ratios.py` prints the ratios; `--bench memory_paired` measures the
//! same workload with interleaved rounds, which is steadier on a noisy machine.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[path = "workload.rs"]
mod workload;

fn bench(c: &mut Criterion) {
    let variants = std::env::var_os("KEEL_BENCH_MOKA_VARIANTS").is_some();
    for (group_name, write_pct) in [("get_heavy_90_10", 10), ("write_heavy_20_80", 80)] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        group.measurement_time(Duration::from_secs(4));
        group.warm_up_time(Duration::from_secs(1));
        for threads in [1usize, 2] {
            let w = workload::Workload::new(write_pct, variants);
            for (name, contender) in &w.contenders {
                group.bench_with_input(BenchmarkId::new(*name, threads), &threads, |b, &t| {
                    b.iter_custom(|iters| w.timed(contender, t, iters));
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
