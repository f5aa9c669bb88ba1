//! The Elasticsearch sink's disk buffer against a real OpenSearch-compatible server
//! (osmem-server) and the fault proxy: a SIGKILLed process's buffer delivered by the next
//! start, a damaged segment tail, the byte bound under block and drop, the buffer's lock.
#![cfg(feature = "elastic")]

use std::io::BufRead as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_log::{ElasticOptions, ElasticSink, Error, Overflow, Sink, field};
use keel_testkit::osmem::OsmemServer;
use keel_testkit::proxy::{Fault, FaultProxy, Select};
use keel_testkit::redis::wait_until;

mod common;
use common::*;

/// Set in the child process of the SIGKILL test: `<url>\n<buffer dir>`.
const CHILD: &str = "KEEL_TEST_ES_DISK_CHILD";
const CRASH_RECORDS: u64 = 20_000;

fn disk_options(url: &str, index: &str, dir: &Path) -> ElasticOptions {
    let mut o = options(url, index);
    o.disk_buffer = Some(dir.to_owned());
    o
}

/// Total size of the buffer's segment files.
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Starts a sink on a buffer that a just-stopped sink may still hold for a moment (its sender
/// thread ends right after a shutdown that gave up).
fn start_when_released(name: &str, o: &ElasticOptions) -> ElasticSink {
    let mut sink = None;
    wait_until(
        "the buffer's lock to be released",
        LONG,
        || match ElasticSink::start(name, o.clone()) {
            Ok(s) => {
                sink = Some(s);
                true
            }
            Err(Error::BufferLocked { .. }) => false,
            Err(e) => panic!("{e}"),
        },
    );
    sink.expect("started")
}

/// The child: logs `CRASH_RECORDS` records into a disk-buffered sink whose server is down,
/// says so, and waits to be killed.
fn crash_child(spec: &str) -> ! {
    let (url, dir) = spec.split_once('\n').expect("url and dir");
    let mut o = disk_options(url, "crash", Path::new(dir));
    o.overflow = Overflow::Block;
    let (sink, logger) = start("es-crash", o);
    for i in 0..CRASH_RECORDS {
        logger.info("survives a crash", &[field("seq", i)]);
    }
    println!("accepted {CRASH_RECORDS} prefix={}", sink.id_prefix());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Kills and reaps the child when dropped: a test that panics before its own `kill` must
/// not leave the child sleeping forever.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_sigkilled_process_buffer_is_delivered_once_by_the_next_start() {
    if let Ok(spec) = std::env::var(CHILD) {
        crash_child(&spec);
    }
    let mut server = OsmemServer::start();
    let url = server.url();
    server.kill();
    let dir = tempfile::tempdir().unwrap();
    let buffer = dir.path().join("buffer");
    let mut child = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_sigkilled_process_buffer_is_delivered_once_by_the_next_start",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{url}\n{}", buffer.display()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut prefix = None;
    for line in std::io::BufReader::new(child.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest's "test … ... " may precede it on the same line.
        let marker = format!("accepted {CRASH_RECORDS} prefix=");
        if let Some(at) = line.find(&marker) {
            prefix = Some(line[at + marker.len()..].trim().to_owned());
            break;
        }
    }
    let prefix = prefix.expect("the child accepted every record");
    child.0.kill().unwrap(); // SIGKILL: no shutdown, no flush, no final sync.
    child.0.wait().unwrap();
    server.restart();

    let mut o = disk_options(&url, "crash", &buffer);
    o.batch_records = 250;
    let (sink, logger) = start("es-crash-next", o);
    assert_eq!(sink.buffered() as u64, CRASH_RECORDS, "replayed from disk");
    // A liveness bound only: 20 000 documents into osmem on a loaded machine.
    let stats = logger.flush(Duration::from_secs(300));
    assert_eq!(
        (stats.written, stats.failed, stats.pending),
        (CRASH_RECORDS, 0, 0)
    );
    assert_eq!(server.count("crash-*"), CRASH_RECORDS);
    let docs = documents_by_seq(&server, "crash-*", CRASH_RECORDS);
    let mut seen = std::collections::BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for doc in &docs {
        *seen
            .entry(doc["fields"]["seq"].as_u64().unwrap())
            .or_insert(0usize) += 1;
        let id = doc["_id"].as_str().unwrap();
        assert!(id.starts_with(&format!("{prefix}-")), "{id}");
        ids.insert(id.to_owned());
    }
    exactly_once(&seen, 0..CRASH_RECORDS);
    assert_eq!(ids.len() as u64, CRASH_RECORDS, "each id once");
    let stats = logger.shutdown(LONG);
    assert_eq!(stats.pending, 0);
    drop((logger, sink));
    // Everything was acknowledged: a third start has nothing to replay.
    let again = start_when_released("es-crash-third", &disk_options(&url, "crash", &buffer));
    assert_eq!(again.buffered(), 0);
}

#[test]
fn a_damaged_segment_tail_is_skipped_and_counted_and_the_rest_arrives() {
    let mut server = OsmemServer::start();
    let url = server.url();
    server.kill();
    let dir = tempfile::tempdir().unwrap();
    let o = disk_options(&url, "torn", dir.path());
    let (sink, logger) = start("es-torn", o.clone());
    for i in 0..100u64 {
        logger.info("on disk", &[field("seq", i)]);
    }
    assert_eq!(sink.shutdown(Duration::from_millis(200)).pending, 100);
    drop((logger, sink));
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // A byte of the last document flipped, then half a frame header (a torn append).
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    bytes.extend_from_slice(&[7, 0, 0]);
    std::fs::write(&segment, bytes).unwrap();

    server.restart();
    let sink = std::sync::Arc::new(start_when_released("es-torn-next", &o));
    assert_eq!(sink.buffered(), 99);
    let error = sink.last_error().expect("the damage is reported");
    assert!(error.contains("damaged"), "{error}");
    assert_eq!(
        metric("es_disk_buffer_corrupt_total", "sink=\"es-torn-next\""),
        Some(1.0)
    );
    let stats = sink.flush(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (99, 0, 0));
    exactly_once(&seqs(&server, "torn", 500), 0..99);
}

#[test]
fn a_segment_cut_short_under_a_running_sink_is_counted_and_does_not_hang_writers() {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Status(503)));
    let dir = tempfile::tempdir().unwrap();
    let o = disk_options(&proxy.url(), "cutshort", dir.path());
    let (sink, logger) = start("es-cutshort", o);
    // Memory holds two batches (and the one retried); the rest waits on disk.
    for i in 0..1000u64 {
        logger.info("spilled", &[field("seq", i)]);
    }
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    // Cut in the middle: the documents held in memory come before it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    proxy.set_always(None);
    // Another record once the reader has hit the cut: a writer must not hang on the lock.
    wait_until("the cut to be found", LONG, || {
        metric("es_disk_buffer_corrupt_total", "sink=\"es-cutshort\"").is_some_and(|v| v >= 1.0)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let late = logger.clone();
    std::thread::spawn(move || {
        late.info("after the cut", &[field("seq", 1000u64)]);
        let _ = tx.send(());
    });
    rx.recv_timeout(LONG).expect("the writer returned");
    let stats = sink.flush(LONG);
    assert_eq!(stats.pending, 0);
    assert!(
        stats.failed > 0,
        "the lost documents are counted: {stats:?}"
    );
    assert_eq!(stats.written + stats.failed, 1001, "{stats:?}");
}

/// The disk bound of the bound tests.
const BOUND: u64 = 64 * 1024;

fn assert_within_bound(dir: &Path) {
    let bytes = segment_bytes(dir);
    assert!(bytes <= BOUND, "{bytes} bytes of segments");
}

/// A disk-buffered sink bounded at [`BOUND`] behind a proxy that answers 503 to everything.
fn bounded(
    index: &str,
    overflow: Overflow,
) -> (
    OsmemServer,
    FaultProxy,
    tempfile::TempDir,
    std::sync::Arc<ElasticSink>,
    keel_log::Logger,
) {
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.set_always(Some(Fault::Status(503)));
    let dir = tempfile::tempdir().unwrap();
    let mut o = disk_options(&proxy.url(), index, dir.path());
    o.disk_buffer_max_bytes = BOUND;
    o.overflow = overflow;
    let (sink, logger) = start(&format!("es-{index}"), o);
    (server, proxy, dir, sink, logger)
}

#[test]
fn the_disk_bound_drops_what_does_not_fit_and_delivers_the_rest() {
    let (server, proxy, dir, sink, logger) = bounded("diskdrop", Overflow::DropNewest);
    let filler = "y".repeat(200);
    for i in 0..1000u64 {
        logger.info(
            "bounded",
            &[field("seq", i), field("filler", filler.clone())],
        );
    }
    let dropped = sink.flush(Duration::ZERO).dropped;
    let kept = sink.buffered() as u64;
    assert!(dropped > 0 && kept > 0, "dropped {dropped}, kept {kept}");
    assert_eq!(dropped + kept, 1000);
    assert_within_bound(dir.path());
    proxy.set_always(None);
    let stats = logger.flush(LONG);
    assert_eq!((stats.written, stats.pending, stats.failed), (kept, 0, 0));
    exactly_once(&seqs(&server, "diskdrop", 2000), 0..kept);
}

#[test]
fn the_disk_bound_blocks_writers_until_delivery_makes_room() {
    let (server, proxy, dir, sink, logger) = bounded("diskblock", Overflow::Block);
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let filler = "z".repeat(200);
            for i in 0..1000u64 {
                logger.info(
                    "blocked",
                    &[field("seq", i), field("filler", filler.clone())],
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        wait_until("the writer to fill the buffer", LONG, || {
            sink.buffered() > 0 && sink.buffered() as u64 == done.load(Ordering::Relaxed)
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(done.load(Ordering::Relaxed) < 1000, "the writer waits");
        assert_within_bound(dir.path());
        proxy.set_always(None);
    });
    let stats = logger.flush(LONG);
    assert_eq!(
        (stats.written, stats.dropped, stats.pending, stats.failed),
        (1000, 0, 0, 0)
    );
    exactly_once(&seqs(&server, "diskblock", 2000), 0..1000);
}

#[test]
fn one_document_stuck_in_retry_cannot_keep_more_than_the_bound_on_disk() {
    const STUCK_BOUND: u64 = 512 * 1024;
    let server = OsmemServer::start();
    let proxy = FaultProxy::start(server.addr());
    // Throttled forever: retried, never finished, so the ack position stays before it.
    proxy.set_always(Some(Fault::Items {
        select: Select::Containing("held-in-retry".into()),
        status: 429,
    }));
    let dir = tempfile::tempdir().unwrap();
    let mut o = disk_options(&proxy.url(), "diskstuck", dir.path());
    o.disk_buffer_max_bytes = STUCK_BOUND;
    let (sink, logger) = start("es-diskstuck", o);
    logger.info("held-in-retry", &[]);
    let filler = "s".repeat(2000);
    // Three times the bound, in rounds each delivered (all but the stuck one) before the
    // next: the unfinished documents alone never come near the bound.
    for round in 0..30u64 {
        for i in 0..25u64 {
            logger.info(
                "delivered",
                &[
                    field("seq", round * 25 + i),
                    field("filler", filler.clone()),
                ],
            );
        }
        wait_until("all but the stuck document to be delivered", LONG, || {
            sink.buffered() == 1
        });
    }
    let bytes = segment_bytes(dir.path());
    assert!(bytes <= STUCK_BOUND, "{bytes} bytes of segments");
    let dropped = sink.flush(Duration::ZERO).dropped;
    assert!(dropped > 0, "the bound applied");
    proxy.set_always(None);
    let stats = logger.flush(LONG);
    assert_eq!((stats.pending, stats.failed), (0, 0));
    assert_eq!(stats.written + stats.dropped, 751);
}

#[test]
fn two_sinks_on_one_buffer_path_is_a_clear_error() {
    let server = OsmemServer::start();
    let dir = tempfile::tempdir().unwrap();
    let o = disk_options(&server.url(), "locked", dir.path());
    let first = ElasticSink::start("es-locked-1", o.clone()).expect("the first starts");
    let err = ElasticSink::start("es-locked-2", o.clone()).unwrap_err();
    assert!(matches!(err, Error::BufferLocked { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&dir.path().display().to_string()) && text.contains("in use"),
        "{text}"
    );
    first.write(keel_log::Record::new(keel_log::Level::Info, "t", "x").with(vec![field("seq", 0)]));
    assert_eq!(first.shutdown(LONG).pending, 0);
    drop(first);
    let second = start_when_released("es-locked-2", &o);
    assert_eq!(second.buffered(), 0);
}

#[test]
fn config_keys_for_the_disk_buffer_endpoints_and_dead_letters() {
    let port = keel_testkit::process::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = keel_log::LogConfig::from_toml(&format!(
        r#"
type = "elastic"
name = "es-disk-config"
[options]
urls = ["http://127.0.0.1:{port}", "http://127.0.0.1:{port}/"]
buffer = "disk"
buffer_path = "{}"
buffer_max_bytes = 1048576
dead_letter = "{}"
dead_letter_max_bytes = 65536
flush_interval = "50ms"
"#,
        dir.path().join("buffer").display(),
        dir.path().join("dead.jsonl").display()
    ))
    .unwrap();
    let logger = keel_log::open(&config).expect("builds while the server is down");
    logger.info("waiting on disk", &[]);
    assert_eq!(logger.flush(Duration::from_millis(200)).pending, 1);
    assert!(segment_bytes(&dir.path().join("buffer")) > 0);

    let bad = |extra: &str| {
        let text = format!("type = \"elastic\"\nname = \"x\"\n[options]\n{extra}\n");
        keel_log::open(&keel_log::LogConfig::from_toml(&text).unwrap()).unwrap_err()
    };
    for (extra, field) in [
        (
            "url = \"http://h:1\"\nbuffer = \"disk\"",
            "options.buffer_path",
        ),
        ("url = \"http://h:1\"\nbuffer = \"tape\"", "options.buffer"),
        (
            "url = \"http://h:1\"\nbuffer_path = \"/tmp/x\"",
            "options.buffer_path",
        ),
        ("urls = []", "options.urls"),
        (
            "url = \"http://h:1\"\nurls = [\"http://h:2\"]",
            "options.urls",
        ),
        ("urls = [\"http://h:1\", \"ftp://h\"]", "options.url"),
        (
            "url = \"http://h:1\"\ndead_letter_max_bytes = 10",
            "options.dead_letter_max_bytes",
        ),
    ] {
        match bad(extra) {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field, "{extra}"),
            other => panic!("{extra}: {other}"),
        }
    }
}
