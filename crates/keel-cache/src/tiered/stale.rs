//! Stale-if-error: while L2 is unreachable, L1 entries are served up to a window past their
//! L1 expiry instead of the error.
//!
//! With a window `w`, an L2 hit fills L1 for `fill + w` (`fill` = `min(l1_ttl, L2 TTL)`,
//! jittered if asked). A read while L2 answers treats an entry with `w` or less left as a
//! miss (so nothing is served past `fill` while L2 is healthy); a read whose L2 request fails
//! with a transient error (timeout, unreachable, outcome unknown) gets the L1 entry if one is
//! left, counted in `tiered_stale_served_total`, and the error otherwise. When the
//! invalidation connection drops, L1 is kept (bypassed for reads L2 can answer) instead of
//! flushed; it is flushed on resubscription, and on the first L2 read that succeeds after a
//! stale serve not yet covered by a resubscription flush (invalidations may have been missed
//! either way). Every L2 answer updates L1, subscribed or not: a hit overwrites the copy, a
//! miss deletes it, so an outage never serves a copy L2 has already shown outdated.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{TieredCache, Touched};
use crate::{Error, Result};

impl TieredCache {
    /// The L1 lookup with a stale window: an entry with more than `window` left is a hit;
    /// one with less is kept for outages and is a miss here.
    pub(super) fn read_l1_fresh(
        &self,
        key: &str,
        window: Duration,
    ) -> Option<Result<Option<Bytes>>> {
        let i = &self.inner;
        match i.l1.get_fresh_uncounted(key, window) {
            Ok(Some((v, true))) => {
                i.metrics.l1_hits.inc();
                Some(Ok(Some(v)))
            }
            Ok(_) => {
                i.metrics.l1_misses.inc();
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// L2 failed with `error` (transient): the L1 entry if one is left, else the error.
    pub(super) fn serve_stale(&self, key: &str, error: Error) -> Result<Option<Bytes>> {
        let i = &self.inner;
        match i.l1.get_uncounted(key) {
            Ok(Some(v)) => {
                i.degraded.store(true, Ordering::Release);
                i.metrics.stale_served.inc();
                Ok(Some(v))
            }
            _ => {
                i.metrics.stale_missing.inc();
                Err(error)
            }
        }
    }

    /// An L2 read succeeded: if stale values were served since the last one, flush L1 (what
    /// it holds may have been changed behind an invalidation this node never got).
    pub(super) fn recovered(&self) {
        let i = &self.inner;
        if i.degraded.load(Ordering::Relaxed) && i.degraded.swap(false, Ordering::AcqRel) {
            self.drop_local(&Touched::All);
        }
    }

    /// How long an L2 hit with `fill` left for L1 stays in L1: jittered if asked, plus the
    /// stale window. Zero stays zero (nothing to keep).
    pub(super) fn l1_lifetime(&self, fill: Duration) -> Duration {
        let i = &self.inner;
        if fill.is_zero() {
            return fill;
        }
        let fill = match i.jitter {
            Some(jitter) if jitter.fraction() > 0.0 => {
                i.metrics.jittered_fills.inc();
                jitter.apply(fill)
            }
            _ => fill,
        };
        fill + i.stale_if_error.unwrap_or_default()
    }
}
