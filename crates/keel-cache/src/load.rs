//! `get_or_load`: read-through caching with single flight, for any [`Cache`].
//!
//! Concurrent misses for one key in one process call the loader **once**; everyone else waits
//! for that result (an error reaches every waiter and is not cached). Optionally:
//! - **cross-process single flight**: the loader runs under a Keel lock, and the cache is
//!   read again after the lock is taken, so a value loaded by another node is reused;
//! - **negative caching**: a loader answer of "none" is remembered for a while;
//! - **early refresh**: a hit whose remaining TTL is below a threshold is reloaded by one
//!   caller (inline, others keep getting the cached value), so hot keys do not all expire at
//!   once.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keel_cache::{Cache, MemoryCache, Ttl, load::{LoadOptions, Loader}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_cache::Error> {
//! let loader = Loader::new(Arc::new(MemoryCache::builder("users").build()));
//! let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)));
//! let user = loader
//!     .get_or_load("user:1", &options, || async { Ok::<_, std::io::Error>(Some("Ada".into())) })
//!     .await?;
//! assert_eq!(user.as_deref(), Some(&b"Ada"[..]));
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::MetricsService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use crate::contract::Cache;
use crate::contract::CacheFuture;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

/// The value stored for a negatively cached key. Reserved: a real value equal to it would be
/// read as "none".
pub const NEGATIVE_MARKER: &[u8] = b"\0keel:negative\0";

/// How [`Loader::get_or_load`] caches. Start from [`LoadOptions::new`] and chain the
/// setters (or assign the public fields): new settings may be added, so the struct cannot be
/// built as a literal outside this crate.
///
/// ```
/// use std::time::Duration;
/// use keel_cache::Ttl;
/// use keel_cache::load::LoadOptions;
///
/// let options = LoadOptions::new(Ttl::After(Duration::from_secs(300)))
///     .negative_ttl(Duration::from_secs(10))
///     .refresh_ahead(Duration::from_secs(30))
///     .lock_ttl(Duration::from_secs(60));
/// assert_eq!(options.negative_ttl, Some(Duration::from_secs(10)));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoadOptions {
    /// TTL of loaded values.
    pub ttl: Ttl,
    /// Remember "none" answers this long (default: not at all).
    pub negative_ttl: Option<Duration>,
    /// Reload a hit whose remaining TTL is below this (default: never).
    pub refresh_ahead: Option<Duration>,
    /// Run the loader under a lock from this provider (cross-process single flight),
    /// waiting at most this long for the lock. The lock is named `load:` plus a 128-bit hash
    /// of the key, so any key works (hash tags and braces included).
    pub lock: Option<(Arc<dyn LoadLock>, Duration)>,
    /// TTL of that lock (default [`DEFAULT_LOAD_LOCK_TTL`]). A watchdog renews it every
    /// third of this while the loader runs, so a slow loader keeps it; if the process dies,
    /// the lock is free again after at most this long.
    pub lock_ttl: Duration,
}

/// Where [`LoadOptions::lock`] takes its locks: implemented by keel-coord's `Locker`, so this
/// crate needs no lock code of its own.
pub trait LoadLock: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the lock `name` for `ttl`, renewed (watchdog) until the guard is released,
    /// waiting at most `wait` for it.
    ///
    /// # Errors
    /// The store's errors, mapped to this crate's [`Error`]; a wait that ran out is an
    /// [`Error::Timeout`] with operation `"load lock"`.
    fn lock<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: Duration,
    ) -> CacheFuture<'a, Result<Box<dyn LoadLockGuard>>>;
}

/// A held load lock.
pub trait LoadLockGuard: Send {
    /// Releases the lock (owner-checked, best effort: on failure it expires after its TTL).
    fn release(self: Box<Self>) -> CacheFuture<'static, ()>;
}

/// The default [`LoadOptions::lock_ttl`].
pub const DEFAULT_LOAD_LOCK_TTL: Duration = Duration::from_secs(30);

