//! Logs are on disk when they should be: the timed flush (a SIGKILLed process keeps what it
//! logged), recovery after the live file or its directory vanishes or a reopen fails, exact
//! delivery counts on I/O errors and at shutdown, retention that keeps the newest files of its
//! own sink only, and exit paths (`fatal`, `close_all`) that never block past their bound.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_log::{
    DeliveryStats, FileOptions, FileSink, FlushPolicy, JsonFormat, Level, Logger, Manager,
    Overflow, QueueSink, Sampling, Sink, field, rotated_files,
};
use keel_testkit::writer::SharedBuffer;

mod support;
use support::{busy_logger, fatal_sees, fill_queue, marked_flushed, stalled_logger};

/// A generous bound for waits that succeed at once unless something is broken.
const LONG: Duration = Duration::from_secs(60);

fn file_logger(name: &'static str, options: FileOptions) -> (Logger, Arc<FileSink>) {
    let sink = Arc::new(
        FileSink::start(name, options, 10_000, Overflow::Block, Box::new(JsonFormat)).unwrap(),
    );
    (
        Logger::new(name, Level::Info, vec![sink.clone() as Arc<dyn Sink>]),
        sink,
    )
}

/// The `i` field of every JSON line of `path` (none when it does not exist).
fn seqs(path: &Path) -> Vec<u64> {
    seqs_in(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The `i` field of every JSON line of `text`.
fn seqs_in(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
                ["i"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// This test binary running only the test `name` (the child side of a test that needs a
/// process of its own; the child test returns at once unless its environment variable is set).
fn child_test(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", name, "--nocapture", "--test-threads=1"]);
    command
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn given(stats: DeliveryStats) -> u64 {
    stats.written + stats.dropped + stats.failed
}

#[test]
fn records_reach_the_file_without_an_explicit_flush() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("quiet.log");
    let (log, _sink) = file_logger("quiet", FileOptions::new(&live));
    for i in 0..10u64 {
        log.info("then silence", &[field("i", i)]);
    }
    // The default flush interval is 1 s; the writer also flushes when its queue drains.
    wait_for("10 lines in the file", Duration::from_secs(5), || {
        seqs(&live).len() == 10
    });
    assert_eq!(seqs(&live), (0..10).collect::<Vec<_>>());
    log.shutdown(Duration::from_secs(5));
}

/// Run as a child by `a_sigkilled_process_keeps_what_it_logged`: logs 10 records to the file
/// named by `KEEL_DURABILITY_CHILD`, says so on stdout, and waits to be killed.
#[test]
fn child_logs_then_waits_to_be_killed() {
    let Some(path) = std::env::var_os("KEEL_DURABILITY_CHILD") else {
        return;
    };
    let (log, _sink) = file_logger("child", FileOptions::new(PathBuf::from(path)));
    for i in 0..10u64 {
        log.info("before the crash", &[field("i", i)]);
    }
    println!("KEEL-CHILD-LOGGED");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_sigkilled_process_keeps_what_it_logged() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("crash.log");
    let mut child = child_test("child_logs_then_waits_to_be_killed")
        .env("KEEL_DURABILITY_CHILD", &live)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("KEEL-CHILD-LOGGED") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited");
    }
    // One flush interval (1 s by default) plus slack, then the crash.
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap(); // SIGKILL: no destructor, no flush
    child.wait().unwrap();
    assert_eq!(seqs(&live), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_deleted_live_file_or_directory_is_recreated_and_nothing_after_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("logs");
    let live = sub.join("gone.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(64 * 1024);
    let (log, _sink) = file_logger("gone", options);
    for i in 0..100u64 {
        log.info("before", &[field("i", i)]);
    }
    log.flush(Duration::from_secs(5));
    std::fs::remove_file(&live).unwrap(); // `rm app.log`
    for i in 100..200u64 {
        log.info("after rm", &[field("i", i)]);
    }
    log.flush(Duration::from_secs(5));
    assert_eq!(seqs(&live), (100..200).collect::<Vec<_>>());
    std::fs::remove_dir_all(&sub).unwrap(); // the whole directory
    for i in 200..300u64 {
        log.info("after rm -r", &[field("i", i)]);
    }
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!(seqs(&live), (200..300).collect::<Vec<_>>());
    assert_eq!((stats.written, stats.failed, stats.dropped), (300, 0, 0));
}

#[test]
fn a_size_rotated_sink_whose_live_file_was_deleted_keeps_writing_and_rotating() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("sized.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(2_000);
    let (log, _sink) = file_logger("sized", options);
    // Fill the live file close to its limit, so the next records are due to rotate it.
    let mut i = 0u64;
    while std::fs::metadata(&live).map_or(0, |m| m.len()) < 1_900 {
        log.info("before", &[field("i", i)]);
        i += 1;
        log.flush(Duration::from_secs(5));
    }
    let before = i;
    std::fs::remove_file(&live).unwrap(); // `rm`, or logrotate `nocreate`
    for _ in 0..200 {
        log.info("after rm", &[field("i", i)]);
        i += 1;
    }
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.failed), (i, 0), "{stats:?}");
    let mut files = rotated_files(&live);
    files.push(live.clone());
    let after: Vec<u64> = files
        .iter()
        .flat_map(|f| seqs(f))
        .filter(|n| *n >= before)
        .collect();
    assert_eq!(
        after,
        (before..i).collect::<Vec<_>>(),
        "every record after the rm, in order"
    );
    assert!(rotated_files(&live).len() > 1, "rotation went on");
}

#[test]
fn a_rotation_that_cannot_rename_keeps_writing_to_the_live_file() {
    let dir = tempfile::tempdir().unwrap();
    // 244 bytes fit in a file name; the rotated name adds `.<stamp>.<n>` and goes past the
    // 255-byte limit, so every rename fails (ENAMETOOLONG) — as a full or read-only
    // directory would make it fail.
    let live = dir.path().join(format!("{}.log", "r".repeat(240)));
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(1_000);
    let (log, _sink) = file_logger("norename", options);
    for i in 0..200u64 {
        log.info("over the limit", &[field("i", i)]);
    }
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.failed), (200, 0), "{stats:?}");
    assert_eq!(seqs(&live), (0..200).collect::<Vec<_>>());
    // No record failed, but the failed rotations are counted.
    let metrics = keel_metrics::MetricsService::global();
    let series = format!(
        "{}_log_rotation_errors_total{{sink=\"norename\"}}",
        metrics.namespace()
    );
    let rendered = metrics.render();
    assert!(
        keel_testkit::prometheus::sample(&rendered, &series).is_some_and(|n| n >= 1.0),
        "{rendered}"
    );
}

#[test]
fn a_failed_reopen_is_retried_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("logs");
    let live = sub.join("retry.log");
    let (log, sink) = file_logger("retry", FileOptions::new(&live));
    log.info("first", &[field("i", 0u64)]);
    log.flush(Duration::from_secs(5));
    // logrotate moved the directory away and something put a file where it was: the reopen
    // fails (ENOTDIR) until that file is gone.
    std::fs::rename(&sub, dir.path().join("logs.1")).unwrap();
    std::fs::write(&sub, b"not a directory").unwrap();
    sink.reopen();
    log.info("lost", &[field("i", 1u64)]);
    let stats = log.flush(Duration::from_secs(5));
    assert_eq!(stats.failed, 1, "{stats:?}");
    std::fs::remove_file(&sub).unwrap();
    // Retried with backoff: a record logged now is written once the retry succeeds.
    let mut i = 2u64;
    wait_for("the reopen to be retried", Duration::from_secs(30), || {
        log.info("after", &[field("i", i)]);
        i += 1;
        log.flush(Duration::from_secs(5));
        !seqs(&live).is_empty()
    });
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!(given(stats), i, "{stats:?}");
    let after = seqs(&live);
    assert_eq!(stats.written, 1 + after.len() as u64, "{stats:?}");
    assert_eq!(*after.last().unwrap(), i - 1);
}

