//! `keel`: the operator's command-line tool.
#![forbid(unsafe_code)]

mod bench;
mod cache_cmd;
mod demo;

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
    /// Load generators: `keel bench cache --url URL|memory …`.
    Bench(bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
            Command::Demo(args) => demo::run(args).await,
            Command::Cache(args) => cache_cmd::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
