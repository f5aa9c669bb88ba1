//! The cache conformance suite: every point of the `Cache` contract, run against any backend.
//!
//! A backend's test file provides a [`Factory`] and expands the suite into one `#[tokio::test]`
//! per contract point:
//!
//! ```no_run
//! keel_testkit::cache_conformance!(|spec: keel_testkit::conformance::Spec| async move {
//!     std::sync::Arc::new(keel_cache::MemoryCache::builder(spec.name).default_ttl(spec.default_ttl).build())
//!         as std::sync::Arc<dyn keel_cache::Cache>
//! });
//! ```
//!
//! Every test runs under a deadline ([`DEADLINE`]): a hang is a failure, not a stuck CI job.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel_cache::{Cache, CacheExt, Error, KeyTtl, Ttl};

mod race;
pub use race::{clear_races_are_linearizable, single_key_races_are_linearizable};

/// How long any single conformance test may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What the suite asks a factory for.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Cache name; tests that need two caches ask for two names.
    pub name: String,
    /// The cache's default TTL.
    pub default_ttl: Option<Duration>,
}

/// Builds connected caches for the suite. Two caches from one factory must share the same
/// backing store (e.g. one Redis server) but not each other's keys.
pub trait Factory: Send + Sync {
    /// A new, connected, empty cache.
    fn make(&self, spec: Spec) -> Pin<Box<dyn Future<Output = Arc<dyn Cache>> + Send + '_>>;
}

impl<F, Fut> Factory for F
where
    F: Fn(Spec) -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn Cache>> + Send + 'static,
{
    fn make(&self, spec: Spec) -> Pin<Box<dyn Future<Output = Arc<dyn Cache>> + Send + '_>> {
        Box::pin(self(spec))
    }
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

async fn cache(f: &impl Factory) -> Arc<dyn Cache> {
    cache_with_ttl(f, None).await
}

async fn cache_with_ttl(f: &impl Factory, default_ttl: Option<Duration>) -> Arc<dyn Cache> {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    f.make(Spec {
        name: format!("conformance-{}-{n}", std::process::id()),
        default_ttl,
    })
    .await
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs a test body under [`DEADLINE`].
pub async fn with_deadline(name: &str, body: impl Future<Output = ()>) {
    if tokio::time::timeout(DEADLINE, body).await.is_err() {
        panic!("conformance test {name} hung for more than {DEADLINE:?}");
    }
}

/// Expands the suite into `#[tokio::test]` functions for the given factory expression.
#[macro_export]
macro_rules! cache_conformance {
    ($factory:expr) => {
        $crate::cache_conformance!(@each $factory;
            miss_is_none, set_then_get_returns_exact_bytes, set_replaces_value_and_ttl,
            delete_reports_whether_key_existed, exists_follows_writes_and_expiry,
            ttl_reports_missing_persistent_and_remaining, values_expire_after_ttl,
            sub_millisecond_ttl_expires_instead_of_living_forever, default_ttl_comes_from_config,
            expire_changes_and_removes_expiry, set_nx_only_writes_absent_keys,
            set_nx_race_has_exactly_one_winner, set_if_match_compares_whole_value,
            cas_race_loses_no_update, incr_starts_at_zero_without_ttl_and_keeps_ttl,
            incr_rejects_non_integers_and_overflow, concurrent_incr_is_exact,
            batches_keep_order_and_count, set_many_validates_everything_first,
            clear_removes_only_this_caches_keys, close_is_idempotent_and_final_until_connect,
            bad_input_is_a_typed_error_on_every_operation, typed_json_helpers,
            mixed_concurrent_load_does_not_deadlock, single_key_races_are_linearizable);
    };
    (@each $factory:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let factory = $factory;
                $crate::conformance::with_deadline(
                    stringify!($test),
                    $crate::conformance::$test(&factory),
                ).await;
            }
        )*
    };
}

/// `get` of a missing key is `Ok(None)`.
pub async fn miss_is_none(f: &impl Factory) {
    let c = cache(f).await;
    assert_eq!(c.get("missing").await.unwrap(), None);
    assert!(!c.exists("missing").await.unwrap());
}

