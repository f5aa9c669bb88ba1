//! `keel demo`: a guided tour of the cache on embedded defaults.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use keel_cache::{CacheConfig, CacheExt, Manager, Ttl};
use keel_log::field;
use keel_metrics::MetricsService;
use serde::Deserialize;

const EMBEDDED: &str = include_str!("demo.toml");

/// Arguments of `keel demo`.
#[derive(clap::Args)]
pub struct Args {
    /// A TOML file with `[metrics]` and `[cache]` sections (default: the embedded demo.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also serve /metrics on this address and keep running until Ctrl-C (e.g. 127.0.0.1:9100).
    #[arg(long)]
    serve: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoConfig {
    #[serde(default)]
    metrics: MetricsSection,
    cache: CacheConfig,
    /// The console logger the demo narrates to (none: no log lines).
    #[serde(default)]
    log: Option<keel_log::LogConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    namespace: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            namespace: "lab".into(),
        }
    }
}

fn load(path: Option<&PathBuf>) -> Result<DemoConfig> {
    let (source, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => ("embedded demo.toml".to_owned(), EMBEDDED.to_owned()),
    };
    toml::from_str(&text).with_context(|| format!("invalid config in {source}"))
}

pub async fn run(args: Args) -> Result<()> {
    let config = load(args.config.as_ref())?;
    let log = match &config.log {
        Some(c) => keel_log::open(c)?,
        None => keel_log::Logger::new("demo", keel_log::Level::Fatal, Vec::new()),
    };
    let metrics = MetricsService::new(&config.metrics.namespace)?;
    let manager = Manager::new();
    let cache = keel_cache::open_with_metrics(&config.cache, &metrics).await?;
    manager.register(cache.clone())?;
    log.info(
        "cache opened",
        &[
            field("cache", cache.name().to_owned()),
            field("kind", cache.kind().as_str()),
        ],
    );
    println!(
        "opened {} cache {:?} (default TTL {:?}); manager holds {:?}",
        cache.kind(),
        cache.name(),
        config.cache.options.default_ttl,
        manager.names()
    );

    let key = "user:123:session";
    cache
        .set(
            key,
            "session-data".into(),
            Ttl::After(Duration::from_secs(30)),
        )
        .await?;
    println!("set {key} = \"session-data\" (ttl 30s)");
    log.info(
        "session stored",
        &[field("key", key), field("ttl_secs", 30)],
    );
    let got = cache.get(key).await?;
    println!(
        "get {key} -> {:?}",
        got.as_deref().map(String::from_utf8_lossy)
    );
    println!("ttl {key} -> {:?}", cache.ttl(key).await?);
    println!(
        "get user:999:session -> {:?} (a miss)",
        cache.get("user:999:session").await?
    );

    for _ in 0..3 {
        let n = cache.incr_by("logins", 1).await?;
        println!("incr logins -> {n}");
    }
    println!("decr logins by 2 -> {}", cache.decr_by("logins", 2).await?);

    let first = cache
        .set_nx(
            "job:nightly",
            "node-a".into(),
            Ttl::After(Duration::from_secs(60)),
        )
        .await?;
    let second = cache
        .set_nx(
            "job:nightly",
            "node-b".into(),
            Ttl::After(Duration::from_secs(60)),
        )
        .await?;
    println!("set_nx job:nightly by node-a -> {first}, by node-b -> {second}");
    let swapped = cache
        .set_if_match("job:nightly", "node-c".into(), b"node-a", Ttl::Default)
        .await?;
    println!("set_if_match job:nightly node-a => node-c -> {swapped}");

    cache
        .set_json(
            "user:123",
            &serde_json::json!({"name": "Ada", "roles": ["admin"]}),
            Ttl::Default,
        )
        .await?;
    let user: Option<serde_json::Value> = cache.get_json("user:123").await?;
    println!("get_json user:123 -> {}", user.unwrap_or_default());

    cache
        .set_many(&[("a", "1".into()), ("b", "2".into())], Ttl::Default)
        .await?;
    let many = cache.get_many(&["a", "b", "c"]).await?;
    println!(
        "get_many a b c -> {} found of 3",
        many.iter().flatten().count()
    );

    match cache.incr_by(key, 1).await {
        Err(e) => {
            log.warn(
                "incr refused",
                &[field("key", key), field("error", e.to_string())],
            );
            println!("incr on a non-integer is a typed error: {e}");
        }
        Ok(n) => println!("unexpected: incr returned {n}"),
    }
    match cache.get("").await {
        Err(e) => println!("an empty key is a typed error: {e}"),
        Ok(v) => println!("unexpected: get(\"\") returned {v:?}"),
    }
    println!("delete {key} -> {}", cache.delete(key).await?);
    println!("get {key} -> {:?}", cache.get(key).await?);

    if let Some(addr) = &args.serve {
        let server = metrics.serve(addr).await?;
        println!(
            "serving http://{}/metrics; Ctrl-C to stop",
            server.local_addr()
        );
        tokio::signal::ctrl_c().await?;
    }

    println!("\n--- Prometheus exposition ---");
    print!("{}", metrics.render());
    manager.close_all().await?;
    log.info("demo finished", &[]);
    let stats = log.shutdown(Duration::from_secs(5));
    if stats.dropped > 0 || stats.failed > 0 {
        eprintln!(
            "keel: {} log records dropped, {} failed",
            stats.dropped, stats.failed
        );
    }
    Ok(())
}
