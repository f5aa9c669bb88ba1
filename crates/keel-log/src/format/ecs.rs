//! The Elastic Common Schema formatter (one ecs-logging JSON object per line).

use std::sync::Arc;

use super::json::{escape_hidden_json, write_json_value};
use super::{Format, timestamp};
use crate::record::{Field, Level, Record, Value};

/// The ECS version written in `ecs.version`.
pub const ECS_VERSION: &str = "8.11.0";

/// Keys this formatter writes itself; a record field with one of these names is written as
/// `fields.<key>` so it cannot replace them.
const RESERVED: [&str; 8] = [
    "@timestamp",
    "log.level",
    "message",
    "ecs.version",
    "log.logger",
    "service.name",
    "service.node.name",
    "host.hostname",
];

/// One [ecs-logging](https://www.elastic.co/guide/en/ecs-logging/overview/current/intro.html)
/// JSON object per line, ready for Elasticsearch, Filebeat or Elastic Agent.
///
/// The object starts with the spec's required fields in its order — `@timestamp` (RFC 3339,
/// UTC, ms), `log.level` (`debug` … `fatal`), `message`, `ecs.version` — then `log.logger`,
/// `service.name`, `service.node.name` and `host.hostname` (each only when known), then the
/// record's fields, flat, with dotted names as ECS writes them:
///
/// - a field `error` or `err` (an error value: [`Value::error`], the `tracing` bridge's
///   `error = &e as &dyn Error`) becomes `error.message`; [`ecs_error_fields`] also gives
///   `error.type`; fields already named `error.*` are kept;
/// - `trace_id`/`traceId`/`trace.id`, `span_id`/`spanId`/`span.id` and
///   `transaction_id`/`transaction.id` (as OpenTelemetry-aware code records them on a span or
///   event, which the `tracing` bridge passes on) become `trace.id`, `span.id` and
///   `transaction.id`;
/// - a field named like one of the keys above becomes `fields.<key>`; when a name repeats,
///   the last value wins (call fields override bound ones).
///
/// Redaction and escaping are those of [`JsonFormat`](crate::JsonFormat): secret-looking
/// keys are written as `[REDACTED]` (nested JSON included), control, line-separator and
/// bidi characters are `\u` escapes.
///
/// ```
/// use keel_log::{EcsFormat, Format, Level, Record, field};
///
/// let ecs = EcsFormat::new().service_name("checkout").hostname("web-1");
/// let record = Record::new(Level::Warn, "payments", "card declined")
///     .with(vec![field("error", "insufficient funds"), field("trace_id", "4bf92f35")]);
/// let mut line = Vec::new();
/// ecs.format(&record, &mut line);
/// let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
/// assert_eq!(v["log.level"], "warn");
/// assert_eq!(v["service.name"], "checkout");
/// assert_eq!(v["error.message"], "insufficient funds");
/// assert_eq!(v["trace.id"], "4bf92f35");
/// ```
#[derive(Debug, Clone)]
pub struct EcsFormat {
    service_name: Option<Arc<str>>,
    service_node_name: Option<Arc<str>>,
    hostname: Option<Arc<str>>,
}

impl Default for EcsFormat {
    fn default() -> Self {
        Self::new()
    }
}

impl EcsFormat {
    /// No `service.name` or `service.node.name`; `host.hostname` is this machine's name
    /// (from `/proc/sys/kernel/hostname`, `/etc/hostname` or `$HOSTNAME`; omitted when none
    /// is found). Reads the name once, here.
    pub fn new() -> Self {
        Self {
            service_name: None,
            service_node_name: None,
            hostname: hostname().map(Into::into),
        }
    }

    /// `service.name` (default: not written).
    #[must_use]
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into().into());
        self
    }

    /// `service.node.name`, the instance of the service (default: not written).
    #[must_use]
    pub fn service_node_name(mut self, name: impl Into<String>) -> Self {
        self.service_node_name = Some(name.into().into());
        self
    }

    /// `host.hostname` instead of the detected one.
    #[must_use]
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into().into());
        self
    }
}

/// `error.message` (the error and its sources, `: `-joined) and `error.type` (the Rust type
/// name of `E`) for an [`EcsFormat`] record; other formats write them as plain fields.
///
/// ```
/// let e = std::io::Error::other("disk full");
/// let fields = keel_log::ecs_error_fields(&e);
/// assert_eq!(fields[0].key, "error.message");
/// assert_eq!(fields[1].value.to_string(), "std::io::error::Error");
/// ```
pub fn ecs_error_fields<E: std::error::Error + 'static>(error: &E) -> [Field; 2] {
    [
        Field {
            key: "error.message".into(),
            value: Value::error(error),
        },
        Field {
            key: "error.type".into(),
            value: Value::from(std::any::type_name::<E>().to_owned()),
        },
    ]
}

