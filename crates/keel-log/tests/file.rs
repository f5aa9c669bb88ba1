//! The rotating file sink: nothing lost or duplicated across rotations (gzipped files
//! included), unique rotated names, retention, reopen after an external rename, permissions.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_log::{
    FileOptions, FileSink, JsonFormat, Level, Logger, Overflow, Sink, field, rotated_files,
};

fn read_all(path: &Path) -> String {
    let mut text = String::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
    } else {
        text = std::fs::read_to_string(path).unwrap_or_default();
    }
    text
}

/// Every line of the log, oldest file first, the live file last.
fn all_lines(live: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = rotated_files(live);
    files.push(live.to_owned());
    files
        .iter()
        .flat_map(|f| {
            read_all(f)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

fn logger(options: FileOptions) -> (Logger, Arc<FileSink>) {
    let sink = Arc::new(
        FileSink::start(
            "file",
            options,
            10_000,
            Overflow::Block,
            Box::new(JsonFormat),
        )
        .unwrap(),
    );
    (
        Logger::new("app", Level::Info, vec![sink.clone() as Arc<dyn Sink>]),
        sink,
    )
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn four_threads_200k_lines_each_survive_rotation_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("app.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(4 * 1024 * 1024);
    options.compress = true;
    let (log, _sink) = logger(options);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.with_fields(&[field("t", t)]);
            std::thread::spawn(move || {
                for i in 0..200_000u64 {
                    log.info("line", &[field("i", i)]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = log.shutdown(Duration::from_secs(60));
    assert_eq!(
        (stats.written, stats.dropped, stats.failed),
        (800_000, 0, 0)
    );
    // The background compressor may still be working on the last rotated file.
    wait_for("compression to finish", || {
        rotated_files(&live)
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "gz"))
    });
    let rotated = rotated_files(&live);
    assert!(rotated.len() >= 5, "rotated {} times", rotated.len());
    let lines = all_lines(&live);
    assert_eq!(lines.len(), 800_000, "nothing lost or duplicated");
    for t in 0..4u64 {
        let seq: Vec<u64> = lines
            .iter()
            .filter(|l| l["t"] == t)
            .map(|l| l["i"].as_u64().unwrap())
            .collect();
        assert_eq!(seq.len(), 200_000);
        assert!(
            seq.windows(2).all(|w| w[1] == w[0] + 1),
            "thread {t} in order across files"
        );
    }
}

#[test]
fn many_rotations_in_one_second_get_unique_names() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("burst.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(300);
    let (log, _sink) = logger(options);
    for i in 0..200u64 {
        log.info("x", &[field("i", i)]);
    }
    log.shutdown(Duration::from_secs(10));
    let rotated = rotated_files(&live);
    assert!(rotated.len() > 50, "{}", rotated.len());
    let lines = all_lines(&live);
    let seq: Vec<u64> = lines.iter().map(|l| l["i"].as_u64().unwrap()).collect();
    assert_eq!(
        seq,
        (0..200).collect::<Vec<_>>(),
        "no rotation overwrote another"
    );
}

#[test]
fn retention_keeps_the_newest_files() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("kept.log");
    let mut options = FileOptions::new(&live);
    options.max_bytes = Some(300);
    options.keep_files = Some(3);
    let (log, _sink) = logger(options);
    for i in 0..100u64 {
        log.info("x", &[field("i", i)]);
    }
    log.shutdown(Duration::from_secs(10));
    wait_for("retention", || rotated_files(&live).len() <= 3);
    let lines = all_lines(&live);
    let last = lines.last().unwrap()["i"].as_u64().unwrap();
    assert_eq!(last, 99, "the newest lines survive");
    assert!(lines.len() < 100, "older files were deleted");
    let seq: Vec<u64> = lines.iter().map(|l| l["i"].as_u64().unwrap()).collect();
    assert!(
        seq.windows(2).all(|w| w[1] == w[0] + 1),
        "what is kept is contiguous"
    );
}

#[test]
fn reopen_after_an_external_rename_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("ext.log");
    let (log, sink) = logger(FileOptions::new(&live));
    for i in 0..10u64 {
        log.info("before", &[field("i", i)]);
    }
    log.flush(Duration::from_secs(5));
    let moved = dir.path().join("ext.log.1");
    std::fs::rename(&live, &moved).unwrap();
    sink.reopen();
    for i in 10..20u64 {
        log.info("after", &[field("i", i)]);
    }
    log.shutdown(Duration::from_secs(5));
    assert_eq!(read_all(&moved).lines().count(), 10);
    let fresh: Vec<u64> = read_all(&live)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(fresh, (10..20).collect::<Vec<_>>());
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("nested/deeper/app.log");
    let (log, _sink) = logger(FileOptions::new(&live));
    log.info("x", &[]);
    log.shutdown(Duration::from_secs(5));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&live), 0o600);
    assert_eq!(mode(live.parent().unwrap()), 0o700);
}

#[test]
fn file_logger_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("cfg.log");
    let cfg = keel_log::LogConfig::from_toml(&format!(
        "type = \"file\"\nname = \"svc\"\nformatter = \"text\"\n[options]\npath = \"{}\"\nmax_bytes = 1000\nkeep_files = 2\ncompress = true\nmax_age = \"7d\"\n",
        live.display()
    ))
    .unwrap();
    let log = keel_log::open(&cfg).unwrap();
    log.warn("hello", &[field("n", 1)]);
    log.shutdown(Duration::from_secs(5));
    assert!(
        std::fs::read_to_string(&live)
            .unwrap()
            .contains("[WARN] svc: hello n=1")
    );
}

#[test]
fn timezone_option_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |tz: &str| {
        keel_log::LogConfig::from_toml(&format!(
            "type = \"file\"\nname = \"svc\"\n[options]\npath = \"{}\"\nrotate = \"hourly\"\ntimezone = \"{tz}\"\n",
            dir.path().join("tz.log").display()
        ))
        .unwrap()
    };
    for tz in ["utc", "local", "Asia/Kolkata"] {
        let log = keel_log::open(&cfg(tz)).unwrap_or_else(|e| panic!("{tz}: {e}"));
        log.shutdown(Duration::from_secs(5));
    }
    let err = keel_log::open(&cfg("Mars/Olympus_Mons")).unwrap_err();
    assert!(
        matches!(&err, keel_log::Error::InvalidConfig { field, .. } if field == "options.timezone"),
        "{err}"
    );
    assert!(err.to_string().contains("Mars/Olympus_Mons"), "{err}");
}
