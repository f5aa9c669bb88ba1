//! `get_or_load`: read-through caching with single flight, for any [`Cache`].
//!
//! Concurrent misses for one key in one process call the loader **once**; everyone else waits
//! for that result (an error reaches every waiter and is not cached). Optionally:
//! - **cross-process single flight**: the loader runs under a Keel lock, and the cache is
//!   read again after the lock is taken, so a value loaded by another node is reused;
//! - **negative caching**: a loader answer of "none" is remembered for a while;
//! - **early refresh**: a hit whose remaining TTL is below a threshold is reloaded by one
//!   caller (inline, others keep getting the cached value), so hot keys do not all expire at
//!   once;
//! - **stale-while-revalidate** ([`LoadOptions::stale_while_revalidate`]): past a refresh
//!   age the cached value is returned at once and one refresh per key runs — in the
//!   background with [`Loader::get_or_revalidate`]; a failed refresh keeps the old value
//!   (until its TTL ends), is counted and retried with backoff; a refresh that finds nothing
//!   removes the key (see `refresh`);
//! - **TTL jitter** ([`LoadOptions::ttl_jitter`]): loaded values are written with a randomly
//!   shortened TTL, so a fleet that fills at once does not expire at once.
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

mod refresh;

pub use self::refresh::{MAX_REFRESH_BACKOFF, MAX_REFRESH_KEYS};
use crate::contract::Cache;
use crate::contract::CacheFuture;
use crate::jitter::Jitter;
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
    /// Stale-while-revalidate: a hit older than this (age read as `ttl - remaining TTL`, so
    /// only with `ttl: Ttl::After`) is returned at once while one refresh of the key runs
    /// (default: off). The rest of the TTL is the stale window: a value is never served past
    /// its TTL as the cache reports it. Over a [`TieredCache`](crate::TieredCache) with
    /// stale-if-error, the cache's `get` itself may return the L1 copy up to that window past
    /// the Redis TTL while Redis fails, and the loader serves it as a hit.
    pub stale_while_revalidate: Option<Duration>,
    /// The wait after a failed stale-while-revalidate refresh before the next attempt,
    /// doubled after each further failure up to [`MAX_REFRESH_BACKOFF`] (default
    /// [`DEFAULT_REFRESH_BACKOFF`]). Must be above zero with stale-while-revalidate
    /// ([`Error::InvalidConfig`] otherwise).
    pub refresh_backoff: Duration,
    /// Shorten the TTL of each loaded value (and negative entry) by a random fraction of
    /// itself, below this jitter (default: none). Applies to `Ttl::After` only.
    /// With stale-while-revalidate, keep `ttl × jitter` below the refresh age: the age is
    /// read from the remaining TTL, so a value written up to that much shorter looks that
    /// much older.
    pub ttl_jitter: Option<Jitter>,
}

