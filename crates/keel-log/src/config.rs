//! Logger config (the seed's fields) and the factory.

use std::sync::Arc;

use serde::Deserialize;

use crate::controls::SamplingConfig;
use crate::error::Error;
use crate::filter::Filter;
use crate::format::{EcsFormat, Format, JsonFormat, TextFormat};
use crate::logger::Logger;
use crate::record::Level;
use crate::sink::file::{FileOptions, FileSink, Period, Zone};
use crate::sink::{FlushPolicy, Overflow, QueueSink, Sink};

/// The types a config may name.
pub const LOGGER_TYPES: &[&str] = &[
    "console",
    "file",
    "elastic",
    "elasticsearch",
    "syslog",
    "journald",
];

/// A logger's config: `type`, `name`, `level`, `formatter` (`text`/`json`), `output`
/// (`stdout`/`stderr` for console) and sink `options`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `console`, `file`, `elastic`, `elasticsearch`, `syslog` or `journald`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The logger's name.
    pub name: String,
    /// Minimum level (default `info`).
    #[serde(default)]
    pub level: Option<String>,
    /// `text` (default), `json` or `ecs` (Elastic Common Schema; the `service_name`,
    /// `service_node_name` and `hostname` options fill its service and host fields).
    #[serde(default)]
    pub formatter: Option<String>,
    /// Console: `stdout` (default) or `stderr`.
    #[serde(default)]
    pub output: Option<String>,
    /// Sink options.
    #[serde(default)]
    pub options: LogOptions,
    /// Level directives in the EnvFilter syntax (`"info,keel_cache=debug"`, see
    /// [`Filter`]), applied on top of `level`; `KEEL_LOG` is applied on top of both.
    #[serde(default)]
    pub filter: Option<String>,
    /// Sampling per (level, message) (see [`Sampling`](crate::Sampling)); off when absent.
    #[serde(default)]
    pub sampling: Option<SamplingConfig>,
    /// Extra field keys to redact in every format of the process (see
    /// [`add_secret_keys`](crate::add_secret_keys)).
    #[serde(default)]
    pub redact_keys: Option<Vec<String>>,
}

/// The largest `options.queue` accepted (the slots of console and file sinks are
/// preallocated: about 320 MiB at this bound).
const MAX_QUEUE: usize = 1_000_000;

