//! The syslog sink: RFC 5424 messages over a Unix datagram socket (`/dev/log`), UDP, or TCP
//! with octet counting (RFC 6587).
//!
//! One record is one message:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - [keel@32473 logger="…" key="value" …] MSG
//! ```
//!
//! - PRI is `facility * 8 + severity`, severities by [`syslog_severity`]: Debug 7 (debug),
//!   Info 6 (informational), Warn 4 (warning), Error 3 (error), Fatal 2 (critical).
//! - TIMESTAMP is the record's time, RFC 3339 UTC with milliseconds; HOSTNAME, APP-NAME
//!   and PROCID (this process's id) are printable ASCII without spaces (other characters
//!   become `_`; HOSTNAME is cut at 255, APP-NAME at 48 bytes); MSGID is `-`.
//! - The fields go in one SD-ELEMENT (`keel@32473` unless configured; 32473 is the
//!   documentation enterprise number of RFC 5612): `logger` first, then each field with its
//!   name made a valid PARAM-NAME (printable ASCII except `=`, space, `]` and `"`, other
//!   characters `_`, at most 32 bytes; a field named `logger` becomes `fields.logger`;
//!   a repeated name is written once, with its last value). Values are escaped as RFC 5424
//!   says (`"`, `\` and `]` get a backslash) and control characters as the text format writes
//!   them (`\n`, `\u{1b}`); secret-looking keys are `[REDACTED]`.
//! - MSG is the message, control characters escaped like the text format (so a message is
//!   one line for receivers that split on newlines), without a BOM (RFC 5424's `MSG-ANY`).
//! - With [`SyslogBody::Json`] or [`SyslogBody::Ecs`] (config `formatter = "json"` or
//!   `"ecs"`) there is no structured data (`-`) and MSG is the record as one JSON object.
//! - A message longer than `max_message_bytes` (default 8 KiB; at least 480, the size every
//!   receiver must accept) keeps only `logger` and `truncated="<original length>"` in its
//!   structured data and has its MSG cut at a character boundary to fit.
//!
//! Transports: a datagram carries one message (Unix sockets and UDP); TCP frames each
//! message as `<length> <message>` and writes frames out at each flush of the queue's flush
//! policy (and every 64 KiB). A TCP write counted as written was accepted by the kernel;
//! when a connection breaks, the records sent since the last flush are counted as failed,
//! though the receiver may have some of them (at most once, never duplicated). UDP counts a
//! record written when it was sent, whether or not anyone listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::format::{
    Format, REDACTED, escape_into, is_hidden, is_secret_key, mask_url_credentials, redact_json,
};
use crate::record::{Field, Level, Record, Value};
use crate::sink::transport::{Target, Timing, TransportWriter};
use crate::sink::{DeliveryStats, FlushPolicy, Overflow, QueueSink, Sink};

/// Where a [`SyslogSink`] sends its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyslogTransport {
    /// A local Unix datagram socket (`/dev/log`, the default).
    Unix(PathBuf),
    /// UDP, one message per datagram.
    Udp(SocketAddr),
    /// TCP, messages framed by octet counting.
    Tcp(SocketAddr),
}

/// A syslog facility (RFC 5424 table 1). Parsed from its lower-case name (`user`,
/// `daemon`, `local0` … `local7`, …) or its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Facility(u8);

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl Facility {
    /// `user` (1), the default.
    pub const USER: Facility = Facility(1);
    /// `daemon` (3).
    pub const DAEMON: Facility = Facility(3);
    /// `local0` (16); `local1` … `local7` follow it.
    pub const LOCAL0: Facility = Facility(16);

    /// The facility with this code (0 to 23).
    pub fn from_code(code: u8) -> Option<Self> {
        (usize::from(code) < FACILITIES.len()).then_some(Self(code))
    }

    /// Its code (0 to 23).
    pub const fn code(self) -> u8 {
        self.0
    }
}

impl Default for Facility {
    fn default() -> Self {
        Self::USER
    }
}

impl FromStr for Facility {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let name = s.trim().to_ascii_lowercase();
        FACILITIES
            .iter()
            .position(|f| *f == name)
            .and_then(|i| u8::try_from(i).ok())
            .or_else(|| name.parse::<u8>().ok())
            .and_then(Self::from_code)
            .ok_or_else(|| Error::InvalidConfig {
                field: "options.facility".into(),
                reason: format!(
                    "{s:?}: use one of {} or a number 0-23",
                    FACILITIES.join(", ")
                ),
            })
    }
}

