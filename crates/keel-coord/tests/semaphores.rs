//! Semaphores with leased permits on every store (memory, Redis standalone, Cluster,
//! Sentinel): 20 holders on separate connections, some of them crashing while they hold a
//! permit, never exceed N; crashed permits come back after their TTL; fencing tokens
//! increase; bad input and an unreachable store get typed errors; a release wakes a waiter
//! in another process through pub/sub.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_cache::{Endpoint, Secret};
use keel_coord::store::LockStore;
use keel_coord::{Error, LockOptions, Locker, MemoryStore, RedisStore, Semaphore};
use keel_testkit::redis::RedisTopology;
use tokio::time::Instant;

/// Opens stores on one shared backend; each call is a new connection (a separate process).
trait Stores: Send + Sync {
    fn open(&self) -> RedisOrMemory;
}

#[derive(Clone)]
enum RedisOrMemory {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl RedisOrMemory {
    fn semaphore(&self) -> Semaphore {
        match self {
            Self::Memory(s) => Semaphore::new(s.clone()),
            Self::Redis(s) => Semaphore::new(s.clone()),
        }
    }
    fn locker(&self) -> Locker {
        match self {
            Self::Memory(s) => Locker::new(s.clone()),
            Self::Redis(s) => Locker::new(s.clone()),
        }
    }
}

struct Memory(MemoryStore);

impl Stores for Memory {
    fn open(&self) -> RedisOrMemory {
        RedisOrMemory::Memory(self.0.clone())
    }
}

struct Redis {
    topology: RedisTopology,
    rt: tokio::runtime::Handle,
}

impl Redis {
    fn on(topology: RedisTopology) -> Self {
        Self {
            topology,
            rt: tokio::runtime::Handle::current(),
        }
    }
}

impl Stores for Redis {
    fn open(&self) -> RedisOrMemory {
        let store = RedisStore::builder(self.topology.endpoint().clone())
            .namespace("t:")
            .response_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let s = store.clone();
        tokio::task::block_in_place(|| self.rt.block_on(s.connect())).unwrap();
        RedisOrMemory::Redis(store)
    }
}

/// One holder's time with a permit, as the holder saw it: from the acquire's reply to the
/// release being sent (or, for a crashed holder, to its local deadline). Each lies inside the
/// permit's lease on the store, so no more than N of them may overlap.
type Hold = (Instant, Instant, u64);

fn max_overlap(holds: &[Hold]) -> usize {
    let mut events: Vec<(Instant, i32)> = holds
        .iter()
        .flat_map(|(a, b, _)| [(*a, 1), (*b, -1)])
        .collect();
    // Ends before starts at the same instant: touching intervals do not overlap.
    events.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

async fn twenty_holders_with_crashes_never_exceed_n(s: &dyn Stores) {
    const N: u32 = 3;
    let holds = Arc::new(Mutex::new(Vec::<Hold>::new()));
    let workers: Vec<_> = (0..20)
        .map(|w| {
            let (sem, holds) = (s.open().semaphore(), holds.clone());
            tokio::spawn(async move {
                for round in 0..4 {
                    let permit = sem
                        .acquire_with(
                            "pool",
                            N,
                            Duration::from_millis(600),
                            Duration::from_secs(120),
                            LockOptions::watchdog(),
                        )
                        .await
                        .unwrap();
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    if (w + round) % 7 == 0 {
                        // A crash: no release, no more renewals; the lease runs out.
                        let end = permit.deadline();
                        let fence = permit.fencing_token();
                        permit.abandon();
                        holds.lock().unwrap().push((start, end, fence));
                    } else {
                        let end = Instant::now();
                        let fence = permit.fencing_token();
                        assert!(permit.release().await.unwrap(), "the permit was still ours");
                        holds.lock().unwrap().push((start, end, fence));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let holds = holds.lock().unwrap().clone();
    assert_eq!(holds.len(), 80);
    let crashed = (0..20)
        .flat_map(|w| (0..4).map(move |r| (w + r) % 7 == 0))
        .filter(|c| *c)
        .count();
    assert!(crashed >= 10, "the test crashes holders");
    let overlap = max_overlap(&holds);
    assert!(
        overlap <= N as usize,
        "{overlap} holders at once, limit {N}"
    );
    let mut fences: Vec<u64> = holds.iter().map(|h| h.2).collect();
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), 80, "fencing tokens are unique");
    // Every crashed permit comes back once its lease has run out.
    let sem = s.open().semaphore();
    let until = Instant::now() + Duration::from_secs(30);
    while sem.held("pool").await.unwrap() > 0 {
        assert!(Instant::now() < until, "crashed permits never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn permits_are_leased_like_locks(s: &dyn Stores) {
    let sem = s.open().semaphore();
    let ttl = Duration::from_millis(300);
    let a = sem.try_acquire("lease", 2, ttl).await.unwrap().unwrap();
    let b = sem.try_acquire("lease", 2, ttl).await.unwrap().unwrap();
    assert!(b.fencing_token() > a.fencing_token());
    assert!(sem.try_acquire("lease", 2, ttl).await.unwrap().is_none());
    // No watchdog: both leases run out, `lost()` fires, and the permits are free again.
    tokio::time::timeout(Duration::from_secs(10), a.lost().cancelled())
        .await
        .expect("lost fires at the deadline");
    let until = Instant::now() + Duration::from_secs(10);
    let c = loop {
        if let Some(c) = sem.try_acquire("lease", 2, ttl).await.unwrap() {
            break c;
        }
        assert!(
            Instant::now() < until,
            "the expired permits never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !a.extend(ttl).await.unwrap(),
        "an expired permit cannot be extended"
    );
    assert!(c.extend(Duration::from_secs(5)).await.unwrap());
    assert!(c.release().await.unwrap());
    drop(b);
    // The watchdog keeps a permit past several TTLs.
    let d = sem
        .try_acquire_with("dog", 1, ttl, LockOptions::watchdog())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(ttl * 4).await;
    assert!(!d.lost().is_cancelled());
    assert!(sem.try_acquire("dog", 1, ttl).await.unwrap().is_none());
    assert!(d.release().await.unwrap());
}

async fn bad_input_is_typed(s: &dyn Stores) {
    let sem = s.open().semaphore();
    let ttl = Duration::from_secs(1);
    let wait = Duration::from_millis(100);
    assert!(matches!(
        sem.try_acquire("x", 0, ttl).await,
        Err(Error::InvalidPermits { permits: 0, .. })
    ));
    assert!(matches!(
        sem.acquire("x", 0, ttl, wait).await,
        Err(Error::InvalidPermits { .. })
    ));
    assert!(matches!(
        sem.try_acquire("a{b}", 2, ttl).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        sem.try_acquire("", 2, ttl).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        sem.try_acquire("x", 2, Duration::from_millis(1)).await,
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        s.open().locker().try_lock("{x", ttl).await,
        Err(Error::InvalidName { .. })
    ));
    let _held = sem.try_acquire("full", 1, ttl).await.unwrap().unwrap();
    assert!(matches!(
        sem.acquire("full", 1, ttl, wait).await,
        Err(Error::SemaphoreTimeout { permits: 1, .. })
    ));
}

/// A release in one process wakes a waiter listening in another (Redis: through pub/sub).
/// The subscriber wakes everyone once when it (re)subscribes, so one wake-up proves
/// nothing; three in a row, each after a release, need delivered messages.
async fn a_release_wakes_waiters_in_other_processes(s: &dyn Stores) {
    let (a, b) = (s.open(), s.open());
    let (locker, sem) = (a.locker(), a.semaphore());
    let wakeups = b.wakeups();
    let mut woken = 0;
    for round in 0..40 {
        let listen = wakeups.listen("handoff");
        tokio::pin!(listen);
        listen.as_mut().enable();
        if round % 2 == 0 {
            let g = locker
                .try_lock("handoff", Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
            assert!(g.release().await.unwrap());
        } else {
            let p = sem
                .try_acquire("handoff", 1, Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap();
            assert!(p.release().await.unwrap());
        }
        if tokio::time::timeout(Duration::from_secs(2), listen)
            .await
            .is_ok()
        {
            woken += 1;
            if woken == 3 {
                return;
            }
        }
    }
    panic!("only {woken} of 40 releases woke the other process's waiter");
}

impl RedisOrMemory {
    fn wakeups(&self) -> &keel_coord::store::Wakeups {
        match self {
            Self::Memory(m) => LockStore::wakeups(m),
            Self::Redis(r) => LockStore::wakeups(r),
        }
    }
}

macro_rules! semaphore_suite {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn twenty_holders_with_crashes_never_exceed_n() {
                super::twenty_holders_with_crashes_never_exceed_n(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn permits_are_leased_like_locks() {
                super::permits_are_leased_like_locks(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_is_typed() {
                super::bad_input_is_typed(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_release_wakes_waiters_in_other_processes() {
                super::a_release_wakes_waiters_in_other_processes(&$make).await;
            }
        }
    };
}

semaphore_suite!(memory, Memory(MemoryStore::new()));
semaphore_suite!(redis, Redis::on(RedisTopology::standalone()));
semaphore_suite!(redis_cluster, Redis::on(RedisTopology::cluster()));
semaphore_suite!(redis_sentinel, Redis::on(RedisTopology::sentinel()));

/// An unreachable store is a typed, transient error within the timeout, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_a_typed_error() {
    let port = keel_testkit::process::free_port();
    let store = RedisStore::builder(Endpoint::Url(Secret::new(format!(
        "redis://127.0.0.1:{port}"
    ))))
    .connect_timeout(Duration::from_millis(500))
    .response_timeout(Duration::from_millis(500))
    .build()
    .unwrap();
    let sem = Semaphore::new(store.clone());
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        sem.try_acquire("x", 2, Duration::from_secs(1)),
    )
    .await
    .expect("bounded by the timeouts")
    .expect_err("nothing listens there");
    assert!(
        matches!(err, Error::Store(_)) && err.is_transient(),
        "{err:?}"
    );
    // Waiting rides out the outage and then reports the store's error, not a timeout of
    // its own.
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        Locker::new(store).lock("x", Duration::from_secs(1), Duration::from_millis(300)),
    )
    .await
    .expect("bounded by the wait")
    .expect_err("nothing listens there");
    assert!(
        matches!(err, Error::Store(_)) && err.is_transient(),
        "{err:?}"
    );
}
