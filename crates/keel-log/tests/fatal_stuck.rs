//! `fatal` with one stuck logger still flushes every other global logger: its own binary,
//! because the fatal hook and the global manager are process-wide.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_log::{FlushPolicy, JsonFormat, Level, Logger, Overflow, QueueSink, Sink, field};
use keel_testkit::writer::{FlushGated, SharedBuffer};

#[test]
fn fatal_with_a_full_queue_still_flushes_a_busy_global_logger() {
    // Another global logger whose record is still in its writer's buffer: the writer is kept
    // busy (its queue never drains) and flushes on its own only every hour.
    let busy = FlushGated::slow(Duration::from_millis(1));
    let sink = QueueSink::start_with_flush(
        "busy",
        100,
        Overflow::Block,
        FlushPolicy::every(Duration::from_secs(3600)),
        Box::new(JsonFormat),
        busy.clone(),
    )
    .unwrap();
    let other = Logger::new("busy", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    keel_log::global().register(other.clone()).unwrap();
    other.info("the record fatal must flush", &[field("i", 7u64)]);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (other, stop) = (other.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                other.info("keeps the writer busy", &[field("i", 0u64)]);
            }
        })
    };

    // The dying logger's writer is stalled and its queue is full.
    let buf = SharedBuffer::default();
    let stalled = QueueSink::start(
        "stalled",
        1,
        Overflow::Block,
        Box::new(JsonFormat),
        buf.clone(),
    )
    .unwrap();
    let log = Logger::new(
        "dying",
        Level::Info,
        vec![Arc::new(stalled) as Arc<dyn Sink>],
    );
    let gate = buf.gate.lock().unwrap();
    log.info("stalls the writer", &[]);
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    log.info("fills the queue", &[]);
    assert!(
        !busy.published().contains("\"i\":7"),
        "the busy logger's record is not flushed yet"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let seen = busy.clone();
    keel_log::set_fatal_hook(move || {
        let _ = tx.send(seen.published().contains("\"i\":7"));
    });
    let started = Instant::now();
    let dying = log.clone();
    std::thread::spawn(move || dying.fatal("cannot go on", &[]));
    let flushed = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("fatal returned to its hook");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        flushed,
        "fatal flushed the busy global logger although the dying one was stuck"
    );
    stop.store(true, Ordering::Relaxed);
    drop(gate);
    feeder.join().unwrap();
    keel_log::global().close_all(Duration::from_secs(10));
}
