//! The Redis backend (feature `redis`), on redis-rs's `ConnectionManager`.
//!
//! One multiplexed connection per cache pipelines concurrent requests. Keys are stored as
//! `prefix + key` and values as raw bytes, so `redis-cli GET <prefix><key>` shows exactly what
//! was written. Atomic operations are single commands (`INCRBY`, `SET NX PX`) or Lua scripts
//! (compare-and-set, persist-if-exists).
//!
//! Failure modes: every request is bounded by the response timeout (default 2 s), including
//! any wait for a reconnect (twice that in Cluster mode, around redis-rs's own per-attempt
//! timeout), and fails with [`Error::Timeout`]; a refused or dropped connection fails with
//! [`Error::Unavailable`], except a write whose connection dropped after it may have been
//! sent: [`Error::OutcomeUnknown`] (writes are never re-sent, on any topology). The connection manager reconnects by itself on the next request
//! after a failure, so the same cache recovers when the server comes back; nothing hangs and
//! nothing panics.
//!
//! # Layout
//! - `mod.rs`: the builder, [`RedisCache`] and its shared state;
//! - `request.rs`: one request's path: prefixed keys, the bound, metrics;
//! - `endpoint.rs`: [`Endpoint`]; `tls.rs`: [`TlsOptions`];
//! - `connect.rs`: connections per mode, and `write` (never re-sends a write whose fate is
//!   unknown); `errors.rs`: redis-rs errors to [`Error`];
//! - `ops.rs`: the [`Cache`] operations; `scripts.rs`: the Lua scripts; `scan.rs`: `clear` and
//!   the items count; `connection.rs`: [`Connection`], the raw handle other Keel crates
//!   (keel-coord) run their own scripts on; `tracking.rs`: the servers to run client
//!   tracking on (the tiered cache's server-assisted invalidation).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::MetricsService;

use crate::metrics::{CacheInstruments, CacheMetrics, Operation, Status};
use quanta::Instant;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncCommands, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};
use tokio::task::JoinHandle;

/// The redis-rs types [`Connection`] takes and returns.
pub use ::redis::{Client, Script};

mod connect;
mod connection;
mod endpoint;
mod errors;
mod ops;
mod request;
mod scan;
mod scripts;
mod tls;
mod tracking;

use self::{connect::*, endpoint::*, errors::*, scan::*, scripts::*, tls::*};
pub use self::{connection::Connection, endpoint::Endpoint, tls::TlsOptions};
pub use ::redis::FromRedisValue;

use crate::config::Secret;
use crate::contract::{Cache, CacheFuture, CacheKind, Limits};
use crate::error::key_for_error;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const SCAN_BATCH: usize = 500;

/// Builder for [`RedisCache`].
#[derive(Debug, Clone)]
pub struct RedisCacheBuilder {
    name: String,
    endpoint: Endpoint,
    prefix: Option<String>,
    default_ttl: Option<Duration>,
    limits: Limits,
    connect_timeout: Duration,
    response_timeout: Duration,
    items_refresh: Option<Duration>,
    metrics: Option<MetricsService>,
    tls: TlsOptions,
    time_one_in: u32,
}

impl RedisCacheBuilder {
    /// TLS settings that contradict the URLs are errors, never a silent plaintext connection:
    /// `enabled` or certificate files with a `redis://` URL or seed, and Cluster seeds that
    /// mix `redis://` and `rediss://`.
    fn check_tls(&self) -> Result<()> {
        let urls: Vec<&str> = match &self.endpoint {
            Endpoint::Url(url) => vec![url.expose()],
            Endpoint::Cluster { nodes, .. } => nodes
                .iter()
                .map(String::as_str)
                .filter(|n| n.contains("://"))
                .collect(),
            Endpoint::Tcp { .. } | Endpoint::Sentinel { .. } => Vec::new(),
        };
        let secure = urls.iter().filter(|u| u.starts_with("rediss://")).count();
        let plain = urls.len() - secure;
        let contradiction = if secure > 0 && plain > 0 {
            Some("the URLs mix redis:// and rediss://")
        } else if plain > 0 && self.tls.enabled {
            Some("tls = true with a redis:// URL would connect in plaintext: use rediss://")
        } else if plain > 0 && self.tls.has_files() {
            Some("TLS certificate files with a redis:// URL would be ignored: use rediss://")
        } else {
            None
        };
        match contradiction {
            Some(reason) => Err(Error::InvalidConfig {
                field: "options.tls".into(),
                reason: reason.into(),
            }),
            None => Ok(()),
        }
    }

