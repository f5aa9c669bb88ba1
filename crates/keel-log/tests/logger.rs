//! Loggers, children, levels, queue sinks (overflow, flush, shutdown), Fatal and the manager.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_log::{
    Error, JsonFormat, Level, LogConfig, Logger, Manager, Overflow, QueueSink, Sink, TextFormat,
    field, set_fatal_hook,
};
use keel_testkit::writer::{FlushGated, SharedBuffer};

fn json_logger(
    name: &'static str,
    level: Level,
    capacity: usize,
    policy: Overflow,
) -> (Logger, SharedBuffer) {
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(name, capacity, policy, Box::new(JsonFormat), buf.clone()).unwrap();
    (
        Logger::new(name, level, vec![Arc::new(sink) as Arc<dyn Sink>]),
        buf,
    )
}

#[test]
fn levels_filter_and_change_at_runtime() {
    let (log, buf) = json_logger("app", Level::Info, 100, Overflow::Block);
    log.debug("hidden", &[]);
    log.info("shown", &[]);
    log.set_level(Level::Debug);
    log.debug("now shown", &[]);
    log.set_level(Level::Error);
    log.warn("hidden again", &[]);
    log.flush(Duration::from_secs(5));
    let messages: Vec<String> = buf
        .json_lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(messages, ["shown", "now shown"]);
}

#[test]
fn every_sink_of_a_logger_gets_its_own_copy_of_each_record() {
    let (json, text) = (SharedBuffer::default(), SharedBuffer::default());
    let sinks: Vec<Arc<dyn Sink>> = vec![
        Arc::new(
            QueueSink::start("a", 10, Overflow::Block, Box::new(JsonFormat), json.clone()).unwrap(),
        ),
        Arc::new(
            QueueSink::start(
                "b",
                10,
                Overflow::Block,
                Box::new(TextFormat::default()),
                text.clone(),
            )
            .unwrap(),
        ),
    ];
    let log = Logger::new(String::from("multi"), Level::Info, sinks);
    let child = log.with_field(field("conn", 9));
    for i in 0..5 {
        child.info(
            format!("record {i}"),
            &[field("seq", i), field("peer", String::from("10.0.0.1"))],
        );
    }
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.dropped, stats.failed), (10, 0, 0));
    let lines = json.json_lines();
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["logger"], "multi");
        assert_eq!(line["message"], format!("record {i}"));
        assert_eq!(
            (line["conn"].as_i64(), line["seq"].as_i64()),
            (Some(9), Some(i as i64))
        );
        assert_eq!(line["peer"], "10.0.0.1");
    }
    let text = text.text();
    assert_eq!(text.lines().count(), 5);
    for i in 0..5 {
        assert!(
            text.contains(&format!("multi: record {i} conn=9 seq={i} peer=10.0.0.1")),
            "{text}"
        );
    }
}

#[test]
fn children_share_sinks_and_bind_fields_in_order() {
    let (log, buf) = json_logger("app", Level::Debug, 100, Overflow::Block);
    let user = log.with_fields(&[field("user_id", "123"), field("session_id", "abc")]);
    let req = user.with_field(field("request", 7));
    req.info(
        "user logged in",
        &[field("request", 8), field("password", "hunter2")],
    );
    log.set_level(Level::Error);
    req.info("filtered by the parent's level", &[]);
    let stats = log.flush(Duration::from_secs(5));
    assert_eq!(stats.written, 1);
    let line = &buf.json_lines()[0];
    assert_eq!(line["user_id"], "123");
    assert_eq!(line["session_id"], "abc");
    assert_eq!(line["request"], 8, "call fields override bound ones");
    assert_eq!(line["password"], "[REDACTED]");
    assert_eq!(line["logger"], "app");
}

#[test]
fn drop_newest_counts_exactly_and_reports_in_band() {
    let (log, buf) = json_logger("busy", Level::Info, 4, Overflow::DropNewest);
    let held = buf.gate.lock().unwrap();
    // The worker takes the first record and blocks on the gate; 4 more fill the queue.
    log.info("r0", &[]);
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    for i in 1..=10 {
        log.info(format!("r{i}"), &[]);
    }
    drop(held);
    let stats = log.flush(Duration::from_secs(5));
    assert_eq!(stats.dropped, 6, "{stats:?}");
    assert_eq!(
        stats.written, 5,
        "the drop report is not counted: {stats:?}"
    );
    let lines = buf.json_lines();
    assert_eq!(lines.len(), 5 + 1, "5 records and one drop report");
    let report = lines
        .iter()
        .find(|l| l["message"] == "6 records dropped")
        .expect("in-band report");
    assert_eq!(report["dropped"], 6);
    assert_eq!(report["level"], "WARN");
}

