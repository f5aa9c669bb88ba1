//! [`LockStore`] on Redis: `SET NX PX` + `INCR` of the fence counter in one script; release
//! and extend check the owner token in Lua.

use std::time::Duration;

use super::{RedisStore, millis};
use crate::Result;
use crate::store::{CoordFuture, LockStore, Wakeups};

impl LockStore for RedisStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let (lock, fence) = self.keys("lock", name)?;
            let s = &self.inner.scripts;
            let n: u64 = self
                .call(
                    "lock",
                    &s.lock_acquire,
                    &[&lock, &fence],
                    &[token, &millis(ttl)],
                )
                .await?;
            Ok((n > 0).then_some(n))
        })
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CoordFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (lock, _) = self.keys("lock", name)?;
            let s = &self.inner.scripts;
            let n: i64 = self
                .call(
                    "lock",
                    &s.lock_release,
                    &[&lock],
                    &[token, &self.inner.channel, name],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (lock, _) = self.keys("lock", name)?;
            let s = &self.inner.scripts;
            let n: i64 = self
                .call("lock", &s.lock_extend, &[&lock], &[token, &millis(ttl)])
                .await?;
            Ok(n == 1)
        })
    }

    fn holder<'a>(&'a self, name: &'a str) -> CoordFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let (lock, _) = self.keys("lock", name)?;
            let conn = &self.inner.conn;
            match conn.get_string(&lock).await {
                Err(keel_cache::Error::Closed { .. }) => {
                    conn.connect().await?;
                    Ok(conn.get_string(&lock).await?)
                }
                other => Ok(other?),
            }
        })
    }

    fn wakeups(&self) -> &Wakeups {
        RedisStore::wakeups(self)
    }
}
