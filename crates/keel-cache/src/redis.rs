//! The Redis backend (feature `redis`), on redis-rs's `ConnectionManager`.
//!
//! One multiplexed connection per cache pipelines concurrent requests. Keys are stored as
//! `prefix + key` and values as raw bytes, so `redis-cli GET <prefix><key>` shows exactly what
//! was written. Atomic operations are single commands (`INCRBY`, `SET NX PX`) or Lua scripts
//! (compare-and-set, persist-if-exists).
//!
//! Failure modes: every request is bounded by the response timeout (default 2 s) and fails
//! with [`Error::Timeout`]; a refused or dropped connection fails with
//! [`Error::Unavailable`]. The connection manager reconnects by itself on the next request
//! after a failure, so the same cache recovers when the server comes back; nothing hangs and
//! nothing panics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_metrics::{CacheInstruments, MetricsService, Operation, Status};
use quanta::Instant;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncCommands, Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, Script, Value,
};
use tokio::task::JoinHandle;

use crate::config::Secret;
use crate::contract::{Cache, CacheFuture, CacheKind, Limits};
use crate::error::key_for_error;
use crate::ttl::{KeyTtl, Ttl};
use crate::{Error, Result};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const SCAN_BATCH: usize = 500;

/// Compare-and-set: `KEYS[1]`, expected `ARGV[1]`, new value `ARGV[2]`, TTL in ms `ARGV[3]`
/// (empty: no expiry).
const CAS_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  return 1
end
return 0";

/// `PERSIST` that reports whether the key exists (plain `PERSIST` answers 0 for an existing
/// key without TTL).
const PERSIST_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PERSIST', KEYS[1])
  return 1
end
return 0";

/// Lock acquire: `KEYS[1]` lock, `KEYS[2]` fence counter, `ARGV[1]` token, `ARGV[2]` TTL ms.
/// Returns the new fencing token, or 0 when the lock is held.
const LOCK_ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0";

/// Lock release: delete `KEYS[1]` only if it holds `ARGV[1]`.
const LOCK_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Lock extend: reset `KEYS[1]`'s TTL to `ARGV[2]` ms only if it holds `ARGV[1]`.
const LOCK_EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Where the server is. `Debug` shows no password, and no credentials inside URLs.
#[derive(Clone)]
pub enum Endpoint {
    /// A `redis://` or `rediss://` URL (may carry credentials; redacted in `Debug`).
    Url(Secret),
    /// Host and port with optional credentials and database.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// ACL user name.
        username: Option<String>,
        /// Password.
        password: Option<Secret>,
        /// Database number.
        database: i64,
    },
    /// A Redis Cluster, found through any of these seed nodes (`host:port` or URLs).
    Cluster {
        /// Seed nodes.
        nodes: Vec<String>,
        /// ACL user name.
        username: Option<String>,
        /// Password.
        password: Option<Secret>,
    },
    /// A master found through Redis Sentinel; the cache follows failovers.
    Sentinel {
        /// Sentinel addresses (`host:port` or URLs).
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
        /// ACL user name for the data nodes.
        username: Option<String>,
        /// Password for the data nodes.
        password: Option<Secret>,
        /// Database number.
        database: i64,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |list: &[String]| {
            list.iter()
                .map(|u| crate::config::redact_urls(u))
                .collect::<Vec<_>>()
        };
        match self {
            Endpoint::Url(url) => f.debug_tuple("Url").field(url).finish(),
            Endpoint::Tcp {
                host,
                port,
                username,
                password,
                database,
            } => f
                .debug_struct("Tcp")
                .field("host", host)
                .field("port", port)
                .field("username", username)
                .field("password", password)
                .field("database", database)
                .finish(),
            Endpoint::Cluster {
                nodes,
                username,
                password,
            } => f
                .debug_struct("Cluster")
                .field("nodes", &redacted(nodes))
                .field("username", username)
                .field("password", password)
                .finish(),
            Endpoint::Sentinel {
                sentinels,
                master,
                username,
                password,
                database,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", &redacted(sentinels))
                .field("master", master)
                .field("username", username)
                .field("password", password)
                .field("database", database)
                .finish(),
        }
    }
}

fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

fn redis_settings(
    base: redis::RedisConnectionInfo,
    username: Option<&String>,
    password: Option<&Secret>,
    database: i64,
) -> redis::RedisConnectionInfo {
    let mut settings = base.set_db(database);
    if let Some(user) = username {
        settings = settings.set_username(user);
    }
    if let Some(pass) = password {
        settings = settings.set_password(pass.expose());
    }
    settings
}

/// Wrong credentials or a permission the ACL does not grant.
fn is_denied(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOPERM" | "WRONGPASS" | "NOAUTH"))
}

/// The client side of each mode, before connecting.
enum Target {
    Single(Client),
    /// Reads go through a client that retries (redirects, reconnects); writes through one
    /// that never re-sends by itself (see [`Shared::write`]).
    Cluster {
        reads: Box<redis::cluster::ClusterClient>,
        writes: Box<redis::cluster::ClusterClient>,
    },
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// The connections of one cache: the same one twice, except in Cluster mode (see
/// [`Target::Cluster`]).
#[derive(Clone)]
struct Conns {
    read: Conn,
    write: Conn,
}

impl Conns {
    fn same(conn: Conn) -> Self {
        Self {
            read: conn.clone(),
            write: conn,
        }
    }
}

/// A live connection of any mode; cheap to clone (all share one multiplexed connection).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// TLS settings. A `rediss://` URL turns TLS on by itself; `enabled` does it for
/// `host`/`port` and Cluster seeds given as `host:port`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Use TLS.
    pub enabled: bool,
    /// PEM file of the CA to trust instead of the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<std::path::PathBuf>,
}