/// Values round-trip byte for byte (binary, empty, unicode keys).
pub async fn set_then_get_returns_exact_bytes(f: &impl Factory) {
    let c = cache(f).await;
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255, b'\r', b'\n']);
    c.set("bin", binary.clone(), Ttl::Never).await.unwrap();
    assert_eq!(c.get("bin").await.unwrap(), Some(binary));
    c.set("empty", Bytes::new(), Ttl::Never).await.unwrap();
    assert_eq!(c.get("empty").await.unwrap(), Some(Bytes::new()));
    c.set("ключ:🔑", b("v"), Ttl::Never).await.unwrap();
    assert_eq!(c.get("ключ:🔑").await.unwrap(), Some(b("v")));
}

/// `set` on an existing key replaces both the value and the TTL.
pub async fn set_replaces_value_and_ttl(f: &impl Factory) {
    let c = cache(f).await;
    c.set("k", b("one"), Ttl::After(Duration::from_secs(100)))
        .await
        .unwrap();
    c.set("k", b("two"), Ttl::Never).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(b("two")));
    assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::Persistent);
}

/// `delete` says whether the key existed.
pub async fn delete_reports_whether_key_existed(f: &impl Factory) {
    let c = cache(f).await;
    c.set("k", b("v"), Ttl::Never).await.unwrap();
    assert!(c.delete("k").await.unwrap());
    assert!(!c.delete("k").await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), None);
}

/// `exists` is true only for live keys.
pub async fn exists_follows_writes_and_expiry(f: &impl Factory) {
    let c = cache(f).await;
    assert!(!c.exists("k").await.unwrap());
    c.set("k", b("v"), Ttl::After(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(c.exists("k").await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!c.exists("k").await.unwrap());
}

/// `ttl` distinguishes missing, persistent and expiring keys.
pub async fn ttl_reports_missing_persistent_and_remaining(f: &impl Factory) {
    let c = cache(f).await;
    assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::Missing);
    c.set("k", b("v"), Ttl::Never).await.unwrap();
    assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::Persistent);
    c.set("k", b("v"), Ttl::After(Duration::from_secs(30)))
        .await
        .unwrap();
    match c.ttl("k").await.unwrap() {
        KeyTtl::Expires(d) => assert!(
            d <= Duration::from_secs(30) && d > Duration::from_secs(25),
            "{d:?}"
        ),
        other => panic!("expected Expires, got {other:?}"),
    }
}

/// A value with a TTL is gone after it.
pub async fn values_expire_after_ttl(f: &impl Factory) {
    let c = cache(f).await;
    c.set("k", b("v"), Ttl::After(Duration::from_millis(150)))
        .await
        .unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(b("v")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.get("k").await.unwrap(), None);
    assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::Missing);
    assert!(
        !c.delete("k").await.unwrap(),
        "an expired key did not exist"
    );
}

