//! Stale-while-revalidate for [`Loader`]: a value past its refresh age is returned at once
//! while one refresh per key runs (in the background with
//! [`Loader::get_or_revalidate`]); a failed refresh keeps the old value, is counted, and is
//! retried with backoff.

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::MetricsService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use tokio::sync::watch;

use super::{FlightGuard, LoadOptions, Loader, LoaderLabels, NEGATIVE_MARKER, Outcome};
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

/// The longest wait between two refresh attempts of a key whose refreshes keep failing.
pub const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(60);

/// How many refreshes of one [`Loader`] may run at once (one per key), and how many keys'
/// failure backoffs are remembered. A due key found with the running set full is served
/// without a refresh, counted in `<ns>_cache_loader_refreshes_skipped_total`; a remembered
/// backoff may be evicted past this many failing keys (that key's next failure starts at
/// [`LoadOptions::refresh_backoff`] again).
pub const MAX_REFRESH_KEYS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    cache: String,
    result: &'static str,
}

/// A key whose last refresh failed: no new attempt before `not_before`; the wait after its
/// next failure is `next`.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    not_before: Instant,
    next: Duration,
}

/// How many keys' "not due before" times are remembered (see [`Refreshes::due`]).
const DUE_MEMO_KEYS: usize = 10_000;

/// The per-key refresh states of one [`Loader`] and its refresh metrics.
pub(super) struct Refreshes {
    /// Keys whose refresh runs now, at most [`MAX_REFRESH_KEYS`] (an entry leaves when its
    /// refresh ends, however it ends). Every check and update of `backoffs` that decides a
    /// slot happens under this lock.
    running: Mutex<HashSet<String>>,
    /// Keys whose last refresh failed, bounded (quick_cache evicts in O(1): an evicted key
    /// loses its backoff, never its running slot).
    backoffs: quick_cache::sync::Cache<String, Backoff>,
    /// When a key's value falls due for refresh, as last computed from its remaining TTL:
    /// until then a hit needs no `ttl` call (on a tiered cache that is a Redis round trip).
    /// A value replaced meanwhile only falls due later (a fresh write) or is read anyway
    /// (`get` comes first), so a stale memo at worst delays a refresh, never a value.
    due: quick_cache::sync::Cache<String, Instant>,
    stale_served: Counter,
    ok: Counter,
    failed: Counter,
    skipped: Counter,
    pub(super) jittered: Counter,
}

impl Refreshes {
    pub(super) fn new(metrics: &MetricsService, labels: &LoaderLabels) -> Self {
        let stale: Family<LoaderLabels, Counter> = metrics
            .get_or_register(
                "cache_loader_stale_served",
                "Values past their refresh age returned by get_or_load (stale-while-revalidate)",
                Family::default,
            )
            .unwrap_or_default();
        let refreshes: Family<ResultLabels, Counter> = metrics
            .get_or_register(
                "cache_loader_refreshes",
                "Stale-while-revalidate refreshes by result (ok, error)",
                Family::default,
            )
            .unwrap_or_default();
        let skipped: Family<LoaderLabels, Counter> = metrics
            .get_or_register(
                "cache_loader_refreshes_skipped",
                "Due refreshes not started because the loader's running refreshes were at their bound",
                Family::default,
            )
            .unwrap_or_default();
        let jittered: Family<LoaderLabels, Counter> = metrics
            .get_or_register(
                "cache_loader_jittered_writes",
                "Loaded values written with a jittered TTL",
                Family::default,
            )
            .unwrap_or_default();
        let result = |r| ResultLabels {
            cache: labels.cache.clone(),
            result: r,
        };
        Self {
            running: Mutex::new(HashSet::new()),
            backoffs: quick_cache::sync::Cache::new(MAX_REFRESH_KEYS),
            due: quick_cache::sync::Cache::new(DUE_MEMO_KEYS),
            stale_served: stale.get_or_create_owned(labels),
            ok: refreshes.get_or_create_owned(&result("ok")),
            failed: refreshes.get_or_create_owned(&result("error")),
            skipped: skipped.get_or_create_owned(labels),
            jittered: jittered.get_or_create_owned(labels),
        }
    }
}

/// The right to run the one refresh of a key; gives it back however the refresh ends. A
/// refresh that ends unfinished (its task cancelled, its loader panicked) counts as failed:
/// the key backs off like after an error.
pub(super) struct Slot {
    refreshes: Arc<Refreshes>,
    key: String,
    base_backoff: Duration,
    /// When the value read before the refresh ends (its remaining TTL at read time): a failed
    /// refresh may hand that value back only before then.
    deadline: Option<Instant>,
    done: bool,
}

