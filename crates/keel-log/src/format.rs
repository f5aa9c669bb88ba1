//! Text and JSON formatters, with redaction of secret-looking keys.

use std::io::Write;

use crate::record::{Field, Level, Record, Value};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Key fragments that mark a value as secret (compared case-insensitively, ignoring `-`/`_`).
const SECRET_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "apikey",
    "credential",
    "privatekey",
    "cookie",
];

/// Whether a field with this key must never be written in clear: `password`, `api_key`,
/// `X-Auth-Token`, `client_secret`, `Authorization`, `refreshToken`…
pub fn is_secret_key(key: &str) -> bool {
    // The usual key is short ASCII: fold it on the stack.
    let mut buf = [0u8; 64];
    if key.len() <= buf.len() && key.is_ascii() {
        let mut n = 0;
        for b in key.bytes() {
            if !matches!(b, b'_' | b'-' | b'.') {
                buf[n] = b.to_ascii_lowercase();
                n += 1;
            }
        }
        let folded = &buf[..n];
        // One pass: only positions whose byte starts some fragment are compared.
        return (0..n).any(|i| {
            let rest = &folded[i..];
            SECRET_FRAGMENTS
                .iter()
                .any(|f| f.as_bytes()[0] == rest[0] && rest.starts_with(f.as_bytes()))
        });
    }
    let folded: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-' && *c != '.')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_FRAGMENTS.iter().any(|f| folded.contains(f))
}

/// Turns a record into bytes (one line, newline included).
pub trait Format: Send + Sync {
    /// Appends the formatted record to `out`.
    fn format(&self, record: &Record, out: &mut Vec<u8>);
}

/// `<time> [<LEVEL>] <logger>: <message> k=v …`, one line. Control characters in the message
/// and values are escaped (`\n`, `\t`, `\u{1b}`); values with spaces, quotes, `=` or escapes
/// are quoted. Colour (the level only) when `color` is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFormat {
    /// Colour the level with ANSI escapes.
    pub color: bool,
}

impl TextFormat {
    /// Colour only for a terminal, and never when `NO_COLOR` is set (to anything non-empty).
    pub fn for_output(is_terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            color: is_terminal && !no_color,
        }
    }
}

/// Characters never written raw: C0 and C1 controls and DEL (`char::is_control`), the
/// Unicode line and paragraph separators (which end a line for many readers), and the
/// bidirectional overrides and isolates (which reorder what a terminal shows).
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if is_hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn write_text_value(out: &mut Vec<u8>, text: &str) {
    let needs_quotes = text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || is_hidden(c) || matches!(c, '"' | '=' | '\\'));
    if needs_quotes {
        write_quoted(out, text);
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// The message of a text line: bare (escaped) unless it could be read as something else — it
/// is empty, holds `=` (` role=admin` would pose as a field), a quote or a backslash, or
/// starts or ends with whitespace; then it is quoted like a value.
fn write_text_message(out: &mut Vec<u8>, text: &str) {
    let needs_quotes = text.is_empty()
        || text.starts_with(char::is_whitespace)
        || text.ends_with(char::is_whitespace)
        || text.contains(['=', '"', '\\']);
    if needs_quotes {
        write_quoted(out, text);
    } else {
        escape_into(out, text);
    }
}

/// `"text"` with `"` and `\` backslash-escaped and control characters escaped.
fn write_quoted(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c => {
                let mut tmp = String::new();
                tmp.push(c);
                escape_into(out, &tmp);
            }
        }
    }
    out.push(b'"');
}

fn level_color(level: Level) -> &'static str {
    match level {
        Level::Debug => "\x1b[36m",
        Level::Info => "\x1b[32m",
        Level::Warn => "\x1b[33m",
        Level::Error => "\x1b[31m",
        Level::Fatal => "\x1b[35;1m",
    }
}

fn timestamp(record: &Record) -> String {
    rfc3339_millis(record.time)
}

