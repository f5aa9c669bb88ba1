//! The Elasticsearch sink against a real OpenSearch-compatible server (osmem-server), directly
//! and through a fault-injecting proxy; outages by SIGKILL + restart and by SIGSTOP.
#![cfg(feature = "elastic")]

use std::collections::BTreeMap;
use std::time::Duration;

use keel_log::{Auth, Error, Level, LogConfig, Overflow, Sink, field};
use keel_testkit::osmem::OsmemServer;
use keel_testkit::proxy::{Fault, FaultProxy, Select};
use keel_testkit::redis::{TlsFiles, wait_until};

mod common;
use common::*;

#[test]
fn every_record_arrives_once_with_its_fields_from_children_and_threads() {
    let server = OsmemServer::start();
    let (sink, logger) = start("es-shape", options(&server.url(), "shape"));
    let child = logger.with_fields(&[field("node", "mx1"), field("password", "hunter2")]);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let child = child.clone();
            s.spawn(move || {
                for i in 0..100u64 {
                    child.info(
                        "delivered \"quoted\"\nline",
                        &[field("seq", t * 100 + i), field("thread", t)],
                    );
                }
            });
        }
    });
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.pending, stats.failed), (400, 0, 0));
    assert_eq!(sink.buffered(), 0);
    exactly_once(&seqs(&server, "shape", 1000), 0..400);
    let doc = &server.documents("shape-*", 1)[0];
    assert!(humantime::parse_rfc3339(doc["@timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(doc["level"], "INFO");
    assert_eq!(doc["logger"], "es-shape");
    assert_eq!(doc["message"], "delivered \"quoted\"\nline");
    assert_eq!(doc["fields"]["node"], "mx1");
    assert_eq!(doc["fields"]["password"], "[REDACTED]");
    let id = doc["_id"].as_str().unwrap();
    assert!(id.starts_with(&format!("{}-", sink.id_prefix())), "{id}");
    let today = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let index = format!("shape-{}.{}.{}", &today[0..4], &today[5..7], &today[8..10]);
    // Around midnight UTC the documents may straddle two indices; count both ways.
    assert!(server.count(&index) > 0 || server.count("shape-*") == 400);
    assert_eq!(
        metric("es_documents_total", "sink=\"es-shape\",status=\"success\""),
        Some(400.0)
    );
    assert_eq!(
        metric("es_buffer_records", "sink=\"es-shape\""),
        Some(0.0),
        "the gauge is back to zero"
    );
    let stats = logger.shutdown(LONG);
    assert_eq!(stats.pending, 0);
}

#[test]
fn gzip_bodies_and_basic_auth_reach_the_server() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut o = options(&proxy.url(), "gz");
    o.gzip = true;
    o.auth = Auth::Basic {
        username: "elastic".into(),
        password: "changeme".into(),
    };
    let (_sink, logger) = start("es-gzip", o);
    for i in 0..120u64 {
        logger.warn("compressed", &[field("seq", i)]);
    }
    assert_eq!(logger.flush(LONG).written, 120);
    exactly_once(&seqs(&server, "gz", 500), 0..120);
    let headers = proxy.last_headers();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(get("content-type").as_deref(), Some("application/x-ndjson"));
    // base64("elastic:changeme")
    assert_eq!(
        get("authorization").as_deref(),
        Some("Basic ZWxhc3RpYzpjaGFuZ2VtZQ==")
    );
    drop(logger);

    let mut o = options(&proxy.url(), "key");
    o.auth = Auth::ApiKey("a2V5OnNlY3JldA==".into());
    let (_sink, logger) = start("es-apikey", o);
    logger.info("keyed", &[field("seq", 0)]);
    assert_eq!(logger.flush(LONG).written, 1);
    let auth = proxy
        .last_headers()
        .into_iter()
        .find(|(k, _)| k == "authorization");
    assert_eq!(
        auth.map(|(_, v)| v).as_deref(),
        Some("ApiKey a2V5OnNlY3JldA==")
    );
}

#[test]
fn mapping_errors_go_to_the_dead_letter_file_and_the_rest_arrives() {
    let server = OsmemServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let mut o = options(&server.url(), "map");
    o.dead_letter = Some(dead.clone());
    let (_sink, logger) = start("es-mapping", o);
    logger.info("numeric first", &[field("seq", 0), field("n", 1)]);
    assert_eq!(logger.flush(LONG).written, 1);
    // `fields.n` is now a long: a string that is not a number is a mapping error (400).
    logger.info("bad type", &[field("seq", 1), field("n", "not a number")]);
    logger.info("fine", &[field("seq", 2), field("n", 3)]);
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (2, 1, 0));
    let seen = seqs(&server, "map", 100);
    assert_eq!(seen, BTreeMap::from([(0, 1), (2, 1)]));
    assert_eq!(server.count("map-*"), 2);
    let text = std::fs::read_to_string(&dead).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["status"], 400);
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("mapper_parsing_exception"),
        "{text}"
    );
    assert_eq!(lines[0]["document"]["message"], "bad type");
    assert_eq!(lines[0]["document"]["fields"]["seq"], 1);
    assert_eq!(
        metric(
            "es_documents_total",
            "sink=\"es-mapping\",status=\"rejected\""
        ),
        Some(1.0)
    );
}

