//! The testkit's own servers come up as promised.

use keel_testkit::redis::{RedisCluster, RedisSentinel};

#[test]
fn cluster_has_three_masters_covering_every_slot() {
    let cluster = RedisCluster::start();
    let info = cluster.nodes()[0].cli(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");
    assert_eq!(cluster.dbsize(), 0);
}

#[test]
fn sentinels_agree_on_the_master() {
    let s = RedisSentinel::start();
    assert_eq!(s.master_port(), s.servers[0].port());
    assert_eq!(s.sentinel_addrs().len(), 3);
}
