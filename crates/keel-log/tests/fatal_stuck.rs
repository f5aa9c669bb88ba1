//! `fatal` with one stuck logger still flushes every other global logger: its own binary,
//! because the fatal hook and the global manager are process-wide.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{busy_logger, fatal_sees, fill_queue, marked_flushed, stalled_logger};

#[test]
fn fatal_with_a_full_queue_still_flushes_a_busy_global_logger() {
    // Another global logger whose record is still in its writer's buffer.
    let (other, busy, stop) = busy_logger("busy");
    keel_log::global().register(other).unwrap();

    // The dying logger's writer is stalled and its queue is full.
    let (log, buf) = stalled_logger("dying", 1);
    let gate = buf.gate.lock().unwrap();
    fill_queue(&log, &buf);
    assert!(
        !marked_flushed(&busy),
        "the busy logger's record is not flushed yet"
    );
    let seen = busy.clone();
    assert!(
        fatal_sees(&log, move || marked_flushed(&seen)),
        "fatal flushed the busy global logger although the dying one was stuck"
    );
    stop.store(true, Ordering::Relaxed);
    drop(gate);
    keel_log::global().close_all(Duration::from_secs(10));
}
