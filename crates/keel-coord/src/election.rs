//! Leader election on top of [`Locker`], with client-go's timing rules.
//!
//! A candidate campaigns by trying to take the election's lock every retry period. The
//! winner holds it with a TTL of `lease` and renews it every retry period. It **stops
//! leading on its own monotonic clock** when `renew_deadline` has passed since the last
//! renewal it *sent* that succeeded — and because `renew_deadline < lease` and the server
//! started that lease after the send, the leader has stopped acting before anyone else can
//! take the lock. The leadership's [`CancellationToken`] is cancelled at that moment; the
//! epoch handed to `on_started_leading` is the lock's fencing token.
//!
//! **The lease is released only after the work has stopped**: the election waits until every
//! clone of the [`Leadership`] handle is dropped before it deletes the lock (never after the
//! lease could have expired: then it lets the lease run out). Hand the handle to the task
//! that does the leader's work and drop it when that task ends; a callback that only logs
//! drops it at once.
//!
//! Timing rules (validated by [`ElectionBuilder::build`]):
//! `lease > renew_deadline > 1.2 × retry_period > 0`.
//!
//! ```
//! use std::time::Duration;
//! use keel_coord::{Election, Locker, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_coord::Error> {
//! let locker = Locker::new(MemoryStore::new());
//! let election = Election::builder(locker, "scheduler", "node-a")
//!     .lease(Duration::from_secs(3))
//!     .renew_deadline(Duration::from_secs(2))
//!     .retry_period(Duration::from_millis(500))
//!     .on_started_leading(|leadership| {
//!         println!("leading in epoch {}", leadership.epoch);
//!     })
//!     .build()?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! stop.cancel(); // a real service would cancel this on shutdown
//! election.run(stop).await;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_metrics::MetricsService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lock::{LockGuard, LockOptions, Locker};
use crate::{Error, Result};

/// The lease when none is set (client-go's 15 s).
const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// What a new leader gets: a token cancelled when it must stop acting, its epoch, and the
/// term's hold on the lease.
///
/// **The lease is released only after every clone of this handle is dropped** (or
/// [`done`](Self::done) is called): when leadership ends, the election cancels
/// [`token`](Self::token) and then waits for the handle before it deletes the lock, so no other
/// candidate can win while this term's work may still run. If the handle is still held when
/// the lease can expire ([`expires_at`](Self::expires_at)), the election does not release at
/// all (the lease runs out by itself) and does not campaign again until the handle is gone.
/// Drop the handle (or call `done`) as soon as the work has stopped; holding it forever
/// keeps this candidate out of the election.
#[derive(Clone)]
pub struct Leadership {
    /// Cancelled when leadership ends (deadline, loss, resign or shutdown).
    pub token: CancellationToken,
    /// The epoch: the lock's fencing token, strictly increasing across leaders.
    pub epoch: u64,
    term: Arc<Term>,
}

/// The part of a [`Leadership`] shared by its clones: dropping the last one tells the
/// election that the term's work has stopped.
struct Term {
    _done: tokio::sync::oneshot::Sender<()>,
    expires: Arc<Expiry>,
}

/// The time a term's lease cannot have expired on the server before, updated by renewals.
struct Expiry {
    base: Instant,
    nanos: std::sync::atomic::AtomicU64,
}

impl Expiry {
    fn new(at: Instant) -> Self {
        let base = Instant::now();
        let e = Self {
            base,
            nanos: std::sync::atomic::AtomicU64::new(0),
        };
        e.set(at);
        e
    }