/// RFC 3339 UTC with milliseconds. A time before 1970 or after 9999 (a bad clock, or a
/// record built by hand) is clamped into that range instead of failing.
pub(crate) fn rfc3339_millis(time: std::time::SystemTime) -> String {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};
    const LAST: Duration = Duration::from_millis(253_402_300_799_999);
    thread_local! {
        /// The last second formatted on this thread and its `YYYY-MM-DDTHH:MM:SS` text: a
        /// writer thread formats many records per second.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST);
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string();
            // `YYYY-MM-DDTHH:MM:SSZ` without the `Z`.
            *cached = (secs, full.trim_end_matches('Z').to_owned());
        }
        let mut out = String::with_capacity(24);
        out.push_str(&cached.1);
        out.push('.');
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            out.push(char::from(b'0' + digit as u8));
        }
        out.push('Z');
        out
    })
}

impl Format for TextFormat {
    fn format(&self, record: &Record, out: &mut Vec<u8>) {
        out.extend_from_slice(timestamp(record).as_bytes());
        out.extend_from_slice(b" [");
        if self.color {
            out.extend_from_slice(level_color(record.level).as_bytes());
            out.extend_from_slice(record.level.as_str().as_bytes());
            out.extend_from_slice(b"\x1b[0m");
        } else {
            out.extend_from_slice(record.level.as_str().as_bytes());
        }
        out.extend_from_slice(b"] ");
        escape_into(out, &record.logger);
        out.extend_from_slice(b": ");
        write_text_message(out, &record.message);
        for Field { key, value } in record.all_fields() {
            out.push(b' ');
            // Quoted like a value when it holds a space, `=` or a quote, so a key can never
            // pose as more than one field.
            write_text_value(out, key);
            out.push(b'=');
            if is_secret_key(key) {
                out.extend_from_slice(REDACTED.as_bytes());
                continue;
            }
            match value {
                Value::Json(v) => write_text_value(out, &redact_json(v.clone()).to_string()),
                other => write_text_value(out, &other.to_string()),
            }
        }
        out.push(b'\n');
    }
}

/// One JSON object per line: `time` (RFC 3339, UTC, ms), `level`, `logger`, `message`, then
/// the fields flat. A field named like a reserved key is written as `fields.<key>`; when a key
/// repeats, the last value wins (call fields override prebound ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

const RESERVED: [&str; 4] = ["time", "level", "logger", "message"];

fn redact_json(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if is_secret_key(&k) {
                        (k, serde_json::Value::String(REDACTED.into()))
                    } else {
                        (k, redact_json(v))
                    }
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(redact_json).collect())
        }
        other => other,
    }
}

/// The JSON name a field is written under in a flat object: reserved keys become
/// `fields.<key>`.
fn flat_name(key: &str) -> std::borrow::Cow<'_, str> {
    if RESERVED.contains(&key) {
        format!("fields.{key}").into()
    } else {
        key.into()
    }
}

/// Writes the fields as `,"key":value` pairs: secret keys redacted, a repeated name written
/// once with its last value (call fields override bound ones; Elasticsearch rejects
/// duplicate keys), `flat` renaming reserved keys. `first` says no pair precedes them.
pub(crate) fn write_json_fields<'a>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = &'a Field>,
    flat: bool,
    mut first: bool,
) {
    let fields: smallvec::SmallVec<[&Field; 16]> = fields.collect();
    let name = |f: &'a Field| {
        if flat {
            flat_name(&f.key)
        } else {
            std::borrow::Cow::Borrowed(f.key.as_ref())
        }
    };
    for (i, f) in fields.iter().enumerate() {
        let key = name(f);
        if fields[i + 1..].iter().any(|g| name(g) == key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, key.as_ref());
        out.push(b':');
        write_json_value(out, &f.key, &f.value);
    }
}

fn write_json_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    if is_secret_key(key) {
        let _ = serde_json::to_writer(&mut *out, REDACTED);
        return;
    }
    let _ = match value {
        Value::Str(s) => serde_json::to_writer(&mut *out, s.as_ref()),
        Value::I64(v) => write!(out, "{v}").map_err(serde_json::Error::io),
        Value::U64(v) => write!(out, "{v}").map_err(serde_json::Error::io),
        Value::F64(v) if v.is_finite() => serde_json::to_writer(&mut *out, v),
        Value::F64(v) => serde_json::to_writer(&mut *out, &v.to_string()),
        Value::Bool(v) => serde_json::to_writer(&mut *out, v),
        Value::Json(v) => serde_json::to_writer(&mut *out, &redact_json(v.clone())),
    };
}

