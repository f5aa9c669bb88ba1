//! Config to a ready cache.

use std::sync::Arc;

use keel_metrics::MetricsService;

use crate::config::CacheConfig;
use crate::contract::{Cache, Limits};
use crate::memory::{Capacity, MemoryCache};
use crate::{Error, Result};

/// The `type` values this build accepts.
pub const CACHE_TYPES: &[&str] = &["memory"];

/// Builds, connects and returns the cache `config` describes, recording into
/// [`MetricsService::global`].
///
/// # Errors
/// [`Error::UnknownType`] (naming the valid types), [`Error::InvalidConfig`], and whatever
/// `connect` returns.
pub async fn open(config: &CacheConfig) -> Result<Arc<dyn Cache>> {
    open_with_metrics(config, MetricsService::global()).await
}

/// Like [`open`], recording into `metrics`.
///
/// # Errors
/// As [`open`].
pub async fn open_with_metrics(
    config: &CacheConfig,
    metrics: &MetricsService,
) -> Result<Arc<dyn Cache>> {
    if config.name.is_empty() {
        return Err(Error::InvalidConfig {
            field: "name".into(),
            reason: "must not be empty".into(),
        });
    }
    let limits = limits(config)?;
    let cache: Arc<dyn Cache> = match config.kind.to_ascii_lowercase().as_str() {
        "memory" | "mem" | "in-memory" | "inmemory" => Arc::new(
            MemoryCache::builder(&config.name)
                .capacity(capacity(config)?)
                .default_ttl(config.options.default_ttl)
                .limits(limits)
                .count_evictions(config.options.count_evictions.unwrap_or(true))
                .metrics(metrics)
                .build(),
        ),
        _ => {
            return Err(Error::UnknownType {
                got: config.kind.clone(),
                valid: CACHE_TYPES.join(", "),
            });
        }
    };
    cache.connect().await?;
    Ok(cache)
}

fn capacity(config: &CacheConfig) -> Result<Capacity> {
    let positive = |field: &str, n: u64| {
        if n == 0 {
            Err(Error::InvalidConfig {
                field: format!("options.{field}"),
                reason: "must be greater than 0".into(),
            })
        } else {
            Ok(n)
        }
    };
    match (config.options.max_entries, config.options.max_bytes) {
        (Some(_), Some(_)) => Err(Error::InvalidConfig {
            field: "options.max_bytes".into(),
            reason: "set either max_entries or max_bytes, not both".into(),
        }),
        (Some(n), None) => Ok(Capacity::Entries(positive("max_entries", n)?)),
        (None, Some(n)) => Ok(Capacity::Bytes(positive("max_bytes", n)?)),
        (None, None) => Ok(Capacity::default()),
    }
}

fn limits(config: &CacheConfig) -> Result<Limits> {
    let mut limits = Limits::default();
    if let Some(n) = config.options.max_key_bytes {
        if n == 0 {
            return Err(Error::InvalidConfig {
                field: "options.max_key_bytes".into(),
                reason: "must be greater than 0".into(),
            });
        }
        limits.max_key_bytes = n;
    }
    if let Some(n) = config.options.max_value_bytes {
        limits.max_value_bytes = n;
    }
    Ok(limits)
}
