//! The syslog sink against receivers the tests open: a Unix datagram socket (as `/dev/log`),
//! UDP, and TCP with octet counting (including a receiver restart). Every message is parsed
//! with the RFC 5424 grammar written out below, independently of the sink's code.

use std::sync::Arc;
use std::time::Duration;

use keel_log::{
    Facility, Level, LogConfig, Logger, Overflow, Record, Sink, SyslogOptions, SyslogSink,
    SyslogTransport, field, open,
};
use keel_testkit::listener::{OctetCountingServer, UdpReceiver, UnixDatagramReceiver};

const LONG: Duration = Duration::from_secs(60);

/// An RFC 5424 message taken apart.
#[derive(Debug)]
struct Syslog {
    pri: u32,
    timestamp: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    /// The SD-ID and its params (values unescaped); `None` for `-`.
    sd: Option<(String, Vec<(String, String)>)>,
    msg: String,
}

impl Syslog {
    fn param(&self, name: &str) -> Option<&str> {
        let (_, params) = self.sd.as_ref()?;
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse(bytes: &[u8]) -> Syslog {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    let rest = text.strip_prefix('<').expect("<PRI>");
    let (pri, rest) = rest.split_once(">1 ").expect("PRI and VERSION 1");
    assert!(
        pri.len() <= 3 && pri.bytes().all(|b| b.is_ascii_digit()),
        "{pri}"
    );
    let mut header = rest.splitn(6, ' ');
    let mut next = || header.next().expect("header field").to_owned();
    let (timestamp, hostname, app, procid, msgid, rest) =
        (next(), next(), next(), next(), next(), next());
    for (value, max) in [(&hostname, 255), (&app, 48), (&procid, 128), (&msgid, 32)] {
        assert!(
            !value.is_empty() && value.len() <= max && value.bytes().all(|b| b.is_ascii_graphic()),
            "header field {value:?}"
        );
    }
    let (sd, msg) = if let Some(msg) = rest.strip_prefix("- ") {
        (None, msg.to_owned())
    } else {
        let (sd, msg) = parse_sd(&rest);
        (Some(sd), msg)
    };
    Syslog {
        pri: pri.parse().unwrap(),
        timestamp,
        hostname,
        app,
        procid,
        msgid,
        sd,
        msg,
    }
}

/// One SD-ELEMENT `[id name="value" …]` and the MSG after it.
fn parse_sd(text: &str) -> ((String, Vec<(String, String)>), String) {
    let body = text.strip_prefix('[').expect("an SD-ELEMENT");
    let (id, mut rest) = body.split_once(' ').expect("SD-ID");
    let mut params = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix("] ") {
            return ((id.to_owned(), params), after.to_owned());
        }
        let (name, after) = rest.split_once("=\"").expect("PARAM-NAME=\"");
        assert!(
            !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=]\"".contains(&b)),
            "PARAM-NAME {name:?}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("closing quote");
            match c {
                '\\' => {
                    let (_, escaped) = chars.next().expect("escaped char");
                    if !matches!(escaped, '"' | '\\' | ']') {
                        value.push('\\');
                    }
                    value.push(escaped);
                }
                '"' => break i,
                ']' => panic!("unescaped ] in a PARAM-VALUE: {after}"),
                c => value.push(c),
            }
        };
        params.push((name.to_owned(), value));
        rest = after[end + 1..].trim_start_matches(' ');
    }
}

fn logger(sink: SyslogSink) -> (Arc<SyslogSink>, Logger) {
    let sink = Arc::new(sink);
    let log = Logger::new("api", Level::Debug, vec![sink.clone() as Arc<dyn Sink>]);
    (sink, log)
}

