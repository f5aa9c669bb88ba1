//! The JSON line formatter (one flat object per line).

use std::io::Write;

use super::redact::{REDACTED, is_secret_key, mask_url_credentials, redact_json};
use super::{Format, is_hidden, timestamp};
use crate::record::{Field, Record, Value};

/// One JSON object per line: `time` (RFC 3339, UTC, ms), `level`, `logger`, `message`, then
/// the fields flat. A field named like a reserved key is written as `fields.<key>`; when a key
/// repeats, the last value wins (call fields override prebound ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

const RESERVED: [&str; 4] = ["time", "level", "logger", "message"];

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

/// Writes one value as JSON: redacted when `key` is secret, non-finite floats as strings.
pub(crate) fn write_json_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    if is_secret_key(key) {
        let _ = serde_json::to_writer(&mut *out, REDACTED);
        return;
    }
    let _ = match value {
        Value::Str(s) => serde_json::to_writer(&mut *out, mask_url_credentials(s).as_ref()),
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
pub(crate) fn escape_hidden_json(out: &mut Vec<u8>, start: usize) {
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
        let _ = serde_json::to_writer(&mut *out, mask_url_credentials(&record.message).as_ref());
        write_json_fields(out, record.all_fields(), true, false);
        out.extend_from_slice(b"}\n");
        escape_hidden_json(out, start);
    }
}
