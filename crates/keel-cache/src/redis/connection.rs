//! [`Connection`]: a [`RedisCache`]'s connection for other Keel crates.
//!
//! keel-coord keeps its locks, semaphores and rate limits in Redis with its own Lua scripts;
//! rather than a second copy of the endpoint, TLS and standalone / Cluster / Sentinel
//! connection code, it runs them on this handle. Every request gets the cache's guarantees:
//! bounded by the response timeout, a write whose answer was lost is never re-sent
//! ([`Error::OutcomeUnknown`]), errors mapped to [`Error`].

use super::*;

/// The connection of a [`RedisCache`], for running scripts and pub/sub outside the cache
/// API. Keys are used as given (no prefix). Cheap to clone; clones share the connection.
///
/// ```no_run
/// use keel_cache::{Endpoint, RedisCache, Secret};
///
/// # async fn demo() -> Result<(), keel_cache::Error> {
/// let cache = RedisCache::builder("coord", Endpoint::Url(Secret::new("redis://127.0.0.1:6379".to_owned())))
///     .build()?;
/// let conn = cache.connection();
/// conn.connect().await?;
/// let script = keel_cache::redis::Script::new("return redis.call('INCR', KEYS[1])");
/// let n: i64 = conn.invoke("incr", &script, &["counter"], &[]).await?;
/// # let _ = n;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Connection {
    cache: RedisCache,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.cache.shared.name)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// This cache's connection, for scripts and pub/sub outside the cache API.
    pub fn connection(&self) -> Connection {
        Connection {
            cache: self.clone(),
        }
    }
}

impl Connection {
    /// The name used in errors and metrics.
    pub fn name(&self) -> &str {
        &self.cache.shared.name
    }

    /// The key prefix of the cache this connection belongs to (not applied by this handle).
    pub fn prefix(&self) -> &str {
        self.cache.prefix()
    }

    /// Connects (idempotent); requests also connect lazily.
    ///
    /// # Errors
    /// [`Error::Unavailable`], [`Error::Timeout`], [`Error::Denied`] as for the cache.
    pub async fn connect(&self) -> Result<()> {
        self.cache.connect().await
    }

    /// Closes the connection (idempotent).
    ///
    /// # Errors
    /// As the cache's `close`.
    pub async fn close(&self) -> Result<()> {
        self.cache.close().await
    }

    /// Runs `script` with `keys` and `args` on the write connection as one request: bounded
    /// by the response timeout and never re-sent once it may have run (its outcome is then
    /// [`Error::OutcomeUnknown`] or [`Error::Timeout`]). In Cluster mode every key must hash
    /// to the same slot (use a hash tag). `operation` names the request in errors.
    ///
    /// # Errors
    /// As any write: [`Error::Timeout`], [`Error::Unavailable`], [`Error::OutcomeUnknown`],
    /// [`Error::Denied`], [`Error::Backend`] (including a script error or a reply of another
    /// type than `T`).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T> {
        let s = &self.cache.shared;
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(*k);
        }
        for a in args {
            call.arg(*a);
        }
        let run = async {
            let call = &call;
            s.write(|mut conn| async move { call.invoke_async(&mut conn).await })
                .await?
                .map_err(|e| s.write_error_in(operation, &e))
        };
        s.bounded(operation, run).await
    }

    /// `GET key` (no prefix) as a string, bounded by the response timeout.
    ///
    /// # Errors
    /// As any read.
    pub async fn get_string(&self, key: &str) -> Result<Option<String>> {
        let s = &self.cache.shared;
        s.bounded("get", async {
            let mut conn = s.conn().await?;
            conn.get(key).await.map_err(|e| s.error_in("get", &e))
        })
        .await
    }

    /// Publishes `message` on `channel` (not prefixed).
    ///
    /// # Errors
    /// As any write.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        self.cache.publish(channel, message).await
    }

    /// A client for a dedicated pub/sub connection: the server itself, the current master in
    /// Sentinel mode, the next seed node in turn in Cluster mode (Cluster forwards every
    /// `PUBLISH` to all nodes, so any node hears every message). Same credentials and TLS
    /// as the data path.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Sentinel cannot name a master.
    pub async fn pubsub_client(&self) -> Result<Client> {
        self.cache.pubsub_client().await
    }

    /// How long one request may take.
    pub fn response_timeout(&self) -> Duration {
        self.cache.response_timeout()
    }

    /// Whether this connection talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cache.is_cluster()
    }
}
