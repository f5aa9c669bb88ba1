//! Structured logging for Keel services: records, formats, loggers, sinks and a manager.
//!
//! [`Level`], [`Field`] / [`Value`] and [`Record`] are the model; two [`Format`]s write a
//! human text line `<time> [<LEVEL>] <logger>: <message> k=v …` or one flat JSON object per
//! line, both redacting secret-looking keys ([`is_secret_key`]) and never writing control
//! characters raw. A [`Logger`] (with `with_fields` children that share its sinks, runtime
//! `set_level`, and `fatal` that flushes then exits through a replaceable hook) writes to
//! non-blocking [`Sink`]s: a [`QueueSink`] is a bounded queue with an [`Overflow`] policy in
//! front of a writer thread, and reports drops in-band. [`Manager`] keeps loggers by name
//! with a default and flushes them when dropped; [`install_panic_hook`] logs a panic and
//! flushes the global manager's loggers before the previous hook runs. [`open`] turns a
//! [`LogConfig`] into a logger. Sinks: console, a rotating [`FileSink`] (size and
//! hourly/daily rotation on a UTC, local or named-zone clock), and (feature `elastic`) an
//! `ElasticSink` for Elasticsearch and OpenSearch (docs/elasticsearch.md); `tracing`/`log`
//! bridges in `bridge` (features `tracing`, `log`). [`EcsFormat`] writes Elastic Common
//! Schema objects (also as the ES sink's documents); [`SyslogSink`] sends RFC 5424 messages
//! to `/dev/log`, UDP or TCP (octet counting) and [`JournaldSink`] native journal entries
//! (docs/syslog-journald.md).
//!
//! Operator controls ([`operator_controls`]): level directives in the EnvFilter syntax per
//! logger and from `KEEL_LOG` ([`Filter`]), applied to the bridges too; sampling per (level,
//! message) that counts and reports what it drops ([`Sampling`]); live reload of a config
//! ([`Manager::reload`], [`Reloader`]); and redaction of URL credentials in messages and
//! values ([`mask_url_credentials`]) on top of secret keys.
//!
//! Records reach their files when they should: a sink's writer flushes when its queue drains
//! and at least every [`FlushPolicy::interval`] (1 s by default; `sync` adds fsync), counts
//! every record exactly once as written, dropped or failed, and a file sink recovers from a
//! deleted file, failed reopens and failed rotations. `fatal` and the panic hook never block
//! past their bound.
//!
//! # Layout
//! - `record`: [`Level`], [`Field`], [`Value`], [`Record`].
//! - `format`: [`TextFormat`], [`JsonFormat`], [`EcsFormat`] (Elastic Common Schema),
//!   redaction, escaping.
//! - `logger`: [`Logger`], children, `fatal` and its hook.
//! - `macros`: [`log!`], [`debug!`], [`info!`], [`warn!`], [`error!`]: the level is checked
//!   before the message and fields are built.
//! - `manager`: [`Manager`], [`global`], [`install_panic_hook`].
//! - `config`: [`LogConfig`] and [`open`]; `config_net`: its syslog and journald part.
//! - `controls`: what a config sets that a reload changes in place ([`SamplingConfig`]).
//! - `filter`: [`Filter`], level directives in the EnvFilter syntax (`KEEL_LOG`).
//! - `sampling`: [`Sampling`], zap's sampler per (level, message), counted and reported.
//! - `reload`: [`Reloader`], live reload of a config file (polling, on demand, SIGHUP with
//!   the `sighup` feature) through [`Manager::reload`].
//! - `sink`: the [`Sink`] trait, [`DeliveryStats`], [`Overflow`], [`FlushPolicy`];
//!   `sink::queue` ([`QueueSink`]); `sink::file` ([`FileSink`]: `rotation` with
//!   [`FileWriter`] and [`Period`], `retention`, `zone` with [`Zone`]).
//!   `sink::elastic` (feature `elastic`: `ElasticSink`: `options`, `state`, `sender`, `bulk`,
//!   `endpoints`, `disk_buffer`, `dead_letter`, `metrics`).
//!   `sink::syslog` ([`SyslogSink`]: RFC 5424 over `/dev/log`, UDP, TCP with octet
//!   counting), `sink::journald` ([`JournaldSink`]: the journal's native protocol),
//!   `sink::transport` (their datagram/TCP writer with reconnects).
//! - `bridge` (features `log`, `tracing`).
//! - [`operator_controls`]: the guide to directives, sampling, live reload and redaction
//!   (docs/log-controls.md, doc-tested).
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

#[cfg(any(feature = "log", feature = "tracing"))]
pub mod bridge;
#[doc = include_str!("../../../docs/log-controls.md")]
pub mod operator_controls {}
mod config;
mod config_net;
mod config_options;
mod controls;
mod error;
mod filter;
mod format;
mod logger;
mod macros;
mod manager;
mod record;
mod reload;
mod sampling;
mod sink;

pub use config::{LOGGER_TYPES, LogConfig, LogOptions, Secret, open};
pub use controls::SamplingConfig;
pub use error::Error;
pub use filter::{FILTER_ENV, Filter};
pub use format::{ECS_VERSION, EcsFormat, ecs_error_fields};
pub use format::{
    Format, JsonFormat, REDACTED, TextFormat, add_secret_keys, is_secret_key, mask_url_credentials,
};
pub use logger::{Logger, set_fatal_hook};
pub use manager::{FLUSH_ON_EXIT, Manager, ReloadReport, global, install_panic_hook};
pub use record::{Field, Fields, Level, ParseLevelError, Record, Value, field};
pub use reload::Reloader;
pub use sampling::Sampling;
#[cfg(feature = "elastic")]
pub use sink::elastic::{Auth, ElasticOptions, ElasticSink};
pub use sink::file::{
    FileOptions, FileSink, FileWriter, Period, ReopenHandle, Zone, rotated_files,
};
pub use sink::journald::{JOURNAL_SOCKET, JournaldOptions, JournaldSink};
pub use sink::syslog::{
    Facility, SyslogBody, SyslogOptions, SyslogSink, SyslogTransport, syslog_severity,
};
pub use sink::{
    DEFAULT_FLUSH_INTERVAL, DeliveryStats, FlushPolicy, Overflow, QueueSink, RecordWriter, Sink,
};
