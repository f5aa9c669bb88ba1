//! Stale-while-revalidate for [`Loader`]: a value past its refresh age is returned at once
//! while one refresh per key runs (in the background with
//! [`Loader::get_or_revalidate`]); a failed refresh keeps the old value, is counted, and is
//! retried with backoff.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::MetricsService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use super::{LoadOptions, Loader, LoaderLabels, NEGATIVE_MARKER};
use crate::Result;
use crate::ttl::{KeyTtl, Ttl};

/// The longest wait between two refresh attempts of a key whose refreshes keep failing.
pub const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(60);

/// How many keys' refresh states are kept before those past their backoff are forgotten.
const MAX_FAILED_KEYS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    cache: String,
    result: &'static str,
}

/// One key's refresh state: present while a refresh runs or after one failed.
#[derive(Debug)]
struct State {
    running: bool,
    /// No new attempt before this (set after a failure).
    not_before: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

/// How many keys' "not due before" times are remembered (see [`Refreshes::due`]).
const DUE_MEMO_KEYS: usize = 10_000;

/// The per-key refresh states of one [`Loader`] and its refresh metrics.
pub(super) struct Refreshes {
    states: Mutex<HashMap<String, State>>,
    /// When a key's value falls due for refresh, as last computed from its remaining TTL:
    /// until then a hit needs no `ttl` call (on a tiered cache that is a Redis round trip).
    /// A value replaced meanwhile only falls due later (a fresh write) or is read anyway
    /// (`get` comes first), so a stale memo at worst delays a refresh, never a value.
    due: quick_cache::sync::Cache<String, Instant>,
    stale_served: Counter,
    ok: Counter,
    failed: Counter,
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
            states: Mutex::new(HashMap::new()),
            due: quick_cache::sync::Cache::new(DUE_MEMO_KEYS),
            stale_served: stale.get_or_create_owned(labels),
            ok: refreshes.get_or_create_owned(&result("ok")),
            failed: refreshes.get_or_create_owned(&result("error")),
            jittered: jittered.get_or_create_owned(labels),
        }
    }
}

/// The right to run the one refresh of a key; gives it back however the refresh ends
/// (cancelled included).
pub(super) struct Slot {
    refreshes: Arc<Refreshes>,
    key: String,
    base_backoff: Duration,
    done: bool,
}

impl Slot {
    fn finish(mut self, ok: bool) {
        self.done = true;
        let mut states = self
            .refreshes
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ok {
            self.refreshes.ok.inc();
            states.remove(&self.key);
            return;
        }
        self.refreshes.failed.inc();
        // Failed keys stay until a refresh of them succeeds; keys that are never read again
        // would pile up: past a bound, forget those whose backoff is over (a new failure
        // starts them at the base backoff again).
        if states.len() > MAX_FAILED_KEYS {
            let now = Instant::now();
            states.retain(|_, s| s.running || s.not_before.is_some_and(|t| t > now));
        }
        if let Some(state) = states.get_mut(&self.key) {
            state.running = false;
            state.not_before = Some(Instant::now() + state.backoff);
            state.backoff = state
                .backoff
                .saturating_mul(2)
                .min(MAX_REFRESH_BACKOFF.max(self.base_backoff));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled before it finished: free the slot without a penalty.
        let mut states = self
            .refreshes
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = states.get_mut(&self.key) {
            state.running = false;
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
    /// (at most [`MAX_REFRESH_BACKOFF`]). Misses load inline exactly as [`get_or_load`].
    ///
    /// Must be called inside a Tokio runtime (the refresh is spawned on it).
    ///
    /// # Errors
    /// As [`get_or_load`]: a miss whose load fails, cache errors. A failed background
    /// refresh never reaches a caller.
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
    /// refreshes inline and gets the new value, or `value` again if the refresh failed.
    pub(super) async fn serve_or_refresh_inline<F, Fut, E>(
        &self,
        key: &str,
        options: &LoadOptions,
        value: Bytes,
        loader: Option<F>,
    ) -> Option<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>>,
        E: Display,
    {
        let Some(load) = loader else {
            return Some(value);
        };
        let (due, slot) = self.claim_refresh(key, options).await;
        let Some(slot) = slot else {
            if due {
                self.refreshes.stale_served.inc();
            }
            return Some(value);
        };
        match self.refresh(slot, key, options, load).await {
            Some(Some(new)) => Some(new),
            // The loader found nothing now: the key is gone (negatively cached if asked).
            Some(None) => None,
            None => {
                self.refreshes.stale_served.inc();
                Some(value)
            }
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
        let mut states = self
            .refreshes
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = states.entry(key.to_owned()).or_insert_with(|| State {
            running: false,
            not_before: None,
            backoff: options.refresh_backoff,
        });
        if state.running || state.not_before.is_some_and(|t| Instant::now() < t) {
            return (true, None);
        }
        state.running = true;
        let slot = Slot {
            refreshes: self.refreshes.clone(),
            key: key.to_owned(),
            base_backoff: options.refresh_backoff,
            done: false,
        };
        (true, Some(slot))
    }

    /// Runs one refresh under `slot` (the same path as a miss's load: the cross-process lock
    /// if configured, a second look at the cache, the loader, the write). `Some(answer)` on
    /// success, `None` on failure (counted, backoff set).
    async fn refresh<F, Fut, E>(
        &self,
        slot: Slot,
        key: &str,
        options: &LoadOptions,
        load: F,
    ) -> Option<Option<Bytes>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<Bytes>, E>>,
        E: Display,
    {
        match self.lead(key, options, load).await {
            Ok(answer) => {
                slot.finish(true);
                Some(answer)
            }
            Err(_) => {
                slot.finish(false);
                None
            }
        }
    }
}
