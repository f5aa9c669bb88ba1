//! Instruction-count profile of a tiered L1 hit vs a memory-backend read (200 000 gets over
//! 1000 warm keys, one current-thread runtime). Deterministic under callgrind, unlike wall
//! time on a shared machine:
//!
//! ```text
//! cargo build --release -p keel-cache --example l1_hit_profile
//! valgrind --tool=callgrind target/release/examples/l1_hit_profile mem x
//! valgrind --tool=callgrind target/release/examples/l1_hit_profile tiered redis://127.0.0.1:6379
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep -E "Shared::get|TieredCache as"
//! ```
use keel_cache::{Bytes, Cache, Endpoint, MemoryCache, RedisCache, Secret, TieredCache, Ttl};
use std::time::Duration;
fn main() {
    // Usage: l1_hit_profile mem|tiered REDIS_URL
    let mode = std::env::args().nth(1).unwrap();
    let url = std::env::args().nth(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let keys: Vec<String> = (0..1000).map(|i| format!("key:{i}")).collect();
        let ttl = Ttl::After(Duration::from_secs(600));
        let cache: Box<dyn Cache> = if mode == "mem" {
            Box::new(MemoryCache::builder("m").build())
        } else {
            let l2 = RedisCache::builder("t", Endpoint::Url(Secret::new(url)))
                .items_refresh(None)
                .build()
                .unwrap();
            let t = TieredCache::builder("t", MemoryCache::builder("t:l1").build(), l2)
                .build()
                .unwrap();
            t.connect().await.unwrap();
            while !t.is_subscribed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Box::new(t)
        };
        for k in &keys {
            cache.set(k, Bytes::from_static(b"v"), ttl).await.unwrap();
            cache.get(k).await.unwrap();
        }
        for i in 0..200_000 {
            std::hint::black_box(cache.get(&keys[i % 1000]).await.unwrap());
        }
    });
}
