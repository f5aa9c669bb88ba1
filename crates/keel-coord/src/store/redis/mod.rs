//! [`RedisStore`]: locks and semaphores in Redis (standalone, Sentinel or Cluster), on
//! keel-cache's connection layer ([`keel_cache::redis::Connection`]: endpoint, TLS,
//! topology, bounded requests that are never re-sent once they may have run).
//!
//! # Layout
//! - `mod.rs`: the store, its builder and key names;
//! - `scripts.rs`: the Lua scripts (one atomic step per operation);
//! - `lock.rs`: [`LockStore`](super::LockStore); `semaphore.rs`:
//!   [`SemaphoreStore`](super::SemaphoreStore); `rate.rs`: [`RateStore`](super::RateStore);
//! - `wakeups.rs`: the pub/sub subscriber that turns release messages into wake-ups.
//!
//! A new family of operations (rate limits) is a new file with its trait impl and its
//! scripts registered in `Scripts`.
//!
//! Keys: `__keel_lock:<namespace>{name}`, `__keel_sem:<namespace>{name}`, each with a
//! `…:fence` counter that never expires; a counter found missing (a restart without
//! persistence, an eviction) is seeded from the server's clock in microseconds before the
//! increment, so tokens do not go back. `__keel_rate:<namespace>{key}`: one key per rate
//! limit key, expiring when idle. The `{name}` hash tag keeps a name's keys in one Cluster
//! slot, so one script touches them all; the namespace may not contain braces.

use std::sync::Arc;
use std::time::Duration;

use keel_cache::redis::{Connection, Script};
use keel_cache::{CacheConfig, Endpoint, RedisCache, TlsOptions};
use keel_metrics::MetricsService;
use tokio_util::sync::CancellationToken;

use super::Wakeups;
use crate::Result;

mod lock;
mod rate;
mod scripts;
mod semaphore;
mod wakeups;

/// The scripts, hashed once per store.
struct Scripts {
    lock_acquire: Script,
    lock_release: Script,
    lock_extend: Script,
    semaphore_acquire: Script,
    semaphore_release: Script,
    semaphore_extend: Script,
    semaphore_count: Script,
    rate_gcra: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            lock_acquire: Script::new(scripts::LOCK_ACQUIRE),
            lock_release: Script::new(scripts::LOCK_RELEASE),
            lock_extend: Script::new(scripts::LOCK_EXTEND),
            semaphore_acquire: Script::new(&scripts::semaphore_acquire()),
            semaphore_release: Script::new(&scripts::semaphore_release()),
            semaphore_extend: Script::new(&scripts::semaphore_extend()),
            semaphore_count: Script::new(&scripts::semaphore_count()),
            rate_gcra: Script::new(scripts::GCRA),
        }
    }
}

struct Inner {
    conn: Connection,
    namespace: String,
    /// The channel releases publish on: `__keel_coord:<namespace>released`.
    channel: String,
    scripts: Scripts,
    wakeups: Arc<Wakeups>,
    /// Started by the first waiter (it needs a runtime), stopped when the store is dropped.
    subscriber: std::sync::OnceLock<()>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Locks and semaphores in Redis. Cheap to clone; clones share the connection and the
/// pub/sub subscriber.
///
/// Failure modes are the connection layer's: every request is bounded by the response
/// timeout ([`keel_cache::Error::Timeout`]); an unreachable server is
/// [`keel_cache::Error::Unavailable`]; a write whose reply was lost is never re-sent. The
/// pub/sub subscriber reconnects by itself; while it is down, waiters fall back to polling.
///
/// ```no_run
/// use std::time::Duration;
/// use keel_cache::{Endpoint, Secret};
/// use keel_coord::{Locker, RedisStore};
///
/// # async fn demo() -> Result<(), keel_coord::Error> {
/// let store = RedisStore::builder(Endpoint::Url(Secret::new("redis://127.0.0.1:6379".to_owned())))
///     .namespace("myapp:")
///     .build()?;
/// store.connect().await?;
/// let locker = Locker::new(store);
/// let guard = locker.lock("nightly", Duration::from_secs(10), Duration::from_secs(5)).await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// Builder for [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    endpoint: Endpoint,
    name: String,
    namespace: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    tls: TlsOptions,
    metrics: Option<MetricsService>,
}

