//! The `Cache` trait: the one contract every backend implements.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::key_for_error;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

/// Which backend a cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheKind {
    /// In-process, on moka.
    Memory,
}

impl CacheKind {
    /// The config `type` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheKind::Memory => "memory",
        }
    }
}

impl fmt::Display for CacheKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size limits enforced on every call before a backend is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key in bytes (default 4096).
    pub max_key_bytes: usize,
    /// Largest value in bytes (default 32 MiB).
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 32 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Rejects empty and over-long keys.
    ///
    /// # Errors
    /// [`Error::InvalidKey`].
    pub fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidKey {
                key: String::new(),
                reason: "keys must not be empty",
            });
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::InvalidKey {
                key: key_for_error(key),
                reason: "key is longer than max_key_bytes",
            });
        }
        Ok(())
    }

    /// Rejects a value over `max_value_bytes` (after checking the key).
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::ValueTooLarge`].
    pub fn check_entry(&self, key: &str, value: &[u8]) -> Result<()> {
        self.check_key(key)?;
        if value.len() > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                key: key_for_error(key),
                size: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// Parses a stored counter exactly as Redis does (`string2ll`): an optional `-`, then `0` or
/// a digit string without leading zeros, no spaces, no `+`, within `i64`.
pub fn parse_counter(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, raw),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!negative).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        let d = i64::from(b - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// An async cache. Object safe: `Arc<dyn Cache>` is what the factory and the manager hand out.
///
/// Guarantees, on every backend (one conformance suite proves them):
/// - a miss is `Ok(None)`, never an error; an empty key is [`Error::InvalidKey`];
/// - TTLs are explicit ([`Ttl`]); sub-millisecond durations round up to 1 ms;
/// - `incr_by`/`decr_by`, `set_nx` and `set_if_match` are atomic: concurrent callers never
///   lose an update; a missing counter starts at 0 without TTL, an existing TTL is kept;
/// - `clear` removes only this cache's keys;
/// - after `close`, every operation fails with [`Error::Closed`] until `connect` is called;
///   `connect` and `close` are idempotent.
#[async_trait]
pub trait Cache: Send + Sync + fmt::Debug {
    /// The cache's name (unique within a `Manager`).
    fn name(&self) -> &str;

    /// The backend.
    fn kind(&self) -> CacheKind;

    /// Connects (or reopens after `close`). Idempotent.
    async fn connect(&self) -> Result<()>;

    /// Closes the cache: later operations fail with [`Error::Closed`]. Idempotent.
    async fn close(&self) -> Result<()>;

    /// Whether the cache is open and, for networked backends, believed reachable.
    fn is_connected(&self) -> bool;

    /// The value at `key`, or `None` when it is missing or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `value` at `key`, replacing any value and TTL.
    async fn set(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<()>;

    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Whether `key` exists (and has not expired).
    async fn exists(&self, key: &str) -> Result<bool>;

    /// Sets a new TTL on an existing key (`Ttl::Never` removes its expiry); returns whether the
    /// key existed.
    async fn expire(&self, key: &str, ttl: Ttl) -> Result<bool>;

    /// The remaining lifetime of `key`.
    async fn ttl(&self, key: &str) -> Result<KeyTtl>;

    /// Stores `value` only if `key` is absent; returns whether it was stored.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Ttl) -> Result<bool>;

    /// Compare-and-set: stores `value` only if the current value equals `expected`; returns
    /// whether it was stored. A missing key never matches.
    async fn set_if_match(
        &self,
        key: &str,
        value: Bytes,
        expected: &[u8],
        ttl: Ttl,
    ) -> Result<bool>;

    /// Adds `delta` to the integer at `key` and returns the new value.
    ///
    /// # Errors
    /// [`Error::NotAnInteger`] for a non-integer value, [`Error::Overflow`] when the result
    /// leaves `i64` (the value is then unchanged).
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64>;

    /// Subtracts `delta`; see [`incr_by`](Self::incr_by).
    async fn decr_by(&self, key: &str, delta: i64) -> Result<i64> {
        match delta.checked_neg() {
            Some(neg) => self.incr_by(key, neg).await,
            None => Err(Error::Overflow {
                key: key_for_error(key),
                delta,
            }),
        }
    }

    /// The values of `keys`, in order (`None` for misses).
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>>;

    /// Stores every pair with the same TTL. All keys and values are validated before anything
    /// is written.
    async fn set_many(&self, items: &[(&str, Bytes)], ttl: Ttl) -> Result<()>;

    /// Removes `keys`; returns how many existed.
    async fn delete_many(&self, keys: &[&str]) -> Result<u64>;

    /// Removes every key of this cache (and only those).
    async fn clear(&self) -> Result<()>;
}

/// Typed access through serde (JSON), for every [`Cache`] including `dyn Cache`.
pub trait CacheExt: Cache {
    /// Reads and decodes the value at `key`.
    ///
    /// # Errors
    /// [`Error::Codec`] when the stored bytes are not a valid `T`, plus the errors of `get`.
    fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<T>>> + Send {
        async move {
            match self.get(key).await? {
                None => Ok(None),
                Some(raw) => {
                    serde_json::from_slice(&raw)
                        .map(Some)
                        .map_err(|source| Error::Codec {
                            key: key_for_error(key),
                            source,
                        })
                }
            }
        }
    }

    /// Encodes `value` as JSON and stores it.
    ///
    /// # Errors
    /// [`Error::Codec`] when `value` cannot be serialized, plus the errors of `set`.
    fn set_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Ttl,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let raw = serde_json::to_vec(value).map_err(|source| Error::Codec {
                key: key_for_error(key),
                source,
            })?;
            self.set(key, Bytes::from(raw), ttl).await
        }
    }
}

impl<C: Cache + ?Sized> CacheExt for C {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_like_redis() {
        assert_eq!(parse_counter(b"0"), Some(0));
        assert_eq!(parse_counter(b"42"), Some(42));
        assert_eq!(parse_counter(b"-42"), Some(-42));
        assert_eq!(parse_counter(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_counter(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1.0",
            b"abc",
            b"9223372036854775808",
            b"-9223372036854775809",
        ] {
            assert_eq!(
                parse_counter(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_key_bytes: 4,
            max_value_bytes: 2,
        };
        assert!(l.check_key("abcd").is_ok());
        assert!(matches!(l.check_key(""), Err(Error::InvalidKey { .. })));
        assert!(matches!(
            l.check_key("abcde"),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            l.check_entry("k", b"abc"),
            Err(Error::ValueTooLarge {
                size: 3,
                max: 2,
                ..
            })
        ));
    }
}
