//! Structured logging for Keel services: the record model and its formatters.
//!
//! This first part of the crate holds what every sink shares: [`Level`], [`Field`] /
//! [`Value`], [`Record`], and the two [`Format`]s — a human text line
//! `<time> [<LEVEL>] <logger>: <message> k=v …` and one flat JSON object per line. Both redact
//! secret-looking keys ([`is_secret_key`]) and never write control characters raw. Sinks
//! (console, rotating file, Elasticsearch), the logger manager and the `tracing`/`log` bridges
//! build on these.
//!
//! ```
//! use keel_log::{Format, JsonFormat, Level, Record, field};
//!
//! let record = Record::new(Level::Info, "app", "user logged in")
//!     .with(vec![field("user_id", 123), field("password", "hunter2")]);
//! let mut line = Vec::new();
//! JsonFormat.format(&record, &mut line);
//! let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
//! assert_eq!(v["user_id"], 123);
//! assert_eq!(v["password"], "[REDACTED]");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod format;
mod record;

pub use format::{Format, JsonFormat, REDACTED, TextFormat, is_secret_key};
pub use record::{Field, Level, ParseLevelError, Record, Value, field};
