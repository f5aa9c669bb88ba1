//! Config to a ready cache.

use std::sync::Arc;

use keel_metrics::MetricsService;

use crate::config::CacheConfig;
use crate::contract::{Cache, Limits};
use crate::memory::{Capacity, MemoryCache};
use crate::{Error, Result};

/// The `type` values this build accepts.
#[cfg(feature = "redis")]
pub const CACHE_TYPES: &[&str] = &["memory", "redis", "tiered"];
/// The `type` values this build accepts.
#[cfg(not(feature = "redis"))]
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
    let cache: Arc<dyn Cache> = match config.kind.to_ascii_lowercase().as_str() {
        "memory" | "mem" | "in-memory" | "inmemory" => {
            check_fields(config, "memory")?;
            let mut named = config.clone();
            if named.name.is_empty() {
                named.name = "default".into();
            }
            Arc::new(memory_from_config(&named, metrics)?)
        }
        #[cfg(feature = "redis")]
        "redis" => Arc::new(redis_from_config(config, metrics)?),
        #[cfg(feature = "redis")]
        "tiered" => {
            check_fields(config, "tiered")?;
            Arc::new(tiered_from_config(config, metrics)?)
        }
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

/// The longest `connect_timeout` / `response_timeout` accepted (one hour): longer is a
/// typo, and would overflow deadline arithmetic.
pub(crate) const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Rejects what a config of `kind` would silently ignore or misread: fields of another
/// backend, a missing name where it picks the keys on a shared server, out-of-range numbers.
/// `kind` is `memory`, `redis` or `tiered`.
fn check_fields(config: &CacheConfig, kind: &str) -> Result<()> {
    let o = &config.options;
    let set = |field: &'static str, present: bool| present.then_some(field);
    let connection = [
        set("url", config.url.is_some()),
        set("host", config.host.is_some()),
        set("port", config.port.is_some()),
        set("username", config.username.is_some()),
        set("password", config.password.is_some()),
        set("database", config.database.is_some()),
        set("mode", config.mode.is_some()),
        set("nodes", !config.nodes.is_empty()),
        set("sentinels", !config.sentinels.is_empty()),
        set("master_name", config.master_name.is_some()),
        set("prefix", config.prefix.is_some()),
        set("options.connect_timeout", o.connect_timeout.is_some()),
        set("options.response_timeout", o.response_timeout.is_some()),
        set("options.items_refresh", o.items_refresh.is_some()),
        set("options.tls", o.tls.is_some()),
        set("options.tls_ca_file", o.tls_ca_file.is_some()),
        set("options.tls_cert_file", o.tls_cert_file.is_some()),
        set("options.tls_key_file", o.tls_key_file.is_some()),
    ];
    let memory = [
        set("options.max_entries", o.max_entries.is_some()),
        set("options.max_bytes", o.max_bytes.is_some()),
        set("options.count_evictions", o.count_evictions.is_some()),
    ];
    let tiers = [
        set("l1", config.l1.is_some()),
        set("l2", config.l2.is_some()),
        set("options.l1_ttl", o.l1_ttl.is_some()),
        set("options.invalidation", o.invalidation.is_some()),
        set("options.stale_if_error", o.stale_if_error.is_some()),
        set("options.ttl_jitter", o.ttl_jitter.is_some()),
    ];
    let limits = [
        set("options.max_key_bytes", o.max_key_bytes.is_some()),
        set("options.max_value_bytes", o.max_value_bytes.is_some()),
    ];
    let (foreign, hint): (Vec<Option<&str>>, &str) = match kind {
        "memory" => (
            connection.iter().chain(&tiers).copied().collect(),
            "it belongs to a redis (or tiered) cache",
        ),
        "redis" => (
            memory.iter().chain(&tiers).copied().collect(),
            "it belongs to a memory (or tiered) cache",
        ),
        _ => (
            connection
                .iter()
                .chain(&memory)
                .chain(&limits)
                .copied()
                .collect(),
            "a tiered cache takes it in its l1 (memory) or l2 (redis) section",
        ),
    };
    if let Some(field) = foreign.into_iter().flatten().next() {
        return Err(invalid(
            field,
            format!("not used by a {kind} cache: {hint}"),
        ));
    }
    if kind != "memory" && config.name.is_empty() {
        return Err(invalid(
            "name",
            format!(
                "a {kind} cache needs a name: it is the default key prefix on a shared \
                 server, and two caches both called \"default\" would share their keys"
            ),
        ));
    }
    for (field, d) in [
        ("options.connect_timeout", o.connect_timeout),
        ("options.response_timeout", o.response_timeout),
    ] {
        if d.is_some_and(|d| d > MAX_TIMEOUT) {
            return Err(invalid(field, "must be at most 1h"));
        }
    }
    if o.default_ttl.is_some_and(|d| d > crate::MAX_TTL) {
        return Err(invalid(
            "options.default_ttl",
            "longer than 100 years: every write with the default TTL would fail",
        ));
    }
    match o.l1_ttl {
        Some(d) if d.is_zero() => {
            return Err(invalid(
                "options.l1_ttl",
                "must be greater than 0 (for no L1 at all, use a redis cache)",
            ));
        }
        Some(d) if d > crate::MAX_TTL => {
            return Err(invalid("options.l1_ttl", "longer than 100 years"));
        }
        _ => {}
    }
    if o.stale_if_error.is_some_and(|d| d > crate::MAX_TTL) {
        return Err(invalid("options.stale_if_error", "longer than 100 years"));
    }
    if let Some(text) = &o.ttl_jitter {
        jitter(text)?;
    }
    Ok(())
}

fn memory_from_config(config: &CacheConfig, metrics: &MetricsService) -> Result<MemoryCache> {
    Ok(memory_builder(config, metrics)?.build())
}

fn memory_builder(
    config: &CacheConfig,
    metrics: &MetricsService,
) -> Result<crate::memory::MemoryCacheBuilder> {
    Ok(MemoryCache::builder(&config.name)
        .capacity(capacity(config)?)
        .default_ttl(config.options.default_ttl)
        .limits(limits(config)?)
        .count_evictions(config.options.count_evictions.unwrap_or(true))
        .metrics(metrics))
}

/// A `tiered` config: `l1` (memory, optional) and `l2` (redis, required) sections; the
/// tiered cache's own `name`, `options.default_ttl` and `options.l1_ttl` apply.
#[cfg(feature = "redis")]
fn tiered_from_config(
    config: &CacheConfig,
    metrics: &MetricsService,
) -> Result<crate::tiered::TieredCache> {
    let bad = |field: &str, reason: &str| Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    };
    let mut l2 = config
        .l2
        .as_deref()
        .cloned()
        .ok_or_else(|| bad("l2", "a tiered cache needs an l2 section of type redis"))?;
    if l2.kind != "redis" {
        return Err(bad("l2.type", "l2 must be a redis cache"));
    }
    let mut l1 = match config.l1.as_deref() {
        Some(l1) if l1.kind != "memory" => return Err(bad("l1.type", "l1 must be a memory cache")),
        Some(l1) => {
            check_fields(l1, "memory").map_err(|e| in_section("l1", e))?;
            l1.clone()
        }
        None => {
            let mut l1 = CacheConfig::new("memory", "");
            l1.options.max_entries = Some(10_000);
            l1
        }
    };
    // Both tiers answer to the tiered cache's name and default TTL.
    l1.name = format!("{}:l1", config.name);
    l2.name.clone_from(&config.name);
    check_fields(&l2, "redis").map_err(|e| in_section("l2", e))?;
    for tier in [&mut l1, &mut l2] {
        if tier.options.default_ttl.is_none() {
            tier.options.default_ttl = config.options.default_ttl;
        }
    }
    let l1_ttl = config
        .options
        .l1_ttl
        .unwrap_or(crate::tiered::DEFAULT_L1_TTL);
    let stale = config.options.stale_if_error;
    // No entry outlives l1_ttl (plus the stale-if-error window) in L1, plus up to two
    // ticks of the coarse clock its deadlines are checked on (cheaper on every L1 hit).
    let mut builder = crate::tiered::TieredCache::builder(
        &config.name,
        memory_builder(&l1, metrics)?
            .max_ttl(l1_ttl + stale.unwrap_or_default())
            .coarse_expiry(true)
            .build(),
        redis_from_config(&l2, metrics)?,
    );
    if let Some(window) = stale {
        builder = builder.stale_if_error(window);
    }
    if let Some(text) = &config.options.ttl_jitter {
        builder = builder.ttl_jitter(jitter(text)?);
    }
    builder
        .l1_ttl(l1_ttl)
        .invalidation(config.options.invalidation.unwrap_or_default())
        .metrics(metrics)
        .build()
}

