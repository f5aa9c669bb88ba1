//! `keel bench cache`: the JSON line is complete and counts every request.

use std::process::{Command, Output};

use keel_testkit::redis::RedisServer;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "cache"])
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check(v: &serde_json::Value, requests: u64) {
    assert_eq!(v["requests"], requests);
    assert_eq!(v["errors"], 0);
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
    let (p50, p99, p999) = (
        v["p50_us"].as_u64().unwrap(),
        v["p99_us"].as_u64().unwrap(),
        v["p999_us"].as_u64().unwrap(),
    );
    assert!(p50 >= 1 && p50 <= p99 && p99 <= p999, "{v}");
}

#[test]
fn memory_run_reports_every_request() {
    let out = bench(&[
        "--url",
        "memory",
        "--clients",
        "3",
        "--requests",
        "3001",
        "--json",
    ]);
    let v = json(&out);
    check(&v, 3001);
    assert_eq!(v["target"], "memory");
}

#[test]
fn redis_run_reports_every_request_and_cleans_up() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "mine", "keep"]);
    let url = redis.url();
    let args = [
        "--url",
        url.as_str(),
        "--clients",
        "8",
        "--requests",
        "2000",
        "--keys",
        "100",
    ];
    let v = json(&bench(&[&args[..], &["--ratio", "1:1", "--json"]].concat()));
    check(&v, 2000);
    assert_eq!(v["target"], "redis");
    assert_eq!(
        redis.cli(&["DBSIZE"]),
        "1",
        "only the bench's own keys are removed"
    );
}

#[test]
fn bad_arguments_fail_clearly() {
    let out = bench(&["--url", "memory", "--ratio", "0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid ratio"));
    let port = keel_testkit::process::free_port();
    let down = bench(&[
        "--url",
        &format!("redis://127.0.0.1:{port}"),
        "--timeout",
        "1s",
    ]);
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("connecting"));
}

