//! Deadlines: how an entry's expiry is stored, read and swept.
//!
//! An entry's deadline is a `u64` in ticks of the process clock (the TSC through
//! [`quanta::Clock::raw`] where it is invariant, else the monotonic clock in nanoseconds),
//! with `u64::MAX` meaning "never": eight bytes per entry instead of sixteen for an
//! `Option<Instant>`, an entry without a TTL is recognised without reading the clock, and one
//! with a TTL costs a raw counter read and a compare — no scaling to nanoseconds, which is
//! done only where a duration is wanted (a TTL turned into a deadline on a write, a `ttl()`
//! answer, a timed call). Expired entries are treated as absent by every read, removed by the
//! read that finds them, and otherwise by the background sweep ([`Sweeper`]); whoever removes
//! one counts it once in `<ns>_cache_evictions_total{cause="expired"}`.

use std::sync::{Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

/// "Never expires".
pub(super) const NEVER: u64 = u64::MAX;

/// The process clock and its tick rate.
struct Clock {
    clock: quanta::Clock,
    /// Ticks per nanosecond, fixed point with 32 fractional bits.
    ticks_per_ns_q32: u128,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let clock = quanta::Clock::new();
        // quanta scales raw ticks to nanoseconds but has no inverse: measure the rate on a
        // span long enough (2^40 ticks: minutes) that rounding is far below a nanosecond a
        // second.
        const PROBE: u64 = 1 << 40;
        let ns = clock.delta_as_nanos(0, PROBE).max(1);
        Clock {
            clock,
            ticks_per_ns_q32: (u128::from(PROBE) << 32) / u128::from(ns),
        }
    })
}

/// The clock now, in ticks.
#[inline]
pub(super) fn now() -> u64 {
    clock().clock.raw()
}

/// `d` in ticks (saturating at [`NEVER`]` - 1`).
#[inline]
pub(super) fn ticks(d: Duration) -> u64 {
    let t = (d.as_nanos().saturating_mul(clock().ticks_per_ns_q32)) >> 32;
    u64::try_from(t).unwrap_or(NEVER - 1).min(NEVER - 1)
}

/// The time from tick `start` to tick `end` (zero if `end` is not after `start`).
#[inline]
pub(super) fn between(start: u64, end: u64) -> Duration {
    Duration::from_nanos(clock().clock.delta_as_nanos(start, end))
}

/// The clock a cache's deadlines are written and checked on (fixed per cache: the units
/// differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DeadlineClock {
    /// [`now`]: the TSC's raw ticks; exact.
    Precise,
    /// The kernel's `CLOCK_MONOTONIC_COARSE` in nanoseconds: a read is a few memory loads
    /// (~6 ns on this project's KVM guests against ~20 ns for the TSC), but the clock moves
    /// only once a kernel tick (1–10 ms), so an entry can be served up to two ticks after its
    /// deadline (never before it: see [`deadline`](Self::deadline)). Off Linux, the precise
    /// clock.
    Coarse,
}

impl DeadlineClock {
    /// The clock now, in this clock's units.
    #[inline]
    pub(super) fn now(self) -> u64 {
        match self {
            DeadlineClock::Precise => now(),
            DeadlineClock::Coarse => coarse_now(),
        }
    }

    /// `d` in this clock's units (saturating at [`NEVER`]` - 1`).
    #[inline]
    pub(super) fn ticks(self, d: Duration) -> u64 {
        match self {
            DeadlineClock::Precise => ticks(d),
            DeadlineClock::Coarse if COARSE_IS_NANOS => u64::try_from(d.as_nanos())
                .unwrap_or(NEVER - 1)
                .min(NEVER - 1),
            DeadlineClock::Coarse => ticks(d),
        }
    }

    /// The time from `start` to `end`, both in this clock's units.
    #[inline]
    pub(super) fn between(self, start: u64, end: u64) -> Duration {
        match self {
            DeadlineClock::Precise => between(start, end),
            DeadlineClock::Coarse if COARSE_IS_NANOS => {
                Duration::from_nanos(end.saturating_sub(start))
            }
            DeadlineClock::Coarse => between(start, end),
        }
    }

