//! GCRA (the generic cell rate algorithm) as plain arithmetic on microseconds, and the
//! in-process table [`MemoryStore`](super::memory::MemoryStore) keeps its theoretical arrival
//! times in. The Redis script (`redis/scripts.rs`, `GCRA`) does the same steps in Lua on the
//! server's clock; the two must stay in step.
//!
//! Per key the store keeps one number, the theoretical arrival time `tat` (a missing or past
//! `tat` counts as now). With emission interval `e` (period / count) and burst `b`, a request
//! of cost `n` would move it to `new = max(tat, now) + n·e`; it is allowed when
//! `new - b·e <= now`, and then `tat = new` is stored until `new` (after which it is the
//! same as missing, so the key may vanish).

use std::collections::HashMap;
use std::time::Duration;

use crate::rate::Decision;

/// One GCRA step at `now` (µs) on the stored `tat` (µs, `None` if missing); returns the
/// decision and, when allowed, the new `tat` to store.
pub(crate) fn step(
    now: u64,
    tat: Option<u64>,
    emission_us: u64,
    burst: u32,
    cost: u32,
) -> (Decision, Option<u64>) {
    // i128: no overflow for any u64 time and u32 counts, and `allow_at` may be negative.
    let (now, e) = (i128::from(now), i128::from(emission_us.max(1)));
    let tat = tat.map_or(now, i128::from).max(now);
    let new_tat = tat + e * i128::from(cost);
    let allow_at = new_tat - e * i128::from(burst);
    let us = |v: i128| u64::try_from(v).unwrap_or(u64::MAX);
    if allow_at > now {
        let decision = Decision::from_store(false, 0, us(allow_at - now), us(tat - now));
        return (decision, None);
    }
    let remaining = u32::try_from((now - allow_at) / e).unwrap_or(u32::MAX);
    let decision = Decision::from_store(true, remaining, 0, us(new_tat - now));
    (decision, Some(us(new_tat)))
}

/// Keys -> theoretical arrival time (µs on the table's own monotonic clock). Entries whose
/// `tat` has passed are dropped by a sweep that runs when the table has doubled since the
/// last one, so idle keys do not pile up.
pub(crate) struct GcraTable {
    epoch: std::time::Instant,
    tats: HashMap<String, u64>,
    next_sweep: usize,
}

impl Default for GcraTable {
    fn default() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            tats: HashMap::new(),
            next_sweep: 1024,
        }
    }
}

impl GcraTable {
    /// Microseconds since the table was made.
    fn now(&self) -> u64 {
        let d: Duration = self.epoch.elapsed();
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
    }

    /// One atomic GCRA step for `key` (the caller holds the table's lock).
    pub(crate) fn allow(&mut self, key: &str, emission_us: u64, burst: u32, cost: u32) -> Decision {
        let now = self.now();
        let tat = self.tats.get(key).copied();
        let (decision, new_tat) = step(now, tat, emission_us, burst, cost);
        if let Some(t) = new_tat {
            match self.tats.get_mut(key) {
                Some(slot) => *slot = t,
                None => {
                    self.tats.insert(key.to_owned(), t);
                }
            }
            if self.tats.len() >= self.next_sweep {
                self.tats.retain(|_, t| *t > now);
                self.next_sweep = (self.tats.len() * 2).max(1024);
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_key_admits_the_burst_then_one_per_interval() {
        let e = 100_000; // 10/s
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..30 {
            let (d, t) = step(1_000_000, tat, e, 20, 1);
            if let Some(t) = t {
                tat = Some(t);
                allowed += 1;
                assert!(d.allowed);
            } else {
                assert_eq!(d.retry_after, Duration::from_millis(100));
            }
        }
        assert_eq!(allowed, 20);
        // 350 ms later: three more intervals have passed.
        let mut later = 0;
        for _ in 0..10 {
            let (_, t) = step(1_350_000, tat, e, 20, 1);
            if let Some(t) = t {
                tat = Some(t);
                later += 1;
            }
        }
        assert_eq!(later, 3);
    }

    #[test]
    fn remaining_and_reset_count_down() {
        let (d, t) = step(0, None, 1_000, 5, 2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        assert_eq!(d.reset_after, Duration::from_millis(2));
        let (d, _) = step(0, t, 1_000, 5, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Duration::from_millis(1));
        assert_eq!(d.reset_after, Duration::from_millis(2));
    }

    #[test]
    fn the_table_sweeps_idle_keys() {
        let mut t = GcraTable::default();
        for batch in 0..20 {
            for i in 0..500 {
                t.allow(&format!("k{batch}:{i}"), 1, 1, 1);
            }
            // Every key of this batch is idle (its tat passed) after this.
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(t.tats.len() <= 2048 + 500, "{} keys kept", t.tats.len());
    }
}
