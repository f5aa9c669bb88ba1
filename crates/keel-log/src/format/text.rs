//! The text line formatter.

use std::io::Write;

use super::redact::{REDACTED, is_secret_key, mask_url_credentials, redact_json};
use super::{Format, is_hidden, timestamp};
use crate::record::{Field, Level, Record, Value};

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

/// Appends `s` with `\n`, `\r`, `\t` and the other hidden characters escaped.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
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
        write_text_message(out, &mask_url_credentials(&record.message));
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
                Value::Str(s) => write_text_value(out, &mask_url_credentials(s)),
                other => write_text_value(out, &other.to_string()),
            }
        }
        out.push(b'\n');
    }
}
