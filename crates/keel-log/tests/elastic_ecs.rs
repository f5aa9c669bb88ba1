//! `formatter = "ecs"` on the Elasticsearch sink: the documents a real OpenSearch-compatible
//! server (osmem-server) stores are ecs-logging objects.
#![cfg(feature = "elastic")]

use std::time::Duration;

use keel_log::{ECS_VERSION, LogConfig, field, open};
use keel_testkit::osmem::OsmemServer;

#[test]
fn documents_are_ecs_objects() {
    let server = OsmemServer::start();
    let config = LogConfig::from_toml(&format!(
        r#"
type = "elastic"
name = "checkout"
formatter = "ecs"
[options]
url = "{}"
index = "ecs-%Y.%m.%d"
flush_interval = "50ms"
service_name = "shop"
hostname = "web-7"
"#,
        server.url()
    ))
    .unwrap();
    let log = open(&config).unwrap();
    for i in 0..20 {
        log.warn(
            "slow",
            &[
                field("seq", i),
                field("error", "deadline"),
                field("token", "t"),
            ],
        );
    }
    let stats = log.shutdown(Duration::from_secs(60));
    assert_eq!((stats.written, stats.failed, stats.dropped), (20, 0, 0));
    let docs = server.documents("ecs-*", 100);
    assert_eq!(docs.len(), 20);
    let mut seqs: Vec<u64> = docs
        .iter()
        .map(|d| {
            for key in ["@timestamp", "log.level", "message", "ecs.version"] {
                assert!(d[key].is_string(), "{key} in {d}");
            }
            assert_eq!(d["log.level"], "warn");
            assert_eq!(d["ecs.version"], ECS_VERSION);
            assert_eq!(d["log.logger"], "checkout");
            assert_eq!(d["service.name"], "shop");
            assert_eq!(d["host.hostname"], "web-7");
            assert_eq!(d["error.message"], "deadline");
            assert_eq!(d["token"], keel_log::REDACTED);
            d["seq"].as_u64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
}
