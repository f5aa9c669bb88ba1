//! [`Secret`]: a config string that never shows.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// What a secret (or a redacted log field) prints as.
pub const REDACTED: &str = "[REDACTED]";

/// A string that never shows in `Debug` or `Display` output (passwords, API keys, URLs with
/// credentials): both print [`REDACTED`]. [`expose`](Self::expose) is the one way to read it.
///
/// In a config file it is a string; a whole number (`password = 123456`) is taken as its
/// decimal text (so quote a YAML secret written as `0x1f`, `0o17` or `+12`: YAML reads those
/// as numbers). Anything else is an error whose message never shows the value (serde's own
/// message would: "invalid type: integer `123456`").
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// Reads a [`Secret`]; every refusal uses [`SecretVisitor::refuse`], which names no value.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<T, E: serde::de::Error>(&self) -> Result<T, E> {
        Err(E::custom(
            "a secret (password, url, key) must be a string; the value is not shown",
        ))
    }
}

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    // A float's text is not what was written (`1e3`, `0.10`): refused, not guessed.
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        self.refuse()
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        self.refuse()
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        self.refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, from_str};

    #[derive(Debug, Deserialize)]
    struct C {
        password: Secret,
    }

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[REDACTED] [REDACTED]");
        assert_eq!(s.expose(), "hunter2");
    }

    /// A number is its text; anything else is refused without echoing the value, in every
    /// format.
    #[test]
    fn numbers_taken_other_types_refused_silently() {
        for (format, text) in [
            (Format::Toml, "password = 123456\n"),
            (Format::Yaml, "password: 123456\n"),
            (Format::Json, "{\"password\": 123456}"),
        ] {
            let c: C = from_str(format, text).unwrap();
            assert_eq!(c.password.expose(), "123456");
        }
        for (format, text) in [
            (Format::Toml, "password = 1.25e3\n"),
            (Format::Yaml, "password: [\"hunter2\"]\n"),
            (Format::Json, "{\"password\": {\"k\": \"hunter2\"}}"),
            (Format::Json, "{\"password\": true}"),
        ] {
            let e = from_str::<C>(format, text).unwrap_err().to_string();
            assert!(e.contains("the value is not shown"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("1250"), "{e}");
        }
    }
}