#[test]
fn whole_request_failures_are_retried_without_duplicates() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.push(Fault::Status(429));
    proxy.push(Fault::Status(503));
    // The server stores the batch, but the answer says 503: the retry must not duplicate.
    proxy.push(Fault::ForwardThenStatus(503));
    proxy.push(Fault::Hangup);
    proxy.push(Fault::ForwardThenStatus(502));
    let (_sink, logger) = start("es-whole", options(&proxy.url(), "whole"));
    for i in 0..300u64 {
        logger.info("retried", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (300, 0, 0));
    exactly_once(&seqs(&server, "whole", 1000), 0..300);
    assert!(proxy.requests() >= 5 + 300 / 50, "{}", proxy.requests());
    assert!(
        metric(
            "es_bulk_requests_total",
            "sink=\"es-whole\",status=\"throttled\""
        ) >= Some(1.0)
    );
    assert!(
        metric(
            "es_bulk_requests_total",
            "sink=\"es-whole\",status=\"server_error\""
        ) >= Some(2.0)
    );
    assert!(
        metric(
            "es_bulk_requests_total",
            "sink=\"es-whole\",status=\"network\""
        ) >= Some(1.0)
    );
}

#[test]
fn failed_items_are_retried_alone_and_given_up_after_the_limit() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.push(Fault::Items {
        select: Select::Every(3),
        status: 429,
    });
    proxy.push(Fault::Items {
        select: Select::Every(2),
        status: 503,
    });
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let mut o = options(&proxy.url(), "items");
    // Batches leave full (50) or at the flush, never early: each fault meets a whole batch.
    o.flush_interval = Duration::from_secs(3600);
    o.max_retries = 2;
    o.dead_letter = Some(dead.clone());
    let (_sink, logger) = start("es-items", o);
    for i in 0..100u64 {
        logger.info("item", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (100, 0, 0));
    exactly_once(&seqs(&server, "items", 1000), 0..100);
    assert!(proxy.items() > 100, "some items were sent twice");
    assert!(
        metric(
            "es_bulk_requests_total",
            "sink=\"es-items\",status=\"partial\""
        ) >= Some(2.0)
    );

    // An item that always fails with 503 goes to the dead-letter file after 2 retries.
    proxy.set_always(Some(Fault::Items {
        select: Select::Containing("poison".into()),
        status: 503,
    }));
    let before = proxy.items();
    logger.info("poison pill", &[field("seq", 100)]);
    logger.info("healthy", &[field("seq", 101)]);
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (101, 1, 0));
    assert_eq!(
        proxy.items() - before,
        2 + 2,
        "first try of both, then 2 retries"
    );
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(text.contains("gave up after 2 retries"), "{text}");
    assert!(text.contains("poison pill"), "{text}");
    assert_eq!(server.count("items-*"), 101);
    assert_eq!(
        metric(
            "es_documents_total",
            "sink=\"es-items\",status=\"exhausted\""
        ),
        Some(1.0)
    );
}

