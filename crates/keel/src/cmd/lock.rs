//! `keel lock`: run a command while holding a distributed lock — or, with `--permits N`, one
//! of N permits of a semaphore (at most N such commands at once across all nodes) — under a
//! guard process ([`crate::guard`]) so the command never outlives the hold. A permit is the
//! same guard as a lock (watchdog, deadline, `lost()`, fencing token), so the supervision is
//! the same.

use std::time::Duration;

use anyhow::{Context, Result};
use keel_cache::parse_duration;
use keel_coord::{LockGuard, LockOptions, Locker, RedisStore, Semaphore};
use keel_metrics::MetricsService;

use crate::guard::{End, SpawnError, Supervisor, Timing};
use crate::target::Target;

/// Connects to the coordination store named by `target`: for `--url`, keys under `keel:`.
pub async fn store(target: &Target) -> Result<(RedisStore, MetricsService)> {
    let metrics = MetricsService::new("keel")?;
    let store = target.coord_store("keel:", &metrics)?;
    store.connect().await.context("connecting to Redis")?;
    Ok((store, metrics))
}

/// A locker on the coordination store named by `target`.
pub async fn locker(target: &Target) -> Result<Locker> {
    let (store, metrics) = store(target).await?;
    Ok(Locker::with_metrics(store, &metrics))
}

/// Waits for the lock, or for one of `permits` permits of the semaphore `name`.
async fn hold(args: &LockArgs) -> Result<LockGuard> {
    let (store, metrics) = store(&args.store).await?;
    let options = LockOptions::watchdog();
    Ok(match args.permits {
        None => {
            Locker::with_metrics(store, &metrics)
                .lock_with(&args.name, args.ttl, args.wait, options)
                .await?
        }
        Some(n) => {
            Semaphore::with_metrics(store, &metrics)
                .acquire_with(&args.name, n, args.ttl, args.wait, options)
                .await?
        }
    })
}

/// Arguments of `keel lock`.
#[derive(clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    store: Target,
    /// The lock's name.
    name: String,
    /// Lock TTL; the lock is renewed every TTL/3 while the command runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
    /// How long to wait for the lock.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    wait: Duration,
    /// Take one of N permits of a semaphore NAME instead of the lock: at most N commands
    /// run at once across all nodes (every caller of NAME must give the same N).
    #[arg(long, value_name = "N")]
    permits: Option<u32>,
    /// On Ctrl-C/SIGTERM: how long the command gets between SIGTERM and SIGKILL (never past
    /// the lock's deadline).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    grace: Duration,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Exit code when the lock or leadership is lost while the command runs.
pub const LOST_EXIT: i32 = 75;

/// How often keel forwards a renewed deadline to the guard, as a fraction of the hold.
pub fn forward_period(hold: Duration) -> Duration {
    (hold / 10).max(Duration::from_millis(5))
}

/// When keel kills the command itself if the guard has not reported its end: halfway
/// between the guard's own kill time and the deadline.
pub fn backstop(deadline: tokio::time::Instant, timing: Timing) -> tokio::time::Instant {
    deadline
        .checked_sub(timing.kill_before / 2)
        .unwrap_or(deadline)
}

/// `keel lock`: returns the process exit code.
pub async fn lock(args: LockArgs) -> Result<i32> {
    let guard = hold(&args).await?;
    let token = guard.fencing_token();
    match args.permits {
        None => eprintln!("keel: holding lock {:?} (fencing token {token})", args.name),
        Some(n) => eprintln!(
            "keel: holding a permit of {:?} (of {n}; fencing token {token})",
            args.name
        ),
    }
    let env = [
        ("KEEL_FENCING_TOKEN", token.to_string()),
        ("KEEL_LOCK_NAME", args.name.clone()),
    ];
    let timing = Timing::for_hold(args.ttl);
    let mut child = match Supervisor::spawn(&args.command, &env, guard.deadline(), timing).await {
        Ok(child) => child,
        Err(SpawnError::NotStarted(e)) => {
            let _ = guard.release().await;
            return Err(e);
        }
        Err(e @ SpawnError::Uncertain(_)) => {
            guard.abandon();
            return Err(e.into());
        }
    };
    let lost = guard.lost();
    let mut forward = tokio::time::interval(forward_period(args.ttl));
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut backstopped = false;
    loop {
        tokio::select! {
            end = child.ended() => return Ok(match end {
                // The command and its whole group are gone: only now may others get the lock.
                End::Exited(_) if lost.is_cancelled() => LOST_EXIT,
                End::Exited(code) => {
                    if let Err(e) = guard.release().await {
                        eprintln!("keel: could not release the lock (it expires by itself): {e}");
                    }
                    code
                }
                End::Expired(_) => {
                    eprintln!("keel: lock {:?} could not be renewed in time; the guard stopped the command", args.name);
                    guard.abandon();
                    LOST_EXIT
                }
                End::Unconfirmed(_) => {
                    eprintln!("keel: the command's process group could not be confirmed gone; the lock is left to expire");
                    guard.abandon();
                    LOST_EXIT
                }
            }),
            () = lost.cancelled(), if !stopping => {
                // Taken over, or the deadline passed: stop now, SIGKILL soon (the guard's own
                // deadline bounds it too).
                eprintln!("keel: lost lock {:?}; stopping the command", args.name);
                child.stop(timing.kill_before);
                stopping = true;
            }
            _ = forward.tick() => child.set_deadline(guard.deadline()),
            // The guard should have killed the command by now: it is frozen or stuck.
            () = tokio::time::sleep_until(backstop(guard.deadline(), timing)), if !backstopped => {
                eprintln!("keel: the guard did not stop the command in time; killing it");
                child.kill_all();
                backstopped = true;
            }
            () = &mut shutdown, if !stopping => {
                // Renewals go on while the command winds down; release after it is gone.
                child.stop(args.grace);
                stopping = true;
            }
        }
    }
}
