//! Mapping redis-rs errors to [`Error`]: denied, timeout, unavailable, and for writes
//! `OutcomeUnknown` (a write whose connection dropped after it may have been sent).

use super::*;

/// Wrong credentials or a permission the ACL does not grant.
pub(super) fn is_denied(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOPERM" | "WRONGPASS" | "NOAUTH"))
}

/// Whether a Cluster answer proves the request did not run (a redirect, or the node refusing
/// work for now), so re-sending it cannot apply it twice.
pub(super) fn refused_before_running(e: &RedisError) -> bool {
    use redis::RetryMethod as M;
    matches!(
        e.retry_method(),
        M::MovedRedirect | M::AskRedirect | M::WaitAndRetry | M::RefreshSlotsAndRetry
    ) && e.code().is_some()
}

impl Shared {
    /// Maps the error of a write: a connection that dropped after the request may have been
    /// sent is [`Error::OutcomeUnknown`] (a refused connection is not: nothing was sent).
    pub(super) fn write_error(&self, op: Operation, e: &RedisError) -> Error {
        self.write_error_in(op.as_str(), e)
    }

    /// [`write_error`](Self::write_error) for requests outside the cache operations.
    pub(super) fn write_error_in(&self, operation: &'static str, e: &RedisError) -> Error {
        let mapped = self.error_in(operation, e);
        if matches!(mapped, Error::Unavailable { .. })
            && !e.is_connection_refusal()
            && (e.is_connection_dropped() || e.is_io_error())
        {
            return Error::OutcomeUnknown {
                cache: self.name.clone(),
                operation,
                reason: crate::config::redact_urls(&e.to_string()),
            };
        }
        mapped
    }

    /// Maps a client error, and remembers whether the server was reachable.
    pub(super) fn error(&self, op: Operation, e: &RedisError) -> Error {
        self.error_in(op.as_str(), e)
    }

    /// Like [`error`](Self::error) for requests outside the cache operations (`"lock"`).
    pub(super) fn error_in(&self, operation: &'static str, e: &RedisError) -> Error {
        let cache = self.name.clone();
        let readonly = e.code() == Some("READONLY");
        if readonly || e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
            // In Sentinel mode the master may have moved (a demoted master answers READONLY).
            self.resolve.store(true, Ordering::Release);
        }
        if is_denied(e) {
            return Error::Denied {
                cache,
                operation,
                message: crate::config::redact_urls(&e.to_string()),
            };
        }
        if refused_before_running(e) && !readonly {
            // A request redirected or refused (in Cluster mode until its time was up): it did
            // not run, so this is neither a timeout nor an unknown outcome.
            return Error::Unavailable {
                cache,
                operation,
                reason: format!(
                    "the server refused the request (slot migration, failover or loading in \
                     progress): {}",
                    crate::config::redact_urls(&e.to_string())
                ),
            };
        }
        if readonly {
            self.healthy.store(false, Ordering::Relaxed);
            return Error::Unavailable {
                cache,
                operation,
                reason: "the server is a read-only replica (failover in progress)".into(),
            };
        }
        if e.is_timeout() {
            self.healthy.store(false, Ordering::Relaxed);
            Error::Timeout {
                cache,
                operation,
                after: self.response_timeout,
            }
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            self.healthy.store(false, Ordering::Relaxed);
            Error::Unavailable {
                cache,
                operation,
                reason: crate::config::redact_urls(&e.to_string()),
            }
        } else {
            Error::Backend {
                cache,
                operation,
                message: crate::config::redact_urls(&e.to_string()),
            }
        }
    }
}