#[test]
fn an_outage_within_the_bound_loses_nothing_and_duplicates_nothing() {
    let mut server = OsmemServer::start();
    let mut o = options(&server.url(), "outage");
    o.max_records = 1000;
    o.timeout = Duration::from_secs(2);
    let (sink, logger) = start("es-outage", o);
    for i in 0..100u64 {
        logger.info("before", &[field("seq", i)]);
    }
    assert_eq!(logger.flush(LONG).written, 100);
    server.kill();
    for i in 100..600u64 {
        logger.info("during", &[field("seq", i)]);
    }
    // Nothing can be delivered while the server is down.
    let stats = logger.flush(Duration::from_millis(300));
    assert_eq!((stats.written, stats.dropped), (100, 0));
    assert_eq!(stats.pending, 500);
    assert_eq!(sink.buffered(), 500);
    server.restart(); // empty: only what was logged during the outage can arrive
    let stats = logger.flush(LONG);
    assert_eq!(
        (stats.written, stats.dropped, stats.failed, stats.pending),
        (600, 0, 0, 0)
    );
    exactly_once(&seqs(&server, "outage", 2000), 100..600);
}

#[test]
fn beyond_the_bound_the_drop_count_is_exact_and_reported_in_band() {
    let mut server = OsmemServer::start();
    let mut o = options(&server.url(), "bound");
    o.max_records = 100;
    o.overflow = Overflow::DropNewest;
    let (_sink, logger) = start("es-bound", o);
    server.kill();
    for i in 0..250u64 {
        logger.info("flood", &[field("seq", i)]);
    }
    let stats = logger.flush(Duration::from_millis(200));
    assert_eq!((stats.dropped, stats.pending), (150, 100));
    assert_eq!(metric("es_dropped_total", "sink=\"es-bound\""), Some(150.0));
    server.restart();
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.dropped, stats.pending), (100, 150, 0));
    exactly_once(&seqs(&server, "bound", 1000), 0..100);
    let reports: Vec<serde_json::Value> = server
        .documents("bound-*", 1000)
        .into_iter()
        .filter(|d| d["fields"]["dropped"].is_u64())
        .collect();
    // Usually one report; a writer preempted between drops can split the count over two.
    let total: u64 = reports
        .iter()
        .map(|r| r["fields"]["dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 150, "{reports:?}");
    for r in &reports {
        assert_eq!(
            r["message"],
            format!("{} records dropped", r["fields"]["dropped"])
        );
    }
}

#[test]
fn a_frozen_server_times_out_and_the_retry_does_not_duplicate() {
    let server = OsmemServer::start();
    let mut o = options(&server.url(), "frozen");
    o.timeout = Duration::from_millis(300);
    let (_sink, logger) = start("es-frozen", o);
    logger.info("warm", &[field("seq", 0)]);
    assert_eq!(logger.flush(LONG).written, 1);
    server.pause();
    for i in 1..200u64 {
        logger.info("while frozen", &[field("seq", i)]);
    }
    // Requests sent now time out; the kernel queues them, so the server may apply them
    // after it resumes, and the client retries them anyway.
    wait_until("a request timed out", LONG, || {
        metric(
            "es_bulk_requests_total",
            "sink=\"es-frozen\",status=\"network\"",
        ) >= Some(2.0)
    });
    server.resume();
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.pending), (200, 0));
    exactly_once(&seqs(&server, "frozen", 1000), 0..200);
}

#[test]
fn shutdown_reports_what_it_could_not_deliver_and_later_writes_are_dropped() {
    let mut server = OsmemServer::start();
    let (sink, logger) = start("es-shutdown", options(&server.url(), "down"));
    server.kill();
    for i in 0..10u64 {
        logger.info("never delivered", &[field("seq", i)]);
    }
    let stats = sink.shutdown(Duration::from_millis(300));
    assert_eq!((stats.written, stats.pending), (0, 10));
    logger.info("after shutdown", &[]);
    assert_eq!(sink.flush(Duration::from_millis(100)).dropped, 1);
}