/// The syslog severity of a level: Debug 7, Info 6, Warn 4, Error 3, Fatal 2 (critical).
pub const fn syslog_severity(level: Level) -> u8 {
    match level {
        Level::Debug => 7,
        Level::Info => 6,
        Level::Warn => 4,
        Level::Error => 3,
        Level::Fatal => 2,
    }
}

/// What a syslog message carries after its header.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum SyslogBody {
    /// The fields as structured data, the message as MSG (the default).
    #[default]
    StructuredData,
    /// No structured data (`-`); MSG is the record as one [`JsonFormat`](crate::JsonFormat)
    /// object (config `formatter = "json"`).
    Json,
    /// No structured data (`-`); MSG is the record as one [`EcsFormat`](crate::EcsFormat)
    /// object (config `formatter = "ecs"`), for receivers that forward to Elasticsearch.
    Ecs(crate::format::EcsFormat),
}

/// Settings of a [`SyslogSink`]. [`SyslogOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyslogOptions {
    /// Where messages go.
    pub transport: SyslogTransport,
    /// The facility (default `user`).
    pub facility: Facility,
    /// APP-NAME (default: this program's file name).
    pub app_name: String,
    /// HOSTNAME (default: this machine's name, else `-`).
    pub hostname: String,
    /// The SD-ID of the fields' SD-ELEMENT (default `keel@32473`).
    pub sd_id: String,
    /// Structured data and message (the default), or a JSON or ECS object as MSG.
    pub body: SyslogBody,
    /// Longest message in bytes (default 8192, at least 480); longer ones are cut.
    pub max_message_bytes: usize,
    /// Bound of one connect and one send (default 5 s).
    pub timeout: Duration,
    /// First reconnect delay after a failure (default 100 ms), doubling per failure.
    pub backoff: Duration,
    /// Longest reconnect delay (default 5 s).
    pub max_backoff: Duration,
    /// When the writer flushes: for TCP, when frames are written out (default: when the
    /// queue drains and at least every second).
    pub flush: FlushPolicy,
}

/// The file name of this program, or `keel`.
pub(crate) fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "keel".into())
}

impl SyslogOptions {
    /// The defaults for `transport`.
    pub fn new(transport: SyslogTransport) -> Self {
        Self {
            transport,
            facility: Facility::USER,
            app_name: program_name(),
            hostname: crate::format::hostname().unwrap_or_else(|| "-".into()),
            sd_id: "keel@32473".into(),
            body: SyslogBody::StructuredData,
            max_message_bytes: 8192,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            flush: FlushPolicy::default(),
        }
    }
}

/// Formats records as RFC 5424 messages (no trailing newline).
#[derive(Debug, Clone)]
pub(crate) struct SyslogFormat {
    facility: u8,
    /// `HOSTNAME APP-NAME PROCID -`, sanitized once.
    header: String,
    sd_id: String,
    body: SyslogBody,
    max: usize,
}

/// `text` as printable ASCII without spaces, at most `max` bytes; `-` when empty.
fn header_field(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// A valid PARAM-NAME (or SD-NAME) for `key`.
fn param_name(key: &str) -> std::borrow::Cow<'_, str> {
    if key == "logger" {
        return "fields.logger".into();
    }
    let ok = |c: char| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"');
    if !key.is_empty() && key.len() <= 32 && key.chars().all(ok) {
        return key.into();
    }
    let mut name: String = key
        .chars()
        .map(|c| if ok(c) { c } else { '_' })
        .take(32)
        .collect();
    if name.is_empty() {
        name.push('_');
    }
    name.into()
}

/// Appends `"value"` escaped for a PARAM-VALUE.
fn param_value(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push(b'\\');
                out.push(c as u8);
            }
            c if is_hidden(c) => {
                let mut buf = [0u8; 4];
                escape_into(out, c.encode_utf8(&mut buf));
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

fn field_text(f: &Field) -> std::borrow::Cow<'_, str> {
    if is_secret_key(&f.key) {
        return REDACTED.into();
    }
    match &f.value {
        Value::Str(s) => mask_url_credentials(s),
        Value::Json(v) => redact_json(v.clone()).to_string().into(),
        other => other.to_string().into(),
    }
}

