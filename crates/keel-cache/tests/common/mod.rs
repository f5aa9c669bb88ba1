//! Helpers shared by the loader tests (`load.rs`, `load_refresh.rs`).

use std::time::Duration;

use keel_cache::{Cache, Endpoint, MemoryCache, RedisCache, Secret, TieredCache};
use keel_testkit::redis::RedisServer;

/// A connected Redis cache called `name` on `server` (no item counting).
pub async fn redis_cache(server: &RedisServer, name: &str) -> RedisCache {
    let cache = RedisCache::builder(name, Endpoint::Url(Secret::new(server.url())))
        .items_refresh(None)
        .build()
        .unwrap();
    cache.connect().await.unwrap();
    cache
}

/// A connected tiered node (`load` over `server`, L1 entries at most 60 s).
pub async fn tiered_node(server: &RedisServer) -> TieredCache {
    let l2 = RedisCache::builder("load", Endpoint::Url(Secret::new(server.url())))
        .items_refresh(None)
        .build()
        .unwrap();
    let l1 = MemoryCache::builder("load:l1")
        .max_ttl(Duration::from_secs(60))
        .build();
    let cache = TieredCache::builder("load", l1, l2).build().unwrap();
    cache.connect().await.unwrap();
    cache
}
