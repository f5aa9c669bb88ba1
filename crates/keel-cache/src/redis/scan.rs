//! Walking the prefix with `SCAN` (on every master in Cluster mode): `clear` and the opt-in
//! items count, each step bounded and retried from its cursor.

use super::*;

/// Escapes glob characters so a prefix matches only itself in `SCAN MATCH`.
pub(super) fn glob_escape(prefix: &str) -> String {
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

/// `(host, port)` of every master that is not marked failed, from `CLUSTER NODES`.
pub(super) async fn cluster_masters(c: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
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

pub(super) async fn refresh_items(cache: Weak<Shared>, every: Duration) {
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

impl Shared {
    /// Walks every key under the prefix with `SCAN` (on every master in Cluster mode),
    /// unlinking them when `unlink`; returns how many it saw. Not bounded as a whole: each
    /// `SCAN` and `UNLINK` is (see [`sweep_step`](Self::sweep_step)), so the time a sweep may
    /// take grows with the number of keys it walks, and a step that fails is tried again from
    /// the same cursor instead of restarting the walk.
    pub(super) async fn sweep(&self, op: Operation, unlink: bool) -> Result<u64> {
        let conn = self.conn().await?;
        let nodes = match &conn {
            Conn::Single(_) | Conn::Asking { .. } => vec![None],
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
    pub(super) async fn sweep_step<T, F>(
        &self,
        op: Operation,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T>
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

    pub(super) async fn count_items(&self) -> Result<u64> {
        // Counting is a batch existence check; its errors name that operation.
        let count = self.sweep(Operation::Exists, false).await?;
        self.metrics
            .set_items(i64::try_from(count).unwrap_or(i64::MAX));
        Ok(count)
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
