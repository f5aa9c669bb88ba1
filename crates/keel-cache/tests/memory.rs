//! The memory backend against the conformance suite, plus memory-only behaviour.

use std::sync::Arc;
use std::time::Duration;

use keel_cache::{Cache, Capacity, KeyTtl, MemoryCache, Ttl};
use keel_metrics::MetricsService;
use keel_testkit::conformance::Spec;

keel_testkit::cache_conformance!(|spec: Spec| async move {
    Arc::new(
        MemoryCache::builder(spec.name)
            .default_ttl(spec.default_ttl)
            .build(),
    ) as Arc<dyn Cache>
});

/// With the coarse clock (a tiered L1's), deadlines still hold to within a kernel tick:
/// entries expire, live ones are served, `ttl` reports what is left, and the sweep and the
/// items gauge see the same clock.
#[tokio::test]
async fn coarse_expiry_still_expires_entries_and_reports_ttls() {
    let cache = MemoryCache::builder("coarse")
        .max_ttl(Duration::from_secs(60))
        .coarse_expiry(true)
        .build();
    cache
        .set("short", "v".into(), Ttl::After(Duration::from_millis(50)))
        .await
        .unwrap();
    cache
        .set("long", "v".into(), Ttl::After(Duration::from_secs(30)))
        .await
        .unwrap();
    cache.set("capped", "v".into(), Ttl::Never).await.unwrap();
    // What is left may read up to two kernel ticks (at most 10 ms each) long: deadlines on
    // the coarse clock get a tick of slack so they are never early.
    let ticks = Duration::from_millis(20);
    match cache.ttl("long").await.unwrap() {
        KeyTtl::Expires(left) => assert!(
            left > Duration::from_secs(25) && left <= Duration::from_secs(30) + ticks,
            "{left:?}"
        ),
        other => panic!("{other:?}"),
    }
    match cache.ttl("capped").await.unwrap() {
        KeyTtl::Expires(left) => assert!(left <= Duration::from_secs(60) + ticks, "{left:?}"),
        other => panic!("{other:?}"),
    }
    assert!(cache.get("short").await.unwrap().is_some());
    // 50 ms plus far more than any kernel tick (1–10 ms).
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.get("short").await.unwrap(), None);
    assert!(!cache.exists("short").await.unwrap());
    assert!(cache.get("long").await.unwrap().is_some());
    assert_eq!(cache.len(), 2);
}