    /// TLS settings (see [`TlsOptions`]).
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// Key prefix (default `"<name>:"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// TTL applied by `Ttl::Default`.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long `connect` may take (default 5 s; at most 1 h, longer is cut to that).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d.min(crate::factory::MAX_TIMEOUT);
        self
    }

    /// How long one request may take, a wait for a reconnect included (default 2 s; at most
    /// 1 h, longer is cut to that). One Tokio timer per request enforces it (redis-rs's own
    /// response timer is off on standalone and Sentinel connections, so there are not two);
    /// in Cluster mode redis-rs times each attempt with it and Keel bounds the request at
    /// twice it, leaving room for redirects and re-sends after a refusal.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d.min(crate::factory::MAX_TIMEOUT);
        self
    }

    /// How often `cache_items` is recounted with a SCAN over the prefix (default: never).
    /// Opt-in because each count walks the whole database (`SCAN MATCH` filters after
    /// walking), on every Cluster master, in every process that opens the cache: enable it in
    /// one process, with a period long enough for the database's size. `None` or zero: never.
    pub fn items_refresh(mut self, every: Option<Duration>) -> Self {
        self.items_refresh = every.filter(|d| !d.is_zero());
        self
    }

    /// Time one request in `n` (per thread and operation) for the duration histogram
    /// (default 8; `1` times every request). Request, hit and miss
    /// counts stay exact either way; the histogram's buckets, `_sum` and `_count` are then a
    /// sample (docs/metrics.md). Cost of timing: one more clock read and a histogram update
    /// per timed request, about 1% of a GET's client CPU.
    pub fn time_one_in(mut self, n: u32) -> Self {
        self.time_one_in = n.max(1);
        self
    }

    /// Registry to record into (default: [`MetricsService::global`]).
    pub fn metrics(mut self, metrics: &MetricsService) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Builds the cache, not yet connected: call [`Cache::connect`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a URL or address redis-rs cannot use.
    pub fn build(self) -> Result<RedisCache> {
        let bad = |reason: String| Error::InvalidConfig {
            field: "url".into(),
            reason,
        };
        self.check_tls()?;
        if self.prefix.is_none() && self.name.contains(':') {
            return Err(Error::InvalidConfig {
                field: "prefix".into(),
                reason: format!(
                    "the default prefix \"<name>:\" of a cache named {:?} could overlap \
                     another cache's keys (caches `users` and `users:v2` would share \
                     `users:v2:…`, and `users.clear()` would delete them): set a prefix, or use \
                     a name without ':'",
                    self.name
                ),
            });
        }
        let mut pubsub_clients = Vec::new();
        let target = match &self.endpoint {
            Endpoint::Url(url) => Target::Single(single_client(
                url.expose().into_connection_info().map_err(|e| {
                    let reason = format!("not a usable redis URL: {e}");
                    bad(crate::config::redact_urls(&reason))
                })?,
                &self.tls,
            )?),
            Endpoint::Tcp {
                host,
                port,
                username,
                password,
                database,
            } => {
                let addr = if self.tls.enabled {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                };
                let info = addr
                    .into_connection_info()
                    .map_err(|e| bad(e.to_string()))?;
                let settings = redis_settings(
                    info.redis_settings().clone(),
                    username.as_ref(),
                    password.as_ref(),
                    *database,
                );
                Target::Single(single_client(info.set_redis_settings(settings), &self.tls)?)
            }
            Endpoint::Cluster {
                nodes,
                username,
                password,
            } => {
                if nodes.is_empty() {
                    return Err(Error::InvalidConfig {
                        field: "nodes".into(),
                        reason: "cluster mode needs at least one seed node".into(),
                    });
                }
                let scheme = if self.tls.enabled { "rediss" } else { "redis" };
                let urls: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        if n.contains("://") {
                            n.clone()
                        } else {
                            format!("{scheme}://{n}")
                        }
                    })
                    .collect();
                // redis-rs re-sends a request after any failure while retries remain, also
                // after a dropped connection when the command may already have run: fine for
                // reads, wrong for writes (an INCRBY applied twice). Writes get a client
                // that never re-sends; `Shared::write` re-sends only after a refusal.
                let client = |retries: u32| -> Result<redis::cluster::ClusterClient> {
                    let mut b = ClusterClientBuilder::new(urls.clone())
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.response_timeout)
                        .retries(retries);
                    #[cfg(feature = "redis-tls")]
                    if let Some(certs) = self.tls.certificates()? {
                        b = b.certs(certs);
                    }
                    #[cfg(not(feature = "redis-tls"))]
                    if self.tls.enabled || self.tls.has_files() {
                        return Err(no_tls());
                    }
                    if let Some(user) = username {
                        b = b.username(user);
                    }
                    if let Some(pass) = password {
                        b = b.password(pass.expose());
                    }
                    b.build().map_err(|e| Error::InvalidConfig {
                        field: "nodes".into(),
                        reason: crate::config::redact_urls(&e.to_string()),
                    })
                };
                // Pub/sub goes to one node (Cluster forwards every PUBLISH to all nodes), with
                // the data path's credentials and TLS; each seed in turn if one is down.
                for url in &urls {
                    let info =
                        url.as_str()
                            .into_connection_info()
                            .map_err(|e| Error::InvalidConfig {
                                field: "nodes".into(),
                                reason: crate::config::redact_urls(&e.to_string()),
                            })?;
                    let settings = redis_settings(
                        info.redis_settings().clone(),
                        username.as_ref(),
                        password.as_ref(),
                        0,
                    );
                    pubsub_clients
                        .push(single_client(info.set_redis_settings(settings), &self.tls)?);
                }
                Target::Cluster {
                    reads: Box::new(client(2)?),
                    writes: Box::new(client(0)?),
                }
            }
            Endpoint::Sentinel {
                sentinels,
                master,
                username,
                password,
                database,
            } => {
                if self.tls.enabled || self.tls.has_files() {
                    return Err(Error::InvalidConfig {
                        field: "options.tls".into(),
                        reason: "TLS through Sentinel is not supported yet".into(),
                    });
                }
                if sentinels.is_empty() || master.is_empty() {
                    return Err(Error::InvalidConfig {
                        field: "sentinels".into(),
                        reason: "sentinel mode needs sentinel addresses and a master name".into(),
                    });
                }
                let settings = redis_settings(
                    redis::RedisConnectionInfo::default(),
                    username.as_ref(),
                    password.as_ref(),
                    *database,
                );
                let node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(settings);
                let client = SentinelClient::build(
                    sentinels.iter().map(|n| node_url(n)).collect(),
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| Error::InvalidConfig {
                    field: "sentinels".into(),
                    reason: crate::config::redact_urls(&e.to_string()),
                })?;
                Target::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        let service = self
            .metrics
            .unwrap_or_else(|| MetricsService::global().clone());
        let metrics = CacheMetrics::of(&service).for_cache(&self.name);
        let prefix = self.prefix.unwrap_or_else(|| format!("{}:", self.name));
        let bound = if matches!(target, Target::Cluster { .. }) {
            self.response_timeout.saturating_mul(2)
        } else {
            self.response_timeout
        };
        Ok(RedisCache {
            shared: Arc::new(Shared {
                pubsub_clients,
                pubsub_next: std::sync::atomic::AtomicUsize::new(0),
                name: self.name,
                prefix,
                target,
                conn: RwLock::new(None),
                resolve: AtomicBool::new(false),
                healthy: AtomicBool::new(false),
                default_ttl: self.default_ttl,
                limits: self.limits,
                connect_timeout: self.connect_timeout,
                response_timeout: self.response_timeout,
                bound,
                items_refresh: self.items_refresh,
                items_task: std::sync::Mutex::new(None),
                metrics,
                time_one_in: self.time_one_in,
                cas: Script::new(CAS_SCRIPT),
                persist: Script::new(PERSIST_SCRIPT),
            }),
        })
    }
}

