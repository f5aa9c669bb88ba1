//! Sampling, after zap's sampler: per logger, per (level, message), the first `first` records
//! of every `tick` are written, then every `thereafter`-th; the rest are sampled away.
//!
//! Nothing is lost silently: every record sampled away is counted in
//! `<ns>_log_sampled_total{logger,level}`, and the logger writes an in-band record
//! `"<N> similar records sampled"` (level of the records it stands for, fields `sampled = N`
//! and `sampled_message`) before the next record of the same (level, message) that passes,
//! and for every (level, message) with a count left when the logger is flushed or shut down.
//! Summed over the in-band reports, after a flush, N equals the metric.
//!
//! Messages are hashed into a fixed table of counters per level (no allocation per message;
//! atomics, plus a lock only when the first record after a report is sampled away and leaves
//! its message): two messages that share a slot share its budget, as in
//! zap. `Fatal` is never sampled.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::record::Level;

/// Counter slots per level.
const SLOTS: usize = 512;
/// Levels sampled (Debug..=Error).
const LEVELS: usize = 4;

/// A sampling policy: per `tick`, the first `first` records of each (level, message), then
/// every `thereafter`-th (0: none after the first `first`).
///
/// ```
/// use std::time::Duration;
/// use keel_log::Sampling;
///
/// let s = Sampling::new(Duration::from_secs(1), 100, 100);
/// assert_eq!((s.tick, s.first, s.thereafter), (Duration::from_secs(1), 100, 100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sampling {
    /// The window the counts are kept for (at least 1 ms).
    pub tick: Duration,
    /// Records of one (level, message) written per tick before sampling starts.
    pub first: u64,
    /// After `first`, every `thereafter`-th record is written; 0 writes none.
    pub thereafter: u64,
}

