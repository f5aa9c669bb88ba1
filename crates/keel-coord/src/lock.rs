//! Distributed locks with fencing tokens.
//!
//! A lock is a key holding a random 128-bit owner token, set with `SET NX PX`; releasing and
//! extending are Lua scripts that check the token in the same atomic step, so only the owner
//! can release or extend. Every acquisition also increments a per-name counter in that same
//! step and returns it as the **fencing token**: strictly increasing across all holders, so a
//! storage system that remembers the highest token it has seen can reject writes from a
//! holder whose lock has expired in the meantime (its token is older).
//!
//! A [`LockGuard`] knows its **local deadline**: the time the acquire (or last successful
//! extend) was *sent* plus the TTL, measured on the local monotonic clock. Because the server
//! starts the TTL later than that, the lock cannot have expired on the server before the local
//! deadline. [`LockGuard::lost`] is cancelled when that deadline passes without a successful
//! renewal, or when a renewal finds the lock owned by someone else. With the watchdog on, the
//! guard renews itself every TTL/3.
//!
//! Release on drop is best effort: dropping a guard inside a tokio runtime spawns the release;
//! otherwise the lock simply expires after its TTL. Call [`LockGuard::release`] to know.
//!
//! Waiting is prompt: a release wakes the waiters (Redis pub/sub on the store's channel; a
//! `Notify` in memory), and they retry at once. They also poll, from 10 ms doubling up to
//! the poll cap (default 100 ms, [`Locker::poll_cap`]), so a lost wake-up (a dropped pub/sub
//! connection, a holder whose lock simply expired) costs at most the cap.
//!
//! ```
//! use std::time::Duration;
//! use keel_coord::{Locker, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_coord::Error> {
//! let locker = Locker::new(MemoryStore::new());
//! let guard = locker.lock("nightly-report", Duration::from_secs(10), Duration::from_secs(5)).await?;
//! let token = guard.fencing_token(); // pass this to the storage you write to
//! assert!(locker.try_lock("nightly-report", Duration::from_secs(10)).await?.is_none());
//! guard.release().await?;
//! # let _ = token;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{check_name, name_for_error, round_up_to_millis};
pub use crate::lease::LockGuard;
use crate::lease::{LockLease, Waiting, grant, wait_deadline};
use crate::metrics::{LeaseMetrics, LockLabels};
use crate::store::LockStore;
use crate::{Error, Result};
use keel_cache::load::{LoadLock, LoadLockGuard};
use keel_cache::{CacheFuture, MAX_TTL};
use keel_metrics::MetricsService;