#[test]
fn tls_with_a_custom_ca_and_untrusted_without_it() {
    let server = OsmemServer::start();
    let tls = TlsFiles::generate();
    let proxy = FaultProxy::start_tls(server.addr(), &tls);
    let mut o = options(&proxy.url(), "tls");
    o.ca_file = Some(tls.ca_cert.clone());
    let (_sink, logger) = start("es-tls", o);
    for i in 0..20u64 {
        logger.info("secure", &[field("seq", i)]);
    }
    assert_eq!(logger.flush(LONG).written, 20);
    exactly_once(&seqs(&server, "tls", 100), 0..20);

    // Without the CA the certificate is not trusted: nothing is delivered, nothing is lost.
    let (sink, logger) = start("es-untrusted", options(&proxy.url(), "untrusted"));
    logger.info("untrusted", &[field("seq", 0)]);
    wait_until("a TLS failure", LONG, || {
        metric(
            "es_bulk_requests_total",
            "sink=\"es-untrusted\",status=\"network\"",
        ) >= Some(1.0)
    });
    assert_eq!(sink.buffered(), 1);
    assert_eq!(server.count("untrusted-*"), 0);
}

#[test]
fn config_builds_the_sink_and_rejects_bad_settings_clearly() {
    // The server is down at start-up: building still works and records wait.
    let port = keel_testkit::process::free_port();
    let config = LogConfig::from_toml(&format!(
        r#"
type = "elasticsearch"
name = "es-config"
formatter = "json"
[options]
url = "http://127.0.0.1:{port}"
index = "cfg-%Y.%m"
batch_size = 10
flush_interval = "50ms"
timeout = "1s"
username = "elastic"
password = "s3cret-pass"
"#
    ))
    .unwrap();
    assert!(!format!("{config:?}").contains("s3cret-pass"));
    let logger = keel_log::open(&config).expect("builds while the server is down");
    logger.info("waiting", &[]);
    assert_eq!(logger.flush(Duration::from_millis(200)).pending, 1);

    let bad = |extra: &str| {
        let text = format!("type = \"elastic\"\nname = \"x\"\n[options]\n{extra}\n");
        keel_log::open(&LogConfig::from_toml(&text).unwrap()).unwrap_err()
    };
    for (extra, field) in [
        ("", "options.url"),
        ("url = \"not a url\"", "options.url"),
        ("url = \"ftp://127.0.0.1\"", "options.url"),
        (
            "url = \"http://127.0.0.1:9200\"\nindex = \"Logs-%Y\"",
            "options.index",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nindex = \"logs-%Q\"",
            "options.index",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nusername = \"u\"",
            "options.username",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nca_file = \"/nonexistent/ca.pem\"",
            "options.ca_file",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nflush_interval = \"soon\"",
            "options.flush_interval",
        ),
        ("url = \"http://u:pw@127.0.0.1:9200\"", "options.url"),
        ("url = \"http://127.0.0.1:9200/?pretty\"", "options.url"),
        (
            "url = \"http://127.0.0.1:9200\"\nusername = \"u\"\npassword = \"p\"\napi_key = \"k\"",
            "options.api_key",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\napi_key = \"bad\\nkey\"",
            "options.api_key",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\ndata_stream = \"Bad\"",
            "options.data_stream",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nbatch_size = 0",
            "options.batch_size",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nmax_buffer_bytes = 0",
            "options.max_buffer_bytes",
        ),
        (
            "url = \"http://127.0.0.1:9200\"\nqueue = 0",
            "options.queue",
        ),
    ] {
        let err = bad(extra);
        assert!(
            matches!(&err, Error::InvalidConfig { field: f, .. } if f == field),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn data_stream_mode_uses_create_and_counts_a_conflict_as_delivered() {
    // osmem has no data streams; a `create` into a plain index has the same wire behaviour.
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    // The server applies the first batch but the answer is lost: the retry's `create`s all
    // conflict (409), which means "already delivered".
    proxy.push(Fault::ForwardThenStatus(503));
    let mut o = options(&proxy.url(), "unused");
    o.data_stream = Some("ds-app".into());
    let (_sink, logger) = start("es-datastream", o);
    for i in 0..30u64 {
        logger.info("streamed", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (30, 0, 0));
    let mut seen = BTreeMap::new();
    for doc in server.documents("ds-app", 100) {
        *seen
            .entry(doc["fields"]["seq"].as_u64().unwrap())
            .or_default() += 1;
    }
    exactly_once(&seen, 0..30);
    assert!(proxy.requests() >= 2);
    assert_eq!(server.count("unused-*"), 0, "the index pattern is not used");
}

#[test]
fn a_413_halves_the_batch_and_a_single_oversized_document_is_dead_lettered() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let mut o = options(&proxy.url(), "big");
    o.dead_letter = Some(dead.clone());
    // Nothing leaves before the flush, so the 40 records form one batch and the halving is
    // what splits it.
    o.flush_interval = Duration::from_secs(3600);
    let (_sink, logger) = start("es-413", o);
    proxy.push(Fault::Status(413));
    proxy.push(Fault::Status(413));
    for i in 0..40u64 {
        logger.info("large", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (40, 0, 0));
    exactly_once(&seqs(&server, "big", 100), 0..40);
    // 40 → 413, 20 → 413, then the cap grows back by doubling: 10, 20, then the last 10.
    assert_eq!(proxy.requests(), 2 + 3);

    proxy.push(Fault::Status(413));
    logger.info("too large alone", &[field("seq", 40)]);
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (40, 1, 0));
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(
        text.contains("too large alone") && text.contains("413"),
        "{text}"
    );
}

#[test]
fn auth_failures_hold_documents_until_the_server_accepts_them() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    for _ in 0..3 {
        proxy.push(Fault::Status(401));
    }
    let (sink, logger) = start("es-401", options(&proxy.url(), "auth"));
    for i in 0..10u64 {
        logger.info("held", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed), (10, 0), "not dead-lettered");
    exactly_once(&seqs(&server, "auth", 100), 0..10);
    let last = sink.last_error().expect("the 401 is remembered");
    assert!(last.contains("401"), "{last}");
}

#[test]
fn records_with_impossible_times_are_clamped_not_a_crash() {
    let server = OsmemServer::start();
    let (sink, _logger) = start("es-time", options(&server.url(), "time"));
    let mut early =
        keel_log::Record::new(Level::Info, "es-time", "before 1970").with(vec![field("seq", 0)]);
    early.time = std::time::UNIX_EPOCH - Duration::from_secs(86_400);
    let mut late =
        keel_log::Record::new(Level::Info, "es-time", "after 9999").with(vec![field("seq", 1)]);
    late.time = std::time::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
    sink.write(early);
    sink.write(late);
    let stats = sink.flush(LONG);
    assert_eq!((stats.written, stats.pending), (2, 0));
    let mut stamps: Vec<String> = server
        .documents("time-*", 10)
        .iter()
        .map(|d| d["@timestamp"].as_str().unwrap().to_owned())
        .collect();
    stamps.sort();
    assert_eq!(
        stamps,
        ["1970-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"]
    );
}

#[test]
fn block_policy_waits_for_room_and_loses_nothing() {
    let mut server = OsmemServer::start();
    let mut o = options(&server.url(), "block");
    o.max_records = 5;
    o.overflow = Overflow::Block;
    let (sink, logger) = start("es-block", o);
    server.kill();
    let writer = {
        let logger = logger.clone();
        std::thread::spawn(move || {
            for i in 0..20u64 {
                logger.info("blocking", &[field("seq", i)]);
            }
        })
    };
    wait_until("the buffer is full", LONG, || sink.buffered() == 5);
    assert!(!writer.is_finished(), "the writer waits for room");
    server.restart();
    writer.join().unwrap();
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.dropped, stats.pending), (20, 0, 0));
    exactly_once(&seqs(&server, "block", 100), 0..20);
}