/// Writes `text` to `cache.toml` in a fresh temporary directory; returns the directory (for
/// the test to remove) and the file's path.
fn cache_config(name: &str, text: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("keel-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

#[test]
fn config_file_runs_against_a_cluster_and_keeps_its_prefix() {
    let cluster = keel_testkit::redis::RedisCluster::start();
    cluster.nodes()[0].cli(&["-c", "SET", "app:keep", "x"]);
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.port()))
        .collect();
    let (dir, path) = cache_config(
        "cfg",
        &format!(
            "type = \"redis\"\nname = \"app\"\nmode = \"cluster\"\nnodes = [{}]\n",
            nodes.join(", ")
        ),
    );
    let v = json(&bench(&[
        "--config",
        &path,
        "--clients",
        "4",
        "--requests",
        "1000",
        "--keys",
        "50",
        "--json",
    ]));
    check(&v, 1000);
    assert_eq!(v["target"], "redis");
    assert_eq!(
        cluster.dbsize(),
        1,
        "the bench removed its keys and only its keys"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bench_log(dir: &std::path::Path, config_name: &str, config: &str, args: &[&str]) -> Output {
    let path = dir.join(config_name);
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "log", "--config"])
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

fn log_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-bench-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn log_run_with_drops_accounts_for_every_record() {
    let dir = log_dir("drop");
    let live = dir.join("bench.log");
    // A tiny queue with drop-newest: drops are likely, and each must be accounted for.
    let config = format!(
        "type: file\nname: bench\nformatter: json\noptions:\n  path: {}\n  queue: 16\n  overflow: drop\n",
        live.display()
    );
    let out = bench_log(
        &dir,
        "log.yaml",
        &config,
        &["--records", "20000", "--threads", "4", "--json"],
    );
    let v = json(&out);
    let (written, dropped) = (
        v["written"].as_u64().unwrap(),
        v["dropped"].as_u64().unwrap(),
    );
    assert_eq!(written + dropped, 20_000, "{v}");
    assert_eq!(
        (v["failed"].as_u64(), v["pending"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(v["records"], 20_000);
    assert_eq!(v["threads"], 4);
    assert!(v["records_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["written_per_sec"].as_f64().unwrap() <= v["records_per_sec"].as_f64().unwrap());

    let text = std::fs::read_to_string(&live).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reports: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"].as_str().unwrap().ends_with(" records dropped"))
        .collect();
    let records = lines
        .iter()
        .filter(|l| l["message"] == "bench record")
        .count() as u64;
    assert_eq!(records, written, "{v}");
    assert_eq!(lines.len() as u64, written + reports.len() as u64);
    let reported: u64 = reports.iter().map(|r| r["dropped"].as_u64().unwrap()).sum();
    assert_eq!(reported, dropped, "every drop is reported in-band");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_run_with_block_writes_every_record_once() {
    let dir = log_dir("block");
    let live = dir.join("bench.log");
    let config = format!(
        "type = \"file\"\nname = \"bench\"\nformatter = \"json\"\nlevel = \"warn\"\n[options]\npath = \"{}\"\nqueue = 64\n",
        live.display()
    );
    let out = bench_log(
        &dir,
        "log.toml",
        &config,
        &["--records", "10001", "--threads", "3", "--json"],
    );
    let v = json(&out);
    assert_eq!(
        (v["written"].as_u64(), v["dropped"].as_u64()),
        (Some(10_001), Some(0)),
        "{v}"
    );
    let mut seen: Vec<(u64, u64)> = std::fs::read_to_string(&live)
        .unwrap()
        .lines()
        .map(|l| {
            let l: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(l["level"], "WARN", "logged at the configured level");
            (l["thread"].as_u64().unwrap(), l["seq"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(seen.len(), 10_001);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 10_001, "no record written twice");
    // 10001 over 3 threads: 3334, 3334, 3333.
    let per_thread = |t| seen.iter().filter(|(th, _)| *th == t).count();
    assert_eq!(
        (per_thread(0), per_thread(1), per_thread(2)),
        (3334, 3334, 3333)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_text_output_and_bad_configs() {
    let dir = log_dir("text");
    let live = dir.join("bench.log");
    let config = format!(
        "{{\"type\":\"file\",\"name\":\"bench\",\"options\":{{\"path\":\"{}\"}}}}",
        live.display()
    );
    let out = bench_log(
        &dir,
        "log.json",
        &config,
        &["--records", "500", "--threads", "2"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("records/s"), "{stdout}");
    assert!(stdout.contains("written 500"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&live).unwrap().lines().count(), 500);

    let bad = bench_log(&dir, "log.ini", "type = file", &["--records", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown extension"));
    let unknown = bench_log(&dir, "kafka.toml", "type = \"kafka\"\nname = \"x\"\n", &[]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("valid types are"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_run_ships_every_record_to_elasticsearch() {
    let server = keel_testkit::osmem::OsmemServer::start();
    let dir = log_dir("elastic");
    let config = format!(
        "type = \"elasticsearch\"\nname = \"bench\"\n[options]\nurl = \"{}\"\nindex = \"bench-%Y\"\nbatch_size = 200\nflush_interval = \"50ms\"\noverflow = \"block\"\ngzip = true\n",
        server.url()
    );
    let out = bench_log(
        &dir,
        "es.toml",
        &config,
        &["--records", "3000", "--threads", "2", "--json"],
    );
    let v = json(&out);
    assert_eq!(
        (
            v["written"].as_u64(),
            v["dropped"].as_u64(),
            v["failed"].as_u64(),
            v["pending"].as_u64()
        ),
        (Some(3000), Some(0), Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(server.count("bench-*"), 3000);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The factory reads `type` in any case; the bench must too, or it runs on (and clears) the
/// configured prefix.
#[test]
fn config_with_a_capitalized_type_keeps_the_real_keys() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "app:real", "keep"]);
    let (dir, path) = cache_config(
        "case",
        &format!(
            "type = \"Redis\"\nname = \"app\"\nurl = \"{}\"\n",
            redis.url()
        ),
    );
    let v = json(&bench(&[
        "--config",
        &path,
        "--requests",
        "200",
        "--keys",
        "20",
        "--json",
    ]));
    check(&v, 200);
    assert_eq!(
        redis.cli(&["GET", "app:real"]),
        "keep",
        "the real key survives"
    );
    assert_eq!(
        redis.cli(&["DBSIZE"]),
        "1",
        "the bench removed only its keys"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
