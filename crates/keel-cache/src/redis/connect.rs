//! Connections per mode (standalone, Cluster, Sentinel), and how writes are sent: never
//! re-sent once their fate is unknown.

use super::*;

/// The client side of each mode, before connecting.
pub(super) enum Target {
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
pub(super) struct Conns {
    read: Conn,
    write: Conn,
}

impl Conns {
    pub(super) fn same(conn: Conn) -> Self {
        Self {
            read: conn.clone(),
            write: conn,
        }
    }
}

/// A live connection of any mode; cheap to clone (all share one multiplexed connection).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// A Cluster connection following an `ASK` redirect: each request goes to the node the
    /// redirect named, as one pipeline `ASKING` + the request (the flag `ASKING` sets lasts
    /// for one command). Only [`Shared::write`] makes one, for a single retry.
    Asking {
        conn: ClusterConnection,
        node: SingleNodeRoutingInfo,
    },
}

impl Conn {
    /// `conn` routed to the node an `ASK` redirect named (`host:port`).
    fn asking(conn: Conn, addr: &str) -> Option<Conn> {
        let Conn::Cluster(conn) = conn else {
            return None;
        };
        let (host, port) = addr.rsplit_once(':')?;
        let node = SingleNodeRoutingInfo::ByAddress {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.parse().ok()?,
        };
        Some(Conn::Asking { conn, node })
    }
}

/// `ASKING` followed by `commands`, for [`Conn::Asking`].
fn asking_pipeline<'a>(commands: impl Iterator<Item = &'a Cmd>) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.add_command(redis::cmd("ASKING"));
    for cmd in commands {
        pipe.add_command(cmd.clone());
    }
    pipe
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Asking { conn, node } => Box::pin(async move {
                let pipe = asking_pipeline(std::iter::once(cmd));
                let mut values = conn.route_pipeline(pipe, 1, 1, node.clone()).await?;
                values.pop().ok_or_else(|| {
                    RedisError::from((redis::ErrorKind::Client, "no reply after ASKING"))
                })
            }),
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
            Conn::Asking { conn, node } => Box::pin(async move {
                let pipe = asking_pipeline(pipeline.cmd_iter());
                conn.route_pipeline(pipe, offset + 1, count, node.clone())
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) | Conn::Asking { conn: c, .. } => c.get_db(),
        }
    }
}

impl Shared {
    /// The connection for reads (and for requests that may be re-sent).
    pub(super) async fn conn(&self) -> Result<Conn> {
        if self.resolve_pending() {
            return Ok(Box::pin(self.conns()).await?.read);
        }
        self.current(|c| c.read.clone())
    }

    /// The connection for writes: in Cluster mode one that never re-sends a request by itself.
    pub(super) async fn write_conn(&self) -> Result<Conn> {
        if self.resolve_pending() {
            return Ok(Box::pin(self.conns()).await?.write);
        }
        self.current(|c| c.write.clone())
    }

    /// Whether the Sentinel master must be looked up again before the next request (the slow
    /// path of [`conns`](Self::conns)); the common case is one relaxed load, no `await`.
    #[inline]
    pub(super) fn resolve_pending(&self) -> bool {
        matches!(self.target, Target::Sentinel(_)) && self.resolve.load(Ordering::Acquire)
    }

    /// One handle of the live connections (a clone of only the one needed), or
    /// [`Error::Closed`].
    #[inline]
    fn current(&self, pick: impl FnOnce(&Conns) -> Conn) -> Result<Conn> {
        match &*self.conn.read().unwrap_or_else(PoisonError::into_inner) {
            Some(conns) => Ok(pick(conns)),
            None => Err(Error::Closed {
                cache: self.name.clone(),
            }),
        }
    }

    /// Runs a write, built by `send` on the write connection. A write is never re-sent after
    /// its fate became unknown (a dropped connection, a timeout): that is
    /// [`Error::OutcomeUnknown`] or [`Error::Timeout`] for the caller. It is re-sent only after
    /// a Cluster answer proving it did not run: an `ASK` redirect is followed at once
    /// (`ASKING` + the write on the node it names, see [`Conn::Asking`]); after `MOVED`,
    /// `TRYAGAIN`, `CLUSTERDOWN`, `READONLY` or loading it is re-sent after a backoff while the
    /// slot map catches up. Those re-sends stop while a last attempt still has its whole
    /// response timeout within the operation's bound (twice the response timeout), and the
    /// last refusal is returned: the callers map it to [`Error::Unavailable`], never to an
    /// unknown outcome, since nothing ran. The inner result carries the server's answer for
    /// the caller to map (`incr_by` has its own error mapping).
    pub(super) async fn write<T, F>(
        &self,
        mut send: impl FnMut(Conn) -> F,
    ) -> Result<RedisResult<T>>
    where
        F: Future<Output = RedisResult<T>>,
    {
        if !matches!(self.target, Target::Cluster { .. }) {
            // Standalone and Sentinel writes are sent once: no loop, no clock read, and a
            // small future (the Cluster loop below is boxed, so its backoff timer and redirect
            // state do not grow every write's future past the allocator's fast size classes).
            let conn = self.write_conn().await?;
            return Ok(send(conn).await);
        }
        Box::pin(self.write_cluster(send)).await
    }

    /// [`write`](Self::write) on a Cluster: re-sent after a refusal, as described there.
    async fn write_cluster<T, F>(&self, mut send: impl FnMut(Conn) -> F) -> Result<RedisResult<T>>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let resend_until = std::time::Instant::now() + self.response_timeout;
        let mut backoff = Duration::from_millis(10);
        let mut ask: Option<String> = None;
        loop {
            let mut conn = self.write_conn().await?;
            let cluster = matches!(conn, Conn::Cluster(_));
            if let Some(addr) = ask.take() {
                conn = Conn::asking(conn.clone(), &addr).unwrap_or(conn);
            }
            match send(conn).await {
                Err(e) if cluster && refused_before_running(&e) => {
                    if matches!(e.retry_method(), redis::RetryMethod::AskRedirect) {
                        ask = e.redirect_node().map(|(addr, _)| addr.to_owned());
                    }
                    let wait = if ask.is_some() {
                        Duration::ZERO
                    } else {
                        backoff
                    };
                    if std::time::Instant::now() + wait > resend_until {
                        return Ok(Err(e));
                    }
                    if ask.is_none() {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// The live connections; in Sentinel mode, after a failure, first asks the sentinels for
    /// the current master and reconnects if it moved.
    pub(super) async fn conns(&self) -> Result<Conns> {
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
            // Boxed: connecting is a large future (every mode's handshake), and this rare
            // path would otherwise make every request's future that large: each request's
            // future is moved into its box, so its size was copied on every request (an
            // 18 000-instruction memcpy per `get`, measured with callgrind).
            match Box::pin(self.open_conn()).await {
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

    pub(super) fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            // No response timer in redis-rs: every request on this connection runs under
            // Keel's own (`Shared::bound`, the response timeout), which also covers the wait
            // for a reconnect; two timers per request cost ~10% of a GET's client CPU.
            .set_response_timeout(None)
            // A failed request triggers a reconnect; keep each attempt short so callers see
            // typed errors quickly while the server is down.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
    }

    /// Opens a new connection for the configured mode, bounded by the connect timeout.
    pub(super) async fn open_conn(&self) -> Result<Conns> {
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

    pub(super) async fn connect(self: &Arc<Self>) -> Result<()> {
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

    pub(super) fn close(&self) {
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
}
