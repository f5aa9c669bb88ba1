//! The journald sink: systemd's native journal protocol, one datagram per record to the
//! journal's socket (`/run/systemd/journal/socket`).
//!
//! An entry holds, in this order: `PRIORITY` (the syslog severity, [`syslog_severity`]),
//! `SYSLOG_FACILITY` (when configured), `SYSLOG_IDENTIFIER`, `LOGGER` (the logger's name),
//! `MESSAGE`, then one field per record field. Field names become journal names: upper case,
//! characters other than `A-Z`, `0-9` and `_` become `_`, a name that does not start with a
//! letter gets a `KEEL_` prefix (journald ignores names starting with `_` and digits), at
//! most 64 bytes; a field named like one of the entry's own names becomes `FIELD_<NAME>`; a
//! repeated name is written once, with its last value. Secret-looking keys are
//! `[REDACTED]` (nested JSON included).
//!
//! Values are written exactly (the protocol frames them: `NAME=value\n`, or `NAME\n`, a
//! 64-bit little-endian length, the value and `\n` when it holds a newline), so a value can
//! never pose as another field; `journalctl` escapes what it shows.
//!
//! Size: the protocol sends larger entries as a memfd, which needs `unsafe` file-descriptor
//! passing; this sink instead caps an entry at `max_entry_bytes` (default 128 KiB, below
//! Linux's default socket send buffer). A longer entry keeps `PRIORITY`,
//! `SYSLOG_FACILITY`, `SYSLOG_IDENTIFIER`, `LOGGER`, `KEEL_TRUNCATED=<original bytes>`
//! and as much of `MESSAGE` as fits (cut at a character boundary); its other fields are
//! dropped.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::format::{Format, REDACTED, is_secret_key, mask_url_credentials, redact_json};
use crate::record::{Field, Record, Value};
use crate::sink::syslog::{Facility, program_name, syslog_severity};
use crate::sink::transport::{Target, Timing, TransportWriter};
use crate::sink::{DeliveryStats, FlushPolicy, Overflow, QueueSink, Sink};

/// The journal's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Names the entry writes itself.
const OWN: [&str; 6] = [
    "PRIORITY",
    "SYSLOG_FACILITY",
    "SYSLOG_IDENTIFIER",
    "LOGGER",
    "MESSAGE",
    "KEEL_TRUNCATED",
];

/// Settings of a [`JournaldSink`]. [`JournaldOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JournaldOptions {
    /// The journal's socket (default [`JOURNAL_SOCKET`]).
    pub path: PathBuf,
    /// `SYSLOG_IDENTIFIER` (default: this program's file name).
    pub identifier: String,
    /// `SYSLOG_FACILITY` (default: not written).
    pub facility: Option<Facility>,
    /// Largest entry in bytes (default 131 072, at least 1024); see the module docs.
    pub max_entry_bytes: usize,
    /// Bound of one send (default 5 s).
    pub timeout: Duration,
    /// First reconnect delay after a failure (default 100 ms), doubling per failure.
    pub backoff: Duration,
    /// Longest reconnect delay (default 5 s).
    pub max_backoff: Duration,
    /// The queue's flush policy (datagrams are sent as they come; it only paces the counts).
    pub flush: FlushPolicy,
}

impl Default for JournaldOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl JournaldOptions {
    /// The defaults: the system journal's socket.
    pub fn new() -> Self {
        Self {
            path: JOURNAL_SOCKET.into(),
            identifier: program_name(),
            facility: None,
            max_entry_bytes: 128 << 10,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            flush: FlushPolicy::default(),
        }
    }
}

/// The journal name of a record field.
fn journal_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        name.insert_str(0, "KEEL_");
    }
    if OWN.contains(&name.as_str()) {
        name.insert_str(0, "FIELD_");
    }
    name.truncate(64);
    name
}

/// Appends one field in the native protocol's framing.
fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Formats records as native journal entries.
#[derive(Debug, Clone)]
pub(crate) struct JournalFormat {
    identifier: String,
    facility: Option<String>,
    max: usize,
}

impl JournalFormat {
    fn new(o: &JournaldOptions) -> Self {
        Self {
            identifier: o.identifier.clone(),
            facility: o.facility.map(|f| f.code().to_string()),
            max: o.max_entry_bytes.max(1024),
        }
    }

    fn head(&self, record: &Record, out: &mut Vec<u8>) {
        put(
            out,
            "PRIORITY",
            syslog_severity(record.level).to_string().as_bytes(),
        );
        if let Some(f) = &self.facility {
            put(out, "SYSLOG_FACILITY", f.as_bytes());
        }
        put(out, "SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        put(out, "LOGGER", record.logger.as_bytes());
    }
}

fn value_text(f: &Field) -> std::borrow::Cow<'_, str> {
    if is_secret_key(&f.key) {
        return REDACTED.into();
    }
    match &f.value {
        Value::Str(s) => mask_url_credentials(s),
        Value::Json(v) => redact_json(v.clone()).to_string().into(),
        other => other.to_string().into(),
    }
}

