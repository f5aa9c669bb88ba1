//! `keel log --config FILE [--level L] [--json-input] [--timeout 10s]`: a log shipper for
//! programs that write to stdout/stderr, e.g. `myapp 2>&1 | keel log --config app-log.toml`.
//!
//! Reads stdin line by line and writes each line as one record through the logger the
//! keel-log config describes (the message is the line without its line ending; invalid
//! UTF-8 is replaced). With `--json-input` each line is a JSON object: `message` (or `msg`)
//! becomes the message, `level` the level, every other key a field of the record (nested
//! values stay nested in JSON output); a line that is not a JSON object is logged as text.
//! Records are logged at `--level` (default `info`). A `--level` given below the config's
//! `level` lowers the logger's level to it, so those lines are written, not discarded; lines
//! still below the logger's level (a JSON line's own `level`, or plain lines at the default
//! `info` under a config at `warn`) are counted as `filtered`.
//!
//! At end of input, or on SIGTERM/SIGINT (which stop reading: lines still in the pipe are not
//! read), the logger is shut down within `--timeout` and one line of delivery stats goes to
//! stderr: `keel log: lines=N written=N dropped=N failed=N pending=N filtered=N`. The exit
//! code is 0 when no line failed or stayed pending (every line read was written, dropped by
//! the `drop` overflow policy, or filtered by level), 1 otherwise. SIGHUP makes file
//! sinks reopen their path before the next write (for logrotate's `create` mode with a
//! `postrotate` that sends SIGHUP).

use std::borrow::Cow;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_cache::parse_duration;
use keel_log::{Field, Level, Logger, Value, field};
use tokio::signal::unix::{SignalKind, signal};

/// `keel log`: ships stdin lines through a keel-log logger.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A keel-log config file (TOML, YAML or JSON): `type`, `name`, `level`, `formatter`,
    /// `output`, `options` (file sinks: rotation, retention, `flush_interval`, `sync`).
    #[arg(long)]
    config: PathBuf,
    /// The level of the records (default `info`; in `--json-input` mode a `level` key
    /// overrides it). Below the config's `level`, it lowers the logger's level to it.
    #[arg(long)]
    level: Option<Level>,
    /// Each line is a JSON object whose keys become the record's fields.
    #[arg(long)]
    json_input: bool,
    /// How long the final shutdown may take in total.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Turns one input line into (level, message, fields).
fn parse_line(line: &str, level: Level, json: bool) -> (Level, Cow<'static, str>, Vec<Field>) {
    if json && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(line) {
        let mut level = level;
        let mut message = String::new();
        let mut fields = Vec::with_capacity(map.len());
        for (key, value) in map {
            match (key.as_str(), value) {
                ("message" | "msg", serde_json::Value::String(text)) if message.is_empty() => {
                    message = text;
                }
                ("level", serde_json::Value::String(text)) if text.parse::<Level>().is_ok() => {
                    level = text.parse().unwrap_or(level);
                }
                (_, value) => fields.push(field(key, json_value(value))),
            }
        }
        return (level, message.into(), fields);
    }
    (level, line.to_owned().into(), Vec::new())
}

fn json_value(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Bool(b) => Value::from(b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (None, Some(i), _) => Value::from(i),
            (None, None, Some(f)) => Value::from(f),
            _ => Value::from(serde_json::Value::Number(n)),
        },
        other => Value::from(other),
    }
}

/// Lines read, and lines below the logger's level (not logged).
#[derive(Default)]
struct Counts {
    lines: AtomicU64,
    filtered: AtomicU64,
    /// Held while a line read is logged: the shutdown takes it after setting `stop`, so a
    /// line is either logged before the shutdown or not taken at all (never dropped by it).
    line: std::sync::Mutex<()>,
}

