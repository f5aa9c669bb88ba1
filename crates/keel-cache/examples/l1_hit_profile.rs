//! Instruction-count profile of the tiered bench's read loop: 10 000 keys with 64-byte values,
//! 200 000 gets in the bench's order, on one current-thread runtime. Deterministic under
//! callgrind, unlike wall time on a shared machine:
//!
//! ```text
//! cargo build --release -p keel-cache --example l1_hit_profile
//! valgrind --tool=callgrind --cache-sim=yes target/release/examples/l1_hit_profile mem x
//! valgrind --tool=callgrind --cache-sim=yes target/release/examples/l1_hit_profile tiered redis://127.0.0.1:6379
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep l1_hit_profile::reads
//! ```
//!
//! Modes: `quick` (raw quick_cache, the memory core's library), `mem` (the memory backend,
//! entries without TTL, as in the bench), `mem-timed` (the same, every call timed), `tiered` (L1 built
//! with `max_ttl = l1_ttl` and coarse expiry, as the config factory does) and `tiered-per-entry` (L1 built without
//! it, so moka keeps a per-entry expiry timer).
use keel_cache::{Bytes, Cache, Endpoint, MemoryCache, RedisCache, Secret, TieredCache, Ttl};
use std::time::Duration;

const KEYS: usize = 10_000;
const GETS: usize = 200_000;

/// The measured loop, boxed so that it stays a function of its own
/// (`l1_hit_profile::reads::{{closure}}`) whose inclusive cost is the reads alone.
fn reads<'a>(
    cache: &'a dyn Cache,
    keys: &'a [String],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
    Box::pin(async move {
        for i in 0..GETS {
            let k = &keys[(i.wrapping_mul(7919)) % keys.len()];
            std::hint::black_box(cache.get(k).await.unwrap());
        }
    })
}

/// The same loop on a raw `quick_cache::sync::Cache<String, Bytes>` (the memory core's
/// library without Keel around it).
#[inline(never)]
fn quick_reads(cache: &quick_cache::sync::Cache<String, Bytes>, keys: &[String]) {
    for i in 0..GETS {
        let k = &keys[(i.wrapping_mul(7919)) % keys.len()];
        std::hint::black_box(cache.get(k.as_str()));
    }
}

fn main() {
    // Usage: l1_hit_profile mem|mem-timed|quick|tiered|tiered-per-entry REDIS_URL
    let mode = std::env::args().nth(1).unwrap();
    if mode == "quick" {
        let keys: Vec<String> = (0..KEYS).map(|i| format!("key:{i}")).collect();
        let cache = quick_cache::sync::Cache::new(100_000);
        for k in &keys {
            cache.insert(k.clone(), Bytes::from(vec![b'v'; 64]));
        }
        quick_reads(&cache, &keys);
        return;
    }
    let url = std::env::args().nth(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let keys: Vec<String> = (0..KEYS).map(|i| format!("key:{i}")).collect();
        let l1_ttl = Duration::from_secs(600);
        let cache: Box<dyn Cache> = if mode == "mem" {
            Box::new(MemoryCache::builder("m").build())
        } else if mode == "mem-timed" {
            Box::new(MemoryCache::builder("m").time_one_in(1).build())
        } else {
            let l2 = RedisCache::builder("t", Endpoint::Url(Secret::new(url)))
                .items_refresh(None)
                .build()
                .unwrap();
            let l1 = match mode.as_str() {
                "tiered" => MemoryCache::builder("t:l1")
                    .max_ttl(l1_ttl)
                    .coarse_expiry(true)
                    .build(),
                _ => MemoryCache::builder("t:l1").build(),
            };
            let t = TieredCache::builder("t", l1, l2)
                .l1_ttl(l1_ttl)
                .build()
                .unwrap();
            t.connect().await.unwrap();
            while !t.is_subscribed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Box::new(t)
        };
        for k in &keys {
            cache
                .set(k, Bytes::from(vec![b'v'; 64]), Ttl::Never)
                .await
                .unwrap();
            cache.get(k).await.unwrap();
        }
        reads(cache.as_ref(), &keys).await;
    });
}
