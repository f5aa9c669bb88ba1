//! Distributed rate limiting with GCRA (the generic cell rate algorithm), on any
//! [`RateStore`]: [`MemoryStore`] or [`RedisStore`]
//! (standalone, Sentinel, Cluster).
//!
//! A [`Limit`] is a [`Rate`] (`10/s`, `600/m`, `1000/h`) plus a burst: a key that has been
//! idle admits `burst` requests at once, then one every emission interval (period / count).
//! Over any stretch of time `t` a key admits at most `burst + rate × t` requests (cost
//! units). Each decision is one atomic step on the store: one Lua script on Redis that reads
//! the time with `TIME` on the server (clients' clocks never matter), one critical section
//! in memory. The only state is one number per key (its theoretical arrival time), stored
//! with an expiry at that time, so idle keys vanish. Redis keys are
//! `__keel_rate:<namespace>{key}`: the hash tag makes them Cluster-safe.
//!
//! When the store fails with a transient error (unreachable, timed out), the limiter's
//! [`FailurePolicy`] decides: return the error (the default), allow, deny, or ask a local
//! in-process limiter with the same limit. Such decisions have [`Decision::degraded`] set.
//!
//! Every decision is counted in `<ns>_rate_limit_decisions_total{limiter, result}`; the
//! `limiter` label is the limiter's name (never a key), `result` one of `allowed`,
//! `limited`, `failed_open`, `failed_closed`, `fallback_allowed`, `fallback_limited`,
//! `error`.
//!
//! ```
//! use keel_coord::{MemoryStore, rate::{Limit, RateLimiter}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keel_coord::Error> {
//! let limiter = RateLimiter::builder(MemoryStore::new()).name("api").build();
//! let limit = Limit::new("10/s".parse()?, 3)?;
//! for _ in 0..3 {
//!     assert!(limiter.allow("user:42", &limit, 1).await?.allowed);
//! }
//! let d = limiter.allow("user:42", &limit, 1).await?;
//! assert!(!d.allowed);
//! assert!(d.retry_after > std::time::Duration::ZERO);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keel_metrics::MetricsService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[cfg(all(doc, feature = "redis"))]
use crate::RedisStore;
use crate::error::{check_name, name_for_error};
use crate::store::RateStore;
use crate::store::memory::MemoryStore;
use crate::{Error, Result};

/// The largest burst a limit accepts.
pub const MAX_BURST: u32 = 1_000_000;

/// A rate: `count` requests per `period`. Parsed from `N/s`, `N/m` or `N/h` (also `N/sec`,
/// `N/min`, `N/hour`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    period: Duration,
}

impl Rate {
    /// `count` requests per `period`.
    ///
    /// # Errors
    /// [`Error::InvalidRate`] for a zero count or period, or more than one request per
    /// microsecond (the stores count time in µs).
    pub fn new(count: u32, period: Duration) -> Result<Self> {
        let bad = |reason| {
            Err(Error::InvalidRate {
                input: format!("{count} per {period:?}"),
                reason,
            })
        };
        if count == 0 {
            return bad("the count must be at least 1");
        }
        if period.is_zero() {
            return bad("the period must not be zero");
        }
        if period.as_micros() < u128::from(count) {
            return bad("at most one request per microsecond");
        }
        if period > Duration::from_secs(366 * 24 * 3600) {
            return bad("the period must be at most a year");
        }
        Ok(Self { count, period })
    }

    /// `count` requests per second.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn per_second(count: u32) -> Result<Self> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn per_minute(count: u32) -> Result<Self> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn per_hour(count: u32) -> Result<Self> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The emission interval, period / count, in whole microseconds (rounded down, at least
    /// 1 µs): the steady spacing of admitted requests.
    pub fn emission_interval(&self) -> Duration {
        let us = self.period.as_micros() / u128::from(self.count);
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX).max(1))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.period.subsec_nanos() == 0 => write!(f, "{}/m", self.count),
            3600 if self.period.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            _ => write!(f, "{} per {:?}", self.count, self.period),
        }
    }
}

