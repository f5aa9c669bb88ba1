//! `fatal` with one stuck logger still flushes every other global logger: its own binary,
//! because the fatal hook and the global manager are process-wide.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{busy_logger, marked_flushed, stalled_logger};

#[test]
fn fatal_with_a_full_queue_still_flushes_a_busy_global_logger() {
    // Another global logger whose record is still in its writer's buffer.
    let (other, busy, stop) = busy_logger("busy");
    keel_log::global().register(other).unwrap();

    // The dying logger's writer is stalled and its queue is full.
    let (log, buf) = stalled_logger("dying", 1);
    let gate = buf.gate.lock().unwrap();
    log.info("stalls the writer", &[]);
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    log.info("fills the queue", &[]);
    assert!(
        !marked_flushed(&busy),
        "the busy logger's record is not flushed yet"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let seen = busy.clone();
    keel_log::set_fatal_hook(move || {
        let _ = tx.send(marked_flushed(&seen));
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
    keel_log::global().close_all(Duration::from_secs(10));
}
