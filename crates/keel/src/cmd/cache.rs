//! `keel cache`: one command against a Redis server, values as raw bytes.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_cache::{Bytes, KeyTtl, Ttl, parse_duration};
use keel_metrics::MetricsService;

use crate::target::Target;

/// Arguments of `keel cache`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Key prefix with --url (default none, so `redis-cli GET KEY` sees the same key).
    #[arg(long, default_value = "")]
    prefix: String,
    #[command(subcommand)]
    op: Op,
}

#[derive(clap::Subcommand)]
enum Op {
    /// Prints the value's raw bytes; exits 1 when the key is missing.
    Get { key: String },
    /// Stores VALUE (`-` reads raw bytes from stdin).
    Set {
        key: String,
        value: String,
        /// Expiry, e.g. 30s, 250ms, 5m (default: none; leave it out for no expiry).
        #[arg(long, value_parser = positive_duration)]
        ttl: Option<Duration>,
    },
    /// Deletes the key; prints 1 if it existed, else 0.
    Del { key: String },
    /// Prints the remaining TTL in milliseconds like PTTL: -2 missing, -1 no expiry.
    Ttl { key: String },
    /// Adds BY (default 1) to the integer at KEY and prints the result.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
}

pub async fn run(args: Args) -> Result<()> {
    // Metrics are recorded into a private registry: a one-shot command has no scraper.
    let metrics = MetricsService::new("keel")?;
    let cache = args
        .target
        .open("cli", &args.prefix, &metrics, |_| Ok(()))
        .await?;
    let mut out = std::io::stdout().lock();
    match args.op {
        Op::Get { key } => match cache.get(&key).await? {
            Some(v) => out.write_all(&v)?,
            None => bail!("key {key:?} not found"),
        },
        Op::Set { key, value, ttl } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading the value from stdin")?;
                Bytes::from(buf)
            } else {
                Bytes::from(value)
            };
            let ttl = ttl.map_or(Ttl::Never, Ttl::After);
            cache.set(&key, value, ttl).await?;
            writeln!(out, "OK")?;
        }
        Op::Del { key } => writeln!(out, "{}", u8::from(cache.delete(&key).await?))?,
        Op::Ttl { key } => {
            let ms = match cache.ttl(&key).await? {
                KeyTtl::Missing => -2,
                KeyTtl::Persistent => -1,
                KeyTtl::Expires(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            };
            writeln!(out, "{ms}")?;
        }
        Op::Incr { key, by } => writeln!(out, "{}", cache.incr_by(&key, by).await?)?,
    }
    cache.close().await?;
    Ok(())
}

/// A duration that must be greater than zero: a zero TTL would store a key that is gone at
/// once (or, on some servers, mean "no expiry").
fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("a TTL must be greater than zero; leave --ttl out for no expiry".into());
    }
    Ok(d)
}
