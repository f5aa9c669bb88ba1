//! `keel bench cache`: a load generator for any Keel cache; `keel bench log`: throughput of a
//! Keel logger built from its config.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use keel_cache::{Bytes, Cache, CacheConfig, Capacity, MemoryCache, Ttl, parse_duration};
use keel_metrics::MetricsService;

/// Every key the bench writes starts with this; it removes them when it is done.
const BENCH_PREFIX: &str = "keel-bench:";

/// Arguments of `keel bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(clap::Subcommand)]
enum Target {
    /// Drives get/set load against a cache and reports throughput and latency percentiles.
    Cache(CacheArgs),
    /// Writes records through a logger built from a keel-log config from several threads,
    /// then shuts it down; reports records/s (including the final flush) and drops.
    Log(LogArgs),
}

#[derive(clap::Args)]
struct LogArgs {
    /// A keel-log config file (TOML, YAML or JSON): `type`, `name`, `level`, `formatter`,
    /// `output`, `options`.
    #[arg(long)]
    config: std::path::PathBuf,
    /// Total records across all threads.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Threads logging concurrently through clones of the one logger.
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// How long the final shutdown may wait for the sinks to write what is queued.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one final JSON line instead of text (no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CacheArgs {
    /// `--url memory` benches an in-process cache; any other target as everywhere.
    #[command(flatten)]
    target: crate::target::Target,
    /// Concurrent clients (tasks sharing one cache, as a service's request handlers would).
    #[arg(long, default_value_t = 50)]
    clients: u64,
    /// Total requests across all clients.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// gets:sets, e.g. 9:1; 1:0 is get-only, 0:1 set-only.
    #[arg(long, default_value = "9:1", value_parser = parse_ratio)]
    ratio: (u64, u64),
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Distinct keys (all written once before the run, so gets hit).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Print one final JSON line instead of text (no progress bar).
    #[arg(long)]
    json: bool,
}

fn parse_ratio(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("invalid ratio {s:?}: use GETS:SETS, e.g. 9:1");
    let (g, w) = s.split_once(':').ok_or_else(bad)?;
    let (g, w): (u64, u64) = (
        g.trim().parse().map_err(|_| bad())?,
        w.trim().parse().map_err(|_| bad())?,
    );
    if g + w == 0 {
        return Err(bad());
    }
    Ok((g, w))
}

pub async fn run(args: Args) -> Result<()> {
    match args.target {
        Target::Cache(a) => cache(a).await,
        Target::Log(a) => tokio::task::spawn_blocking(move || log(&a))
            .await
            .context("log bench thread")?,
    }
}

/// The progress bar of a bench run over `len` operations: hidden for `--json` (and, by
/// indicatif itself, when stderr is not a terminal). Rates read like `166k/s`.
fn progress_bar(json: bool, len: u64) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {rate} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", human(state.per_sec()));
                },
            ),
    );
    bar
}

