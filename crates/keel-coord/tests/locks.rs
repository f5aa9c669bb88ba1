//! Locks with fencing tokens, on every store: memory, Redis standalone, Cluster and Sentinel.
//! Each worker gets its own `Locker` (and, on Redis, its own connection), as separate
//! processes would.

use std::sync::Arc;
use std::time::Duration;

use keel_cache::{Cache, Endpoint, MemoryCache, RedisCache, Secret, Ttl};
use keel_coord::{Error, LockOptions, Locker, MemoryStore, RedisStore};
use keel_testkit::redis::{RedisServer, RedisTopology};

/// Makes lockers (and a cache for test data) on one shared store.
trait Stores: Send + Sync {
    fn locker(&self) -> Locker;
    fn cache(&self) -> Arc<dyn Cache>;
}

struct Memory(MemoryStore, MemoryCache);

impl Stores for Memory {
    fn locker(&self) -> Locker {
        Locker::new(self.0.clone())
    }
    fn cache(&self) -> Arc<dyn Cache> {
        Arc::new(self.1.clone())
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

    fn standalone() -> Self {
        Self::on(RedisTopology::standalone())
    }

    fn connected(&self) -> RedisCache {
        let cache = RedisCache::builder("locks", self.topology.endpoint().clone())
            .response_timeout(Duration::from_millis(500))
            .items_refresh(None)
            .build()
            .unwrap();
        let c = cache.clone();
        // Each locker gets its own connection, like a separate process.
        tokio::task::block_in_place(|| self.rt.block_on(c.connect())).unwrap();
        cache
    }
}

impl Stores for Redis {
    fn locker(&self) -> Locker {
        Locker::new(RedisStore::from_connection(self.connected().connection()))
    }
    fn cache(&self) -> Arc<dyn Cache> {
        Arc::new(self.connected())
    }
}

async fn mutual_exclusion(s: &dyn Stores) {
    let counter = s.cache();
    counter
        .set("counter", "0".into(), Ttl::Never)
        .await
        .unwrap();
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (locker, counter) = (s.locker(), counter.clone());
            tokio::spawn(async move {
                for _ in 0..15 {
                    let guard = locker
                        .lock("counter", Duration::from_secs(5), Duration::from_secs(30))
                        .await
                        .unwrap();
                    // A deliberately non-atomic read-modify-write: only the lock protects it.
                    let n: u64 =
                        String::from_utf8_lossy(&counter.get("counter").await.unwrap().unwrap())
                            .parse()
                            .unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    counter
                        .set("counter", (n + 1).to_string().into(), Ttl::Never)
                        .await
                        .unwrap();
                    assert!(guard.release().await.unwrap(), "released a lock we held");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        counter.get("counter").await.unwrap().as_deref(),
        Some(&b"90"[..])
    );
}

async fn fencing_tokens_strictly_increase(s: &dyn Stores) {
    let (a, b) = (s.locker(), s.locker());
    let mut last = 0;
    for i in 0..20 {
        let locker = if i % 2 == 0 { &a } else { &b };
        let g = locker
            .try_lock("fence", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(
            g.fencing_token() > last,
            "{} after {last}",
            g.fencing_token()
        );
        last = g.fencing_token();
        g.release().await.unwrap();
    }
}

async fn only_the_owner_can_release_or_extend(s: &dyn Stores) {
    let locker = s.locker();
    let g = locker
        .try_lock("owned", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let other = s.locker();
    assert!(
        other
            .try_lock("owned", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    let store = other.store();
    assert!(!store.release("owned", "not-the-token").await.unwrap());
    assert!(
        !store
            .extend("owned", "not-the-token", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(
        store.holder("owned").await.unwrap().as_deref(),
        Some(g.token())
    );
    assert!(g.extend(Duration::from_secs(5)).await.unwrap());
    assert!(g.release().await.unwrap());
    assert!(
        other
            .try_lock("owned", Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    );
}

async fn crashed_holders_sub_second_lock_expires(s: &dyn Stores) {
    let crashed = s
        .locker()
        .try_lock("crash", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    let lost = crashed.lost();
    let first = crashed.fencing_token();
    // A crash: no release, no drop handler.
    std::mem::forget(crashed);
    let other = s.locker();
    assert!(
        other
            .try_lock("crash", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::timeout(Duration::from_secs(2), lost.cancelled())
        .await
        .expect("the crashed guard's lost() fires at its deadline");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = other
        .try_lock("crash", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("expired");
    assert!(next.fencing_token() > first);
}

async fn watchdog_keeps_a_long_job_locked(s: &dyn Stores) {
    let g = s
        .locker()
        // A TTL several times the renewal period, so a loaded machine's scheduling delay
        // cannot pass for a watchdog that stopped.
        .try_lock_with("long", Duration::from_secs(1), LockOptions::watchdog())
        .await
        .unwrap()
        .unwrap();
    let other = s.locker();
    // Three TTLs' worth of checks: without renewals the lock would be free after the first.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            other
                .try_lock("long", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(!g.lost().is_cancelled());
    assert!(g.release().await.unwrap());
}

async fn losing_the_lock_fires_lost(s: &dyn Stores) {
    let g = s
        .locker()
        .try_lock("taken", Duration::from_millis(150))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), g.lost().cancelled())
        .await
        .expect("lost fires at the local deadline");
    // The server's TTL started after our send, so it may outlive our deadline by a round
    // trip: the thief waits briefly instead of expecting the key gone at that instant.
    let thief = s
        .locker()
        .lock("taken", Duration::from_secs(5), Duration::from_secs(2))
        .await;
    assert!(thief.is_ok(), "{thief:?}");
    assert!(
        !g.extend(Duration::from_secs(5)).await.unwrap(),
        "no longer ours"
    );
    assert!(!g.release().await.unwrap());
}

async fn extend_to_another_ttl_moves_the_deadline_both_ways(s: &dyn Stores) {
    let g = s
        .locker()
        .try_lock("moving", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let far = g.deadline();
    assert!(g.extend(Duration::from_millis(300)).await.unwrap());
    assert!(g.deadline() < far, "a shorter TTL brings the deadline in");
    tokio::time::timeout(Duration::from_secs(2), g.lost().cancelled())
        .await
        .expect("lost fires at the shortened deadline");
    let next = s
        .locker()
        .lock("moving", Duration::from_secs(5), Duration::from_secs(2))
        .await;
    assert!(
        next.is_ok(),
        "the server expired it with the shorter TTL too: {next:?}"
    );
}

async fn waiting_times_out_and_bad_input_is_typed(s: &dyn Stores) {
    let locker = s.locker();
    let _g = locker
        .try_lock("busy", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let err = locker
        .lock("busy", Duration::from_secs(5), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    assert!(matches!(
        locker.try_lock("", Duration::from_secs(1)).await,
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        locker.try_lock("x", Duration::from_millis(1)).await,
        Err(Error::InvalidTtl { .. })
    ));
    assert!(matches!(
        locker.try_lock("}x", Duration::from_secs(1)).await,
        Err(Error::InvalidName { .. })
    ));
}

macro_rules! lock_suite {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mutual_exclusion() {
                super::mutual_exclusion(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fencing_tokens_strictly_increase() {
                super::fencing_tokens_strictly_increase(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn only_the_owner_can_release_or_extend() {
                super::only_the_owner_can_release_or_extend(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crashed_holders_sub_second_lock_expires() {
                super::crashed_holders_sub_second_lock_expires(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watchdog_keeps_a_long_job_locked() {
                super::watchdog_keeps_a_long_job_locked(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn losing_the_lock_fires_lost() {
                super::losing_the_lock_fires_lost(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn extend_to_another_ttl_moves_the_deadline_both_ways() {
                super::extend_to_another_ttl_moves_the_deadline_both_ways(&$make).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiting_times_out_and_bad_input_is_typed() {
                super::waiting_times_out_and_bad_input_is_typed(&$make).await;
            }
        }
    };
}

lock_suite!(
    memory,
    Memory(MemoryStore::new(), MemoryCache::builder("locks").build())
);
lock_suite!(redis, Redis::standalone());
lock_suite!(redis_cluster, Redis::on(RedisTopology::cluster()));
lock_suite!(redis_sentinel, Redis::on(RedisTopology::sentinel()));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_fires_lost_before_the_lock_can_expire() {
    let redis = Redis::standalone();
    let ttl = Duration::from_millis(800);
    let g = redis
        .locker()
        .try_lock_with("paused", ttl, LockOptions::watchdog())
        .await
        .unwrap()
        .unwrap();
    let server = redis.topology.server().unwrap();
    server.pause();
    let deadline = g.deadline();
    let fired = tokio::time::timeout(Duration::from_secs(5), g.lost().cancelled()).await;
    let at = tokio::time::Instant::now();
    server.resume();
    assert!(fired.is_ok(), "lost never fired while Redis was frozen");
    assert!(at >= deadline, "fired before the deadline it promised");
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_gives_a_lock_timeout_not_a_hang() {
    let redis = Redis::standalone();
    let locker = redis.locker();
    let server = redis.topology.server().unwrap();
    server.pause();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        locker.try_lock("frozen", Duration::from_secs(5)),
    )
    .await;
    server.resume();
    let err = result
        .expect("the response timeout bounds the call")
        .expect_err("a frozen server cannot grant a lock");
    assert!(
        matches!(&err, Error::Store(keel_cache::Error::Timeout { operation, .. }) if *operation == "lock"),
        "{err:?}"
    );
}

/// A lock acquisition whose reply is lost (the connection is cut right after the acquire
/// script reached the server) is reported as "outcome unknown", never re-sent: a re-sent
/// acquire would find the lock taken by its own first attempt, report it as held by someone
/// else, and leave an orphaned token until the TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_acquire_whose_reply_is_lost_says_the_outcome_is_unknown() {
    let server = RedisServer::start();
    let proxy = keel_testkit::redis_proxy::RedisProxy::start(server.addr());
    let store = RedisStore::builder(Endpoint::Url(Secret::new(proxy.url())))
        .response_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    store.connect().await.unwrap();
    let locker = Locker::new(store);
    // Load the scripts first, so the next acquire is one EVALSHA.
    let warm = locker
        .try_lock("warm", Duration::from_secs(30))
        .await
        .unwrap();
    warm.unwrap().release().await.unwrap();
    proxy.cut_after(b"EVALSHA");
    let r = locker.try_lock("job", Duration::from_secs(30)).await;
    assert_eq!(proxy.cuts(), 1, "the fault fired");
    match r {
        Ok(Some(_)) => {}
        Ok(None) => panic!("this call's own acquire was reported as someone else's lock"),
        Err(e) => {
            assert!(e.is_outcome_unknown(), "{e:?}");
            // The acquire ran; its token is released (owner-checked, in the background) right
            // after the error, so the lock is free again long before its 30 s TTL.
            let asked = tokio::time::Instant::now();
            loop {
                let again = locker
                    .try_lock("job", Duration::from_secs(30))
                    .await
                    .unwrap();
                if again.is_some() {
                    break;
                }
                assert!(
                    asked.elapsed() < Duration::from_secs(15),
                    "the lost acquire left the lock held for half its TTL"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Redis loses its data (FLUSHALL, as a restart without persistence would): the fence
/// counter is gone with the lock, yet the next holder's token is still above the old one
/// (the acquire script seeds a missing counter from the server's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_after_redis_loses_its_data() {
    let server = RedisServer::start();
    let store = RedisStore::builder(Endpoint::Url(Secret::new(server.url())))
        .build()
        .unwrap();
    let locker = Locker::new(store.clone());
    let sem = keel_coord::Semaphore::new(store);
    let ttl = Duration::from_secs(30);
    let mut last = 0;
    let mut last_permit = 0;
    for round in 0..3 {
        let g = locker.try_lock("fenced", ttl).await.unwrap().unwrap();
        assert!(
            g.fencing_token() > last,
            "round {round}: lock token {} after {last}",
            g.fencing_token()
        );
        last = g.fencing_token();
        let p = sem.try_acquire("fenced", 2, ttl).await.unwrap().unwrap();
        assert!(
            p.fencing_token() > last_permit,
            "round {round}: permit token {} after {last_permit}",
            p.fencing_token()
        );
        last_permit = p.fencing_token();
        // Strictly increasing while the data is kept.
        let next = sem.try_acquire("fenced", 2, ttl).await.unwrap().unwrap();
        assert_eq!(next.fencing_token(), last_permit + 1);
        last_permit = next.fencing_token();
        g.abandon();
        p.abandon();
        next.abandon();
        assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    }
}

/// A frozen Redis with a response timeout longer than the wait: `lock()` and `acquire()`
/// come back with a typed error once the wait is over, not after the response timeout (nor
/// after inline clean-up retries of the unknown attempt, several response timeouts more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_shorter_than_the_response_timeout_bounds_lock_on_a_frozen_redis() {
    let server = RedisServer::start();
    let response_timeout = Duration::from_secs(3);
    let store = RedisStore::builder(Endpoint::Url(Secret::new(server.url())))
        .response_timeout(response_timeout)
        .build()
        .unwrap();
    store.connect().await.unwrap();
    let locker = Locker::new(store.clone());
    let sem = keel_coord::Semaphore::new(store);
    // Load the scripts first.
    locker
        .try_lock("warm", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    server.pause();
    let wait = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let lock = tokio::time::timeout(
        Duration::from_secs(60),
        locker.lock("frozen", Duration::from_secs(5), wait),
    )
    .await
    .expect("returns at all");
    let lock_elapsed = started.elapsed();
    let started = tokio::time::Instant::now();
    let permit = tokio::time::timeout(
        Duration::from_secs(60),
        sem.acquire("frozen", 2, Duration::from_secs(5), wait),
    )
    .await
    .expect("returns at all");
    let permit_elapsed = started.elapsed();
    server.resume();
    let err = lock.expect_err("a frozen server cannot grant a lock");
    assert!(
        matches!(err, Error::LockTimeout { .. }) || err.is_outcome_unknown(),
        "{err:?}"
    );
    let err = permit.expect_err("a frozen server cannot grant a permit");
    assert!(
        matches!(err, Error::SemaphoreTimeout { .. }) || err.is_outcome_unknown(),
        "{err:?}"
    );
    // A bound from the configuration, not a speed threshold: the wait (1 s) is a third of
    // the response timeout; an attempt that ran its whole response timeout would reach it.
    assert!(
        lock_elapsed >= wait && lock_elapsed < response_timeout,
        "lock returned after {lock_elapsed:?}"
    );
    assert!(
        permit_elapsed >= wait && permit_elapsed < response_timeout,
        "acquire returned after {permit_elapsed:?}"
    );
}

/// `Duration::MAX` as a wait means "wait for ever", not a panic on `Instant + Duration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_wait_does_not_overflow() {
    let store = MemoryStore::new();
    let locker = Locker::new(store.clone());
    let held = locker
        .try_lock("forever", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let g = tokio::time::timeout(
        Duration::from_secs(30),
        locker.lock("forever", Duration::from_secs(5), Duration::MAX),
    )
    .await
    .expect("the held lock expires and the waiter gets it")
    .unwrap();
    assert!(g.fencing_token() > held.fencing_token());
    let sem = keel_coord::Semaphore::new(store);
    let _p = sem
        .try_acquire("forever", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let p = tokio::time::timeout(
        Duration::from_secs(30),
        sem.acquire("forever", 1, Duration::from_secs(5), Duration::MAX),
    )
    .await
    .expect("the held permit expires and the waiter gets it");
    assert!(p.is_ok(), "{p:?}");
}

/// A waiting `lock()` whose attempt's reply is lost retries (the attempt's token is
/// released in the background) instead of ending the wait with "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_while_waiting_is_retried() {
    let server = RedisServer::start();
    let proxy = keel_testkit::redis_proxy::RedisProxy::start(server.addr());
    let store = RedisStore::builder(Endpoint::Url(Secret::new(proxy.url())))
        .response_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    store.connect().await.unwrap();
    let locker = Locker::new(store);
    let warm = locker
        .try_lock("warm", Duration::from_secs(30))
        .await
        .unwrap();
    warm.unwrap().release().await.unwrap();
    proxy.cut_after(b"EVALSHA");
    let r = locker
        .lock("job", Duration::from_secs(30), Duration::from_secs(20))
        .await;
    assert_eq!(proxy.cuts(), 1, "the fault fired");
    let g = r.expect("the wait goes on after a lost reply");
    assert!(g.release().await.unwrap());
}

/// A namespace with braces would put a name's lock and fence keys in different Cluster
/// slots: rejected with a typed error.
#[test]
fn a_namespace_with_braces_is_rejected() {
    for ns in ["a{b", "}", "{}"] {
        let err = RedisStore::builder(Endpoint::Url(Secret::new("redis://127.0.0.1:1".to_owned())))
            .namespace(ns)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Store(keel_cache::Error::InvalidConfig { field, .. }) if field == "namespace"),
            "{ns}: {err:?}"
        );
    }
}

/// Load locks are named per key (`load:<hash>`): their metrics share one `lock="load"` series,
/// so a cache with a million keys does not make a million series; a name-labelled lock keeps
/// its name, and `metrics_label` picks another label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_lock_names_do_not_make_unbounded_series() {
    use keel_cache::load::{LoadOptions, Loader};
    let metrics = keel_metrics::MetricsService::new("lab").unwrap();
    let locker = Locker::with_metrics(MemoryStore::new(), &metrics);
    let loader = Loader::new(Arc::new(MemoryCache::builder("loads").build()));
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .lock(locker.clone(), Duration::from_secs(5));
    for i in 0..20 {
        let key = format!("user:{i}");
        let got = loader
            .get_or_load(&key, &options, || async {
                Ok::<_, std::io::Error>(Some(keel_cache::Bytes::from_static(b"v")))
            })
            .await
            .unwrap();
        assert!(got.is_some());
    }
    let named = locker
        .try_lock("reports", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    named.release().await.unwrap();
    let relabelled = locker
        .try_lock_with(
            "smtp:203.0.113.7",
            Duration::from_secs(5),
            LockOptions::default().metrics_label("smtp"),
        )
        .await
        .unwrap()
        .unwrap();
    relabelled.release().await.unwrap();
    let text = metrics.render();
    assert!(text.contains("lock=\"load\""), "{text}");
    assert!(!text.contains("lock=\"load:"), "{text}");
    assert!(text.contains("lock=\"reports\""), "{text}");
    assert!(text.contains("lock=\"smtp\""), "{text}");
    assert!(!text.contains("203.0.113.7"), "{text}");
}
