//! The [`Cache`] operations as Redis commands.

use super::*;

pub(super) fn is_hit(v: &Option<Bytes>) -> Status {
    if v.is_some() {
        Status::Hit
    } else {
        Status::Miss
    }
}

pub(super) fn ok<T>(_: &T) -> Status {
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
        s.request(Operation::Get, is_hit, async move {
            s.limits.check_key(key)?;
            let mut c = s.conn().await?;
            let v: Option<Vec<u8>> = c
                .get(s.prefixed(key))
                .await
                .map_err(|e| s.error(Operation::Get, &e))?;
            Ok(v.map(Bytes::from))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<()>> {
        let s = &self.shared;
        s.request(Operation::Set, ok, async move {
            s.limits.check_entry(key, &value)?;
            let ms = s.ttl_ms(key, ttl)?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(s.prefixed(key)).arg(value.as_ref());
            if let Some(ms) = ms {
                cmd.arg("PX").arg(ms);
            }
            let cmd = &cmd;
            s.write(|mut c| async move { cmd.query_async::<()>(&mut c).await })
                .await?
                .map_err(|e| s.write_error(Operation::Set, &e))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        s.request(Operation::Delete, ok, async move {
            s.limits.check_key(key)?;
            let full = s.prefixed(key);
            let n: u64 = s
                .write(|mut c| async move { c.del(full).await })
                .await?
                .map_err(|e| s.write_error(Operation::Delete, &e))?;
            Ok(n > 0)
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        s.request(Operation::Exists, ok, async move {
            s.limits.check_key(key)?;
            let mut c = s.conn().await?;
            c.exists(s.prefixed(key))
                .await
                .map_err(|e| s.error(Operation::Exists, &e))
        })
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        s.request(Operation::Expire, ok, async move {
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
        })
    }

    fn ttl<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<KeyTtl>> {
        let s = &self.shared;
        s.request(Operation::Ttl, ok, async move {
            s.limits.check_key(key)?;
            let mut c = s.conn().await?;
            let ms: i64 = redis::cmd("PTTL")
                .arg(s.prefixed(key))
                .query_async(&mut c)
                .await
                .map_err(|e| s.error(Operation::Ttl, &e))?;
            Ok(match ms {
                -2 => KeyTtl::Missing,
                -1 => KeyTtl::Persistent,
                ms => KeyTtl::Expires(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            })
        })
    }

    fn set_nx<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        s.request(Operation::SetNx, ok, async move {
            s.limits.check_entry(key, &value)?;
            let ms = s.ttl_ms(key, ttl)?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(s.prefixed(key)).arg(value.as_ref()).arg("NX");
            if let Some(ms) = ms {
                cmd.arg("PX").arg(ms);
            }
            let cmd = &cmd;
            let set: Option<String> = s
                .write(|mut c| async move { cmd.query_async(&mut c).await })
                .await?
                .map_err(|e| s.write_error(Operation::SetNx, &e))?;
            Ok(set.is_some())
        })
    }

    fn set_if_match<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: &'a [u8],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<bool>> {
        let s = &self.shared;
        s.request(Operation::Cas, ok, async move {
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
        })
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>> {
        let s = &self.shared;
        s.request(Operation::Incr, ok, async move {
            s.limits.check_key(key)?;
            let full = s.prefixed(key);
            s.write(|mut c| async move { c.incr(full, delta).await })
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
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<Vec<Option<Bytes>>>> {
        let s = &self.shared;
        s.request(Operation::GetMany, ok, async move {
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
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<()>> {
        let s = &self.shared;
        s.request(Operation::SetMany, ok, async move {
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
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<u64>> {
        let s = &self.shared;
        s.request(Operation::DeleteMany, ok, async move {
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
        })
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
