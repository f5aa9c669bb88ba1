//! Operator controls: level directives (own records, `tracing` and `log` bridges), sampling
//! with its metric and in-band reports, and live reload (`Manager::reload`, `Reloader`).
#![cfg(all(feature = "log", feature = "tracing"))]

use std::sync::Arc;
use std::time::Duration;

use keel_log::bridge::{KeelLayer, LogBridge};
use keel_log::{
    Error, JsonFormat, Level, LogConfig, Logger, Manager, Overflow, QueueSink, Reloader, Sampling,
    Sink, field,
};
use keel_metrics::MetricsService;
use keel_testkit::writer::SharedBuffer;
use tracing_subscriber::layer::SubscriberExt;

const LONG: Duration = Duration::from_secs(60);

fn logger(name: &'static str, level: Level, metrics: &MetricsService) -> (Logger, SharedBuffer) {
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(
        name,
        100_000,
        Overflow::Block,
        Box::new(JsonFormat),
        buf.clone(),
    )
    .unwrap();
    (
        Logger::with_metrics(name, level, vec![Arc::new(sink) as Arc<dyn Sink>], metrics),
        buf,
    )
}

fn messages(buf: &SharedBuffer) -> Vec<String> {
    buf.json_lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn directives_filter_own_records_and_tracing_events_by_target() {
    let metrics = MetricsService::new("d").unwrap();
    let (log, buf) = logger("svc", Level::Info, &metrics);
    log.set_filter(
        "warn,keel_cache=debug,smtp::session=trace,noisy=off"
            .parse()
            .unwrap(),
    );
    // The logger's own records: its name is the target (no directive: the default, warn).
    log.info("own info", &[]);
    log.warn("own warn", &[]);
    let subscriber = tracing_subscriber::registry().with(KeelLayer::new(log.clone()));
    tracing::subscriber::with_default(subscriber, || {
        tracing::debug!(target: "keel_cache::redis", "cache debug");
        tracing::debug!(target: "keel_cachex", "not the cache");
        tracing::info!(target: "smtp", "smtp info");
        tracing::trace!(target: "smtp::session", "session trace");
        tracing::error!(target: "noisy::x", "noisy error");
        tracing::warn!(target: "other", "other warn");
    });
    log.flush(LONG);
    assert_eq!(
        messages(&buf),
        ["own warn", "cache debug", "session trace", "other warn"]
    );
    // Runtime change reaches clones and children.
    let child = log.with_field(field("request", 7));
    log.set_filter("svc=debug".parse().unwrap());
    child.debug("child debug", &[]);
    log.set_level(Level::Error);
    child.warn("child warn, now below error", &[]);
    log.flush(LONG);
    assert_eq!(messages(&buf).last().unwrap(), "child debug");
}

#[test]
fn log_bridge_applies_the_receiving_loggers_directives() {
    let metrics = MetricsService::new("b").unwrap();
    let (fallback, fb) = logger("fallback", Level::Info, &metrics);
    let (smtp, sb) = logger("smtp", Level::Info, &metrics);
    smtp.set_filter("info,smtp::session=debug".parse().unwrap());
    fallback.set_filter("info,db=off".parse().unwrap());
    LogBridge::new(fallback.clone())
        .route("smtp", smtp.clone())
        .install()
        .unwrap();
    log::debug!(target: "smtp::queue", "queue debug");
    log::debug!(target: "smtp::session", "session debug");
    log::error!(target: "db::pool", "db error");
    log::info!(target: "app", "app info");
    assert!(!log::log_enabled!(target: "smtp::queue", log::Level::Debug));
    assert!(log::log_enabled!(target: "smtp::session", log::Level::Debug));
    fallback.flush(LONG);
    smtp.flush(LONG);
    assert_eq!(messages(&sb), ["session debug"]);
    assert_eq!(messages(&fb), ["app info"]);
}

#[test]
fn a_storm_is_sampled_counted_and_reported_in_band() {
    let metrics = MetricsService::new("s").unwrap();
    let (log, buf) = logger("storm", Level::Info, &metrics);
    // A tick longer than the test: the counts below do not depend on timing.
    log.set_sampling(Some(Sampling::new(Duration::from_secs(3600), 10, 100)));
    for i in 0..1000 {
        log.error("connection refused", &[field("i", i)]);
        if i % 100 == 0 {
            log.info("heartbeat", &[]);
        }
    }
    assert_eq!(log.flush(LONG).pending, 0);
    let lines = buf.json_lines();
    let storm: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "connection refused")
        .collect();
    // The first 10, then every 100th of the rest (110, 210, … 910).
    assert_eq!(storm.len(), 10 + 9);
    assert_eq!(
        lines.iter().filter(|l| l["message"] == "heartbeat").count(),
        10
    );
    let reported: u64 = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .ends_with("similar records sampled")
        })
        .map(|l| {
            assert_eq!(l["sampled_message"], "connection refused");
            assert_eq!(l["level"], "ERROR");
            let n = l["sampled"].as_u64().unwrap();
            assert_eq!(l["message"], format!("{n} similar records sampled"));
            n
        })
        .sum();
    assert_eq!(reported, 1000 - 19, "every sampled record reported once");
    let text = metrics.render();
    assert!(
        text.contains("s_log_sampled_total{logger=\"storm\",level=\"ERROR\"} 981"),
        "{text}"
    );
    // Off again: nothing is sampled.
    log.set_sampling(None);
    for _ in 0..50 {
        log.error("connection refused", &[]);
    }
    log.flush(LONG);
    let after = buf.json_lines().len() - lines.len();
    assert_eq!(after, 50);
}

