//! [`SemaphoreStore`] on Redis: a sorted set of owner tokens scored by lease end on the
//! server's clock (`TIME`), and a fence counter; every operation is one script.

use std::time::Duration;

use super::{RedisStore, millis};
use crate::Result;
use crate::store::{CoordFuture, SemaphoreStore, Wakeups};

impl SemaphoreStore for RedisStore {
    fn acquire_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        permits: u32,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let (set, fence) = self.keys("sem", name)?;
            let s = &self.inner.scripts;
            let n: u64 = self
                .call(
                    "semaphore",
                    &s.semaphore_acquire,
                    &[&set, &fence],
                    &[token, &permits.to_string(), &millis(ttl)],
                )
                .await?;
            Ok((n > 0).then_some(n))
        })
    }

    fn release_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
    ) -> CoordFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (set, _) = self.keys("sem", name)?;
            let s = &self.inner.scripts;
            let n: i64 = self
                .call(
                    "semaphore",
                    &s.semaphore_release,
                    &[&set],
                    &[token, &self.inner.channel, name],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn extend_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (set, _) = self.keys("sem", name)?;
            let s = &self.inner.scripts;
            let n: i64 = self
                .call(
                    "semaphore",
                    &s.semaphore_extend,
                    &[&set],
                    &[token, &millis(ttl)],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn permits_held<'a>(&'a self, name: &'a str) -> CoordFuture<'a, Result<u32>> {
        Box::pin(async move {
            let (set, _) = self.keys("sem", name)?;
            let s = &self.inner.scripts;
            let n: u32 = self
                .call("semaphore", &s.semaphore_count, &[&set], &[])
                .await?;
            Ok(n)
        })
    }

    fn permit_wakeups(&self) -> &Wakeups {
        self.wakeups()
    }
}
