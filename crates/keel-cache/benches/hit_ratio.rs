//! Hit ratio of the memory backend vs moka and quick_cache on the same traces.
//!
//! `cargo bench -p keel-cache --bench hit_ratio` — a read-through loop (get; on a miss, set)
//! over two traces of 2 000 000 accesses, capacity 10 000 entries (a tenth of the keys):
//! - `zipf`: keys Zipf(s = 1.0) over 100 000 keys;
//! - `zipf_scan`: the same, with every third access a one-shot key never seen again (a scan
//!   polluting the cache).
//!
//! Contenders: `moka::sync::Cache<String, Bytes>`, `quick_cache::sync::Cache<String, Bytes>`
//! and `MemoryCache` (`Capacity::Entries`). Deterministic (fixed seed), single-threaded: the
//! figures do not depend on the machine's load. Prints hits / accesses in percent, over all
//! accesses and over the Zipf accesses only.

use bytes::Bytes;
use keel_cache::{Cache, Capacity, MemoryCache, Ttl};
use keel_metrics::MetricsService;

/// The output of a memory-backend future, which is always ready at once.
fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("memory-backend futures are ready"),
    }
}

// The trace's key distribution is the memory benches' (shared code, not shared contenders).
#[path = "workload.rs"]
#[allow(dead_code)]
mod workload;

const KEYS: usize = workload::KEYS;
const CAPACITY: usize = KEYS / 10;
const ACCESSES: usize = 2_000_000;

/// `(key, is_one_shot)` per access.
fn trace(scan: bool) -> Vec<(String, bool)> {
    let cdf = workload::zipf_cdf();
    let mut state = 7;
    (0..ACCESSES)
        .map(|i| {
            if scan && i % 3 == 2 {
                (format!("scan:{i}"), true)
            } else {
                let k = workload::zipf_key(&cdf, &mut state);
                (format!("key:{k:08}"), false)
            }
        })
        .collect()
}

/// (hits over all accesses, hits over the Zipf accesses), in percent.
fn replay(trace: &[(String, bool)], mut access: impl FnMut(&str) -> bool) -> (f64, f64) {
    let (mut hits, mut zipf, mut zipf_hits) = (0u64, 0u64, 0u64);
    for (key, one_shot) in trace {
        let hit = access(key);
        hits += u64::from(hit);
        if !one_shot {
            zipf += 1;
            zipf_hits += u64::from(hit);
        }
    }
    (
        100.0 * hits as f64 / trace.len() as f64,
        100.0 * zipf_hits as f64 / zipf as f64,
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let value = Bytes::from_static(&[b'v'; 64]);
    println!("| trace | contender | hit ratio (all accesses) | hit ratio (Zipf accesses) |");
    println!("|---|---|---|---|");
    for (name, scan) in [("zipf", false), ("zipf_scan", true)] {
        let t = trace(scan);
        let moka = moka::sync::Cache::<String, Bytes>::new(CAPACITY as u64);
        let (all, z) = replay(&t, |k| {
            if moka.get(k).is_some() {
                true
            } else {
                moka.insert(k.to_owned(), value.clone());
                false
            }
        });
        println!("| {name} | moka | {all:.1}% | {z:.1}% |");
        let quick = quick_cache::sync::Cache::<String, Bytes>::new(CAPACITY);
        let (all, z) = replay(&t, |k| {
            if quick.get(k).is_some() {
                true
            } else {
                quick.insert(k.to_owned(), value.clone());
                false
            }
        });
        println!("| {name} | quick_cache | {all:.1}% | {z:.1}% |");
        let metrics = MetricsService::new("bench").unwrap();
        let keel = MemoryCache::builder("hit_ratio")
            .capacity(Capacity::Entries(CAPACITY as u64))
            .metrics(&metrics)
            .build();
        let (all, z) = replay(&t, |k| {
            if ready(keel.get(k)).unwrap().is_some() {
                true
            } else {
                ready(keel.set(k, value.clone(), Ttl::Never)).unwrap();
                false
            }
        });
        println!("| {name} | keel_memory | {all:.1}% | {z:.1}% |");
    }
}
