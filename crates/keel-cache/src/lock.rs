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
//! ```
//! use std::time::Duration;
//! use keel_cache::{MemoryCache, lock::Locker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_cache::Error> {
//! let locker = Locker::new(MemoryCache::builder("locks").build());
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

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::contract::CacheFuture;
use crate::ttl::round_up_to_millis;
use crate::{Error, Result};
use keel_metrics::MetricsService;

/// Where locks live: implemented by the memory and Redis backends.
pub trait LockStore: Send + Sync + 'static {
    /// Sets `name` to `token` for `ttl` if it is free, incrementing the name's fence counter
    /// in the same atomic step; returns the new fencing token, or `None` if the lock is held.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CacheFuture<'a, Result<Option<u64>>>;

    /// Deletes `name` if it holds `token`; returns whether it did.
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CacheFuture<'a, Result<bool>>;

    /// Resets `name`'s TTL to `ttl` if it holds `token`; returns whether it did.
    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CacheFuture<'a, Result<bool>>;

    /// The token currently stored for `name`, if any.
    fn holder<'a>(&'a self, name: &'a str) -> CacheFuture<'a, Result<Option<String>>>;
}

/// A 128-bit random owner token from the operating system's CSPRNG, as 32 hex digits.
///
/// # Errors
/// [`Error::Backend`] if the OS has no randomness to give (practically never).
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Backend {
        cache: "lock".into(),
        operation: "token",
        message: format!("no randomness: {e}"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct LockLabels {
    lock: String,
}

/// Lock metrics (`<ns>_lock_*`, label `lock`).
#[derive(Clone, Debug)]
struct LockMetrics {
    acquisitions: Family<LockLabels, Counter>,
    contention: Family<LockLabels, Counter>,
    wait: Family<LockLabels, Histogram>,
    hold: Family<LockLabels, Histogram>,
    renew_failures: Family<LockLabels, Counter>,
    losses: Family<LockLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
    ])
}

impl LockMetrics {
    fn register(m: &MetricsService) -> Result<Self> {
        Ok(Self {
            acquisitions: m.get_or_register(
                "lock_acquisitions",
                "Locks acquired",
                Family::default,
            )?,
            contention: m.get_or_register(
                "lock_contention",
                "Acquire attempts that found the lock held",
                Family::default,
            )?,
            wait: m.get_or_register(
                "lock_wait_seconds",
                "Time from asking for a lock to getting it",
                || Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            )?,
            hold: m.get_or_register(
                "lock_hold_seconds",
                "Time a lock was held until release or loss",
                || Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            )?,
            renew_failures: m.get_or_register(
                "lock_renew_failures",
                "Renewals that failed (error or not the owner)",
                Family::default,
            )?,
            losses: m.get_or_register(
                "lock_losses",
                "Locks lost before release (deadline passed or taken over)",
                Family::default,
            )?,
        })
    }

    fn unregistered() -> Self {
        Self {
            acquisitions: Family::default(),
            contention: Family::default(),
            wait: Family::new_with_constructor(seconds_histogram),
            hold: Family::new_with_constructor(seconds_histogram),
            renew_failures: Family::default(),
            losses: Family::default(),
        }
    }

    fn labels(name: &str) -> LockLabels {
        LockLabels {
            lock: name.to_owned(),
        }
    }
}

/// Hands out locks from one [`LockStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Locker {
    store: Arc<dyn LockStore>,
    metrics: LockMetrics,
}

impl std::fmt::Debug for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locker").finish_non_exhaustive()
    }
}

/// The shortest TTL a lock accepts: renewal and the local deadline need some room.
pub const MIN_LOCK_TTL: Duration = Duration::from_millis(10);