#[test]
fn the_byte_bound_drops_what_does_not_fit() {
    let mut server = OsmemServer::start();
    let mut o = options(&server.url(), "bytes");
    // Room for a few documents of ~1 KiB each, not for 10.
    o.max_bytes = 4000;
    let (sink, logger) = start("es-bytes", o);
    server.kill();
    let payload = "x".repeat(1000);
    for i in 0..10u64 {
        logger.info("big", &[field("seq", i), field("payload", payload.clone())]);
    }
    let kept = sink.buffered() as u64;
    assert!((1..10).contains(&kept), "{kept} kept");
    // A document larger than the whole bound is dropped even when the buffer is empty.
    let huge = "y".repeat(5000);
    logger.info("huge", &[field("payload", huge)]);
    let stats = logger.flush(Duration::from_millis(100));
    assert_eq!(stats.dropped, 10 - kept + 1);
    server.restart();
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.pending), (kept, 0));
    exactly_once(&seqs(&server, "bytes", 100), 0..kept);
}

#[test]
fn shutdown_right_after_recovery_ships_the_buffer_despite_a_long_backoff() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Status(503)));
    let mut o = options(&proxy.url(), "recover");
    // The first failure already backs off 10–20 s.
    o.backoff = Duration::from_secs(20);
    o.max_backoff = Duration::from_secs(30);
    let (sink, logger) = start("es-recover", o);
    for i in 0..120u64 {
        logger.info("held during the outage", &[field("seq", i)]);
    }
    wait_until("a failed request", LONG, || sink.last_error().is_some());
    proxy.set_always(None);
    let stats = sink.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.pending, stats.failed), (120, 0, 0));
    exactly_once(&seqs(&server, "recover", 500), 0..120);
}

