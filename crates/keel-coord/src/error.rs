use std::time::Duration;

/// Everything that can go wrong in `keel-coord`. Variants carry the lock, election or
/// semaphore name involved; store failures keep the store's own error
/// ([`keel_cache::Error`]: timeouts, an unreachable server, denied credentials).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name is empty or contains `{` or `}` (names become a Redis Cluster hash tag).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name (cut to 128 characters).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The TTL is outside the accepted range.
    #[error("invalid ttl {ttl:?} for {name:?}: {reason}")]
    InvalidTtl {
        /// The lock or semaphore name.
        name: String,
        /// The rejected duration.
        ttl: Duration,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A semaphore's permit count is zero or too large.
    #[error("invalid permit count {permits} for semaphore {name:?}: {reason}")]
    InvalidPermits {
        /// The semaphore name.
        name: String,
        /// The rejected count.
        permits: u32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A rate or a rate limit is invalid: a zero count, burst or period, a rate above one
    /// request per microsecond, an unparsable rate such as `10/x`.
    #[error("invalid rate limit {input:?}: {reason}")]
    InvalidRate {
        /// The rejected input (the rate text, or the rate and burst).
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A rate limit request's cost is zero or above the limit's burst (it could never pass).
    #[error("invalid cost {cost} for rate limit key {key:?} with burst {burst}: {reason}")]
    InvalidCost {
        /// The rate limit key.
        key: String,
        /// The rejected cost.
        cost: u32,
        /// The limit's burst.
        burst: u32,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// `Locker::lock` waited its whole `wait` without getting the lock.
    #[error("lock {lock:?} still held by someone else after waiting {waited:?}")]
    LockTimeout {
        /// The lock name.
        lock: String,
        /// How long it waited.
        waited: Duration,
    },
    /// `Semaphore::acquire` waited its whole `wait` without a free permit.
    #[error("semaphore {name:?} had no free permit (of {permits}) after waiting {waited:?}")]
    SemaphoreTimeout {
        /// The semaphore name.
        name: String,
        /// The semaphore's permit count.
        permits: u32,
        /// How long it waited.
        waited: Duration,
    },
    /// An election's timing or identity is invalid (lease > renew deadline > 1.2 x retry
    /// period; a non-empty identity without `|`).
    #[error("invalid election: {0}")]
    InvalidElection(String),
    /// The store failed: timeout, unreachable, denied, a closed store, a bad config.
    #[error(transparent)]
    Store(#[from] keel_cache::Error),
}

impl Error {
    /// Whether the request may have been applied although it failed (see
    /// [`keel_cache::Error::is_outcome_unknown`]).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_outcome_unknown())
    }

    /// Whether this is a failure of the connection or the server that may pass by itself
    /// (see [`keel_cache::Error::is_transient`]); every other error is permanent for that
    /// request.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_transient())
    }

    /// A store that timed out, could not be reached or lost an attempt's reply (the
    /// attempt's token is released in the background), retried by waiting callers (`lock`,
    /// `acquire`) until their wait runs out.
    pub(crate) fn is_retried_while_waiting(&self) -> bool {
        matches!(
            self,
            Error::Store(
                keel_cache::Error::Timeout { .. }
                    | keel_cache::Error::Unavailable { .. }
                    | keel_cache::Error::OutcomeUnknown { .. }
            )
        )
    }
}

/// Names in errors are cut so a huge name cannot flood a log line.
pub(crate) fn name_for_error(name: &str) -> String {
    const MAX: usize = 128;
    if name.len() <= MAX {
        return name.to_owned();
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// Rounds up to a whole, non-zero number of milliseconds (the stores count in ms).
pub(crate) fn round_up_to_millis(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Lock and semaphore names become a Cluster hash tag `{name}`: braces inside would change
/// the slot, and an empty name is a mistake.
pub(crate) fn check_name(name: &str) -> crate::Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidName {
            name: String::new(),
            reason: "names must not be empty",
        });
    }
    if name.contains(['{', '}']) {
        return Err(Error::InvalidName {
            name: name_for_error(name),
            reason: "names must not contain '{' or '}'",
        });
    }
    Ok(())
}
