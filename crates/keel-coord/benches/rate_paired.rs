//! The rate limiter's tax: decisions/s through Keel's [`RateLimiter`] on a [`RedisStore`]
//! vs the same GCRA script sent raw by `EVALSHA` (redis-rs `Script`) on one multiplexed
//! redis-rs connection, with the same keys, limit and concurrency, against one local
//! redis-server.
//!
//! `cargo bench -p keel-coord --bench rate_paired` — starts its own redis-server on a free
//! port; for 50 and 500 tasks it runs interleaved rounds of `OPS` decisions per contender
//! (default 40 000; who goes first alternates) over 10 000 keys of a 100/s, burst 100
//! limit (a mix of allowed and limited decisions), and prints the median decisions/s of
//! each and the median per-round ratio keel / raw (1.0 = no tax). `ROUNDS=n` overrides the
//! number of rounds (default 9). Raw redis-rs gets its keys already formatted (Keel builds
//! `__keel_rate:<ns>{key}` itself on each call).

use std::sync::Arc;
use std::time::Instant;

use keel_cache::{Endpoint, Secret};
use keel_coord::RedisStore;
use keel_coord::rate::{Limit, Rate, RateLimiter};
use keel_testkit::redis::RedisServer;
use redis::aio::MultiplexedConnection;

const KEYS: u64 = 10_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn keel_turn(
    limiter: &RateLimiter,
    keys: &Arc<Vec<String>>,
    limit: Limit,
    tasks: usize,
) -> f64 {
    let per = env_or("OPS", 40_000) / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (limiter, keys) = (limiter.clone(), keys.clone());
            tokio::spawn(async move {
                let mut s = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                for _ in 0..per {
                    let key = &keys[(next(&mut s) % KEYS) as usize];
                    limiter.allow(key, &limit, 1).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per * tasks) as f64 / start.elapsed().as_secs_f64()
}

async fn raw_turn(
    conn: &MultiplexedConnection,
    script: &Arc<redis::Script>,
    keys: &Arc<Vec<String>>,
    limit: Limit,
    tasks: usize,
) -> f64 {
    let per = env_or("OPS", 40_000) / tasks;
    let emission = limit.rate().emission_interval().as_micros().to_string();
    let burst = limit.burst().to_string();
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (mut conn, script, keys) = (conn.clone(), script.clone(), keys.clone());
            let (emission, burst) = (emission.clone(), burst.clone());
            tokio::spawn(async move {
                let mut s = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                for _ in 0..per {
                    let key = &keys[(next(&mut s) % KEYS) as usize];
                    let _: (i64, i64, i64, i64) = script
                        .key(key)
                        .arg(&emission)
                        .arg(&burst)
                        .arg("1")
                        .invoke_async(&mut conn)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per * tasks) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_or("ROUNDS", 9);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = RedisServer::start();
    rt.block_on(async {
        let store = RedisStore::builder(Endpoint::Url(Secret::new(server.url())))
            .build()
            .unwrap();
        store.connect().await.unwrap();
        let limiter = RateLimiter::new(store);
        let client = redis::Client::open(server.url()).unwrap();
        let raw = client.get_multiplexed_async_connection().await.unwrap();
        let script = Arc::new(redis::Script::new(RedisStore::GCRA_SCRIPT));
        let limit = Limit::new(Rate::per_second(100).unwrap(), 100).unwrap();
        let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|n| format!("k{n}")).collect());
        let raw_keys: Arc<Vec<String>> =
            Arc::new((0..KEYS).map(|n| format!("__keel_rate:{{k{n}}}")).collect());
        println!("| tasks | keel (decisions/s, median) | raw EVALSHA (decisions/s, median) | keel / raw (median of rounds) | per-round range |");
        println!("|---|---|---|---|---|");
        for tasks in [50, 500] {
            // Warm-up turn each.
            keel_turn(&limiter, &keys, limit, tasks).await;
            raw_turn(&raw, &script, &raw_keys, limit, tasks).await;
            let (mut k, mut r, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let (a, b) = if round % 2 == 0 {
                    let a = keel_turn(&limiter, &keys, limit, tasks).await;
                    (a, raw_turn(&raw, &script, &raw_keys, limit, tasks).await)
                } else {
                    let b = raw_turn(&raw, &script, &raw_keys, limit, tasks).await;
                    (keel_turn(&limiter, &keys, limit, tasks).await, b)
                };
                k.push(a);
                r.push(b);
                ratios.push(a / b);
            }
            let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            println!(
                "| {tasks} | {:.0} | {:.0} | {:.2}x | {lo:.2}–{hi:.2} |",
                median(k),
                median(r),
                median(ratios)
            );
        }
    });
}