/// Sub-millisecond (and zero) TTLs round up to 1 ms: they expire, they do not live forever.
pub async fn sub_millisecond_ttl_expires_instead_of_living_forever(f: &impl Factory) {
    let c = cache(f).await;
    for (i, ttl) in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("k{i}");
        c.set(&key, b("v"), Ttl::After(ttl)).await.unwrap();
        assert!(
            c.ttl(&key).await.unwrap() != KeyTtl::Persistent,
            "{ttl:?} became no expiry"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..3 {
        assert_eq!(c.get(&format!("k{i}")).await.unwrap(), None);
    }
}

/// `Ttl::Default` uses the configured default.
pub async fn default_ttl_comes_from_config(f: &impl Factory) {
    let c = cache_with_ttl(f, Some(Duration::from_secs(300))).await;
    c.set("k", b("v"), Ttl::Default).await.unwrap();
    match c.ttl("k").await.unwrap() {
        KeyTtl::Expires(d) => {
            assert!(d > Duration::from_secs(290) && d <= Duration::from_secs(300))
        }
        other => panic!("expected the 5m default, got {other:?}"),
    }
    let none = cache(f).await;
    none.set("k", b("v"), Ttl::Default).await.unwrap();
    assert_eq!(none.ttl("k").await.unwrap(), KeyTtl::Persistent);
}

/// `expire` sets or removes a TTL on existing keys only.
pub async fn expire_changes_and_removes_expiry(f: &impl Factory) {
    let c = cache(f).await;
    assert!(
        !c.expire("missing", Ttl::After(Duration::from_secs(5)))
            .await
            .unwrap()
    );
    c.set("k", b("v"), Ttl::Never).await.unwrap();
    assert!(
        c.expire("k", Ttl::After(Duration::from_secs(5)))
            .await
            .unwrap()
    );
    assert!(matches!(c.ttl("k").await.unwrap(), KeyTtl::Expires(_)));
    assert!(c.expire("k", Ttl::Never).await.unwrap());
    assert_eq!(c.ttl("k").await.unwrap(), KeyTtl::Persistent);
    assert!(
        c.expire("k", Ttl::After(Duration::from_millis(100)))
            .await
            .unwrap()
    );
    assert_eq!(
        c.get("k").await.unwrap(),
        Some(b("v")),
        "expire keeps the value"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get("k").await.unwrap(), None);
}

/// `set_nx` writes only when the key is absent (or expired).
pub async fn set_nx_only_writes_absent_keys(f: &impl Factory) {
    let c = cache(f).await;
    assert!(
        c.set_nx("k", b("first"), Ttl::After(Duration::from_millis(150)))
            .await
            .unwrap()
    );
    assert!(!c.set_nx("k", b("second"), Ttl::Never).await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), Some(b("first")));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(c.set_nx("k", b("third"), Ttl::Never).await.unwrap());
    assert_eq!(c.get("k").await.unwrap(), Some(b("third")));
}

/// 50 concurrent `set_nx` on one key: exactly one wins, and its value is stored.
pub async fn set_nx_race_has_exactly_one_winner(f: &impl Factory) {
    let c = cache(f).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.set_nx("race", Bytes::from(format!("{i}")), Ttl::Never)
                    .await
                    .map(|won| won.then_some(i))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(i) = t.await.unwrap().unwrap() {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        c.get("race").await.unwrap(),
        Some(Bytes::from(format!("{}", winners[0])))
    );
}

/// `set_if_match` compares the whole current value; a missing key never matches.
pub async fn set_if_match_compares_whole_value(f: &impl Factory) {
    let c = cache(f).await;
    assert!(
        !c.set_if_match("k", b("new"), b"", Ttl::Never)
            .await
            .unwrap()
    );
    assert_eq!(c.get("k").await.unwrap(), None);
    c.set("k", b("old"), Ttl::Never).await.unwrap();
    assert!(
        !c.set_if_match("k", b("new"), b"ol", Ttl::Never)
            .await
            .unwrap()
    );
    assert!(
        !c.set_if_match("k", b("new"), b"old!", Ttl::Never)
            .await
            .unwrap()
    );
    assert!(
        c.set_if_match("k", b("new"), b"old", Ttl::After(Duration::from_secs(9)))
            .await
            .unwrap()
    );
    assert_eq!(c.get("k").await.unwrap(), Some(b("new")));
    assert!(matches!(c.ttl("k").await.unwrap(), KeyTtl::Expires(_)));
}

/// Read-modify-CAS loops from many tasks never lose an increment.
pub async fn cas_race_loses_no_update(f: &impl Factory) {
    let c = cache(f).await;
    c.set("n", b("0"), Ttl::Never).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let cur = c.get("n").await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&cur).unwrap().parse().unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        if c.set_if_match("n", next, &cur, Ttl::Never).await.unwrap() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.get("n").await.unwrap(), Some(b("400")));
}