fn file_config(dir: &std::path::Path, name: &str, extra: &str) -> LogConfig {
    LogConfig::from_toml(&format!(
        "type = \"file\"\nname = \"{name}\"\nformatter = \"json\"\n{extra}\n[options]\npath = \"{}\"\n",
        dir.join(format!("{name}.log")).display()
    ))
    .unwrap()
}

fn file_lines(dir: &std::path::Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reload_changes_levels_live_without_dropping_records() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::new();
    let report = manager
        .reload(&file_config(dir.path(), "live", "level = \"info\""))
        .unwrap();
    assert!(report.added);
    let log = manager.get("live").unwrap();
    const N: u64 = 20_000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for seq in 0..N {
                log.info("tick", &[field("seq", seq)]);
            }
        })
    };
    let mut reloads = 0;
    while !writer.is_finished() || reloads < 4 {
        let extra = if reloads % 2 == 0 {
            "level = \"info\"\nfilter = \"live=debug\""
        } else {
            "level = \"info\"\nsampling = { first = 1000000 }"
        };
        let r = manager
            .reload(&file_config(dir.path(), "live", extra))
            .unwrap();
        assert!(!r.added && r.restart_needed.is_empty(), "{r:?}");
        reloads += 1;
    }
    writer.join().unwrap();
    manager
        .reload(&file_config(dir.path(), "live", "level = \"debug\""))
        .unwrap();
    log.debug("debug after reload", &[]);
    manager
        .reload(&file_config(dir.path(), "live", "level = \"warn\""))
        .unwrap();
    log.info("info after reload to warn", &[]);
    log.flush(LONG);
    let lines = file_lines(dir.path(), "live");
    let mut seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..N).collect::<Vec<_>>(),
        "every record exactly once"
    );
    let tail: Vec<&str> = lines
        .iter()
        .filter(|l| l["seq"].is_null())
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(tail, ["debug after reload"]);
}

#[test]
fn an_invalid_reload_keeps_the_old_settings_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::new();
    manager
        .reload(&file_config(
            dir.path(),
            "keep",
            "filter = \"debug,db=off\"",
        ))
        .unwrap();
    let log = manager.get("keep").unwrap();
    let before = log.filter();
    for (extra, check) in [
        ("filter = \"db=loud\"", "db=loud"),
        ("level = \"verbose\"", "verbose"),
        ("sampling = { tick = \"never\" }", "never"),
    ] {
        let err = manager
            .reload(&file_config(dir.path(), "keep", extra))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidFilter { .. } | Error::InvalidConfig { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(check), "{err}");
        assert_eq!(log.filter(), before, "unchanged after {extra}");
    }
    // Sink settings are validated too, though never applied live.
    for (toml, check) in [
        ("type = \"bogus\"", "bogus"),
        ("formatter = \"yaml\"", "yaml"),
        ("[options]\noverflow = \"sometimes\"", "sometimes"),
        ("[options]\nqueue = 0", "queue"),
        ("[options]\nrotate = \"weekly\"", "weekly"),
        ("[options]\nurl = \"http://127.0.0.1:9200\"", "url"),
        ("[options]\nflush_interval = \"often\"", "often"),
    ] {
        let mut config = file_config(dir.path(), "keep", "level = \"error\"");
        if let Some(kind) = toml.strip_prefix("type = ") {
            config.kind = kind.trim_matches('"').into();
        } else if let Some(formatter) = toml.strip_prefix("formatter = ") {
            config.formatter = Some(formatter.trim_matches('"').into());
        } else {
            let edit = LogConfig::from_toml(&format!("type = \"file\"\nname = \"keep\"\n{toml}\n"))
                .unwrap();
            let path = config.options.path.clone();
            config.options = edit.options;
            config.options.path = path;
        }
        let err = manager.reload(&config).unwrap_err();
        assert!(
            matches!(err, Error::UnknownType { .. } | Error::InvalidConfig { .. }),
            "{toml}: {err}"
        );
        assert!(err.to_string().contains(check), "{toml}: {err}");
        assert_eq!(log.filter(), before, "unchanged after {toml}");
    }
    // A sink change is reported, not applied.
    let mut moved = file_config(dir.path(), "keep", "level = \"warn\"");
    moved.formatter = Some("text".into());
    let r = manager.reload(&moved).unwrap();
    assert_eq!(r.restart_needed, ["formatter"]);
    assert_eq!(r.filter, "warn");
    assert_eq!(log.level(), Level::Warn);
    log.warn("still json", &[]);
    log.flush(LONG);
    assert_eq!(file_lines(dir.path(), "keep")[0]["message"], "still json");
}