fn check_lock(name: &str, ttl: Duration) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidKey {
            key: String::new(),
            reason: "lock names must not be empty",
        });
    }
    // The name becomes a Cluster hash tag `{name}`: braces inside would change the slot.
    if name.contains(['{', '}']) {
        return Err(Error::InvalidKey {
            key: crate::error::key_for_error(name),
            reason: "lock names must not contain '{' or '}'",
        });
    }
    if ttl < MIN_LOCK_TTL || ttl > crate::MAX_TTL {
        return Err(Error::InvalidTtl {
            key: crate::error::key_for_error(name),
            ttl,
            reason: "lock TTLs must be between 10 ms and 100 years",
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
        let metrics =
            LockMetrics::register(metrics).unwrap_or_else(|_| LockMetrics::unregistered());
        Self {
            store: Arc::new(store),
            metrics,
        }
    }

    /// The store, for advanced callers (election).
    pub fn store(&self) -> &Arc<dyn LockStore> {
        &self.store
    }

    /// One attempt: the lock, or `None` if someone holds it. No watchdog; see
    /// [`LockOptions`] and [`try_lock_with`](Self::try_lock_with).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] / [`Error::InvalidTtl`] for bad input, backend errors.
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
        self.attempt(name, ttl, &options, Instant::now()).await
    }

    /// Waits up to `wait` for the lock, retrying with jittered exponential backoff (10 ms
    /// doubling to 500 ms). Attempts that time out or find the store unavailable are retried
    /// the same way until `wait` runs out.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] when `wait` passes (or the last [`Error::Timeout`] /
    /// [`Error::Unavailable`] if the store was still failing then), plus the other errors of
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
        let deadline = asked + wait;
        let mut backoff = Duration::from_millis(10);
        loop {
            // A store that is briefly unreachable (timeouts, a restart, a failover) does not
            // end the wait: the attempt is retried until the wait runs out, and that error is
            // returned if it is still failing then.
            let failure = match self.attempt(name, ttl, &options, asked).await {
                Ok(Some(guard)) => return Ok(guard),
                Ok(None) => None,
                Err(e @ (Error::Timeout { .. } | Error::Unavailable { .. })) => Some(e),
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(failure.unwrap_or_else(|| Error::LockTimeout {
                    lock: crate::error::key_for_error(name),
                    waited: wait,
                }));
            }
            let jittered = backoff.mul_f64(0.5 + jitter());
            tokio::time::sleep(jittered.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn attempt(
        &self,
        name: &str,
        ttl: Duration,
        options: &LockOptions,
        asked: Instant,
    ) -> Result<Option<LockGuard>> {
        check_lock(name, ttl)?;
        let ttl = round_up_to_millis(ttl);
        let token = match &options.token_prefix {
            Some(prefix) => format!("{prefix}{}", new_token()?),
            None => new_token()?,
        };
        let sent = Instant::now();
        let labels = LockMetrics::labels(name);
        let acquired = match self.store.acquire(name, &token, ttl).await {
            Ok(acquired) => acquired,
            Err(e) if e.is_outcome_unknown() => {
                self.release_unknown(name, &token).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let Some(fence) = acquired else {
            self.metrics.contention.get_or_create(&labels).inc();
            return Ok(None);
        };
        self.metrics.acquisitions.get_or_create(&labels).inc();
        self.metrics
            .wait
            .get_or_create(&labels)
            .observe(asked.elapsed().as_secs_f64());
        Ok(Some(LockGuard::start(
            self.clone(),
            name.to_owned(),
            token,
            fence,
            ttl,
            sent,
            options.watchdog,
        )))
    }

    /// After an acquire whose reply was lost: it may have taken the lock with `token`, which
    /// nobody knows, so the lock would stay held for its whole TTL. Releases it (owner-checked:
    /// only if it holds this token), best effort: a few tries while the connection comes
    /// back; if they all fail the TTL still frees the lock.
    async fn release_unknown(&self, name: &str, token: &str) {
        let mut backoff = Duration::from_millis(20);
        for _ in 0..3 {
            if self.store.release(name, token).await.is_ok() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

/// A number in [0, 1) for backoff jitter; from the CSPRNG, falling back to the clock.
pub(crate) fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return f64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 1000),
        ) / 1000.0;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Per-acquisition options.
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    /// Renew the lock every TTL/3 until it is released, retrying a failed renewal after
    /// TTL/10 (default off).
    pub watchdog: bool,
    /// Put this in front of the random token (e.g. an identity, for `holder()` readers).
    pub token_prefix: Option<String>,
}

impl LockOptions {
    /// With the watchdog on.
    pub fn watchdog() -> Self {
        Self {
            watchdog: true,
            token_prefix: None,
        }
    }
}

struct GuardState {
    locker: Locker,
    name: String,
    token: String,
    /// The TTL of the last successful acquire/extend; renewals hold this lock, so replies
    /// cannot arrive out of order and overwrite a newer deadline.
    ttl: tokio::sync::Mutex<Duration>,
    lost: CancellationToken,
    /// Local deadline as nanoseconds since `epoch` (atomically updated by renewals).
    deadline: std::sync::atomic::AtomicU64,
    /// Wakes the deadline timer when the deadline moves (it may move closer).
    moved: tokio::sync::Notify,
    epoch: Instant,
    acquired: Instant,
}

impl GuardState {
    fn set_deadline(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        self.deadline.store(
            u64::try_from(nanos).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Release,
        );
        self.moved.notify_one();
    }

    fn deadline(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.deadline.load(std::sync::atomic::Ordering::Acquire))
    }

    fn mark_lost(&self) {
        if !self.lost.is_cancelled() {
            self.locker
                .metrics
                .losses
                .get_or_create(&LockMetrics::labels(&self.name))
                .inc();
            self.lost.cancel();
        }
    }

    /// One renewal with `ttl` (or the current TTL); true if the lock is still ours. The new
    /// deadline is this send time plus this TTL, shorter or longer than before.
    async fn renew(&self, ttl: Option<Duration>) -> Result<bool> {
        let mut current = self.ttl.lock().await;
        let ttl = ttl.unwrap_or(*current);
        let sent = Instant::now();
        let ours = self.locker.store.extend(&self.name, &self.token, ttl).await;
        match ours {
            Ok(true) => {
                *current = ttl;
                self.set_deadline(sent + ttl);
                Ok(true)
            }
            Ok(false) => {
                self.renew_failed();
                self.mark_lost();
                Ok(false)
            }
            Err(e) => {
                self.renew_failed();
                Err(e)
            }
        }
    }

    fn renew_failed(&self) {
        self.locker
            .metrics
            .renew_failures
            .get_or_create(&LockMetrics::labels(&self.name))
            .inc();
    }
}

/// A held lock. See the module docs for the guarantees.
pub struct LockGuard {
    state: Arc<GuardState>,
    fence: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.state.name)
            .field("fencing_token", &self.fence)
            .field("lost", &self.state.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    fn start(
        locker: Locker,
        name: String,
        token: String,
        fence: u64,
        ttl: Duration,
        sent: Instant,
        watchdog: bool,
    ) -> Self {
        let state = Arc::new(GuardState {
            locker,
            name,
            token,
            ttl: tokio::sync::Mutex::new(ttl),
            lost: CancellationToken::new(),
            deadline: std::sync::atomic::AtomicU64::new(0),
            moved: tokio::sync::Notify::new(),
            epoch: sent,
            acquired: Instant::now(),
        });
        state.set_deadline(sent + ttl);
        let mut tasks = Vec::new();
        // The deadline timer: fires `lost` unless renewals keep pushing the deadline out.
        let timer = Arc::downgrade(&state);
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(s) = timer.upgrade() else { return };
                let deadline = s.deadline();
                let lost = s.lost.clone();
                let moved = {
                    let s = s.clone();
                    async move { s.moved.notified().await }
                };
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = lost.cancelled() => return,
                    () = moved => continue,
                }
                drop(s);
                let Some(s) = timer.upgrade() else { return };
                if Instant::now() >= s.deadline() {
                    s.mark_lost();
                    return;
                }
            }
        }));
        if watchdog {
            let dog = Arc::downgrade(&state);
            tasks.push(tokio::spawn(async move {
                let mut period = (ttl / 3).max(Duration::from_millis(1));
                loop {
                    tokio::time::sleep(period).await;
                    let Some(s) = dog.upgrade() else { return };
                    if s.lost.is_cancelled() {
                        return;
                    }
                    // A failed renewal is retried after a tenth of the TTL, so one lost reply
                    // does not eat the margin; the deadline timer decides loss. The current
                    // TTL is used, so a manual extend to another TTL sticks.
                    let renewed = s.renew(None).await;
                    let ttl = *s.ttl.lock().await;
                    period = match renewed {
                        Ok(false) => return,
                        Ok(true) => ttl / 3,
                        Err(_) => ttl / 10,
                    }
                    .max(Duration::from_millis(1));
                }
            }));
        }
        Self {
            state,
            fence,
            tasks,
            released: false,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The fencing token of this acquisition: strictly greater than every earlier one for
    /// this name.
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// The owner token stored in the lock.
    pub fn token(&self) -> &str {
        &self.state.token
    }

    /// Cancelled when the lock is (or may be) lost: the local deadline passed without a
    /// successful renewal, or a renewal found another owner. Stop acting on the lock then.
    pub fn lost(&self) -> CancellationToken {
        self.state.lost.clone()
    }

    /// The local deadline: until then the lock cannot have expired on the server.
    pub fn deadline(&self) -> Instant {
        self.state.deadline()
    }

    /// Resets the TTL to `ttl`; returns false (and fires `lost`) if the lock is no longer ours.
    ///
    /// # Errors
    /// Backend errors (the lock may still be ours; the deadline decides).
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        check_lock(&self.state.name, ttl)?;
        if self.state.lost.is_cancelled() {
            return Ok(false);
        }
        self.state.renew(Some(round_up_to_millis(ttl))).await
    }

    /// Releases the lock; returns whether it was still ours.
    ///
    /// # Errors
    /// Backend errors (the lock then expires after its TTL).
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.stop_tasks();
        let labels = LockMetrics::labels(&self.state.name);
        self.state
            .locker
            .metrics
            .hold
            .get_or_create(&labels)
            .observe(self.state.acquired.elapsed().as_secs_f64());
        // Watchers must stop before the server lets anyone else in.
        self.state.lost.cancel();
        self.state
            .locker
            .store
            .release(&self.state.name, &self.state.token)
            .await
    }

    /// Stops renewing and gives the lock up **without** releasing it: it ends when its TTL runs
    /// out on the server. Use this when the work the lock protects may still be running (a
    /// child process that could not be confirmed gone), so nobody else is let in early.
    pub fn abandon(mut self) {
        self.released = true;
        self.stop_tasks();
        self.state.lost.cancel();
    }

    fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_tasks();
        if self.released {
            return;
        }
        self.state.lost.cancel();
        // Best effort: release in the background if there is a runtime; else the TTL ends it.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let state = self.state.clone();
            handle.spawn(async move {
                let _ = state.locker.store.release(&state.name, &state.token).await;
            });
        }
    }
}