impl RedisStoreBuilder {
    /// The name in errors and in the connection's request metrics (default `coord`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Goes into every key after the family prefix (default empty): `__keel_lock:<ns>{name}`.
    /// Stores with different namespaces never see each other's locks. It must not contain
    /// `{` or `}` (it would change the Cluster hash tag; `build()` rejects it).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one request may take (default 2 s).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// TLS files (custom CA, client certificate) for `rediss://` endpoints.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// The registry for the connection's request metrics (default: the global one).
    pub fn metrics(mut self, metrics: &MetricsService) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Builds the store (not yet connected: the first request connects).
    ///
    /// # Errors
    /// A bad endpoint or TLS option, or a namespace with `{` or `}`
    /// ([`keel_cache::Error::InvalidConfig`]).
    pub fn build(self) -> Result<RedisStore> {
        check_namespace(&self.namespace)?;
        let mut b = RedisCache::builder(self.name, self.endpoint)
            .prefix(self.namespace)
            .connect_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .items_refresh(None)
            .tls(self.tls);
        if let Some(m) = &self.metrics {
            b = b.metrics(m);
        }
        Ok(RedisStore::from_connection(b.build()?.connection()))
    }
}

impl RedisStore {
    /// A builder for a store on `endpoint`.
    pub fn builder(endpoint: Endpoint) -> RedisStoreBuilder {
        RedisStoreBuilder {
            endpoint,
            name: "coord".into(),
            namespace: String::new(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            tls: TlsOptions::default(),
            metrics: None,
        }
    }

    /// A store on an existing connection; its cache's prefix becomes the namespace. A prefix
    /// with `{` or `}` makes every operation fail with
    /// [`keel_cache::Error::InvalidConfig`] (field `namespace`).
    pub fn from_connection(conn: Connection) -> Self {
        let namespace = conn.prefix().to_owned();
        Self {
            inner: Arc::new(Inner {
                channel: format!("__keel_coord:{namespace}released"),
                namespace,
                conn,
                scripts: Scripts::new(),
                wakeups: Arc::new(Wakeups::new()),
                subscriber: std::sync::OnceLock::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A store from a cache config of type `redis` (any topology, TLS, ACL users): the
    /// config's `prefix` (default `<name>:`) becomes the namespace.
    ///
    /// # Errors
    /// A config of another type or with bad fields; a prefix with `{` or `}`.
    pub fn from_config(config: &CacheConfig, metrics: &MetricsService) -> Result<Self> {
        let store =
            Self::from_connection(keel_cache::redis_from_config(config, metrics)?.connection());
        check_namespace(store.namespace())?;
        Ok(store)
    }

    /// The Lua source of the GCRA rate limit step (`KEYS[1]` the key, `ARGV` emission
    /// interval µs, burst, cost; returns allowed, remaining, retry-after µs, reset-after µs),
    /// for tools and benchmarks that compare against it.
    pub const GCRA_SCRIPT: &'static str = scripts::GCRA;

    /// Connects now (idempotent; requests also connect lazily).
    ///
    /// # Errors
    /// An unreachable server, a timeout, refused credentials.
    pub async fn connect(&self) -> Result<()> {
        Ok(self.inner.conn.connect().await?)
    }

    /// The namespace in this store's keys.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The connection, for another family of operations.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// Runs one of this store's scripts, connecting first if the store never was.
    async fn call<T: keel_cache::redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T> {
        // A `Closed` answer means nothing was sent: connect (the store never was) and retry.
        let conn = &self.inner.conn;
        match conn.invoke(operation, script, keys, args).await {
            Err(keel_cache::Error::Closed { .. }) => {
                conn.connect().await?;
                Ok(conn.invoke(operation, script, keys, args).await?)
            }
            other => Ok(other?),
        }
    }

    /// The key of `name` in `family` and its fence counter, sharing the `{name}` hash tag
    /// (a namespace with braces would split them: refused).
    fn keys(&self, family: &str, name: &str) -> Result<(String, String)> {
        check_namespace(&self.inner.namespace)?;
        let key = format!("__keel_{family}:{}{{{name}}}", self.inner.namespace);
        let fence = format!("{key}:fence");
        Ok((key, fence))
    }

    /// The wake-ups, starting the subscriber the first time (inside a runtime).
    fn wakeups(&self) -> &Wakeups {
        self.inner.subscriber.get_or_init(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                wakeups::spawn(
                    self.inner.conn.clone(),
                    self.inner.channel.clone(),
                    self.inner.wakeups.clone(),
                    self.inner.stop.clone(),
                );
            }
        });
        &self.inner.wakeups
    }
}

/// A namespace goes in front of the `{name}` hash tag: braces in it would make the tag
/// (possibly an empty one) cover something else, putting a name's keys in different Cluster
/// slots.
fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.contains(['{', '}']) {
        return Err(crate::Error::Store(keel_cache::Error::InvalidConfig {
            field: "namespace".into(),
            reason: format!(
                "{:?} must not contain '{{' or '}}' (they would change the Cluster hash tag)",
                crate::error::name_for_error(namespace)
            ),
        }));
    }
    Ok(())
}

/// A TTL as whole milliseconds for the scripts.
fn millis(ttl: Duration) -> String {
    ttl.as_millis().max(1).to_string()
}