struct Shared {
    name: String,
    prefix: String,
    target: Target,
    /// Cluster mode: one client per seed node for pub/sub connections (credentials and TLS
    /// as the data path), tried in turn.
    pubsub_clients: Vec<Client>,
    pubsub_next: std::sync::atomic::AtomicUsize,
    /// `None` before `connect` and after `close`.
    conn: RwLock<Option<Conns>>,
    /// Sentinel mode: the master must be looked up again before the next request.
    resolve: AtomicBool,
    /// Whether the last request reached the server.
    healthy: AtomicBool,
    default_ttl: Option<Duration>,
    limits: Limits,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// How long one request may take in all, Keel's one timer per request. Standalone and
    /// Sentinel: the response timeout, covering any wait for a reconnect too (redis-rs's own
    /// response timer is off on those connections: one timer per request, not two). Cluster:
    /// twice the response timeout around redis-rs's own per-attempt timeout, which leaves room
    /// for its redirects and for [`Shared::write`]'s re-sends after a refusal.
    bound: Duration,
    items_refresh: Option<Duration>,
    items_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: CacheInstruments,
    /// Time one request in this many per thread and operation (see
    /// [`RedisCacheBuilder::time_one_in`]).
    time_one_in: u32,
    cas: Script,
    persist: Script,
}

