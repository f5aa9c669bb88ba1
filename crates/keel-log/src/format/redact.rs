//! Redaction: which field keys are secret, and what their values become.

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
        other => other,
    }
}
