//! Instruction-count profile of the Redis data path: `TASKS` tasks doing `N` requests in all
//! (GET, SET or a 90/10 mix, keys out of 10 000, 64-byte values) through Keel's Redis cache
//! (`Arc<dyn Cache>` built from a config, as `redis_paired` does) or through raw redis-rs on one
//! `ConnectionManager` with Keel's settings, on one current-thread runtime. Under callgrind the
//! client's instructions per request do not depend on the machine's load, unlike wall time:
//!
//! ```text
//! cargo build --release -p keel-cache --example redis_request_profile
//! redis-server --port 6390 --save '' &
//! for n in 20000 120000; do for who in keel raw; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$who.$n \
//!     target/release/examples/redis_request_profile $who get $n 50 redis://127.0.0.1:6390
//! done; done
//! ```
//!
//! Instructions per request = (total of the 120 000 run − total of the 20 000 run) / 100 000:
//! the difference removes connecting and preloading. `callgrind_annotate --inclusive=yes`
//! itemises where they go. Arguments: `keel|raw get|set|mix N TASKS REDIS_URL`.
use std::sync::Arc;
use std::time::Duration;

use keel_cache::{Bytes, Cache, CacheConfig, Ttl};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

const KEYS: u64 = 10_000;

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn is_set(op: &str, r: u64) -> bool {
    match op {
        "get" => false,
        "set" => true,
        _ => r.is_multiple_of(10),
    }
}

/// Task `t`'s requests, the same sequence for both contenders: (key index, whether a SET).
fn requests(op: &'static str, t: usize, per: usize) -> impl Iterator<Item = (usize, bool)> {
    let mut s = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
    (0..per).map(move |_| {
        let r = next(&mut s);
        ((r % KEYS) as usize, is_set(op, r >> 32))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, who, op, n, tasks, url] = &args[..] else {
        eprintln!("usage: redis_request_profile keel|raw get|set|mix N TASKS REDIS_URL");
        std::process::exit(2);
    };
    let (n, tasks): (usize, usize) = (n.parse().unwrap(), tasks.parse().unwrap());
    let op: &'static str = match op.as_str() {
        "get" => "get",
        "set" => "set",
        _ => "mix",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let value = Bytes::from(vec![b'x'; 64]);
        let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("k{i}")).collect());
        let per = n / tasks;
        let mut handles = Vec::new();
        if who == "keel" {
            let text = format!(
                "type = \"redis\"\nname = \"bench\"\nurl = \"{url}\"\n[options]\nitems_refresh = \"0s\"\n"
            );
            let cache: Arc<dyn Cache> = keel_cache::open(&CacheConfig::from_toml(&text).unwrap())
                .await
                .unwrap();
            for k in keys.iter() {
                cache.set(k, value.clone(), Ttl::Never).await.unwrap();
            }
            for t in 0..tasks {
                let (cache, keys, value) = (cache.clone(), keys.clone(), value.clone());
                handles.push(tokio::spawn(async move {
                    for (i, set) in requests(op, t, per) {
                        let key = &keys[i];
                        if set {
                            cache.set(key, value.clone(), Ttl::Never).await.unwrap();
                        } else {
                            std::hint::black_box(cache.get(key).await.unwrap());
                        }
                    }
                }));
            }
        } else {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let client = redis::Client::open(url.as_str()).unwrap();
            let conn = ConnectionManager::new_with_config(client, config)
                .await
                .unwrap();
            let keys: Arc<Vec<String>> = Arc::new(keys.iter().map(|k| format!("bench:{k}")).collect());
            {
                let mut c = conn.clone();
                for k in keys.iter() {
                    let () = c.set(k, value.as_ref()).await.unwrap();
                }
            }
            for t in 0..tasks {
                let (mut conn, keys, value) = (conn.clone(), keys.clone(), value.clone());
                handles.push(tokio::spawn(async move {
                    for (i, set) in requests(op, t, per) {
                        let key = &keys[i];
                        if set {
                            let () = conn.set(key, value.as_ref()).await.unwrap();
                        } else {
                            let v: Option<Vec<u8>> = conn.get(key).await.unwrap();
                            std::hint::black_box(v);
                        }
                    }
                }));
            }
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}
