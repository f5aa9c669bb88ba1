//! The `log` and `tracing` bridges, and the logger metrics.
#![cfg(all(feature = "log", feature = "tracing"))]

use std::sync::Arc;
use std::time::Duration;

use keel_log::bridge::{KeelLayer, LogBridge};
use keel_log::{JsonFormat, Level, Logger, Overflow, QueueSink, Sink};
use keel_metrics::MetricsService;
use keel_testkit::writer::SharedBuffer;
use tracing_subscriber::layer::SubscriberExt;

fn logger(name: &'static str, level: Level, metrics: &MetricsService) -> (Logger, SharedBuffer) {
    let buf = SharedBuffer::default();
    let sink = QueueSink::start(
        name,
        1000,
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

#[test]
fn tracing_events_with_span_fields_reach_the_logger() {
    let metrics = MetricsService::new("t").unwrap();
    let (log, buf) = logger("traced", Level::Debug, &metrics);
    let subscriber = tracing_subscriber::registry().with(KeelLayer::new(log.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let outer = tracing::info_span!("session", user_id = 42);
        let _o = outer.enter();
        let inner = tracing::info_span!("request", path = "/inbox");
        let _i = inner.enter();
        tracing::warn!(attempt = 3, ok = false, "delivery deferred");
        tracing::trace!("very detailed");
    });
    log.flush(Duration::from_secs(5));
    let lines = buf.json_lines();
    assert_eq!(lines.len(), 2);
    let l = &lines[0];
    assert_eq!(l["message"], "delivery deferred");
    assert_eq!(l["level"], "WARN");
    assert_eq!(l["user_id"], 42);
    assert_eq!(l["path"], "/inbox");
    assert_eq!(l["attempt"], 3);
    assert_eq!(l["ok"], false);
    assert_eq!(lines[1]["level"], "DEBUG", "TRACE maps to Debug");
    let text = metrics.render();
    assert!(
        text.contains("t_log_records_total{logger=\"traced\",level=\"WARN\"} 1"),
        "{text}"
    );
}

#[test]
fn log_records_route_by_target_prefix() {
    let metrics = MetricsService::new("l").unwrap();
    let (fallback, fb) = logger("fallback", Level::Info, &metrics);
    let (smtp, sb) = logger("smtp", Level::Debug, &metrics);
    LogBridge::new(fallback.clone())
        .route("smtp", smtp.clone())
        .install()
        .unwrap();
    log::debug!(target: "smtp::queue", "queued {} messages", 3);
    log::info!(target: "smtpx", "not smtp");
    log::debug!(target: "other", "below the fallback's level");
    log::warn!(target: "other", "to the fallback");
    fallback.flush(Duration::from_secs(5));
    smtp.flush(Duration::from_secs(5));
    let s = sb.json_lines();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["message"], "queued 3 messages");
    assert_eq!(s[0]["target"], "smtp::queue");
    let f: Vec<String> = fb
        .json_lines()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(f, ["not smtp", "to the fallback"]);
}