/// Parses `options.ttl_jitter`.
fn jitter(text: &str) -> Result<crate::Jitter> {
    crate::Jitter::parse(text).map_err(|e| match e {
        Error::InvalidConfig { reason, .. } => Error::InvalidConfig {
            field: "options.ttl_jitter".into(),
            reason,
        },
        other => other,
    })
}

/// Puts `section.` in front of an `InvalidConfig` field.
#[cfg(feature = "redis")]
fn in_section(section: &str, e: Error) -> Error {
    match e {
        Error::InvalidConfig { field, reason } => Error::InvalidConfig {
            field: format!("{section}.{field}"),
            reason,
        },
        other => other,
    }
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

/// Builds (without connecting) the Redis cache a `type = "redis"` config describes.
///
/// # Errors
/// [`Error::InvalidConfig`] for bad fields.
#[cfg(feature = "redis")]
pub fn redis_from_config(
    config: &CacheConfig,
    metrics: &MetricsService,
) -> Result<crate::redis::RedisCache> {
    check_fields(config, "redis")?;
    redis_builder(config)?
        .limits(limits(config)?)
        .metrics(metrics)
        .build()
}

#[cfg(feature = "redis")]
fn redis_builder(config: &CacheConfig) -> Result<crate::redis::RedisCacheBuilder> {
    use crate::redis::{Endpoint, RedisCache};
    let tcp = || -> Result<Endpoint> {
        Ok(match (&config.url, &config.host) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidConfig {
                    field: "url".into(),
                    reason: "set either url or host/port, not both".into(),
                });
            }
            (Some(url), None) => {
                for (field, present) in [
                    ("username", config.username.is_some()),
                    ("password", config.password.is_some()),
                    ("database", config.database.is_some()),
                    ("port", config.port.is_some()),
                ] {
                    if present {
                        return Err(invalid(
                            field,
                            "set it inside the url (redis://user:pass@host:port/db) or use \
                             host/port instead of url: the url would override it",
                        ));
                    }
                }
                Endpoint::Url(url.clone())
            }
            (None, host) => Endpoint::Tcp {
                host: host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                port: config.port.unwrap_or(6379),
                username: config.username.clone(),
                password: config.password.clone(),
                database: config.database.unwrap_or(0),
            },
        })
    };
    let mode = config.mode.as_deref().unwrap_or("standalone");
    if !matches!(mode, "standalone" | "cluster" | "sentinel") {
        return Err(invalid(
            "mode",
            format!("unknown mode {mode:?}; valid modes are: standalone, cluster, sentinel"),
        ));
    }
    for (field, present, modes) in [
        ("nodes", !config.nodes.is_empty(), "cluster"),
        ("sentinels", !config.sentinels.is_empty(), "sentinel"),
        ("master_name", config.master_name.is_some(), "sentinel"),
    ] {
        if present && mode != modes {
            return Err(invalid(
                field,
                format!("only used in mode = \"{modes}\", not {mode:?}"),
            ));
        }
    }
    if mode == "sentinel" && (config.url.is_some() || config.host.is_some()) {
        return Err(invalid(
            "url",
            "sentinel mode finds the master through `sentinels`; url/host are not used",
        ));
    }
    if config.options.tls == Some(false)
        && config
            .url
            .iter()
            .map(|u| u.expose())
            .chain(config.nodes.iter().map(String::as_str))
            .any(|u| u.starts_with("rediss://"))
    {
        return Err(invalid(
            "options.tls",
            "tls = false contradicts a rediss:// URL",
        ));
    }
    let endpoint = match mode {
        "standalone" => tcp()?,
        "cluster" => {
            let mut nodes = config.nodes.clone();
            if nodes.is_empty() {
                match (&config.url, &config.host) {
                    (Some(url), _) => nodes.push(url.expose().to_owned()),
                    (None, Some(host)) => {
                        nodes.push(format!("{host}:{}", config.port.unwrap_or(6379)));
                    }
                    (None, None) => {}
                }
            }
            if config.database.is_some_and(|db| db != 0) {
                return Err(Error::InvalidConfig {
                    field: "database".into(),
                    reason: "Redis Cluster has only database 0".into(),
                });
            }
            Endpoint::Cluster {
                nodes,
                username: config.username.clone(),
                password: config.password.clone(),
            }
        }
        "sentinel" => Endpoint::Sentinel {
            sentinels: config.sentinels.clone(),
            master: config
                .master_name
                .clone()
                .ok_or_else(|| Error::InvalidConfig {
                    field: "master_name".into(),
                    reason: "sentinel mode needs the monitored master's name".into(),
                })?,
            username: config.username.clone(),
            password: config.password.clone(),
            database: config.database.unwrap_or(0),
        },
        other => {
            return Err(Error::InvalidConfig {
                field: "mode".into(),
                reason: format!(
                    "unknown mode {other:?}; valid modes are: standalone, cluster, sentinel"
                ),
            });
        }
    };
    let o = &config.options;
    let mut b = RedisCache::builder(&config.name, endpoint)
        .default_ttl(o.default_ttl)
        .tls(crate::redis::TlsOptions {
            enabled: o.tls.unwrap_or(false),
            ca_file: o.tls_ca_file.clone(),
            cert_file: o.tls_cert_file.clone(),
            key_file: o.tls_key_file.clone(),
        });
    if let Some(prefix) = &config.prefix {
        b = b.prefix(prefix.clone());
    }
    if let Some(d) = o.connect_timeout {
        b = b.connect_timeout(d);
    }
    if let Some(d) = o.response_timeout {
        b = b.response_timeout(d);
    }
    if let Some(d) = o.items_refresh {
        b = b.items_refresh(Some(d));
    }
    Ok(b)
}