#[test]
fn block_policy_loses_nothing_and_shutdown_flushes_everything() {
    let (log, buf) = json_logger("steady", Level::Info, 8, Overflow::Block);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..2500 {
                    log.info("m", &[field("t", t), field("i", i)]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = log.shutdown(Duration::from_secs(10));
    assert_eq!(stats.written, 10_000);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.pending, 0);
    let lines = buf.json_lines();
    assert_eq!(lines.len(), 10_000);
    for t in 0..4 {
        let seq: Vec<u64> = lines
            .iter()
            .filter(|l| l["t"] == t)
            .map(|l| l["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seq,
            (0..2500).collect::<Vec<u64>>(),
            "thread {t} in order, none lost"
        );
    }
    log.info("after shutdown", &[]);
    assert_eq!(
        log.flush(Duration::from_millis(100)).dropped,
        1,
        "counted, not hung"
    );
}

#[test]
fn flush_gives_up_at_its_timeout_and_reports_pending() {
    let (log, buf) = json_logger("stuck", Level::Info, 100, Overflow::Block);
    let held = buf.gate.lock().unwrap();
    for _ in 0..5 {
        log.info("x", &[]);
    }
    let stats = log.flush(Duration::from_millis(200));
    assert!(stats.pending > 0, "{stats:?}");
    drop(held);
    assert_eq!(log.flush(Duration::from_secs(5)).written, 5);
}

#[test]
fn fatal_flushes_then_calls_the_hook() {
    let (log, buf) = json_logger("dying", Level::Info, 100, Overflow::Block);
    let called = Arc::new(Mutex::new(0usize));
    let seen = called.clone();
    let buf2 = buf.clone();
    set_fatal_hook(move || {
        // Everything was written before the hook ran.
        *seen.lock().unwrap() = buf2.json_lines().len();
    });
    log.info("first", &[]);
    log.fatal("cannot continue", &[field("reason", "disk gone")]);
    assert_eq!(*called.lock().unwrap(), 2);
}

#[test]
fn text_format_through_a_sink() {
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(
        "t",
        10,
        Overflow::Block,
        Box::new(TextFormat::default()),
        buf.clone(),
    )
    .unwrap();
    let log = Logger::new("smtp", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    log.warn("queue full", &[field("size", 10)]);
    log.flush(Duration::from_secs(5));
    let text = buf.text();
    assert!(
        text.ends_with(" [WARN] smtp: queue full size=10\n"),
        "{text}"
    );
}

#[test]
fn manager_registers_defaults_and_closes() {
    let m = Manager::new();
    let (a, _) = json_logger("a", Level::Info, 10, Overflow::Block);
    m.register(a.clone()).unwrap();
    assert!(matches!(m.register(a), Err(Error::DuplicateName { .. })));
    assert!(matches!(
        m.set_default("nope"),
        Err(Error::UnknownLogger { .. })
    ));
    assert_eq!(m.default_logger().name(), "default");
    assert_eq!(m.names(), vec!["a".to_owned()]);
    m.set_default("a").unwrap();
    assert_eq!(m.default_logger().name(), "a");
    m.get("a").unwrap().info("x", &[]);
    let stats = m.close_all(Duration::from_secs(5));
    assert_eq!(stats["a"].written, 1);
    assert!(m.get("a").is_none());
}

#[test]
fn config_and_factory() {
    let cfg = LogConfig::from_toml(
        "type = \"console\"\nname = \"app-logger\"\nlevel = \"debug\"\nformatter = \"json\"\noutput = \"stderr\"\n[options]\noverflow = \"drop\"\nqueue = 100\n",
    )
    .unwrap();
    let log = keel_log::open(&cfg).unwrap();
    assert_eq!(log.name(), "app-logger");
    assert_eq!(log.level(), Level::Debug);
    log.shutdown(Duration::from_secs(1));
    let err = keel_log::open(&LogConfig::from_json(r#"{"type":"kafka","name":"x"}"#).unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("valid types are: console, file, elastic, elasticsearch, syslog, journald"),
        "{err}"
    );
    let file = keel_log::open(&LogConfig::from_json(r#"{"type":"file","name":"x"}"#).unwrap())
        .unwrap_err();
    assert!(
        matches!(&file, Error::InvalidConfig { field, .. } if field == "options.path"),
        "{file:?}"
    );
    let elastic =
        keel_log::open(&LogConfig::from_json(r#"{"type":"elastic","name":"x"}"#).unwrap())
            .unwrap_err();
    // With the `elastic` feature the sink exists and needs a URL; without it the type is
    // known but not compiled in.
    #[cfg(feature = "elastic")]
    assert!(
        matches!(&elastic, Error::InvalidConfig { field, .. } if field == "options.url"),
        "{elastic:?}"
    );
    #[cfg(not(feature = "elastic"))]
    assert!(
        matches!(&elastic, Error::NotAvailable { feature, .. } if *feature == "elastic"),
        "{elastic:?}"
    );
    let huge = keel_log::open(
        &LogConfig::from_json(r#"{"type":"console","name":"x","options":{"queue":1000001}}"#)
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(&huge, Error::InvalidConfig { field, .. } if field == "options.queue")
            && huge.to_string().contains("1000000"),
        "{huge}"
    );
    let level = LogConfig::from_json(r#"{"type":"console","name":"x","level":"loud"}"#).unwrap();
    assert!(matches!(
        keel_log::open(&level),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        LogConfig::from_toml("type = \"console\"\nname = \"x\"\nlevl = \"info\"\n"),
        Err(Error::Parse(_))
    ));
}

#[test]
fn dropping_a_manager_flushes_its_loggers() {
    let writer = FlushGated::default();
    let sink = QueueSink::start(
        "gated",
        1000,
        Overflow::Block,
        Box::new(JsonFormat),
        writer.clone(),
    )
    .unwrap();
    let log = Logger::new("svc", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    let m = Manager::new();
    m.register(log.clone()).unwrap();
    for i in 0..500 {
        log.info("n", &[field("i", i)]);
    }
    // `log` outlives the manager, so only the manager's drop can have flushed the writer.
    drop(m);
    let text = writer.published();
    let seen: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["i"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seen, (0..500).collect::<Vec<_>>());
    log.info("still usable after the manager is gone", &[]);
    assert_eq!(log.shutdown(Duration::from_secs(5)).written, 501);
}

#[test]
fn dropping_a_manager_gives_up_on_a_stuck_sink_after_its_timeout() {
    let (log, buf) = json_logger("stuck", Level::Info, 10, Overflow::Block);
    let m = Manager::with_drop_timeout(Duration::from_millis(50));
    m.register(log.clone()).unwrap();
    let gate = buf.gate.lock().unwrap();
    log.info("stalls the writer", &[]);
    // Wait until the writer is inside `write`, held at the gate.
    while buf.started() == 0 {
        std::thread::yield_now();
    }
    log.info("queued behind it", &[]);
    // Returns although the writer cannot make progress until the gate opens.
    drop(m);
    let flushed = log.flush(Duration::ZERO);
    assert_eq!(flushed.written, 0, "the writer is still stalled");
    drop(gate);
    let stats = log.shutdown(Duration::from_secs(5));
    assert_eq!((stats.written, stats.pending), (2, 0));
}

#[test]
fn manager_flush_all_reports_each_logger() {
    let m = Manager::new();
    let (a, abuf) = json_logger("a", Level::Info, 10, Overflow::Block);
    let (b, _) = json_logger("b", Level::Info, 10, Overflow::Block);
    m.register(a.clone()).unwrap();
    m.register(b.clone()).unwrap();
    a.info("one", &[]);
    a.info("two", &[]);
    b.info("three", &[]);
    let stats = m.flush_all(Duration::from_secs(5));
    assert_eq!((stats["a"].written, stats["b"].written), (2, 1));
    assert_eq!(abuf.json_lines().len(), 2);
    assert!(m.get("a").is_some(), "flush_all keeps loggers registered");
}

/// `remove` hands the logger back and forgets it (and the default, if it was that one);
/// `names` lists what is registered.
#[test]
fn manager_remove_and_names() {
    let m = Manager::new();
    let (a, _) = json_logger("a", Level::Info, 10, Overflow::Block);
    let (b, _) = json_logger("b", Level::Info, 10, Overflow::Block);
    m.register(a).unwrap();
    m.register(b).unwrap();
    m.set_default("b").unwrap();
    assert_eq!(m.names(), vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(m.remove("b").map(|l| l.name().to_owned()), Some("b".into()));
    assert!(m.remove("b").is_none());
    assert_eq!(m.names(), vec!["a".to_owned()]);
    assert_eq!(
        m.default_logger().name(),
        "default",
        "the removed default is not handed out"
    );
    m.register(json_logger("b", Level::Info, 10, Overflow::Block).0)
        .expect("the name is free again");
}

/// Before any default is set, the default logger writes Info and above to stderr (the
/// original's default logs to the console); it used to discard everything below Error.
/// Checked in a child process, whose stderr the test reads.
#[test]
fn the_default_logger_writes_info_to_stderr_before_any_configuration() {
    if std::env::var_os("KEEL_DEFAULT_LOGGER_CHILD").is_some() {
        let m = Manager::new();
        let log = m.default_logger();
        log.debug("not shown", &[]);
        log.info("started early", &[field("port", 25u64)]);
        let stats = m.flush_all(Duration::from_secs(5));
        assert!(stats.is_empty(), "the fallback is not a registered logger");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_default_logger_writes_info_to_stderr_before_any_configuration",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEEL_DEFAULT_LOGGER_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[INFO] default: started early port=25"),
        "{err}"
    );
    assert!(!err.contains("not shown"), "{err}");
}
