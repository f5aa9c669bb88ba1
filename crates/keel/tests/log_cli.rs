//! `keel log`: stdin through a keel-log file logger, rotated under it by the real `logrotate`
//! (installed by scripts/test.sh): `create` + SIGHUP loses and duplicates nothing;
//! `copytruncate` carries on at the start of the truncated file without NUL padding or torn
//! lines. Also SIGTERM (flush, stats, exit 0) and `--json-input`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const THREADS: usize = 4;
const PHASES: usize = 4;
const PER_PHASE: usize = 5_000;

fn logrotate() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("logrotate"))
        .find(|p| p.is_file());
    found.expect("logrotate is not installed (scripts/test.sh installs the Debian package)")
}

fn start(dir: &Path, extra: &[&str]) -> (Child, PathBuf) {
    start_with(dir, "", "", extra)
}

/// `keel log` with a JSON file logger at `app.log`; `top` and `options` are extra TOML lines
/// for the config's top level and its `[options]`.
fn start_with(dir: &Path, top: &str, options: &str, extra: &[&str]) -> (Child, PathBuf) {
    let live = dir.join("app.log");
    let config = dir.join("app-log.toml");
    std::fs::write(
        &config,
        format!(
            "type = \"file\"\nname = \"shipper\"\nformatter = \"json\"\n{top}[options]\npath = \"{}\"\n{options}",
            live.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["log", "--config"])
        .arg(&config)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, live)
}

/// A file's name and contents.
type LogFile = (String, Vec<u8>);

/// Every line of every file of the log (`app.log`, `app.log.1`, …) with how often it occurs.
/// With `torn_copy_tail`, the last line of a rotated file may be cut short: copytruncate may
/// copy a write in progress (and then truncate its rest away, as its manual warns).
fn messages(dir: &Path, torn_copy_tail: bool) -> (BTreeMap<String, usize>, Vec<LogFile>) {
    let mut seen = BTreeMap::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("app.log") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let count = text.lines().count();
        for (n, line) in text.lines().enumerate() {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            if parsed.is_err() && torn_copy_tail && name != "app.log" && n + 1 == count {
                continue;
            }
            let v = parsed.unwrap_or_else(|e| panic!("{name}: torn or bad line ({e}): {line:?}"));
            *seen
                .entry(v["message"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        files.push((name, bytes));
    }
    (seen, files)
}

/// Writes `PER_PHASE` lines per thread from `THREADS` threads, whole lines under one lock.
fn phase(stdin: &Arc<Mutex<ChildStdin>>, phase: usize) {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let stdin = stdin.clone();
            std::thread::spawn(move || {
                for i in 0..PER_PHASE {
                    let line = format!("p{phase} t{t} {i}\n");
                    stdin.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn rotate(dir: &Path, body: &str) {
    // One logrotate at a time: it locks its state file.
    static ROTATING: Mutex<()> = Mutex::new(());
    let _one = ROTATING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let conf = dir.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{} {{\n    rotate 100\n    missingok\n    nocompress\n{body}}}\n",
            dir.join("app.log").display()
        ),
    )
    .unwrap();
    let out = Command::new(logrotate())
        .arg("-f")
        .arg("-s")
        .arg(dir.join("logrotate.state"))
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn finish(child: Child, stdin: Arc<Mutex<ChildStdin>>) -> String {
    drop(stdin); // the last reference: EOF
    exited(child)
}

/// Waits for `keel log` to exit, asserts it succeeded, returns its stderr.
fn exited(mut child: Child) -> String {
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    err
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

#[test]
fn logrotate_create_with_sighup_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, live) = start(dir.path(), &[]);
    let pid = child.id();
    let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
    let body = format!("    create 0600\n    postrotate\n        kill -HUP {pid}\n    endscript\n");
    // logrotate runs again and again while four threads feed the input, and at least once
    // per phase (whatever the timing), all within a deadline.
    let feeding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let deadline = Instant::now() + Duration::from_secs(120);
    let rotator = {
        let (dir, feeding, live, body) = (
            dir.path().to_owned(),
            feeding.clone(),
            live.clone(),
            body.clone(),
        );
        std::thread::spawn(move || {
            let mut rotations = 0;
            while feeding.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                if count_lines(&live) > 0 {
                    rotate(&dir, &body);
                    rotations += 1;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            rotations
        })
    };
    let mut rotations = 0;
    for p in 0..PHASES {
        phase(&stdin, p);
        wait_for("the phase's lines in the live file", || {
            count_lines(&live) > 0
        });
        rotate(dir.path(), &body);
        rotations += 1;
    }
    feeding.store(false, std::sync::atomic::Ordering::SeqCst);
    rotations += rotator.join().unwrap();
    let err = finish(child, stdin);
    let total = THREADS * PER_PHASE * PHASES;
    assert!(err.contains(&format!("written={total} ")), "{err}");
    let (seen, files) = messages(dir.path(), false);
    assert!(
        files.len() > PHASES,
        "{rotations} rotations: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for p in 0..PHASES {
        for t in 0..THREADS {
            for i in 0..PER_PHASE {
                let line = format!("p{p} t{t} {i}");
                assert_eq!(seen.get(&line), Some(&1), "{line} once");
            }
        }
    }
    assert_eq!(seen.len(), total);
}

#[test]
fn logrotate_copytruncate_carries_on_at_offset_zero_without_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, live) = start(dir.path(), &[]);
    let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
    for p in 0..PHASES - 1 {
        phase(&stdin, p);
        wait_for("the phase's first lines", || count_lines(&live) > 0);
        rotate(dir.path(), "    copytruncate\n");
    }
    // After the last truncation: all of this phase must be in the live file, from offset 0.
    let before = std::fs::metadata(&live).unwrap().len();
    phase(&stdin, PHASES - 1);
    let err = finish(child, stdin);
    assert!(err.contains("failed=0 pending=0"), "{err}");
    let (seen, files) = messages(dir.path(), true);
    for (name, bytes) in &files {
        assert!(!bytes.contains(&0), "{name} has NUL padding");
    }
    assert!(seen.values().all(|n| *n == 1), "no line twice");
    let fresh = std::fs::read_to_string(&live).unwrap();
    let fresh_lines = fresh.lines().count() as u64;
    assert!(
        std::fs::metadata(&live).unwrap().len() >= before,
        "the live file grew from where the truncation left it"
    );
    for t in 0..THREADS {
        for i in 0..PER_PHASE {
            let line = format!("p{} t{t} {i}", PHASES - 1);
            assert_eq!(seen.get(&line), Some(&1), "{line} once");
        }
    }
    assert!(fresh_lines >= (THREADS * PER_PHASE) as u64);
    assert!(
        fresh.starts_with('{'),
        "the live file starts with a whole record"
    );
}

#[test]
fn sigterm_flushes_reports_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, live) = start(dir.path(), &["--json-input"]);
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..100 {
        writeln!(
            stdin,
            r#"{{"msg":"json {i}","level":"warn","i":{i},"user":"ada"}}"#
        )
        .unwrap();
    }
    stdin.flush().unwrap();
    // Without an explicit flush the lines reach the file (the writer flushes when idle).
    wait_for("100 lines on disk", || count_lines(&live) == 100);
    nix_kill(child.id(), "TERM");
    let err = exited(child);
    assert!(
        err.contains("lines=100 written=100 dropped=0 failed=0 pending=0"),
        "{err}"
    );
    let text = std::fs::read_to_string(&live).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["message"], "json 0");
    assert_eq!(first["level"], "WARN");
    assert_eq!(first["i"], 0);
    assert_eq!(first["user"], "ada");
    drop(stdin);
}

