//! `formatter = "ecs"`: the ecs-logging spec's required fields and their types, the service
//! and host fields from the config, `error.*` from error values and `trace.id`/`span.id` from
//! the tracing bridge.

use std::time::Duration;

use keel_log::{ECS_VERSION, LogConfig, ecs_error_fields, field, open};

/// The spec's required keys (top level, dotted as written), in the spec's order, and their
/// JSON types: all strings; `@timestamp` RFC 3339 UTC with milliseconds.
fn assert_spec(line: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let object = v.as_object().expect("an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    for key in ["@timestamp", "log.level", "message", "ecs.version"] {
        assert!(
            object.get(key).is_some_and(serde_json::Value::is_string),
            "{key} is a string in {line}"
        );
        assert!(keys.contains(&key));
    }
    // serde_json's map is sorted; the order the spec asks for is checked on the text.
    let at = |k: &str| line.find(&format!("\"{k}\":")).unwrap();
    assert!(at("@timestamp") < at("log.level"));
    assert!(at("log.level") < at("message"));
    assert_eq!(at("@timestamp"), 1, "@timestamp first: {line}");
    let stamp = v["@timestamp"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
    assert!(stamp.ends_with('Z') && stamp.len() == 24, "{stamp}");
    assert_eq!(v["ecs.version"], ECS_VERSION);
    v
}

#[test]
fn a_file_logger_from_config_writes_spec_conformant_ecs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.ecs.json");
    let config = LogConfig::from_toml(&format!(
        r#"
type = "file"
name = "checkout"
formatter = "ecs"
level = "debug"
[options]
path = "{}"
service_name = "shop"
service_node_name = "shop-1"
hostname = "web-7"
"#,
        path.display()
    ))
    .unwrap();
    let log = open(&config).unwrap();
    let io = std::io::Error::other("connection reset");
    let mut fields = vec![field("order", 42), field("api_key", "k-123")];
    fields.extend(ecs_error_fields(&io));
    log.error("payment failed", &fields);
    log.debug("retrying", &[field("attempt", 2), field("ratio", 0.5)]);
    log.info("multi\nline \u{1b}[31m", &[]);
    let stats = log.shutdown(Duration::from_secs(30));
    assert_eq!((stats.written, stats.failed, stats.dropped), (3, 0, 0));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let first = assert_spec(lines[0]);
    assert_eq!(first["log.level"], "error");
    assert_eq!(first["message"], "payment failed");
    assert_eq!(first["log.logger"], "checkout");
    assert_eq!(first["service.name"], "shop");
    assert_eq!(first["service.node.name"], "shop-1");
    assert_eq!(first["host.hostname"], "web-7");
    assert_eq!(first["order"], 42);
    assert_eq!(first["api_key"], keel_log::REDACTED);
    assert_eq!(first["error.message"], "connection reset");
    assert_eq!(first["error.type"], "std::io::error::Error");
    let second = assert_spec(lines[1]);
    assert_eq!(second["log.level"], "debug");
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["ratio"], 0.5);
    let third = assert_spec(lines[2]);
    assert_eq!(third["message"], "multi\nline \u{1b}[31m");
    assert!(!lines[2].contains('\u{1b}'), "escaped: {}", lines[2]);
}

#[test]
fn unknown_formatters_name_ecs() {
    let config =
        LogConfig::from_toml("type = \"console\"\nname = \"x\"\nformatter = \"logfmt\"\n").unwrap();
    let err = open(&config).unwrap_err().to_string();
    assert!(err.contains("ecs"), "{err}");
}

#[cfg(feature = "tracing")]
#[test]
fn tracing_errors_and_trace_ids_become_ecs_fields() {
    use std::sync::Arc;

    use keel_log::{EcsFormat, Level, Logger, Overflow, QueueSink, Sink};
    use keel_testkit::writer::SharedBuffer;
    use tracing_subscriber::layer::SubscriberExt;

    let buf = SharedBuffer::default();
    let format = EcsFormat::new().service_name("svc");
    let sink = QueueSink::start(
        "ecs-tracing",
        100,
        Overflow::Block,
        Box::new(format),
        buf.clone(),
    )
    .unwrap();
    let log = Logger::new(
        "ecs-tracing",
        Level::Debug,
        vec![Arc::new(sink) as Arc<dyn Sink>],
    );
    let subscriber =
        tracing_subscriber::registry().with(keel_log::bridge::KeelLayer::new(log.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(
            "request",
            trace_id = "0af7651916cd43dd8448eb211c80319c",
            span_id = "b7ad6b7169203331"
        );
        let _entered = span.enter();
        let e = std::io::Error::other("timed out");
        tracing::error!(
            error = &e as &(dyn std::error::Error + 'static),
            "upstream failed"
        );
    });
    log.flush(Duration::from_secs(30));
    let text = buf.text();
    let v = assert_spec(text.lines().next().expect("one line"));
    assert_eq!(v["message"], "upstream failed");
    assert_eq!(v["log.level"], "error");
    assert_eq!(v["trace.id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(v["span.id"], "b7ad6b7169203331");
    assert_eq!(v["error.message"], "timed out");
    assert_eq!(v["service.name"], "svc");
}