impl Slot {
    /// Gives the slot back without a result (another load of the key runs).
    fn release(mut self) {
        self.done = true;
        let r = &self.refreshes;
        r.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }

    /// Whether the value read before the refresh may still be served.
    fn value_alive(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d)
    }

    fn finish(mut self, ok: bool) {
        self.done = true;
        self.end(ok);
    }

    fn end(&self, ok: bool) {
        let r = &self.refreshes;
        let mut running = r.running.lock().unwrap_or_else(PoisonError::into_inner);
        if ok {
            r.ok.inc();
            r.backoffs.remove(&self.key);
        } else {
            r.failed.inc();
            let wait = r
                .backoffs
                .get(&self.key)
                .map_or(self.base_backoff, |b| b.next);
            r.backoffs.insert(
                self.key.clone(),
                Backoff {
                    not_before: Instant::now() + wait,
                    next: wait
                        .saturating_mul(2)
                        .min(MAX_REFRESH_BACKOFF.max(self.base_backoff)),
                },
            );
        }
        running.remove(&self.key);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.done {
            // Cancelled or panicked before it finished: a failure (backoff), so a loader that
            // panics is not retried on every hit.
            self.end(false);
        }
    }
}

/// Whether a value with `remaining` TTL is past `refresh_after` under `options`: its age is
/// read as `ttl - remaining`, so only `Ttl::After` values have one.
pub(super) fn past_refresh_age(options: &LoadOptions, remaining: KeyTtl) -> bool {
    let (Some(after), Ttl::After(ttl), KeyTtl::Expires(left)) =
        (options.stale_while_revalidate, options.ttl, remaining)
    else {
        return false;
    };
    ttl.saturating_sub(left) >= after
}

/// How long until a value with `remaining` TTL (not yet due) falls due.
fn until_due(options: &LoadOptions, remaining: KeyTtl) -> Option<Duration> {
    let (Some(after), Ttl::After(ttl), KeyTtl::Expires(left)) =
        (options.stale_while_revalidate, options.ttl, remaining)
    else {
        return None;
    };
    Some(left.saturating_sub(ttl.saturating_sub(after)))
}

