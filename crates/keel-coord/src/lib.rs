//! Coordination for Keel services running on several nodes: distributed locks with fencing
//! tokens, leader election, leased semaphores and GCRA rate limits, over a small store trait with two stores —
//! [`MemoryStore`] (one process) and [`RedisStore`] (Redis standalone, Sentinel or Cluster,
//! on keel-cache's connection layer).
//!
//! Every lock and permit is leased: it has a TTL on the store, a **local deadline** (the send
//! time of the acquire or last renewal plus the TTL, on the local monotonic clock) before
//! which it cannot have expired on the store, a `lost()` token fired at that deadline unless
//! renewed, an optional watchdog renewing it every TTL/3, and a **fencing token** that
//! strictly increases per name. A release wakes the waiters at once (Redis pub/sub; a
//! `Notify` in memory); waiters also poll with a capped interval.
//!
//! # Layout
//! - `store/`: the traits ([`store::LockStore`], [`store::SemaphoreStore`], the
//!   [`store::RateStore`], [`store::Wakeups`]) in `mod.rs`; `memory.rs`: [`MemoryStore`]; `redis/`: [`RedisStore`],
//!   its Lua scripts and its pub/sub subscriber;
//! - [`lock`]: [`Locker`], [`LockGuard`] (watchdog, deadline, `lost()`, fencing);
//! - [`election`]: [`Election`] with client-go's timing rules;
//! - [`semaphore`]: [`Semaphore`], leased permits (a [`Permit`] is a [`LockGuard`]);
//! - [`rate`]: [`RateLimiter`], GCRA rate limits ([`Limit`] = [`Rate`] + burst) with an
//!   explicit [`FailurePolicy`]; the stores' [`store::RateStore`] step is in
//!   `store/gcra.rs` (memory) and `store/redis/rate.rs` + the `GCRA` script (Redis);
//! - `lease.rs`: the guard shared by locks and permits, and the waiting loop;
//! - `metrics.rs`: the `lock_*` and `semaphore_*` metric families (`rate_limit_decisions` is
//!   in [`rate`]);
//! - `error.rs`: [`Error`].
//!
//! ```
//! use std::time::Duration;
//! use keel_coord::{Locker, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_coord::Error> {
//! let locker = Locker::new(MemoryStore::new());
//! let guard = locker.lock("nightly-report", Duration::from_secs(10), Duration::from_secs(5)).await?;
//! assert!(locker.try_lock("nightly-report", Duration::from_secs(10)).await?.is_none());
//! println!("fencing token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod election;
mod error;
mod lease;
pub mod lock;
mod metrics;
pub mod rate;
pub mod semaphore;
pub mod store;

pub use election::{Election, ElectionBuilder, Leadership};
pub use error::Error;
pub use lock::{LockGuard, LockOptions, Locker};
pub use rate::{Decision, FailurePolicy, Limit, Rate, RateLimiter};
pub use semaphore::{Permit, Semaphore};
pub use store::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use store::redis::{RedisStore, RedisStoreBuilder};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