fn nix_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The `lines=… written=…` stats line `keel log` printed, as numbers by name.
fn stats(err: &str) -> BTreeMap<String, u64> {
    let line = err
        .lines()
        .find(|l| l.starts_with("keel log: lines="))
        .unwrap_or_else(|| panic!("no stats line: {err}"));
    line.trim_start_matches("keel log: ")
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect()
}

#[test]
fn sigterm_with_unflushed_input_writes_it_all_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    // Flushed only when the queue drains or every hour; input keeps coming until SIGTERM.
    let (mut child, live) = start_with(dir.path(), "", "flush_interval = \"1h\"\n", &[]);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut sent = 0u64;
        // Ends with EPIPE once keel has exited.
        while writeln!(stdin, "line {sent}").is_ok() {
            sent += 1;
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let on_disk = count_lines(&live);
    nix_kill(child.id(), "TERM");
    let err = exited(child);
    let sent = feeder.join().unwrap();
    let stats = stats(&err);
    let lines = stats["lines"];
    assert!(lines > 0 && lines <= sent, "{err}");
    // The signal came while lines were still on their way to the file.
    assert!(
        lines as usize > on_disk,
        "{on_disk} on disk before SIGTERM: {err}"
    );
    assert_eq!(
        (stats["written"], stats["failed"], stats["pending"]),
        (lines, 0, 0),
        "{err}"
    );
    let text = std::fs::read_to_string(&live).unwrap();
    let seen: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        seen,
        (0..lines).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
}

#[test]
fn level_below_the_configs_level_is_written_not_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, live) =
        start_with(dir.path(), "level = \"error\"\n", "", &["--level", "debug"]);
    let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
    for i in 0..3 {
        writeln!(stdin.lock().unwrap(), "debug line {i}").unwrap();
    }
    let err = finish(child, stdin);
    assert_eq!(stats(&err)["written"], 3, "{err}");
    assert_eq!(count_lines(&live), 3);
}

#[test]
fn lines_below_the_level_are_counted_as_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, live) = start_with(dir.path(), "level = \"warn\"\n", "", &["--json-input"]);
    let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
    for level in ["info", "warn", "debug", "error"] {
        writeln!(stdin.lock().unwrap(), r#"{{"msg":"m","level":"{level}"}}"#).unwrap();
    }
    let err = finish(child, stdin);
    let stats = stats(&err);
    assert_eq!(
        (stats["lines"], stats["written"], stats["filtered"]),
        (4, 2, 2),
        "{err}"
    );
    assert_eq!(count_lines(&live), 2);
}
