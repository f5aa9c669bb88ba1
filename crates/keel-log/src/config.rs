//! Logger config (the seed's fields) and the factory.

use std::sync::Arc;

use serde::Deserialize;

use crate::error::Error;
use crate::format::{Format, JsonFormat, TextFormat};
use crate::logger::Logger;
use crate::record::Level;
use crate::rotation::{FileOptions, FileSink, Period, Zone};
use crate::sink::{Overflow, QueueSink, Sink};

/// The types a config may name.
pub const LOGGER_TYPES: &[&str] = &["console", "file", "elastic", "elasticsearch"];

/// A logger's config: `type`, `name`, `level`, `formatter` (`text`/`json`), `output`
/// (`stdout`/`stderr` for console) and sink `options`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `console`, `file`, `elastic` or `elasticsearch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The logger's name.
    pub name: String,
    /// Minimum level (default `info`).
    #[serde(default)]
    pub level: Option<String>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub formatter: Option<String>,
    /// Console: `stdout` (default) or `stderr`.
    #[serde(default)]
    pub output: Option<String>,
    /// Sink options.
    #[serde(default)]
    pub options: LogOptions,
}

/// Sink options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogOptions {
    /// Queue bound in records (default 10 000).
    #[serde(default)]
    pub queue: Option<usize>,
    /// `block` (default) or `drop` when the queue is full.
    #[serde(default)]
    pub overflow: Option<String>,
    /// File: the live file's path (or give it as `output`).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// File: rotate past this many bytes.
    #[serde(default, alias = "maxSize", alias = "max_size")]
    pub max_bytes: Option<u64>,
    /// File: `hourly` or `daily` rotation, at boundaries of `timezone`.
    #[serde(default)]
    pub rotate: Option<String>,
    /// File: the clock for rotation boundaries and rotated names: `utc` (default), `local`
    /// (the system zone) or an IANA name such as `Europe/Berlin`.
    #[serde(default, alias = "tz")]
    pub timezone: Option<String>,
    /// File: keep at most this many rotated files.
    #[serde(default, alias = "maxBackups", alias = "max_backups")]
    pub keep_files: Option<usize>,
    /// File: delete rotated files older than this (`"7d"`, `"12h"`).
    #[serde(default, alias = "maxAge")]
    pub max_age: Option<String>,
    /// File: keep rotated files within this many bytes.
    #[serde(default)]
    pub max_total_bytes: Option<u64>,
    /// File: gzip rotated files.
    #[serde(default)]
    pub compress: Option<bool>,
}

impl LogConfig {
    /// Parses TOML.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))
    }

    /// Parses JSON.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn from_json(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::Parse(e.to_string()))
    }

    /// Parses YAML.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        serde_norway::from_str(text).map_err(|e| Error::Parse(e.to_string()))
    }
}

fn bad(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Builds the logger a config describes.
///
/// # Errors
/// [`Error::UnknownType`] (naming the valid types), [`Error::NotAvailable`] for `file` and
/// `elastic` until those sinks land, [`Error::InvalidConfig`], [`Error::Sink`].
pub fn build(config: &LogConfig) -> Result<Logger, Error> {
    let level: Level = match &config.level {
        Some(l) => l
            .parse()
            .map_err(|e: crate::ParseLevelError| bad("level", e.to_string()))?,
        None => Level::Info,
    };
    let overflow = match config.options.overflow.as_deref() {
        None | Some("block") => Overflow::Block,
        Some("drop" | "drop-newest" | "drop_newest") => Overflow::DropNewest,
        Some(other) => {
            return Err(bad(
                "options.overflow",
                format!("{other:?}; use block or drop"),
            ));
        }
    };
    let queue = config.options.queue.unwrap_or(10_000);
    if queue == 0 {
        return Err(bad("options.queue", "must be at least 1"));
    }
    match config.kind.to_ascii_lowercase().as_str() {
        "console" => {
            let to_stderr = match config.output.as_deref() {
                None | Some("stdout") => false,
                Some("stderr") => true,
                Some(other) => {
                    return Err(bad("output", format!("{other:?}; use stdout or stderr")));
                }
            };
            let is_tty = if to_stderr {
                std::io::IsTerminal::is_terminal(&std::io::stderr())
            } else {
                std::io::IsTerminal::is_terminal(&std::io::stdout())
            };
            let format: Box<dyn Format> = match config.formatter.as_deref() {
                None | Some("text") => Box::new(TextFormat::for_output(is_tty)),
                Some("json") => Box::new(JsonFormat),
                Some(other) => {
                    return Err(bad("formatter", format!("{other:?}; use text or json")));
                }
            };
            let sink_name = format!("{}:console", config.name);
            let started = if to_stderr {
                QueueSink::start(&sink_name, queue, overflow, format, std::io::stderr())
            } else {
                QueueSink::start(&sink_name, queue, overflow, format, std::io::stdout())
            };
            let sink = started.map_err(|source| Error::Sink {
                sink: sink_name,
                source,
            })?;
            Ok(Logger::new(
                config.name.clone(),
                level,
                vec![Arc::new(sink) as Arc<dyn Sink>],
            ))
        }
        "file" => {
            let o = &config.options;
            let path = o
                .path
                .clone()
                .or_else(|| config.output.as_ref().map(std::path::PathBuf::from))
                .ok_or_else(|| {
                    bad(
                        "options.path",
                        "a file logger needs a path (options.path or output)",
                    )
                })?;
            let period = match o.rotate.as_deref() {
                None => None,
                Some("hourly") => Some(Period::Hourly),
                Some("daily") => Some(Period::Daily),
                Some(other) => {
                    return Err(bad(
                        "options.rotate",
                        format!("{other:?}; use hourly or daily"),
                    ));
                }
            };
            let max_age = match &o.max_age {
                None => None,
                Some(t) => Some(
                    humantime::parse_duration(t)
                        .map_err(|e| bad("options.max_age", e.to_string()))?,
                ),
            };
            let format: Box<dyn Format> = match config.formatter.as_deref() {
                None | Some("text") => Box::new(TextFormat::default()),
                Some("json") => Box::new(JsonFormat),
                Some(other) => {
                    return Err(bad("formatter", format!("{other:?}; use text or json")));
                }
            };
            let zone = match o.timezone.as_deref() {
                None => Zone::utc(),
                Some(name) => name
                    .parse()
                    .map_err(|e: Error| bad("options.timezone", e.to_string()))?,
            };
            let options = FileOptions {
                path,
                max_bytes: o.max_bytes,
                period,
                zone,
                keep_files: o.keep_files,
                max_age,
                max_total_bytes: o.max_total_bytes,
                compress: o.compress.unwrap_or(false),
            };
            let sink_name = format!("{}:file", config.name);
            let sink = FileSink::start(&sink_name, options, queue, overflow, format).map_err(
                |source| Error::Sink {
                    sink: sink_name,
                    source,
                },
            )?;
            Ok(Logger::new(
                config.name.clone(),
                level,
                vec![Arc::new(sink) as Arc<dyn Sink>],
            ))
        }
        kind @ ("elastic" | "elasticsearch") => Err(Error::NotAvailable { kind: kind.into() }),
        _ => Err(Error::UnknownType {
            got: config.kind.clone(),
            valid: LOGGER_TYPES.join(", "),
        }),
    }
}
