//! The Redis backend on a real 3-master Redis Cluster: the conformance suite, keys on every
//! master, cross-slot batches, prefix-only clear over all masters, and resharding.
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keel_cache::{Cache, CacheConfig, Endpoint, RedisCache, Ttl};
use keel_testkit::conformance::{Factory, Spec};
use keel_testkit::redis::RedisCluster;

struct Cluster(RedisCluster);

impl Cluster {
    fn start() -> Self {
        Self(RedisCluster::start())
    }

    fn builder(&self, name: &str) -> keel_cache::RedisCacheBuilder {
        RedisCache::builder(
            name,
            Endpoint::Cluster {
                nodes: self.0.urls(),
                username: None,
                password: None,
            },
        )
        .response_timeout(Duration::from_secs(1))
    }
}

impl Factory for Cluster {
    fn make(&self, spec: Spec) -> Pin<Box<dyn Future<Output = Arc<dyn Cache>> + Send + '_>> {
        Box::pin(async move {
            let cache = self
                .builder(&spec.name)
                .default_ttl(spec.default_ttl)
                .build()
                .unwrap();
            cache.connect().await.unwrap();
            Arc::new(cache) as Arc<dyn Cache>
        })
    }
}

keel_testkit::cache_conformance!(Cluster::start());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_master_and_clear_reaches_them_all() {
    let cluster = Cluster::start();
    // -c: follow the MOVED redirect to the slot's owner.
    cluster.0.nodes()[0].cli(&["-c", "SET", "{other}:keep", "x"]);
    let cache = cluster.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let items: Vec<(&str, keel_cache::Bytes)> =
        keys.iter().map(|k| (k.as_str(), "v".into())).collect();
    cache.set_many(&items, Ttl::Never).await.unwrap();
    for node in cluster.0.nodes() {
        let n: u64 = node.cli(&["DBSIZE"]).parse().unwrap();
        assert!(n > 50, "a master holds only {n} keys");
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = cache.get_many(&refs).await.unwrap();
    assert!(got.iter().all(Option::is_some), "cross-slot MGET");
    assert_eq!(cache.count_items().await.unwrap(), 300);
    assert_eq!(
        cache.delete_many(&refs[..100]).await.unwrap(),
        100,
        "cross-slot DEL"
    );
    cache.clear().await.unwrap();
    assert_eq!(cluster.0.dbsize(), 1, "only the foreign key is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_resharding() {
    let cluster = Cluster::start();
    let cache = cluster.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    for i in 0..50 {
        cache
            .set(&format!("k{i}"), format!("v{i}").into(), Ttl::Never)
            .await
            .unwrap();
    }
    let nodes = cluster.0.nodes();
    let (src, dst) = (&nodes[0], &nodes[1]);
    let (src_id, dst_id) = (src.cli(&["CLUSTER", "MYID"]), dst.cli(&["CLUSTER", "MYID"]));
    let before: u64 = src.cli(&["DBSIZE"]).parse().unwrap();
    assert!(before > 0);
    let cli = keel_testkit::process::require_program("redis-cli", "redis-tools");
    let out = std::process::Command::new(cli)
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", src.port())])
        .args(["--cluster-from", &src_id, "--cluster-to", &dst_id])
        .args(["--cluster-slots", "16384", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(src.cli(&["DBSIZE"]), "0", "every slot of the source moved");
    for i in 0..50 {
        let key = format!("k{i}");
        assert_eq!(
            cache.get(&key).await.unwrap().as_deref(),
            Some(format!("v{i}").as_bytes()),
            "{key} after MOVED"
        );
        cache.set(&key, "new".into(), Ttl::Never).await.unwrap();
    }
    assert_eq!(cache.count_items().await.unwrap(), 50);
}

#[tokio::test]
async fn cluster_config_from_seed_nodes() {
    let cluster = Cluster::start();
    let text = format!(
        "type = \"redis\"\nname = \"c\"\nmode = \"cluster\"\nnodes = [{}]\n",
        cluster
            .0
            .nodes()
            .iter()
            .map(|n| format!("\"127.0.0.1:{}\"", n.port()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cache = keel_cache::open(&CacheConfig::from_toml(&text).unwrap())
        .await
        .unwrap();
    cache.set("k", "v".into(), Ttl::Never).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let mut bad = CacheConfig::from_toml(&text).unwrap();
    bad.database = Some(3);
    assert!(matches!(
        keel_cache::open(&bad).await,
        Err(keel_cache::Error::InvalidConfig { field, .. }) if field == "database"
    ));
}

/// Every master announces a fault proxy in front of it (`cluster-announce-port`), so the
/// client's slot map points at the proxies. A connection cut right after an `INCRBY` (then a
/// `SET NX`) reached its master must not make the client send it again: the counter moves by
/// exactly one, and the stored `SET NX` is never reported as "not stored".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_is_lost_is_never_applied_twice() {
    use keel_testkit::redis_proxy::RedisProxy;
    let cluster = RedisCluster::start();
    let proxies: Vec<RedisProxy> = cluster
        .nodes()
        .iter()
        .map(|n| RedisProxy::start(n.addr()))
        .collect();
    for (node, proxy) in cluster.nodes().iter().zip(&proxies) {
        let bus = (node.port() + 10000).to_string();
        node.cli(&["CONFIG", "SET", "cluster-announce-bus-port", &bus]);
        let port = proxy.addr().port().to_string();
        node.cli(&["CONFIG", "SET", "cluster-announce-port", &port]);
    }
    keel_testkit::redis::wait_until(
        "every node to see the proxies in CLUSTER SLOTS",
        Duration::from_secs(20),
        || {
            cluster.nodes().iter().all(|n| {
                let slots = n.cli(&["CLUSTER", "SLOTS"]);
                proxies
                    .iter()
                    .all(|p| slots.contains(&p.addr().port().to_string()))
            })
        },
    );
    let cache = RedisCache::builder(
        "app",
        Endpoint::Cluster {
            nodes: proxies.iter().map(RedisProxy::url).collect(),
            username: None,
            password: None,
        },
    )
    .response_timeout(Duration::from_secs(2))
    .items_refresh(None)
    .build()
    .unwrap();
    cache.connect().await.unwrap();
    assert_eq!(cache.incr_by("n", 1).await.unwrap(), 1);
    for p in &proxies {
        p.cut_after(b"INCRBY");
    }
    let r = cache.incr_by("n", 1).await;
    let cuts: usize = proxies.iter().map(RedisProxy::cuts).sum();
    assert!(cuts >= 1, "the fault fired");
    let held: i64 = cluster.nodes()[0]
        .cli(&["-c", "GET", "app:n"])
        .parse()
        .unwrap();
    assert_eq!(held, 2, "the increment ran exactly once ({r:?})");
    match r {
        Ok(n) => assert_eq!(n, held),
        Err(e) => assert!(e.is_outcome_unknown(), "{e:?}"),
    }

    // A SET NX whose reply is lost: re-sent, it would find its own value and say "not stored".
    for p in &proxies {
        p.cut_after(b"NX");
    }
    let stored = loop {
        // The client reconnects on its own after a cut; a refused attempt sent nothing.
        match cache.set_nx("once", "v".into(), Ttl::Never).await {
            Err(e) if !e.is_outcome_unknown() => {
                assert!(matches!(e, keel_cache::Error::Unavailable { .. }), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    let cuts_after: usize = proxies.iter().map(RedisProxy::cuts).sum();
    assert!(cuts_after > cuts, "the fault fired");
    assert_eq!(cluster.nodes()[0].cli(&["-c", "GET", "app:once"]), "v");
    match stored {
        Ok(won) => assert!(won, "a stored SET NX reported as not stored"),
        Err(e) => assert!(e.is_outcome_unknown(), "{e:?}"),
    }
}

/// During a slot migration the source answers `ASK` for a key already moved; a write must
/// follow it (`ASKING` + the command on the target), not re-send to the source until its
/// time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_key_moved_mid_migration_follows_ask() {
    let cluster = Cluster::start();
    let cache = cluster.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    cache.set("moved", "old".into(), Ttl::Never).await.unwrap();
    let nodes = cluster.0.nodes();
    let src = cluster.0.master_of("app:moved");
    let (src, dst) = (&nodes[src], &nodes[(src + 1) % nodes.len()]);
    let slot = src.cli(&["CLUSTER", "KEYSLOT", "app:moved"]);
    let (src_id, dst_id) = (src.cli(&["CLUSTER", "MYID"]), dst.cli(&["CLUSTER", "MYID"]));
    assert_eq!(
        dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]),
        "OK"
    );
    assert_eq!(
        src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]),
        "OK"
    );
    let port = dst.port().to_string();
    assert_eq!(
        src.cli(&["MIGRATE", "127.0.0.1", &port, "app:moved", "0", "5000"]),
        "OK"
    );

    cache
        .set("moved", "new".into(), Ttl::Never)
        .await
        .expect("a write to a moved key follows ASK");
    assert!(cache.delete("moved").await.unwrap(), "delete follows ASK");
    assert!(
        cache
            .set_nx("moved", "again".into(), Ttl::Never)
            .await
            .unwrap()
    );
    assert_eq!(cache.incr_by("counter-in-other-slot", 1).await.unwrap(), 1);
    assert_eq!(
        cache.get("moved").await.unwrap().as_deref(),
        Some(&b"again"[..]),
        "the writes landed on the importing node"
    );
    assert!(
        src.cli(&["EXISTS", "app:moved"]).starts_with("ASK "),
        "the source no longer holds the key"
    );
}

/// A write that is only ever refused (the source says `ASK`, the target, not importing the
/// slot, says `MOVED` back) never ran: at its deadline it is `Unavailable`, not a timeout
/// with an unknown outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_only_ever_refused_is_unavailable_not_unknown() {
    let cluster = Cluster::start();
    let cache = cluster.builder("app").build().unwrap();
    cache.connect().await.unwrap();
    cache.set("{t}seed", "x".into(), Ttl::Never).await.unwrap();
    let nodes = cluster.0.nodes();
    let src = cluster.0.master_of("app:{t}seed");
    let (src, dst) = (&nodes[src], &nodes[(src + 1) % nodes.len()]);
    let slot = src.cli(&["CLUSTER", "KEYSLOT", "app:{t}seed"]);
    let dst_id = dst.cli(&["CLUSTER", "MYID"]);
    assert_eq!(
        src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]),
        "OK"
    );
    // A missing key in a migrating slot: the source answers ASK.
    let err = cache
        .set("{t}absent", "v".into(), Ttl::Never)
        .await
        .unwrap_err();
    assert!(
        matches!(err, keel_cache::Error::Unavailable { .. }),
        "{err:?}"
    );
    assert!(!err.is_outcome_unknown(), "{err:?}");
    assert_eq!(src.cli(&["CLUSTER", "SETSLOT", &slot, "STABLE"]), "OK");
    cache
        .set("{t}absent", "v".into(), Ttl::Never)
        .await
        .unwrap();
}
