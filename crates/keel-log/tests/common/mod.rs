//! Helpers shared by the Elasticsearch sink's test files (osmem-server based).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_log::{ElasticOptions, ElasticSink, Level, Logger, Sink};
use keel_testkit::osmem::OsmemServer;

pub const LONG: Duration = Duration::from_secs(60);

/// Small batches and a short interval: osmem is slow with big bulks, and tests should not
/// wait for the 1 s default.
pub fn options(url: &str, index: &str) -> ElasticOptions {
    let mut o = ElasticOptions::new(url);
    o.index = format!("{index}-%Y.%m.%d");
    o.batch_records = 50;
    o.flush_interval = Duration::from_millis(50);
    o.backoff = Duration::from_millis(20);
    o.max_backoff = Duration::from_millis(200);
    o.timeout = Duration::from_secs(5);
    o
}

pub fn start(name: &str, o: ElasticOptions) -> (Arc<ElasticSink>, Logger) {
    let sink = Arc::new(ElasticSink::start(name, o).expect("sink starts"));
    let logger = Logger::new(
        name.to_owned(),
        Level::Debug,
        vec![sink.clone() as Arc<dyn Sink>],
    );
    (sink, logger)
}

/// The `seq` field of every document, with how often each occurs.
pub fn seqs(server: &OsmemServer, index: &str, size: usize) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for doc in server.documents(&format!("{index}-*"), size) {
        if let Some(n) = doc["fields"]["seq"].as_u64() {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

pub fn exactly_once(seen: &BTreeMap<u64, usize>, range: std::ops::Range<u64>) {
    let expected: BTreeMap<u64, usize> = range.map(|n| (n, 1)).collect();
    assert_eq!(seen, &expected, "every record exactly once");
}

pub fn metric(name: &str, labels: &str) -> Option<f64> {
    let text = keel_metrics::MetricsService::global().render();
    keel_testkit::prometheus::sample(&text, &format!("keel_{name}{{{labels}}}"))
}

/// Every document of `index` with `fields.seq` below `n`, read in pages of 5 000 by `seq`
/// range (a search returns at most 10 000 hits), each with its `_id` added as `"_id"`.
pub fn documents_by_seq(server: &OsmemServer, index: &str, n: u64) -> Vec<serde_json::Value> {
    let _ = server.call("POST", &format!("/{index}/_refresh"), None);
    let mut docs = Vec::new();
    for from in (0..n).step_by(5_000) {
        let query = format!(
            r#"{{"size":10000,"query":{{"range":{{"fields.seq":{{"gte":{from},"lt":{}}}}}}}}}"#,
            from + 5_000
        );
        let (status, body) = server.call("POST", &format!("/{index}/_search"), Some(&query));
        assert_eq!(status, 200, "_search on {index}: {body}");
        for hit in body["hits"]["hits"].as_array().cloned().unwrap_or_default() {
            let mut source = hit["_source"].clone();
            source["_id"] = hit["_id"].clone();
            docs.push(source);
        }
    }
    docs
}
