//! The panic hook with a stalled writer: one test per process, because the hook is
//! process-global.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_log::{JsonFormat, Level, Logger, Overflow, QueueSink, Sink};
use keel_testkit::writer::SharedBuffer;

#[test]
fn a_panic_with_a_stalled_writer_is_reported_within_the_bound() {
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(
        "stalled",
        1,
        Overflow::Block,
        Box::new(JsonFormat),
        buf.clone(),
    )
    .unwrap();
    let log = Logger::new("svc", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    keel_log::global().register(log.clone()).unwrap();
    keel_log::global().set_default("svc").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    std::panic::set_hook(Box::new(move |_| {
        let _ = tx.lock().unwrap().send(());
    }));
    keel_log::install_panic_hook();

    // The writer is stuck inside a write and the one-slot queue is full.
    let gate = buf.gate.lock().unwrap();
    log.info("stalls the writer", &[]);
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    log.info("fills the queue", &[]);

    let started = Instant::now();
    std::thread::spawn(|| panic!("while the writer is stuck"));
    // The hook's bound is FLUSH_ON_EXIT (5 s) in total; a blocking send never returns.
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        // keel-log's hook is stuck, and a panic here would run into it (the hook lock is held
        // by the stuck thread): fail the whole test process instead.
        eprintln!("FAILED: the previous hook never ran: keel-log's part of the hook blocked");
        std::process::exit(101);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(gate);
    let stats = keel_log::global().close_all(Duration::from_secs(5));
    let s = stats["svc"];
    assert_eq!(
        s.written + s.dropped + s.failed,
        3,
        "the panic record is counted, written or dropped: {s:?}"
    );
}