impl FromStr for Rate {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidRate {
            input: name_for_error(s),
            reason,
        };
        let (count, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected COUNT/UNIT, e.g. 10/s, 600/m, 1000/h"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count must be a whole number up to 4294967295"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad("the unit must be s, m or h")),
        };
        Self::new(count, period).map_err(|e| match e {
            Error::InvalidRate { reason, .. } => bad(reason),
            other => other,
        })
    }
}

/// A rate limit: a [`Rate`] plus a burst (how many requests an idle key admits at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    rate: Rate,
    burst: u32,
}

impl Limit {
    /// `rate` with `burst`.
    ///
    /// # Errors
    /// [`Error::InvalidRate`] for a burst of 0 or above [`MAX_BURST`], or a burst that takes
    /// more than ten years to earn back at the rate.
    pub fn new(rate: Rate, burst: u32) -> Result<Self> {
        if burst == 0 || burst > MAX_BURST {
            return Err(Error::InvalidRate {
                input: format!("{rate} burst {burst}"),
                reason: "the burst must be between 1 and 1000000",
            });
        }
        // Keeps every time the stores handle exact (Redis: µs in Lua doubles, below 2^53).
        let window = rate.emission_interval().saturating_mul(burst);
        if window > Duration::from_secs(10 * 366 * 24 * 3600) {
            return Err(Error::InvalidRate {
                input: format!("{rate} burst {burst}"),
                reason: "burst x emission interval must be at most ten years",
            });
        }
        Ok(Self { rate, burst })
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go ahead (its cost has been taken).
    pub allowed: bool,
    /// How many more requests of cost 1 would be allowed right now.
    pub remaining: u32,
    /// When denied: how long until the same request would be allowed. Zero when allowed.
    pub retry_after: Duration,
    /// How long until the key is back to its full burst (if nothing else is taken).
    pub reset_after: Duration,
    /// Set when the store failed and the [`FailurePolicy`] decided instead.
    pub degraded: bool,
}

impl Decision {
    /// A decision from a store's GCRA step (times in µs).
    pub(crate) fn from_store(
        allowed: bool,
        remaining: u32,
        retry_after_us: u64,
        reset_after_us: u64,
    ) -> Self {
        Self {
            allowed,
            remaining,
            retry_after: Duration::from_micros(retry_after_us),
            reset_after: Duration::from_micros(reset_after_us),
            degraded: false,
        }
    }
}

/// What a [`RateLimiter`] answers when the store fails with a transient error (unreachable,
/// timed out, an outcome unknown). Other errors (bad input, denied credentials) are always
/// returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Return the store's error (the default): the caller decides.
    #[default]
    Error,
    /// Allow the request (availability over the limit).
    FailOpen,
    /// Deny the request, with a retry-after of one emission interval × cost.
    FailClosed,
    /// Ask an in-process limiter with the same limit: each process then admits up to the
    /// whole limit on its own.
    Local,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    limiter: String,
    result: &'static str,
}

/// Builder for [`RateLimiter`].
///
/// ```
/// use keel_coord::{MemoryStore, rate::{FailurePolicy, RateLimiter}};
/// use keel_metrics::MetricsService;
///
/// let metrics = MetricsService::new("myapp").unwrap();
/// let limiter = RateLimiter::builder(MemoryStore::new())
///     .name("login")                                // the `limiter` label
///     .on_store_failure(FailurePolicy::FailClosed)  // deny while the store is down
///     .metrics(&metrics)
///     .build();
/// assert_eq!(limiter.policy(), FailurePolicy::FailClosed);
/// ```
pub struct RateLimiterBuilder {
    store: Arc<dyn RateStore>,
    name: String,
    policy: FailurePolicy,
    metrics: Option<MetricsService>,
}