#[test]
fn a_unix_datagram_logger_from_config_sends_one_rfc5424_message_per_record_in_order() {
    let receiver = UnixDatagramReceiver::new();
    let config = LogConfig::from_toml(&format!(
        r#"
type = "syslog"
name = "checkout"
level = "debug"
[options]
path = "{}"
facility = "local4"
app_name = "shop"
hostname = "web 1"
"#,
        receiver.path().display()
    ))
    .unwrap();
    let log = open(&config).unwrap();
    const N: usize = 500;
    for i in 0..N {
        log.info("order placed", &[field("i", i), field("note", "a]b\"c\\d")]);
    }
    log.warn(
        "two\nlines [x] \u{1b}[2J",
        &[field("password", "hunter2"), field("user id", "ada")],
    );
    let stats = log.shutdown(LONG);
    assert_eq!(
        (stats.written, stats.failed, stats.dropped),
        (N as u64 + 1, 0, 0)
    );
    let got = receiver.wait_for(N + 1, LONG);
    assert_eq!(got.len(), N + 1, "one datagram per record");
    for (i, datagram) in got[..N].iter().enumerate() {
        let m = parse(datagram);
        assert_eq!(m.pri, 20 * 8 + 6, "local4.info");
        assert!(
            humantime::parse_rfc3339(&m.timestamp).is_ok(),
            "{}",
            m.timestamp
        );
        assert_eq!((m.hostname.as_str(), m.app.as_str()), ("web_1", "shop"));
        assert_eq!(m.procid, std::process::id().to_string());
        assert_eq!(m.msgid, "-");
        assert_eq!(m.sd.as_ref().unwrap().0, "keel@32473");
        assert_eq!(m.param("logger"), Some("checkout"));
        assert_eq!(m.param("i"), Some(i.to_string().as_str()), "in order");
        assert_eq!(m.param("note"), Some("a]b\"c\\d"));
        assert_eq!(m.msg, "order placed");
    }
    let last = parse(&got[N]);
    assert_eq!(last.pri, 20 * 8 + 4, "local4.warning");
    assert_eq!(
        last.msg, "two\\nlines [x] \\u{1b}[2J",
        "one line, no raw escape"
    );
    assert_eq!(last.param("password"), Some(keel_log::REDACTED));
    assert_eq!(last.param("user_id"), Some("ada"));
}

#[test]
fn ecs_as_the_message_over_a_unix_socket() {
    let receiver = UnixDatagramReceiver::new();
    let config = LogConfig::from_toml(&format!(
        "type = \"syslog\"\nname = \"svc\"\nformatter = \"ecs\"\n[options]\npath = \"{}\"\nservice_name = \"shop\"\n",
        receiver.path().display()
    ))
    .unwrap();
    let log = open(&config).unwrap();
    log.error("failed", &[field("error", "timeout"), field("k", 1)]);
    assert_eq!(log.shutdown(LONG).written, 1);
    let got = receiver.wait_for(1, LONG);
    let m = parse(&got[0]);
    assert_eq!(m.pri, 8 + 3, "user.err");
    assert!(m.sd.is_none(), "no structured data");
    let v: serde_json::Value = serde_json::from_str(&m.msg).unwrap();
    assert_eq!(v["log.level"], "error");
    assert_eq!(v["service.name"], "shop");
    assert_eq!(v["error.message"], "timeout");
    assert_eq!(v["k"], 1);
}

#[test]
fn udp_carries_each_level_with_its_severity() {
    let receiver = UdpReceiver::new();
    let mut o = SyslogOptions::new(SyslogTransport::Udp(receiver.addr()));
    o.facility = Facility::DAEMON;
    let (sink, _log) = logger(SyslogSink::start("udp", o, 100, Overflow::Block).unwrap());
    let levels = [
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];
    for level in levels {
        sink.write(Record::new(level, "api", level.as_str()));
    }
    let stats = sink.shutdown(LONG);
    assert_eq!(stats.written, 5);
    let got = receiver.wait_for(5, LONG);
    let pris: Vec<u32> = got.iter().map(|d| parse(d).pri).collect();
    assert_eq!(pris, [31, 30, 28, 27, 26], "daemon (3) * 8 + 7, 6, 4, 3, 2");
}

