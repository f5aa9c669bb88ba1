//! Stale-while-revalidate refreshes (`get_or_load` inline, `get_or_revalidate` in the
//! background) on the memory backend: a failed refresh never hands back a value past its
//! TTL, a "not found" answer removes the key, the running refreshes are bounded, a miss
//! waits for a running refresh instead of loading again, and a refresh that panics backs off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keel_cache::load::{LoadOptions, Loader, MAX_REFRESH_KEYS};
use keel_cache::{Bytes, Cache, Error, MemoryCache, Ttl};
use keel_metrics::MetricsService;

/// How long any wait for something that must happen may take, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn memory() -> Arc<dyn Cache> {
    Arc::new(MemoryCache::builder("refresh").build())
}

/// A loader over a fresh memory cache with its own metrics.
fn loader() -> (Loader, MetricsService) {
    let metrics = MetricsService::new("lab").unwrap();
    (Loader::with_metrics(memory(), &metrics), metrics)
}

/// The value of the sample `name` (labels `cache="refresh"` and `label`) in `metrics`, 0 if
/// absent.
fn sample(metrics: &MetricsService, name: &str, label: &str) -> f64 {
    let text = metrics.render();
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains("cache=\"refresh\"")
                && l.contains(label)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits until `done()` holds, panicking with `what` after [`PATIENCE`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ok(
    v: &'static [u8],
) -> impl FnOnce() -> std::future::Ready<Result<Option<Bytes>, std::io::Error>> {
    move || std::future::ready(Ok(Some(Bytes::from_static(v))))
}

/// Writes `key` = `v` through `loader` and waits until it is past its refresh age.
async fn loaded_and_due(loader: &Loader, key: &str, options: &LoadOptions, v: &'static [u8]) {
    let got = loader.get_or_load(key, options, ok(v)).await.unwrap();
    assert_eq!(got.as_deref(), Some(v));
    let after = options.stale_while_revalidate.unwrap();
    tokio::time::sleep(after + Duration::from_millis(200)).await;
}

/// The inline refresh's loader fails only after the old value's TTL ended: the caller gets
/// the load error, not the expired value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_inline_refresh_never_returns_a_value_past_its_ttl() {
    let (loader, _metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(2)))
        .stale_while_revalidate(Duration::from_secs(1));
    loaded_and_due(&loader, "k", &options, b"v1").await;
    let cache = loader.cache().clone();
    let got = loader
        .get_or_load("k", &options, || async move {
            // A slow source: answer (with an error) only once the old value has expired.
            let deadline = Instant::now() + PATIENCE;
            while cache.get("k").await.unwrap().is_some() {
                assert!(Instant::now() < deadline, "the value never expired");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err::<Option<Bytes>, _>(std::io::Error::other("source down"))
        })
        .await;
    assert!(
        matches!(&got, Err(Error::Load { message, .. }) if message == "source down"),
        "an expired value was served: {got:?}"
    );
}

/// A refresh whose loader finds nothing removes the key (inline and in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_nothing_removes_the_key() {
    let (loader, _metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1));
    let none = || async { Ok::<Option<Bytes>, std::io::Error>(None) };

    loaded_and_due(&loader, "inline", &options, b"v1").await;
    let got = loader.get_or_load("inline", &options, none).await.unwrap();
    assert_eq!(got, None);
    assert_eq!(loader.cache().get("inline").await.unwrap(), None);

    loaded_and_due(&loader, "background", &options, b"v1").await;
    let got = loader
        .get_or_revalidate("background", &options, none)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"v1"[..]), "served at once");
    let cache = loader.cache().clone();
    let deadline = Instant::now() + PATIENCE;
    while cache.get("background").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the deleted value stayed cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// More due keys than [`MAX_REFRESH_KEYS`] with refreshes that hang: at most that many run,
