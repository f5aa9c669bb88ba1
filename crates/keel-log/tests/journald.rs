//! The journald sink against a Unix datagram socket the test opens in place of
//! `/run/systemd/journal/socket`; each datagram is parsed as the native journal protocol.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_log::{
    JournaldOptions, JournaldSink, Level, LogConfig, Logger, Overflow, Sink, field, open,
};
use keel_testkit::listener::{UnixDatagramReceiver, parse_journal_entry};

const LONG: Duration = Duration::from_secs(60);

/// An entry's fields by name (every name appears once in a Keel entry).
fn entry(datagram: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let fields = parse_journal_entry(datagram).unwrap_or_else(|e| panic!("{e}"));
    let n = fields.len();
    let map: BTreeMap<String, Vec<u8>> = fields.into_iter().collect();
    assert_eq!(map.len(), n, "no repeated names");
    map
}

fn text(e: &BTreeMap<String, Vec<u8>>, name: &str) -> String {
    String::from_utf8(
        e.get(name)
            .unwrap_or_else(|| panic!("{name} in {e:?}"))
            .clone(),
    )
    .unwrap()
}

#[test]
fn a_logger_from_config_sends_structured_entries() {
    let receiver = UnixDatagramReceiver::new();
    let config = LogConfig::from_toml(&format!(
        r#"
type = "journald"
name = "checkout"
level = "debug"
[options]
path = "{}"
app_name = "shop"
facility = "local1"
max_message_bytes = 4096
"#,
        receiver.path().display()
    ))
    .unwrap();
    let log = open(&config).unwrap();
    const N: usize = 300;
    for i in 0..N {
        log.debug("tick", &[field("i", i)]);
    }
    log.error(
        "two\nlines",
        &[
            field("user_id", 7),
            field("http.status", "503"),
            field("message", "forged"),
            field("PRIORITY", "0"),
            field("api_key", "k-1"),
            field("trace", "a\nb"),
            field("nested", serde_json::json!({"token": "t", "n": 1})),
        ],
    );
    log.warn("é".repeat(5000), &[field("dropped_when_cut", 1)]);
    let stats = log.shutdown(LONG);
    assert_eq!(
        (stats.written, stats.failed, stats.dropped),
        (N as u64 + 2, 0, 0)
    );
    let got = receiver.wait_for(N + 2, LONG);
    assert_eq!(got.len(), N + 2, "one datagram per record");
    for (i, d) in got[..N].iter().enumerate() {
        let e = entry(d);
        assert_eq!(text(&e, "PRIORITY"), "7");
        assert_eq!(text(&e, "SYSLOG_FACILITY"), "17");
        assert_eq!(text(&e, "SYSLOG_IDENTIFIER"), "shop");
        assert_eq!(text(&e, "LOGGER"), "checkout");
        assert_eq!(text(&e, "MESSAGE"), "tick");
        assert_eq!(text(&e, "I"), i.to_string(), "in order");
    }
    let e = entry(&got[N]);
    assert_eq!(text(&e, "PRIORITY"), "3");
    assert_eq!(
        text(&e, "MESSAGE"),
        "two\nlines",
        "newlines kept, length-framed"
    );
    assert_eq!(text(&e, "USER_ID"), "7");
    assert_eq!(text(&e, "HTTP_STATUS"), "503");
    assert_eq!(text(&e, "FIELD_MESSAGE"), "forged");
    assert_eq!(text(&e, "FIELD_PRIORITY"), "0");
    assert_eq!(text(&e, "API_KEY"), keel_log::REDACTED);
    assert_eq!(text(&e, "TRACE"), "a\nb");
    let nested: serde_json::Value = serde_json::from_str(&text(&e, "NESTED")).unwrap();
    assert_eq!(nested["token"], keel_log::REDACTED);
    // The long one: within the cap, MESSAGE cut at a character boundary, marked.
    assert!(got[N + 1].len() <= 4096, "{}", got[N + 1].len());
    let e = entry(&got[N + 1]);
    let message = text(&e, "MESSAGE");
    assert!(
        message.len() > 3000 && message.chars().all(|c| c == 'é'),
        "{}",
        message.len()
    );
    assert!(text(&e, "KEEL_TRUNCATED").parse::<usize>().unwrap() > 10_000);
    assert!(!e.contains_key("DROPPED_WHEN_CUT"));
}

#[test]
fn records_fail_while_the_socket_is_missing_and_flow_once_it_appears() {
    let mut receiver = UnixDatagramReceiver::unbound();
    let mut o = JournaldOptions::new();
    o.path = receiver.path().to_owned();
    o.backoff = Duration::from_millis(10);
    o.max_backoff = Duration::from_millis(100);
    let sink = Arc::new(JournaldSink::start("journal", o, 1000, Overflow::Block).unwrap());
    let log = Logger::new("api", Level::Info, vec![sink.clone() as Arc<dyn Sink>]);
    for i in 0..20 {
        log.info("early", &[field("i", i)]);
    }
    let early = log.flush(LONG);
    assert_eq!((early.written, early.failed), (0, 20), "{early:?}");

    receiver.listen();
    let mut given = 20u64;
    let deadline = Instant::now() + LONG;
    while receiver.received().is_empty() {
        assert!(Instant::now() < deadline, "never reconnected");
        log.info("late", &[]);
        given += 1;
        log.flush(LONG);
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = sink.shutdown(LONG);
    assert_eq!(stats.written + stats.failed, given);
    let got = receiver.wait_for(usize::try_from(stats.written).unwrap(), LONG);
    assert_eq!(got.len() as u64, stats.written, "written means received");
    assert!(got.iter().all(|d| text(&entry(d), "MESSAGE") == "late"));
}

#[test]
fn a_formatter_is_refused() {
    let config =
        LogConfig::from_toml("type = \"journald\"\nname = \"x\"\nformatter = \"json\"\n").unwrap();
    let err = open(&config).unwrap_err().to_string();
    assert!(err.contains("formatter"), "{err}");
}