#[test]
fn tcp_frames_by_octet_counting_and_reconnects_after_a_receiver_restart() {
    let server = OctetCountingServer::new();
    let addr = server.addr();
    let mut o = SyslogOptions::new(SyslogTransport::Tcp(addr));
    o.backoff = Duration::from_millis(20);
    o.max_backoff = Duration::from_millis(200);
    o.max_message_bytes = 100_000;
    let (sink, log) = logger(SyslogSink::start("tcp", o, 10_000, Overflow::Block).unwrap());
    // Messages with spaces, newlines and 40 KiB ones: more than one 64 KiB chunk.
    const N: usize = 1000;
    let mut given = 0u64;
    for i in 0..N {
        let text = if i % 100 == 7 {
            "x ".repeat(20_000)
        } else {
            format!("line {i}\nsecond")
        };
        log.info(text, &[field("i", i)]);
        given += 1;
    }
    let stats = log.flush(LONG);
    assert_eq!((stats.written, stats.failed), (N as u64, 0));
    let first = server.wait_for(N, LONG);
    assert_eq!(first.len(), N);
    assert!(
        server.framing_errors().is_empty(),
        "{:?}",
        server.framing_errors()
    );
    for (i, frame) in first.iter().enumerate() {
        let m = parse(frame);
        assert_eq!(m.param("i"), Some(i.to_string().as_str()));
        if i % 100 == 7 {
            assert_eq!(m.msg, "x ".repeat(20_000), "whole");
        } else {
            assert_eq!(m.msg, format!("line {i}\\nsecond"));
        }
    }
    let first = server.stop();

    // The receiver is gone: records fail (counted), the caller is not held up.
    for i in 0..50 {
        log.info("while down", &[field("i", i)]);
        given += 1;
    }
    let down = log.flush(LONG);
    assert_eq!(down.written + down.failed + down.pending, given);
    assert!(down.failed > 0, "{down:?}");

    // Back on the same port: records flow again over a new connection.
    let server = OctetCountingServer::on(addr);
    let deadline = std::time::Instant::now() + LONG;
    while server.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        log.info("after restart", &[]);
        given += 1;
        log.flush(LONG);
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = sink.shutdown(LONG);
    assert_eq!(stats.written + stats.failed + stats.dropped, given);
    assert_eq!(stats.pending, 0);
    let second = server.wait_for(usize::try_from(stats.written).unwrap() - first.len(), LONG);
    assert_eq!(
        (first.len() + second.len()) as u64,
        stats.written,
        "every record counted as written arrived, once"
    );
    assert!(server.framing_errors().is_empty());
    assert!(server.connections() >= 1);
    for frame in &second {
        assert_eq!(parse(frame).msg, "after restart");
    }
}

#[test]
fn a_missing_socket_fails_records_without_blocking() {
    let receiver = UnixDatagramReceiver::unbound();
    let mut o = SyslogOptions::new(SyslogTransport::Unix(receiver.path().to_owned()));
    o.backoff = Duration::from_millis(10);
    let (sink, log) = logger(SyslogSink::start("nosock", o, 100, Overflow::Block).unwrap());
    for i in 0..20 {
        log.error("lost", &[field("i", i)]);
    }
    let stats = sink.shutdown(LONG);
    assert_eq!((stats.written, stats.failed, stats.pending), (0, 20, 0));
}

#[test]
fn a_receiver_that_stops_reading_costs_failed_records_not_a_hung_caller() {
    let server = OctetCountingServer::stalled();
    let mut o = SyslogOptions::new(SyslogTransport::Tcp(server.addr()));
    o.timeout = Duration::from_millis(200);
    o.backoff = Duration::from_millis(20);
    o.max_backoff = Duration::from_millis(100);
    o.max_message_bytes = 100_000;
    let (sink, log) = logger(SyslogSink::start("stalled", o, 64, Overflow::DropNewest).unwrap());
    let payload = "y".repeat(16 << 10);
    let mut given = 0u64;
    let deadline = std::time::Instant::now() + LONG;
    // The socket buffers fill, a write times out, its records fail; the caller goes on
    // (drop policy) until that has happened.
    loop {
        for _ in 0..100 {
            log.info(payload.clone(), &[]);
            given += 1;
        }
        let stats = log.flush(Duration::from_millis(100));
        if stats.failed > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no write ever timed out: {stats:?}"
        );
    }
    let stats = sink.shutdown(LONG);
    assert_eq!(stats.pending, 0, "{stats:?}");
    assert_eq!(
        stats.written + stats.dropped + stats.failed,
        given,
        "{stats:?}"
    );
    assert!(server.connections() >= 1);
}

#[test]
fn config_mistakes_are_typed_errors_naming_the_field() {
    let field_of = |options: &str| {
        let config = LogConfig::from_toml(&format!(
            "type = \"syslog\"\nname = \"x\"\n[options]\n{options}"
        ))
        .unwrap();
        match open(&config) {
            Err(keel_log::Error::InvalidConfig { field, .. }) => field,
            other => panic!("{options}: {other:?}"),
        }
    };
    assert_eq!(field_of("transport = \"tls\""), "options.transport");
    assert_eq!(field_of("address = \"127.0.0.1:514\""), "options.transport");
    assert_eq!(field_of("transport = \"udp\""), "options.address");
    assert_eq!(
        field_of("transport = \"tcp\"\naddress = \"nowhere\""),
        "options.address"
    );
    assert_eq!(field_of("facility = \"local9\""), "options.facility");
    assert_eq!(field_of("sd_id = \"bad id\""), "options.sd_id");
    assert_eq!(field_of("timeout = \"soon\""), "options.timeout");
}