    fn set(&self, at: Instant) {
        let nanos =
            u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Release);
    }

    fn get(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("epoch", &self.epoch)
            .field("ended", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Until this moment the lease cannot have expired on the server: the send time of the
    /// last successful acquire or renewal plus the lease, on the local monotonic clock. It
    /// moves later with each renewal. Work of this term still running at that moment may
    /// overlap a new leader's: a supervisor should have stopped it by then.
    pub fn expires_at(&self) -> Instant {
        self.term.expires.get()
    }

    /// Says this term's work has stopped: the same as dropping this handle (the lease is
    /// released once every clone is gone).
    pub fn done(self) {}
}

type Started = Arc<dyn Fn(Leadership) + Send + Sync>;
type Stopped = Arc<dyn Fn() + Send + Sync>;
type NewLeader = Arc<dyn Fn(Option<String>) + Send + Sync>;

/// Builder for [`Election`].
pub struct ElectionBuilder {
    locker: Locker,
    name: String,
    identity: String,
    lease: Duration,
    renew_deadline: Option<Duration>,
    retry_period: Option<Duration>,
    started: Option<Started>,
    stopped: Option<Stopped>,
    new_leader: Option<NewLeader>,
    metrics: Option<MetricsService>,
}

impl std::fmt::Debug for ElectionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionBuilder")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ElectionBuilder {
    /// How long a leader's lock lives without renewal (default 15 s). The renew deadline
    /// and retry period, when not set, are derived from it: 2/3 and 1/6 of the lease (for
    /// the default 15 s lease: client-go's 10 s and 2 s).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How long a leader keeps leading without a successful renewal (default 2/3 of the
    /// lease).
    pub fn renew_deadline(mut self, d: Duration) -> Self {
        self.renew_deadline = Some(d);
        self
    }

    /// How often candidates try and leaders renew (default 1/6 of the lease; 2 s for the
    /// default lease).
    pub fn retry_period(mut self, d: Duration) -> Self {
        self.retry_period = Some(d);
        self
    }

    /// Called when this candidate becomes leader.
    pub fn on_started_leading(mut self, f: impl Fn(Leadership) + Send + Sync + 'static) -> Self {
        self.started = Some(Arc::new(f));
        self
    }

    /// Called when this candidate stops leading (after its token is cancelled).
    pub fn on_stopped_leading(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.stopped = Some(Arc::new(f));
        self
    }

    /// Called when the observed leader changes (`None`: nobody holds the lock).
    pub fn on_new_leader(mut self, f: impl Fn(Option<String>) + Send + Sync + 'static) -> Self {
        self.new_leader = Some(Arc::new(f));
        self
    }

    /// Registry for the `election_*` metrics (default: [`MetricsService::global`]).
    pub fn metrics(mut self, metrics: &MetricsService) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Validates the timing and builds the election.
    ///
    /// # Errors
    /// [`Error::InvalidElection`] unless `lease > renew_deadline > 1.2 × retry_period > 0`,
    /// and for an empty name or identity (or one containing `|`); [`Error::InvalidName`]
    /// for a name the lock rejects (braces) and [`Error::InvalidTtl`] for a lease the lock
    /// rejects (under 10 ms).
    pub fn build(self) -> Result<Election> {
        let bad = |m: String| Err(Error::InvalidElection(m));
        let default_lease = self.lease == DEFAULT_LEASE;
        let renew_deadline = self.renew_deadline.unwrap_or(self.lease * 2 / 3);
        let retry_period = self.retry_period.unwrap_or(if default_lease {
            Duration::from_secs(2) // client-go's default
        } else {
            self.lease / 6
        });
        if self.name.is_empty() {
            return bad("the election name must not be empty".into());
        }
        // The lock's own checks (name, lease as its TTL): caught here, not retried by run().
        crate::lock::check_lock(&self.name, self.lease)?;
        if self.identity.is_empty() || self.identity.contains('|') {
            return bad("the identity must be non-empty and must not contain '|'".into());
        }
        if retry_period.is_zero() {
            return bad("retry_period must be greater than zero".into());
        }
        if self.lease <= renew_deadline {
            return bad(format!(
                "lease ({:?}) must be greater than renew_deadline ({renew_deadline:?})",
                self.lease
            ));
        }
        if renew_deadline <= retry_period.mul_f64(1.2) {
            return bad(format!(
                "renew_deadline ({renew_deadline:?}) must be greater than 1.2 x retry_period ({retry_period:?})"
            ));
        }
        let service = self
            .metrics
            .unwrap_or_else(|| MetricsService::global().clone());
        let metrics = ElectionMetrics::new(&service, &self.name);
        Ok(Election {
            inner: Arc::new(Inner {
                locker: self.locker,
                name: self.name,
                identity: self.identity,
                lease: self.lease,
                renew_deadline,
                retry_period,
                started: self.started,
                stopped: self.stopped,
                new_leader: self.new_leader,
                leading: AtomicBool::new(false),
                term: std::sync::Mutex::new(None),
                metrics,
            }),
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ElectionLabels {
    election: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AttemptLabels {
    election: String,
    result: &'static str,
}

struct ElectionMetrics {
    is_leader: Gauge,
    transitions: Counter,
    attempts: Family<AttemptLabels, Counter>,
    election: String,
}

impl ElectionMetrics {
    fn new(service: &MetricsService, name: &str) -> Self {
        let labels = ElectionLabels {
            election: name.to_owned(),
        };
        let is_leader: Family<ElectionLabels, Gauge> = service
            .get_or_register(
                "election_is_leader",
                "1 while this process leads",
                Family::default,
            )
            .unwrap_or_default();
        let transitions: Family<ElectionLabels, Counter> = service
            .get_or_register(
                "election_transitions",
                "Times this process started or stopped leading",
                Family::default,
            )
            .unwrap_or_default();
        let attempts = service
            .get_or_register(
                "election_attempts",
                "Campaign attempts by result (won, held, error)",
                Family::default,
            )
            .unwrap_or_default();
        Self {
            is_leader: is_leader.get_or_create_owned(&labels),
            transitions: transitions.get_or_create_owned(&labels),
            attempts,
            election: name.to_owned(),
        }
    }

    fn attempt(&self, result: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                election: self.election.clone(),
                result,
            })
            .inc();
    }
}

struct Inner {
    locker: Locker,
    name: String,
    identity: String,
    lease: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    started: Option<Started>,
    stopped: Option<Stopped>,
    new_leader: Option<NewLeader>,
    leading: AtomicBool,
    /// The current term's resign token (`None` while not leading), so a `resign()` made
    /// outside a term cannot end the next one.
    term: std::sync::Mutex<Option<CancellationToken>>,
    metrics: ElectionMetrics,
}

/// A candidate in one election. Cheap to clone.
#[derive(Clone)]
pub struct Election {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.inner.name)
            .field("identity", &self.inner.identity)
            .field("leading", &self.is_leader())
            .finish_non_exhaustive()
    }
}

/// The identity part of a lock value `identity|token`.
fn identity_of(holder: &str) -> String {
    holder
        .rsplit_once('|')
        .map_or(holder, |(id, _)| id)
        .to_owned()
}

impl Election {
    /// A builder for candidate `identity` in election `name` on `locker`'s store.
    pub fn builder(
        locker: Locker,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> ElectionBuilder {
        ElectionBuilder {
            locker,
            name: name.into(),
            identity: identity.into(),
            lease: DEFAULT_LEASE,
            renew_deadline: None,
            retry_period: None,
            started: None,
            stopped: None,
            new_leader: None,
            metrics: None,
        }
    }

    /// Whether this candidate leads right now.
    pub fn is_leader(&self) -> bool {
        self.inner.leading.load(Ordering::Acquire)
    }

    /// The identity holding the election's lock, as the store sees it now.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn current_leader(&self) -> Result<Option<String>> {
        Ok(self
            .inner
            .locker
            .store()
            .holder(&self.inner.name)
            .await?
            .map(|h| identity_of(&h)))
    }

    /// Steps down if leading: the term's token is cancelled, and the lock is released (so
    /// another candidate can win at once) as soon as the [`Leadership`] handle is dropped; the
    /// campaign goes on after a retry period.
    pub fn resign(&self) {
        if let Some(term) = self
            .inner
            .term
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            term.cancel();
        }
    }

    /// Campaigns (and leads when elected) until `shutdown` is cancelled; a leader then stops
    /// leading and releases the lock once its [`Leadership`] handle is dropped (if that
    /// happens before the lease could expire). So on shutdown this returns once the handle is
    /// dropped or, at the latest, when the lease could expire.
    pub async fn run(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut observed: Option<Option<String>> = None;
        let options = LockOptions::default().token_prefix(format!("{}|", inner.identity));
        while !shutdown.is_cancelled() {
            let sent = Instant::now();
            match inner
                .locker
                .try_lock_with(&inner.name, inner.lease, options.clone())
                .await
            {
                Ok(Some(guard)) => {
                    inner.metrics.attempt("won");
                    self.observe(&mut observed, Some(inner.identity.clone()));
                    self.lead(guard, sent, &shutdown).await;
                    // Give the others a fair chance after a resignation or a loss.
                    if !sleep_or(&shutdown, inner.retry_period).await {
                        break;
                    }
                    continue;
                }
                Ok(None) => {
                    inner.metrics.attempt("held");
                    if let Ok(holder) = self.current_leader().await {
                        self.observe(&mut observed, holder);
                    }
                }
                Err(_) => inner.metrics.attempt("error"),
            }
            let jittered = inner
                .retry_period
                .mul_f64(1.0 + 0.2 * crate::lease::jitter());
            if !sleep_or(&shutdown, jittered).await {
                break;
            }
        }
    }

    fn observe(&self, observed: &mut Option<Option<String>>, now: Option<String>) {
        if observed.as_ref() != Some(&now) {
            if let Some(cb) = &self.inner.new_leader {
                cb(now.clone());
            }
            *observed = Some(now);
        }
    }

    async fn lead(&self, guard: LockGuard, sent: Instant, shutdown: &CancellationToken) {
        let inner = &self.inner;
        let token = CancellationToken::new();
        let resign = CancellationToken::new();
        *inner
            .term
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(resign.clone());
        inner.leading.store(true, Ordering::Release);
        inner.metrics.is_leader.set(1);
        inner.metrics.transitions.inc();
        let expires = Arc::new(Expiry::new(sent + inner.lease));
        let (done, mut work_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(cb) = &inner.started {
            cb(Leadership {
                token: token.clone(),
                epoch: guard.fencing_token(),
                term: Arc::new(Term {
                    _done: done,
                    expires: expires.clone(),
                }),
            });
        } else {
            drop(done);
        }
        // The last renewal that succeeded was sent at `renewed`; leadership ends at
        // `renewed + renew_deadline` unless another renewal succeeds first.
        let mut renewed = sent;
        loop {
            let step_down = renewed + inner.renew_deadline;
            let next = (Instant::now() + inner.retry_period).min(step_down);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = resign.cancelled() => break,
                () = tokio::time::sleep_until(next) => {}
            }
            if Instant::now() >= step_down {
                break;
            }
            let attempt = Instant::now();
            let renewal = tokio::time::timeout_at(step_down, guard.extend(inner.lease)).await;
            match renewal {
                Ok(Ok(true)) => {
                    renewed = attempt;
                    expires.set(attempt + inner.lease);
                }
                Ok(Ok(false)) => break,   // someone else holds it: it is gone
                Ok(Err(_)) | Err(_) => {} // retried until the step-down time
            }
            if Instant::now() >= step_down {
                break;
            }
        }
        token.cancel();
        inner
            .term
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        inner.leading.store(false, Ordering::Release);
        inner.metrics.is_leader.set(0);
        inner.metrics.transitions.inc();
        if let Some(cb) = &inner.stopped {
            cb();
        }
        // Release only once the term's work has said it stopped (every Leadership handle
        // dropped), and only while the lease is still ours; otherwise it runs out by itself.
        let expiry = renewed + inner.lease;
        if tokio::time::timeout_at(expiry, &mut work_stopped)
            .await
            .is_ok()
        {
            // Release is owner-checked, so it is safe even when the lock may already belong
            // to someone else; when the store is unreachable the lease simply runs out.
            let _ = tokio::time::timeout(inner.retry_period, guard.release()).await;
        } else {
            guard.abandon();
            // Never campaign while this term's work may still run; on shutdown, stop waiting.
            tokio::select! {
                _ = work_stopped => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}

/// Sleeps for `d` unless `shutdown` fires first; returns false on shutdown.
async fn sleep_or(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}
