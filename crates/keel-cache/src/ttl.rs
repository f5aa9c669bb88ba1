//! Expiry settings for writes and what a key's remaining lifetime is.

use std::time::Duration;

use crate::error::key_for_error;
use crate::{Error, Result};

/// How long a written value lives. Always explicit, so "no expiry" can never happen by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The cache's configured default TTL (`options.defaultTTL`); no expiry if none is set.
    #[default]
    Default,
    /// Never expires.
    Never,
    /// Expires after this long. Durations are rounded **up** to whole milliseconds (the
    /// resolution of Redis `PX`), so anything below 1 ms, zero included, becomes 1 ms rather
    /// than "no expiry".
    After(Duration),
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Self {
        Ttl::After(d)
    }
}

/// The longest TTL accepted: far beyond any cache use, and safely inside Redis' `i64`
/// milliseconds and `Instant` arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Ttl {
    /// Resolves `Default` against the cache's default and rounds up to whole milliseconds.
    /// `None` means no expiry.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a duration above [`MAX_TTL`].
    pub fn resolve(self, default: Option<Duration>, key: &str) -> Result<Option<Duration>> {
        let d = match self {
            Ttl::Never => return Ok(None),
            Ttl::Default => match default {
                Some(d) => d,
                None => return Ok(None),
            },
            Ttl::After(d) => d,
        };
        if d > MAX_TTL {
            return Err(Error::InvalidTtl {
                key: key_for_error(key),
                ttl: d,
                reason: "longer than 100 years",
            });
        }
        Ok(Some(round_up_to_millis(d)))
    }
}

/// Rounds up to a whole, non-zero number of milliseconds.
pub(crate) fn round_up_to_millis(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A key's remaining lifetime, as reported by `Cache::ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key does not exist (or has expired).
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_millisecond_rounds_up_never_to_no_expiry() {
        let r = |t: Ttl| t.resolve(None, "k").unwrap();
        assert_eq!(
            r(Ttl::After(Duration::ZERO)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            r(Ttl::After(Duration::from_nanos(1))),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            r(Ttl::After(Duration::from_micros(1500))),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            r(Ttl::After(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(r(Ttl::Never), None);
        assert_eq!(r(Ttl::Default), None);
        assert_eq!(
            Ttl::Default
                .resolve(Some(Duration::from_secs(300)), "k")
                .unwrap(),
            Some(Duration::from_secs(300))
        );
        assert!(matches!(
            Ttl::After(Duration::MAX).resolve(None, "k"),
            Err(Error::InvalidTtl { .. })
        ));
    }
}
