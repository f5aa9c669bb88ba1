//! Logging macros that check the level before they build anything.
//!
//! `logger.debug("msg", &[field("k", v)])` builds its fields before the call, so a disabled
//! call still pays for them; `keel_log::debug!(logger, "msg", k = v)` checks the level first
//! and costs a disabled call one load and a compare (BENCHMARKS.md, "disabled call").

/// Logs at a level given as an expression, building the message and fields only when the
/// level is enabled: `keel_log::log!(logger, Level::Warn, "disk {}% full", pct; path = p)`.
///
/// The message is a literal, or a format string with arguments (then it is formatted only
/// when enabled); fields follow a `;` as `key = value` (the key is an identifier and
/// becomes the field's key).
///
/// ```
/// use keel_log::{Level, Logger};
///
/// let log = Logger::new("svc", Level::Info, Vec::new());
/// let pct = 93;
/// keel_log::log!(log, Level::Warn, "disk {}% full", pct; path = "/var");
/// keel_log::info!(log, "request served"; method = "GET", status = 200);
/// keel_log::debug!(log, "not built: debug is off"; expensive = format!("{:?}", vec![1; 1000]));
/// keel_log::error!(log, "plain");
/// ```
#[macro_export]
macro_rules! log {
    ($logger:expr, $level:expr, $msg:literal $(; $($key:ident = $value:expr),* $(,)?)?) => {{
        let logger = &$logger;
        let level = $level;
        if logger.enabled(level) {
            logger.log(level, $msg, &[$($($crate::field(stringify!($key), $value)),*)?]);
        }
    }};
    ($logger:expr, $level:expr, $fmt:literal, $($arg:expr),+ $(; $($key:ident = $value:expr),* $(,)?)?) => {{
        let logger = &$logger;
        let level = $level;
        if logger.enabled(level) {
            logger.log(
                level,
                ::std::format!($fmt, $($arg),+),
                &[$($($crate::field(stringify!($key), $value)),*)?],
            );
        }
    }};
}

/// [`log!`] at `Debug`: `keel_log::debug!(logger, "msg"; k = v)`.
#[macro_export]
macro_rules! debug {
    ($logger:expr, $($rest:tt)+) => { $crate::log!($logger, $crate::Level::Debug, $($rest)+) };
}

/// [`log!`] at `Info`: `keel_log::info!(logger, "msg"; k = v)`.
#[macro_export]
macro_rules! info {
    ($logger:expr, $($rest:tt)+) => { $crate::log!($logger, $crate::Level::Info, $($rest)+) };
}

/// [`log!`] at `Warn`: `keel_log::warn!(logger, "msg"; k = v)`.
#[macro_export]
macro_rules! warn {
    ($logger:expr, $($rest:tt)+) => { $crate::log!($logger, $crate::Level::Warn, $($rest)+) };
}

/// [`log!`] at `Error`: `keel_log::error!(logger, "msg"; k = v)`.
#[macro_export]
macro_rules! error {
    ($logger:expr, $($rest:tt)+) => { $crate::log!($logger, $crate::Level::Error, $($rest)+) };
}
