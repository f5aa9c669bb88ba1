//! One `--url | --config` target for every command that talks to a cache or a store.
//!
//! `--url` (or `KEEL_REDIS_URL`) is a `redis://` / `rediss://` URL; `--config` a cache config
//! file (TOML, YAML or JSON, chosen by extension) for Cluster, Sentinel, TLS files or ACL
//! users. `--timeout` is the connect and response timeout, the same default everywhere. Each
//! command keeps its own key prefix for `--url`, chosen by what it writes: `keel cache` none
//! (so `redis-cli GET KEY` sees the same key), `keel lock`/`elect`/`throttle` `keel:`, `keel bench`
//! `keel-bench:` (its keys are removed afterwards).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_cache::{Cache, CacheConfig, Endpoint, RedisCache, Secret, parse_duration};
use keel_coord::RedisStore;
use keel_metrics::MetricsService;

/// Where a command's keys live.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["url", "config"])))]
pub struct Target {
    /// Server URL: redis://host:port, optionally with user:password@ before the host and /db
    /// after the port, or rediss://… for TLS.
    #[arg(long, env = "KEEL_REDIS_URL")]
    pub url: Option<String>,
    /// A cache config file (TOML, YAML or JSON): any topology (Cluster, Sentinel), TLS files,
    /// ACL users.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Connect and response timeout towards the server.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl Target {
    /// A Redis cache named `name` on the target: for `--url`, with `prefix`; for `--config`,
    /// as the file says (it must be of type redis). Not yet connected.
    ///
    /// # Errors
    /// A bad URL or config, or a config of another type.
    pub fn redis(&self, name: &str, prefix: &str, metrics: &MetricsService) -> Result<RedisCache> {
        match (&self.url, &self.config) {
            (Some(url), _) => Ok(RedisCache::builder(
                name,
                Endpoint::Url(Secret::new(url.clone())),
            )
            .prefix(prefix)
            .connect_timeout(self.timeout)
            .response_timeout(self.timeout)
            .items_refresh(None)
            .metrics(metrics)
            .build()?),
            (None, Some(path)) => {
                let config = CacheConfig::from_path(path)?;
                if !config.kind.eq_ignore_ascii_case("redis") {
                    bail!(
                        "{}: this command needs a redis cache config",
                        path.display()
                    );
                }
                Ok(keel_cache::redis_from_config(&config, metrics)?)
            }
            (None, None) => bail!("give --url or --config"),
        }
    }

    /// The coordination store (locks, election, semaphores) on the target: for `--url`, keys
    /// under `namespace`; for `--config`, the file's redis config with its prefix as the
    /// namespace. Not yet connected.
    ///
    /// # Errors
    /// A bad URL or config, or a config of another type.
    pub fn coord_store(&self, namespace: &str, metrics: &MetricsService) -> Result<RedisStore> {
        match (&self.url, &self.config) {
            (Some(url), _) => Ok(RedisStore::builder(Endpoint::Url(Secret::new(url.clone())))
                .name("keel")
                .namespace(namespace)
                .connect_timeout(self.timeout)
                .response_timeout(self.timeout)
                .metrics(metrics)
                .build()?),
            (None, Some(path)) => {
                let config = CacheConfig::from_path(path)?;
                if !config.kind.eq_ignore_ascii_case("redis") {
                    bail!(
                        "{}: this command needs a redis cache config",
                        path.display()
                    );
                }
                Ok(RedisStore::from_config(&config, metrics)?)
            }
            (None, None) => bail!("give --url or --config"),
        }
    }

    /// Any cache on the target, connected: for `--url` a Redis cache with `prefix`, for
    /// `--config` whatever the file describes, after `adjust` has seen the config.
    ///
    /// # Errors
    /// A bad URL or config, or a server that cannot be reached within the timeout.
    pub async fn open(
        &self,
        name: &str,
        prefix: &str,
        metrics: &MetricsService,
        adjust: impl FnOnce(&mut CacheConfig) -> Result<()>,
    ) -> Result<Arc<dyn Cache>> {
        if let Some(path) = &self.config {
            let mut config = CacheConfig::from_path(path)?;
            adjust(&mut config)?;
            return Ok(keel_cache::open_with_metrics(&config, metrics).await?);
        }
        let cache = self.redis(name, prefix, metrics)?;
        cache.connect().await.context("connecting")?;
        Ok(Arc::new(cache))
    }
}
