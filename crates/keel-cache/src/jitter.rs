//! TTL jitter: a random shortening of a TTL, so entries a fleet fills at the same moment do not
//! all expire at the same moment either.

use std::cell::Cell;
use std::time::Duration;

use crate::{Error, Result};

/// A TTL jitter: each jittered TTL is shortened by a uniformly random fraction in
/// `[0, fraction)` of itself. It only ever shortens, so a jittered entry never outlives the
/// TTL that was asked for (the staleness bounds built on TTLs still hold).
///
/// ```
/// use std::time::Duration;
/// use keel_cache::Jitter;
///
/// let jitter = Jitter::parse("10%").unwrap();
/// let ttl = jitter.apply(Duration::from_secs(100));
/// assert!(ttl <= Duration::from_secs(100) && ttl > Duration::from_secs(90));
/// assert!(Jitter::parse("150%").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    fraction: f64,
}

impl Jitter {
    /// A jitter of `percent` percent (`0.0 <= percent < 100.0`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (field `ttl_jitter`) outside that range or not a number.
    pub fn percent(percent: f64) -> Result<Self> {
        if !(0.0..100.0).contains(&percent) {
            return Err(Error::InvalidConfig {
                field: "ttl_jitter".into(),
                reason: format!("{percent}% is not a jitter: use 0% up to (not including) 100%"),
            });
        }
        Ok(Self {
            fraction: percent / 100.0,
        })
    }

    /// Parses `"10%"`, `"2.5%"` (the `%` is required, so `"10"` is not mistaken for a
    /// fraction or a duration).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (field `ttl_jitter`) for anything else, or a percentage
    /// outside `[0, 100)`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::InvalidConfig {
            field: "ttl_jitter".into(),
            reason: format!("invalid jitter {text:?}: use a percentage such as \"10%\""),
        };
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
        let percent: f64 = number.trim().parse().map_err(|_| bad())?;
        Self::percent(percent)
    }

    /// The jitter as a fraction of the TTL (0.1 for 10%).
    pub fn fraction(self) -> f64 {
        self.fraction
    }

    /// `ttl` shortened by a random fraction in `[0, fraction)` of itself (never below 1 ms
    /// when `ttl` is at least that).
    pub fn apply(self, ttl: Duration) -> Duration {
        if self.fraction == 0.0 || ttl.is_zero() {
            return ttl;
        }
        let cut = ttl.mul_f64(self.fraction * unit_random());
        ttl.saturating_sub(cut)
            .max(ttl.min(Duration::from_millis(1)))
    }
}

thread_local! {
    /// Per-thread splitmix64 state, seeded from the OS once per thread (0: not yet seeded).
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// A uniform number in `[0, 1)`; not for secrets, only for spreading expiries.
fn unit_random() -> f64 {
    STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            let mut seed = [0u8; 8];
            // Without OS randomness, a per-thread address still spreads threads apart.
            if getrandom::fill(&mut seed).is_err() {
                seed = (state as *const Cell<u64> as usize as u64).to_le_bytes();
            }
            s = u64::from_le_bytes(seed) | 1;
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits as a double in [0, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_percentages_and_rejects_the_rest() {
        assert_eq!(Jitter::parse("10%").unwrap().fraction(), 0.1);
        assert_eq!(Jitter::parse(" 2.5 % ").unwrap().fraction(), 0.025);
        assert_eq!(Jitter::parse("0%").unwrap().fraction(), 0.0);
        for bad in ["10", "abc%", "-1%", "100%", "150%", "NaN%", ""] {
            assert!(
                matches!(Jitter::parse(bad), Err(Error::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_shortens_and_spreads() {
        let jitter = Jitter::percent(20.0).unwrap();
        let ttl = Duration::from_secs(100);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let t = jitter.apply(ttl);
            assert!(t <= ttl && t > Duration::from_secs(80), "{t:?}");
            seen.insert(t.as_millis() / 1000);
        }
        // 1000 draws over a 20 s range land in most of its 1 s buckets.
        assert!(seen.len() >= 15, "{seen:?}");
        assert_eq!(Jitter::percent(0.0).unwrap().apply(ttl), ttl);
    }
}
