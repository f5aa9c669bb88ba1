//! One duration syntax and one size syntax for every Keel config.

use std::time::Duration;

/// Parses a duration: humantime syntax (`"250ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2days"`) or
/// a bare whole number of seconds (`"30"`).
///
/// # Errors
/// A message naming the bad input and showing the syntax.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!(
            "invalid duration {text:?} ({e}); use e.g. \"250ms\", \"30s\", \"5m\" or whole seconds"
        )
    })
}

/// Parses a size in bytes: a whole number of bytes (`"1048576"`), or a number (fractions
/// allowed) with a unit: `B`; `KB`, `MB`, `GB`, `TB` (powers of 1000); `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024). Units are case-insensitive and may follow a space: `"10MB"`,
/// `"64 KiB"`, `"1.5gb"`. A fraction of a byte is rounded down.
///
/// # Errors
/// A message naming the bad input (an unknown unit, a negative or overflowing size).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(bytes) = t.parse::<u64>() {
        return Ok(bytes);
    }
    let bad = |why: &str| {
        format!(
            "invalid size {text:?} ({why}); use e.g. \"10MB\", \"64KiB\", \"1.5GB\" or whole bytes"
        )
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| bad("not a number"))?;
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let number: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad("unknown unit")),
    };
    let bytes = number * multiplier as f64;
    // 2^64 as f64; anything at or above it does not fit.
    if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
        return Err(bad("too large"));
    }
    // Truncation is the documented rounding (down to whole bytes).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// Serde helpers (`deserialize_with`) for durations and sizes written as numbers or strings.
pub mod de {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Whole(u64),
        Text(String),
    }

    /// A duration: whole seconds as a number, or a string in [`parse_duration`]'s syntax.
    ///
    /// [`parse_duration`]: crate::parse_duration
    ///
    /// # Errors
    /// The deserializer's error, with [`parse_duration`]'s message.
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Whole(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => crate::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }

    /// An optional [`duration`].
    ///
    /// # Errors
    /// As [`duration`].
    pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|raw| match raw {
                Raw::Whole(s) => Ok(Duration::from_secs(s)),
                Raw::Text(t) => crate::parse_duration(&t).map_err(serde::de::Error::custom),
            })
            .transpose()
    }

    /// A size in bytes: a whole number, or a string in [`parse_size`]'s syntax.
    ///
    /// [`parse_size`]: crate::parse_size
    ///
    /// # Errors
    /// The deserializer's error, with [`parse_size`]'s message.
    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Whole(n) => Ok(n),
            Raw::Text(t) => crate::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }

    /// An optional [`size`].
    ///
    /// # Errors
    /// As [`size`].
    pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|raw| match raw {
                Raw::Whole(n) => Ok(n),
                Raw::Text(t) => crate::parse_size(&t).map_err(serde::de::Error::custom),
            })
            .transpose()
    }

    /// An optional [`size`] for a `usize` option.
    ///
    /// # Errors
    /// As [`size`], and a size that does not fit in `usize`.
    pub fn opt_size_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        opt_size(d)?
            .map(|n| {
                usize::try_from(n)
                    .map_err(|_| serde::de::Error::custom(format!("size {n} is too large")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 250ms "), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5 parsecs", "-1s", "1.5"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("10MB", 10_000_000),
            ("10mb", 10_000_000),
            ("64KiB", 64 * 1024),
            ("64 kib", 64 * 1024),
            ("1.5GB", 1_500_000_000),
            ("1.5 GiB", 3 << 29),
            ("512B", 512),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MB", "10XB", "-1MB", "1..5MB", "99999999TB", "ten"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
