//! The shipped Grafana dashboard (`dashboards/keel.json`) and Prometheus alerting rules
//! (`dashboards/alerts.yml`) stay true to the metrics Keel really exports:
//! - every metric name they use appears in a real exposition rendered here by the cache, lock,
//!   election, logger and Elasticsearch sink (so renaming a metric breaks this test);
//! - every label they group or filter by is a label of that metric;
//! - `promtool check rules` accepts the rules;
//! - a real Prometheus loads the rules and evaluates them against `keel demo --serve` with no
//!   rule in error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_cache::{Cache, MemoryCache, Ttl};
use keel_coord::{Election, Locker, MemoryStore};
use keel_metrics::MetricsService;
use keel_testkit::osmem::OsmemServer;
use keel_testkit::process::{free_port, require_program};
use keel_testkit::prometheus::Prometheus;
use tokio_util::sync::CancellationToken;

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

/// The dashboard's namespace variable, as the rules spell it.
const NS: &str = "keel";

/// Every PromQL expression of the dashboard (`${ns}` replaced) and of the rules.
fn expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboards().join("keel.json")).unwrap())
            .expect("dashboards/keel.json is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target with an expr");
            out.push((
                format!("panel {:?}", panel["title"]),
                expr.replace("${ns}", NS),
            ));
        }
    }
    let rules = std::fs::read_to_string(dashboards().join("alerts.yml")).unwrap();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            out.push(("rule".into(), expr.trim().trim_matches('\'').to_owned()));
        }
    }
    assert!(out.len() >= 15, "expressions found: {}", out.len());
    out
}

/// Metric names in `expr`: identifiers starting with `<ns>_`.
fn names_in(expr: &str) -> BTreeSet<String> {
    let prefix = format!("{NS}_");
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find(&prefix) {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Label names used in `by (...)`, `without (...)` and `{label=...}` matchers, per metric.
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for keyword in ["by (", "by(", "without (", "without("] {
        for part in expr.split(keyword).skip(1) {
            let list = part.split(')').next().unwrap_or("");
            labels.extend(
                list.split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    for part in expr.split('{').skip(1) {
        let matchers = part.split('}').next().unwrap_or("");
        for m in matchers.split(',') {
            let name: String = m
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
    }
    labels.remove("le"); // histogram buckets
    labels
}

/// Sample names and their label names, from a rendered exposition.
fn series(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let entry = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.find('}').unwrap_or(line.len())];
            for pair in body.split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    entry.insert(k.trim().to_owned());
                }
            }
        }
    }
    out
}

/// Runs every component once against the process-wide registry (namespace `keel`) and
/// renders it.
fn real_exposition() -> String {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = MetricsService::global();
        let cache = MemoryCache::builder("sessions").metrics(metrics).build();
        cache.set("k", "v".into(), Ttl::Never).await.unwrap();
        let _ = cache.get("k").await.unwrap();
        let _ = cache.get("missing").await.unwrap();
        let _ = cache.incr_by("k", 1).await; // an error (not an integer)
        let locker = Locker::with_metrics(MemoryStore::new(), metrics);
        let guard = locker
            .lock("nightly", Duration::from_secs(5), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            locker
                .try_lock("nightly", Duration::from_secs(5))
                .await
                .unwrap()
                .is_none()
        );
        guard.release().await.unwrap();
        // A lock that expires while held (no watchdog) is counted as lost.
        let short = locker
            .lock("short", Duration::from_millis(50), Duration::from_secs(1))
            .await
            .unwrap();
        short.lost().cancelled().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let election = Election::builder(locker.clone(), "scheduler", "node-a")
            .lease(Duration::from_millis(600))
            .metrics(metrics)
            .on_started_leading(move |l| {
                let _ = tx.send(l);
            })
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (e, s) = (election.clone(), stop.clone());
            async move { e.run(s).await }
        });
        drop(rx.recv().await);
        stop.cancel();
        run.await.unwrap();
        // A file logger, and an Elasticsearch sink shipping to a real osmem-server.
        let dir = tempfile::tempdir().unwrap();
        let file = keel_log::LogConfig::from_toml(&format!(
            "type = \"file\"\nname = \"app\"\n[options]\npath = \"{}\"\n",
            dir.path().join("app.log").display()
        ))
        .unwrap();
        let logger = keel_log::open(&file).unwrap();
        logger.info("hello", &[]);
        let server = OsmemServer::start();
        let es = keel_log::LogConfig::from_toml(&format!(
            "type = \"elasticsearch\"\nname = \"ship\"\n[options]\nurl = \"{}\"\n",
            server.url()
        ))
        .unwrap();
        let shipper = keel_log::open(&es).unwrap();
        shipper.info("shipped", &[]);
        let _ = logger.flush(Duration::from_secs(2));
        let stats = shipper.flush(Duration::from_secs(10));
        assert_eq!(stats.pending, 0, "shipped to osmem-server");
        metrics.render()
    })
}

#[test]
fn every_metric_and_label_the_dashboard_and_rules_use_exists() {
    let exposition = real_exposition();
    let series = series(&exposition);
    let mut missing = Vec::new();
    for (source, expr) in expressions() {
        let names = names_in(&expr);
        assert!(!names.is_empty(), "{source}: no {NS}_ metric in {expr}");
        for name in &names {
            let Some(labels) = series.get(name) else {
                missing.push(format!("{source}: metric {name} (in {expr})"));
                continue;
            };
            for label in labels_in(&expr) {
                // A label used in the expression must exist on at least one of its metrics.
                let on_any = names
                    .iter()
                    .any(|n| series.get(n).is_some_and(|l| l.contains(&label)));
                if !on_any {
                    missing.push(format!(
                        "{source}: label {label} of {name} (has {labels:?})"
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the real exposition:\n{}\n\nexposition:\n{exposition}",
        missing.join("\n")
    );
}

#[test]
fn promtool_accepts_the_rules() {
    let promtool = require_program("promtool", "the Debian package `prometheus`");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(dashboards().join("alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_evaluates_the_rules_against_keel_demo_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("demo.toml");
    let embedded = include_str!("../src/cmd/demo.toml")
        .replace("namespace = \"lab\"", &format!("namespace = \"{NS}\""));
    std::fs::write(&config, embedded).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["demo", "--config"])
        .arg(&config)
        .args(["--serve", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prometheus =
        Prometheus::start_with_rules(addr.parse().unwrap(), &dashboards().join("alerts.yml"));
    prometheus.wait_for(
        &format!("{NS}_cache_requests_total"),
        Duration::from_secs(30),
    );
    // Every rule evaluated at least once after the target was scraped, none in error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let all: Vec<serde_json::Value> = prometheus
            .rules()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !all.is_empty()
            && all.iter().all(|r| {
                !r["lastEvaluation"]
                    .as_str()
                    .unwrap_or("0001")
                    .starts_with("0001")
            });
        if evaluated || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(rules.len() >= 5, "rules loaded: {}", rules.len());
    for rule in rules {
        assert_eq!(
            rule["health"].as_str(),
            Some("ok"),
            "rule {} unhealthy: {}",
            rule["name"],
            rule["lastError"]
        );
        assert!(
            !rule["lastEvaluation"]
                .as_str()
                .unwrap_or("0001")
                .starts_with("0001"),
            "rule {} never evaluated",
            rule["name"]
        );
    }
}