#[test]
fn proxy_timeouts_408_and_499_are_retried_not_dead_lettered() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.push(Fault::Status(408));
    proxy.push(Fault::Status(499));
    // The server has the batch, the proxy says it timed out: the retry must not duplicate.
    proxy.push(Fault::ForwardThenStatus(408));
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let mut o = options(&proxy.url(), "timeouts");
    o.dead_letter = Some(dead.clone());
    let (_sink, logger) = start("es-timeouts", o);
    for i in 0..100u64 {
        logger.info("retried", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (100, 0, 0));
    exactly_once(&seqs(&server, "timeouts", 500), 0..100);
    let dead_text = std::fs::read_to_string(&dead).unwrap_or_default();
    assert_eq!(dead_text, "", "nothing dead-lettered");
}

#[test]
fn rejections_with_a_dead_letter_file_still_reach_last_error() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.push(Fault::Items {
        select: Select::Every(2),
        status: 400,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&proxy.url(), "dlreport");
    o.dead_letter = Some(dir.path().join("dead.jsonl"));
    let (sink, logger) = start("es-dlreport", o);
    for i in 0..10u64 {
        logger.info("half rejected", &[field("seq", i)]);
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (5, 5, 0));
    let error = sink.last_error().expect("the rejection is reported");
    assert!(error.contains("400"), "{error}");
}

#[test]
fn a_429_storm_longer_than_30_seconds_loses_nothing() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Items {
        select: Select::Every(1),
        status: 429,
    }));
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&proxy.url(), "storm");
    o.max_backoff = Duration::from_secs(2);
    o.dead_letter = Some(dir.path().join("dead.jsonl"));
    let (sink, logger) = start("es-storm", o);
    for i in 0..200u64 {
        logger.info("throttled", &[field("seq", i)]);
    }
    std::thread::sleep(Duration::from_secs(31));
    assert!(proxy.items() > 200, "retried during the storm");
    assert_eq!(sink.flush(Duration::ZERO).failed, 0, "nothing given up");
    proxy.set_always(None);
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (200, 0, 0));
    exactly_once(&seqs(&server, "storm", 500), 0..200);
}

