//! Uncontended lock + release on a local redis-server: Keel's `Locker` vs raw redis-rs doing
//! `SET key token NX PX` then the owner-checked release `EVAL`, the same two round trips; and
//! Keel's `Semaphore` (`try_acquire` with 3 permits + release: two scripts on a sorted set,
//! with `TIME`) against the same `Locker`.
//!
//! `cargo bench -p keel-coord --bench lock` — starts its own redis-server on a free port,
//! runs 15 interleaved rounds of 2000 lock+release pairs per contender, and prints the median
//! µs per pair, the median per-round ratio raw / keel (above 1.0 = Keel faster) and the median
//! per-round ratio semaphore / lock (above 1.0 = the semaphore is slower).

use std::time::{Duration, Instant};

use keel_cache::{Endpoint, Secret};
use keel_coord::lock::new_token;
use keel_coord::{Locker, RedisStore, Semaphore};
use keel_testkit::redis::RedisServer;

const ROUNDS: usize = 15;
const PAIRS: u32 = 2000;
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    rt.block_on(async {
        let store = RedisStore::builder(Endpoint::Url(Secret::new(server.url())))
            .namespace("bench:")
            .build()
            .unwrap();
        store.connect().await.unwrap();
        let locker = Locker::new(store.clone());
        let semaphore = Semaphore::new(store);
        let client = redis::Client::open(server.url()).unwrap();
        let mut raw = client.get_multiplexed_async_connection().await.unwrap();
        let release = redis::Script::new(RELEASE);
        let mut keel_us = Vec::new();
        let mut raw_us = Vec::new();
        let mut ratios = Vec::new();
        let mut sem_us = Vec::new();
        let mut sem_ratios = Vec::new();
        for round in 0..=ROUNDS {
            let keel_run = async {
                let t = Instant::now();
                for _ in 0..PAIRS {
                    let g = locker
                        .try_lock("bench", Duration::from_secs(10))
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(g.release().await.unwrap());
                }
                t.elapsed()
            };
            let raw_run = async {
                let t = Instant::now();
                for _ in 0..PAIRS {
                    let token = new_token().unwrap();
                    let ok: Option<String> = redis::cmd("SET")
                        .arg("raw:bench")
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(10_000)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    assert!(ok.is_some());
                    let n: i64 = release
                        .key("raw:bench")
                        .arg(&token)
                        .invoke_async(&mut raw)
                        .await
                        .unwrap();
                    assert_eq!(n, 1);
                }
                t.elapsed()
            };
            let sem_run = async {
                let t = Instant::now();
                for _ in 0..PAIRS {
                    let p = semaphore
                        .try_acquire("bench-sem", 3, Duration::from_secs(10))
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(p.release().await.unwrap());
                }
                t.elapsed()
            };
            let (k, r, sm) = if round % 2 == 0 {
                let k = keel_run.await;
                let r = raw_run.await;
                (k, r, sem_run.await)
            } else {
                let sm = sem_run.await;
                let r = raw_run.await;
                (keel_run.await, r, sm)
            };
            if round == 0 {
                continue; // warm-up
            }
            let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(PAIRS);
            keel_us.push(per(k));
            raw_us.push(per(r));
            ratios.push(r.as_secs_f64() / k.as_secs_f64());
            sem_us.push(per(sm));
            sem_ratios.push(sm.as_secs_f64() / k.as_secs_f64());
        }
        println!("| contender | median µs per lock+release | median ratio raw / keel |");
        println!("|---|---|---|");
        println!("| raw SET NX PX + EVAL | {:.1} | 1.00x |", median(raw_us));
        println!(
            "| keel Locker (try_lock + release) | {:.1} | {:.2}x |",
            median(keel_us),
            median(ratios)
        );
        println!(
            "| keel Semaphore (try_acquire 3 permits + release) | {:.1} | semaphore / lock {:.2}x |",
            median(sem_us),
            median(sem_ratios)
        );
    });
}
