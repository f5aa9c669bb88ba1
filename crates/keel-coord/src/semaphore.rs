//! Distributed semaphores with leased permits: at most `permits` holders of a name at once,
//! across every process sharing the store.
//!
//! A permit is a lease with the lock's guarantees — it is a [`LockGuard`]: a random 128-bit
//! owner token, a fencing token from a per-name counter bumped in the acquire step, a local
//! deadline (send time + TTL on the monotonic clock), `lost()` fired at that deadline unless
//! renewed, an optional watchdog renewing every TTL/3, `release()` and `abandon()`. A crashed
//! holder's permit returns when its TTL runs out. Each operation is one atomic step: one Lua
//! script on Redis (a sorted set of tokens scored by lease end on the **server's** clock,
//! `TIME`, so clients' clocks never matter; expired leases are dropped by the acquire that
//! finds them), one critical section in memory. A release wakes the waiters at once, as for
//! locks.
//!
//! The count is part of each call, not stored: every caller of one name must pass the same
//! `permits` (a caller passing more may go over the others' limit).
//!
//! Caveat (Redis): leases are judged by the server's wall clock; a server clock stepped
//! forward ends leases early. With Sentinel, a failover can lose the last acquire (as for
//! locks).
//!
//! ```
//! use std::time::Duration;
//! use keel_coord::{MemoryStore, Semaphore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_coord::Error> {
//! let sessions = Semaphore::new(MemoryStore::new());
//! let ttl = Duration::from_secs(30);
//! let a = sessions.acquire("smtp:example.org", 2, ttl, Duration::from_secs(1)).await?;
//! let b = sessions.acquire("smtp:example.org", 2, ttl, Duration::from_secs(1)).await?;
//! assert!(sessions.try_acquire("smtp:example.org", 2, ttl).await?.is_none());
//! assert_eq!(sessions.held("smtp:example.org").await?, 2);
//! a.release().await?;
//! # drop(b);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use keel_metrics::MetricsService;
use tokio::time::Instant;

use crate::error::{check_name, name_for_error, round_up_to_millis};
use crate::lease::{PermitLease, Waiting, grant, wait_deadline};
use crate::lock::{DEFAULT_POLL_CAP, LockGuard, LockOptions, check_lock};
use crate::metrics::{LeaseMetrics, SemaphoreLabels};
use crate::store::SemaphoreStore;
use crate::{Error, Result};

/// The largest permit count a semaphore accepts.
pub const MAX_PERMITS: u32 = 1_000_000;

/// A held permit: a [`LockGuard`] on one slot of the semaphore.
pub type Permit = LockGuard;

/// Hands out permits from one [`SemaphoreStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Semaphore {
    store: Arc<dyn SemaphoreStore>,
    metrics: LeaseMetrics<SemaphoreLabels>,
    poll_cap: Duration,
    wake_on_release: bool,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore").finish_non_exhaustive()
    }
}

fn check_permits(name: &str, permits: u32) -> Result<()> {
    check_name(name)?;
    if permits == 0 || permits > MAX_PERMITS {
        return Err(Error::InvalidPermits {
            name: name_for_error(name),
            permits,
            reason: "the permit count must be between 1 and 1000000",
        });
    }
    Ok(())
}

impl Semaphore {
    /// Semaphores on `store`, recording into [`MetricsService::global`].
    pub fn new(store: impl SemaphoreStore) -> Self {
        Self::with_metrics(store, MetricsService::global())
    }

    /// Semaphores on `store`, recording `<ns>_semaphore_*` (label `semaphore`) into
    /// `metrics`.
    pub fn with_metrics(store: impl SemaphoreStore, metrics: &MetricsService) -> Self {
        Self {
            store: Arc::new(store),
            metrics: LeaseMetrics::register(metrics, "semaphore"),
            poll_cap: DEFAULT_POLL_CAP,
            wake_on_release: true,
        }
    }

    /// The longest a waiter sleeps between attempts when no wake-up comes (default
    /// [`DEFAULT_POLL_CAP`]); see [`Locker::poll_cap`](crate::Locker::poll_cap).
    #[must_use]
    pub fn poll_cap(mut self, cap: Duration) -> Self {
        self.poll_cap = cap.max(Duration::from_millis(1));
        self
    }

    /// One attempt: a permit of `name` (at most `permits` held at once), or `None` if all
    /// are taken. No watchdog; see [`try_acquire_with`](Self::try_acquire_with).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidPermits`], [`Error::InvalidTtl`] for bad
    /// input; [`Error::Store`] when the store fails.
    pub async fn try_acquire(
        &self,
        name: &str,
        permits: u32,
        ttl: Duration,
    ) -> Result<Option<Permit>> {
        self.try_acquire_with(name, permits, ttl, LockOptions::default())
            .await
    }

    /// One attempt with options (watchdog, token prefix).
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire).
    pub async fn try_acquire_with(
        &self,
        name: &str,
        permits: u32,
        ttl: Duration,
        options: LockOptions,
    ) -> Result<Option<Permit>> {
        self.attempt(name, permits, ttl, &options, Instant::now(), None)
            .await
    }

    /// Waits up to `wait` for a permit (woken by releases, polling up to the poll cap). Store
    /// failures are retried and each attempt is cut at the end of the wait, as for
    /// [`Locker::lock`](crate::Locker::lock).
    ///
    /// # Errors
    /// [`Error::SemaphoreTimeout`] when `wait` passes (or the last store error — timeout,
    /// unavailable, outcome unknown — if the store was still failing then), plus those of
    /// `try_acquire`.
    pub async fn acquire(
        &self,
        name: &str,
        permits: u32,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Permit> {
        self.acquire_with(name, permits, ttl, wait, LockOptions::default())
            .await
    }

    /// [`acquire`](Self::acquire) with options.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_with(
        &self,
        name: &str,
        permits: u32,
        ttl: Duration,
        wait: Duration,
        options: LockOptions,
    ) -> Result<Permit> {
        check_permits(name, permits)?;
        let asked = Instant::now();
        let deadline = wait_deadline(asked, wait);
        let waiting = Waiting {
            poll_cap: self.poll_cap,
            wake: self.wake_on_release,
        };
        let got = waiting
            .run(self.store.permit_wakeups(), name, deadline, || {
                self.attempt(name, permits, ttl, &options, asked, Some(deadline))
            })
            .await?;
        got.ok_or_else(|| Error::SemaphoreTimeout {
            name: name_for_error(name),
            permits,
            waited: wait,
        })
    }

    /// How many unexpired permits of `name` are held now.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; store errors.
    pub async fn held(&self, name: &str) -> Result<u32> {
        check_name(name)?;
        self.store.permits_held(name).await
    }

    async fn attempt(
        &self,
        name: &str,
        permits: u32,
        ttl: Duration,
        options: &LockOptions,
        asked: Instant,
        deadline: Option<Instant>,
    ) -> Result<Option<Permit>> {
        check_permits(name, permits)?;
        check_lock(name, ttl)?;
        let ttl = round_up_to_millis(ttl);
        let token = options.new_token()?;
        let labels = SemaphoreLabels {
            semaphore: options.label_for(name),
        };
        let call = self.store.acquire_permit(name, &token, permits, ttl);
        grant(
            Arc::new(PermitLease(self.store.clone())),
            &self.metrics,
            labels,
            (name, &token, ttl),
            options,
            (asked, deadline),
            "semaphore",
            call,
        )
        .await
    }
}
