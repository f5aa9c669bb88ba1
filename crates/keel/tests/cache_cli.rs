//! `keel cache` against a real redis-server: raw bytes in, the same bytes in Redis.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use keel_testkit::redis::RedisServer;

fn keel(redis: &RedisServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["cache", "--url", &redis.url()])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn set_get_ttl_del_match_redis_cli() {
    let redis = RedisServer::start();
    assert_eq!(
        stdout(&keel(
            &redis,
            &["set", "greeting", "hello world", "--ttl", "30s"]
        )),
        "OK\n"
    );
    assert_eq!(redis.cli(&["GET", "greeting"]), "hello world");
    let pttl: i64 = redis.cli(&["PTTL", "greeting"]).parse().unwrap();
    assert!(pttl > 29_000 && pttl <= 30_000, "{pttl}");
    let ours: i64 = stdout(&keel(&redis, &["ttl", "greeting"]))
        .trim()
        .parse()
        .unwrap();
    assert!((ours - pttl).abs() < 1000, "{ours} vs {pttl}");
    assert_eq!(stdout(&keel(&redis, &["get", "greeting"])), "hello world");
    assert_eq!(stdout(&keel(&redis, &["del", "greeting"])), "1\n");
    assert_eq!(stdout(&keel(&redis, &["del", "greeting"])), "0\n");
    assert_eq!(stdout(&keel(&redis, &["ttl", "greeting"])), "-2\n");
    let missing = keel(&redis, &["get", "greeting"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn binary_values_from_stdin_round_trip_exactly() {
    let redis = RedisServer::start();
    let value: Vec<u8> = (0..=255u8).chain([0, b'\n', 0xff]).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["cache", "--url", &redis.url(), "set", "bin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&value).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(keel(&redis, &["get", "bin"]).stdout, value);
    assert_eq!(redis.cli(&["STRLEN", "bin"]), "259");
    assert_eq!(redis.cli(&["TTL", "bin"]), "-1");
}

#[test]
fn incr_and_its_errors() {
    let redis = RedisServer::start();
    assert_eq!(stdout(&keel(&redis, &["incr", "n"])), "1\n");
    assert_eq!(stdout(&keel(&redis, &["incr", "n", "41"])), "42\n");
    assert_eq!(stdout(&keel(&redis, &["incr", "n", "-50"])), "-8\n");
    assert_eq!(redis.cli(&["GET", "n"]), "-8");
    redis.cli(&["SET", "s", "abc"]);
    let bad = keel(&redis, &["incr", "s"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an integer"));
}

/// `--ttl 0s` stored a key that was gone at once while printing OK; it is refused, the
/// message says how to write "no expiry", and nothing is written.
#[test]
fn a_zero_ttl_is_refused_with_a_hint() {
    let redis = RedisServer::start();
    let out = keel(&redis, &["set", "k", "v", "--ttl", "0s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leave --ttl out for no expiry"), "{err}");
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0");
}

#[test]
fn unreachable_server_exits_nonzero_with_a_clear_message() {
    let port = keel_testkit::process::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "cache",
            "--url",
            &format!("redis://127.0.0.1:{port}"),
            "--timeout",
            "1s",
        ])
        .args(["get", "k"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server unavailable during connect") || err.contains("timed out"),
        "{err}"
    );
}

#[test]
fn config_file_with_acl_credentials() {
    let redis = RedisServer::start();
    redis.cli(&["ACL", "SETUSER", "ops", "on", ">ops-pass", "~*", "+@all"]);
    let dir = std::env::temp_dir().join(format!("keel-cache-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.yaml");
    std::fs::write(
        &path,
        format!(
            "type: redis\nname: app\nhost: 127.0.0.1\nport: {}\nusername: ops\npassword: ops-pass\n",
            redis.port()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["cache", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(stdout(&run(&["set", "k", "v"])), "OK\n");
    assert_eq!(
        redis.cli(&["GET", "app:k"]),
        "v",
        "the config's prefix applies"
    );
    assert_eq!(stdout(&run(&["get", "k"])), "v");
    let neither = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["cache", "get", "k"])
        .output()
        .unwrap();
    assert!(!neither.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}
