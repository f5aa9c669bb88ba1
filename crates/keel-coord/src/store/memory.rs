//! [`MemoryStore`]: locks, semaphores and rate limits in one process, with the same semantics as Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::gcra::GcraTable;
use super::{CoordFuture, LockStore, RateStore, SemaphoreStore, Wakeups};
use crate::Result;

#[derive(Default)]
struct Tables {
    /// Lock name -> (owner token, expiry).
    held: HashMap<String, (String, Instant)>,
    /// Semaphore name -> owner token -> expiry.
    permits: HashMap<String, HashMap<String, Instant>>,
    /// Fence counters of locks and semaphores (separate namespaces), never reset.
    lock_fences: HashMap<String, u64>,
    permit_fences: HashMap<String, u64>,
}

impl Tables {
    /// The holder of `name` if its lock has not expired (expired entries are dropped).
    fn live_holder(&mut self, name: &str) -> Option<&String> {
        let now = Instant::now();
        if self.held.get(name).is_some_and(|(_, until)| *until <= now) {
            self.held.remove(name);
        }
        self.held.get(name).map(|(token, _)| token)
    }

    /// The unexpired permits of `name` (expired ones dropped), or `None` when there are
    /// none: an emptied set is removed, and a missing one is not created, so the map holds
    /// only names with live permits.
    fn live_permits(&mut self, name: &str) -> Option<&mut HashMap<String, Instant>> {
        let now = Instant::now();
        let set = self.permits.get_mut(name)?;
        set.retain(|_, until| *until > now);
        if set.is_empty() {
            self.permits.remove(name);
            return None;
        }
        self.permits.get_mut(name)
    }
}

struct Inner {
    tables: Mutex<Tables>,
    /// Rate limits: their own lock, so limiters never wait behind locks and semaphores.
    rates: Mutex<GcraTable>,
    wakeups: Wakeups,
}

/// Locks and semaphores in this process: one mutex orders every operation, so
/// acquire-and-increment, check-and-release and check-and-extend are each atomic, as the
/// Redis scripts are. A release wakes this store's waiters through a `Notify`. Cheap to
/// clone; clones share the tables.
///
/// ```
/// use std::time::Duration;
/// use keel_coord::{Locker, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), keel_coord::Error> {
/// let locker = Locker::new(MemoryStore::new());
/// let guard = locker.try_lock("job", Duration::from_secs(5)).await?.expect("free");
/// assert!(guard.release().await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                tables: Mutex::default(),
                rates: Mutex::default(),
                wakeups: Wakeups::new(),
            }),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.inner
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl LockStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<Option<u64>>> {
        let mut t = self.tables();
        let fence = if t.live_holder(name).is_some() {
            None
        } else {
            let until = Instant::now() + ttl;
            t.held.insert(name.to_owned(), (token.to_owned(), until));
            let fence = t.lock_fences.entry(name.to_owned()).or_insert(0);
            *fence += 1;
            Some(*fence)
        };
        Box::pin(std::future::ready(Ok(fence)))
    }

    fn release<'a>(&'a self, name: &'a str, token: &'a str) -> CoordFuture<'a, Result<bool>> {
        let released = {
            let mut t = self.tables();
            if t.live_holder(name).is_some_and(|h| h == token) {
                t.held.remove(name);
                true
            } else {
                false
            }
        };
        if released {
            self.inner.wakeups.notify(name);
        }
        Box::pin(std::future::ready(Ok(released)))
    }

    fn extend<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>> {
        let mut t = self.tables();
        let ours = t.live_holder(name).is_some_and(|h| h == token);
        if ours {
            let until = Instant::now() + ttl;
            t.held.insert(name.to_owned(), (token.to_owned(), until));
        }
        Box::pin(std::future::ready(Ok(ours)))
    }

    fn holder<'a>(&'a self, name: &'a str) -> CoordFuture<'a, Result<Option<String>>> {
        let holder = self.tables().live_holder(name).cloned();
        Box::pin(std::future::ready(Ok(holder)))
    }

    fn wakeups(&self) -> &Wakeups {
        &self.inner.wakeups
    }
}

impl SemaphoreStore for MemoryStore {
    fn acquire_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        permits: u32,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<Option<u64>>> {
        let mut t = self.tables();
        let live = t.live_permits(name).map_or(0, |set| set.len());
        let fence = if live >= usize::try_from(permits).unwrap_or(usize::MAX) {
            None
        } else {
            t.permits
                .entry(name.to_owned())
                .or_default()
                .insert(token.to_owned(), Instant::now() + ttl);
            let fence = t.permit_fences.entry(name.to_owned()).or_insert(0);
            *fence += 1;
            Some(*fence)
        };
        Box::pin(std::future::ready(Ok(fence)))
    }

    fn release_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
    ) -> CoordFuture<'a, Result<bool>> {
        let released = {
            let mut t = self.tables();
            match t.live_permits(name) {
                Some(set) => {
                    let released = set.remove(token).is_some();
                    if set.is_empty() {
                        t.permits.remove(name);
                    }
                    released
                }
                None => false,
            }
        };
        if released {
            self.inner.wakeups.notify(name);
        }
        Box::pin(std::future::ready(Ok(released)))
    }

    fn extend_permit<'a>(
        &'a self,
        name: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> CoordFuture<'a, Result<bool>> {
        let mut t = self.tables();
        let ours = match t.live_permits(name).and_then(|set| set.get_mut(token)) {
            Some(until) => {
                *until = Instant::now() + ttl;
                true
            }
            None => false,
        };
        Box::pin(std::future::ready(Ok(ours)))
    }

    fn permits_held<'a>(&'a self, name: &'a str) -> CoordFuture<'a, Result<u32>> {
        let n = self.tables().live_permits(name).map_or(0, |set| set.len());
        Box::pin(std::future::ready(Ok(u32::try_from(n).unwrap_or(u32::MAX))))
    }

    fn permit_wakeups(&self) -> &Wakeups {
        &self.inner.wakeups
    }
}

impl RateStore for MemoryStore {
    fn gcra<'a>(
        &'a self,
        key: &'a str,
        emission: Duration,
        burst: u32,
        cost: u32,
    ) -> CoordFuture<'a, Result<crate::rate::Decision>> {
        let emission_us = u64::try_from(emission.as_micros()).unwrap_or(u64::MAX);
        let decision = self
            .inner
            .rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(key, emission_us, burst, cost);
        Box::pin(std::future::ready(Ok(decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads, extends of unknown tokens, failed acquires and expired permits leave no entry
    /// behind: the permit map does not grow with every name ever seen.
    #[tokio::test]
    async fn the_permit_map_holds_only_names_with_live_permits() {
        let store = MemoryStore::new();
        for i in 0..50 {
            let name = format!("n{i}");
            assert_eq!(store.permits_held(&name).await.unwrap(), 0);
            let ttl = Duration::from_secs(5);
            assert!(!store.extend_permit(&name, "t", ttl).await.unwrap());
            assert!(!store.release_permit(&name, "t").await.unwrap());
            assert_eq!(
                store.acquire_permit(&name, "t", 0, ttl).await.unwrap(),
                None
            );
        }
        assert!(
            store.tables().permits.is_empty(),
            "entries for names never held"
        );
        let short = Duration::from_millis(10);
        assert!(
            store
                .acquire_permit("e", "t", 1, short)
                .await
                .unwrap()
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(store.permits_held("e").await.unwrap(), 0);
        assert!(
            store.tables().permits.is_empty(),
            "an expired permit's entry stayed"
        );
    }
}
