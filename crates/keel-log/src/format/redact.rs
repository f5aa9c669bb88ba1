//! Redaction: which field keys are secret, what their values become, and URL credentials
//! (`scheme://user:pass@host`) masked wherever text is written.
//!
//! A key is folded before it is compared: lower-cased, with the separators `_`, `-`, `.`,
//! space and `/` removed (`API key`, `api-key`, `api_key`, `apiKey` and `APIKEY` all fold to
//! `apikey`). It is secret when the folded key contains one of [`SECRET_FRAGMENTS`] or one of
//! the keys added with [`add_secret_keys`], or when one of its words (split at separators, at
//! case changes — `redisPass`, `DBPass`, `HTTPAuth` — and at letter/digit changes — `pass1`)
//! is one of [`SECRET_WORDS`]: short words such as `pass`, `pwd` or `auth` would match too
//! much as fragments (`passage`, `compass`, `author`).

use std::borrow::Cow;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Folded fragments that make a key secret wherever they occur in it.
const SECRET_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "apikey",
    "credential",
    "privatekey",
    "cookie",
    "bearer",
    "databaseurl",
    "connectionstring",
];

/// Words that make a key secret when one of the key's words is exactly this word.
const SECRET_WORDS: &[&str] = &["pass", "pwd", "auth", "dsn", "pin", "otp"];

static HAS_EXTRA: AtomicBool = AtomicBool::new(false);
static EXTRA: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds keys to the redaction list of every format in the process (folded like the built-in
/// fragments, and matched anywhere in a folded key): `add_secret_keys(["session_id"])` also
/// redacts `X-Session-Id` and `sessionId`. Keys are only ever added; an empty key is ignored.
/// The config field `redact_keys` of a logger calls this when the logger is built.
///
/// ```
/// keel_log::add_secret_keys(["tenant_key"]);
/// assert!(keel_log::is_secret_key("X-Tenant-Key"));
/// ```
pub fn add_secret_keys<I, S>(keys: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut extra = EXTRA
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for key in keys {
        let folded = fold(key.as_ref());
        if !folded.is_empty() && !extra.contains(&folded) {
            extra.push(folded);
        }
    }
    HAS_EXTRA.store(!extra.is_empty(), Ordering::Release);
}

fn is_separator(c: char) -> bool {
    matches!(c, '_' | '-' | '.' | ' ' | '/' | ':')
}

fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| !is_separator(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether one of the words of `key` is a secret word. Words are split at separators, at
/// lower-to-upper case changes (`redisPass`), before the last capital of an acronym that
/// starts a word (`DBPass`, `HTTPAuth`) and at letter/digit changes (`db_pass1`).
fn has_secret_word(key: &str) -> bool {
    let mut start = 0;
    let mut prev: Option<char> = None;
    let check = |word: &str| SECRET_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w));
    let mut chars = key.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let boundary = is_separator(c)
            || prev.is_some_and(|p| {
                (c.is_uppercase() && p.is_lowercase())
                    || (c.is_uppercase()
                        && p.is_uppercase()
                        && next.is_some_and(char::is_lowercase))
                    || (c.is_alphanumeric()
                        && p.is_alphanumeric()
                        && c.is_numeric() != p.is_numeric())
            });
        if boundary {
            if check(&key[start..i]) {
                return true;
            }
            start = if is_separator(c) { i + c.len_utf8() } else { i };
        }
        prev = Some(c);
    }
    check(&key[start..])
}

/// Whether a field with this key must never be written in clear: `password`, `api_key`,
/// `API key`, `X-Auth-Token`, `client_secret`, `Authorization`, `refreshToken`, `db_pass`,
/// `pwd`, `passphrase`, `bearer`, `sentry_dsn`, `DATABASE_URL`, and the keys added with
/// [`add_secret_keys`]. See the module docs for how keys are folded.
pub fn is_secret_key(key: &str) -> bool {
    if has_secret_word(key) {
        return true;
    }
    // The usual key is short ASCII: fold it on the stack.
    let mut buf = [0u8; 64];
    if key.len() <= buf.len() && key.is_ascii() {
        let mut n = 0;
        for b in key.bytes() {
            if !is_separator(char::from(b)) {
                buf[n] = b.to_ascii_lowercase();
                n += 1;
            }
        }
        let folded = &buf[..n];
        // One pass: only positions whose byte starts some fragment are compared.
        (0..n).any(|i| {
            let rest = &folded[i..];
            SECRET_FRAGMENTS
                .iter()
                .any(|f| f.as_bytes()[0] == rest[0] && rest.starts_with(f.as_bytes()))
        }) || (HAS_EXTRA.load(Ordering::Acquire) && extra_matches(folded))
    } else {
        let folded = fold(key);
        SECRET_FRAGMENTS.iter().any(|f| folded.contains(f))
            || (HAS_EXTRA.load(Ordering::Acquire) && extra_matches(folded.as_bytes()))
    }
}

fn extra_matches(folded: &[u8]) -> bool {
    EXTRA
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|f| folded.windows(f.len()).any(|w| w == f.as_bytes()))
}

