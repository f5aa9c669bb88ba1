//! Formatters: text and JSON lines, with redaction of secret-looking keys and escaping of
//! control characters.
//!
//! - `text`: [`TextFormat`], `<time> [<LEVEL>] <logger>: <message> k=v`;
//! - `json`: [`JsonFormat`], one flat object per line;
//! - `ecs`: [`EcsFormat`], one Elastic Common Schema (ecs-logging) object per line;
//! - `redact`: [`is_secret_key`], [`add_secret_keys`], [`mask_url_credentials`] and
//!   [`REDACTED`].

mod ecs;
mod json;
mod redact;
mod text;

pub(crate) use ecs::hostname;
pub use ecs::{ECS_VERSION, EcsFormat, ecs_error_fields};
pub use json::JsonFormat;
#[cfg(feature = "elastic")]
pub(crate) use json::write_json_fields;
pub(crate) use redact::redact_json;
pub use redact::{REDACTED, add_secret_keys, is_secret_key, mask_url_credentials};
pub use text::TextFormat;
pub(crate) use text::escape_into;

use crate::record::Record;

/// Turns a record into bytes (one line, newline included).
pub trait Format: Send + Sync {
    /// Appends the formatted record to `out`.
    fn format(&self, record: &Record, out: &mut Vec<u8>);
}

/// Characters never written raw: C0 and C1 controls and DEL (`char::is_control`), the
/// Unicode line and paragraph separators (which end a line for many readers), and the
/// bidirectional overrides and isolates (which reorder what a terminal shows).
pub(crate) fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

pub(crate) fn timestamp(record: &Record) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::field;
    use crate::record::{Level, Value};

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
    fn url_credentials_are_masked_in_messages_values_and_error_chains() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot reach the cache")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let chain = Outer(std::io::Error::other(
            "connect redis://app:s3cr3t@127.0.0.1:6379/0: refused",
        ));
        let r = Record::new(
            Level::Error,
            "a",
            "dial redis://app:s3cr3t@127.0.0.1:6379 failed",
        )
        .with(vec![
            field("error", Value::error(&chain)),
            field("target", "postgres://u:pw1@db/x"),
            field("nested", serde_json::json!({"queues": ["amqp://g:pw2@mq"]})),
        ]);
        let line = text(&r);
        let mut raw = Vec::new();
        JsonFormat.format(&r, &mut raw);
        let raw = String::from_utf8(raw).unwrap();
        for out in [&line, &raw] {
            for secret in ["s3cr3t", "pw1", "pw2", "app:"] {
                assert!(!out.contains(secret), "{secret} in {out}");
            }
            assert!(out.contains("redis://[REDACTED]@127.0.0.1:6379"), "{out}");
        }
        let v = json(&r);
        assert_eq!(
            v["message"],
            "dial redis://[REDACTED]@127.0.0.1:6379 failed"
        );
        assert_eq!(
            v["error"],
            "cannot reach the cache: connect redis://[REDACTED]@127.0.0.1:6379/0: refused"
        );
        assert_eq!(v["target"], "postgres://[REDACTED]@db/x");
        assert_eq!(v["nested"]["queues"][0], "amqp://[REDACTED]@mq");
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