impl Loader {
    /// `get_or_load` for loaders that may run in the background (`Send + 'static`): with
    /// [`LoadOptions::stale_while_revalidate`] set, a value past its refresh age is returned
    /// at once and refreshed by a spawned task, one per key at a time (and one across nodes
    /// with [`LoadOptions::lock`]). A failed refresh keeps the old value (it is served until
    /// its TTL ends), is counted in `<ns>_cache_loader_refreshes_total{result="error"}`, and
    /// the next attempt waits [`LoadOptions::refresh_backoff`], doubled after each failure
    /// (at most [`MAX_REFRESH_BACKOFF`]); a refresh that ends unfinished (cancelled, or its
    /// loader panicked) counts as failed. A refresh whose loader finds nothing deletes the
    /// key (or writes the negative marker if asked). At most [`MAX_REFRESH_KEYS`] refreshes
    /// run at once; past that a due value is served without one (counted). A running refresh
    /// is the key's load flight: a miss meanwhile waits for it. Misses load inline exactly as
    /// [`get_or_load`].
    ///
    /// Must be called inside a Tokio runtime (the refresh is spawned on it).
    ///
    /// # Errors
    /// As [`get_or_load`]: a miss whose load fails, a zero refresh backoff
    /// ([`Error::InvalidConfig`]), cache errors. A failed background refresh never reaches a
    /// caller.
    ///
    /// [`get_or_load`]: Loader::get_or_load
    pub async fn get_or_revalidate<F, Fut, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        loader: F,
    ) -> Result<Option<Bytes>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        if options.stale_while_revalidate.is_some() {
            super::check(options)?;
            match self.cache.get(key).await? {
                Some(v) if v == NEGATIVE_MARKER => return Ok(None),
                Some(v) => {
                    let (due, slot) = self.claim_refresh(key, options).await;
                    if due {
                        self.refreshes.stale_served.inc();
                    }
                    if let Some(slot) = slot {
                        let (this, key, options) = (self.clone(), key.to_owned(), options.clone());
                        tokio::spawn(async move {
                            let _ = this.refresh(slot, &key, &options, loader).await;
                        });
                    }
                    return Ok(Some(v));
                }
                None => {}
            }
        }
        self.get_or_load(key, options, loader).await
    }

    /// The hit path of `get_or_load` under stale-while-revalidate: `value` itself unless it
    /// is past its refresh age and this caller wins the key's refresh slot, which then
    /// refreshes inline and gets the new value (`None` if the loader now finds nothing), or
    /// `value` again if the refresh failed while `value`'s TTL (as read before the refresh)
    /// has not ended — past it, the load error: a value is never served past its TTL.
    pub(super) async fn serve_or_refresh_inline<F, Fut, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        value: Bytes,
        loader: Option<F>,
    ) -> Result<Option<Bytes>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>>,
        E: Display,
    {
        let Some(load) = loader else {
            return Ok(Some(value));
        };
        let (due, slot) = self.claim_refresh(key, options).await;
        let Some(slot) = slot else {
            if due {
                self.refreshes.stale_served.inc();
            }
            return Ok(Some(value));
        };
        match self.refresh(slot, key, options, load).await {
            Refreshed::Loaded(answer) => Ok(answer),
            Refreshed::Failed(true, _) | Refreshed::Busy(true, _) => {
                self.refreshes.stale_served.inc();
                Ok(Some(value))
            }
            Refreshed::Failed(_, e) => Err(e),
            Refreshed::Busy(_, rx) => match super::wait_flight(key, rx).await {
                Some(answer) => answer,
                None => Err(Error::Load {
                    key: crate::error::key_for_error(key),
                    message: "the value expired and the concurrent load of it was cancelled".into(),
                }),
            },
        }
    }

    /// Whether `key`'s value is past its refresh age, and this caller's right to refresh it
    /// now: no slot when it is not due, another refresh of it runs, or a failed one's backoff
    /// has not passed.
    async fn claim_refresh(&self, key: &str, options: &LoadOptions) -> (bool, Option<Slot>) {
        if self
            .refreshes
            .due
            .get(key)
            .is_some_and(|at| Instant::now() < at)
        {
            return (false, None);
        }
        // Taken before asking: the store measured the remaining TTL at or after this, so
        // `asked + remaining` is never later than the real expiry.
        let asked = Instant::now();
        let Ok(remaining) = self.cache.ttl(key).await else {
            return (false, None);
        };
        if !past_refresh_age(options, remaining) {
            if let Some(wait) = until_due(options, remaining) {
                self.refreshes
                    .due
                    .insert(key.to_owned(), Instant::now() + wait);
            }
            return (false, None);
        }
        let r = &self.refreshes;
        let mut running = r.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.contains(key)
            || r.backoffs
                .get(key)
                .is_some_and(|b| Instant::now() < b.not_before)
        {
            return (true, None);
        }
        if running.len() >= MAX_REFRESH_KEYS {
            r.skipped.inc();
            return (true, None);
        }
        running.insert(key.to_owned());
        let slot = Slot {
            refreshes: self.refreshes.clone(),
            key: key.to_owned(),
            base_backoff: options.refresh_backoff,
            deadline: match remaining {
                KeyTtl::Expires(left) => Some(asked + left),
                _ => None,
            },
            done: false,
        };
        (true, Some(slot))
    }

    /// Runs one refresh under `slot` (the same path as a miss's load: the cross-process lock
    /// if configured, a second look at the cache, the loader, the write). The refresh is a
    /// flight of the key like a miss's load, so a miss meanwhile waits for it instead of
    /// loading again; if a miss's load already runs, the slot is given back (`Busy`). A
    /// "not found" answer deletes the key (or writes the negative marker if asked).
    pub(super) async fn refresh<F, Fut, E>(
        &self,
        slot: Slot,
        key: &str,
        options: &LoadOptions,
        load: F,
    ) -> Refreshed
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>>,
        E: Display,
    {
        let tx = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(rx) = flights.get(key) {
                let rx = rx.clone();
                drop(flights);
                let alive = slot.value_alive();
                slot.release();
                return Refreshed::Busy(alive, rx);
            }
            let (tx, rx) = watch::channel(None);
            flights.insert(key.to_owned(), rx);
            tx
        };
        let _guard = FlightGuard {
            flights: &self.flights,
            key,
        };
        let outcome = match self.lead(key, options, load).await {
            // Gone at the source: the old value must not outlive the answer.
            Ok(None) if options.negative_ttl.is_none() => {
                self.cache.delete(key).await.map(|_| None)
            }
            other => other,
        };
        let _ = tx.send(Some(super::shared(&outcome)));
        match outcome {
            Ok(answer) => {
                slot.finish(true);
                Refreshed::Loaded(answer)
            }
            Err(e) => {
                let alive = slot.value_alive();
                slot.finish(false);
                Refreshed::Failed(alive, e)
            }
        }
    }
}

/// How a refresh ended.
pub(super) enum Refreshed {
    /// The loader answered (and the answer was written).
    Loaded(Option<Bytes>),
    /// It failed; whether the value read before it was still alive when it did.
    Failed(bool, Error),
    /// Another load of the key ran: its flight, and whether the old value was still alive.
    Busy(bool, watch::Receiver<Outcome>),
}
