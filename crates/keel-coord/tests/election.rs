//! Leader election: three candidates, one leader at a time, intervals that never overlap,
//! resignation, and a frozen Redis (SIGSTOP) making the leader step down before anyone else
//! can be elected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_cache::{Endpoint, RedisCache, Secret};
use keel_coord::{Election, Error, Locker, MemoryStore, RedisStore};
use keel_testkit::redis::RedisServer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One leadership: identity, start, end (open while leading), epoch.
type Interval = (String, Instant, Option<Instant>, u64);

/// Leadership intervals recorded by the callbacks.
#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<Interval>>>);

impl Log {
    fn start(&self, id: &str, epoch: u64) {
        self.0
            .lock()
            .unwrap()
            .push((id.to_owned(), Instant::now(), None, epoch));
    }

    fn stop(&self, id: &str) {
        let mut v = self.0.lock().unwrap();
        if let Some(open) = v.iter_mut().rev().find(|e| e.0 == id && e.2.is_none()) {
            open.2 = Some(Instant::now());
        }
    }

    fn leaders_now(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.2.is_none())
            .count()
    }

    /// No two intervals overlap, and epochs increase with start time.
    fn assert_no_overlap(&self) {
        let mut v = self.0.lock().unwrap().clone();
        v.sort_by_key(|e| e.1);
        for pair in v.windows(2) {
            let end = pair[0].2.expect("an earlier leadership ended");
            assert!(
                end <= pair[1].1,
                "{} led until {:?} but {} started at {:?}",
                pair[0].0,
                end,
                pair[1].0,
                pair[1].1
            );
            assert!(pair[1].3 > pair[0].3, "epochs increase");
        }
    }
}

fn candidate(locker: Locker, id: &str, log: &Log, lease_ms: u64) -> Election {
    let (started, stopped) = (log.clone(), log.clone());
    let (a, b) = (id.to_owned(), id.to_owned());
    Election::builder(locker, "leader", id)
        .lease(Duration::from_millis(lease_ms))
        .renew_deadline(Duration::from_millis(lease_ms * 2 / 3))
        .retry_period(Duration::from_millis(lease_ms / 6))
        .on_started_leading(move |l| started.start(&a, l.epoch))
        .on_stopped_leading(move || stopped.stop(&b))
        .build()
        .unwrap()
}

async fn redis_locker(url: &str) -> Locker {
    let cache = RedisCache::builder("election", Endpoint::Url(Secret::new(url.to_owned())))
        .response_timeout(Duration::from_millis(200))
        .items_refresh(None)
        .build()
        .unwrap();
    keel_cache::Cache::connect(&cache).await.unwrap();
    Locker::new(RedisStore::from_connection(cache.connection()))
}