/// The default [`LoadOptions::refresh_backoff`].
pub const DEFAULT_REFRESH_BACKOFF: Duration = Duration::from_secs(1);

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
            stale_while_revalidate: None,
            refresh_backoff: DEFAULT_REFRESH_BACKOFF,
            ttl_jitter: None,
        }
    }

    /// Stale-while-revalidate past `refresh_after` (default: off; needs `ttl: Ttl::After`
    /// longer than `refresh_after`): see [`Loader::get_or_revalidate`]. Sets the
    /// `stale_while_revalidate` field.
    #[must_use]
    pub fn stale_while_revalidate(mut self, refresh_after: Duration) -> Self {
        self.stale_while_revalidate = Some(refresh_after);
        self
    }

    /// The first wait after a failed refresh (default [`DEFAULT_REFRESH_BACKOFF`]). Sets the
    /// `refresh_backoff` field.
    #[must_use]
    pub fn refresh_backoff(mut self, backoff: Duration) -> Self {
        self.refresh_backoff = backoff;
        self
    }

    /// Writes loaded values with a TTL shortened by a random fraction below `jitter`
    /// (default: none). Sets the `ttl_jitter` field.
    #[must_use]
    pub fn ttl_jitter(mut self, jitter: Jitter) -> Self {
        self.ttl_jitter = Some(jitter);
        self
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
    refreshes: Arc<refresh::Refreshes>,
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

/// A flight's result as its waiters get it.
fn shared(outcome: &Result<Option<Bytes>>) -> std::result::Result<Option<Bytes>, Arc<str>> {
    match outcome {
        Ok(v) => Ok(v.clone()),
        Err(Error::Load { message, .. }) => Err(Arc::from(message.as_str())),
        Err(e) => Err(Arc::from(e.to_string())),
    }
}

/// Waits for the flight behind `rx`: its result, or `None` if its leader was cancelled.
async fn wait_flight(key: &str, mut rx: watch::Receiver<Outcome>) -> Option<Result<Option<Bytes>>> {
    let outcome = rx.wait_for(Option::is_some).await.ok()?.clone()?;
    Some(outcome.map_err(|message| Error::Load {
        key: crate::error::key_for_error(key),
        message: message.to_string(),
    }))
}

/// Rejects options that cannot work: a zero refresh backoff under stale-while-revalidate
/// (it would never back off).
fn check(options: &LoadOptions) -> Result<()> {
    if options.stale_while_revalidate.is_some() && options.refresh_backoff.is_zero() {
        return Err(Error::InvalidConfig {
            field: "refresh_backoff".into(),
            reason: "must be above zero with stale_while_revalidate (a failed refresh would be retried on every hit)".into(),
        });
    }
    Ok(())
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
            refreshes: Arc::new(refresh::Refreshes::new(metrics, &labels)),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    /// The cached value of `key`, or `loader`'s answer (stored with `options.ttl`). `None`
    /// means the loader found nothing.
    ///
    /// With [`LoadOptions::stale_while_revalidate`], a hit past its refresh age is returned
    /// at once to every caller but one per key, who refreshes inline and gets the new value
    /// (`None` if the loader now finds nothing: the key is deleted, or negatively cached), or,
    /// if the refresh fails, the old one as long as its TTL (read before the refresh) has not
    /// ended — after that, the load error. [`get_or_revalidate`](Loader::get_or_revalidate)
    /// runs that refresh in the background instead, so no caller waits.
    ///
    /// # Errors
    /// [`Error::Load`] when the loader (this caller's or the one it waited for) failed;
    /// [`Error::InvalidConfig`] for stale-while-revalidate with a zero
    /// [`LoadOptions::refresh_backoff`]; cache errors.
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
        check(options)?;
        let mut loader = Some(loader);
        loop {
            let refresh = match self.cache.get(key).await? {
                Some(v) if v == NEGATIVE_MARKER => return Ok(None),
                Some(v) if options.stale_while_revalidate.is_some() => {
                    return self
                        .serve_or_refresh_inline(key, options, v, loader.take())
                        .await;
                }
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
                Role::Waiter(rx) => {
                    if let Some(stale) = refresh {
                        // Someone is already refreshing: the cached value is still valid.
                        return Ok(Some(stale));
                    }
                    self.waits.inc();
                    match wait_flight(key, rx).await {
                        Some(answer) => return answer,
                        // The leader was cancelled before finishing: try again.
                        None => continue,
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
                    let _ = tx.send(Some(shared(&outcome)));
                    return outcome;
                }
            }
        }
    }

    async fn due_for_refresh(&self, key: &str, options: &LoadOptions) -> bool {
        if options.refresh_ahead.is_none() && options.stale_while_revalidate.is_none() {
            return false;
        }
        let Ok(remaining) = self.cache.ttl(key).await else {
            return false;
        };
        refresh::past_refresh_age(options, remaining)
            || matches!((options.refresh_ahead, remaining),
                (Some(ahead), KeyTtl::Expires(left)) if left < ahead)
    }

    /// `ttl` with the options' jitter applied (counted when it applies).
    fn jittered(&self, ttl: Ttl, options: &LoadOptions) -> Ttl {
        match (options.ttl_jitter, ttl) {
            (Some(jitter), Ttl::After(d)) => {
                self.refreshes.jittered.inc();
                Ttl::After(jitter.apply(d))
            }
            _ => ttl,
        }
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
            Some(v) => {
                let ttl = self.jittered(options.ttl, options);
                self.cache.set(key, v.clone(), ttl).await?;
            }
            None => {
                if let Some(neg) = options.negative_ttl {
                    let ttl = self.jittered(Ttl::After(neg), options);
                    self.cache
                        .set(key, Bytes::from_static(NEGATIVE_MARKER), ttl)
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
