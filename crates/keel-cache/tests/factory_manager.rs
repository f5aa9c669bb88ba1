//! Config to cache, and the manager's contract.

use std::sync::Arc;
use std::time::Duration;

use keel_cache::{
    Bytes, Cache, CacheConfig, CacheFuture, CacheKind, Error, KeyTtl, Manager, MemoryCache, Result,
    Ttl,
};
use keel_metrics::MetricsService;

#[tokio::test]
async fn open_reads_seed_fields_and_returns_a_ready_cache() {
    let metrics = MetricsService::new("lab").unwrap();
    for (format, text) in [
        (
            "toml",
            "type = \"memory\"\nname = \"t\"\n[config]\ndefaultTTL = \"5m\"\n",
        ),
        (
            "yaml",
            "type: memory\nname: t\noptions:\n  defaultTTL: 5m\n",
        ),
        (
            "json",
            r#"{"type":"memory","name":"t","config":{"defaultTTL":"5m"}}"#,
        ),
    ] {
        let config = match format {
            "toml" => CacheConfig::from_toml(text),
            "yaml" => CacheConfig::from_yaml(text),
            _ => CacheConfig::from_json(text),
        }
        .unwrap();
        let cache = keel_cache::open_with_metrics(&config, &metrics)
            .await
            .unwrap();
        assert_eq!(cache.kind(), CacheKind::Memory);
        assert_eq!(cache.name(), "t");
        assert!(cache.is_connected());
        cache.set("k", "v".into(), Ttl::Default).await.unwrap();
        match cache.ttl("k").await.unwrap() {
            KeyTtl::Expires(d) => assert!(d > Duration::from_secs(299), "{format}: {d:?}"),
            other => panic!("{format}: default TTL not applied: {other:?}"),
        }
    }
}

#[tokio::test]
async fn unknown_type_names_the_valid_ones() {
    let err = keel_cache::open(&CacheConfig::new("memcached", "x"))
        .await
        .unwrap_err();
    match &err {
        Error::UnknownType { got, valid } => {
            assert_eq!(got, "memcached");
            assert!(valid.contains("memory"), "{valid}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("valid types are: memory"), "{err}");
}

#[tokio::test]
async fn bad_options_are_config_errors() {
    let mut both = CacheConfig::new("memory", "x");
    both.options.max_entries = Some(10);
    both.options.max_bytes = Some(10);
    assert!(matches!(
        keel_cache::open(&both).await,
        Err(Error::InvalidConfig { field, .. }) if field == "options.max_bytes"
    ));
    let mut zero = CacheConfig::new("memory", "x");
    zero.options.max_entries = Some(0);
    assert!(matches!(
        keel_cache::open(&zero).await,
        Err(Error::InvalidConfig { .. })
    ));
    // A nameless memory cache is private to its process and called "default"; a shared
    // backend needs a name (tests/config_checks.rs).
    let unnamed = keel_cache::open(&CacheConfig::new("memory", ""))
        .await
        .unwrap();
    assert_eq!(unnamed.name(), "default");
    assert!(matches!(
        keel_cache::open(&CacheConfig::new("redis", "")).await,
        Err(Error::InvalidConfig { field, .. }) if field == "name"
    ));
}

fn memory(name: &str) -> Arc<dyn Cache> {
    Arc::new(MemoryCache::builder(name).build())
}

#[tokio::test]
async fn manager_registers_gets_and_rejects_duplicates() {
    let m = Manager::new();
    m.register(memory("b")).unwrap();
    m.register(memory("a")).unwrap();
    let dup = m.register(memory("a"));
    assert!(
        matches!(dup, Err(Error::DuplicateName { ref name }) if name == "a"),
        "{dup:?}"
    );
    assert_eq!(m.names(), vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(m.get("a").unwrap().name(), "a");
    assert!(m.get("zzz").is_none());
}

#[tokio::test]
async fn manager_remove_closes_the_cache() {
    let m = Manager::new();
    let c = memory("c");
    m.register(c.clone()).unwrap();
    assert!(m.remove("c").await.unwrap());
    assert!(!m.remove("c").await.unwrap());
    assert!(matches!(c.get("k").await, Err(Error::Closed { .. })));
    m.register(memory("c")).unwrap();
}

/// A cache whose `close` always fails, to see `close_all` report it and carry on.
#[derive(Debug)]
struct FailingClose(Arc<dyn Cache>);

impl Cache for FailingClose {
    fn name(&self) -> &str {
        "failing"
    }
    fn kind(&self) -> CacheKind {
        self.0.kind()
    }
    fn connect<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        self.0.connect()
    }
    fn close<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        CacheFuture::boxed(async {
            tokio::task::yield_now().await;
            Err(Error::InvalidConfig {
                field: "test".into(),
                reason: "close refused".into(),
            })
        })
    }
    fn is_connected(&self) -> bool {
        self.0.is_connected()
    }
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<Option<Bytes>>> {
        self.0.get(key)
    }
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<()>> {
        self.0.set(key, value, ttl)
    }
    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        self.0.delete(key)
    }
    fn exists<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<bool>> {
        self.0.exists(key)
    }
    fn expire<'a>(&'a self, key: &'a str, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        self.0.expire(key, ttl)
    }
    fn ttl<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Result<KeyTtl>> {
        self.0.ttl(key)
    }
    fn set_nx<'a>(&'a self, key: &'a str, value: Bytes, ttl: Ttl) -> CacheFuture<'a, Result<bool>> {
        self.0.set_nx(key, value, ttl)
    }
    fn set_if_match<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expected: &'a [u8],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<bool>> {
        self.0.set_if_match(key, value, expected, ttl)
    }
    fn incr_by<'a>(&'a self, key: &'a str, delta: i64) -> CacheFuture<'a, Result<i64>> {
        self.0.incr_by(key, delta)
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<Vec<Option<Bytes>>>> {
        self.0.get_many(keys)
    }
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, Bytes)],
        ttl: Ttl,
    ) -> CacheFuture<'a, Result<()>> {
        self.0.set_many(items, ttl)
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> CacheFuture<'a, Result<u64>> {
        self.0.delete_many(keys)
    }
    fn clear<'a>(&'a self) -> CacheFuture<'a, Result<()>> {
        self.0.clear()
    }
}

#[tokio::test]
async fn close_all_closes_everything_and_reports_every_failure() {
    let m = Manager::new();
    let a = memory("a");
    let z = memory("z");
    m.register(a.clone()).unwrap();
    m.register(Arc::new(FailingClose(memory("inner")))).unwrap();
    m.register(z.clone()).unwrap();
    let err = m.close_all().await.unwrap_err();
    match &err {
        Error::CloseAll { failures } => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].0, "failing");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("failing: invalid cache config"),
        "{err}"
    );
    assert!(
        !a.is_connected() && !z.is_connected(),
        "the others were still closed"
    );
    assert!(m.names().is_empty());
    m.close_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manager_is_safe_from_many_tasks() {
    let m = Arc::new(Manager::new());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let name = format!("c{}", i % 8);
                let registered = m.register(memory(&name)).is_ok();
                if let Some(c) = m.get(&name) {
                    // The cache may have been removed and closed by another task meanwhile.
                    let _ = c.set("k", "v".into(), Ttl::Never).await;
                }
                if i % 3 == 0 {
                    let _ = m.remove(&name).await;
                }
                registered
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert!(wins >= 8, "every name was registered at least once");
    m.close_all().await.unwrap();
    assert!(m.names().is_empty());
}
