//! `keel`: the operator's command-line tool.
// One small `unsafe` block is allowed: the guard's `pre_exec` hook (see guard.rs).
#![deny(unsafe_code)]

mod cmd;
mod guard;
mod target;

use cmd::{bench, cache as cache_cmd, demo, elect, lock, log as log_cmd, throttle};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: cache, coordination, metrics and logging for services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a tour of the cache API on embedded defaults (memory cache, console output) and
    /// prints the Prometheus exposition at the end.
    Demo(demo::Args),
    /// Runs one cache command against a Redis server: get, set, del, ttl, incr.
    Cache(cache_cmd::Args),
    /// Load generators: `keel bench cache --url URL|memory …`, `keel bench log --config FILE …`.
    Bench(bench::Args),
    /// Runs a command while holding a distributed lock (renewed; stopped before the lock can
    /// expire if it is lost, killed at once if keel dies). The command gets KEEL_FENCING_TOKEN.
    /// Exits with its code, or 75 if the lock was lost.
    Lock(lock::LockArgs),
    /// Runs a command only while this process is the elected leader; campaigns again when
    /// the command exits or leadership is lost. The command gets KEEL_FENCING_TOKEN (epoch).
    Elect(elect::ElectArgs),
    /// One rate limit decision (GCRA) for KEY: exits 0 when allowed, 75 when limited, with
    /// the retry-after on stderr.
    Throttle(throttle::ThrottleArgs),
    /// Ships stdin lines (or JSON objects) through a keel-log logger built from --config;
    /// SIGHUP reopens file sinks, SIGTERM flushes and exits. Delivery stats go to stderr.
    Log(log_cmd::Args),
    /// Internal: the supervisor process of `keel lock` and `keel elect`.
    #[command(name = "__guard", hide = true)]
    Guard(guard::GuardArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        // The guard is a plain single-threaded process: no runtime, no store.
        Command::Guard(args) => {
            return std::process::ExitCode::from(u8::try_from(guard::run(args)).unwrap_or(1));
        }
        command => Cli { command },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await.map(|()| 0),
            Command::Cache(args) => cache_cmd::run(args).await.map(|()| 0),
            Command::Bench(args) => bench::run(args).await.map(|()| 0),
            Command::Lock(args) => lock::lock(args).await,
            Command::Elect(args) => elect::elect(args).await,
            Command::Log(args) => log_cmd::run(args).await,
            Command::Throttle(args) => throttle::throttle(args).await,
            Command::Guard(_) => unreachable!("handled before the runtime starts"),
        }
    });
    // Child processes and background tasks must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("keel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every command and argument.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
