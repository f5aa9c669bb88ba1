//! One config-driven async cache API for Keel services.
//!
//! Pick the backend in config — the in-process [`memory`] backend in development, Redis in
//! production — and program against [`Cache`] (`Arc<dyn Cache>`) either way. Every backend
//! keeps the same contract (explicit TTLs, atomic counters and compare-and-set, typed errors,
//! `clear` limited to the cache's own keys), records the same Prometheus metrics through
//! [`keel_metrics`], and can be kept in a [`Manager`] by name.
//!
//! # Layout
//! - `contract`: the [`Cache`] trait, [`CacheExt`] (typed helpers), [`Limits`]; `ttl`:
//!   [`Ttl`], [`KeyTtl`]; `error`: [`Error`].
//! - `config` ([`CacheConfig`], the serde edge), `factory` ([`open`]: config to a connected
//!   cache), `manager` ([`Manager`]: caches by name).
//! - [`memory`]: the in-process backend (`builder`, `core` on quick_cache, `expiry`).
//! - [`redis`] (feature `redis`): `endpoint`, `tls`, `connect` (standalone, Cluster,
//!   Sentinel), `connection` (the raw handle keel-coord runs its scripts on), `errors`,
//!   `ops`, `scripts`, `scan`, `tracking`.
//! - [`tiered`] (feature `redis`): L1 memory over L2 Redis; `invalidation` (client tracking
//!   or pub/sub), `generations`, `stale` (stale-if-error), `metrics`.
//! - [`load`]: `get_or_load` with single flight (in process, and across processes through a
//!   [`load::LoadLock`] such as keel-coord's `Locker`), negative caching,
//!   stale-while-revalidate (`load/refresh`); `jitter`: [`Jitter`].
//! - [`metrics`]: the cache metric families with the seed's names.
//!
//! ```
//! use std::time::Duration;
//! use keel_cache::{CacheConfig, CacheExt, Ttl};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_cache::Error> {
//! let config = CacheConfig::from_toml(r#"
//!     type = "memory"
//!     name = "sessions"
//!     [config]
//!     defaultTTL = "5m"
//! "#)?;
//! let cache = keel_cache::open(&config).await?;
//!
//! cache.set("user:123:session", "abc".into(), Ttl::After(Duration::from_secs(30))).await?;
//! assert_eq!(cache.get("user:123:session").await?.as_deref(), Some(&b"abc"[..]));
//! assert_eq!(cache.incr_by("logins", 1).await?, 1);
//! cache.set_json("user:123", &vec![1, 2, 3], Ttl::Default).await?;
//! assert_eq!(cache.get_json::<Vec<u32>>("user:123").await?, Some(vec![1, 2, 3]));
//! cache.close().await?;
//! assert!(matches!(cache.get("x").await, Err(keel_cache::Error::Closed { .. })));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod contract;
mod error;
mod factory;
mod jitter;
pub mod load;
mod manager;
pub mod memory;
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod tiered;
mod ttl;

pub use bytes::Bytes;
pub use config::{CacheConfig, CacheOptions, Invalidation, Secret, parse_duration};
pub use contract::{Cache, CacheExt, CacheFuture, CacheKind, Limits, parse_counter};
pub use error::Error;
#[cfg(feature = "redis")]
pub use factory::redis_from_config;
pub use factory::{CACHE_TYPES, open, open_with_metrics};
pub use jitter::Jitter;
pub use manager::Manager;
pub use memory::{Capacity, MemoryCache, MemoryCacheBuilder};
#[cfg(feature = "redis")]
pub use redis::{Endpoint, RedisCache, RedisCacheBuilder, TlsOptions};
#[cfg(feature = "redis")]
pub use tiered::{TieredCache, TieredCacheBuilder};
pub use ttl::{KeyTtl, MAX_TTL, Ttl};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