/// The lock name for loading `key`: `load:` and the key's FNV-1a 128-bit hash in hex. Lock
/// names may not hold braces (they become a Cluster hash tag), keys may; a fixed hash is the
/// same in every process and every build, so every node picks the same lock. Two keys sharing
/// a hash would only share a lock (their loads would take turns), never a value.
pub fn load_lock_name(key: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for &b in key.as_bytes() {
        h = (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    format!("load:{h:032x}")
}

impl LoadOptions {
    /// Loaded values live for `ttl`; no negative caching, no early refresh, no lock.
    pub fn new(ttl: Ttl) -> Self {
        Self {
            ttl,
            negative_ttl: None,
            refresh_ahead: None,
            lock: None,
            lock_ttl: DEFAULT_LOAD_LOCK_TTL,
        }
    }

    /// Remembers "none" answers for `ttl` (default: not at all). Sets the
    /// `negative_ttl` field.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Reloads a hit whose remaining TTL is below `margin` (default: never); one caller
    /// reloads while the others keep the cached value. Sets the
    /// `refresh_ahead` field.
    #[must_use]
    pub fn refresh_ahead(mut self, margin: Duration) -> Self {
        self.refresh_ahead = Some(margin);
        self
    }

    /// Runs the loader under a lock of `locks` (keel-coord's `Locker` is one), waiting at
    /// most `wait` for it (cross-process single flight; default: no lock). Sets the `lock`
    /// field.
    #[must_use]
    pub fn lock(mut self, locks: impl LoadLock, wait: Duration) -> Self {
        self.lock = Some((Arc::new(locks), wait));
        self
    }

    /// The TTL of that lock (default [`DEFAULT_LOAD_LOCK_TTL`]; a watchdog renews it while the
    /// loader runs). Sets the `lock_ttl` field.
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }
}

type Outcome = Option<std::result::Result<Option<Bytes>, Arc<str>>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct LoaderLabels {
    cache: String,
}

/// Read-through loading with single flight over one cache. Cheap to clone.
#[derive(Clone)]
pub struct Loader {
    cache: Arc<dyn Cache>,
    flights: Arc<Mutex<HashMap<String, watch::Receiver<Outcome>>>>,
    calls: Counter,
    waits: Counter,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("cache", &self.cache.name())
            .finish_non_exhaustive()
    }
}

/// Removes a flight from the map however its leader ends (including being cancelled).
struct FlightGuard<'a> {
    flights: &'a Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    key: &'a str,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.key);
    }
}

enum Role {
    Leader(watch::Sender<Outcome>),
    Waiter(watch::Receiver<Outcome>),
}

