//! The guard of a lease (a lock or a semaphore permit): the local deadline and its timer,
//! `lost()`, the watchdog, extend, release, abandon. [`crate::lock`] and
//! [`crate::semaphore`] hand these out; they differ only in the store operations behind
//! [`LeaseOps`].

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::error::round_up_to_millis;
use crate::lock::{LockOptions, check_lock};
use crate::metrics::LeaseMetrics;
use crate::store::{CoordFuture, LockStore, SemaphoreStore, Wakeups};
use prometheus_client::encoding::EncodeLabelSet;

/// The two store operations a held lease needs.
pub(crate) trait LeaseOps: Send + Sync + 'static {
    /// Resets the lease of `token` on `name` to `ttl`; whether it was still held.
    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>>;
    /// Gives the lease back; whether it was still held.
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CoordFuture<'a, Result<bool>>;
}

/// A lock's lease: the lock key.
pub(crate) struct LockLease(pub(crate) Arc<dyn LockStore>);

impl LeaseOps for LockLease {
    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>> {
        self.0.extend(name, token, ttl)
    }
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CoordFuture<'a, Result<bool>> {
        self.0.release(name, token)
    }
}

/// A semaphore permit's lease: one slot of the permit set.
pub(crate) struct PermitLease(pub(crate) Arc<dyn SemaphoreStore>);

impl LeaseOps for PermitLease {
    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>> {
        self.0.extend_permit(name, token, ttl)
    }
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CoordFuture<'a, Result<bool>> {
        self.0.release_permit(name, token)
    }
}

/// How a waiter waits: woken by releases (unless `wake` is off), and polling from 10 ms
/// doubling (with jitter) up to `poll_cap`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waiting {
    pub(crate) poll_cap: Duration,
    pub(crate) wake: bool,
}

impl Waiting {
    /// Runs `attempt` until it returns `Some`, a permanent error, or `deadline` passes
    /// (`Ok(None)`, or the last error if the store was still failing then). Timeouts and an
    /// unreachable store do not end the wait: they are retried by polling.
    pub(crate) async fn run<T, F, Fut>(
        self,
        wakeups: &Wakeups,
        name: &str,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let mut backoff = Duration::from_millis(10);
        loop {
            // Listen before trying: a release between the attempt and the wait still wakes us.
            let woken = wakeups.listen(name);
            tokio::pin!(woken);
            woken.as_mut().enable();
            let failure = match attempt().await {
                Ok(Some(got)) => return Ok(Some(got)),
                Ok(None) => None,
                Err(e) if e.is_retried_while_waiting() => Some(e),
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            }
            let jittered = backoff.mul_f64(0.5 + jitter()).min(deadline - now);
            backoff = (backoff * 2).min(self.poll_cap);
            if self.wake && failure.is_none() {
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(jittered) => {}
                }
            } else {
                tokio::time::sleep(jittered).await;
            }
        }
    }
}

