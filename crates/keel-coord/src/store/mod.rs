//! The store trait: where locks and permits live, one family of atomic operations each.
//!
//! A store implements one trait per family ([`LockStore`], [`SemaphoreStore`]); each
//! operation is one atomic step on the store (one Lua script on Redis, one critical section
//! in memory). A new family (rate limits) is one more trait with its own scripts beside
//! these. Every store also has [`Wakeups`]: releases signal them, so waiters retry at once
//! instead of at their next poll.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::Result;

pub(crate) mod gcra;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

/// A boxed future borrowing the store.
pub type CoordFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where locks live: implemented by [`MemoryStore`](memory::MemoryStore) and
/// [`RedisStore`](redis::RedisStore).
pub trait LockStore: Send + Sync + 'static {
    /// Sets `name` to `token` for `ttl` if it is free, incrementing the name's fence counter
    /// in the same atomic step; returns the new fencing token, or `None` if the lock is held.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<Option<u64>>>;

    /// Deletes `name` if it holds `token` and wakes its waiters; returns whether it did.
    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CoordFuture<'a, Result<bool>>;

    /// Resets `name`'s TTL to `ttl` if it holds `token`; returns whether it did.
    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>>;

    /// The token currently stored for `name`, if any.
    fn holder<'a>(&'a self, name: &'a str) -> CoordFuture<'a, Result<Option<String>>>;

    /// This process's wake-ups for waiters: signalled when a lock or permit of a name may
    /// have been freed (by any process sharing the store).
    fn wakeups(&self) -> &Wakeups;
}

/// Where semaphores live: `permits` leased slots per name, each held by a token until it is
/// released or its lease runs out.
pub trait SemaphoreStore: Send + Sync + 'static {
    /// Takes one of `permits` slots of `name` for `token` for `ttl` if one is free (expired
    /// leases are dropped first), incrementing the name's fence counter in the same atomic
    /// step; returns the new fencing token, or `None` if all are taken.
    fn acquire_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        permits: u32,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<Option<u64>>>;

    /// Gives back `token`'s permit of `name` and wakes waiters; returns whether it held one.
    fn release_permit<'a>(&'a self, name: &'a str, token: &'a str)
    -> CoordFuture<'a, Result<bool>>;

    /// Resets the lease of `token`'s permit to `ttl`; returns whether it still held one.
    fn extend_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>>;

    /// The number of unexpired permits of `name` held now.
    fn permits_held<'a>(&'a self, name: &'a str) -> CoordFuture<'a, Result<u32>>;

    /// As [`LockStore::wakeups`].
    fn permit_wakeups(&self) -> &Wakeups;
}

/// Where rate limits live: one theoretical arrival time per key (GCRA), judged by the
/// store's own clock (Redis `TIME` in the script; the monotonic clock in memory).
pub trait RateStore: Send + Sync + 'static {
    /// One atomic GCRA step for `key`: a request of `cost` under a limit with emission
    /// interval `emission` (period / count, whole microseconds, at least 1 µs) and `burst`.
    /// The caller has checked the key and `1 <= cost <= burst`.
    fn gcra<'a>(
        &'a self,
        key: &'a str,
        emission: Duration,
        burst: u32,
        cost: u32,
    ) -> CoordFuture<'a, Result<crate::rate::Decision>>;
}

/// How many wake-up slots names are spread over: a release wakes the waiters of every name
/// in its slot (they retry and find their name still held), so memory stays bounded however
/// many names there are.
const SLOTS: usize = 64;

/// Wake-ups for waiters in this process, by name (hashed into a fixed number of slots).
///
/// A waiter calls [`listen`](Self::listen) and enables the future **before** it tries, so a
/// release between its attempt and its wait is not missed; a release calls
/// [`notify`](Self::notify). Delivery is best effort (a Redis message may be lost): waiters
/// also poll, with a capped interval.
pub struct Wakeups {
    slots: Box<[Notify]>,
}

impl std::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeups").finish_non_exhaustive()
    }
}

impl Default for Wakeups {
    fn default() -> Self {
        Self::new()
    }
}

impl Wakeups {
    /// Wake-ups with no waiters.
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Notify::new()).collect(),
        }
    }

    fn slot(&self, name: &str) -> &Notify {
        // FNV-1a: stable and cheap; only spreads names over the slots.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in name.as_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let i = usize::try_from(h % SLOTS as u64).unwrap_or(0);
        &self.slots[i]
    }

    /// A future completing at the next [`notify`](Self::notify) of `name` (or of another
    /// name sharing its slot). Enable it (`Notified::enable`) before trying, then await it.
    pub fn listen(&self, name: &str) -> Notified<'_> {
        self.slot(name).notified()
    }

    /// Wakes every waiter listening on `name` now.
    pub fn notify(&self, name: &str) {
        self.slot(name).notify_waiters();
    }

    /// Wakes every waiter (after a reconnect: messages may have been missed).
    pub fn notify_all(&self) {
        for s in &self.slots {
            s.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Wakeups;

    /// A waiter that listens before trying is woken by a notify that comes before it
    /// awaits (the window between a failed attempt and the sleep), and by `notify_all`.
    #[tokio::test]
    async fn an_enabled_listener_is_not_missed() {
        let w = Wakeups::new();
        let first = w.listen("job");
        tokio::pin!(first);
        first.as_mut().enable();
        w.notify("job");
        first.await;
        let second = w.listen("other");
        tokio::pin!(second);
        second.as_mut().enable();
        w.notify_all();
        second.await;
    }

    /// A notify with no listener is not stored: a later listener waits for the next one.
    #[tokio::test]
    async fn a_notify_before_listening_does_not_wake_later_listeners() {
        let w = Wakeups::new();
        w.notify("job");
        let late = w.listen("job");
        tokio::pin!(late);
        late.as_mut().enable();
        let woken = futures_util::FutureExt::now_or_never(late.as_mut());
        assert!(woken.is_none());
    }
}