/// A missing counter starts at 0 and has no TTL; an existing TTL survives increments.
pub async fn incr_starts_at_zero_without_ttl_and_keeps_ttl(f: &impl Factory) {
    let c = cache_with_ttl(f, Some(Duration::from_secs(60))).await;
    assert_eq!(c.incr_by("n", 5).await.unwrap(), 5);
    assert_eq!(c.ttl("n").await.unwrap(), KeyTtl::Persistent);
    assert_eq!(c.decr_by("n", 7).await.unwrap(), -2);
    assert_eq!(
        c.get("n").await.unwrap(),
        Some(b("-2")),
        "stored as decimal text"
    );
    c.set("t", b("10"), Ttl::After(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(c.incr_by("t", 1).await.unwrap(), 11);
    assert!(
        matches!(c.ttl("t").await.unwrap(), KeyTtl::Expires(_)),
        "TTL was dropped"
    );
    assert_eq!(c.decr_by("fresh", 3).await.unwrap(), -3);
}

/// Non-integers and overflow are typed errors that leave the value unchanged.
pub async fn incr_rejects_non_integers_and_overflow(f: &impl Factory) {
    let c = cache(f).await;
    for bad in ["abc", "1.5", " 1", "", "99999999999999999999"] {
        c.set("s", b(bad), Ttl::Never).await.unwrap();
        assert!(
            matches!(c.incr_by("s", 1).await, Err(Error::NotAnInteger { .. })),
            "{bad:?}"
        );
        assert_eq!(c.get("s").await.unwrap(), Some(b(bad)));
    }
    c.set("max", Bytes::from(i64::MAX.to_string()), Ttl::Never)
        .await
        .unwrap();
    assert!(matches!(
        c.incr_by("max", 1).await,
        Err(Error::Overflow { .. })
    ));
    assert_eq!(
        c.get("max").await.unwrap(),
        Some(Bytes::from(i64::MAX.to_string()))
    );
    c.set("min", Bytes::from(i64::MIN.to_string()), Ttl::Never)
        .await
        .unwrap();
    assert!(matches!(
        c.decr_by("min", 1).await,
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        c.decr_by("zero", i64::MIN).await,
        Err(Error::Overflow { .. })
    ));
}

/// 1000 concurrent increments give exactly 1000.
pub async fn concurrent_incr_is_exact(f: &impl Factory) {
    let c = cache(f).await;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.incr_by("hits", 1).await.unwrap() })
        })
        .collect();
    let mut seen = Vec::with_capacity(1000);
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<i64>>(),
        "every result is unique"
    );
    assert_eq!(c.get("hits").await.unwrap(), Some(b("1000")));
}