/// Rewrites DEL, C1 controls, the line/paragraph separators and bidi controls that
/// serde_json leaves raw in `out[start..]` as `\uXXXX` escapes. Outside strings a JSON line
/// holds only ASCII, so every such character is inside a string, where the escape means the
/// same character.
fn escape_hidden_json(out: &mut Vec<u8>, start: usize) {
    // Their UTF-8 encodings start with 0x7f, 0xc2 or 0xe2; most lines have none of these.
    if !out[start..].iter().any(|b| matches!(b, 0x7f | 0xc2 | 0xe2)) {
        return;
    }
    let Ok(text) = std::str::from_utf8(&out[start..]) else {
        return;
    };
    let mut fixed = Vec::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c == '\u{7f}' || (is_hidden(c) && !c.is_ascii()) {
            let _ = write!(fixed, "\\u{:04x}", c as u32);
        } else {
            let mut buf = [0u8; 4];
            fixed.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    out.truncate(start);
    out.extend_from_slice(&fixed);
}

impl Format for JsonFormat {
    fn format(&self, record: &Record, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(timestamp(record).as_bytes());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(record.level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"logger\":");
        let _ = serde_json::to_writer(&mut *out, record.logger.as_ref());
        out.extend_from_slice(b",\"message\":");
        let _ = serde_json::to_writer(&mut *out, record.message.as_ref());
        write_json_fields(out, record.all_fields(), true, false);
        out.extend_from_slice(b"}\n");
        escape_hidden_json(out, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::field;

    fn text(record: &Record) -> String {
        let mut out = Vec::new();
        TextFormat::default().format(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn json(record: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        JsonFormat.format(record, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn text_line_shape_quoting_and_escapes() {
        let r = Record::new(Level::Warn, "smtp", "queue\nfull\x1b[2J").with(vec![
            field("plain", "v1"),
            field("spaced", "two words"),
            field("quoted", "say \"hi\""),
            field("empty", ""),
            field("n", 42),
            field("ok", true),
        ]);
        let line = text(&r);
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(
            rest,
            "[WARN] smtp: queue\\nfull\\u{1b}[2J plain=v1 spaced=\"two words\" quoted=\"say \\\"hi\\\"\" empty=\"\" n=42 ok=true\n"
        );
        assert!(!line.contains('\x1b'), "no raw escape characters");
    }

    #[test]
    fn text_keys_cannot_forge_fields() {
        let r = Record::new(Level::Info, "app", "m").with(vec![
            field("user admin", "yes"),
            field("role=admin x", "y"),
            field("", "empty key"),
            field("k\"q", 1),
        ]);
        let line = text(&r);
        let rest = line.split_once("app: m ").unwrap().1;
        assert_eq!(
            rest,
            "\"user admin\"=yes \"role=admin x\"=y \"\"=\"empty key\" \"k\\\"q\"=1\n"
        );
    }

    #[test]
    fn text_messages_cannot_forge_fields() {
        let msg = |m: &'static str| {
            let line = text(&Record::new(Level::Info, "auth", m).with(vec![field("k", 1)]));
            line.split_once("auth: ").unwrap().1.to_owned()
        };
        assert_eq!(msg("login ok role=admin"), "\"login ok role=admin\" k=1\n");
        assert_eq!(
            msg("say \"hi\" \\ bye"),
            "\"say \\\"hi\\\" \\\\ bye\" k=1\n"
        );
        assert_eq!(msg(" padded "), "\" padded \" k=1\n");
        assert_eq!(msg(""), "\"\" k=1\n");
        // The usual message stays bare.
        assert_eq!(
            msg("user logged in: 3 tries"),
            "user logged in: 3 tries k=1\n"
        );
    }

    #[test]
    fn del_c1_and_line_separators_are_escaped_in_both_formats() {
        let nasty = "a\u{7f}b\u{85}c\u{9b}d\u{2028}e\u{2029}f";
        let r = Record::new(Level::Info, "app", nasty).with(vec![field("k", nasty)]);
        let line = text(&r);
        for raw in ['\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}'] {
            assert!(!line.contains(raw), "text: {raw:?} raw in {line:?}");
        }
        assert!(
            line.contains("a\\u{7f}b\\u{85}c\\u{9b}d\\u{2028}e\\u{2029}f"),
            "{line}"
        );
        let mut out = Vec::new();
        JsonFormat.format(&r, &mut out);
        let raw_json = String::from_utf8(out.clone()).unwrap();
        for raw in ['\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}'] {
            assert!(!raw_json.contains(raw), "json: {raw:?} raw in {raw_json:?}");
        }
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], nasty, "escaped, not altered");
        assert_eq!(v["k"], nasty);
    }

    #[test]
    fn timestamps_match_humantime_across_seconds() {
        use std::time::{Duration, UNIX_EPOCH};
        for ms in [
            0u64,
            999,
            1_000,
            1_001,
            1_763_855_999_999,
            1_763_856_000_000,
            1_763_856_000_042,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(
                rfc3339_millis(t),
                humantime::format_rfc3339_millis(t).to_string(),
                "{ms}"
            );
        }
    }

    #[test]
    fn json_keeps_the_documented_key_order_and_one_value_per_key() {
        let r = Record::new(Level::Info, "app", "m").with(vec![
            field("zeta", 1),
            field("alpha", "a"),
            field("zeta", 2),
            field("nan", f64::NAN),
            field("x", 1.5),
            field(
                "Very-Long-Header-Name-That-Carries-An-Authorization-Bearer-Value-For-Sure",
                "v",
            ),
        ]);
        let mut out = Vec::new();
        JsonFormat.format(&r, &mut out);
        let line = String::from_utf8(out).unwrap();
        let time_end = line.find("\",\"level\"").unwrap();
        assert!(line.starts_with("{\"time\":\""), "{line}");
        assert_eq!(
            &line[time_end..],
            "\",\"level\":\"INFO\",\"logger\":\"app\",\"message\":\"m\",\"alpha\":\"a\",\"zeta\":2,\"nan\":\"NaN\",\"x\":1.5,\"Very-Long-Header-Name-That-Carries-An-Authorization-Bearer-Value-For-Sure\":\"[REDACTED]\"}\n"
        );
        assert!(is_secret_key("X-Auth-Token") && is_secret_key("clientSecret"));
        assert!(is_secret_key("ÜBER_PASSWORD") && !is_secret_key("passage"));
    }

    #[test]
    fn colour_only_when_asked() {
        let r = Record::new(Level::Error, "a", "m");
        let mut out = Vec::new();
        TextFormat { color: true }.format(&r, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("\x1b[31mERROR\x1b[0m")
        );
        assert!(!text(&r).contains('\x1b'));
        assert!(!TextFormat::for_output(false).color);
    }

    #[test]
    fn json_is_flat_valid_and_keeps_reserved_keys() {
        let r = Record::new(Level::Info, "app", "line \"1\"\n\tend").with(vec![
            field("message", "not the message"),
            field("level", 7),
            field("user", "ada"),
            field("ratio", 0.5),
            field("nan", f64::NAN),
            field("big", u64::MAX),
            field("nested", serde_json::json!({"a": [1, 2], "token": "t0p"})),
            field("user", "grace"),
        ]);
        let v = json(&r);
        assert_eq!(v["message"], "line \"1\"\n\tend");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["logger"], "app");
        assert_eq!(v["fields.message"], "not the message");
        assert_eq!(v["fields.level"], 7);
        assert_eq!(v["user"], "grace", "the last value wins");
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["big"], u64::MAX);
        assert_eq!(v["nested"]["a"][1], 2);
        assert_eq!(v["nested"]["token"], REDACTED);
        assert!(humantime::parse_rfc3339(v["time"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn secrets_are_redacted_in_both_formats() {
        for key in [
            "password",
            "DB_PASSWORD",
            "api-key",
            "X-Auth-Token",
            "client_secret",
            "Authorization",
            "refreshToken",
            "Cookie",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        assert!(!is_secret_key("user_id") && !is_secret_key("author"));
        // Anything containing "token" counts: redaction errs on the safe side.
        assert!(is_secret_key("tokens_used"));
        let r = Record::new(Level::Info, "a", "login").with(vec![
            field("password", "hunter2"),
            field("api_key", "k-123"),
            field("user", "ada"),
        ]);
        let line = text(&r);
        assert!(
            !line.contains("hunter2") && !line.contains("k-123"),
            "{line}"
        );
        assert!(line.contains("password=[REDACTED]"));
        let v = json(&r);
        assert_eq!(v["password"], REDACTED);
        assert_eq!(v["api_key"], REDACTED);
        assert_eq!(v["user"], "ada");
    }
}
