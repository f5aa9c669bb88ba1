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

#[test]
fn config_file_runs_against_a_cluster_and_keeps_its_prefix() {
    let cluster = keel_testkit::redis::RedisCluster::start();
    cluster.nodes()[0].cli(&["-c", "SET", "app:keep", "x"]);
    let dir = std::env::temp_dir().join(format!("keel-bench-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.toml");
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.port()))
        .collect();
    std::fs::write(
        &path,
        format!(
            "type = \"redis\"\nname = \"app\"\nmode = \"cluster\"\nnodes = [{}]\n",
            nodes.join(", ")
        ),
    )
    .unwrap();
    let path = path.display().to_string();
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
