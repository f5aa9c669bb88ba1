//! The config edge of the syslog and journald sinks: `type = "syslog"` and
//! `type = "journald"` options turned into [`SyslogOptions`] and [`JournaldOptions`]
//! (kept apart from `config.rs`, which holds the shared config types and the other sinks).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{LogConfig, LogOptions, bad, ecs_format};
use crate::error::Error;
use crate::sink::journald::{JournaldOptions, JournaldSink};
use crate::sink::syslog::{SyslogBody, SyslogOptions, SyslogSink, SyslogTransport};
use crate::sink::{FlushPolicy, Overflow, Sink};

/// `options.timeout` as a duration, when given.
fn timeout_option(o: &LogOptions) -> Result<Option<Duration>, Error> {
    o.timeout
        .as_deref()
        .map(|t| keel_config::parse_duration(t).map_err(|e| bad("options.timeout", e)))
        .transpose()
}

pub(crate) fn syslog_sink(
    config: &LogConfig,
    queue: usize,
    overflow: Overflow,
    flush: FlushPolicy,
) -> Result<Arc<dyn Sink>, Error> {
    let opts = syslog_options(config, flush)?;
    let sink = SyslogSink::start(format!("{}:syslog", config.name), opts, queue, overflow)?;
    Ok(Arc::new(sink))
}

/// The syslog options of `config`, checked (a `udp`/`tcp` address is resolved; nothing is
/// opened or connected).
pub(crate) fn syslog_options(
    config: &LogConfig,
    flush: FlushPolicy,
) -> Result<SyslogOptions, Error> {
    let o = &config.options;
    let address = || -> Result<std::net::SocketAddr, Error> {
        let text = o
            .address
            .as_deref()
            .or(config.output.as_deref())
            .ok_or_else(|| {
                bad(
                    "options.address",
                    "udp and tcp need the receiver's host:port (options.address or output)",
                )
            })?;
        std::net::ToSocketAddrs::to_socket_addrs(text)
            .map_err(|e| bad("options.address", format!("{text:?}: {e}")))?
            .next()
            .ok_or_else(|| bad("options.address", format!("{text:?}: no address")))
    };
    if o.transport.is_none() && o.address.is_some() {
        return Err(bad(
            "options.transport",
            "options.address is for udp or tcp: set transport = \"udp\" or \"tcp\"",
        ));
    }
    let transport = match o.transport.as_deref() {
        None | Some("unix") => SyslogTransport::Unix(
            o.path
                .clone()
                .or_else(|| config.output.as_ref().map(std::path::PathBuf::from))
                .unwrap_or_else(|| "/dev/log".into()),
        ),
        Some("udp") => SyslogTransport::Udp(address()?),
        Some("tcp") => SyslogTransport::Tcp(address()?),
        Some(other) => {
            return Err(bad(
                "options.transport",
                format!("{other:?}; use unix, udp or tcp"),
            ));
        }
    };
    let mut opts = SyslogOptions::new(transport);
    if let Some(f) = &o.facility {
        opts.facility = f.parse()?;
    }
    if let Some(name) = &o.app_name {
        opts.app_name.clone_from(name);
    }
    if let Some(name) = &o.hostname {
        opts.hostname.clone_from(name);
    }
    if let Some(id) = &o.sd_id {
        opts.sd_id.clone_from(id);
    }
    if let Some(max) = o.max_message_bytes {
        opts.max_message_bytes = max;
    }
    if let Some(t) = timeout_option(o)? {
        opts.timeout = t;
    }
    opts.body = match config.formatter.as_deref() {
        None | Some("text") => SyslogBody::StructuredData,
        Some("json") => SyslogBody::Json,
        Some("ecs") => SyslogBody::Ecs(ecs_format(o)),
        Some(other) => {
            return Err(bad(
                "formatter",
                format!("{other:?}; use text (structured data), json or ecs"),
            ));
        }
    };
    opts.flush = flush;
    Ok(opts)
}

pub(crate) fn journald_sink(
    config: &LogConfig,
    queue: usize,
    overflow: Overflow,
    flush: FlushPolicy,
) -> Result<Arc<dyn Sink>, Error> {
    let opts = journald_options(config, flush)?;
    let sink = JournaldSink::start(format!("{}:journald", config.name), opts, queue, overflow)?;
    Ok(Arc::new(sink))
}

/// The journald options of `config`, checked (nothing is opened).
pub(crate) fn journald_options(
    config: &LogConfig,
    flush: FlushPolicy,
) -> Result<JournaldOptions, Error> {
    let o = &config.options;
    let mut opts = JournaldOptions::new();
    if let Some(path) = o
        .path
        .clone()
        .or_else(|| config.output.as_ref().map(std::path::PathBuf::from))
    {
        opts.path = path;
    }
    if let Some(f) = &o.facility {
        opts.facility = Some(f.parse()?);
    }
    if let Some(name) = &o.app_name {
        opts.identifier.clone_from(name);
    }
    if let Some(max) = o.max_message_bytes {
        opts.max_entry_bytes = max;
    }
    if let Some(t) = timeout_option(o)? {
        opts.timeout = t;
    }
    match config.formatter.as_deref() {
        None | Some("text") => {}
        Some(other) => {
            return Err(bad(
                "formatter",
                format!(
                    "{other:?}: journald entries carry their fields natively; leave formatter unset"
                ),
            ));
        }
    }
    opts.flush = flush;
    Ok(opts)
}