#[test]
fn write_errors_count_as_failed_not_written() {
    let (log, _sink) = file_logger("full", FileOptions::new("/dev/full"));
    for i in 0..10u64 {
        log.info("no space", &[field("i", i)]);
    }
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.failed, stats.dropped), (0, 10, 0));
    let metrics = keel_metrics::MetricsService::global();
    let series = format!(
        "{}_log_write_errors_total{{sink=\"full\"}}",
        metrics.namespace()
    );
    assert_eq!(
        keel_testkit::prometheus::sample(&metrics.render(), &series),
        Some(10.0),
        "{}",
        metrics.render()
    );
}

/// Run as a child by `write_errors_are_reported_on_stderr_once_per_episode`: 50 records to
/// `/dev/full`, each flushed on its own (50 failures in one episode).
#[test]
fn child_writes_to_a_full_device() {
    if std::env::var_os("KEEL_DURABILITY_FULL").is_none() {
        return;
    }
    let (log, _sink) = file_logger("episode", FileOptions::new("/dev/full"));
    for i in 0..50u64 {
        log.info("no space", &[field("i", i)]);
        log.flush(Duration::from_secs(5));
    }
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!(stats.failed, 50);
}

#[test]
fn write_errors_are_reported_on_stderr_once_per_episode() {
    let out = child_test("child_writes_to_a_full_device")
        .env("KEEL_DURABILITY_FULL", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let reports: Vec<&str> = err.lines().filter(|l| l.contains("cannot write")).collect();
    assert_eq!(reports.len(), 1, "{err}");
    assert!(
        reports[0].contains("\"episode\""),
        "names the sink: {}",
        reports[0]
    );
}

#[test]
fn records_racing_a_shutdown_are_all_counted() {
    for round in 0..5 {
        let buf = SharedBuffer::default();
        let sink = QueueSink::start(
            "race",
            100_000,
            Overflow::Block,
            Box::new(JsonFormat),
            buf.clone(),
        )
        .unwrap();
        let log = Logger::new("race", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
        let sent = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (log, sent) = (log.clone(), sent.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        log.info("racing", &[field("i", i)]);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while sent.load(Ordering::Relaxed) < 2_000 {
            std::thread::yield_now();
        }
        log.shutdown(Duration::from_secs(10));
        for t in threads {
            t.join().unwrap();
        }
        let stats = log.shutdown(Duration::from_secs(10));
        assert_eq!(given(stats), 80_000, "round {round}: {stats:?}");
        assert_eq!(
            stats.written,
            buf.json_lines().len() as u64,
            "round {round}"
        );
    }
}

/// The rotated files' names and every line across them, oldest first, then the live file.
fn kept(live: &Path) -> (Vec<String>, Vec<u64>) {
    let mut files = rotated_files(live);
    let names = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.push(live.to_owned());
    (names, files.iter().flat_map(|f| seqs(f)).collect())
}

fn assert_newest_kept(live: &Path, total: u64, keep: usize) {
    let (names, lines) = kept(live);
    assert_eq!(names.len(), keep, "{names:?}");
    assert_eq!(*lines.last().unwrap(), total - 1, "{names:?}");
    assert!(
        lines.windows(2).all(|w| w[1] == w[0] + 1),
        "what is kept is the newest, contiguous: {names:?} {lines:?}"
    );
}

#[test]
fn retention_with_a_dotted_stem_keeps_the_newest_files() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("my.app.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(300);
    options.keep_files = Some(3);
    let (log, _sink) = file_logger("dotted", options);
    for i in 0..200u64 {
        log.info("x", &[field("i", i)]);
    }
    log.shutdown(Duration::from_secs(10));
    wait_for("retention", Duration::from_secs(30), || {
        rotated_files(&live).len() <= 3
    });
    assert_newest_kept(&live, 200, 3);
}

/// Two size-rotated sinks with retention in one directory, named `first` and `second`,
/// keeping 2 and 4 rotated files: each keeps exactly its own newest files.
fn two_sinks_keep_their_own_files(first: &str, second: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join(first), dir.path().join(second));
    let mut a = FileOptions::new(&a_path);
    a.max_bytes = Some(300);
    a.keep_files = Some(2);
    let mut b = FileOptions::new(&b_path);
    b.max_bytes = Some(300);
    b.keep_files = Some(4);
    let (la, _sa) = file_logger("a", a);
    let (lb, _sb) = file_logger("b", b);
    for i in 0..100u64 {
        la.info("x", &[field("i", i)]);
        lb.info("x", &[field("i", i)]);
    }
    la.shutdown(Duration::from_secs(10));
    lb.shutdown(Duration::from_secs(10));
    let on_disk = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("app.2"))
            .count()
    };
    wait_for("retention", Duration::from_secs(30), || on_disk() == 2 + 4);
    assert_newest_kept(&a_path, 100, 2);
    assert_newest_kept(&b_path, 100, 4);
    let (a_names, _) = kept(&a_path);
    let (b_names, _) = kept(&b_path);
    assert!(
        a_names.iter().all(|n| !b_names.contains(n)),
        "{a_names:?} {b_names:?}"
    );
}

