//! `keel demo` end to end: the real binary, its output and exit codes.

use std::process::Command;

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

#[test]
fn demo_prints_seed_metrics_with_nonzero_counts() {
    let out = keel().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("get user:123:session -> Some(\"session-data\")"),
        "{stdout}"
    );
    let value = |series: &str| -> f64 {
        keel_testkit::prometheus::sample(&stdout, series)
            .unwrap_or_else(|| panic!("no {series} in\n{stdout}"))
    };
    assert!(
        value("lab_cache_requests_total{cache=\"demo\",operation=\"get\",status=\"hit\"}") > 0.0
    );
    assert!(
        value("lab_cache_requests_total{cache=\"demo\",operation=\"get\",status=\"miss\"}") > 0.0
    );
    assert!(
        value("lab_cache_requests_total{cache=\"demo\",operation=\"set\",status=\"ok\"}") > 0.0
    );
    assert!(
        value("lab_cache_operation_duration_seconds_count{cache=\"demo\",operation=\"get\"}") > 0.0
    );
    assert!(value("lab_cache_hits_total{cache=\"demo\"}") > 0.0);
    assert!(value("lab_cache_misses_total{cache=\"demo\"}") > 0.0);
    assert!(value("lab_cache_items{cache=\"demo\"}") > 0.0);
    assert!(stdout.trim_end().ends_with("# EOF"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[INFO] demo: cache opened cache=demo kind=memory"),
        "{stderr}"
    );
    assert!(stderr.contains("[WARN] demo: incr refused"), "{stderr}");
}

#[test]
fn demo_with_a_bad_config_fails_clearly() {
    let dir = std::env::temp_dir().join(format!("keel-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[cache]\ntype = \"memcached\"\nname = \"x\"\n").unwrap();
    let out = keel()
        .args(["demo", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown cache type \"memcached\"; valid types are: memory"),
        "{stderr}"
    );
    let missing = keel()
        .args(["demo", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}
