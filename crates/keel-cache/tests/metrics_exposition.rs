//! The cache metrics, checked by real consumers: the reference OpenMetrics parser
//! (Python `prometheus_client`) and a real Prometheus server scraping `/metrics`.

use std::time::Duration;

use keel_cache::{Cache, Capacity, MemoryCache, Ttl};
use keel_metrics::MetricsService;
use keel_testkit::prometheus::{Prometheus, parse_openmetrics};

async fn exercised_cache(metrics: &MetricsService) -> MemoryCache {
    let cache = MemoryCache::builder("exp")
        .capacity(Capacity::Entries(10))
        // Every call timed, so the histogram's count is every call (the default samples).
        .time_one_in(1)
        .metrics(metrics)
        .build();
    for i in 0..20 {
        cache
            .set(&format!("k{i}"), "v".into(), Ttl::Never)
            .await
            .unwrap();
    }
    cache.set("hot", "v".into(), Ttl::Never).await.unwrap();
    for _ in 0..3 {
        assert!(cache.get("hot").await.unwrap().is_some());
    }
    for _ in 0..2 {
        assert!(cache.get("cold").await.unwrap().is_none());
    }
    assert!(cache.get("").await.is_err());
    cache
}

#[tokio::test]
async fn reference_parser_accepts_the_exposition() {
    let metrics = MetricsService::new("lab").unwrap();
    let _cache = exercised_cache(&metrics).await;
    let text = metrics.render();
    let families =
        parse_openmetrics(&text).unwrap_or_else(|e| panic!("parser rejected:\n{e}\n{text}"));
    for want in [
        "lab_cache_requests counter",
        "lab_cache_operation_duration_seconds histogram",
        "lab_cache_items gauge",
        "lab_cache_hits counter",
        "lab_cache_misses counter",
        "lab_cache_evictions counter",
    ] {
        assert!(
            families.iter().any(|f| f.starts_with(&format!("{want} "))),
            "{want} not among {families:?}"
        );
    }
}

fn value(sample: &[serde_json::Value]) -> f64 {
    sample[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_the_seed_metrics() {
    let metrics = MetricsService::new("lab").unwrap();
    let _cache = exercised_cache(&metrics).await;
    let server = metrics.serve("127.0.0.1:0").await.unwrap();
    let target = server.local_addr();
    let prom = tokio::task::spawn_blocking(move || {
        let prom = Prometheus::start(target);
        let timeout = Duration::from_secs(30);
        let up = prom.wait_for("up{job=\"keel\"} == 1", timeout);
        assert_eq!(value(&up), 1.0);
        let hits = prom.wait_for(
            "lab_cache_requests_total{cache=\"exp\",operation=\"get\",status=\"hit\"}",
            timeout,
        );
        assert_eq!(value(&hits), 3.0);
        let misses = prom.wait_for("lab_cache_misses_total{cache=\"exp\"}", timeout);
        assert_eq!(value(&misses), 2.0);
        let errors = prom.wait_for(
            "lab_cache_requests_total{cache=\"exp\",operation=\"get\",status=\"error\"}",
            timeout,
        );
        assert_eq!(value(&errors), 1.0);
        let sets = prom.wait_for(
            "lab_cache_operation_duration_seconds_count{cache=\"exp\",operation=\"set\"}",
            timeout,
        );
        assert_eq!(value(&sets), 21.0);
        let items = prom.wait_for("lab_cache_items{cache=\"exp\"}", timeout);
        assert!(value(&items) <= 10.0 && value(&items) >= 1.0, "{items:?}");
        let evicted = prom.wait_for("lab_cache_evictions_total{cause=\"size\"}", timeout);
        assert!(value(&evicted) >= 11.0, "{evicted:?}");
        prom
    })
    .await
    .unwrap();
    drop(prom);
}