#[test]
fn two_sinks_in_one_directory_do_not_prune_each_other() {
    two_sinks_keep_their_own_files("app.log", "app.json");
}

#[test]
fn a_sink_without_an_extension_and_one_with_do_not_prune_each_other() {
    two_sinks_keep_their_own_files("app", "app.log");
}

#[test]
fn a_clock_stepped_back_does_not_make_new_files_look_old() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("app.log");
    // Files rotated before the clock was stepped back (from "the future").
    for (n, i) in [(0, 0u64), (1, 1)] {
        std::fs::write(
            dir.path().join(format!("app.20991231T235959.{n}.log")),
            format!("{{\"i\":{i}}}\n"),
        )
        .unwrap();
    }
    std::fs::write(&live, "{\"i\":2}\n").unwrap();
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(300);
    options.keep_files = Some(2);
    let (log, _sink) = file_logger("stepped", options);
    for i in 3..200u64 {
        log.info("x", &[field("i", i)]);
    }
    log.shutdown(Duration::from_secs(10));
    wait_for("retention", Duration::from_secs(30), || {
        rotated_files(&live).len() <= 2
    });
    assert_newest_kept(&live, 200, 2);
}

#[test]
fn fatal_with_a_stalled_writer_returns_within_its_bound_and_flushes_every_global_logger() {
    let dir = tempfile::tempdir().unwrap();
    // Another logger of the process, registered globally, with a record in its buffer.
    let other_file = dir.path().join("other.log");
    let (other, _other_sink) = file_logger("other", FileOptions::new(&other_file));
    keel_log::global().register(other.clone()).unwrap();
    other.info("the other logger's record", &[field("i", 7u64)]);

    // The dying logger's writer is stalled with a full queue.
    let (log, buf) = stalled_logger("dying", 1);
    let gate = buf.gate.lock().unwrap();
    fill_queue(&log, &buf);
    // The bound is 5 s; a blocked send would never return.
    let seen = fatal_sees(&log, move || seqs(&other_file));
    assert_eq!(seen, vec![7], "fatal flushed the other global logger first");
    drop(gate);
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!(given(stats), 3, "the fatal record is counted: {stats:?}");
    keel_log::global().close_all(Duration::from_secs(5));
}