/// Sink options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogOptions {
    /// Queue bound in records (default 10 000, at most 1 000 000). Console and file sinks
    /// hold queued records inline, about 340 bytes a slot, allocated when the sink starts
    /// (3.2 MiB by default, 320 MiB at the limit).
    #[serde(default, alias = "bufferSize", alias = "buffer_size")]
    pub queue: Option<usize>,
    /// `block` (default) or `drop` when the queue is full.
    #[serde(default)]
    pub overflow: Option<String>,
    /// File: the live file's path (or give it as `output`). Syslog (`unix`): the socket
    /// (default `/dev/log`); journald: the journal's socket (default
    /// `/run/systemd/journal/socket`).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// File: rotate past this many bytes.
    #[serde(
        default,
        alias = "maxSize",
        alias = "max_size",
        deserialize_with = "keel_config::de::opt_size"
    )]
    pub max_bytes: Option<u64>,
    /// File: `hourly` or `daily` rotation, at boundaries of `timezone`.
    #[serde(default)]
    pub rotate: Option<String>,
    /// File: the clock for rotation boundaries and rotated names: `utc` (default), `local`
    /// (the system zone) or an IANA name such as `Europe/Berlin`.
    #[serde(default, alias = "tz")]
    pub timezone: Option<String>,
    /// File: keep at most this many rotated files.
    #[serde(
        default,
        alias = "maxFiles",
        alias = "max_files",
        alias = "maxBackups",
        alias = "max_backups"
    )]
    pub keep_files: Option<usize>,
    /// File: delete rotated files older than this (`"7d"`, `"12h"`).
    #[serde(default, alias = "maxAge")]
    pub max_age: Option<String>,
    /// File: keep rotated files within this many bytes.
    #[serde(default, deserialize_with = "keel_config::de::opt_size")]
    pub max_total_bytes: Option<u64>,
    /// File: gzip rotated files.
    #[serde(default)]
    pub compress: Option<bool>,
    /// File and console: `fsync` after every flush (default `false`; see `flush_interval`).
    #[serde(default)]
    pub sync: Option<bool>,
    /// Elastic: the cluster's base URL (or give it as `output`).
    #[serde(default)]
    pub url: Option<String>,
    /// Elastic: several endpoints of the cluster, used round-robin (instead of `url`).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// Elastic: index name pattern (default `logs-%Y.%m.%d`, UTC).
    #[serde(default)]
    pub index: Option<String>,
    /// Elastic: write to this data stream (`create` actions) instead of `index`.
    #[serde(default)]
    pub data_stream: Option<String>,
    /// Elastic: documents per `_bulk` request (default 500).
    #[serde(default, alias = "batchSize")]
    pub batch_size: Option<usize>,
    /// Elastic: bytes per `_bulk` request (default 5 MiB).
    #[serde(
        default,
        alias = "batchBytes",
        deserialize_with = "keel_config::de::opt_size_usize"
    )]
    pub batch_bytes: Option<usize>,
    /// File and console: the writer flushes when its queue drains and at least this often
    /// (`"1s"` by default, `"250ms"`, `"0"` = after every record). Elastic: the longest a
    /// document waits for its batch (default 1 s).
    #[serde(default, alias = "flushInterval")]
    pub flush_interval: Option<String>,
    /// Elastic: buffer bound in bytes (default 32 MiB); `queue` bounds the documents.
    #[serde(default, deserialize_with = "keel_config::de::opt_size_usize")]
    pub max_buffer_bytes: Option<usize>,
    /// Elastic: gzip request bodies.
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Elastic: retries of an item answered 429/5xx (default 8).
    #[serde(default, alias = "maxRetries")]
    pub max_retries: Option<u32>,
    /// Elastic: timeout of one `_bulk` request (`"10s"`). Syslog and journald: bound of one
    /// connect or send (default `"5s"`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Elastic: basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Elastic: basic-auth password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Elastic: API key (the `encoded` form).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Elastic: PEM CA file to trust for `https`.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Elastic: file for rejected documents (JSON lines with the reason).
    #[serde(default)]
    pub dead_letter: Option<std::path::PathBuf>,
    /// Elastic: bound of the dead-letter files together (default 100 MiB; rotated at a
    /// quarter of it, oldest deleted).
    #[serde(default, deserialize_with = "keel_config::de::opt_size")]
    pub dead_letter_max_bytes: Option<u64>,
    /// Elastic: `memory` (the default) or `disk` (a crash-safe buffer in `buffer_path`,
    /// replayed on the next start; see docs/elasticsearch.md).
    #[serde(default)]
    pub buffer: Option<String>,
    /// Elastic: the disk buffer's directory (with `buffer = "disk"`; one sink per directory).
    #[serde(default)]
    pub buffer_path: Option<std::path::PathBuf>,
    /// Elastic: the disk buffer's bound in bytes (default 256 MiB).
    #[serde(default, deserialize_with = "keel_config::de::opt_size")]
    pub buffer_max_bytes: Option<u64>,
    /// `formatter = "ecs"`: `service.name`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// `formatter = "ecs"`: `service.node.name`.
    #[serde(default)]
    pub service_node_name: Option<String>,
    /// `formatter = "ecs"`: `host.hostname` (default: this machine's name). Syslog: the
    /// HOSTNAME header field (same default).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Syslog: `unix` (default, the socket at `path`, default `/dev/log`), `udp` or `tcp`
    /// (octet counting) to `address`.
    #[serde(default)]
    pub transport: Option<String>,
    /// Syslog: `host:port` of the receiver for `udp` and `tcp` (or give it as `output`).
    #[serde(default)]
    pub address: Option<String>,
    /// Syslog and journald: the facility (`user`, `daemon`, `local0` … `local7`, or 0-23;
    /// syslog default `user`, journald default none).
    #[serde(default)]
    pub facility: Option<String>,
    /// Syslog: APP-NAME; journald: `SYSLOG_IDENTIFIER` (default: the program's file name).
    #[serde(default)]
    pub app_name: Option<String>,
    /// Syslog: the SD-ID of the fields' element (default `keel@32473`).
    #[serde(default)]
    pub sd_id: Option<String>,
    /// Syslog: the longest message (default 8192, at least 480); journald: the largest
    /// entry (default 131072, at least 1024). Longer ones are cut (see docs/logging.md).
    #[serde(default, deserialize_with = "keel_config::de::opt_size_usize")]
    pub max_message_bytes: Option<usize>,
}