/// the rest are served without one and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_refreshes_are_bounded() {
    const EXTRA: usize = 5;
    let (loader, metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1));
    for i in 0..MAX_REFRESH_KEYS + EXTRA {
        // Written with half the loader's TTL left: already past the refresh age.
        loader
            .cache()
            .set(
                &format!("k{i}"),
                Bytes::from_static(b"old"),
                Ttl::After(Duration::from_secs(30)),
            )
            .await
            .unwrap();
    }
    let started = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    for i in 0..MAX_REFRESH_KEYS + EXTRA {
        let (started, mut released) = (started.clone(), released.clone());
        let got = loader
            .get_or_revalidate(&format!("k{i}"), &options, move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, std::io::Error>(Some(Bytes::from_static(b"new")))
            })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"old"[..]));
    }
    assert_eq!(
        sample(&metrics, "lab_cache_loader_refreshes_skipped_total", ""),
        EXTRA as f64
    );
    until("every started refresh reaches its loader", || {
        started.load(Ordering::SeqCst) >= MAX_REFRESH_KEYS
    })
    .await;
    release.send(true).unwrap();
    until("every refresh finishes", || {
        sample(
            &metrics,
            "lab_cache_loader_refreshes_total",
            "result=\"ok\"",
        ) as usize
            >= MAX_REFRESH_KEYS
    })
    .await;
    assert_eq!(started.load(Ordering::SeqCst), MAX_REFRESH_KEYS);
}

/// The key expires (here: is deleted) while its refresh runs: a miss waits for that refresh
/// instead of running its own loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_waits_for_the_running_refresh() {
    let (loader, metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1));
    loaded_and_due(&loader, "k", &options, b"v1").await;
    let started = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let (s, mut r) = (started.clone(), released.clone());
    loader
        .get_or_revalidate("k", &options, move || async move {
            s.fetch_add(1, Ordering::SeqCst);
            let _ = r.wait_for(|r| *r).await;
            Ok::<_, std::io::Error>(Some(Bytes::from_static(b"refreshed")))
        })
        .await
        .unwrap();
    until("the refresh runs", || started.load(Ordering::SeqCst) == 1).await;
    loader.cache().delete("k").await.unwrap();
    let miss_calls = Arc::new(AtomicUsize::new(0));
    let miss = {
        let (loader, options, calls) = (loader.clone(), options.clone(), miss_calls.clone());
        tokio::spawn(async move {
            loader
                .get_or_load("k", &options, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Some(Bytes::from_static(b"loaded twice")))
                })
                .await
        })
    };
    until("the miss waits or loads", || {
        miss_calls.load(Ordering::SeqCst) > 0
            || sample(&metrics, "lab_cache_loader_waits_total", "") >= 1.0
    })
    .await;
    release.send(true).unwrap();
    let got = miss.await.unwrap().unwrap();
    assert_eq!(
        miss_calls.load(Ordering::SeqCst),
        0,
        "the key loaded twice at once"
    );
    assert_eq!(got.as_deref(), Some(&b"refreshed"[..]));
}

/// A background refresh whose loader panics backs off like a failed one: later hits do not
/// start another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_refresh_backs_off() {
    let (loader, metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1))
        .refresh_backoff(Duration::from_secs(60));
    loaded_and_due(&loader, "k", &options, b"v1").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let panicking = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("loader bug");
            #[allow(unreachable_code)]
            Ok::<Option<Bytes>, std::io::Error>(None)
        }
    };
    loader
        .get_or_revalidate("k", &options, panicking(calls.clone()))
        .await
        .unwrap();
    until("the refresh runs", || calls.load(Ordering::SeqCst) >= 1).await;
    for _ in 0..10 {
        let got = loader
            .get_or_revalidate("k", &options, panicking(calls.clone()))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"v1"[..]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a panicked refresh was retried at once"
    );
    assert_eq!(
        sample(
            &metrics,
            "lab_cache_loader_refreshes_total",
            "result=\"error\""
        ),
        1.0,
        "counted as a failed refresh"
    );
}

/// A zero refresh backoff would retry a failing refresh on every hit: rejected.
#[tokio::test]
async fn a_zero_refresh_backoff_is_rejected() {
    let (loader, _metrics) = loader();
    let options = LoadOptions::new(Ttl::After(Duration::from_secs(60)))
        .stale_while_revalidate(Duration::from_secs(1))
        .refresh_backoff(Duration::ZERO);
    let err = loader
        .get_or_load("k", &options, ok(b"v"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field, .. } if field == "refresh_backoff"),
        "{err:?}"
    );
    let err = loader
        .get_or_revalidate("k", &options, ok(b"v"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { .. }), "{err:?}");
}