impl TlsOptions {
    fn has_files(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    #[cfg(feature = "redis-tls")]
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>> {
        if !self.has_files() {
            return Ok(None);
        }
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::InvalidConfig {
                field: format!("options.{field}"),
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("tls_cert_file", cert)?,
                client_key: read("tls_key_file", key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidConfig {
                    field: "options.tls_cert_file".into(),
                    reason: "a client certificate needs both tls_cert_file and tls_key_file".into(),
                });
            }
        };
        let root_cert = match &self.ca_file {
            Some(ca) => Some(read("tls_ca_file", ca)?),
            None => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Opens a standalone client, with the TLS material when there is any.
fn single_client(info: redis::ConnectionInfo, tls: &TlsOptions) -> Result<Client> {
    let bad = |e: RedisError| Error::InvalidConfig {
        field: "url".into(),
        reason: crate::config::redact_urls(&e.to_string()),
    };
    #[cfg(feature = "redis-tls")]
    if let Some(certs) = tls.certificates()? {
        return Client::build_with_tls(info, certs).map_err(bad);
    }
    #[cfg(not(feature = "redis-tls"))]
    if tls.enabled || tls.has_files() {
        return Err(no_tls());
    }
    Client::open(info).map_err(bad)
}

#[cfg(not(feature = "redis-tls"))]
fn no_tls() -> Error {
    Error::InvalidConfig {
        field: "options.tls".into(),
        reason: "this build of keel-cache has no TLS (enable the `redis-tls` feature)".into(),
    }
}

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

    /// How long one request may wait for its answer (default 2 s; at most 1 h, longer is cut
    /// to that).
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
        let metrics = service.cache_metrics().for_cache(&self.name);
        let prefix = self.prefix.unwrap_or_else(|| format!("{}:", self.name));
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
                items_refresh: self.items_refresh,
                items_task: std::sync::Mutex::new(None),
                metrics,
                cas: Script::new(CAS_SCRIPT),
                persist: Script::new(PERSIST_SCRIPT),
                lock_acquire: Script::new(LOCK_ACQUIRE),
                lock_release: Script::new(LOCK_RELEASE),
                lock_extend: Script::new(LOCK_EXTEND),
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
    items_refresh: Option<Duration>,
    items_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: CacheInstruments,
    cas: Script,
    persist: Script,
    lock_acquire: Script,
    lock_release: Script,
    lock_extend: Script,
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
        s.write(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await?
            .map_err(|e| s.write_error_in("publish", &e))
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
        }
    }

    /// How long `connect` may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.shared.connect_timeout
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

/// Whether a Cluster answer proves the request did not run (a redirect, or the node refusing
/// work for now), so re-sending it cannot apply it twice.
fn refused_before_running(e: &RedisError) -> bool {
    use redis::RetryMethod as M;
    matches!(
        e.retry_method(),
        M::MovedRedirect | M::AskRedirect | M::WaitAndRetry | M::RefreshSlotsAndRetry
    ) && e.code().is_some()
}

/// Escapes glob characters so a prefix matches only itself in `SCAN MATCH`.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

impl Shared {
    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// The connection for reads (and for requests that may be re-sent).
    async fn conn(&self) -> Result<Conn> {
        Ok(self.conns().await?.read)
    }

    /// The connection for writes: in Cluster mode one that never re-sends a request by itself.
    async fn write_conn(&self) -> Result<Conn> {
        Ok(self.conns().await?.write)
    }

    /// Runs a write, built by `send` on the write connection. A write is never re-sent after
    /// its fate became unknown (a dropped connection, a timeout): that is
    /// [`Error::OutcomeUnknown`] or [`Error::Timeout`] for the caller. It is re-sent only after
    /// a Cluster answer proving it did not run (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`,
    /// `READONLY`, loading), while the slot map catches up; the response bound of the calling
    /// operation ends that loop. The inner result carries the server's answer for the caller
    /// to map (`incr_by` has its own error mapping).
    async fn write<T, F>(&self, mut send: impl FnMut(Conn) -> F) -> Result<RedisResult<T>>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let mut backoff = Duration::from_millis(10);
        loop {
            let conn = self.write_conn().await?;
            let cluster = matches!(conn, Conn::Cluster(_));
            match send(conn).await {
                Err(e) if cluster && refused_before_running(&e) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                other => return Ok(other),
            }
        }
    }

    /// Maps the error of a write: a connection that dropped after the request may have been
    /// sent is [`Error::OutcomeUnknown`] (a refused connection is not: nothing was sent).
    fn write_error(&self, op: Operation, e: &RedisError) -> Error {
        self.write_error_in(op.as_str(), e)
    }

    /// [`write_error`](Self::write_error) for requests outside the cache operations.
    fn write_error_in(&self, operation: &'static str, e: &RedisError) -> Error {
        let mapped = self.error_in(operation, e);
        if matches!(mapped, Error::Unavailable { .. })
            && !e.is_connection_refusal()
            && (e.is_connection_dropped() || e.is_io_error())
        {
            return Error::OutcomeUnknown {
                cache: self.name.clone(),
                operation,
                reason: crate::config::redact_urls(&e.to_string()),
            };
        }
        mapped
    }

    /// The live connections; in Sentinel mode, after a failure, first asks the sentinels for
    /// the current master and reconnects if it moved.
    async fn conns(&self) -> Result<Conns> {
        let current = self
            .conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Error::Closed {
                cache: self.name.clone(),
            })?;
        if matches!(self.target, Target::Sentinel(_)) && self.resolve.swap(false, Ordering::AcqRel)
        {
            match self.open_conn().await {
                Ok(fresh) => {
                    let mut slot = self.conn.write().unwrap_or_else(PoisonError::into_inner);
                    // A concurrent close wins: do not resurrect the cache.
                    if slot.is_some() {
                        *slot = Some(fresh.clone());
                    }
                    return Ok(fresh);
                }
                Err(e) => {
                    self.resolve.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(current)
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            // A failed request triggers a reconnect; keep each attempt short so callers see
            // typed errors quickly while the server is down.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
    }

    /// Opens a new connection for the configured mode, bounded by the connect timeout.
    async fn open_conn(&self) -> Result<Conns> {
        let unavailable = |e: RedisError| {
            if is_denied(&e) {
                Error::Denied {
                    cache: self.name.clone(),
                    operation: "connect",
                    message: crate::config::redact_urls(&e.to_string()),
                }
            } else {
                Error::Unavailable {
                    cache: self.name.clone(),
                    operation: "connect",
                    reason: crate::config::redact_urls(&e.to_string()),
                }
            }
        };
        let opening = async {
            match &self.target {
                Target::Single(client) => {
                    ConnectionManager::new_with_config(client.clone(), self.manager_config())
                        .await
                        .map(|c| Conns::same(Conn::Single(c)))
                        .map_err(unavailable)
                }
                Target::Cluster { reads, writes } => Ok(Conns {
                    read: reads
                        .get_async_connection()
                        .await
                        .map(Conn::Cluster)
                        .map_err(unavailable)?,
                    write: writes
                        .get_async_connection()
                        .await
                        .map(Conn::Cluster)
                        .map_err(unavailable)?,
                }),
                Target::Sentinel(sentinel) => {
                    let client = sentinel
                        .lock()
                        .await
                        .async_get_client()
                        .await
                        .map_err(unavailable)?;
                    ConnectionManager::new_with_config(client, self.manager_config())
                        .await
                        .map(|c| Conns::same(Conn::Single(c)))
                        .map_err(unavailable)
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, opening)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    cache: self.name.clone(),
                    operation: "connect",
                    after: self.connect_timeout,
                })
            })
    }

    fn ttl_ms(&self, key: &str, ttl: Ttl) -> Result<Option<u64>> {
        Ok(ttl
            .resolve(self.default_ttl, key)?
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Maps a client error, and remembers whether the server was reachable.
    fn error(&self, op: Operation, e: &RedisError) -> Error {
        self.error_in(op.as_str(), e)
    }

    /// Like [`error`](Self::error) for requests outside the cache operations (`"lock"`).
    fn error_in(&self, operation: &'static str, e: &RedisError) -> Error {
        let cache = self.name.clone();
        let readonly = e.code() == Some("READONLY");
        if readonly || e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
            // In Sentinel mode the master may have moved (a demoted master answers READONLY).
            self.resolve.store(true, Ordering::Release);
        }
        if is_denied(e) {
            return Error::Denied {
                cache,
                operation,
                message: crate::config::redact_urls(&e.to_string()),
            };
        }
        if readonly {
            self.healthy.store(false, Ordering::Relaxed);
            return Error::Unavailable {
                cache,
                operation,
                reason: "the server is a read-only replica (failover in progress)".into(),
            };
        }
        if e.is_timeout() {
            self.healthy.store(false, Ordering::Relaxed);
            Error::Timeout {
                cache,
                operation,
                after: self.response_timeout,
            }
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            self.healthy.store(false, Ordering::Relaxed);
            Error::Unavailable {
                cache,
                operation,
                reason: crate::config::redact_urls(&e.to_string()),
            }
        } else {
            Error::Backend {
                cache,
                operation,
                message: crate::config::redact_urls(&e.to_string()),
            }
        }
    }

    /// Runs one request under the response timeout, maps its error and records metrics.
    async fn run<T>(
        &self,
        op: Operation,
        status: impl FnOnce(&T) -> Status,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.run_bounded(op, status, self.bounded(op.as_str(), body))
            .await
    }

    /// [`run`](Self::run) with the bounding left to `body` (a sweep bounds each step).
    async fn run_bounded<T>(
        &self,
        op: Operation,
        status: impl FnOnce(&T) -> Status,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let result = body.await;
        let elapsed = start.elapsed();
        match &result {
            Ok(v) => {
                self.healthy.store(true, Ordering::Relaxed);
                self.metrics.record(op, status(v), elapsed);
            }
            Err(_) => self.metrics.record(op, Status::Error, elapsed),
        }
        result
    }

    /// Runs `body` under the outer response bound: redis-rs enforces the response timeout
    /// itself; this bound also covers the wait for a reconnect. A timeout marks the
    /// connection unhealthy.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let bound = self.response_timeout.saturating_mul(2);
        match tokio::time::timeout(bound, body).await {
            Ok(r) => r,
            Err(_) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(Error::Timeout {
                    cache: self.name.clone(),
                    operation,
                    after: bound,
                })
            }
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<()> {
        if self
            .conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        let manager = self.open_conn().await?;
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(manager);
        self.healthy.store(true, Ordering::Relaxed);
        if let Some(every) = self.items_refresh {
            let weak = Arc::downgrade(self);
            let task = tokio::spawn(refresh_items(weak, every));
            if let Some(old) = self
                .items_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .replace(task)
            {
                old.abort();
            }
        }
        Ok(())
    }

    fn close(&self) {
        self.conn
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.healthy.store(false, Ordering::Relaxed);
        if let Some(task) = self
            .items_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    /// Walks every key under the prefix with `SCAN` (on every master in Cluster mode),
    /// unlinking them when `unlink`; returns how many it saw. Not bounded as a whole: each
    /// `SCAN` and `UNLINK` is (see [`sweep_step`](Self::sweep_step)), so the time a sweep may
    /// take grows with the number of keys it walks, and a step that fails is tried again from
    /// the same cursor instead of restarting the walk.
    async fn sweep(&self, op: Operation, unlink: bool) -> Result<u64> {
        let conn = self.conn().await?;
        let nodes = match &conn {
            Conn::Single(_) => vec![None],
            Conn::Cluster(c) => {
                let c = c.clone();
                self.sweep_step(op, || {
                    let mut c = c.clone();
                    async move {
                        cluster_masters(&mut c)
                            .await
                            .map_err(|e| self.error(op, &e))
                    }
                })
                .await?
                .into_iter()
                .map(Some)
                .collect()
            }
        };
        let pattern = glob_escape(&self.prefix);
        let mut seen: u64 = 0;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH);
                let (next, keys): (u64, Vec<Vec<u8>>) = self
                    .sweep_step(op, || {
                        let (mut conn, cmd, node) = (conn.clone(), cmd.clone(), node.clone());
                        async move {
                            match (&mut conn, node) {
                                (Conn::Cluster(c), Some((host, port))) => {
                                    let route =
                                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                            host,
                                            port,
                                        });
                                    let value = c
                                        .route_command(cmd, route)
                                        .await
                                        .map_err(|e| self.error(op, &e))?;
                                    redis::from_redis_value(value).map_err(|e| Error::Backend {
                                        cache: self.name.clone(),
                                        operation: op.as_str(),
                                        message: crate::config::redact_urls(&e.to_string()),
                                    })
                                }
                                _ => cmd
                                    .query_async(&mut conn)
                                    .await
                                    .map_err(|e| self.error(op, &e)),
                            }
                        }
                    })
                    .await?;
                seen += keys.len() as u64;
                if unlink && !keys.is_empty() {
                    let keys = &keys;
                    self.sweep_step(op, || {
                        let mut conn = conn.clone();
                        async move {
                            redis::cmd("UNLINK")
                                .arg(keys)
                                .query_async::<()>(&mut conn)
                                .await
                                .map_err(|e| self.error(op, &e))
                        }
                    })
                    .await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(seen)
    }

    /// One request of a sweep, bounded like any request and tried up to three times on a
    /// timeout or a dropped connection (a `SCAN` from the same cursor and an `UNLINK` of the
    /// same keys are safe to repeat).
    async fn sweep_step<T, F>(&self, op: Operation, mut attempt: impl FnMut() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let mut failures = 0u32;
        loop {
            match self.bounded(op.as_str(), attempt()).await {
                Err(Error::Timeout { .. } | Error::Unavailable { .. }) if failures < 2 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50) * failures).await;
                }
                other => return other,
            }
        }
    }

    async fn count_items(&self) -> Result<u64> {
        // Counting is a batch existence check; its errors name that operation.
        let count = self.sweep(Operation::Exists, false).await?;
        self.metrics
            .set_items(i64::try_from(count).unwrap_or(i64::MAX));
        Ok(count)
    }
}