#[test]
fn a_watched_file_is_reloaded_on_change_and_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.toml");
    // Written whole, then renamed over: the watcher never reads half a file.
    let replace = |text: &str| {
        let tmp = dir.path().join("log.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    let write = |level: &str| {
        replace(&format!(
            "type = \"file\"\nname = \"watched\"\nlevel = \"{level}\"\n[options]\npath = \"{}\"\n",
            dir.path().join("watched.log").display()
        ));
    };
    write("info");
    let manager = Arc::new(Manager::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let reloader = Reloader::watch(
        manager.clone(),
        &path,
        Duration::from_millis(20),
        move |r: &Result<keel_log::ReloadReport, Error>| {
            let _ = tx.send(
                r.as_ref()
                    .map(|r| r.filter.clone())
                    .map_err(ToString::to_string),
            );
        },
    )
    .unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok("info".to_owned()));
    let log = manager.get("watched").unwrap();
    write("debug");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok("debug".to_owned()));
    assert_eq!(log.level(), Level::Debug);
    replace("type = \"file\"\nname = \"watched\"\nlevel = 3\n");
    let err = rx.recv_timeout(LONG).unwrap().unwrap_err();
    assert!(err.contains("parse"), "{err}");
    assert_eq!(log.level(), Level::Debug, "a bad file changes nothing");
    // Reported once, not on every poll.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    reloader.reload_now();
    assert!(rx.recv_timeout(LONG).unwrap().is_err());
    write("error");
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok("error".to_owned()));
    assert_eq!(log.level(), Level::Error);
    reloader.stop();
}

#[cfg(all(unix, feature = "sighup"))]
#[test]
fn sighup_reloads_after_the_explicit_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.toml");
    let text = |level: &str| {
        format!(
            "type = \"file\"\nname = \"hup\"\nlevel = \"{level}\"\n[options]\npath = \"{}\"\n",
            dir.path().join("hup.log").display()
        )
    };
    std::fs::write(&path, text("info")).unwrap();
    let manager = Arc::new(Manager::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    // Polling effectively off: only the start, SIGHUP and reload_now read the file.
    let reloader = Reloader::watch(
        manager.clone(),
        &path,
        Duration::from_secs(3600),
        move |r| {
            let _ = tx.send(
                r.as_ref()
                    .map(|r| r.filter.clone())
                    .map_err(ToString::to_string),
            );
        },
    )
    .unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok("info".to_owned()));
    reloader.reload_on_sighup().unwrap();
    std::fs::write(&path, text("warn")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok("warn".to_owned()));
    assert_eq!(manager.get("hup").unwrap().level(), Level::Warn);
}

#[test]
fn turning_sampling_off_reports_the_open_counts_at_once() {
    let metrics = MetricsService::new("off").unwrap();
    let (log, buf) = logger("sampling-off", Level::Info, &metrics);
    log.set_sampling(Some(Sampling::new(Duration::from_secs(3600), 2, 0)));
    for _ in 0..50 {
        log.warn("disk slow", &[]);
    }
    log.set_sampling(None);
    log.warn("after", &[]);
    log.flush(LONG);
    // The report is written when sampling goes off, before the next record, not left for
    // a flush that may come much later.
    assert_eq!(
        messages(&buf),
        [
            "disk slow",
            "disk slow",
            "48 similar records sampled",
            "after"
        ]
    );
    assert_eq!(buf.json_lines()[2]["sampled_message"], "disk slow");
}