#[test]
fn close_all_and_flush_bound_the_whole_call() {
    let m = Manager::with_drop_timeout(Duration::ZERO);
    let names = ["s1", "s2", "s3", "s4"];
    let mut bufs = Vec::new();
    let mut gates = Vec::new();
    for name in names {
        let (log, buf) = stalled_logger(name, 10);
        m.register(log.clone()).unwrap();
        bufs.push(buf);
    }
    for buf in &bufs {
        gates.push(buf.gate.lock().unwrap());
    }
    for name in names {
        let log = m.get(name).unwrap();
        log.info("stalls", &[]);
        log.info("queued", &[]);
    }
    let started = Instant::now();
    let flushed = m.flush_all(Duration::from_millis(500));
    // "stalls" is held by the writer, "queued" waits behind it: neither is counted elsewhere.
    assert!(
        flushed.values().all(|s| s.pending == 2 && given(*s) == 0),
        "{flushed:?}"
    );
    let started_close = Instant::now();
    let closed = m.close_all(Duration::from_millis(500));
    // Four loggers given 0.5 s each would take 2 s.
    assert!(
        started_close.elapsed() < Duration::from_millis(1_500),
        "close_all took {:?}",
        started_close.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(closed.len(), 4);
    assert!(
        closed.values().all(|s| s.pending == 2 && given(*s) == 0),
        "{closed:?}"
    );
    drop(gates);
}

#[test]
fn an_unbounded_timeout_does_not_panic() {
    let (log, buf) = stalled_logger("forever", 10);
    log.info("x", &[]);
    assert_eq!(log.flush(Duration::MAX).written, 1);
    let m = Manager::new();
    m.register(log.clone()).unwrap();
    assert_eq!(m.flush_all(Duration::MAX)["forever"].written, 1);
    assert_eq!(m.close_all(Duration::MAX)["forever"].written, 1);
    assert_eq!(buf.json_lines().len(), 1);
}

#[test]
fn flush_all_and_close_all_reach_every_logger_when_one_is_stuck() {
    let m = Manager::with_drop_timeout(Duration::ZERO);
    // Ordered by name: the stuck logger comes first.
    let (stuck, stuck_buf) = stalled_logger("a-stuck", 10);
    m.register(stuck.clone()).unwrap();
    let gate = stuck_buf.gate.lock().unwrap();
    stuck.info("stalls", &[]);
    stuck.info("queued", &[]);
    let (busy, writer, stop) = busy_logger("b-busy");
    m.register(busy).unwrap();
    assert!(!marked_flushed(&writer));
    let flushed = m.flush_all(Duration::from_secs(3));
    assert!(flushed["a-stuck"].pending > 0, "{flushed:?}");
    assert!(
        marked_flushed(&writer),
        "flush_all flushed the busy logger: {flushed:?}"
    );
    let closed = m.close_all(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(closed["b-busy"].pending, 0, "{closed:?}");
    assert!(closed["a-stuck"].pending > 0, "{closed:?}");
    drop(gate);
}

#[test]
fn pending_counts_records_not_control_messages() {
    let (log, buf) = stalled_logger("pending", 10);
    let gate = buf.gate.lock().unwrap();
    for _ in 0..3 {
        log.info("x", &[]);
    }
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    // Each timed-out flush leaves its control message queued; neither is a record.
    for round in 0..3 {
        let stats = log.flush(Duration::from_millis(100));
        assert_eq!(given(stats) + stats.pending, 3, "round {round}: {stats:?}");
    }
    drop(gate);
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.pending), (3, 0), "{stats:?}");
}

