//! The panic hook installer: one test per process, because the hook is process-global.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_log::{FileOptions, FileSink, JsonFormat, Level, Logger, Overflow, Sink};

#[test]
fn panic_is_logged_flushed_and_passed_to_the_previous_hook() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("panic.log");
    let sink = FileSink::start(
        "panic:file",
        FileOptions::new(&live),
        100,
        Overflow::Block,
        Box::new(JsonFormat),
    )
    .unwrap();
    let log = Logger::new("svc", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    keel_log::global().register(log.clone()).unwrap();
    keel_log::global().set_default("svc").unwrap();

    static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
    std::panic::set_hook(Box::new(|_| {
        PREVIOUS.fetch_add(1, Ordering::SeqCst);
    }));
    keel_log::install_panic_hook();
    keel_log::install_panic_hook();

    // Stays in the file sink's buffer unless something flushes it.
    log.info("before the panic", &[]);
    let line = line!() + 3;
    let joined = std::thread::Builder::new()
        .name("doomed".into())
        .spawn(|| panic!("boom {}", 42))
        .unwrap()
        .join();
    assert!(joined.is_err());
    assert_eq!(
        PREVIOUS.load(Ordering::SeqCst),
        1,
        "the previous hook runs once"
    );

    // No flush here: the hook must already have written everything to the file.
    let text = std::fs::read_to_string(&live).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["message"], "before the panic");
    let panic = &records[1];
    assert_eq!(panic["level"], "ERROR");
    assert_eq!(panic["logger"], "svc");
    assert_eq!(panic["message"], "panic: boom 42");
    assert_eq!(panic["thread"], "doomed");
    let location = panic["location"].as_str().unwrap();
    assert!(
        location.starts_with(&format!("crates/keel-log/tests/panic_hook.rs:{line}:"))
            || location.starts_with(&format!("tests/panic_hook.rs:{line}:")),
        "{location}"
    );
    keel_log::global().close_all(std::time::Duration::from_secs(5));
}