#[test]
fn dead_letters_are_bounded_rotated_and_counted() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Items {
        select: Select::Every(1),
        status: 400,
    }));
    let dir = tempfile::tempdir().unwrap();
    let bound = 64 * 1024;
    let mut o = options(&proxy.url(), "dlbound");
    o.dead_letter = Some(dir.path().join("dead.jsonl"));
    o.dead_letter_max_bytes = bound;
    let (sink, logger) = start("es-dlbound", o);
    let filler = "x".repeat(1000);
    for i in 0..400u64 {
        logger.info(
            "rejected",
            &[field("seq", i), field("filler", filler.clone())],
        );
    }
    let stats = logger.shutdown(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (0, 400, 0));
    assert!(sink.last_error().is_some_and(|e| e.contains("400")));
    assert_eq!(
        metric("es_dead_letters_total", "sink=\"es-dlbound\""),
        Some(400.0)
    );
    let files = || -> Vec<_> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    assert!(files().len() >= 2, "rotated: {:?}", files());
    let total = || -> u64 {
        files()
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum()
    };
    // Retention deletes the oldest rotated files on the file sink's own thread.
    wait_until("the dead letters within their bound", LONG, || {
        total() <= bound
    });
    // The newest rejections are kept.
    let live = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(live.lines().last().unwrap()).unwrap();
    assert_eq!(last["document"]["fields"]["seq"], 399);
}

#[test]
fn one_of_two_endpoints_failing_mid_run_loses_nothing_and_is_checked_back_in() {
    let server = OsmemServer::start();
    let a = FaultProxy::start(server.addr());
    let b = FaultProxy::start(server.addr());
    let mut o = options(&a.url(), "multi");
    o.urls = vec![a.url(), b.url()];
    let (_sink, logger) = start("es-multi", o);
    let up = |p: &FaultProxy| {
        metric(
            "es_endpoint_up",
            &format!("sink=\"es-multi\",endpoint=\"{}\"", p.url()),
        )
    };
    let mut n = 0u64;
    for _ in 0..300 {
        logger.info("spread", &[field("seq", n)]);
        n += 1;
    }
    assert_eq!(logger.flush(LONG).written, 300);
    assert!(a.requests() > 0 && b.requests() > 0, "round-robin");
    // b fails mid-run: every connection to it is cut without an answer.
    b.set_always(Some(Fault::Hangup));
    for _ in 0..300 {
        logger.info("spread", &[field("seq", n)]);
        n += 1;
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (600, 0, 0));
    assert_eq!(up(&b), Some(0.0), "b is out of rotation");
    assert_eq!(up(&a), Some(1.0));
    assert!(
        metric(
            "es_endpoint_requests_total",
            &format!(
                "sink=\"es-multi\",endpoint=\"{}\",status=\"failed\"",
                b.url()
            )
        ) >= Some(1.0)
    );
    // b is back: a health check puts it back in rotation while records keep coming.
    b.set_always(None);
    let before = b.requests();
    wait_until("b back in rotation", LONG, || {
        logger.info("spread", &[field("seq", n)]);
        n += 1;
        up(&b) == Some(1.0)
    });
    for _ in 0..200 {
        logger.info("spread", &[field("seq", n)]);
        n += 1;
    }
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (n, 0, 0));
    assert!(b.requests() > before + 1, "b gets requests again");
    exactly_once(&seqs(&server, "multi", 5000), 0..n);
}

#[test]
fn url_credentials_and_secret_words_are_redacted_in_documents() {
    let server = OsmemServer::start();
    let (_sink, logger) = start("es-redact", options(&server.url(), "redact"));
    logger.error(
        "dial redis://app:s3cr3t@127.0.0.1:6379/0 failed",
        &[
            field("error", "connect postgres://u:pw1@127.0.0.1/db: refused"),
            field("db_pass", "pw2"),
            field("DATABASE_URL", "pw3"),
            field("seq", 0u64),
        ],
    );
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.failed), (1, 0));
    let doc = &server.documents("redact-*", 1)[0];
    let raw = doc.to_string();
    for secret in ["s3cr3t", "pw1", "pw2", "pw3"] {
        assert!(!raw.contains(secret), "{secret} in {raw}");
    }
    assert_eq!(
        doc["message"],
        "dial redis://[REDACTED]@127.0.0.1:6379/0 failed"
    );
    assert_eq!(
        doc["fields"]["error"],
        "connect postgres://[REDACTED]@127.0.0.1/db: refused"
    );
    assert_eq!(doc["fields"]["db_pass"], "[REDACTED]");
    assert_eq!(doc["fields"]["DATABASE_URL"], "[REDACTED]");
    logger.shutdown(LONG);
}