#[test]
fn shutdown_waits_for_the_compressor_and_leaves_no_partial_gz() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("big.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(16 * 1024 * 1024);
    options.compress = true;
    let (log, _sink) = file_logger("big", options);
    // Incompressible-looking payloads: about 20 MiB, one rotation, gzipped at shutdown.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = String::new();
    let total = 5_000u64;
    for i in 0..total {
        noise.clear();
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push_str(&format!("{:016x}", x));
        }
        log.info("big", &[field("i", i), field("noise", noise.clone())]);
    }
    let stats = log.shutdown(Duration::from_secs(120));
    assert_eq!(stats.written, total, "{stats:?}");
    // Right after shutdown: every rotated file is a whole `.gz`, no plain twin, no temp file.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let rotated = rotated_files(&live);
    assert_eq!(rotated.len(), 1, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n == "big.log" || n.ends_with(".log.gz")),
        "{names:?}"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&rotated[0]).unwrap())
        .read_to_string(&mut text)
        .expect("a whole gzip stream");
    text.push_str(&std::fs::read_to_string(&live).unwrap());
    assert_eq!(seqs_in(&text), (0..total).collect::<Vec<_>>());
}

/// Run as a child (under strace) by `sync_covers_bytes_written_before_a_rotation_or_reopen`:
/// a burst of records with `sync = true` across many size rotations and reopens.
#[test]
fn child_logs_with_sync_across_rotations() {
    let Some(path) = std::env::var_os("KEEL_DURABILITY_SYNC") else {
        return;
    };
    let mut options = FileOptions::new(PathBuf::from(path));
    options.max_bytes = Some(4_000);
    options.flush = FlushPolicy::every(Duration::from_secs(3600)).with_sync(true);
    let (log, sink) = file_logger("synced", options);
    for i in 0..2_000u64 {
        log.info("synced", &[field("i", i)]);
        if i.is_multiple_of(150) {
            sink.reopen();
        }
    }
    let stats = log.shutdown(Duration::from_secs(60));
    assert_eq!(stats.written, 2_000);
}