/// Reads stdin until EOF (or until `stop` is set), logging each line.
fn pump(logger: &Logger, level: Level, json: bool, stop: &AtomicBool, counts: &Counts) {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("keel log: reading stdin: {e}");
                return;
            }
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let _line = counts
            .line
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stop.load(Ordering::Relaxed) {
            // Read after SIGTERM/SIGINT: left out, like the lines still in the pipe.
            return;
        }
        let text = String::from_utf8_lossy(&buf);
        let (level, message, fields) = parse_line(&text, level, json);
        if logger.enabled(level) {
            logger.log(level, message, &fields);
        } else {
            counts.filtered.fetch_add(1, Ordering::Relaxed);
        }
        counts.lines.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `keel log`; returns the exit code.
pub async fn run(args: Args) -> Result<i32> {
    let config = keel_log::LogConfig::from_path(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let logger = keel_log::open(&config)?;
    if let Some(level) = args.level
        && level < logger.level()
    {
        logger.set_level(level);
    }
    // Installed before the first line is read: from here on SIGHUP reopens, SIGTERM stops.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let (eof_tx, mut eof_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let (logger, stop, counts) = (logger.clone(), stop.clone(), counts.clone());
        let (level, json) = (args.level.unwrap_or(Level::Info), args.json_input);
        // A plain thread: a blocking read of stdin must not hold up the runtime's shutdown.
        std::thread::Builder::new()
            .name("keel-log-stdin".into())
            .spawn(move || {
                pump(&logger, level, json, &stop, &counts);
                let _ = eof_tx.send(());
            })?;
    }
    loop {
        tokio::select! {
            _ = &mut eof_rx => break,
            _ = hup.recv() => logger.reopen(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let timeout = args.timeout;
    let (closing, reading) = (logger.clone(), counts.clone());
    let stats = tokio::task::spawn_blocking(move || {
        // Waits for a line being logged (never for a blocked read), within the timeout: a
        // record waiting for queue room on a stalled sink must not hold up the exit.
        let deadline = std::time::Instant::now() + timeout.min(Duration::from_secs(86_400));
        let _line = loop {
            match reading.line.try_lock() {
                Ok(guard) => break Some(guard),
                Err(std::sync::TryLockError::Poisoned(guard)) => break Some(guard.into_inner()),
                Err(std::sync::TryLockError::WouldBlock)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => break None,
            }
        };
        closing.shutdown(deadline.saturating_duration_since(std::time::Instant::now()))
    })
    .await?;
    eprintln!(
        "keel log: lines={} written={} dropped={} failed={} pending={} filtered={}",
        counts.lines.load(Ordering::Relaxed),
        stats.written,
        stats.dropped,
        stats.failed,
        stats.pending,
        counts.filtered.load(Ordering::Relaxed)
    );
    Ok(i32::from(stats.failed + stats.pending > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_become_fields_and_text_stays_text() {
        let (level, message, fields) = parse_line(
            r#"{"msg":"user in","level":"warn","user":"ada","n":3,"neg":-2,"r":0.5,"ok":true,"nested":{"a":1}}"#,
            Level::Info,
            true,
        );
        assert_eq!((level, message.as_ref()), (Level::Warn, "user in"));
        let get = |k: &str| fields.iter().find(|f| f.key == k).map(|f| f.value.clone());
        assert_eq!(get("user"), Some(Value::from("ada".to_owned())));
        assert_eq!(get("n"), Some(Value::from(3u64)));
        assert_eq!(get("neg"), Some(Value::from(-2i64)));
        assert_eq!(get("ok"), Some(Value::from(true)));
        assert_eq!(
            get("nested"),
            Some(Value::from(serde_json::json!({"a": 1})))
        );
        let (level, message, fields) = parse_line("not json {", Level::Error, true);
        assert_eq!(
            (level, message.as_ref(), fields.len()),
            (Level::Error, "not json {", 0)
        );
        let (_, message, _) = parse_line(r#"{"a":1}"#, Level::Info, false);
        assert_eq!(message, r#"{"a":1}"#);
    }
}