pub use keel_config::Secret;

impl LogConfig {
    /// Parses TOML.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        Ok(keel_config::from_str(keel_config::Format::Toml, text)?)
    }

    /// Parses JSON.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn from_json(text: &str) -> Result<Self, Error> {
        Ok(keel_config::from_str(keel_config::Format::Json, text)?)
    }

    /// Reads a config file, choosing the syntax by its extension: `.toml`, `.yaml`/`.yml` or
    /// `.json`.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] when it cannot be read, [`Error::InvalidConfig`] for another
    /// extension, [`Error::Parse`].
    pub fn from_path(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text_of(path, &text)
    }

    /// Parses `text`, read from `path`, choosing the syntax by the path's extension.
    pub(crate) fn from_text_of(path: &std::path::Path, text: &str) -> Result<Self, Error> {
        let format = keel_config::Format::from_path(path)?;
        Ok(keel_config::from_str(format, text)?)
    }

    /// Parses YAML.
    ///
    /// # Errors
    /// [`Error::Parse`].
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        Ok(keel_config::from_str(keel_config::Format::Yaml, text)?)
    }
}

/// The ECS formatter the options describe.
pub(crate) fn ecs_format(o: &LogOptions) -> EcsFormat {
    let mut ecs = EcsFormat::new();
    if let Some(name) = &o.service_name {
        ecs = ecs.service_name(name);
    }
    if let Some(name) = &o.service_node_name {
        ecs = ecs.service_node_name(name);
    }
    if let Some(name) = &o.hostname {
        ecs = ecs.hostname(name);
    }
    ecs
}

