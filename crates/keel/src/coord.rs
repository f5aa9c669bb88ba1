//! `keel lock` and `keel elect`: run a command under a lock or only while leader.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_cache::election::{Election, Leadership};
use keel_cache::lock::{LockOptions, Locker};
use keel_cache::{CacheConfig, Endpoint, RedisCache, Secret, parse_duration};
use keel_metrics::MetricsService;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Where the lock lives: a Redis URL or a cache config file.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["url", "config"])))]
pub struct Store {
    /// Redis URL (redis:// or rediss://).
    #[arg(long, env = "KEEL_REDIS_URL")]
    url: Option<String>,
    /// A cache config file (TOML, YAML or JSON) of type redis: Cluster, Sentinel, TLS, ACL.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Request timeout towards Redis.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
}

impl Store {
    async fn locker(&self) -> Result<Locker> {
        let metrics = MetricsService::new("keel")?;
        let cache = match (&self.url, &self.config) {
            (Some(url), _) => RedisCache::builder("keel", Endpoint::Url(Secret::new(url.clone())))
                .prefix("keel:")
                .connect_timeout(self.timeout.max(Duration::from_secs(1)))
                .response_timeout(self.timeout)
                .items_refresh(None)
                .metrics(&metrics)
                .build()?,
            (None, Some(path)) => {
                let config = CacheConfig::from_path(path)?;
                if config.kind != "redis" {
                    bail!(
                        "{}: locks across processes need a redis cache config",
                        path.display()
                    );
                }
                keel_cache::redis_from_config(&config, &metrics)?
            }
            (None, None) => bail!("give --url or --config"),
        };
        keel_cache::Cache::connect(&cache)
            .await
            .context("connecting to Redis")?;
        Ok(Locker::with_metrics(cache, &metrics))
    }
}

/// Arguments of `keel lock`.
#[derive(clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    store: Store,
    /// The lock's name.
    name: String,
    /// Lock TTL; the lock is renewed every TTL/3 while the command runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
    /// How long to wait for the lock.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    wait: Duration,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Arguments of `keel elect`.
#[derive(clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    store: Store,
    /// The election's name.
    name: String,
    /// Lease; the renew deadline is 2/3 of it and the retry period 1/6.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    lease: Duration,
    /// This candidate's identity (default: hostname-pid).
    #[arg(long)]
    identity: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How long a command gets between SIGTERM and SIGKILL on Ctrl-C / SIGTERM to keel.
const GRACE: Duration = Duration::from_secs(10);

fn spawn(command: &[String], token: u64, name: &str) -> Result<Child> {
    let (program, args) = command.split_first().context("no command given")?;
    Command::new(program)
        .args(args)
        .env("KEEL_FENCING_TOKEN", token.to_string())
        .env("KEEL_LOCK_NAME", name)
        // Its own process group, so a pipeline or a shell's children are stopped with it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {program}"))
}

fn signal_group(child: &Child, signal: Signal) {
    if let Some(pid) = child.id() {
        let group = Pid::from_raw(-i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = kill(group, signal);
    }
}

/// SIGTERM to the command's process group, then SIGKILL after `grace`; returns its status.
async fn stop(child: &mut Child, grace: Duration) -> Result<ExitStatus> {
    signal_group(child, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            signal_group(child, Signal::SIGKILL);
            Ok(child.wait().await?)
        }
    }
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Exit code when the lock or leadership is lost while the command runs.
pub const LOST_EXIT: i32 = 75;

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `keel lock`: returns the process exit code.
pub async fn lock(args: LockArgs) -> Result<i32> {
    let locker = args.store.locker().await?;
    let guard = locker
        .lock_with(&args.name, args.ttl, args.wait, LockOptions::watchdog())
        .await?;
    let token = guard.fencing_token();
    eprintln!("keel: holding lock {:?} (fencing token {token})", args.name);
    let mut child = spawn(&args.command, token, &args.name)?;
    let lost = guard.lost();
    // The command must be gone by the lock's deadline. The watchdog renews every TTL/3, so a
    // deadline less than TTL/3 away means renewals are failing: start stopping it then, and
    // SIGKILL it at the deadline.
    let margin = args.ttl / 3;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let stop_at = guard
            .deadline()
            .checked_sub(margin)
            .unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                if let Err(e) = guard.release().await {
                    eprintln!("keel: could not release the lock (it expires by itself): {e}");
                }
                return Ok(code(status));
            }
            () = lost.cancelled() => {
                eprintln!("keel: lost lock {:?}; stopping the command", args.name);
                let left = guard.deadline().saturating_duration_since(tokio::time::Instant::now());
                stop(&mut child, left).await?;
                return Ok(LOST_EXIT);
            }
            () = tokio::time::sleep_until(stop_at) => {
                if tokio::time::Instant::now() < guard.deadline().checked_sub(margin).unwrap_or(stop_at) {
                    continue; // a renewal moved the deadline out
                }
                eprintln!("keel: cannot renew lock {:?}; stopping the command before it expires", args.name);
                let left = guard.deadline().saturating_duration_since(tokio::time::Instant::now());
                stop(&mut child, left).await?;
                return Ok(LOST_EXIT);
            }
            () = &mut shutdown => {
                let status = stop(&mut child, GRACE).await?;
                let _ = guard.release().await;
                return Ok(code(status));
            }
        }
    }
}

/// `keel elect`: runs until interrupted; returns the process exit code.
pub async fn elect(args: ElectArgs) -> Result<i32> {
    let locker = args.store.locker().await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        format!("{host}-{}", std::process::id())
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Leadership>();
    let election = Election::builder(locker, &args.name, &identity)
        .lease(args.lease)
        .renew_deadline(args.lease * 2 / 3)
        .retry_period(args.lease / 6)
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        })
        .on_new_leader({
            let name = args.name.clone();
            move |leader| eprintln!("keel: leader of {name:?} is now {leader:?}")
        })
        .build()?;
    let shutdown = CancellationToken::new();
    let campaign = {
        let (e, s) = (election.clone(), shutdown.clone());
        tokio::spawn(async move { e.run(s).await })
    };
    let stop_all = shutdown_signal();
    tokio::pin!(stop_all);
    let result = loop {
        let leadership = tokio::select! {
            l = rx.recv() => match l { Some(l) => l, None => break Ok(1) },
            () = &mut stop_all => break Ok(0),
        };
        eprintln!(
            "keel: leading {:?} as {identity} (epoch {})",
            args.name, leadership.epoch
        );
        let mut child = spawn(&args.command, leadership.epoch, &args.name)?;
        tokio::select! {
            status = child.wait() => {
                eprintln!("keel: command exited ({}); resigning and campaigning again", status?);
                election.resign();
            }
            () = leadership.token.cancelled() => {
                eprintln!("keel: lost leadership of {:?}; stopping the command", args.name);
                // Leadership ends at the renew deadline, a third of the lease before anyone
                // else can win: the command must be gone well within that.
                stop(&mut child, args.lease / 4).await?;
            }
            () = &mut stop_all => {
                stop(&mut child, GRACE).await?;
                break Ok(0);
            }
        }
    };
    shutdown.cancel();
    let _ = campaign.await;
    result
}
