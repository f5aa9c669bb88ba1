//! The Redis backend through Sentinel (1 master, 1 replica, 3 sentinels): the cache finds the
//! master by name and follows it through a failover after the master is killed.
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_cache::{Cache, CacheConfig, Error, Ttl};
use keel_testkit::conformance::{Factory, Spec};
use keel_testkit::redis::RedisSentinel;

/// One sentinel group per test; caches find the master through the sentinels.
struct Sentinel(RedisSentinel);

impl Factory for Sentinel {
    fn make(&self, spec: Spec) -> Pin<Box<dyn Future<Output = Arc<dyn Cache>> + Send + '_>> {
        Box::pin(async move {
            let mut cfg = config(&self.0);
            cfg.name = spec.name;
            cfg.options.default_ttl = spec.default_ttl;
            keel_cache::open(&cfg).await.unwrap()
        })
    }
}

keel_testkit::cache_conformance!(Sentinel(RedisSentinel::start_for_lookups()));

fn config(s: &RedisSentinel) -> CacheConfig {
    let text = format!(
        "type = \"redis\"\nname = \"app\"\nmode = \"sentinel\"\nmaster_name = \"{}\"\nsentinels = [{}]\n\
         [options]\nresponse_timeout = \"500ms\"\nconnect_timeout = \"2s\"\n",
        RedisSentinel::MASTER,
        s.sentinel_addrs()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    CacheConfig::from_toml(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_master_through_a_failover() {
    let mut s = RedisSentinel::start();
    let cache = keel_cache::open(&config(&s)).await.unwrap();
    cache.set("before", "1".into(), Ttl::Never).await.unwrap();
    assert_eq!(
        s.servers[0].cli(&["GET", "app:before"]),
        "1",
        "written to the master"
    );
    keel_testkit::redis::wait_until(
        "the replica to copy the key",
        Duration::from_secs(10),
        || s.servers[1].cli(&["GET", "app:before"]) == "1",
    );

    let old_master = s.servers[0].port();
    s.servers[0].kill();
    let killed = Instant::now();
    let mut failures = 0;
    loop {
        let attempt = Instant::now();
        match cache.set("after", "2".into(), Ttl::Never).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::Unavailable { .. }
                            | Error::Timeout { .. }
                            | Error::OutcomeUnknown { .. }
                    ),
                    "{e:?}"
                );
                assert!(attempt.elapsed() < Duration::from_secs(3), "a call hung");
                failures += 1;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover followed within 30 s ({failures} failed calls)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        s.master_port(),
        old_master,
        "sentinels promoted the replica"
    );
    assert_eq!(s.master_port(), s.servers[1].port());
    assert_eq!(
        s.servers[1].cli(&["GET", "app:after"]),
        "2",
        "written to the new master"
    );
    assert_eq!(
        cache.get("before").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert!(cache.is_connected());
}

#[tokio::test]
async fn sentinel_config_errors_are_clear() {
    let mut cfg = CacheConfig::new("redis", "x");
    cfg.mode = Some("sentinel".into());
    cfg.sentinels = vec!["127.0.0.1:1".into()];
    assert!(matches!(
        keel_cache::open(&cfg).await,
        Err(Error::InvalidConfig { field, .. }) if field == "master_name"
    ));
    cfg.mode = Some("ring".into());
    let err = keel_cache::open(&cfg).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("valid modes are: standalone, cluster, sentinel"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_master_name_is_a_typed_error() {
    let s = RedisSentinel::start_for_lookups();
    let mut cfg = config(&s);
    cfg.master_name = Some("nosuchmaster".into());
    let start = Instant::now();
    let err = keel_cache::open(&cfg).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