pub(crate) fn bad(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The flush policy of a console or file sink: `flush_interval` (a duration such as `"250ms"`,
/// or whole seconds; `"0"` flushes after every record) and `sync`.
fn flush_policy(options: &LogOptions) -> Result<FlushPolicy, Error> {
    let mut flush = FlushPolicy::default();
    if let Some(text) = &options.flush_interval {
        flush.interval =
            keel_config::parse_duration(text).map_err(|e| bad("options.flush_interval", e))?;
    }
    flush.sync = options.sync.unwrap_or(false);
    Ok(flush)
}

/// Builds the logger a config describes: its sinks, its level directives (`level`, then
/// `filter`, then the `KEEL_LOG` environment variable on top, see [`Filter`]), its sampling,
/// and its extra redacted keys.
///
/// # Errors
/// [`Error::UnknownType`] (naming the valid types), [`Error::NotAvailable`] for `elastic`
/// without the `elastic` feature, [`Error::InvalidConfig`], [`Error::InvalidFilter`] (in
/// `filter` or `KEEL_LOG`), [`Error::Sink`].
pub fn open(config: &LogConfig) -> Result<Logger, Error> {
    crate::controls::build_with_env(config, Filter::from_env()?.as_ref())
}

/// What every sink type reads from a config, checked: the level, the queue's overflow policy
/// and capacity, and the flush policy.
struct Common {
    level: Level,
    overflow: Overflow,
    queue: usize,
    flush: FlushPolicy,
}

fn common(config: &LogConfig) -> Result<Common, Error> {
    crate::config_options::check_options(config)?;
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
    if queue > MAX_QUEUE {
        return Err(bad(
            "options.queue",
            format!(
                "{queue} is above the limit of {MAX_QUEUE}: console and file sinks preallocate \
                 a slot of about {} bytes per queued record",
                std::mem::size_of::<crate::record::Record>() + 8
            ),
        ));
    }
    let flush = flush_policy(&config.options)?;
    Ok(Common {
        level,
        overflow,
        queue,
        flush,
    })
}

/// The formatter of a console or file sink (`text` built by `text`).
fn format_of(
    config: &LogConfig,
    text: impl FnOnce() -> TextFormat,
) -> Result<Box<dyn Format>, Error> {
    Ok(match config.formatter.as_deref() {
        None | Some("text") => Box::new(text()),
        Some("json") => Box::new(JsonFormat),
        Some("ecs") => Box::new(ecs_format(&config.options)),
        Some(other) => {
            return Err(bad(
                "formatter",
                format!("{other:?}; use text, json or ecs"),
            ));
        }
    })
}

/// Whether a console sink writes to stderr (`output`).
fn console_to_stderr(config: &LogConfig) -> Result<bool, Error> {
    match config.output.as_deref() {
        None | Some("stdout") => Ok(false),
        Some("stderr") => Ok(true),
        Some(other) => Err(bad("output", format!("{other:?}; use stdout or stderr"))),
    }
}

/// Checks the sink part of `config` (`type`, `formatter`, `output`, `options`) without
/// building anything: no file is opened, no socket connected, no thread started. Console,
/// file, syslog and journald settings are checked as the build checks them (a syslog
/// `udp`/`tcp` address is resolved); for elastic, the URLs' presence and the durations,
/// while what only a start can tell (a URL or CA file the client rejects, a directory that
/// cannot be created) is left to it.
///
/// # Errors
/// What [`open`] returns for a bad sink config.
pub(crate) fn validate_sink(config: &LogConfig) -> Result<(), Error> {
    let c = common(config)?;
    match config.kind.to_ascii_lowercase().as_str() {
        "console" => {
            console_to_stderr(config)?;
            format_of(config, TextFormat::default).map(drop)
        }
        "file" => {
            format_of(config, TextFormat::default)?;
            file_options(config, c.flush).map(drop)
        }
        "syslog" => crate::config_net::syslog_options(config, c.flush).map(drop),
        "journald" => crate::config_net::journald_options(config, c.flush).map(drop),
        kind @ ("elastic" | "elasticsearch") => validate_elastic(config, kind),
        _ => Err(Error::UnknownType {
            got: config.kind.clone(),
            valid: LOGGER_TYPES.join(", "),
        }),
    }
}

#[cfg(not(feature = "elastic"))]
fn validate_elastic(_config: &LogConfig, kind: &str) -> Result<(), Error> {
    Err(Error::NotAvailable {
        kind: kind.into(),
        feature: "elastic",
    })
}

#[cfg(feature = "elastic")]
fn validate_elastic(config: &LogConfig, _kind: &str) -> Result<(), Error> {
    let o = &config.options;
    if o.urls.as_ref().is_some_and(Vec::is_empty) {
        return Err(bad("options.urls", "give at least one URL"));
    }
    if o.url.is_none() && config.output.is_none() && o.urls.is_none() {
        return Err(bad(
            "options.url",
            "an elastic logger needs the cluster URL (options.url, options.urls or output)",
        ));
    }
    if o.urls.is_some() && (o.url.is_some() || config.output.is_some()) {
        return Err(bad(
            "options.urls",
            "give either urls or url (output), not both",
        ));
    }
    for (field, v) in [
        ("options.flush_interval", &o.flush_interval),
        ("options.timeout", &o.timeout),
    ] {
        if let Some(t) = v {
            keel_config::parse_duration(t).map_err(|e| bad(field, e))?;
        }
    }
    Ok(())
}

/// The options of a file sink, checked (nothing is opened).
fn file_options(config: &LogConfig, flush: FlushPolicy) -> Result<FileOptions, Error> {
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
        Some(t) => Some(keel_config::parse_duration(t).map_err(|e| bad("options.max_age", e))?),
    };
    let zone = match o.timezone.as_deref() {
        None => Zone::utc(),
        Some(name) => name
            .parse()
            .map_err(|e: Error| bad("options.timezone", e.to_string()))?,
    };
    Ok(FileOptions {
        path,
        max_bytes: o.max_bytes,
        period,
        zone,
        keep_files: o.keep_files,
        max_age,
        max_total_bytes: o.max_total_bytes,
        compress: o.compress.unwrap_or(false),
        flush,
    })
}

/// The logger of `config` with its sinks started, at its `level`.
pub(crate) fn build_sinks(config: &LogConfig) -> Result<Logger, Error> {
    let Common {
        level,
        overflow,
        queue,
        flush,
    } = common(config)?;
    match config.kind.to_ascii_lowercase().as_str() {
        "console" => {
            let to_stderr = console_to_stderr(config)?;
            let is_tty = if to_stderr {
                std::io::IsTerminal::is_terminal(&std::io::stderr())
            } else {
                std::io::IsTerminal::is_terminal(&std::io::stdout())
            };
            let format = format_of(config, || TextFormat::for_output(is_tty))?;
            let sink_name = format!("{}:console", config.name);
            let started = if to_stderr {
                QueueSink::start_with_flush(
                    &sink_name,
                    queue,
                    overflow,
                    flush,
                    format,
                    std::io::stderr(),
                )
            } else {
                QueueSink::start_with_flush(
                    &sink_name,
                    queue,
                    overflow,
                    flush,
                    format,
                    std::io::stdout(),
                )
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
            let format = format_of(config, TextFormat::default)?;
            let options = file_options(config, flush)?;
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
        "syslog" => {
            let sink = crate::config_net::syslog_sink(config, queue, overflow, flush)?;
            Ok(Logger::new(config.name.clone(), level, vec![sink]))
        }
        "journald" => {
            let sink = crate::config_net::journald_sink(config, queue, overflow, flush)?;
            Ok(Logger::new(config.name.clone(), level, vec![sink]))
        }
        kind @ ("elastic" | "elasticsearch") => {
            let sink = elastic_sink(config, queue, overflow, kind)?;
            Ok(Logger::new(config.name.clone(), level, vec![sink]))
        }
        _ => Err(Error::UnknownType {
            got: config.kind.clone(),
            valid: LOGGER_TYPES.join(", "),
        }),
    }
}

#[cfg(not(feature = "elastic"))]
fn elastic_sink(
    _config: &LogConfig,
    _queue: usize,
    _overflow: Overflow,
    kind: &str,
) -> Result<Arc<dyn Sink>, Error> {
    Err(Error::NotAvailable {
        kind: kind.into(),
        feature: "elastic",
    })
}

#[cfg(feature = "elastic")]
fn elastic_sink(
    config: &LogConfig,
    queue: usize,
    overflow: Overflow,
    _kind: &str,
) -> Result<Arc<dyn Sink>, Error> {
    use crate::sink::elastic::{Auth, ElasticOptions, ElasticSink};
    let o = &config.options;
    if o.urls.as_ref().is_some_and(Vec::is_empty) {
        return Err(bad("options.urls", "give at least one URL"));
    }
    let url = o
        .url
        .clone()
        .or_else(|| config.output.clone())
        .or_else(|| o.urls.as_ref().and_then(|u| u.first().cloned()))
        .ok_or_else(|| {
            bad(
                "options.url",
                "an elastic logger needs the cluster URL (options.url, options.urls or output)",
            )
        })?;
    let duration =
        |field: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, Error> {
            v.as_deref()
                .map(|t| keel_config::parse_duration(t).map_err(|e| bad(field, e)))
                .transpose()
        };
    let mut opts = ElasticOptions::new(url);
    if let Some(urls) = &o.urls {
        if o.url.is_some() || config.output.is_some() {
            return Err(bad(
                "options.urls",
                "give either urls or url (output), not both",
            ));
        }
        opts.urls.clone_from(urls);
    }
    if let Some(index) = &o.index {
        opts.index.clone_from(index);
    }
    opts.data_stream.clone_from(&o.data_stream);
    opts.batch_records = o.batch_size.unwrap_or(opts.batch_records);
    opts.batch_bytes = o.batch_bytes.unwrap_or(opts.batch_bytes);
    if let Some(d) = duration("options.flush_interval", &o.flush_interval)? {
        opts.flush_interval = d;
    }
    if let Some(d) = duration("options.timeout", &o.timeout)? {
        opts.timeout = d;
    }
    opts.max_records = queue;
    opts.max_bytes = o.max_buffer_bytes.unwrap_or(opts.max_bytes);
    // An outage must not stall the application unless the config asks for `block`.
    opts.overflow = if o.overflow.is_some() {
        overflow
    } else {
        Overflow::DropNewest
    };
    opts.gzip = o.gzip.unwrap_or(false);
    opts.max_retries = o.max_retries.unwrap_or(opts.max_retries);
    opts.auth = match (&o.username, &o.password, &o.api_key) {
        (None, None, None) => Auth::None,
        (Some(user), Some(password), None) => Auth::Basic {
            username: user.clone(),
            password: password.expose().to_owned(),
        },
        (None, None, Some(key)) => Auth::ApiKey(key.expose().to_owned()),
        (_, _, Some(_)) => {
            return Err(bad(
                "options.api_key",
                "give either username and password or api_key, not both",
            ));
        }
        _ => {
            return Err(bad(
                "options.username",
                "basic auth needs both username and password",
            ));
        }
    };
    opts.ca_file.clone_from(&o.ca_file);
    opts.dead_letter.clone_from(&o.dead_letter);
    opts.dead_letter_max_bytes = o
        .dead_letter_max_bytes
        .unwrap_or(opts.dead_letter_max_bytes);
    opts.disk_buffer = match (o.buffer.as_deref(), &o.buffer_path) {
        (None | Some("memory"), None) => None,
        (Some("disk"), Some(path)) => Some(path.clone()),
        (Some("disk"), None) => {
            return Err(bad(
                "options.buffer_path",
                "buffer = \"disk\" needs buffer_path (a directory for this sink alone)",
            ));
        }
        (None | Some("memory"), Some(_)) => {
            return Err(bad(
                "options.buffer_path",
                "buffer_path is only used with buffer = \"disk\"",
            ));
        }
        (Some(other), _) => {
            return Err(bad(
                "options.buffer",
                format!("{other:?}: use \"memory\" or \"disk\""),
            ));
        }
    };
    opts.disk_buffer_max_bytes = o.buffer_max_bytes.unwrap_or(opts.disk_buffer_max_bytes);
    opts.ecs = match config.formatter.as_deref() {
        // `text` was accepted (and ignored) before `ecs` existed.
        None | Some("json" | "text") => None,
        Some("ecs") => Some(ecs_format(o)),
        Some(other) => {
            return Err(bad(
                "formatter",
                format!("{other:?}: an elastic logger writes json (the default) or ecs"),
            ));
        }
    };
    let sink = ElasticSink::start(format!("{}:elastic", config.name), opts)?;
    Ok(Arc::new(sink))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(options: &str) -> Result<FlushPolicy, Error> {
        let config = LogConfig::from_toml(&format!(
            "type = \"file\"\nname = \"x\"\n[options]\n{options}"
        ))
        .unwrap();
        flush_policy(&config.options)
    }

    #[test]
    fn flush_interval_and_sync_are_parsed() {
        let default = policy("").unwrap();
        assert_eq!(default, FlushPolicy::default());
        assert_eq!(default.interval, Duration::from_secs(1));
        assert!(!default.sync);
        assert_eq!(
            policy("flush_interval = \"250ms\"").unwrap().interval,
            Duration::from_millis(250)
        );
        assert_eq!(
            policy("flush_interval = \"0\"").unwrap().interval,
            Duration::ZERO
        );
        assert_eq!(
            policy("flush_interval = \"2\"").unwrap().interval,
            Duration::from_secs(2)
        );
        assert_eq!(
            policy("flush_interval = \"1m 30s\"\nsync = true").unwrap(),
            FlushPolicy::every(Duration::from_secs(90)).with_sync(true)
        );
        assert!(!policy("sync = false").unwrap().sync);
        for bad in ["\"soon\"", "\"-1s\"", "\"\""] {
            assert!(
                matches!(
                    policy(&format!("flush_interval = {bad}")),
                    Err(Error::InvalidConfig { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            LogConfig::from_toml("type = \"file\"\nname = \"x\"\n[options]\nsync = \"yes\"\n"),
            Err(Error::Parse(_))
        ));
    }

    /// The shared syntax: sizes for byte options, whole seconds as a duration string.
    #[test]
    fn sizes_and_durations_use_the_shared_syntax() {
        let config = LogConfig::from_toml(
            "type = \"file\"\nname = \"f\"\n[options]\nmaxSize = \"10MB\"\nmax_total_bytes = \"1GiB\"\nmax_age = \"30\"\n",
        )
        .unwrap();
        assert_eq!(config.options.max_bytes, Some(10_000_000));
        assert_eq!(config.options.max_total_bytes, Some(1 << 30));
        assert_eq!(
            keel_config::parse_duration(config.options.max_age.as_deref().unwrap()),
            Ok(Duration::from_secs(30))
        );
        let bad = LogConfig::from_yaml("type: file\nname: f\noptions:\n  maxSize: 10 parsecs\n");
        assert!(
            matches!(&bad, Err(Error::Parse(m)) if m.contains("10 parsecs")),
            "{bad:?}"
        );
    }

    /// An option the type would ignore is an error naming it and the types that take it.
    #[test]
    fn options_of_another_type_are_refused() {
        for (text, field, takers) in [
            (
                "type = \"console\"\n[options]\npath = \"/tmp/x.log\"\n",
                "options.path",
                "file, syslog, journald",
            ),
            (
                "type = \"file\"\n[options]\npath = \"/tmp/x.log\"\nurl = \"http://127.0.0.1:9200\"\n",
                "options.url",
                "elastic",
            ),
            (
                "type = \"journald\"\n[options]\ntransport = \"udp\"\n",
                "options.transport",
                "syslog",
            ),
        ] {
            let config = LogConfig::from_toml(&format!("name = \"n\"\n{text}")).unwrap();
            match open(&config) {
                Err(Error::InvalidConfig { field: f, reason }) => {
                    assert_eq!(f, field, "{reason}");
                    assert!(reason.contains(takers), "{reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Common options and the ECS fields go with every type.
        let ok = LogConfig::from_toml(
            "type = \"console\"\nname = \"n\"\nformatter = \"ecs\"\n[options]\nqueue = 8\nservice_name = \"s\"\nflush_interval = \"0\"\n",
        )
        .unwrap();
        open(&ok)
            .unwrap()
            .shutdown(std::time::Duration::from_secs(5));
    }

    /// The original's option names are accepted where they mean the same thing.
    #[test]
    fn the_originals_option_names_are_aliases() {
        let c = LogConfig::from_yaml(
            "type: file\nname: f\noptions:\n  maxSize: 10MB\n  maxFiles: 5\n  maxAge: 7d\n  bufferSize: 500\n  flushInterval: 250ms\n  compress: true\n",
        )
        .unwrap();
        assert_eq!(c.options.max_bytes, Some(10_000_000));
        assert_eq!(c.options.keep_files, Some(5));
        assert_eq!(c.options.queue, Some(500));
        assert_eq!(c.options.flush_interval.as_deref(), Some("250ms"));
        let es = LogConfig::from_yaml(
            "type: elastic\nname: e\noptions:\n  batchSize: 100\n  maxRetries: 3\n",
        )
        .unwrap();
        assert_eq!(es.options.batch_size, Some(100));
        assert_eq!(es.options.max_retries, Some(3));
        // An unknown key is an error that names it.
        let bad = LogConfig::from_yaml("type: file\nname: f\noptions:\n  maxFilez: 5\n");
        assert!(
            matches!(&bad, Err(Error::Parse(m)) if m.contains("maxFilez")),
            "{bad:?}"
        );
    }
}