impl Loader {
    /// A loader over `cache`, recording into [`MetricsService::global`].
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self::with_metrics(cache, MetricsService::global())
    }

    /// A loader over `cache`, recording `<ns>_cache_loader_calls_total` and
    /// `<ns>_cache_loader_waits_total` (label `cache`) into `metrics`.
    pub fn with_metrics(cache: Arc<dyn Cache>, metrics: &MetricsService) -> Self {
        let labels = LoaderLabels {
            cache: cache.name().to_owned(),
        };
        let calls: Family<LoaderLabels, Counter> = metrics
            .get_or_register("cache_loader_calls", "Loader invocations", Family::default)
            .unwrap_or_default();
        let waits: Family<LoaderLabels, Counter> = metrics
            .get_or_register(
                "cache_loader_waits",
                "Callers that waited for another caller's load",
                Family::default,
            )
            .unwrap_or_default();
        Self {
            cache,
            flights: Arc::default(),
            calls: calls.get_or_create_owned(&labels),
            waits: waits.get_or_create_owned(&labels),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    /// The cached value of `key`, or `loader`'s answer (stored with `options.ttl`). `None`
    /// means the loader found nothing.
    ///
    /// # Errors
    /// [`Error::Load`] when the loader (this caller's or the one it waited for) failed;
    /// cache errors.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        loader: F,
    ) -> Result<Option<Bytes>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>>,
        E: Display,
    {
        let mut loader = Some(loader);
        loop {
            let refresh = match self.cache.get(key).await? {
                Some(v) if v == NEGATIVE_MARKER => return Ok(None),
                Some(v) => {
                    if !self.due_for_refresh(key, options).await {
                        return Ok(Some(v));
                    }
                    Some(v)
                }
                None => None,
            };
            let role = {
                let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
                match flights.get(key) {
                    Some(rx) => Role::Waiter(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(key.to_owned(), rx);
                        Role::Leader(tx)
                    }
                }
            };
            match role {
                Role::Waiter(mut rx) => {
                    if let Some(stale) = refresh {
                        // Someone is already refreshing: the cached value is still valid.
                        return Ok(Some(stale));
                    }
                    self.waits.inc();
                    match rx.wait_for(Option::is_some).await {
                        Ok(outcome) => {
                            return match outcome.clone() {
                                Some(Ok(v)) => Ok(v),
                                Some(Err(message)) => Err(Error::Load {
                                    key: crate::error::key_for_error(key),
                                    message: message.to_string(),
                                }),
                                None => continue,
                            };
                        }
                        // The leader was cancelled before finishing: try again.
                        Err(_) => continue,
                    }
                }
                Role::Leader(tx) => {
                    let _guard = FlightGuard {
                        flights: &self.flights,
                        key,
                    };
                    let Some(load) = loader.take() else {
                        // Unreachable: a caller leads at most once.
                        return Err(Error::Load {
                            key: crate::error::key_for_error(key),
                            message: "loader already used".into(),
                        });
                    };
                    let outcome = self.lead(key, options, load).await;
                    let shared = match &outcome {
                        Ok(v) => Ok(v.clone()),
                        Err(Error::Load { message, .. }) => Err(Arc::from(message.as_str())),
                        Err(e) => Err(Arc::from(e.to_string())),
                    };
                    let _ = tx.send(Some(shared));
                    return outcome;
                }
            }
        }
    }

    async fn due_for_refresh(&self, key: &str, options: &LoadOptions) -> bool {
        let Some(ahead) = options.refresh_ahead else {
            return false;
        };
        matches!(self.cache.ttl(key).await, Ok(KeyTtl::Expires(left)) if left < ahead)
    }

    async fn lead<F, Fut, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        load: F,
    ) -> Result<Option<Bytes>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>>,
        E: Display,
    {
        let lock_guard = match &options.lock {
            Some((locks, wait)) => {
                let guard = locks
                    .lock(&load_lock_name(key), options.lock_ttl, *wait)
                    .await?;
                // Another node may have loaded it while we waited for the lock.
                match self.cache.get(key).await? {
                    Some(v) if v == NEGATIVE_MARKER => return Ok(None),
                    Some(v) if !self.due_for_refresh(key, options).await => return Ok(Some(v)),
                    _ => {}
                }
                Some(guard)
            }
            None => None,
        };
        // A previous flight may have finished (stored its value and left the map) between
        // our cache miss and our becoming leader: look once more before loading.
        if lock_guard.is_none() {
            match self.cache.get(key).await? {
                Some(v) if v == NEGATIVE_MARKER => return Ok(None),
                Some(v) if !self.due_for_refresh(key, options).await => return Ok(Some(v)),
                _ => {}
            }
        }
        self.calls.inc();
        let loaded = load().await.map_err(|e| Error::Load {
            key: crate::error::key_for_error(key),
            message: e.to_string(),
        })?;
        match &loaded {
            Some(v) => self.cache.set(key, v.clone(), options.ttl).await?,
            None => {
                if let Some(neg) = options.negative_ttl {
                    self.cache
                        .set(key, Bytes::from_static(NEGATIVE_MARKER), Ttl::After(neg))
                        .await?;
                }
            }
        }
        if let Some(guard) = lock_guard {
            guard.release().await;
        }
        Ok(loaded)
    }
}
