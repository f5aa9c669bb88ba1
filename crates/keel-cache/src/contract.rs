//! The `Cache` trait: the one contract every backend implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    /// In-process, on quick_cache.
    Memory,
    /// A Redis server.
    Redis,
    /// Memory in front of Redis.
    Tiered,
}

impl CacheKind {
    /// The config `type` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheKind::Memory => "memory",
            CacheKind::Redis => "redis",
            CacheKind::Tiered => "tiered",
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
    #[inline]
    pub fn check_key(&self, key: &str) -> Result<()> {
        // The common case inline (it is on every call's path); the errors out of line.
        if !key.is_empty() && key.len() <= self.max_key_bytes {
            Ok(())
        } else {
            self.key_error(key)
        }
    }

    #[cold]
    #[inline(never)]
    fn key_error(&self, key: &str) -> Result<()> {
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

    /// Checks every key of a batch (the first bad one is the error).
    ///
    /// # Errors
    /// [`Error::InvalidKey`].
    pub fn check_keys(&self, keys: &[&str]) -> Result<()> {
        keys.iter().try_for_each(|k| self.check_key(k))
    }

    /// Checks every key and value of a batch (the first bad one is the error).
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::ValueTooLarge`].
    pub fn check_entries(&self, items: &[(&str, Bytes)]) -> Result<()> {
        items.iter().try_for_each(|(k, v)| self.check_entry(k, v))
    }

    /// Rejects a value over `max_value_bytes` (after checking the key).
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::ValueTooLarge`].
    #[inline]
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

/// The future every [`Cache`] method returns.
///
/// In-process backends finish their work before returning and hand back a `Ready` future,
/// so a call through `dyn Cache` costs no allocation; networked backends return a boxed
/// future. Either way the caller just `.await`s it.
#[must_use = "futures do nothing unless awaited"]
pub enum CacheFuture<'a, T> {
    /// Already complete.
    Ready(std::future::Ready<T>),
    /// Still to run.
    Boxed(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<'a, T> CacheFuture<'a, T> {
    /// A future that is already complete.
    pub fn ready(value: T) -> Self {
        CacheFuture::Ready(std::future::ready(value))
    }

    /// Boxes an async block.
    pub fn boxed(fut: impl Future<Output = T> + Send + 'a) -> Self {
        CacheFuture::Boxed(Box::pin(fut))
    }
}

impl<T> Future for CacheFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            CacheFuture::Ready(r) => Pin::new(r).poll(cx),
            CacheFuture::Boxed(b) => b.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for CacheFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheFuture::Ready(_) => "CacheFuture::Ready",
            CacheFuture::Boxed(_) => "CacheFuture::Boxed",
        })
    }
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
pub trait Cache: Send + Sync + fmt::Debug {
    /// The cache's name (unique within a `Manager`).
    fn name(&self) -> &str;

    /// The backend.
    fn kind(&self) -> CacheKind;

    /// Connects (or reopens after `close`). Idempotent.
    fn connect<'a>(&'a self) -> CacheFuture<'a, Result<()>>;

    /// Closes the cache: later operations fail with [`Error::Closed`]. Idempotent.
    fn close<'a>(&'a self) -> CacheFuture<'a, Result<()>>;

    /// Whether the cache is open and, for networked backends, believed reachable.
    fn is_connected(&self) -> bool;

    /// The value at `key`, or `None` when it is missing or expired.
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<Option<Bytes>>>;

    /// Stores `value` at `key`, replacing any value and TTL.
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<()>>;

    /// Removes `key`; returns whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>>;

    /// Whether `key` exists (and has not expired).
    fn exists<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>>;

    /// Sets a new TTL on an existing key (`Ttl::Never` removes its expiry); returns whether the
    /// key existed.
    fn expire<'a>(&'a self, key: &'a str, ttl: Ttl) -> CacheFuture<'a, Result<bool>>;

    /// The remaining lifetime of `key`.
    fn ttl<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<KeyTtl>>;

    /// Stores `value` only if `key` is absent; returns whether it was stored.
    fn set_nx<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<bool>>;

    /// Compare-and-set: stores `value` only if the current value equals `expected`; returns
    /// whether it was stored. A missing key never matches.
    fn set_if_match<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: &'a [u8],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<bool>>;

    /// Adds `delta` to the integer at `key` and returns the new value.
    ///
    /// # Errors
    /// [`Error::NotAnInteger`] for a non-integer value, [`Error::Overflow`] when the result
    /// leaves `i64` (the value is then unchanged).
    fn incr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>>;

    /// Subtracts `delta`; see [`incr_by`](Self::incr_by).
    fn decr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>> {
        match delta.checked_neg() {
            Some(neg) => self.incr_by(key, neg),
            None => CacheFuture::ready(Err(Error::Overflow {
                key: key_for_error(key),
                delta,
            })),
        }
    }

    /// The values of `keys`, in order (`None` for misses).
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<Vec<Option<Bytes>>>>;

    /// Stores every pair with the same TTL. All keys and values are validated before anything
    /// is written.
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<()>>;

    /// Removes `keys`; returns how many existed.
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<u64>>;

    /// Removes every key of this cache (and only those).
    fn clear<'a>(&'a self) -> CacheFuture<'a, Result<()>>;
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
