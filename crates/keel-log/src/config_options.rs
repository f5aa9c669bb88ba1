//! The per-type option check of a logger config: an option the sink type would ignore is an
//! [`Error::InvalidConfig`] naming it and the types that take it (kept apart from
//! `config.rs`, which builds the sinks).

use crate::config::{LOGGER_TYPES, LogConfig, LogOptions, bad};
use crate::error::Error;

/// Options every sink type takes (the queue, and the ECS formatter's fields).
const COMMON_OPTIONS: &[&str] = &[
    "queue",
    "overflow",
    "service_name",
    "service_node_name",
    "hostname",
];

/// The options each sink type reads, beyond [`COMMON_OPTIONS`].
fn options_of(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "console" => &["flush_interval", "sync"],
        "file" => &[
            "path",
            "max_bytes",
            "rotate",
            "timezone",
            "keep_files",
            "max_age",
            "max_total_bytes",
            "compress",
            "flush_interval",
            "sync",
        ],
        "elastic" | "elasticsearch" => &[
            "url",
            "urls",
            "index",
            "data_stream",
            "batch_size",
            "batch_bytes",
            "flush_interval",
            "max_buffer_bytes",
            "gzip",
            "max_retries",
            "timeout",
            "username",
            "password",
            "api_key",
            "ca_file",
            "dead_letter",
            "dead_letter_max_bytes",
            "buffer",
            "buffer_path",
            "buffer_max_bytes",
        ],
        "syslog" => &[
            "transport",
            "address",
            "path",
            "facility",
            "app_name",
            "sd_id",
            "max_message_bytes",
            "timeout",
            "flush_interval",
        ],
        "journald" => &[
            "path",
            "facility",
            "app_name",
            "max_message_bytes",
            "timeout",
            "flush_interval",
        ],
        _ => return None,
    })
}

impl LogOptions {
    /// The names of the options that are set.
    fn set_names(&self) -> Vec<&'static str> {
        let o = self;
        [
            ("queue", o.queue.is_some()),
            ("overflow", o.overflow.is_some()),
            ("path", o.path.is_some()),
            ("max_bytes", o.max_bytes.is_some()),
            ("rotate", o.rotate.is_some()),
            ("timezone", o.timezone.is_some()),
            ("keep_files", o.keep_files.is_some()),
            ("max_age", o.max_age.is_some()),
            ("max_total_bytes", o.max_total_bytes.is_some()),
            ("compress", o.compress.is_some()),
            ("sync", o.sync.is_some()),
            ("url", o.url.is_some()),
            ("urls", o.urls.is_some()),
            ("index", o.index.is_some()),
            ("data_stream", o.data_stream.is_some()),
            ("batch_size", o.batch_size.is_some()),
            ("batch_bytes", o.batch_bytes.is_some()),
            ("flush_interval", o.flush_interval.is_some()),
            ("max_buffer_bytes", o.max_buffer_bytes.is_some()),
            ("gzip", o.gzip.is_some()),
            ("max_retries", o.max_retries.is_some()),
            ("timeout", o.timeout.is_some()),
            ("username", o.username.is_some()),
            ("password", o.password.is_some()),
            ("api_key", o.api_key.is_some()),
            ("ca_file", o.ca_file.is_some()),
            ("dead_letter", o.dead_letter.is_some()),
            ("dead_letter_max_bytes", o.dead_letter_max_bytes.is_some()),
            ("buffer", o.buffer.is_some()),
            ("buffer_path", o.buffer_path.is_some()),
            ("buffer_max_bytes", o.buffer_max_bytes.is_some()),
            ("service_name", o.service_name.is_some()),
            ("service_node_name", o.service_node_name.is_some()),
            ("hostname", o.hostname.is_some()),
            ("transport", o.transport.is_some()),
            ("address", o.address.is_some()),
            ("facility", o.facility.is_some()),
            ("app_name", o.app_name.is_some()),
            ("sd_id", o.sd_id.is_some()),
            ("max_message_bytes", o.max_message_bytes.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Refuses an option the sink type would silently ignore (a console logger given `path`,
/// a file logger given `url`): it is a typo or a config meant for another type.
pub(crate) fn check_options(config: &LogConfig) -> Result<(), Error> {
    let kind = config.kind.to_ascii_lowercase();
    let Some(own) = options_of(&kind) else {
        return Ok(()); // an unknown type is reported by the caller, naming the valid ones
    };
    for name in config.options.set_names() {
        if !COMMON_OPTIONS.contains(&name) && !own.contains(&name) {
            let takers: Vec<&str> = LOGGER_TYPES
                .iter()
                .copied()
                .filter(|t| options_of(t).is_some_and(|o| o.contains(&name)))
                .collect();
            return Err(bad(
                &format!("options.{name}"),
                format!(
                    "a {kind} logger does not use it (it is an option of: {})",
                    takers.join(", ")
                ),
            ));
        }
    }
    Ok(())
}
