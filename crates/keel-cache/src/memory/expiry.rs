//! Deadlines: how an entry's expiry is stored, read and swept.
//!
//! An entry's deadline is a `u64` of nanoseconds since a process-wide epoch on the TSC clock
//! (`quanta`), with `u64::MAX` meaning "never": eight bytes per entry instead of sixteen for an
//! `Option<Instant>`, and an entry without a TTL is recognised without reading the clock.
//! Expired entries are treated as absent by every read, removed by the read that finds them,
//! and otherwise by the background sweep ([`Sweeper`]); whoever removes one counts it once in
//! `<ns>_cache_evictions_total{cause="expired"}`.

use std::sync::{Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use quanta::Instant;

/// "Never expires".
pub(super) const NEVER: u64 = u64::MAX;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the epoch at `t` (saturating; `t` is never before the epoch in practice,
/// the epoch being taken before any deadline is computed).
#[inline]
pub(super) fn nanos_at(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(NEVER - 1)
}

/// Nanoseconds since the epoch, now.
#[inline]
pub(super) fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// The deadline `ttl` after `now` (`None`: never). A TTL is at most [`crate::MAX_TTL`]
/// (100 years, 3.2e18 ns), so this never reaches [`NEVER`] within 480 years of uptime.
#[inline]
pub(super) fn deadline(now: u64, ttl: Option<Duration>) -> u64 {
    match ttl {
        None => NEVER,
        Some(d) => now
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(NEVER))
            .min(NEVER - 1),
    }
}

/// Whether a deadline has passed at `now`.
#[inline]
pub(super) fn passed(deadline: u64, now: u64) -> bool {
    deadline != NEVER && deadline <= now
}

/// What the background sweep asks of a cache.
pub(super) trait Sweep: Send + Sync {
    /// Removes the expired entries (each counted once); a bounded pass, one shard lock at a time.
    fn sweep(&self);
}

/// How often the background thread sweeps the caches that hold entries with a TTL.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One process-wide thread (`keel-memory-sweep`) that, every [`SWEEP_EVERY`], sweeps every
/// live memory cache. It holds caches weakly: a dropped cache drops out of the list, and the
/// thread costs nothing but a wake-up a second when no cache needs sweeping.
pub(super) struct Sweeper {
    caches: Mutex<Vec<Weak<dyn Sweep>>>,
}

impl Sweeper {
    fn global() -> &'static Sweeper {
        static SWEEPER: OnceLock<&'static Sweeper> = OnceLock::new();
        SWEEPER.get_or_init(|| {
            let sweeper: &'static Sweeper = Box::leak(Box::new(Sweeper {
                caches: Mutex::new(Vec::new()),
            }));
            // If the thread cannot be spawned, expired entries are still never served and
            // are removed by reads, by eviction and by each metrics render; only their
            // memory is reclaimed later.
            let _ = std::thread::Builder::new()
                .name("keel-memory-sweep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(SWEEP_EVERY);
                        sweeper.run();
                    }
                });
            sweeper
        })
    }

    /// Registers a cache for the background sweep.
    pub(super) fn register(cache: Weak<dyn Sweep>) {
        let s = Self::global();
        s.caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cache);
    }

    fn run(&self) {
        // Upgrade under the list's lock, sweep outside it (registering never waits on a sweep).
        let live: Vec<_> = {
            let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
            caches.retain(|w| w.strong_count() > 0);
            caches.iter().filter_map(Weak::upgrade).collect()
        };
        for cache in live {
            cache.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let now = now_nanos();
        assert_eq!(deadline(now, None), NEVER);
        assert!(!passed(NEVER, u64::MAX - 1));
        let d = deadline(now, Some(Duration::from_millis(5)));
        assert_eq!(d, now + 5_000_000);
        assert!(!passed(d, d - 1));
        assert!(passed(d, d));
        assert_eq!(
            deadline(u64::MAX - 10, Some(Duration::from_secs(1))),
            NEVER - 1
        );
    }
}