#[test]
fn sync_covers_bytes_written_before_a_rotation_or_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("synced.log");
    let trace = dir.path().join("trace");
    let child = child_test("child_logs_with_sync_across_rotations");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "0", "-e"])
        .arg("trace=write,fdatasync,fsync,rename,renameat,renameat2,close")
        .arg("-o")
        .arg(&trace)
        .arg(child.get_program())
        .args(child.get_args())
        .env("KEEL_DURABILITY_SYNC", &live)
        .stdout(Stdio::null())
        .status()
        .expect("strace is installed (scripts/test.sh installs it)");
    assert!(status.success());
    // Per file descriptor of the live file: bytes written since its last fdatasync.
    let live_name = format!("<{}>", live.display());
    let mut dirty = std::collections::HashMap::<String, bool>::new();
    let (mut renames, mut closes) = (0, 0);
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        // `<pid> <call>`, the pid padded with spaces.
        let Some((_pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let fd = |name: &str| {
            call.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('('))
                .and_then(|rest| rest.split_once(live_name.as_str()))
                .map(|(fd, _)| fd.to_owned())
        };
        if let Some(fd) = fd("write") {
            dirty.insert(fd, true);
        } else if let Some(fd) = fd("fdatasync").or_else(|| fd("fsync")) {
            dirty.insert(fd, false);
        } else if let Some(fd) = fd("close") {
            closes += 1;
            assert!(
                !dirty.remove(&fd).unwrap_or(false),
                "closed unsynced: {line}"
            );
        } else if call.starts_with("rename") && call.contains(&format!("{}\", ", live.display())) {
            renames += 1;
            assert!(
                dirty.values().all(|d| !d),
                "renamed with unsynced bytes: {line}"
            );
        }
    }
    assert!(
        renames > 3 && closes > 0,
        "{renames} rotations, {closes} closes"
    );
}

/// JSON taking 20 ms per record, announcing on stdout (`TAKEN <n>`) every 10th record the
/// writer has taken: a writer far slower than its caller, so the queue never drains, that
/// writes under 5 KB/s — it would take over ten seconds to fill the 64 KiB buffer, so only
/// the timed flush can put a record on disk sooner.
struct SlowJson(AtomicU64);

impl keel_log::Format for SlowJson {
    fn format(&self, record: &keel_log::Record, out: &mut Vec<u8>) {
        std::thread::sleep(Duration::from_millis(20));
        JsonFormat.format(record, out);
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(10) {
            println!("TAKEN {n}");
        }
    }
}

/// Run as a child by `a_sigkilled_process_under_load_keeps_what_is_older_than_the_interval`:
/// logs non-stop into a long queue (flush interval 200 ms) through [`SlowJson`].
#[test]
fn child_logs_non_stop() {
    let Some(path) = std::env::var_os("KEEL_DURABILITY_LOAD") else {
        return;
    };
    let mut options = FileOptions::new(PathBuf::from(path));
    options.flush = FlushPolicy::every(Duration::from_millis(200));
    let format = Box::new(SlowJson(AtomicU64::new(0)));
    let sink = FileSink::start("load", options, 10_000, Overflow::Block, format).unwrap();
    let log = Logger::new("load", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    for i in 0u64.. {
        log.info("under load", &[field("i", i)]);
    }
}

#[test]
fn a_sigkilled_process_under_load_keeps_what_is_older_than_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("load.log");
    let mut child = child_test("child_logs_non_stop")
        .env("KEEL_DURABILITY_LOAD", &live)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(i) = line.strip_prefix("TAKEN ") {
                let _ = tx.send((Instant::now(), i.parse::<u64>().unwrap()));
            }
        }
    });
    let (first, _) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child logs");
    std::thread::sleep(Duration::from_secs(6).saturating_sub(first.elapsed()));
    child.kill().unwrap(); // SIGKILL: no destructor, no final flush
    let killed = Instant::now();
    child.wait().unwrap();
    // Taken by the writer more than one interval (200 ms) plus a generous slack (a slow
    // machine) before the kill: on disk. The buffer never fills in that time, so only the
    // timed flush can have written them.
    let old_enough = rx
        .try_iter()
        .chain([(first, 0)])
        .filter(|(at, _)| killed.duration_since(*at) > Duration::from_millis(200 + 1_800))
        .map(|(_, i)| i)
        .max()
        .unwrap_or(0);
    let text = std::fs::read_to_string(&live).unwrap();
    // The kill may cut the last write short: every whole line counts.
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let seen = seqs_in(whole);
    assert!(
        seen.iter().enumerate().all(|(n, i)| n as u64 == *i),
        "in order, nothing missing"
    );
    assert!(
        seen.len() as u64 > old_enough,
        "{} records on disk, #{old_enough} taken by the writer long before the kill",
        seen.len()
    );
}

