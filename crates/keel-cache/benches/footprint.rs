//! Memory per entry: RSS growth from inserting 1 000 000 entries (12-byte keys, 64-byte
//! values), per contender, each in its own process.
//!
//! `cargo bench -p keel-cache --bench footprint -- --bench moka|quick_cache|keel_memory` —
//! reads `VmRSS` from `/proc/self/status` before building the cache and after inserting every
//! entry (capacity 1 100 000, so nothing is evicted; each value its own 64-byte buffer, as a
//! caller's would be) and prints the delta divided by the entry count. Keys and values are
//! created inside the loop, so what is measured is what the cache keeps: its table, its
//! per-entry bookkeeping, the key copy and the value buffer.

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

const ENTRIES: usize = 1_000_000;
/// Each cache's bound: a little above the entry count, since a sharded core bounds each shard
/// (a tenth of slack keeps evictions out of the measurement).
const BOUND: usize = ENTRIES + ENTRIES / 10;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn key(i: usize) -> String {
    format!("key:{i:08}") // 12 bytes
}

fn value() -> Bytes {
    Bytes::copy_from_slice(&[b'v'; 64])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let which = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "keel_memory".into());
    let metrics = MetricsService::new("bench").unwrap();
    let before = rss_bytes();
    let after = match which.as_str() {
        "moka" => {
            let c = moka::sync::Cache::<String, Bytes>::new(BOUND as u64);
            for i in 0..ENTRIES {
                c.insert(key(i), value());
            }
            c.run_pending_tasks();
            assert_eq!(c.entry_count(), ENTRIES as u64);
            let after = rss_bytes();
            std::hint::black_box(&c);
            after
        }
        "quick_cache" => {
            let c = quick_cache::sync::Cache::<String, Bytes>::new(BOUND);
            for i in 0..ENTRIES {
                c.insert(key(i), value());
            }
            assert_eq!(c.len(), ENTRIES);
            let after = rss_bytes();
            std::hint::black_box(&c);
            after
        }
        "keel_memory" => {
            let c = MemoryCache::builder("footprint")
                .capacity(Capacity::Entries(BOUND as u64))
                .metrics(&metrics)
                .build();
            for i in 0..ENTRIES {
                ready(c.set(&key(i), value(), Ttl::Never)).unwrap();
            }
            assert_eq!(c.len(), ENTRIES as u64);
            let after = rss_bytes();
            std::hint::black_box(&c);
            after
        }
        other => panic!("unknown contender {other}: moka, quick_cache or keel_memory"),
    };
    let per = (after.saturating_sub(before)) as f64 / ENTRIES as f64;
    println!(
        "| {which} | {ENTRIES} | {:.0} MiB | {per:.0} B |",
        (after - before) as f64 / (1 << 20) as f64
    );
}
