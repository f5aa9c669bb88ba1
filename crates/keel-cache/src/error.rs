use std::time::Duration;

/// Everything that can go wrong in `keel-cache`. Variants carry the key or cache name involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty or longer than the backend's limit.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key (cut to 128 characters).
        key: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The value is larger than the configured `max_value_bytes`.
    #[error("value for key {key:?} is {size} bytes, over the limit of {max} bytes")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The TTL cannot be represented (too far in the future).
    #[error("invalid ttl {ttl:?} for key {key:?}: {reason}")]
    InvalidTtl {
        /// The key.
        key: String,
        /// The rejected duration.
        ttl: Duration,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// `incr_by`/`decr_by` on a value that is not a base-10 `i64`.
    #[error("value at key {key:?} is not an integer")]
    NotAnInteger {
        /// The key.
        key: String,
    },
    /// `incr_by`/`decr_by` would leave the `i64` range; the value is unchanged.
    #[error("adding {delta} to key {key:?} overflows a 64-bit integer; the value is unchanged")]
    Overflow {
        /// The key.
        key: String,
        /// The requested change.
        delta: i64,
    },
    /// The cache was closed; call `connect()` to reopen it.
    #[error("cache {cache:?} is closed")]
    Closed {
        /// The cache name.
        cache: String,
    },
    /// A stored value could not be decoded as, or a value encoded from, the requested type.
    #[error("value at key {key:?} could not be encoded or decoded: {source}")]
    Codec {
        /// The key.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The `type` of a cache config is not one this build knows.
    #[error("unknown cache type {got:?}; valid types are: {valid}")]
    UnknownType {
        /// The rejected type.
        got: String,
        /// The valid types, comma separated.
        valid: String,
    },
    /// A config field has a bad value.
    #[error("invalid cache config field `{field}`: {reason}")]
    InvalidConfig {
        /// The field (dotted path).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `get_or_load` loader failed (the error reaches every caller waiting for that load;
    /// nothing is cached).
    #[error("loading key {key:?} failed: {message}")]
    Load {
        /// The key.
        key: String,
        /// The loader's error message.
        message: String,
    },
    /// A config document could not be parsed.
    #[error("cannot parse {format} cache config: {message}")]
    Parse {
        /// `toml`, `yaml` or `json`.
        format: &'static str,
        /// The parser's message (with line and column where it gives them).
        message: String,
    },
    /// A config file could not be read.
    #[error("cannot read cache config {path}: {source}")]
    ConfigFile {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A cache with this name is already registered with the manager.
    #[error("a cache named {name:?} is already registered")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// `Manager::close_all` could not close some caches; all others were closed.
    #[error("closing {} cache(s) failed: {}", failures.len(), describe(failures))]
    CloseAll {
        /// Each failing cache's name and error.
        failures: Vec<(String, Error)>,
    },
    /// The server did not answer within the response timeout.
    #[error("cache {cache:?}: {operation} timed out after {after:?}")]
    Timeout {
        /// The cache name.
        cache: String,
        /// The operation.
        operation: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The server cannot be reached (refused, dropped, not yet reconnected).
    #[error("cache {cache:?}: server unavailable during {operation}: {reason}")]
    Unavailable {
        /// The cache name.
        cache: String,
        /// The operation.
        operation: &'static str,
        /// What the client reported.
        reason: String,
    },
    /// A write was sent but its answer never came (the connection dropped after sending):
    /// it may or may not have been applied, and it was **not** re-sent (an `incr_by` re-sent
    /// after running would count twice). Read the key to find out, or retry only if applying
    /// twice is harmless. A [`Timeout`](Error::Timeout) of a write is unknown in the same way:
    /// [`Error::is_outcome_unknown`] covers both.
    #[error("cache {cache:?}: outcome of {operation} unknown (not retried): {reason}")]
    OutcomeUnknown {
        /// The cache name.
        cache: String,
        /// The operation.
        operation: &'static str,
        /// What the client reported.
        reason: String,
    },
    /// The server refused the credentials or the user's permissions (ACL) for this command.
    #[error("cache {cache:?}: {operation} denied: {message}")]
    Denied {
        /// The cache name.
        cache: String,
        /// The operation.
        operation: &'static str,
        /// The server's message (never the password).
        message: String,
    },
    /// The server answered with an error this crate does not map to another variant.
    #[error("cache {cache:?}: {operation} failed: {message}")]
    Backend {
        /// The cache name.
        cache: String,
        /// The operation.
        operation: &'static str,
        /// The server's or client's message.
        message: String,
    },
    /// The metrics registry rejected the configuration (e.g. a bad namespace).
    #[error(transparent)]
    Metrics(#[from] keel_metrics::Error),
}

impl Error {
    /// Whether the operation may have been applied although it failed: an
    /// [`OutcomeUnknown`](Error::OutcomeUnknown) or a [`Timeout`](Error::Timeout) (the
    /// request may still run after the client gave up). Such a write is never re-sent by
    /// Keel; re-sending it is the caller's choice.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. } | Error::Timeout { .. })
    }

    /// Whether this is a failure of the connection or the server that may pass by itself
    /// ([`Timeout`](Error::Timeout), [`Unavailable`](Error::Unavailable),
    /// [`OutcomeUnknown`](Error::OutcomeUnknown)): the same request may succeed later. Every
    /// other error is permanent for that request (bad input, configuration, permissions, a
    /// closed cache). A transient write error may still have been applied: check
    /// [`is_outcome_unknown`](Self::is_outcome_unknown) before re-sending a write.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Unavailable { .. } | Error::OutcomeUnknown { .. }
        )
    }

    /// Whether a write that failed with this error may still have been applied by the server
    /// (a timeout, a dropped connection, an answer this crate could not interpret): the caller
    /// cannot tell, so anything cached from before the write must be dropped. Validation
    /// errors, `Closed`, `Denied` and the counter errors are refusals: nothing was written.
    pub(crate) fn may_have_applied(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::OutcomeUnknown { .. }
                | Error::Unavailable { .. }
                | Error::Backend { .. }
        )
    }
}

fn describe(failures: &[(String, Error)]) -> String {
    failures
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keys in errors are cut so a huge key cannot flood a log line.
pub(crate) fn key_for_error(key: &str) -> String {
    const MAX: usize = 128;
    if key.len() <= MAX {
        return key.to_owned();
    }
    let mut end = MAX;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

impl From<keel_config::Error> for Error {
    fn from(e: keel_config::Error) -> Self {
        match e {
            keel_config::Error::Parse { format, message } => Self::Parse { format, message },
            keel_config::Error::File { path, source } => Self::ConfigFile { path, source },
            other => Self::InvalidConfig {
                field: "path".into(),
                reason: other.to_string(),
            },
        }
    }
}