/// `text` with the userinfo of every URL in it (`scheme://user:pass@host`, `scheme://token@host`)
/// replaced by [`REDACTED`]: `redis://[REDACTED]@host:6379/0`. Borrowed (no copy) when there is
/// nothing to mask.
///
/// A password may hold any character but whitespace, so where a URL carries one (a `:`
/// between `://` and an `@`), everything from `://` up to the last `@` before the next
/// whitespace (or the next `://`) is masked: `redis://u:p/w?x@host` becomes
/// `redis://[REDACTED]@host`, and a `@` later in the path or query masks more than the
/// userinfo rather than leak a password. Otherwise (`scheme://token@host`, no `:`) the
/// userinfo ends at the last `@` before the end of the authority (the first `/`, `?`, `#`,
/// whitespace, quote or angle bracket), so `https://host/path?mail=a@b.c` stays as it is.
pub fn mask_url_credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let start = search + found + 3;
        let rest = &text[start..];
        let token = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
        let candidate = &token[..token.find("://").unwrap_or(token.len())];
        let authority = rest
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(rest.len());
        let at = match candidate.rfind('@') {
            Some(at) if candidate[..at].contains(':') => Some(at),
            _ => rest[..authority].rfind('@'),
        };
        match at {
            Some(at) => {
                out.push_str(&text[copied..start]);
                out.push_str(REDACTED);
                copied = start + at;
                search = start + at;
            }
            None => search = start + authority,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

pub(crate) fn redact_json(v: serde_json::Value) -> serde_json::Value {
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
        serde_json::Value::String(s) => match mask_url_credentials(&s) {
            Cow::Borrowed(_) => serde_json::Value::String(s),
            Cow::Owned(masked) => serde_json::Value::String(masked),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_table() {
        let secret = [
            "password",
            "DB_PASSWORD",
            "passwd",
            "pass",
            "db_pass",
            "redisPass",
            "PASS",
            "pwd",
            "user-pwd",
            "passphrase",
            "ssh_passphrase",
            "auth",
            "X-Auth",
            "auth_header",
            "X-Auth-Token",
            "bearer",
            "bearer_value",
            "dsn",
            "sentry_dsn",
            "SENTRY.DSN",
            "DATABASE_URL",
            "databaseUrl",
            "database url",
            "api key",
            "API Key",
            "api-key",
            "api_key",
            "apiKey",
            "APIKEY",
            "x-api-key",
            "client_secret",
            "clientSecret",
            "Authorization",
            "refreshToken",
            "Cookie",
            "private key",
            "private_key",
            "credentials",
            "connection_string",
            "ÜBER_PASSWORD",
            "Über pass",
            "DBPass",
            "SMTPPass",
            "MySQLPwd",
            "HTTPAuth",
            "db_pass1",
            "pass2",
            "PWD2",
            "redisPass1",
            "X-HTTPAuth-Header",
        ];
        for key in secret {
            assert!(is_secret_key(key), "{key} must be secret");
        }
        let clear = [
            "user_id",
            "author",
            "authority",
            "passage",
            "compass",
            "bypass",
            "passenger",
            "user",
            "host",
            "url",
            "database",
            "message",
            "dsname",
            "spin",
            "Passage",
            "COMPASS",
            "AuthorID",
            "authority2",
            "http2",
            "ipv4",
        ];
        for key in clear {
            assert!(!is_secret_key(key), "{key} must stay clear");
        }
    }

    #[test]
    fn extra_keys_are_folded_and_matched_anywhere() {
        assert!(!is_secret_key("X-Tenant-Seal"));
        add_secret_keys(["tenant seal", ""]);
        assert!(is_secret_key("X-Tenant-Seal"));
        assert!(is_secret_key("tenantSeal"));
        assert!(is_secret_key("TENANT_SEAL_V2"));
        assert!(!is_secret_key("tenant"));
        assert!(!is_secret_key(""));
    }

    #[test]
    fn url_userinfo_is_masked() {
        let cases = [
            (
                "redis://user:pass@host:6379/0",
                "redis://[REDACTED]@host:6379/0",
            ),
            ("redis://:pass@host", "redis://[REDACTED]@host"),
            (
                "https://token@github.com/x",
                "https://[REDACTED]@github.com/x",
            ),
            (
                "connect redis://u:p@a:1 failed, then postgres://v:q@b/db: refused",
                "connect redis://[REDACTED]@a:1 failed, then postgres://[REDACTED]@b/db: refused",
            ),
            (
                "p@ss in amqp://g:p@ss@rabbit",
                "p@ss in amqp://[REDACTED]@rabbit",
            ),
            ("\"rediss://a:b@h\"", "\"rediss://[REDACTED]@h\""),
            // Passwords holding an authority delimiter.
            ("redis://:ab/cd@host", "redis://[REDACTED]@host"),
            (
                "redis://u:p?w@host:6379/0",
                "redis://[REDACTED]@host:6379/0",
            ),
            ("amqp://u:p#w@h", "amqp://[REDACTED]@h"),
            ("postgres://app:it's@db/x", "postgres://[REDACTED]@db/x"),
            ("redis://u:p\"w@h", "redis://[REDACTED]@h"),
            ("redis://u:a<b>@h", "redis://[REDACTED]@h"),
            (
                "dial redis://u:p/w@h1 and amqp://v:q?r@h2 failed",
                "dial redis://[REDACTED]@h1 and amqp://[REDACTED]@h2 failed",
            ),
            (
                "a://u:p/x@h,b://v:q#y@k",
                "a://[REDACTED]@h,b://[REDACTED]@k",
            ),
            // Over-masking rather than leaking: a `@` in the query after a password.
            ("redis://u:p@h/0?owner=a@b.c", "redis://[REDACTED]@b.c"),
            ("https://h:8080/x?to=a@b.c", "https://[REDACTED]@b.c"),
            // Without a `:` the userinfo ends with the authority, as before.
            ("redis://user@host:6379/0", "redis://[REDACTED]@host:6379/0"),
        ];
        for (text, masked) in cases {
            assert_eq!(mask_url_credentials(text), masked, "{text}");
        }
        for clear in [
            "no url here",
            "https://host/path?mail=a@b.c",
            "redis://host:6379",
            "write to ops@example.com or see https://example.com/help",
            "mailto a@b.c",
        ] {
            assert!(
                matches!(mask_url_credentials(clear), Cow::Borrowed(_)),
                "{clear}"
            );
        }
    }
}
