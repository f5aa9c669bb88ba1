//! A `log` bridge that routes everything (reqwest's own debug messages included) to an
//! Elasticsearch logger must not feed the sink with its own HTTP client's records. Its own
//! binary: the `log` logger is process-wide.
#![cfg(all(feature = "elastic", feature = "log"))]

use std::sync::Arc;
use std::time::Duration;

use keel_log::bridge::LogBridge;
use keel_log::{ElasticOptions, ElasticSink, Level, Logger, Sink, field};
use keel_testkit::osmem::OsmemServer;

#[test]
fn the_sender_threads_own_log_records_are_not_shipped() {
    let server = OsmemServer::start();
    let mut o = ElasticOptions::new(server.url());
    o.index = "bridge-%Y".into();
    o.flush_interval = Duration::from_millis(20);
    let sink = Arc::new(ElasticSink::start("es-bridge", o).unwrap());
    let logger = Logger::new("es-bridge", Level::Debug, vec![sink as Arc<dyn Sink>]);
    LogBridge::new(logger.clone()).install().unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    for i in 0..5u64 {
        logger.info("app record", &[field("seq", i)]);
        // Separate requests, so reqwest has connections to log about.
        assert_eq!(logger.flush(Duration::from_secs(60)).written, i + 1);
    }
    log::info!(target: "app", "through the bridge");
    let stats = logger.flush(Duration::from_secs(60));
    assert_eq!((stats.written, stats.pending), (6, 0));
    let docs = server.documents("bridge-*", 100);
    let messages: Vec<&str> = docs
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        6,
        "only the application's records: {messages:?}"
    );
}