/// `(host, port)` of every master that is not marked failed, from `CLUSTER NODES`.
async fn cluster_masters(c: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    let value = c
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await?;
    let text: String = redis::from_redis_value(value)
        .map_err(|e| RedisError::from((redis::ErrorKind::Parse, "CLUSTER NODES", e.to_string())))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let flags = *fields.get(2)?;
            // Fields 8.. are slot ranges: a master without slots (e.g. emptied by a
            // resharding) holds no keys and may be unknown to the client's slot map.
            let has = |flag: &str| flags.split(',').any(|f| f == flag);
            if !has("master") || has("fail") || fields.len() <= 8 {
                return None;
            }
            // "host:port@bus[,hostname]"
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect())
}

async fn refresh_items(cache: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = cache.upgrade() else {
            return;
        };
        // A failed count keeps the last value; the failure is visible in requests_total.
        let _ = shared.count_items().await;
    }
}

fn is_hit(v: &Option<Bytes>) -> Status {
    if v.is_some() {
        Status::Hit
    } else {
        Status::Miss
    }
}

fn ok<T>(_: &T) -> Status {
    Status::Ok
}

impl Cache for RedisCache {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn kind(&self) -> CacheKind {
        CacheKind::Redis
    }

    fn connect<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::boxed(self.shared.connect())
    }

    fn close<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        self.shared.close();
        CacheFuture::ready(Ok(()))
    }

    fn is_connected(&self) -> bool {
        let s = &self.shared;
        s.healthy.load(Ordering::Relaxed)
            && s.conn
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<Option<Bytes>>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Get, is_hit, async move {
            s.limits.check_key(key)?;
            let mut c = s.conn().await?;
            let v: Option<Vec<u8>> = c
                .get(s.key(key))
                .await
                .map_err(|e| s.error(Operation::Get, &e))?;
            Ok(v.map(Bytes::from))
        }))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<()>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Set, ok, async move {
            s.limits.check_entry(key, &value)?;
            let ms = s.ttl_ms(key, ttl)?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(s.key(key)).arg(value.as_ref());
            if let Some(ms) = ms {
                cmd.arg("PX").arg(ms);
            }
            let cmd = &cmd;
            s.write(|mut c| async move { cmd.query_async::<()>(&mut c).await })
                .await?
                .map_err(|e| s.write_error(Operation::Set, &e))
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Delete, ok, async move {
            s.limits.check_key(key)?;
            let full = s.key(key);
            let n: u64 = s
                .write(|mut c| {
                    let full = &full;
                    async move { c.del(full).await }
                })
                .await?
                .map_err(|e| s.write_error(Operation::Delete, &e))?;
            Ok(n > 0)
        }))
    }

    fn exists<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Exists, ok, async move {
            s.limits.check_key(key)?;
            let mut c = s.conn().await?;
            c.exists(s.key(key))
                .await
                .map_err(|e| s.error(Operation::Exists, &e))
        }))
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Expire, ok, async move {
            s.limits.check_key(key)?;
            let ms = s.ttl_ms(key, ttl)?;
            let full = s.key(key);
            let changed: i64 = s
                .write(|mut c| {
                    let full = &full;
                    async move {
                        match ms {
                            Some(ms) => {
                                redis::cmd("PEXPIRE")
                                    .arg(full)
                                    .arg(ms)
                                    .query_async(&mut c)
                                    .await
                            }
                            None => s.persist.key(full).invoke_async(&mut c).await,
                        }
                    }
                })
                .await?
                .map_err(|e| s.write_error(Operation::Expire, &e))?;
            Ok(changed == 1)
        }))
    }

    fn ttl<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<KeyTtl>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Ttl, ok, async move {
            s.limits.check_key(key)?;
            let mut c = s.conn().await?;
            let ms: i64 = redis::cmd("PTTL")
                .arg(s.key(key))
                .query_async(&mut c)
                .await
                .map_err(|e| s.error(Operation::Ttl, &e))?;
            Ok(match ms {
                -2 => KeyTtl::Missing,
                -1 => KeyTtl::Persistent,
                ms => KeyTtl::Expires(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            })
        }))
    }

    fn set_nx<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::SetNx, ok, async move {
            s.limits.check_entry(key, &value)?;
            let ms = s.ttl_ms(key, ttl)?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(s.key(key)).arg(value.as_ref()).arg("NX");
            if let Some(ms) = ms {
                cmd.arg("PX").arg(ms);
            }
            let cmd = &cmd;
            let set: Option<String> = s
                .write(|mut c| async move { cmd.query_async(&mut c).await })
                .await?
                .map_err(|e| s.write_error(Operation::SetNx, &e))?;
            Ok(set.is_some())
        }))
    }

    fn set_if_match<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: &'a [u8],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Cas, ok, async move {
            s.limits.check_entry(key, &value)?;
            let ms = s.ttl_ms(key, ttl)?;
            let (full, ms) = (s.key(key), ms.map(|m| m.to_string()).unwrap_or_default());
            let swapped: i64 = s
                .write(|mut c| {
                    let (full, ms, value) = (&full, &ms, &value);
                    async move {
                        s.cas
                            .key(full)
                            .arg(expected)
                            .arg(value.as_ref())
                            .arg(ms)
                            .invoke_async(&mut c)
                            .await
                    }
                })
                .await?
                .map_err(|e| s.write_error(Operation::Cas, &e))?;
            Ok(swapped == 1)
        }))
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::Incr, ok, async move {
            s.limits.check_key(key)?;
            let full = s.key(key);
            s.write(|mut c| {
                let full = &full;
                async move { c.incr(full, delta).await }
            })
            .await?
            .map_err(|e| {
                // INCRBY reports both failures as server errors; tell them apart by text.
                let text = e.to_string();
                if text.contains("overflow") {
                    Error::Overflow {
                        key: key_for_error(key),
                        delta,
                    }
                } else if text.contains("not an integer") {
                    Error::NotAnInteger {
                        key: key_for_error(key),
                    }
                } else {
                    s.write_error(Operation::Incr, &e)
                }
            })
        }))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<Vec<Option<Bytes>>>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::GetMany, ok, async move {
            s.limits.check_keys(keys)?;
            let mut c = s.conn().await?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let full: Vec<String> = keys.iter().map(|k| s.key(k)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&full)
                .query_async(&mut c)
                .await
                .map_err(|e| s.error(Operation::GetMany, &e))?;
            let hits = values.iter().filter(|v| v.is_some()).count() as u64;
            s.metrics.record_lookups(hits, values.len() as u64 - hits);
            Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
        }))
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<()>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::SetMany, ok, async move {
            s.limits.check_entries(items)?;
            let ms = s.ttl_ms(items.first().map_or("", |(k, _)| *k), ttl)?;
            let c = s.write_conn().await?;
            if items.is_empty() {
                return Ok(());
            }
            let set = |key: &str, value: &Bytes| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(s.key(key)).arg(value.as_ref());
                if let Some(ms) = ms {
                    cmd.arg("PX").arg(ms);
                }
                cmd
            };
            if matches!(c, Conn::Cluster(_)) {
                // A Cluster pipeline must stay within one slot: send the SETs as concurrent
                // single commands instead; the multiplexed connections still batch them.
                // Each on the write connection, re-sent only after a redirect (as `write`).
                let mut sets = tokio::task::JoinSet::new();
                for (key, value) in items {
                    let (cmd, shared) = (set(key, value), self.shared.clone());
                    sets.spawn(async move {
                        let cmd = &cmd;
                        shared
                            .write(|mut c| async move { cmd.query_async::<()>(&mut c).await })
                            .await
                    });
                }
                while let Some(done) = sets.join_next().await {
                    match done {
                        Ok(r) => r?.map_err(|e| s.write_error(Operation::SetMany, &e))?,
                        Err(e) => {
                            return Err(Error::Backend {
                                cache: s.name.clone(),
                                operation: Operation::SetMany.as_str(),
                                message: crate::config::redact_urls(&e.to_string()),
                            });
                        }
                    }
                }
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (key, value) in items {
                pipe.add_command(set(key, value)).ignore();
            }
            let pipe = &pipe;
            s.write(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await?
                .map_err(|e| s.write_error(Operation::SetMany, &e))
        }))
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<u64>> {
        let s = &self.shared;
        CacheFuture::boxed(s.run(Operation::DeleteMany, ok, async move {
            s.limits.check_keys(keys)?;
            s.write_conn().await?;
            if keys.is_empty() {
                return Ok(0);
            }
            let full: Vec<String> = keys.iter().map(|k| s.key(k)).collect();
            let full = &full;
            s.write(|mut c| async move { c.del(full).await })
                .await?
                .map_err(|e| s.write_error(Operation::DeleteMany, &e))
        }))
    }

    fn clear<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        let s = &self.shared;
        // Each SCAN/UNLINK step is bounded, not the whole clear: its time grows with the keys.
        CacheFuture::boxed(s.run_bounded(Operation::Clear, ok, async move {
            if s.prefix.is_empty() {
                return Err(Error::InvalidConfig {
                    field: "prefix".into(),
                    reason: "clear() needs a key prefix; it never deletes a whole database".into(),
                });
            }
            s.sweep(Operation::Clear, true).await?;
            s.metrics.set_items(0);
            Ok(())
        }))
    }
}