/// The end of a wait of `wait` from `start`; a wait too long for the clock
/// (`Duration::MAX`) ends in about 30 years instead of overflowing.
pub(crate) fn wait_deadline(start: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    start
        .checked_add(wait)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

/// The least time one attempt of a waiting caller is given, even when its wait has (almost)
/// run out, so `wait = 0` still makes one real attempt.
pub(crate) const ATTEMPT_FLOOR: Duration = Duration::from_millis(100);

/// Runs one acquire `call` of a waiting caller, cut at `deadline` (but given at least
/// [`ATTEMPT_FLOOR`]); a cut call is a store [`Timeout`](keel_cache::Error::Timeout) of
/// `operation` on `name`, whose outcome is unknown. Without a deadline, the store's own
/// response timeout bounds the call.
pub(crate) async fn bounded<T>(
    deadline: Option<Instant>,
    name: &str,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let Some(deadline) = deadline else {
        return call.await;
    };
    let now = Instant::now();
    let until = deadline.max(now + ATTEMPT_FLOOR);
    match tokio::time::timeout_at(until, call).await {
        Ok(r) => r,
        Err(_) => Err(crate::Error::Store(keel_cache::Error::Timeout {
            cache: crate::error::name_for_error(name),
            operation,
            after: until - now,
        })),
    }
}

/// One acquire attempt of a lock or a permit, after its checks: `call` (the store's acquire
/// with `token`, not yet polled) bounded by the wait's `deadline`; a lost reply's lease given
/// back in the background; a late grant renewed; contention, acquisition and wait counted
/// under `labels`; the guard, or `None` when the lock or every permit is held.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn grant<L>(
    ops: Arc<dyn LeaseOps>,
    metrics: &LeaseMetrics<L>,
    labels: L,
    (name, token, ttl): (&str, &str, Duration),
    options: &LockOptions,
    (asked, deadline): (Instant, Option<Instant>),
    operation: &'static str,
    call: CoordFuture<'_, Result<Option<u64>>>,
) -> Result<Option<LockGuard>>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let sent = Instant::now();
    let acquired = match bounded(deadline, name, operation, call).await {
        Ok(acquired) => acquired,
        Err(e) if e.is_outcome_unknown() => {
            // It may have taken the lease with a token nobody knows: give it back, in the
            // background so the wait is not extended.
            release_in_background(ops, name, token);
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let Some(fence) = acquired else {
        metrics.contention.get_or_create(&labels).inc();
        return Ok(None);
    };
    let Some(sent) =
        renew_late_grant(ops.clone(), name, token, ttl, sent, deadline, operation).await?
    else {
        return Ok(None);
    };
    metrics.acquisitions.get_or_create(&labels).inc();
    metrics
        .wait
        .get_or_create(&labels)
        .observe(asked.elapsed().as_secs_f64());
    Ok(Some(LockGuard::start(
        ops,
        metrics.instruments(&labels),
        name.to_owned(),
        token.to_owned(),
        fence,
        ttl,
        sent,
        options.watchdog,
    )))
}

/// A grant whose reply came back late (a slow or frozen server queued the acquire) has
/// little of its lease left on the local clock, which runs from when the acquire was sent:
/// handed out as is, a supervised command would be stopped at once. Past a quarter of the
/// TTL it is renewed once first, and the lease then runs from the renewal's send time.
/// Returns the instant the lease runs from, or `None` when the renewal found the lease gone
/// (treated as not acquired). On a renewal error the lease is given back in the background.
async fn renew_late_grant(
    ops: Arc<dyn LeaseOps>,
    name: &str,
    token: &str,
    ttl: Duration,
    sent: Instant,
    deadline: Option<Instant>,
    operation: &'static str,
) -> Result<Option<Instant>> {
    if sent.elapsed() <= ttl / 4 {
        return Ok(Some(sent));
    }
    let again = Instant::now();
    match bounded(deadline, name, operation, ops.extend(name, token, ttl)).await {
        Ok(true) => Ok(Some(again)),
        Ok(false) => Ok(None),
        Err(e) => {
            release_in_background(ops, name, token);
            Err(e)
        }
    }
}

/// Gives back, in a spawned task (so the caller's wait is not extended), a lease that an
/// acquire whose outcome is unknown may have taken with `token`: owner-checked, a few tries
/// while the connection comes back; if they all fail, the TTL still frees it.
pub(crate) fn release_in_background(ops: Arc<dyn LeaseOps>, name: &str, token: &str) {
    let (name, token) = (name.to_owned(), token.to_owned());
    let release = async move {
        let mut backoff = Duration::from_millis(20);
        for _ in 0..3 {
            if ops.release(&name, &token).await.is_ok() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    };
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(release);
    }
}

/// The metrics a held lease records into, resolved for its name.
pub(crate) struct Instruments {
    pub(crate) hold: Histogram,
    pub(crate) renew_failures: Counter,
    pub(crate) losses: Counter,
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

struct GuardState {
    ops: Arc<dyn LeaseOps>,
    instruments: Instruments,
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
            self.instruments.losses.inc();
            self.lost.cancel();
        }
    }

    /// One renewal with `ttl` (or the current TTL); true if the lock is still ours. The new
    /// deadline is this send time plus this TTL, shorter or longer than before.
    async fn renew(&self, ttl: Option<Duration>) -> Result<bool> {
        let mut current = self.ttl.lock().await;
        let ttl = ttl.unwrap_or(*current);
        let sent = Instant::now();
        let ours = self.ops.extend(&self.name, &self.token, ttl).await;
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
        self.instruments.renew_failures.inc();
    }
}

/// A held lock, or a held semaphore permit ([`Permit`](crate::Permit)): the same guard,
/// with the guarantees in the [`lock`](crate::lock) module docs.
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
    #[allow(clippy::too_many_arguments)] // one call per lease kind, each argument named there
    pub(crate) fn start(
        ops: Arc<dyn LeaseOps>,
        instruments: Instruments,
        name: String,
        token: String,
        fence: u64,
        ttl: Duration,
        sent: Instant,
        watchdog: bool,
    ) -> Self {
        let state = Arc::new(GuardState {
            ops,
            instruments,
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
        self.state
            .instruments
            .hold
            .observe(self.state.acquired.elapsed().as_secs_f64());
        // Watchers must stop before the server lets anyone else in.
        self.state.lost.cancel();
        self.state
            .ops
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
                let _ = state.ops.release(&state.name, &state.token).await;
            });
        }
    }
}
