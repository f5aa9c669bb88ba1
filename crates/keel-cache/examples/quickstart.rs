//! The README's quick tour: `cargo run -p keel-cache --example quickstart`.

use std::time::Duration;

use keel_cache::{CacheConfig, CacheExt, Manager, Ttl};
use keel_metrics::MetricsService;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The seed's NewMetricsService("lab", …).
    let metrics = MetricsService::new("lab")?;
    let config = CacheConfig::from_yaml(
        "
type: memory
name: session-cache
config:
  defaultTTL: 5m
",
    )?;
    let cache = keel_cache::open_with_metrics(&config, &metrics).await?;
    let manager = Manager::new();
    manager.register(cache.clone())?;

    let session = Ttl::After(Duration::from_secs(1800));
    cache
        .set("user:123:session", "data".into(), session)
        .await?;
    let hit = cache.get("user:123:session").await?; // Ok(None) on a miss
    let logins = cache.incr_by("logins", 1).await?; // atomic; NotAnInteger / Overflow are errors
    let job = Ttl::After(Duration::from_secs(60));
    let won = cache.set_nx("job:nightly", "node-a".into(), job).await?;
    cache
        .set_json("user:123", &vec!["admin"], Ttl::Default)
        .await?;
    println!("hit={hit:?} logins={logins} won={won}");

    print!("{}", metrics.render()); // or metrics.serve("127.0.0.1:9100").await?
    manager.close_all().await?; // closes every cache, reports every failure
    Ok(())
}