impl fmt::Debug for RateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimiterBuilder {
    /// The limiter's name, the `limiter` label of its metrics (default `default`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What to answer when the store fails (default [`FailurePolicy::Error`]).
    #[must_use]
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The registry for `<ns>_rate_limit_decisions_total` (default: the global one).
    #[must_use]
    pub fn metrics(mut self, metrics: &MetricsService) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// The limiter.
    pub fn build(self) -> RateLimiter {
        let registry = self
            .metrics
            .unwrap_or_else(|| MetricsService::global().clone());
        let decisions: Family<RateLabels, Counter> = registry
            .get_or_register(
                "rate_limit_decisions",
                "Rate limit decisions by result",
                Family::default,
            )
            .unwrap_or_default();
        let counter = |result| {
            decisions
                .get_or_create(&RateLabels {
                    limiter: self.name.clone(),
                    result,
                })
                .clone()
        };
        let counters = Counters {
            allowed: counter("allowed"),
            limited: counter("limited"),
            failed_open: counter("failed_open"),
            failed_closed: counter("failed_closed"),
            fallback_allowed: counter("fallback_allowed"),
            fallback_limited: counter("fallback_limited"),
            error: counter("error"),
        };
        RateLimiter {
            inner: Arc::new(Inner {
                store: self.store,
                fallback: (self.policy == FailurePolicy::Local).then(MemoryStore::new),
                policy: self.policy,
                counters,
            }),
        }
    }
}

struct Counters {
    allowed: Counter,
    limited: Counter,
    failed_open: Counter,
    failed_closed: Counter,
    fallback_allowed: Counter,
    fallback_limited: Counter,
    error: Counter,
}

struct Inner {
    store: Arc<dyn RateStore>,
    policy: FailurePolicy,
    fallback: Option<MemoryStore>,
    counters: Counters,
}

/// Rate limits on one [`RateStore`]. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter on `store` with the defaults (name `default`, [`FailurePolicy::Error`],
    /// the global metrics registry).
    pub fn new(store: impl RateStore) -> Self {
        Self::builder(store).build()
    }

    /// A builder for a limiter on `store`.
    pub fn builder(store: impl RateStore) -> RateLimiterBuilder {
        RateLimiterBuilder {
            store: Arc::new(store),
            name: "default".into(),
            policy: FailurePolicy::Error,
            metrics: None,
        }
    }

    /// The failure policy.
    pub fn policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// Takes `cost` from `key`'s allowance under `limit` if it is there: one atomic step on
    /// the store. Every caller of a key should pass the same limit.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an empty key or one with `{` or `}`; [`Error::InvalidCost`]
    /// for a cost of 0 or above the burst; [`Error::Store`] when the store fails and the
    /// policy is [`FailurePolicy::Error`] (or the failure is not transient).
    pub async fn allow(&self, key: &str, limit: &Limit, cost: u32) -> Result<Decision> {
        check_name(key)?;
        if cost == 0 || cost > limit.burst {
            return Err(Error::InvalidCost {
                key: name_for_error(key),
                cost,
                burst: limit.burst,
                reason: "the cost must be between 1 and the burst",
            });
        }
        let emission = limit.rate.emission_interval();
        let c = &self.inner.counters;
        match self
            .inner
            .store
            .gcra(key, emission, limit.burst, cost)
            .await
        {
            Ok(d) => {
                if d.allowed { &c.allowed } else { &c.limited }.inc();
                Ok(d)
            }
            Err(e) if e.is_transient() => self.on_failure(key, limit, cost, e).await,
            Err(e) => {
                c.error.inc();
                Err(e)
            }
        }
    }

    async fn on_failure(&self, key: &str, limit: &Limit, cost: u32, e: Error) -> Result<Decision> {
        let c = &self.inner.counters;
        let emission = limit.rate.emission_interval();
        let degraded = |allowed: bool, retry_after: Duration| Decision {
            allowed,
            remaining: 0,
            retry_after,
            reset_after: Duration::ZERO,
            degraded: true,
        };
        match (self.inner.policy, &self.inner.fallback) {
            (FailurePolicy::FailOpen, _) => {
                c.failed_open.inc();
                Ok(degraded(true, Duration::ZERO))
            }
            (FailurePolicy::FailClosed, _) => {
                c.failed_closed.inc();
                Ok(degraded(false, emission.saturating_mul(cost)))
            }
            (FailurePolicy::Local, Some(local)) => {
                let mut d = local.gcra(key, emission, limit.burst, cost).await?;
                d.degraded = true;
                if d.allowed {
                    &c.fallback_allowed
                } else {
                    &c.fallback_limited
                }
                .inc();
                Ok(d)
            }
            _ => {
                c.error.inc();
                Err(e)
            }
        }
    }
}