async fn wait_for_one_leader(log: &Log) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.leaders_now() != 1 {
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn three_candidates(lockers: Vec<Locker>) {
    let log = Log::default();
    let stop = CancellationToken::new();
    let elections: Vec<Election> = lockers
        .into_iter()
        .enumerate()
        .map(|(i, l)| candidate(l, &format!("node-{i}"), &log, 900))
        .collect();
    let runs: Vec<_> = elections
        .iter()
        .map(|e| {
            let (e, stop) = (e.clone(), stop.clone());
            tokio::spawn(async move { e.run(stop).await })
        })
        .collect();
    wait_for_one_leader(&log).await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(log.leaders_now() <= 1, "two leaders at once");
        assert!(elections.iter().filter(|e| e.is_leader()).count() <= 1);
    }
    let leader = elections.iter().find(|e| e.is_leader()).unwrap().clone();
    let name = leader.current_leader().await.unwrap().unwrap();
    assert!(name.starts_with("node-"), "{name}");
    leader.resign();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = elections.iter().find(|e| e.is_leader());
        if let Some(e) = now
            && e.current_leader().await.unwrap() != Some(name.clone())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody took over after the resignation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for r in runs {
        r.await.unwrap();
    }
    assert_eq!(log.leaders_now(), 0, "shutdown stops leading");
    log.assert_no_overlap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_three_candidates_one_leader_no_overlap() {
    let redis = RedisServer::start();
    let mut lockers = Vec::new();
    for _ in 0..3 {
        lockers.push(redis_locker(&redis.url()).await);
    }
    three_candidates(lockers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_three_candidates_one_leader_no_overlap() {
    let store = MemoryStore::new();
    three_candidates((0..3).map(|_| Locker::new(store.clone())).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_makes_the_leader_step_down_before_anyone_else_leads() {
    let redis = RedisServer::start();
    let log = Log::default();
    let stop = CancellationToken::new();
    let mut elections = Vec::new();
    for i in 0..3 {
        elections.push(candidate(
            redis_locker(&redis.url()).await,
            &format!("node-{i}"),
            &log,
            1200,
        ));
    }
    let runs: Vec<_> = elections
        .iter()
        .map(|e| {
            let (e, stop) = (e.clone(), stop.clone());
            tokio::spawn(async move { e.run(stop).await })
        })
        .collect();
    wait_for_one_leader(&log).await;
    redis.pause();
    // The leader must give up within its renew deadline (800 ms) on its own clock.
    let frozen = Instant::now();
    while log.leaders_now() != 0 {
        assert!(
            frozen.elapsed() < Duration::from_secs(5),
            "leader kept leading on a frozen store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stepped_down = frozen.elapsed();
    // Keep it frozen past the lease so the old lock expires server-side once time moves on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        log.leaders_now(),
        0,
        "nobody can be elected while the store is frozen"
    );
    redis.resume();
    wait_for_one_leader(&log).await;
    stop.cancel();
    for r in runs {
        r.await.unwrap();
    }
    log.assert_no_overlap();
    assert!(stepped_down < Duration::from_secs(5), "{stepped_down:?}");
}

#[test]
fn timing_rules_are_validated() {
    let locker = Locker::new(MemoryStore::new());
    let build = |lease, renew, retry| {
        Election::builder(locker.clone(), "e", "me")
            .lease(Duration::from_millis(lease))
            .renew_deadline(Duration::from_millis(renew))
            .retry_period(Duration::from_millis(retry))
            .build()
    };
    assert!(build(3000, 2000, 500).is_ok());
    for (lease, renew, retry) in [(2000, 2000, 500), (3000, 600, 500), (3000, 2000, 0)] {
        assert!(
            matches!(build(lease, renew, retry), Err(Error::InvalidElection(_))),
            "{lease} {renew} {retry}"
        );
    }
    assert!(Election::builder(locker.clone(), "", "me").build().is_err());
    assert!(
        Election::builder(locker.clone(), "e", "a|b")
            .build()
            .is_err()
    );
    // Only the lease (or the lease and the retry period) given: the renew deadline follows
    // the lease (2/3) instead of keeping a 10 s default longer than the lease.
    let lease_only = |lease| {
        Election::builder(locker.clone(), "e", "me")
            .lease(Duration::from_millis(lease))
            .build()
    };
    assert!(lease_only(500).is_ok());
    assert!(lease_only(60_000).is_ok());
    assert!(
        Election::builder(locker.clone(), "e", "me")
            .lease(Duration::from_millis(500))
            .retry_period(Duration::from_millis(100))
            .build()
            .is_ok()
    );
    assert!(
        Election::builder(locker.clone(), "e", "me").build().is_ok(),
        "defaults"
    );
    // The lock's own checks run in build(), not in run() (which would retry for ever).
    assert!(matches!(
        Election::builder(locker.clone(), "a{b}", "me").build(),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        Election::builder(locker, "e", "me")
            .lease(Duration::from_millis(6))
            .renew_deadline(Duration::from_millis(4))
            .retry_period(Duration::from_millis(1))
            .build(),
        Err(Error::InvalidTtl { .. })
    ));
}

/// Step-down must not let anyone in while the term's work may still run: the lock stays
/// held (and a second candidate loses) until the `Leadership` handle is dropped, and it is
/// released at once after that.
#[tokio::test]
async fn the_lease_is_released_only_after_the_leadership_handle_is_dropped() {
    let redis = RedisServer::start();
    let locker = redis_locker(&redis.url()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let election = Election::builder(locker.clone(), "handoff", "node-a")
        .lease(Duration::from_secs(5))
        .renew_deadline(Duration::from_secs(3))
        .retry_period(Duration::from_millis(200))
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        })
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (e, s) = (election.clone(), stop.clone());
        async move { e.run(s).await }
    });
    let leadership = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let expires = leadership.expires_at();
    assert!(
        expires > Instant::now() + Duration::from_secs(4),
        "lease ahead"
    );
    election.resign();
    leadership.token.cancelled().await;
    // The work "still runs" for a while: nobody else may take the lock meanwhile.
    let held = || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        locker
            .try_lock("handoff", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    };
    for _ in 0..5 {
        assert!(
            held().await,
            "the lease was released while the work could still run"
        );
        assert!(!election.is_leader());
    }
    let copy = leadership.clone();
    drop(leadership);
    assert!(held().await, "a clone still holds the term");
    copy.done();
    let deadline = Instant::now() + Duration::from_secs(2);
    let taken = loop {
        if let Some(g) = locker
            .try_lock("handoff", Duration::from_secs(1))
            .await
            .unwrap()
        {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "not released after the handle was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        Instant::now() < expires,
        "released, not expired: the lease had seconds left"
    );
    taken.release().await.unwrap();
    stop.cancel();
    run.await.unwrap();
}
