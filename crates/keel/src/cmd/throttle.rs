//! `keel throttle`: one rate limit decision for KEY on the coordination store (GCRA, see
//! [`keel_coord::rate`]). Exits 0 when the request is allowed (its cost is taken), 75 when
//! it is limited, with the retry-after on stderr; a script can loop on it or skip work.

use anyhow::Result;
use keel_coord::rate::{FailurePolicy, Limit, Rate, RateLimiter};

use keel_metrics::MetricsService;

use crate::target::Target;

/// Exit code when the request is rate limited (EX_TEMPFAIL, as for a lost lock).
pub const LIMITED_EXIT: i32 = 75;

/// What to answer when the store cannot be reached.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OnFailure {
    /// Fail with exit code 1 and the store's error.
    Error,
    /// Allow (exit 0).
    Open,
    /// Limit (exit 75).
    Closed,
}

/// Arguments of `keel throttle`.
#[derive(clap::Args)]
pub struct ThrottleArgs {
    #[command(flatten)]
    store: Target,
    /// The rate limit key (no `{` or `}`); for `--url` it is stored under the `keel:`
    /// namespace.
    key: String,
    /// The steady rate: COUNT/s, COUNT/m or COUNT/h, e.g. 10/s, 600/m, 1000/h.
    #[arg(long, value_parser = parse_rate)]
    rate: Rate,
    /// How many requests an idle key admits at once.
    #[arg(long)]
    burst: u32,
    /// The cost of this request (at most the burst).
    #[arg(long, default_value_t = 1)]
    cost: u32,
    /// When the store cannot be reached or times out: error (exit 1), open (allow) or
    /// closed (limit).
    #[arg(long, value_enum, default_value = "error")]
    on_failure: OnFailure,
}

fn parse_rate(s: &str) -> Result<Rate, keel_coord::Error> {
    s.parse()
}

/// `keel throttle`: returns the process exit code.
pub async fn throttle(args: ThrottleArgs) -> Result<i32> {
    let limit = Limit::new(args.rate, args.burst)?;
    let policy = match args.on_failure {
        OnFailure::Error => FailurePolicy::Error,
        OnFailure::Open => FailurePolicy::FailOpen,
        OnFailure::Closed => FailurePolicy::FailClosed,
    };
    // Not connected here: the first request connects, so an unreachable store is a
    // store failure the policy decides on.
    let metrics = MetricsService::new("keel")?;
    let store = args.store.coord_store("keel:", &metrics)?;
    let limiter = RateLimiter::builder(store)
        .name("keel")
        .on_store_failure(policy)
        .metrics(&metrics)
        .build();
    let d = limiter.allow(&args.key, &limit, args.cost).await?;
    let note = if d.degraded {
        " (store unavailable)"
    } else {
        ""
    };
    if d.allowed {
        eprintln!("keel: allowed{note}; remaining {}", d.remaining);
        Ok(0)
    } else {
        eprintln!(
            "keel: rate limited{note}; retry after {:.3}s (retry_after_ms={})",
            d.retry_after.as_secs_f64(),
            d.retry_after.as_millis().max(1)
        );
        Ok(LIMITED_EXIT)
    }
}
