//! Loggers in the states the exit-path tests need, shared by the test binaries that declare
//! `mod support;`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_log::{FlushPolicy, JsonFormat, Level, Logger, Overflow, QueueSink, Sink, field};
use keel_testkit::writer::{FlushGated, SharedBuffer};

/// A logger over a `capacity`-record queue whose writer stalls while the buffer's gate is
/// held.
pub fn stalled_logger(name: &'static str, capacity: usize) -> (Logger, SharedBuffer) {
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(
        name,
        capacity,
        Overflow::Block,
        Box::new(JsonFormat),
        buf.clone(),
    )
    .unwrap();
    (
        Logger::new(name, Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]),
        buf,
    )
}

/// A logger whose writer is slower than its callers (its queue never drains) and flushes on
/// its own only every hour, with one marked record (`i` = 7) in its buffer and a thread that
/// keeps it busy until the returned flag is set.
pub fn busy_logger(name: &'static str) -> (Logger, FlushGated, Arc<AtomicBool>) {
    let writer = FlushGated::slow(Duration::from_millis(1));
    let sink = QueueSink::start_with_flush(
        name,
        100,
        Overflow::Block,
        FlushPolicy::every(Duration::from_secs(3600)),
        Box::new(JsonFormat),
        writer.clone(),
    )
    .unwrap();
    let log = Logger::new(name, Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    // A full queue ahead of the marked record and a feeder keeping it full: the queue never
    // drains (which would flush), even if a loaded machine leaves the feeder unscheduled for
    // a while (the writer needs 1 ms per record, so about 100 ms to get through the queue).
    for _ in 0..100 {
        log.info("busy", &[field("i", 0u64)]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (feeder, flag) = (log.clone(), stop.clone());
    std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            feeder.info("busy", &[field("i", 0u64)]);
        }
    });
    log.info("marked", &[field("i", 7u64)]);
    (log, writer, stop)
}

/// Whether the marked record of a [`busy_logger`] was flushed.
pub fn marked_flushed(writer: &FlushGated) -> bool {
    writer.published().contains("\"i\":7")
}

/// Fills the queue of a `stalled_logger(_, 1)` whose gate the caller holds: one record held
/// by the writer, one queued behind it.
pub fn fill_queue(log: &Logger, buf: &SharedBuffer) {
    log.info("stalls the writer", &[]);
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    log.info("fills the queue", &[]);
}

/// Calls `log.fatal` on another thread with a fatal hook that runs `check`, and returns what
/// `check` saw; fails unless the hook ran within a generous bound (the exit bound is 5 s).
pub fn fatal_sees<T: Send + 'static>(
    log: &Logger,
    check: impl Fn() -> T + Send + Sync + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    keel_log::set_fatal_hook(move || {
        let _ = tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(check());
    });
    let started = std::time::Instant::now();
    let dying = log.clone();
    std::thread::spawn(move || dying.fatal("cannot go on", &[]));
    let seen = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("fatal returned to its hook");
    assert!(started.elapsed() < Duration::from_secs(20));
    seen
}