#[tokio::test]
async fn max_ttl_caps_every_entry_and_shorter_ttls_still_expire() {
    let cache = MemoryCache::builder("capped")
        .max_ttl(Duration::from_millis(300))
        .build();
    cache.set("never", "v".into(), Ttl::Never).await.unwrap();
    cache
        .set("long", "v".into(), Ttl::After(Duration::from_secs(600)))
        .await
        .unwrap();
    cache
        .set("short", "v".into(), Ttl::After(Duration::from_millis(50)))
        .await
        .unwrap();
    for key in ["never", "long"] {
        match cache.ttl(key).await.unwrap() {
            KeyTtl::Expires(left) => assert!(left <= Duration::from_millis(300), "{key}: {left:?}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.get("short").await.unwrap(), None);
    assert!(!cache.exists("short").await.unwrap());
    assert_eq!(
        cache.get("never").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(cache.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get("never").await.unwrap(), None);
    assert_eq!(cache.get("long").await.unwrap(), None);
    assert!(cache.is_empty());
}

#[tokio::test]
async fn entry_bound_evicts_and_counts_evictions() {
    let metrics = MetricsService::new("lab").unwrap();
    let cache = MemoryCache::builder("bounded")
        .capacity(Capacity::Entries(100))
        .metrics(&metrics)
        .build();
    for i in 0..1000 {
        cache
            .set(&format!("k{i}"), "v".into(), Ttl::Never)
            .await
            .unwrap();
    }
    assert!(cache.len() <= 100, "len {}", cache.len());
    let text = metrics.render();
    let evicted = keel_testkit::prometheus::sample(
        &text,
        "lab_cache_evictions_total{cache=\"bounded\",cause=\"size\"}",
    )
    .unwrap_or_else(|| panic!("no eviction series in\n{text}"));
    assert!(evicted >= 900.0, "evicted {evicted}");
    let items_line = format!("lab_cache_items{{cache=\"bounded\"}} {}", cache.len());
    assert!(text.contains(&items_line), "want {items_line} in\n{text}");
}

#[tokio::test]
async fn byte_bound_limits_memory() {
    let cache = MemoryCache::builder("bytes")
        .capacity(Capacity::Bytes(64 * 1024))
        .build();
    for i in 0..1000 {
        cache
            .set(&format!("k{i}"), vec![0u8; 1024].into(), Ttl::Never)
            .await
            .unwrap();
    }
    // 64 KiB / (1024 + key + 96 overhead) is at most 58 entries.
    assert!(cache.len() <= 58, "len {}", cache.len());
    assert!(!cache.is_empty());
}

#[tokio::test]
async fn items_gauge_counts_live_entries_and_drops_expired() {
    let metrics = MetricsService::new("lab").unwrap();
    let cache = MemoryCache::builder("items").metrics(&metrics).build();
    for i in 0..10 {
        cache
            .set(&format!("p{i}"), "v".into(), Ttl::Never)
            .await
            .unwrap();
        cache
            .set(
                &format!("t{i}"),
                "v".into(),
                Ttl::After(Duration::from_millis(50)),
            )
            .await
            .unwrap();
    }
    cache.set("p0", "again".into(), Ttl::Never).await.unwrap();
    assert!(
        metrics
            .render()
            .contains("lab_cache_items{cache=\"items\"} 20")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = metrics.render();
    assert!(
        text.contains("lab_cache_items{cache=\"items\"} 10"),
        "{text}"
    );
    cache.delete("p1").await.unwrap();
    assert!(
        metrics
            .render()
            .contains("lab_cache_items{cache=\"items\"} 9")
    );
    cache.close().await.unwrap();
    assert!(
        metrics
            .render()
            .contains("lab_cache_items{cache=\"items\"} 0")
    );
}

/// A `set` racing `close` lands before `close` empties the cache or fails with `Closed`; it
/// never lands after, where it would survive into the reopened cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_racing_close_never_survives_it() {
    let mut survived = 0;
    for _ in 0..15_000 {
        let cache = MemoryCache::builder("close-race").build();
        let start = Arc::new(std::sync::Barrier::new(2));
        let handle = tokio::runtime::Handle::current();
        let writer = {
            let (cache, start, handle) = (cache.clone(), start.clone(), handle.clone());
            tokio::task::spawn_blocking(move || {
                start.wait();
                handle.block_on(cache.set("k", "v".into(), Ttl::Never))
            })
        };
        let closer = {
            let (cache, start) = (cache.clone(), start.clone());
            tokio::task::spawn_blocking(move || {
                start.wait();
                handle.block_on(cache.close())
            })
        };
        let _ = writer.await.unwrap();
        closer.await.unwrap().unwrap();
        cache.connect().await.unwrap();
        if cache.get("k").await.unwrap().is_some() {
            survived += 1;
        }
    }
    assert_eq!(
        survived, 0,
        "sets that landed after close emptied the cache"
    );
}

/// `clear` racing each single-key write: a read-modify-write that read a key before the clear
/// never writes its result back after it (the clear takes every key's stripe).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clear_races_are_linearizable() {
    let factory = |spec: Spec| async move {
        Arc::new(
            MemoryCache::builder(spec.name)
                .default_ttl(spec.default_ttl)
                .build(),
        ) as Arc<dyn Cache>
    };
    keel_testkit::conformance::with_deadline(
        "clear_races_are_linearizable",
        keel_testkit::conformance::clear_races_are_linearizable(&factory),
    )
    .await;
}

/// Each expired entry is counted once as an expiry eviction, whoever removes it (the read
/// that finds it, a `delete`, the sweep on render, `len`); one overwritten by `set` is replaced,
/// not evicted.
#[tokio::test]
async fn expired_entries_are_counted_once() {
    let metrics = MetricsService::new("lab").unwrap();
    let cache = MemoryCache::builder("expiring").metrics(&metrics).build();
    let short = Ttl::After(Duration::from_millis(30));
    for i in 0..10 {
        cache
            .set(&format!("t{i}"), "v".into(), short)
            .await
            .unwrap();
    }
    cache.set("kept", "v".into(), Ttl::Never).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Found expired by reads: t0, t1 (twice: counted once).
    for key in ["t0", "t1", "t1"] {
        assert_eq!(cache.get(key).await.unwrap(), None);
    }
    // Deleted after expiry: counted by the delete (which reports no key); overwritten: not.
    assert!(!cache.delete("t2").await.unwrap());
    cache.set("t3", "new".into(), Ttl::Never).await.unwrap();
    let expired = |text: &str| {
        keel_testkit::prometheus::sample(
            text,
            "lab_cache_evictions_total{cache=\"expiring\",cause=\"expired\"}",
        )
        .unwrap_or_else(|| panic!("no expiry series in\n{text}"))
    };
    // The render sweeps the other six (t4..t9): 2 + 1 + 6, plus t3 if the background sweep
    // reached it before the overwrite.
    let text = metrics.render();
    let counted = expired(&text);
    assert!(counted == 9.0 || counted == 10.0, "{text}");
    assert!(
        text.contains("lab_cache_items{cache=\"expiring\"} 2"),
        "{text}"
    );
    assert_eq!(cache.get("t0").await.unwrap(), None);
    assert_eq!(cache.len(), 2);
    assert_eq!(expired(&metrics.render()), counted, "counted twice");
}

/// By default one call in 64 is timed for the duration histogram; every call is counted.
#[tokio::test]
async fn sampled_timing_keeps_request_counts_exact() {
    let metrics = MetricsService::new("lab").unwrap();
    let cache = MemoryCache::builder("sampled").metrics(&metrics).build();
    // Another cache on the same thread, timing every call, its gets alternating with these:
    // each cache's countdown is its own.
    let every = MemoryCache::builder("every")
        .time_one_in(1)
        .metrics(&metrics)
        .build();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    for _ in 0..6400 {
        assert!(cache.get("k").await.unwrap().is_some());
        assert!(every.get("k").await.unwrap().is_none());
    }
    let text = metrics.render();
    let sample = |name: &str| {
        keel_testkit::prometheus::sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(
        sample("lab_cache_requests_total{cache=\"sampled\",operation=\"get\",status=\"hit\"}"),
        6400.0
    );
    assert_eq!(sample("lab_cache_hits_total{cache=\"sampled\"}"), 6400.0);
    let timed =
        sample("lab_cache_operation_duration_seconds_count{cache=\"sampled\",operation=\"get\"}");
    // One in 64 of this cache's calls on this thread, the first included.
    assert_eq!(timed, 100.0, "timed {timed}");
    assert_eq!(
        sample("lab_cache_operation_duration_seconds_count{cache=\"every\",operation=\"get\"}"),
        6400.0
    );
}