/// The name a field is written under.
fn ecs_name(key: &str) -> std::borrow::Cow<'_, str> {
    let mapped = match key {
        "error" | "err" => "error.message",
        "trace_id" | "traceId" | "trace.id" => "trace.id",
        "span_id" | "spanId" | "span.id" => "span.id",
        "transaction_id" | "transactionId" | "transaction.id" => "transaction.id",
        other if RESERVED.contains(&other) => return format!("fields.{other}").into(),
        other => other,
    };
    mapped.into()
}

/// The ECS `log.level` of a level.
const fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
        Level::Fatal => "fatal",
    }
}

impl Format for EcsFormat {
    fn format(&self, record: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(b"{\"@timestamp\":\"");
        out.extend_from_slice(timestamp(record).as_bytes());
        out.extend_from_slice(b"\",\"log.level\":\"");
        out.extend_from_slice(level_name(record.level).as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        let _ = serde_json::to_writer(
            &mut *out,
            super::mask_url_credentials(&record.message).as_ref(),
        );
        out.extend_from_slice(b",\"ecs.version\":\"");
        out.extend_from_slice(ECS_VERSION.as_bytes());
        out.extend_from_slice(b"\",\"log.logger\":");
        let _ = serde_json::to_writer(&mut *out, record.logger.as_ref());
        for (key, value) in [
            ("service.name", &self.service_name),
            ("service.node.name", &self.service_node_name),
            ("host.hostname", &self.hostname),
        ] {
            if let Some(value) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                let _ = serde_json::to_writer(&mut *out, value.as_ref());
            }
        }
        let fields: smallvec::SmallVec<[&Field; 16]> = record.all_fields().collect();
        for (i, f) in fields.iter().enumerate() {
            let name = ecs_name(&f.key);
            // Written once, with the last value (Elasticsearch rejects duplicate keys).
            if fields[i + 1..].iter().any(|g| ecs_name(&g.key) == name) {
                continue;
            }
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, name.as_ref());
            out.push(b':');
            write_json_value(out, &f.key, &f.value);
        }
        out.extend_from_slice(b"}\n");
        escape_hidden_json(out, start);
    }
}

/// This machine's name: `/proc/sys/kernel/hostname`, `/etc/hostname`, then `$HOSTNAME`.
pub(crate) fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::field;

    fn ecs(record: &Record) -> (String, serde_json::Value) {
        let mut out = Vec::new();
        EcsFormat::new()
            .service_name("svc")
            .hostname("h1")
            .format(record, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        let v = serde_json::from_str(&text).unwrap();
        (text, v)
    }

    /// URL credentials are masked in the message and in string fields.
    #[test]
    fn url_credentials_masked() {
        let r = Record::new(Level::Error, "api", "down: redis://u:hunter2@h:1")
            .with(vec![field("cause", "rediss://:pw2@x:2/0")]);
        let mut out = Vec::new();
        EcsFormat::new().format(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("pw2"), "{text}");
        assert!(text.contains("redis://[REDACTED]@h:1"), "{text}");
    }

    #[test]
    fn required_fields_come_first_in_the_spec_order() {
        let (text, v) = ecs(&Record::new(Level::Info, "app", "m"));
        assert!(text.starts_with("{\"@timestamp\":\""), "{text}");
        let after_time = &text[text.find("\",\"log.level\"").unwrap()..];
        assert_eq!(
            after_time,
            format!(
                "\",\"log.level\":\"info\",\"message\":\"m\",\"ecs.version\":\"{ECS_VERSION}\",\"log.logger\":\"app\",\"service.name\":\"svc\",\"host.hostname\":\"h1\"}}\n"
            )
        );
        assert!(v.get("service.node.name").is_none());
    }

    #[test]
    fn reserved_mapped_and_repeated_names() {
        let (_, v) = ecs(&Record::new(Level::Error, "app", "m").with(vec![
            field("message", "forged"),
            field("log.level", "debug"),
            field("err", "first"),
            field("error", "second"),
            field("spanId", "s1"),
            field("password", "hunter2"),
            field("nested", serde_json::json!({"api_key": "k"})),
        ]));
        assert_eq!(v["message"], "m");
        assert_eq!(v["log.level"], "error");
        assert_eq!(v["fields.message"], "forged");
        assert_eq!(v["fields.log.level"], "debug");
        assert_eq!(v["error.message"], "second", "the last value wins");
        assert_eq!(v["span.id"], "s1");
        assert_eq!(v["password"], crate::REDACTED);
        assert_eq!(v["nested"]["api_key"], crate::REDACTED);
    }

    #[test]
    fn hidden_characters_are_escaped() {
        let (text, v) = ecs(&Record::new(Level::Info, "app", "a\u{2028}b\u{1b}[2J"));
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{1b}'),
            "{text}"
        );
        assert_eq!(v["message"], "a\u{2028}b\u{1b}[2J");
    }
}