/// A cache on a Redis server. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's connection info may hold a password: never print it.
        f.debug_struct("RedisCache")
            .field("name", &self.shared.name)
            .field("prefix", &self.shared.prefix)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// The value and remaining lifetime of `key` in one round trip (`GET` + `PTTL`).
    ///
    /// # Errors
    /// As `get`.
    pub async fn get_with_ttl(&self, key: &str) -> Result<Option<(Bytes, KeyTtl)>> {
        let s = &self.shared;
        s.run(
            Operation::Get,
            |v: &Option<(Bytes, KeyTtl)>| {
                if v.is_some() {
                    Status::Hit
                } else {
                    Status::Miss
                }
            },
            async move {
                s.limits.check_key(key)?;
                let mut c = s.conn().await?;
                let full = s.key(key);
                let (value, ms): (Option<Vec<u8>>, i64) = redis::pipe()
                    .cmd("GET")
                    .arg(&full)
                    .cmd("PTTL")
                    .arg(&full)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| s.error(Operation::Get, &e))?;
                Ok(value.map(|v| {
                    let ttl = match ms {
                        -1 => KeyTtl::Persistent,
                        ms if ms >= 0 => {
                            KeyTtl::Expires(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                        }
                        _ => KeyTtl::Missing,
                    };
                    (Bytes::from(v), ttl)
                }))
            },
        )
        .await
    }

    /// Publishes `message` on `channel` (not prefixed).
    ///
    /// # Errors
    /// As any request.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        let s = &self.shared;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        let cmd = &cmd;
        s.bounded("publish", async {
            s.write(|mut c| async move { cmd.query_async::<()>(&mut c).await })
                .await?
                .map_err(|e| s.write_error_in("publish", &e))
        })
        .await
    }

    /// A client for a dedicated pub/sub connection to the current server (the master in
    /// Sentinel mode; in Cluster mode the next seed node, in turn: Cluster forwards every
    /// `PUBLISH` to all nodes), with the same credentials and TLS as the data path.
    pub(crate) async fn pubsub_client(&self) -> Result<Client> {
        let s = &self.shared;
        let unavailable = |e: RedisError| Error::Unavailable {
            cache: s.name.clone(),
            operation: "subscribe",
            reason: crate::config::redact_urls(&e.to_string()),
        };
        match &s.target {
            Target::Single(c) => Ok(c.clone()),
            Target::Sentinel(sentinel) => sentinel
                .lock()
                .await
                .async_get_client()
                .await
                .map_err(unavailable),
            Target::Cluster { .. } => {
                let n = s.pubsub_next.fetch_add(1, Ordering::Relaxed);
                match s.pubsub_clients.get(n % s.pubsub_clients.len().max(1)) {
                    Some(client) => Ok(client.clone()),
                    None => Err(Error::InvalidConfig {
                        field: "nodes".into(),
                        reason: "no seed node for pub/sub".into(),
                    }),
                }
            }
        }
    }

    /// Whether this cache talks to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.shared.target, Target::Cluster { .. })
    }

    /// A builder for a cache called `name` on `endpoint`.
    pub fn builder(name: impl Into<String>, endpoint: Endpoint) -> RedisCacheBuilder {
        RedisCacheBuilder {
            name: name.into(),
            endpoint,
            prefix: None,
            default_ttl: None,
            limits: Limits::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            // Opt-in: a SCAN over the prefix is O(keys in the database) on every master, in
            // every process that opens this cache.
            items_refresh: None,
            metrics: None,
            tls: TlsOptions::default(),
            time_one_in: request::TIME_ONE_IN,
        }
    }

    /// How long `connect` may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.shared.connect_timeout
    }

    /// How long one request may take.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.shared.response_timeout
    }

    /// Returns once the server holding `key` has answered an `EXISTS` sent on the write
    /// connection now: Redis runs a connection's requests in order, so every write sent
    /// there before (even one that timed out) has run, or never will (its connection
    /// dropped). In Cluster mode reads use other connections and are not ordered after it.
    ///
    /// # Errors
    /// As any request (the fence itself timing out: the earlier write may still be pending).
    pub(crate) async fn fence(&self, key: &str) -> Result<()> {
        let s = &self.shared;
        let full = s.key(key);
        let full = &full;
        let sent = s.write(|mut c| async move { c.exists::<_, bool>(full).await });
        s.bounded("fence", async {
            sent.await?.map_err(|e| s.error_in("fence", &e))?;
            Ok(())
        })
        .await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Counts this cache's keys now (a SCAN over the prefix) and updates `cache_items`.
    ///
    /// # Errors
    /// As any request.
    pub async fn count_items(&self) -> Result<u64> {
        self.shared.count_items().await
    }
}