impl Sampling {
    /// A policy; a `tick` below 1 ms is raised to 1 ms.
    pub fn new(tick: Duration, first: u64, thereafter: u64) -> Self {
        Self {
            tick: tick.max(Duration::from_millis(1)),
            first,
            thereafter,
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The tick (in ticks since the sampler's epoch, low 32 bits) in the high half, and the
    /// records of that tick counted so far (saturating) in the low half: one value, so a
    /// new tick and its first count are set by one compare-exchange and no concurrent count
    /// is overwritten.
    state: AtomicU64,
    /// Sampled away and not yet reported in-band.
    unreported: AtomicU64,
    /// The message the unreported records carried (set by the first of them).
    message: Mutex<Option<Cow<'static, str>>>,
}

/// What the logger does with a record.
pub(crate) enum Decision {
    /// Write it; first write a report of `n` sampled-away records with `message`.
    Pass(Option<(u64, Cow<'static, str>)>),
    /// Sampled away (already counted).
    Drop,
}

/// A logger's sampler. The policy can be changed in place (reload); the counter table is
/// allocated the first time sampling is on.
pub(crate) struct Sampler {
    active: AtomicBool,
    tick_nanos: AtomicU64,
    first: AtomicU64,
    thereafter: AtomicU64,
    epoch: Instant,
    slots: OnceLock<Box<[Slot]>>,
    /// `<ns>_log_sampled_total{logger,level}` for Debug..=Error.
    sampled: [Counter; LEVELS],
}

fn fnv1a(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Sampler {
    pub(crate) fn new(sampled: [Counter; LEVELS]) -> Self {
        Self {
            active: AtomicBool::new(false),
            tick_nanos: AtomicU64::new(1),
            first: AtomicU64::new(0),
            thereafter: AtomicU64::new(0),
            epoch: Instant::now(),
            slots: OnceLock::new(),
            sampled,
        }
    }

    /// Turns sampling on with `policy`, or off (the caller then reports what [`drain`]
    /// returns).
    pub(crate) fn set(&self, policy: Option<Sampling>) {
        match policy {
            Some(p) => {
                self.slots
                    .get_or_init(|| (0..SLOTS * LEVELS).map(|_| Slot::default()).collect());
                let nanos = u64::try_from(p.tick.as_nanos()).unwrap_or(u64::MAX).max(1);
                self.tick_nanos.store(nanos, Ordering::Relaxed);
                self.first.store(p.first, Ordering::Relaxed);
                self.thereafter.store(p.thereafter, Ordering::Relaxed);
                self.active.store(true, Ordering::Release);
            }
            None => self.active.store(false, Ordering::Release),
        }
    }

    /// The current policy.
    pub(crate) fn get(&self) -> Option<Sampling> {
        self.active.load(Ordering::Acquire).then(|| Sampling {
            tick: Duration::from_nanos(self.tick_nanos.load(Ordering::Relaxed)),
            first: self.first.load(Ordering::Relaxed),
            thereafter: self.thereafter.load(Ordering::Relaxed),
        })
    }

    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Decides about a record of `level` with `message` (call only when active).
    // A `Cow`, not a `&str`: the first record sampled away keeps a clone, and a `'static`
    // literal stays borrowed.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn decide(&self, level: Level, message: &Cow<'static, str>) -> Decision {
        let (Some(slots), true) = (self.slots.get(), level < Level::Fatal) else {
            return Decision::Pass(None);
        };
        let index = level as usize * SLOTS + (fnv1a(message) % SLOTS as u64) as usize;
        let slot = &slots[index];
        let elapsed = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Only equality with the slot's tick matters: keeping the low 32 bits is enough.
        #[allow(clippy::cast_possible_truncation)]
        let now = (elapsed / self.tick_nanos.load(Ordering::Relaxed) + 1) as u32;
        let (_, n) = count_in(&slot.state, now);
        let first = self.first.load(Ordering::Relaxed);
        let thereafter = self.thereafter.load(Ordering::Relaxed);
        let pass = n <= first || (thereafter > 0 && (n - first).is_multiple_of(thereafter));
        if pass {
            if slot.unreported.load(Ordering::Relaxed) == 0 {
                return Decision::Pass(None);
            }
            return Decision::Pass(
                take(slot).map(|(n, kept)| (n, kept.unwrap_or_else(|| message.clone()))),
            );
        }
        self.sampled[level as usize].inc();
        // Only the first record sampled away since the last report takes the lock to leave
        // its message; the rest of a storm only counts.
        if slot.unreported.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut kept = slot.message.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.is_none() {
                *kept = Some(message.clone());
            }
        }
        Decision::Drop
    }

    /// Every unreported count, by level, with its message (for the reports at flush, and
    /// when sampling is turned off).
    pub(crate) fn drain(&self) -> Vec<(Level, u64, Cow<'static, str>)> {
        let Some(slots) = self.slots.get() else {
            return Vec::new();
        };
        let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];
        slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.unreported.load(Ordering::Relaxed) > 0)
            .filter_map(|(i, s)| take_with_message(s).map(|(n, m)| (levels[i / SLOTS], n, m)))
            .collect()
    }
}

/// Counts one record of tick `now` in a packed (tick, count) `state`; returns the tick it was
/// counted in and its number there (1 for the first). A record whose `now` is older than the
/// slot's tick (its thread was preempted between reading the clock and counting) counts in
/// the slot's tick: it never restarts a window that has moved on.
fn count_in(state: &AtomicU64, now: u32) -> (u32, u64) {
    let mut current = state.load(Ordering::Relaxed);
    loop {
        #[allow(clippy::cast_possible_truncation)]
        let (tick, count) = ((current >> 32) as u32, current as u32);
        // Ticks wrap: `tick` is newer when it is less than half the range ahead.
        #[allow(clippy::cast_possible_wrap)]
        let stale = (tick.wrapping_sub(now) as i32) > 0 && count > 0;
        let (tick, n) = if tick == now || stale {
            (tick, count.saturating_add(1))
        } else {
            (now, 1)
        };
        let next = (u64::from(tick) << 32) | u64::from(n);
        match state.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return (tick, u64::from(n)),
            Err(actual) => current = actual,
        }
    }
}

/// Takes a slot's unreported count and the message left with it. The message can be
/// missing when the first record of the count has not stored it yet (it then stays for the
/// next report); the caller falls back to the message it has.
fn take(slot: &Slot) -> Option<(u64, Option<Cow<'static, str>>)> {
    let mut kept = slot.message.lock().unwrap_or_else(PoisonError::into_inner);
    let n = slot.unreported.swap(0, Ordering::Relaxed);
    if n == 0 {
        return None;
    }
    Some((n, kept.take()))
}

/// What a report says when the message of its records was not left in time (the first of
/// them counted but had not stored it yet): never an empty `sampled_message`.
const MESSAGE_NOT_KEPT: &str = "(message not kept)";

/// [`take`] for a caller without a message of its own (a flush): when the first record of
/// the count has not stored its message yet, gives it a moment (it is between its count and
/// the lock), then falls back to [`MESSAGE_NOT_KEPT`].
fn take_with_message(slot: &Slot) -> Option<(u64, Cow<'static, str>)> {
    for _ in 0..1000 {
        {
            let mut kept = slot.message.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.is_some() {
                let n = slot.unreported.swap(0, Ordering::Relaxed);
                return (n > 0).then(|| (n, kept.take().unwrap_or_default()));
            }
            if slot.unreported.load(Ordering::Relaxed) == 0 {
                return None;
            }
        }
        std::thread::yield_now();
    }
    take(slot).map(|(n, m)| (n, m.unwrap_or(Cow::Borrowed(MESSAGE_NOT_KEPT))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(first: u64, thereafter: u64) -> Sampler {
        let s = Sampler::new(Default::default());
        s.set(Some(Sampling::new(
            Duration::from_secs(3600),
            first,
            thereafter,
        )));
        s
    }

    #[test]
    fn first_n_then_every_mth_per_level_and_message() {
        let s = sampler(3, 4);
        let storm: Cow<'static, str> = "connection refused".into();
        let passed: Vec<usize> = (1..=20)
            .filter(|_| matches!(s.decide(Level::Error, &storm), Decision::Pass(_)))
            .collect();
        assert_eq!(passed.len(), 3 + 17 / 4);
        // Another message and another level have their own budget.
        assert!(matches!(
            s.decide(Level::Error, &"other".into()),
            Decision::Pass(None)
        ));
        assert!(matches!(
            s.decide(Level::Warn, &storm),
            Decision::Pass(None)
        ));
        assert!(matches!(
            s.decide(Level::Fatal, &storm),
            Decision::Pass(None)
        ));
        let sampled: u64 = s.sampled.iter().map(Counter::get).sum();
        assert_eq!(sampled, 20 - 7);
    }

    #[test]
    fn reports_carry_every_sampled_record_once() {
        let s = sampler(1, 5);
        let m: Cow<'static, str> = "storm".into();
        let mut reported = 0;
        for _ in 0..103 {
            if let Decision::Pass(Some((n, message))) = s.decide(Level::Info, &m) {
                assert_eq!(message, "storm");
                reported += n;
            }
        }
        reported += s.drain().iter().map(|(_, n, _)| n).sum::<u64>();
        assert_eq!(reported, s.sampled[Level::Info as usize].get());
        assert_eq!(reported, 103 - 1 - 102 / 5);
        assert!(s.drain().is_empty());
    }

    #[test]
    fn a_new_tick_starts_a_new_budget_and_reports_the_last_one() {
        let s = Sampler::new(Default::default());
        s.set(Some(Sampling::new(Duration::from_millis(1), 1, 0)));
        let m: Cow<'static, str> = "tick".into();
        let (mut passed, mut reported) = (0, 0);
        // However the calls fall into ticks on a loaded machine, the counts add up.
        for _ in 0..1000 {
            if let Decision::Pass(report) = s.decide(Level::Warn, &m) {
                passed += 1;
                reported += report.map_or(0, |(n, _)| n);
            }
        }
        assert!(passed >= 1);
        let dropped = s.sampled[Level::Warn as usize].get();
        assert_eq!(passed + dropped, 1000);
        // Sleeping longer than a tick ends the window: the next record passes and carries
        // the report of what the last window sampled away.
        std::thread::sleep(Duration::from_millis(20));
        match s.decide(Level::Warn, &m) {
            Decision::Pass(report) => reported += report.map_or(0, |(n, _)| n),
            Decision::Drop => panic!("the first record of a tick passes"),
        }
        assert_eq!(reported, dropped);
    }

    #[test]
    fn concurrent_counts_at_tick_changes_are_exact() {
        // Threads count while the tick moves on under them (some with a tick read before it
        // moved): in every tick the numbers handed out are exactly 1..=k, none lost to a
        // reset and none given twice, so no more than `first` records of a tick can pass.
        let state = AtomicU64::new(0);
        let tick = std::sync::atomic::AtomicU32::new(1);
        const PER_THREAD: usize = 20_000;
        let seen: Vec<Vec<(u32, u64)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..PER_THREAD)
                            .map(|i| {
                                // Each worker moves the tick on now and then, so ticks
                                // change while the others count.
                                if i % 300 == 299 {
                                    tick.fetch_add(1, Ordering::Relaxed);
                                }
                                let now = tick.load(Ordering::Relaxed);
                                std::hint::spin_loop();
                                count_in(&state, now)
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut by_tick: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
        for (t, n) in seen.into_iter().flatten() {
            by_tick.entry(t).or_default().push(n);
        }
        let mut total = 0;
        for (t, mut ns) in by_tick {
            ns.sort_unstable();
            let k = ns.len() as u64;
            assert!(ns.iter().copied().eq(1..=k), "tick {t}: {ns:?}");
            total += k;
        }
        assert_eq!(total, 4 * PER_THREAD as u64);
    }

    #[test]
    fn a_report_never_has_an_empty_message() {
        let s = sampler(1, 0);
        let m: Cow<'static, str> = "kept".into();
        for _ in 0..3 {
            s.decide(Level::Info, &m);
        }
        // The state a flush can meet: counted, the message not stored yet.
        let slot = s
            .slots
            .get()
            .unwrap()
            .iter()
            .find(|slot| slot.unreported.load(Ordering::Relaxed) > 0);
        let slot = slot.unwrap();
        slot.message.lock().unwrap().take();
        slot.unreported.fetch_add(1, Ordering::Relaxed);
        let drained = s.drain();
        assert_eq!(drained.len(), 1);
        let (level, n, message) = &drained[0];
        assert_eq!((*level, *n), (Level::Info, 3));
        assert!(!message.is_empty());
        assert_eq!(message, MESSAGE_NOT_KEPT);
    }

    #[test]
    fn thereafter_zero_drops_all_after_first_and_off_passes_everything() {
        let s = sampler(2, 0);
        let m: Cow<'static, str> = "x".into();
        let passed = (0..10)
            .filter(|_| matches!(s.decide(Level::Debug, &m), Decision::Pass(_)))
            .count();
        assert_eq!(passed, 2);
        s.set(None);
        assert!(!s.is_active());
        assert_eq!(s.get(), None);
    }
}
