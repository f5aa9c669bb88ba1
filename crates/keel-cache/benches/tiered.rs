//! L1-hit reads through `TieredCache` vs the memory backend and vs Redis reads.
//!
//! `cargo bench -p keel-cache --bench tiered` — starts its own redis-server; 10 000 keys with
//! 64-byte values (no TTL) written through each contender and read once to warm L1 (600 s
//! `l1_ttl`; L1 built with `max_ttl` of the same and coarse expiry, as the config factory does); then 15
//! rounds of 200 000 sequential gets (uniform over the keys) per in-process contender on one
//! task, the memory backend and the tiered cache taking turns every 2 000 gets (the first
//! turn alternating), then 20 000 Redis gets. Per-round figures go to stderr.
//! `KEEL_BENCH_KEYS=N` reads N keys instead of 10 000.
//!
//! Prints median ns per get and the median per-round ratios memory_time / tiered_time
//! (≥ 0.9 is the target) and redis_time / tiered_time.
//!
//! `KEEL_BENCH_STALE=1`: the contender taking turns with the tiered cache is, instead of the
//! memory backend, a second tiered cache with `stale_if_error = 60s` (its L1 hits also read
//! the entry's deadline); the ratio is then plain tiered time / stale-if-error tiered time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_cache::{Cache, Endpoint, MemoryCache, RedisCache, Secret, TieredCache, Ttl};
use keel_metrics::MetricsService;
use keel_testkit::redis::RedisServer;

const KEYS: usize = 10_000;
const GETS: usize = 200_000;
const REDIS_GETS: usize = 20_000;
const ROUNDS: usize = 15;
/// Gets per contender before the other takes its turn.
const CHUNK: usize = 2_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn reads(cache: &dyn Cache, keys: &[String], n: usize) -> Duration {
    reads_from(cache, keys, 0, n).await
}

/// `n` gets starting at position `from` of the key sequence.
async fn reads_from(cache: &dyn Cache, keys: &[String], from: usize, n: usize) -> Duration {
    let t = Instant::now();
    for i in from..from + n {
        let k = &keys[(i.wrapping_mul(7919)) % keys.len()];
        std::hint::black_box(cache.get(k).await.unwrap());
    }
    t.elapsed()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = MetricsService::new("bench").unwrap();
        let redis = |name: &str| {
            RedisCache::builder(name, Endpoint::Url(Secret::new(server.url())))
                .items_refresh(None)
                .metrics(&metrics)
                .build()
                .unwrap()
        };
        let stale_variant = std::env::var("KEEL_BENCH_STALE").is_ok_and(|v| v == "1");
        let memory: Arc<dyn Cache> = if stale_variant {
            let stale = TieredCache::builder(
                "stale",
                MemoryCache::builder("stale:l1")
                    .max_ttl(Duration::from_secs(660))
                    .coarse_expiry(true)
                    .metrics(&metrics)
                    .build(),
                redis("stale"),
            )
            .l1_ttl(Duration::from_secs(600))
            .stale_if_error(Duration::from_secs(60))
            .metrics(&metrics)
            .build()
            .unwrap();
            stale.connect().await.unwrap();
            Arc::new(stale)
        } else {
            Arc::new(MemoryCache::builder("mem").metrics(&metrics).build())
        };
        let plain = redis("plain");
        plain.connect().await.unwrap();
        let plain: Arc<dyn Cache> = Arc::new(plain);
        let tiered = TieredCache::builder(
            "tiered",
            MemoryCache::builder("tiered:l1")
                .max_ttl(Duration::from_secs(600))
                .coarse_expiry(true)
                .metrics(&metrics)
                .build(),
            redis("tiered"),
        )
        .l1_ttl(Duration::from_secs(600))
        .metrics(&metrics)
        .build()
        .unwrap();
        tiered.connect().await.unwrap();
        while !tiered.is_subscribed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tiered: Arc<dyn Cache> = Arc::new(tiered);
        // `KEEL_BENCH_KEYS=1000` gives a working set that stays in the core's cache.
        let n_keys = std::env::var("KEEL_BENCH_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(KEYS);
        let keys: Vec<String> = (0..n_keys).map(|i| format!("key:{i}")).collect();
        for c in [&memory, &plain, &tiered] {
            for k in &keys {
                c.set(k, Bytes::from(vec![b'v'; 64]), Ttl::Never)
                    .await
                    .unwrap();
                c.get(k).await.unwrap();
            }
        }
        let (mut m_ns, mut t_ns, mut r_ns, mut vs_mem, mut vs_redis) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            // The two in-process contenders alternate in chunks, so both see the same
            // machine state (this VM's speed swings by 3x from one tenth of a second to the
            // next).
            let (mut m, mut t) = (Duration::ZERO, Duration::ZERO);
            for (c, from) in (0..GETS).step_by(CHUNK).enumerate() {
                if (c + round) % 2 == 0 {
                    m += reads_from(memory.as_ref(), &keys, from, CHUNK).await;
                    t += reads_from(tiered.as_ref(), &keys, from, CHUNK).await;
                } else {
                    t += reads_from(tiered.as_ref(), &keys, from, CHUNK).await;
                    m += reads_from(memory.as_ref(), &keys, from, CHUNK).await;
                }
            }
            let r = reads(plain.as_ref(), &keys, REDIS_GETS).await;
            if round == 0 {
                continue;
            }
            let per = |d: Duration, n: usize| d.as_nanos() as f64 / n as f64;
            let (m, t, r) = (per(m, GETS), per(t, GETS), per(r, REDIS_GETS));
            let other = if stale_variant { "stale" } else { "memory" };
            eprintln!("round {round}: tiered {t:.0} ns, {other} {m:.0} ns, redis {r:.0} ns");
            m_ns.push(m);
            t_ns.push(t);
            r_ns.push(r);
            vs_mem.push(m / t);
            vs_redis.push(r / t);
        }
        println!("| contender | median ns per get | median ratio vs tiered L1 hit |");
        println!("|---|---|---|");
        println!("| tiered (L1 hit) | {:.0} | 1.00x |", median(t_ns));
        println!(
            "| {} | {:.0} | {}/tiered = {:.2}x |",
            if stale_variant {
                "tiered + stale_if_error (L1 hit)"
            } else {
                "memory backend"
            },
            median(m_ns),
            if stale_variant { "stale" } else { "memory" },
            median(vs_mem)
        );
        println!(
            "| redis backend | {:.0} | redis/tiered = {:.1}x |",
            median(r_ns),
            median(vs_redis)
        );
    });
}

use keel_cache::Bytes;