impl Format for JournalFormat {
    fn format(&self, record: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        self.head(record, out);
        let masked = mask_url_credentials(&record.message);
        put(out, "MESSAGE", masked.as_bytes());
        let fields: smallvec::SmallVec<[&Field; 16]> = record.all_fields().collect();
        let names: smallvec::SmallVec<[String; 16]> =
            fields.iter().map(|f| journal_name(&f.key)).collect();
        for (i, f) in fields.iter().enumerate() {
            if names[i + 1..].contains(&names[i]) {
                continue;
            }
            put(out, &names[i], value_text(f).as_bytes());
        }
        let full = out.len() - start;
        if full <= self.max {
            return;
        }
        out.truncate(start);
        self.head(record, out);
        put(out, "KEEL_TRUNCATED", full.to_string().as_bytes());
        // `MESSAGE\n`, 8 length bytes, the value, `\n`.
        let room = self.max.saturating_sub(out.len() - start + 8 + 8 + 1);
        let message = masked.as_bytes();
        let mut end = room.min(message.len());
        while end > 0 && end < message.len() && message[end] & 0xc0 == 0x80 {
            end -= 1;
        }
        out.extend_from_slice(b"MESSAGE\n");
        let _ = out.write_all(&(end as u64).to_le_bytes());
        out.extend_from_slice(&message[..end]);
        out.push(b'\n');
    }
}

/// A journald sink: a [`QueueSink`] whose writer sends native journal entries as datagrams
/// (see the module docs for the entry's fields and the size cap).
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_log::{JournaldOptions, JournaldSink, Level, Logger, Overflow, Sink};
///
/// let sink = JournaldSink::start("app:journald", JournaldOptions::new(), 10_000, Overflow::Block)
///     .unwrap();
/// let log = Logger::new("app", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
/// log.info("started", &[]);
/// ```
#[derive(Debug)]
pub struct JournaldSink {
    queue: QueueSink,
}

impl JournaldSink {
    /// Starts the writer thread; it connects to the socket at the first record (a missing
    /// socket only makes records fail, retried with backoff).
    ///
    /// # Errors
    /// [`Error::Sink`] when the thread cannot start.
    pub fn start(
        name: impl Into<String>,
        options: JournaldOptions,
        capacity: usize,
        overflow: Overflow,
    ) -> Result<Self, Error> {
        let name = name.into();
        let timing = Timing {
            timeout: options.timeout,
            backoff: options.backoff,
            max_backoff: options.max_backoff,
        };
        let writer =
            TransportWriter::new(&name, Target::UnixDatagram(options.path.clone()), timing);
        let queue = QueueSink::start_with_flush(
            &name,
            capacity,
            overflow,
            options.flush,
            Box::new(JournalFormat::new(&options)),
            writer,
        )
        .map_err(|source| Error::Sink {
            sink: name.clone(),
            source,
        })?;
        Ok(Self { queue })
    }
}

impl Sink for JournaldSink {
    fn name(&self) -> &str {
        self.queue.name()
    }

    fn write(&self, record: Record) {
        self.queue.write(record);
    }

    fn write_within(&self, record: Record, timeout: Duration) -> bool {
        self.queue.write_within(record, timeout)
    }

    fn flush(&self, timeout: Duration) -> DeliveryStats {
        self.queue.flush(timeout)
    }

    fn shutdown(&self, timeout: Duration) -> DeliveryStats {
        self.queue.shutdown(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Level, field};

    /// URL credentials are masked in the message and in string fields.
    #[test]
    fn url_credentials_masked() {
        let f = JournalFormat::new(&JournaldOptions::new());
        let r = Record::new(Level::Error, "api", "down: redis://u:hunter2@h:1")
            .with(vec![field("cause", "rediss://:pw2@x:2/0")]);
        let mut out = Vec::new();
        f.format(&r, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("hunter2") && !text.contains("pw2"), "{text}");
        assert!(text.contains("redis://[REDACTED]@h:1"), "{text}");
    }

    #[test]
    fn names_framing_and_the_cap() {
        assert_eq!(journal_name("user_id"), "USER_ID");
        assert_eq!(journal_name("http.status-code"), "HTTP_STATUS_CODE");
        assert_eq!(journal_name("_pid"), "KEEL__PID");
        assert_eq!(journal_name("1st"), "KEEL_1ST");
        assert_eq!(journal_name("message"), "FIELD_MESSAGE");
        assert_eq!(journal_name(&"x".repeat(100)).len(), 64);
        let mut o = JournaldOptions::new();
        o.identifier = "shop".into();
        let f = JournalFormat::new(&o);
        let r = Record::new(Level::Error, "api", "two\nlines").with(vec![field("k", "v")]);
        let mut out = Vec::new();
        f.format(&r, &mut out);
        let mut expected = b"PRIORITY=3\nSYSLOG_IDENTIFIER=shop\nLOGGER=api\nMESSAGE\n".to_vec();
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(b"two\nlines\nK=v\n");
        assert_eq!(out, expected);
        o.max_entry_bytes = 1024;
        let big = Record::new(Level::Info, "api", "é".repeat(2000)).with(vec![field("k", "v")]);
        let mut out = Vec::new();
        JournalFormat::new(&o).format(&big, &mut out);
        assert!(out.len() <= 1024 && out.len() > 900, "{}", out.len());
    }
}
