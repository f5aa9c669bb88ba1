//! Keel locks on Redis: lock keys with a Cluster hash tag, and the [`LockStore`](crate::lock::LockStore) impl.

use super::*;

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