/// The `sampled` counts of the in-band reports in `buf`.
fn reported_sampled(buf: &SharedBuffer) -> u64 {
    buf.json_lines()
        .iter()
        .filter(|l| l["sampled"].is_u64())
        .map(|l| l["sampled"].as_u64().unwrap())
        .sum()
}

#[test]
fn flush_all_and_close_all_report_what_was_sampled_away() {
    let metrics = keel_metrics::MetricsService::new("cs").unwrap();
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(
        "closed-storm",
        100_000,
        Overflow::Block,
        Box::new(JsonFormat),
        buf.clone(),
    )
    .unwrap();
    let log = Logger::with_metrics(
        "closed-storm",
        Level::Info,
        vec![Arc::new(sink) as Arc<dyn Sink>],
        &metrics,
    );
    log.set_sampling(Some(Sampling::new(Duration::from_secs(3600), 10, 100)));
    let m = Manager::with_drop_timeout(Duration::ZERO);
    m.register(log.clone()).unwrap();
    let storm = |n: u64| {
        for i in 0..n {
            log.error("connection refused", &[field("i", i)]);
            log.warn("slow replica", &[field("i", i)]);
        }
    };
    storm(1000);
    assert_eq!(m.flush_all(LONG)["closed-storm"].pending, 0);
    // Per message: the first 10, then every 100th of the rest (110, 210, … 910).
    assert_eq!(reported_sampled(&buf), 2 * (1000 - 19));
    storm(500);
    let closed = m.close_all(LONG);
    assert_eq!(closed["closed-storm"].pending, 0, "{closed:?}");
    // The tick has not ended: 500 more records each, of which 5 pass (1010, 1110, … 1410).
    let sampled = 2 * (1000 - 19) + 2 * (500 - 5);
    assert_eq!(
        reported_sampled(&buf),
        sampled,
        "every sampled record reported"
    );
    let text = metrics.render();
    for level in ["ERROR", "WARN"] {
        assert!(
            text.contains(&format!(
                "cs_log_sampled_total{{logger=\"closed-storm\",level=\"{level}\"}} {}",
                sampled / 2
            )),
            "{text}"
        );
    }
}

#[test]
fn sampling_reports_do_not_hold_shutdown_past_its_bound() {
    let (log, buf) = stalled_logger("sampled-stuck", 1);
    log.set_sampling(Some(Sampling::new(Duration::from_secs(3600), 1, 0)));
    let gate = buf.gate.lock().unwrap();
    // The first of each message passes: one stalls the writer, one fills the queue.
    log.info("storm a", &[]);
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    log.info("storm b", &[]);
    // The rest are sampled away: two reports are owed.
    for _ in 0..5 {
        log.info("storm a", &[]);
        log.info("storm b", &[]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let closing = log.clone();
    std::thread::spawn(move || {
        let _ = tx.send(closing.shutdown(Duration::from_millis(500)));
    });
    let stats = rx
        .recv_timeout(LONG)
        .expect("shutdown returned within its bound despite the stalled writer");
    drop(gate);
    // The two reports found no room and are counted as dropped; the records stay pending.
    assert_eq!(stats.dropped, 2, "{stats:?}");
    assert_eq!(stats.written + stats.pending, 2, "{stats:?}");
}