/// Batch operations keep order, report misses and count deletions.
pub async fn batches_keep_order_and_count(f: &impl Factory) {
    let c = cache(f).await;
    c.set_many(&[("a", b("1")), ("b", b("2")), ("c", b("3"))], Ttl::Never)
        .await
        .unwrap();
    assert_eq!(
        c.get_many(&["c", "x", "a"]).await.unwrap(),
        vec![Some(b("3")), None, Some(b("1"))]
    );
    assert_eq!(c.get_many(&[]).await.unwrap(), Vec::<Option<Bytes>>::new());
    assert_eq!(c.delete_many(&["a", "x", "c"]).await.unwrap(), 2);
    assert_eq!(
        c.get_many(&["a", "b", "c"]).await.unwrap(),
        vec![None, Some(b("2")), None]
    );
    c.set_many(&[("t", b("1"))], Ttl::After(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(matches!(c.ttl("t").await.unwrap(), KeyTtl::Expires(_)));
}

/// `set_many` with one bad key writes nothing.
pub async fn set_many_validates_everything_first(f: &impl Factory) {
    let c = cache(f).await;
    let r = c
        .set_many(&[("ok", b("1")), ("", b("2"))], Ttl::Never)
        .await;
    assert!(matches!(r, Err(Error::InvalidKey { .. })), "{r:?}");
    assert_eq!(c.get("ok").await.unwrap(), None);
    assert!(matches!(
        c.get_many(&["a", ""]).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        c.delete_many(&["", "a"]).await,
        Err(Error::InvalidKey { .. })
    ));
}

/// `clear` empties this cache and leaves a sibling cache on the same store alone.
pub async fn clear_removes_only_this_caches_keys(f: &impl Factory) {
    let a = cache(f).await;
    let other = cache(f).await;
    for i in 0..50 {
        a.set(&format!("k{i}"), b("a"), Ttl::Never).await.unwrap();
    }
    other.set("k0", b("other"), Ttl::Never).await.unwrap();
    a.clear().await.unwrap();
    for i in 0..50 {
        assert_eq!(a.get(&format!("k{i}")).await.unwrap(), None);
    }
    assert_eq!(other.get("k0").await.unwrap(), Some(b("other")));
    a.set("after", b("1"), Ttl::Never).await.unwrap();
    assert_eq!(
        a.get("after").await.unwrap(),
        Some(b("1")),
        "usable after clear"
    );
}

/// `close` twice is fine; everything after it is `Closed` until `connect`.
pub async fn close_is_idempotent_and_final_until_connect(f: &impl Factory) {
    let c = cache(f).await;
    assert!(c.is_connected());
    c.connect().await.unwrap();
    c.set("k", b("v"), Ttl::Never).await.unwrap();
    c.close().await.unwrap();
    c.close().await.unwrap();
    assert!(!c.is_connected());
    let closed = |r: Result<(), Error>| assert!(matches!(r, Err(Error::Closed { .. })), "{r:?}");
    closed(c.get("k").await.map(drop));
    closed(c.set("k", b("v"), Ttl::Never).await);
    closed(c.delete("k").await.map(drop));
    closed(c.exists("k").await.map(drop));
    closed(c.expire("k", Ttl::Never).await.map(drop));
    closed(c.ttl("k").await.map(drop));
    closed(c.set_nx("k", b("v"), Ttl::Never).await.map(drop));
    closed(
        c.set_if_match("k", b("v"), b"v", Ttl::Never)
            .await
            .map(drop),
    );
    closed(c.incr_by("k", 1).await.map(drop));
    closed(c.get_many(&["k"]).await.map(drop));
    closed(c.set_many(&[("k", b("v"))], Ttl::Never).await);
    closed(c.delete_many(&["k"]).await.map(drop));
    closed(c.clear().await);
    c.connect().await.unwrap();
    c.connect().await.unwrap();
    assert!(c.is_connected());
    c.set("k2", b("v"), Ttl::Never).await.unwrap();
    assert_eq!(c.get("k2").await.unwrap(), Some(b("v")));
}

/// Empty keys, oversized keys and values, and absurd TTLs are typed errors on every call.
pub async fn bad_input_is_a_typed_error_on_every_operation(f: &impl Factory) {
    let c = cache(f).await;
    let invalid =
        |r: Result<(), Error>| assert!(matches!(r, Err(Error::InvalidKey { .. })), "{r:?}");
    invalid(c.get("").await.map(drop));
    invalid(c.set("", b("v"), Ttl::Never).await);
    invalid(c.delete("").await.map(drop));
    invalid(c.exists("").await.map(drop));
    invalid(c.expire("", Ttl::Never).await.map(drop));
    invalid(c.ttl("").await.map(drop));
    invalid(c.set_nx("", b("v"), Ttl::Never).await.map(drop));
    invalid(c.set_if_match("", b("v"), b"v", Ttl::Never).await.map(drop));
    invalid(c.incr_by("", 1).await.map(drop));
    invalid(c.decr_by("", 1).await.map(drop));
    let long = "k".repeat(5000);
    invalid(c.set(&long, b("v"), Ttl::Never).await);
    let huge = Bytes::from(vec![0u8; 33 * 1024 * 1024]);
    let r = c.set("big", huge, Ttl::Never).await;
    assert!(matches!(r, Err(Error::ValueTooLarge { .. })), "{r:?}");
    let r = c
        .set("k", b("v"), Ttl::After(Duration::from_secs(u64::MAX)))
        .await;
    assert!(matches!(r, Err(Error::InvalidTtl { .. })), "{r:?}");
    assert_eq!(c.get("k").await.unwrap(), None, "nothing was written");
}

/// `get_json`/`set_json` round-trip; a bad stored value is `Codec`, not a panic.
pub async fn typed_json_helpers(f: &impl Factory) {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Session {
        user: String,
        roles: Vec<String>,
    }
    let c = cache(f).await;
    let s = Session {
        user: "u1".into(),
        roles: vec!["admin".into()],
    };
    c.set_json("s", &s, Ttl::Never).await.unwrap();
    assert_eq!(c.get_json::<Session>("s").await.unwrap(), Some(s));
    assert_eq!(c.get_json::<Session>("missing").await.unwrap(), None);
    c.set("bad", b("{not json"), Ttl::Never).await.unwrap();
    assert!(matches!(
        c.get_json::<Session>("bad").await,
        Err(Error::Codec { .. })
    ));
}

/// Many tasks mixing every operation on a few keys finish (no deadlock) without errors.
pub async fn mixed_concurrent_load_does_not_deadlock(f: &impl Factory) {
    let c = cache(f).await;
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let key = format!("k{}", (t + i) % 4);
                    match i % 8 {
                        0 => c
                            .set(&key, b("1"), Ttl::After(Duration::from_secs(5)))
                            .await
                            .map(drop),
                        1 => c.get(&key).await.map(drop),
                        2 => c.set_nx(&key, b("2"), Ttl::Never).await.map(drop),
                        3 => c.delete(&key).await.map(drop),
                        4 => c
                            .set_if_match(&key, b("3"), b"1", Ttl::Never)
                            .await
                            .map(drop),
                        5 => c.expire(&key, Ttl::Never).await.map(drop),
                        6 => c.get_many(&[&key, "k0"]).await.map(drop),
                        _ => c.incr_by(&format!("n{t}"), 1).await.map(drop),
                    }
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for t in 0..32 {
        assert_eq!(c.get(&format!("n{t}")).await.unwrap(), Some(b("12")));
    }
}

/// Suite tests deliberately left out of [`cache_conformance!`], each with its reason. Every
/// other public suite function of this module (async, taking the factory) must be in the
/// macro's list: the test below reads the source and fails when one is missing, so a new
/// contract test cannot be left out silently.
pub const NOT_IN_SUITE: &[(&str, &str)] = &[(
    "clear_races_are_linearizable",
    "clear on Redis is SCAN + DEL, not atomic against single-key writes by design; run by the memory backend's tests",
)];

#[cfg(test)]
mod list {
    use super::NOT_IN_SUITE;

    /// Names of the public async functions in `source` that take the factory.
    fn suite_functions(source: &str) -> Vec<&str> {
        source
            .match_indices("pub async fn ")
            .filter_map(|(i, m)| {
                let rest = &source[i + m.len()..];
                let name_end = rest.find('(')?;
                let name = &rest[..name_end];
                let ident = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                (ident && rest[name_end..].starts_with("(f: &impl Factory)")).then_some(name)
            })
            .collect()
    }

    #[test]
    fn every_suite_function_is_in_the_macro_or_excused() {
        let module = include_str!("mod.rs");
        // Split so that this test's own text does not match.
        let head = concat!("cache_conformance!(@each ", "$factory;");
        let start = module.find(head).expect("the macro's list") + head.len();
        let end = start + module[start..].find(");").unwrap();
        let listed: Vec<&str> = module[start..end]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut defined = suite_functions(module);
        defined.extend(suite_functions(include_str!("race.rs")));
        assert!(defined.len() > 20, "the parser found {defined:?}");
        for name in &defined {
            let excused = NOT_IN_SUITE.iter().any(|(n, _)| n == name);
            assert!(
                listed.contains(name) != excused,
                "{name}: must be in cache_conformance!'s list or in NOT_IN_SUITE (exactly one)"
            );
        }
        for name in &listed {
            assert!(defined.contains(name), "{name} is listed but not defined");
        }
    }
}