/// The longest prefix of `bytes` of at most `max` bytes that ends at a character boundary.
fn cut_at_char(bytes: &[u8], max: usize) -> &[u8] {
    let mut end = max.min(bytes.len());
    // UTF-8 continuation bytes are 0b10xx_xxxx.
    while end > 0 && end < bytes.len() && bytes[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    &bytes[..end]
}

impl SyslogFormat {
    pub(crate) fn new(o: &SyslogOptions) -> Result<Self, Error> {
        let sd_ok = !o.sd_id.is_empty()
            && o.sd_id.len() <= 32
            && o.sd_id
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"'));
        if !sd_ok {
            return Err(Error::InvalidConfig {
                field: "options.sd_id".into(),
                reason: format!(
                    "{:?}: 1 to 32 printable ASCII characters without =, ], \" or space",
                    o.sd_id
                ),
            });
        }
        Ok(Self {
            facility: o.facility.code(),
            header: format!(
                "{} {} {} -",
                header_field(&o.hostname, 255),
                header_field(&o.app_name, 48),
                std::process::id()
            ),
            sd_id: o.sd_id.clone(),
            body: o.body.clone(),
            max: o.max_message_bytes.max(480),
        })
    }

    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID -`.
    fn head_only(&self, record: &Record, out: &mut Vec<u8>) {
        let pri = u32::from(self.facility) * 8 + u32::from(syslog_severity(record.level));
        out.push(b'<');
        out.extend_from_slice(pri.to_string().as_bytes());
        out.extend_from_slice(b">1 ");
        out.extend_from_slice(crate::format::rfc3339_millis(record.time).as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.header.as_bytes());
    }

    /// The header and the start of the SD-ELEMENT, up to `logger`.
    fn head(&self, record: &Record, out: &mut Vec<u8>) {
        self.head_only(record, out);
        out.extend_from_slice(b" [");
        out.extend_from_slice(self.sd_id.as_bytes());
        out.extend_from_slice(b" logger=");
        param_value(out, &record.logger);
    }
}

impl Format for SyslogFormat {
    fn format(&self, record: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        let inner: &dyn Format = match &self.body {
            SyslogBody::StructuredData => return self.format_sd(record, out),
            SyslogBody::Json => &crate::format::JsonFormat,
            SyslogBody::Ecs(ecs) => ecs,
        };
        let body = |msg: &mut Vec<u8>| {
            inner.format(record, msg);
            if msg.last() == Some(&b'\n') {
                msg.pop();
            }
        };
        self.head_only(record, out);
        out.extend_from_slice(b" - ");
        body(out);
        self.fit(record, out, start, body);
    }
}

impl SyslogFormat {
    /// The fields as structured data, the message as MSG.
    fn format_sd(&self, record: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        self.head(record, out);
        let fields: smallvec::SmallVec<[&Field; 16]> = record.all_fields().collect();
        for (i, f) in fields.iter().enumerate() {
            let name = param_name(&f.key);
            if fields[i + 1..].iter().any(|g| param_name(&g.key) == name) {
                continue;
            }
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            param_value(out, &field_text(f));
        }
        out.extend_from_slice(b"] ");
        let message = mask_url_credentials(&record.message);
        escape_into(out, &message);
        self.fit(record, out, start, |msg| escape_into(msg, &message));
    }

    /// Rewrites a message longer than the bound: the header, `logger`, the original length,
    /// and as much of the MSG `body` writes as fits.
    fn fit(&self, record: &Record, out: &mut Vec<u8>, start: usize, body: impl Fn(&mut Vec<u8>)) {
        if out.len() - start <= self.max {
            return;
        }
        let full = out.len() - start;
        let mut msg = Vec::new();
        body(&mut msg);
        out.truncate(start);
        self.head(record, out);
        out.extend_from_slice(format!(" truncated=\"{full}\"] ").as_bytes());
        let room = self.max.saturating_sub(out.len() - start);
        out.extend_from_slice(cut_at_char(&msg, room));
        // A logger name longer than the bound itself: cut the frame (its SD may be cut).
        if out.len() - start > self.max {
            let keep = cut_at_char(&out[start..], self.max).len();
            out.truncate(start + keep);
        }
    }
}

/// A syslog sink: a [`QueueSink`] whose writer sends RFC 5424 messages (see the module
/// docs for the message and the transports).
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_log::{Level, Logger, Overflow, Sink, SyslogOptions, SyslogSink, SyslogTransport};
///
/// let options = SyslogOptions::new(SyslogTransport::Tcp("127.0.0.1:6514".parse().unwrap()));
/// let sink = SyslogSink::start("app:syslog", options, 10_000, Overflow::DropNewest).unwrap();
/// let log = Logger::new("app", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
/// log.info("started", &[]);
/// ```
#[derive(Debug)]
pub struct SyslogSink {
    queue: QueueSink,
}

impl SyslogSink {
    /// Starts the writer thread; it connects at the first record (a receiver that is not
    /// there yet only makes records fail until it is).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad `sd_id`, [`Error::Sink`] when the thread cannot
    /// start.
    pub fn start(
        name: impl Into<String>,
        options: SyslogOptions,
        capacity: usize,
        overflow: Overflow,
    ) -> Result<Self, Error> {
        let name = name.into();
        let format = SyslogFormat::new(&options)?;
        let target = match &options.transport {
            SyslogTransport::Unix(path) => Target::UnixDatagram(path.clone()),
            SyslogTransport::Udp(addr) => Target::Udp(*addr),
            SyslogTransport::Tcp(addr) => Target::Tcp(*addr),
        };
        let timing = Timing {
            timeout: options.timeout,
            backoff: options.backoff,
            max_backoff: options.max_backoff,
        };
        let writer = TransportWriter::new(&name, target, timing);
        let queue = QueueSink::start_with_flush(
            &name,
            capacity,
            overflow,
            options.flush,
            Box::new(format),
            writer,
        )
        .map_err(|source| Error::Sink {
            sink: name.clone(),
            source,
        })?;
        Ok(Self { queue })
    }
}

impl Sink for SyslogSink {
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
    use crate::record::field;

    fn options() -> SyslogOptions {
        let mut o = SyslogOptions::new(SyslogTransport::Unix("/dev/log".into()));
        o.hostname = "web 1".into();
        o.app_name = "shop".into();
        o.facility = "local3".parse().unwrap();
        o
    }

    fn message(o: &SyslogOptions, record: &Record) -> String {
        let mut out = Vec::new();
        SyslogFormat::new(o).unwrap().format(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// URL credentials are masked in the message and in string fields.
    #[test]
    fn url_credentials_masked() {
        let r = Record::new(Level::Error, "api", "down: redis://u:hunter2@h:1")
            .with(vec![field("cause", "rediss://:pw2@x:2/0")]);
        let text = message(&options(), &r);
        assert!(!text.contains("hunter2") && !text.contains("pw2"), "{text}");
        assert!(text.contains("redis://[REDACTED]@h:1"), "{text}");
    }

    #[test]
    fn header_structured_data_and_escapes() {
        let r = Record::new(Level::Warn, "api", "queue\nfull ]").with(vec![
            field("user id", "a\"b]c\\d"),
            field("logger", "forged"),
            field("token", "t0p"),
            field("n", 3),
            field("n", 4),
        ]);
        let text = message(&options(), &r);
        // local3 (19) * 8 + warning (4) = 156.
        assert!(text.starts_with("<156>1 "), "{text}");
        let rest = text.split_once(' ').unwrap().1.split_once(' ').unwrap().1;
        let pid = std::process::id();
        assert_eq!(
            rest,
            format!(
                "web_1 shop {pid} - [keel@32473 logger=\"api\" user_id=\"a\\\"b\\]c\\\\d\" fields.logger=\"forged\" token=\"[REDACTED\\]\" n=\"4\"] queue\\nfull ]"
            )
        );
    }

    #[test]
    fn long_messages_are_cut_to_the_bound_at_a_char_boundary() {
        let mut o = options();
        o.max_message_bytes = 600;
        let r = Record::new(Level::Info, "api", "é".repeat(1000)).with(vec![field("k", "v")]);
        let text = message(&o, &r);
        assert!(text.len() <= 600 && text.len() > 500, "{}", text.len());
        assert!(text.contains(" truncated=\""), "{text}");
        assert!(!text.contains(" k=\""));
    }

    #[test]
    fn severities_and_facilities() {
        assert_eq!(
            [
                Level::Debug,
                Level::Info,
                Level::Warn,
                Level::Error,
                Level::Fatal
            ]
            .map(syslog_severity),
            [7, 6, 4, 3, 2]
        );
        assert_eq!("daemon".parse::<Facility>().unwrap(), Facility::DAEMON);
        assert_eq!("23".parse::<Facility>().unwrap().code(), 23);
        assert!("24".parse::<Facility>().is_err() && "locl0".parse::<Facility>().is_err());
    }
}