impl Shared {
    /// The lock key and its fence counter. Both share the `{…}` hash tag, so they live in one
    /// Cluster slot and one script can touch both.
    fn lock_keys(&self, name: &str) -> (String, String) {
        // Outside the cache's prefix, so `clear()` and the items count never touch locks or
        // their fence counters.
        let lock = format!("__keel_lock:{}{{{name}}}", self.prefix);
        let fence = format!("{lock}:fence");
        (lock, fence)
    }

    async fn lock_call<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T> {
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(*k);
        }
        for a in args {
            call.arg(*a);
        }
        let run = async {
            let call = &call;
            self.write(|mut conn| async move { call.invoke_async(&mut conn).await })
                .await?
                .map_err(|e| self.write_error_in("lock", &e))
        };
        self.bounded("lock", run).await
    }
}

/// Redis locks: `SET NX PX` + `INCR` of the fence counter in one Lua script; release and
/// extend check the owner token in Lua.
impl crate::lock::LockStore for RedisCache {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CacheFuture<'a, Result<Option<u64>>> {
        let s = &self.shared;
        CacheFuture::boxed(async move {
            let (lock, fence) = s.lock_keys(name);
            let ms = ttl.as_millis().max(1).to_string();
            let n: u64 = s
                .lock_call(&s.lock_acquire, &[&lock, &fence], &[token, &ms])
                .await?;
            Ok((n > 0).then_some(n))
        })
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(async move {
            let (lock, _) = s.lock_keys(name);
            let n: i64 = s.lock_call(&s.lock_release, &[&lock], &[token]).await?;
            Ok(n == 1)
        })
    }

    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        CacheFuture::boxed(async move {
            let (lock, _) = s.lock_keys(name);
            let ms = ttl.as_millis().max(1).to_string();
            let n: i64 = s.lock_call(&s.lock_extend, &[&lock], &[token, &ms]).await?;
            Ok(n == 1)
        })
    }

    fn holder<'a>(&'a self, name: &'a str) -> CacheFuture<'a, Result<Option<String>>> {
        let s = &self.shared;
        CacheFuture::boxed(async move {
            let (lock, _) = s.lock_keys(name);
            let mut conn = s.conn().await?;
            conn.get(lock)
                .await
                .map_err(|e| s.error(Operation::Get, &e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escape_matches_only_the_prefix() {
        assert_eq!(glob_escape("app:"), "app:*");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
