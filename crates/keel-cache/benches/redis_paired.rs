//! The Redis data path's tax: many tasks doing GET, SET or a 90/10 mix through Keel's Redis
//! cache (`Arc<dyn Cache>` built from config, as a user would) vs the same tasks on raw
//! redis-rs with the same connection type (one `ConnectionManager`, one multiplexed
//! connection), against one local redis-server.
//!
//! `cargo bench -p keel-cache --bench redis_paired` — starts its own redis-server on a free
//! port; for each workload (50 and 500 tasks × GET, SET, 90/10) it runs interleaved rounds of
//! `OPS` requests per contender (default 40 000) (who goes first alternates), and prints the median ops/s of
//! each and the median per-round ratio keel / raw (1.0 = no tax). `ROUNDS=n` overrides the
//! number of rounds, `OPS=n` the requests per turn. Raw redis-rs gets its keys already prefixed (Keel prefixes them itself).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_cache::{Cache, CacheConfig, Ttl};
use keel_testkit::redis::RedisServer;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

const KEYS: u64 = 10_000;

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
    /// 90% GET, 10% SET.
    Mix,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Set => "SET",
            Op::Mix => "90/10",
        }
    }
    fn is_set(self, r: u64) -> bool {
        match self {
            Op::Get => false,
            Op::Set => true,
            Op::Mix => r.is_multiple_of(10),
        }
    }
}

/// Requests per turn (env `OPS`, default 40 000).
fn ops() -> usize {
    std::env::var("OPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40_000)
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

/// `tasks` tasks doing `OPS` requests in all through Keel; ops/s.
async fn keel_turn(cache: &Arc<dyn Cache>, keys: &Arc<Vec<String>>, tasks: usize, op: Op) -> f64 {
    let per = ops() / tasks;
    let value = Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (cache, keys, value) = (cache.clone(), keys.clone(), value.clone());
            tokio::spawn(async move {
                let mut s = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                for _ in 0..per {
                    let r = next(&mut s);
                    let key = &keys[(r % KEYS) as usize];
                    if op.is_set(r >> 32) {
                        cache.set(key, value.clone(), Ttl::Never).await.unwrap();
                    } else {
                        cache.get(key).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per * tasks) as f64 / start.elapsed().as_secs_f64()
}

/// The same with raw redis-rs on one `ConnectionManager`.
async fn raw_turn(conn: &ConnectionManager, keys: &Arc<Vec<String>>, tasks: usize, op: Op) -> f64 {
    let per = ops() / tasks;
    let value = Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (mut conn, keys, value) = (conn.clone(), keys.clone(), value.clone());
            tokio::spawn(async move {
                let mut s = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                for _ in 0..per {
                    let r = next(&mut s);
                    let key = &keys[(r % KEYS) as usize];
                    if op.is_set(r >> 32) {
                        let () = conn.set(key, value.as_ref()).await.unwrap();
                    } else {
                        let _: Option<Vec<u8>> = conn.get(key).await.unwrap();
                    }
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
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(9);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = RedisServer::start();
    rt.block_on(async {
        let text = format!(
            "type = \"redis\"\nname = \"bench\"\nurl = \"{}\"\n[options]\nitems_refresh = \"0s\"\n",
            server.url()
        );
        let config = CacheConfig::from_toml(&text).unwrap();
        let cache = keel_cache::open(&config).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        // The settings Keel's connection manager uses (timeouts, retries).
        let raw_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let raw = ConnectionManager::new_with_config(client, raw_config)
            .await
            .unwrap();
        let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|n| format!("k{n}")).collect());
        let raw_keys: Arc<Vec<String>> =
            Arc::new((0..KEYS).map(|n| format!("bench:k{n}")).collect());
        for key in keys.iter() {
            cache.set(key, Bytes::from_static(&[b'x'; 64]), Ttl::Never).await.unwrap();
        }
        println!("| tasks | op | keel (ops/s, median) | raw redis-rs (ops/s, median) | keel / raw (median of rounds) | per-round range |");
        println!("|---|---|---|---|---|---|");
        for tasks in [50, 500] {
            for op in [Op::Get, Op::Set, Op::Mix] {
                // Warm-up turn each.
                keel_turn(&cache, &keys, tasks, op).await;
                raw_turn(&raw, &raw_keys, tasks, op).await;
                let (mut k, mut r, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
                for round in 0..rounds {
                    let (a, b) = if round % 2 == 0 {
                        let a = keel_turn(&cache, &keys, tasks, op).await;
                        (a, raw_turn(&raw, &raw_keys, tasks, op).await)
                    } else {
                        let b = raw_turn(&raw, &raw_keys, tasks, op).await;
                        (keel_turn(&cache, &keys, tasks, op).await, b)
                    };
                    k.push(a);
                    r.push(b);
                    ratios.push(a / b);
                }
                let lo = ratios.iter().copied().fold(f64::MAX, f64::min);
                let hi = ratios.iter().copied().fold(0.0, f64::max);
                println!(
                    "| {tasks} | {} | {:.0} | {:.0} | {:.2}x | {lo:.2}–{hi:.2} |",
                    op.name(),
                    median(k),
                    median(r),
                    median(ratios)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
}