/// `166429.95` -> `166k`, `1290000.0` -> `1.290M`, `950.2` -> `950`.
fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.3}G", x / 1e9),
        x if x >= 1e6 => format!("{:.3}M", x / 1e6),
        x if x >= 1e3 => format!("{:.0}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// Moves `bar` to `done` every 100 ms from its own thread, so the bar advances even when
/// the workers never yield to the runtime (an in-process cache answers without awaiting).
struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(bar: indicatif::ProgressBar, done: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    bar.set_position(done.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.set_position(done.load(Ordering::Relaxed));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn open(a: &CacheArgs) -> Result<Arc<dyn Cache>> {
    let metrics = MetricsService::new("keel_bench")?;
    if a.target.url.as_deref() == Some("memory") {
        return Ok(Arc::new(
            MemoryCache::builder("bench")
                .capacity(Capacity::Entries(a.keys.max(1)))
                .metrics(&metrics)
                .build(),
        ));
    }
    a.target
        .open("bench", BENCH_PREFIX, &metrics, bench_prefix)
        .await
}

/// Points a config at the bench's own keys: the bench writes, then clears, them, so it must
/// never run on the configured prefix. Only Redis has a prefix (a tiered cache's is its l2's);
/// a memory cache has none. The kind is matched as the factory matches it (any case), and a
/// config whose prefix cannot be replaced is refused rather than benched (its `clear()` would
/// delete the real cache's keys).
fn bench_prefix(config: &mut CacheConfig) -> Result<()> {
    let kind = config.kind.clone();
    let redis = match kind.to_ascii_lowercase().as_str() {
        "memory" => return Ok(()),
        "redis" => Some(config),
        "tiered" => config.l2.as_deref_mut(),
        _ => None,
    };
    let Some(redis) = redis else {
        bail!(
            "refusing to bench a {kind:?} cache: no bench prefix could be set, and the bench \
             clears the prefix it ran on (use type memory, redis or tiered with an l2)"
        );
    };
    redis.prefix = Some(BENCH_PREFIX.into());
    redis.options.items_refresh = Some(Duration::ZERO);
    Ok(())
}

/// splitmix64, so runs are repeatable without a RNG dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn cache(a: CacheArgs) -> Result<()> {
    if a.clients == 0 || a.requests == 0 || a.keys == 0 {
        bail!("--clients, --requests and --keys must be at least 1");
    }
    let cache = open(&a).await?;
    let cache_kind = cache.kind().as_str();
    let value = Bytes::from(vec![b'x'; a.value_size]);
    let keys: Arc<Vec<String>> = Arc::new((0..a.keys).map(|i| format!("key:{i}")).collect());
    for chunk in keys.chunks(500) {
        let items: Vec<(&str, Bytes)> = chunk.iter().map(|k| (k.as_str(), value.clone())).collect();
        cache
            .set_many(&items, Ttl::Never)
            .await
            .context("prefilling keys")?;
    }

    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(a.json, a.requests);
    let progress = Ticker::start(bar.clone(), done.clone());

    let (gets, sets) = a.ratio;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..a.clients {
        let share = a.requests / a.clients + u64::from(client < a.requests % a.clients);
        let (cache, keys, value, done) = (cache.clone(), keys.clone(), value.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // 1 µs .. 60 s at 3 significant digits.
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
            let mut errors = 0u64;
            let mut rng = client.wrapping_mul(0x1234_5678_9ABC_DEF1) | 1;
            for i in 0..share {
                let key = &keys[(next(&mut rng) % keys.len() as u64) as usize];
                let t = Instant::now();
                let ok = if i % (gets + sets) < gets {
                    cache.get(key).await.is_ok()
                } else {
                    cache.set(key, value.clone(), Ttl::Never).await.is_ok()
                };
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.saturating_record(us.max(1));
                errors += u64::from(!ok);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.context("client task")??;
        hist.add(&h)
            .map_err(|e| anyhow::anyhow!("histogram: {e}"))?;
        errors += e;
    }
    let elapsed = start.elapsed();
    drop(progress);
    bar.finish_and_clear();
    let _ = cache.clear().await;
    cache.close().await?;

    let ops = a.requests as f64 / elapsed.as_secs_f64();
    let (p50, p99, p999) = (
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "target": cache_kind,
                "clients": a.clients,
                "requests": hist.len(),
                "ratio": format!("{gets}:{sets}"),
                "value_size": a.value_size,
                "seconds": elapsed.as_secs_f64(),
                "ops_per_sec": ops.round(),
                "p50_us": p50,
                "p99_us": p99,
                "p999_us": p999,
                "errors": errors,
            })
        );
    } else {
        println!(
            "{} requests ({gets}:{sets} get:set, {} B values) from {} clients in {:.2?}",
            hist.len(),
            a.value_size,
            a.clients,
            elapsed
        );
        println!(
            "{ops:.0} ops/s   p50 {p50} µs   p99 {p99} µs   p99.9 {p999} µs   errors {errors}"
        );
    }
    if errors > 0 {
        bail!("{errors} of {} requests failed", a.requests);
    }
    Ok(())
}

fn log_config(path: &std::path::Path) -> Result<keel_log::LogConfig> {
    Ok(keel_log::LogConfig::from_path(path)?)
}

/// Records a logging thread counts locally before publishing progress (a shared counter
/// bumped per record would make the threads contend on it and slow the bench down).
const PROGRESS_BATCH: u64 = 1024;

fn log(a: &LogArgs) -> Result<()> {
    if a.records == 0 || a.threads == 0 {
        bail!("--records and --threads must be at least 1");
    }
    let config = log_config(&a.config)?;
    let logger = keel_log::open(&config)
        .with_context(|| format!("building the logger from {}", a.config.display()))?;
    // Always enabled, whatever the configured level (a filtered record costs next to nothing
    // and would measure nothing).
    let level = logger.level().max(keel_log::Level::Info);

    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(a.json, a.records);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = {
        let (bar, done, finished) = (bar.clone(), done.clone(), finished.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                bar.set_position(done.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let start = Instant::now();
    let workers: Vec<_> = (0..a.threads)
        .map(|t| {
            let share = a.records / a.threads + u64::from(t < a.records % a.threads);
            let (logger, done) = (logger.clone(), done.clone());
            std::thread::Builder::new()
                .name(format!("bench-log-{t}"))
                .spawn(move || {
                    let mut unpublished = 0;
                    for seq in 0..share {
                        logger.log(
                            level,
                            "bench record",
                            &[
                                keel_log::field("thread", t),
                                keel_log::field("seq", seq),
                                keel_log::field("user", "bench-user"),
                                keel_log::field("elapsed_ms", 1.25),
                            ],
                        );
                        unpublished += 1;
                        if unpublished == PROGRESS_BATCH {
                            done.fetch_add(unpublished, Ordering::Relaxed);
                            unpublished = 0;
                        }
                    }
                    done.fetch_add(unpublished, Ordering::Relaxed);
                })
                .context("starting a logging thread")
        })
        .collect::<Result<_>>()?;
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a logging thread panicked"))?;
    }
    let logged = start.elapsed();
    let stats = logger.shutdown(a.timeout);
    let elapsed = start.elapsed();
    finished.store(true, Ordering::Relaxed);
    let _ = progress.join();
    bar.finish_and_clear();

    // Records given per second (dropped ones included), and records that reached the sink.
    let per_sec = a.records as f64 / elapsed.as_secs_f64();
    let written_per_sec = stats.written as f64 / elapsed.as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "logger": config.name,
                "type": config.kind,
                "records": a.records,
                "threads": a.threads,
                "seconds": elapsed.as_secs_f64(),
                "logging_seconds": logged.as_secs_f64(),
                "records_per_sec": per_sec.round(),
                "written_per_sec": written_per_sec.round(),
                "written": stats.written,
                "dropped": stats.dropped,
                "failed": stats.failed,
                "pending": stats.pending,
            })
        );
    } else {
        println!(
            "{} records from {} threads through {:?} ({}) in {:.2?} ({:.2?} logging, the rest flushing)",
            a.records, a.threads, config.name, config.kind, elapsed, logged
        );
        println!(
            "{per_sec:.0} records/s ({written_per_sec:.0}/s written)   written {}   dropped {}   failed {}   pending {}",
            stats.written, stats.dropped, stats.failed, stats.pending
        );
    }
    if stats.failed > 0 || stats.pending > 0 {
        bail!(
            "{} records failed and {} were still queued at the end",
            stats.failed,
            stats.pending
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bar moves while the workers never yield: a busy loop bumps the counter and the
    /// ticker thread alone carries it to the bar (the old tokio task never ran then).
    #[test]
    fn the_bar_advances_while_workers_never_yield() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        bar.set_length(u64::MAX);
        let done = Arc::new(AtomicU64::new(0));
        let seen = rt.block_on(async {
            let ticker = Ticker::start(bar.clone(), done.clone());
            // The only runtime thread is busy: nothing else on the runtime can run.
            let start = Instant::now();
            let mut seen = 0;
            while start.elapsed() < Duration::from_secs(5) && seen == 0 {
                done.fetch_add(1, Ordering::Relaxed);
                seen = bar.position();
            }
            drop(ticker);
            seen
        });
        assert!(seen > 0, "the bar never moved while the worker was busy");
    }

    #[test]
    fn rates_read_like_people_write_them() {
        assert_eq!(super::human(166_429.957_5), "166k");
        assert_eq!(super::human(1_290_000.0), "1.290M");
        assert_eq!(super::human(950.2), "950");
    }
}
