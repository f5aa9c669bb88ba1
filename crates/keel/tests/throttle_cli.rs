//! `keel throttle` as a real process against a real redis-server: exit 0 while allowed, 75
//! with the retry-after on stderr when limited; typed refusals for bad input; the
//! `--on-failure` policy when nothing listens.

use std::process::{Command, Output};

use keel_testkit::redis::RedisServer;

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

fn throttle(url: &str, key: &str, extra: &[&str]) -> Output {
    keel()
        .args(["throttle", "--url", url, key])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exits_0_within_the_burst_and_75_with_the_retry_after_when_limited() {
    let redis = RedisServer::start();
    let url = redis.url();
    let limit = ["--rate", "1/m", "--burst", "3"];
    for i in 0..3 {
        let out = throttle(&url, "api", &limit);
        assert_eq!(out.status.code(), Some(0), "request {i}: {}", stderr(&out));
    }
    let out = throttle(&url, "api", &limit);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let err = stderr(&out);
    let ms: u64 = err
        .split("retry_after_ms=")
        .nth(1)
        .and_then(|s| s.trim_end().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no retry_after_ms in {err:?}"));
    assert!(
        ms > 0 && ms <= 60_000,
        "one interval of 60 s at most: {ms} ms"
    );
    // The key lives under keel:'s namespace with a hash tag, and expires when idle.
    let pttl: i64 = redis
        .cli(&["PTTL", "__keel_rate:keel:{api}"])
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 180_000, "{pttl}");
    // Another key is independent; a cost takes that many.
    let out = throttle(
        &url,
        "other",
        &["--rate", "1/h", "--burst", "3", "--cost", "3"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = throttle(&url, "other", &["--rate", "1/h", "--burst", "3"]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let redis = RedisServer::start();
    let url = redis.url();
    for (key, args, expect) in [
        (
            "k",
            &["--rate", "0/s", "--burst", "1"][..],
            "count must be at least 1",
        ),
        (
            "k",
            &["--rate", "10/x", "--burst", "1"][..],
            "unit must be s, m or h",
        ),
        (
            "k",
            &["--rate", "10/s", "--burst", "0"][..],
            "burst must be between",
        ),
        (
            "k",
            &["--rate", "10/s", "--burst", "2", "--cost", "3"][..],
            "invalid cost 3",
        ),
        ("a{b}", &["--rate", "10/s", "--burst", "2"][..], "'{'"),
    ] {
        let out = throttle(&url, key, args);
        let code = out.status.code();
        assert!(code != Some(0) && code != Some(75), "{args:?}: {code:?}");
        let err = stderr(&out);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "nothing was written");
}

#[test]
fn an_unreachable_store_follows_on_failure() {
    let port = keel_testkit::process::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let base = ["--rate", "10/s", "--burst", "5", "--timeout", "500ms"];
    for (policy, code) in [("error", 1), ("open", 0), ("closed", 75)] {
        let out = throttle(&url, "k", &[&base[..], &["--on-failure", policy]].concat());
        assert_eq!(out.status.code(), Some(code), "{policy}: {}", stderr(&out));
        if policy != "error" {
            assert!(
                stderr(&out).contains("store unavailable"),
                "{}",
                stderr(&out)
            );
        }
    }
}

/// `--config` reaches a Cluster; the key lands in the config prefix's namespace, in one slot.
#[test]
fn config_file_runs_against_a_cluster() {
    let cluster = keel_testkit::redis::RedisCluster::start();
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.port()))
        .collect();
    let dir = std::env::temp_dir().join(format!("keel-throttle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.toml");
    std::fs::write(
        &path,
        format!(
            "type = \"redis\"\nname = \"app\"\nmode = \"cluster\"\nnodes = [{}]\n",
            nodes.join(", ")
        ),
    )
    .unwrap();
    let path = path.display().to_string();
    let run = || {
        keel()
            .args(["throttle", "--config", &path, "user:7"])
            .args(["--rate", "1/h", "--burst", "2"])
            .output()
            .unwrap()
    };
    let codes: Vec<_> = (0..3).map(|_| run().status.code()).collect();
    assert_eq!(codes, [Some(0), Some(0), Some(75)]);
    let exists = cluster.nodes()[0].cli(&["-c", "EXISTS", "__keel_rate:app:{user:7}"]);
    assert_eq!(exists.trim(), "1", "the key under the config's prefix");
    let _ = std::fs::remove_dir_all(dir);
}
