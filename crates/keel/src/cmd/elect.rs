//! `keel elect`: run a command only while this process is the elected leader, under a guard
//! process ([`crate::guard`]) so the command never outlives the leadership.

use std::time::Duration;

use anyhow::Result;
use keel_cache::parse_duration;
use keel_coord::{Election, Leadership};
use tokio_util::sync::CancellationToken;

use super::lock::{backstop, forward_period, locker};
use crate::guard::{End, SpawnError, Supervisor, Timing};
use crate::target::Target;

/// Arguments of `keel elect`.
#[derive(clap::Args)]
pub struct ElectArgs {
    #[command(flatten)]
    store: Target,
    /// The election's name.
    name: String,
    /// Lease; the renew deadline is 2/3 of it and the retry period 1/6.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    lease: Duration,
    /// This candidate's identity (default: hostname-pid).
    #[arg(long)]
    identity: Option<String>,
    /// On Ctrl-C/SIGTERM: how long the command gets between SIGTERM and SIGKILL (never past
    /// the lease).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    grace: Duration,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// What ended one term's command.
enum TermEnd {
    /// The command and its group are gone (it exited, or leadership was lost).
    Gone,
    /// keel was asked to stop and the command is gone.
    Shutdown,
    /// The command's end could not be confirmed: the lease must run out, not be released.
    Unconfirmed,
}

/// `keel elect`: runs until interrupted; returns the process exit code.
pub async fn elect(args: ElectArgs) -> Result<i32> {
    let locker = locker(&args.store).await?;
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
    let stop_all = super::shutdown_signal();
    tokio::pin!(stop_all);
    let result = loop {
        let leadership = tokio::select! {
            l = rx.recv() => match l { Some(l) => l, None => break Ok(1) },
            () = &mut stop_all => break Ok(0),
        };
        if leadership.token.is_cancelled() {
            continue; // a term that already ended is never started
        }
        eprintln!(
            "keel: leading {:?} as {identity} (epoch {})",
            args.name, leadership.epoch
        );
        let end = term(&args, &leadership, &mut stop_all).await;
        // Every end but a shutdown resigns, so this candidate never leads with nothing running
        // (a no-op when leadership already ended); campaigning goes on after a retry period.
        if !matches!(end, Ok(TermEnd::Shutdown)) {
            election.resign();
        }
        match end {
            Ok(TermEnd::Gone) => leadership.done(), // the lease may be released now
            Ok(TermEnd::Shutdown) => {
                leadership.done();
                break Ok(0);
            }
            Ok(TermEnd::Unconfirmed) | Err(SpawnError::Uncertain(_)) => {
                // Keep the term's handle until the lease can have expired, so the election
                // neither releases nor campaigns while the command might still run.
                eprintln!(
                    "keel: the command's end could not be confirmed; the lease is left to expire"
                );
                leadership.token.cancelled().await;
                tokio::time::sleep_until(leadership.expires_at()).await;
                leadership.done();
            }
            Err(SpawnError::NotStarted(e)) => {
                leadership.done();
                break Err(e);
            }
        }
    };
    shutdown.cancel();
    let _ = campaign.await;
    result
}

/// Runs the command for one term; returns once its whole process group is gone (or that
/// could not be confirmed).
async fn term(
    args: &ElectArgs,
    leadership: &Leadership,
    stop_all: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<TermEnd, SpawnError> {
    let env = [
        ("KEEL_FENCING_TOKEN", leadership.epoch.to_string()),
        ("KEEL_LOCK_NAME", args.name.clone()),
    ];
    let timing = Timing::for_hold(args.lease);
    let mut child = Supervisor::spawn(&args.command, &env, leadership.expires_at(), timing).await?;
    let mut forward = tokio::time::interval(forward_period(args.lease));
    let mut shutting_down = false;
    let mut lost = false;
    let mut backstopped = false;
    loop {
        tokio::select! {
            end = child.ended() => {
                return Ok(match end {
                    End::Exited(code) if shutting_down => {
                        eprintln!("keel: command exited ({code}) on shutdown");
                        TermEnd::Shutdown
                    }
                    End::Exited(code) if !lost => {
                        eprintln!("keel: command exited ({code}); resigning and campaigning again");
                        TermEnd::Gone
                    }
                    End::Exited(_) | End::Expired(_) => {
                        eprintln!("keel: leadership of {:?} ended; the command is gone", args.name);
                        TermEnd::Gone
                    }
                    End::Unconfirmed(_) => TermEnd::Unconfirmed,
                });
            }
            () = leadership.token.cancelled(), if !lost && !shutting_down => {
                // Leadership ends at the renew deadline, a third of the lease before anyone
                // else can win; the guard SIGKILLs an eighth of the lease before it at the latest.
                eprintln!("keel: lost leadership of {:?}; stopping the command", args.name);
                child.stop(timing.kill_before);
                lost = true;
            }
            _ = forward.tick() => child.set_deadline(leadership.expires_at()),
            // The guard should have killed the command by now: it is frozen or stuck.
            () = tokio::time::sleep_until(backstop(leadership.expires_at(), timing)), if !backstopped => {
                eprintln!("keel: the guard did not stop the command in time; killing it");
                child.kill_all();
                backstopped = true;
            }
            () = stop_all.as_mut(), if !shutting_down && !lost => {
                // The election keeps renewing while the command winds down.
                child.stop(args.grace);
                shutting_down = true;
            }
        }
    }
}