/// A 128-bit random owner token from the operating system's CSPRNG, as 32 hex digits.
///
/// # Errors
/// A [`keel_cache::Error::Backend`] if the OS has no randomness to give (practically never).
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::Store(keel_cache::Error::Backend {
            cache: "coord".into(),
            operation: "token",
            message: format!("no randomness: {e}"),
        })
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hands out locks from one [`LockStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Locker {
    store: Arc<dyn LockStore>,
    metrics: LeaseMetrics<LockLabels>,
    poll_cap: Duration,
    wake_on_release: bool,
}

/// The default [`Locker::poll_cap`].
pub const DEFAULT_POLL_CAP: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locker").finish_non_exhaustive()
    }
}

/// The shortest TTL a lock accepts: renewal and the local deadline need some room.
pub const MIN_LOCK_TTL: Duration = Duration::from_millis(10);

pub(crate) fn check_lock(name: &str, ttl: Duration) -> Result<()> {
    check_name(name)?;
    if ttl < MIN_LOCK_TTL || ttl > MAX_TTL {
        return Err(Error::InvalidTtl {
            name: name_for_error(name),
            ttl,
            reason: "TTLs must be between 10 ms and 100 years",
        });
    }
    Ok(())
}

impl Locker {
    /// A locker on `store`, recording into [`MetricsService::global`].
    pub fn new(store: impl LockStore) -> Self {
        Self::with_metrics(store, MetricsService::global())
    }

    /// A locker on `store`, recording into `metrics`. A registry whose `lock_*` names are taken
    /// by other metric types records nowhere instead of failing.
    pub fn with_metrics(store: impl LockStore, metrics: &MetricsService) -> Self {
        let metrics = LeaseMetrics::register(metrics, "lock");
        Self {
            store: Arc::new(store),
            metrics,
            poll_cap: DEFAULT_POLL_CAP,
            wake_on_release: true,
        }
    }

    /// The longest a waiter sleeps between attempts when no wake-up comes (default
    /// [`DEFAULT_POLL_CAP`]): the most a lost wake-up, or a lock that expired instead of being
    /// released, delays a waiter. Waiters start at 10 ms and double up to this, with jitter.
    #[must_use]
    pub fn poll_cap(mut self, cap: Duration) -> Self {
        self.poll_cap = cap.max(Duration::from_millis(1));
        self
    }

    /// Whether waiters are woken by releases (default true). Off, they only poll: that is
    /// how locks waited before wake-ups existed, kept for comparison (the hand-off bench).
    #[must_use]
    pub fn wake_on_release(mut self, on: bool) -> Self {
        self.wake_on_release = on;
        self
    }

    /// The store, for advanced callers (election).
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// One attempt: the lock, or `None` if someone holds it. No watchdog; see
    /// [`LockOptions`] and [`try_lock_with`](Self::try_lock_with).
    ///
    /// # Errors
    /// [`Error::InvalidName`] / [`Error::InvalidTtl`] for bad input, store errors.
    pub async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.try_lock_with(name, ttl, LockOptions::default()).await
    }

    /// One attempt with options.
    ///
    /// # Errors
    /// As [`try_lock`](Self::try_lock).
    pub async fn try_lock_with(
        &self,
        name: &str,
        ttl: Duration,
        options: LockOptions,
    ) -> Result<Option<LockGuard>> {
        self.attempt(name, ttl, &options, Instant::now(), None)
            .await
    }

    /// Waits up to `wait` for the lock: retried at once when a release wakes this waiter, and
    /// otherwise with jittered exponential backoff from 10 ms up to the poll cap. Attempts
    /// that time out, find the store unavailable or lose their reply (their token is then
    /// released in the background) are retried the same way until `wait` runs out. Each
    /// attempt is cut at the end of the wait (given at least 100 ms), so a frozen store does
    /// not keep the caller past `wait` for a whole response timeout. `Duration::MAX` waits
    /// for ever.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] when `wait` passes (or the last store error — timeout,
    /// unavailable, outcome unknown — if the store was still failing then; an attempt cut at
    /// the end of the wait is a [`keel_cache::Error::Timeout`]), plus the other errors of
    /// `try_lock`.
    pub async fn lock(&self, name: &str, ttl: Duration, wait: Duration) -> Result<LockGuard> {
        self.lock_with(name, ttl, wait, LockOptions::default())
            .await
    }

    /// [`lock`](Self::lock) with options.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    pub async fn lock_with(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
        options: LockOptions,
    ) -> Result<LockGuard> {
        let asked = Instant::now();
        let deadline = wait_deadline(asked, wait);
        let waiting = Waiting {
            poll_cap: self.poll_cap,
            wake: self.wake_on_release,
        };
        let got = waiting
            .run(self.store.wakeups(), name, deadline, || {
                self.attempt(name, ttl, &options, asked, Some(deadline))
            })
            .await?;
        got.ok_or_else(|| Error::LockTimeout {
            lock: name_for_error(name),
            waited: wait,
        })
    }

    async fn attempt(
        &self,
        name: &str,
        ttl: Duration,
        options: &LockOptions,
        asked: Instant,
        deadline: Option<Instant>,
    ) -> Result<Option<LockGuard>> {
        check_lock(name, ttl)?;
        let ttl = round_up_to_millis(ttl);
        let token = options.new_token()?;
        let labels = LockLabels {
            lock: options.label_for(name),
        };
        let call = self.store.acquire(name, &token, ttl);
        grant(
            Arc::new(LockLease(self.store.clone())),
            &self.metrics,
            labels,
            (name, &token, ttl),
            options,
            (asked, deadline),
            "lock",
            call,
        )
        .await
    }
}

/// Per-acquisition options: start from `LockOptions::default()` or
/// [`LockOptions::watchdog`] and chain the setters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LockOptions {
    /// Renew the lock every TTL/3 until it is released, retrying a failed renewal after
    /// TTL/10 (default off).
    pub watchdog: bool,
    /// Put this in front of the random token (e.g. an identity, for `holder()` readers).
    pub token_prefix: Option<String>,
    /// The `lock` (or `semaphore`) label of this acquisition's metrics (default: the name).
    /// Set it when names are unbounded (one per key, per client IP), so the number of series
    /// stays bounded; `get_or_load`'s load locks use `load`.
    pub metrics_label: Option<String>,
}

impl LockOptions {
    /// With the watchdog on.
    pub fn watchdog() -> Self {
        Self {
            watchdog: true,
            ..Self::default()
        }
    }

    /// A fresh random token, behind `token_prefix` if there is one.
    pub(crate) fn new_token(&self) -> Result<String> {
        let token = new_token()?;
        Ok(match &self.token_prefix {
            Some(prefix) => format!("{prefix}{token}"),
            None => token,
        })
    }

    /// The metrics label of an acquisition of `name`: `metrics_label`, else the name.
    pub(crate) fn label_for(&self, name: &str) -> String {
        self.metrics_label
            .clone()
            .unwrap_or_else(|| name.to_owned())
    }

    /// Records this acquisition's metrics under `label` instead of the name. Sets the
    /// `metrics_label` field.
    #[must_use]
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// Puts `prefix` in front of the random token. Sets the `token_prefix` field.
    #[must_use]
    pub fn token_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.token_prefix = Some(prefix.into());
        self
    }
}

/// The load lock of keel-cache's `get_or_load` (cross-process single flight): a watchdog lock
/// named as `LoadOptions` says, released after the load.
impl LoadLock for Locker {
    fn lock<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: Duration,
    ) -> CacheFuture<'a, keel_cache::Result<Box<dyn LoadLockGuard>>> {
        CacheFuture::boxed(async move {
            match self
                .lock_with(
                    name,
                    ttl,
                    wait,
                    // One series for all load locks: their names are per key.
                    LockOptions::watchdog().metrics_label("load"),
                )
                .await
            {
                Ok(guard) => Ok(Box::new(guard) as Box<dyn LoadLockGuard>),
                Err(Error::Store(e)) => Err(e),
                Err(Error::LockTimeout { waited, .. }) => Err(keel_cache::Error::Timeout {
                    cache: name_for_error(name),
                    operation: "load lock",
                    after: waited,
                }),
                Err(e) => Err(keel_cache::Error::InvalidConfig {
                    field: "lock".into(),
                    reason: e.to_string(),
                }),
            }
        })
    }
}

impl LoadLockGuard for LockGuard {
    fn release(self: Box<Self>) -> CacheFuture<'static, ()> {
        CacheFuture::boxed(async move {
            let _ = LockGuard::release(*self).await;
        })
    }
}