    /// The deadline `ttl` after `now` (`None`: never). A TTL is at most [`crate::MAX_TTL`]
    /// (100 years); a deadline that would pass [`NEVER`] is kept just below it. On the coarse
    /// clock one tick is added: `now` may lag the true time by up to a tick, and an entry
    /// must never expire early, only (up to two ticks) late.
    #[inline]
    pub(super) fn deadline(self, now: u64, ttl: Option<Duration>) -> u64 {
        let slack = match self {
            DeadlineClock::Coarse if COARSE_IS_NANOS => coarse_tick(),
            _ => 0,
        };
        match ttl {
            None => NEVER,
            Some(d) => now
                .saturating_add(self.ticks(d))
                .saturating_add(slack)
                .min(NEVER - 1),
        }
    }
}

/// Whether [`DeadlineClock::Coarse`] reads the kernel's coarse clock (else it is the precise
/// one).
const COARSE_IS_NANOS: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
#[inline]
fn coarse_now() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    // The coarse clock exists on every Linux since 2.6.32; were it refused, the precise
    // monotonic clock has the same epoch (boot), so deadlines stay comparable.
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        .map_or(0, |t| nanos(t.tv_sec(), t.tv_nsec()))
}

#[cfg(target_os = "linux")]
fn nanos(sec: i64, nsec: i64) -> u64 {
    u64::try_from(sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(nsec).unwrap_or(0))
}

/// The coarse clock's resolution (one kernel tick) in nanoseconds.
#[cfg(target_os = "linux")]
fn coarse_tick() -> u64 {
    static TICK: OnceLock<u64> = OnceLock::new();
    *TICK.get_or_init(|| {
        use nix::time::{ClockId, clock_getres};
        // 10 ms (HZ = 100, the coarsest kernel tick) if the resolution cannot be read.
        clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
            .map_or(10_000_000, |t| nanos(t.tv_sec(), t.tv_nsec()))
    })
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn coarse_now() -> u64 {
    now()
}

#[cfg(not(target_os = "linux"))]
fn coarse_tick() -> u64 {
    0
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

    fn deadline(now: u64, ttl: Option<Duration>) -> u64 {
        DeadlineClock::Precise.deadline(now, ttl)
    }

    #[test]
    fn deadlines() {
        let now = now();
        assert_eq!(deadline(now, None), NEVER);
        assert!(!passed(NEVER, u64::MAX - 1));
        let d = deadline(now, Some(Duration::from_millis(5)));
        assert!(!passed(d, d - 1));
        assert!(passed(d, d));
        // Ticks and nanoseconds convert back and forth to within a microsecond a second.
        let back = between(now, d);
        assert!(
            back.abs_diff(Duration::from_millis(5)) < Duration::from_micros(1),
            "{back:?}"
        );
        let hour = ticks(Duration::from_secs(3600));
        let back = between(now, now + hour);
        assert!(
            back.abs_diff(Duration::from_secs(3600)) < Duration::from_millis(4),
            "{back:?}"
        );
        assert_eq!(
            deadline(u64::MAX - 10, Some(Duration::from_secs(1))),
            NEVER - 1
        );
        assert_eq!(ticks(Duration::MAX), NEVER - 1);
        // The coarse clock converts exactly and moves forward too.
        let c = DeadlineClock::Coarse;
        let start = c.now();
        // Five milliseconds and one tick of slack: never early.
        assert_eq!(
            c.between(start, c.deadline(start, Some(Duration::from_millis(5)))),
            Duration::from_millis(5) + Duration::from_nanos(coarse_tick())
        );
        std::thread::sleep(Duration::from_millis(30));
        assert!(passed(
            c.deadline(start, Some(Duration::from_millis(1))),
            c.now()
        ));
        // The clock moves forward.
        let later = {
            std::thread::sleep(Duration::from_millis(2));
            super::now()
        };
        assert!(passed(deadline(now, Some(Duration::from_millis(1))), later));
    }
}
