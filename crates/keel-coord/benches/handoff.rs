//! Contended hand-off: 8 waiters, each on its own Redis connection (and its own pub/sub
//! subscriber, as separate processes would have), take turns on one lock. Measured: the time
//! from a holder starting its release to the next holder having the lock (both on the local
//! monotonic clock of this one process).
//!
//! Contenders: **before** — wake-ups off and the poll cap at 500 ms, exactly how waiters
//! waited before issue 16 (jittered backoff from 10 ms doubling to 500 ms); **after** — the
//! defaults (a release wakes the waiters through pub/sub; polling capped at 100 ms as the
//! fallback). Also a semaphore with 1 permit under the same load (after).
//!
//! `cargo bench -p keel-coord --bench handoff` — starts its own redis-server on a free port;
//! with 2 ms holds, 1 warm-up + 6 interleaved rounds of 60 hand-offs per contender; with
//! 300 ms holds (the waiters back off while the holder works), 1 + 4 rounds of 20; prints
//! p50/p99 over all rounds and the median per-round p50 ratio before / after.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use keel_cache::{Endpoint, Secret};
use keel_coord::{Locker, RedisStore, Semaphore};
use keel_testkit::redis::RedisServer;
use tokio::time::Instant;

const WAITERS: usize = 8;
const ROUNDS: usize = 6;
const HANDOFFS: usize = 60;

#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Before,
    After,
    Semaphore,
}

fn store(url: &str) -> RedisStore {
    RedisStore::builder(Endpoint::Url(Secret::new(url.to_owned())))
        .namespace("bench:")
        .build()
        .unwrap()
}

/// One round: `HANDOFFS` hand-offs among `WAITERS` waiters; the latencies in µs.
async fn round(url: &str, who: Contender, name: &str, hold: Duration, handoffs: usize) -> Vec<u64> {
    let released: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    // Bumped by every acquisition (u64::MAX: the round is over). A holder that released waits
    // for the next acquisition before it queues again, so every hand-off goes to one of the
    // other waiters, never back to the releaser.
    let (generation, _) = tokio::sync::watch::channel(0u64);
    let mut tasks = Vec::new();
    for _ in 0..WAITERS {
        let s = store(url);
        s.connect().await.unwrap();
        let (released, latencies, name) = (released.clone(), latencies.clone(), name.to_owned());
        let (generation, mut seen) = (generation.clone(), generation.subscribe());
        let locker = match who {
            Contender::Before => Locker::new(s.clone())
                .wake_on_release(false)
                .poll_cap(Duration::from_millis(500)),
            _ => Locker::new(s.clone()),
        };
        let sem = Semaphore::new(s);
        tasks.push(tokio::spawn(async move {
            loop {
                if latencies.lock().unwrap().len() >= handoffs {
                    return;
                }
                let ttl = Duration::from_secs(10);
                let wait = Duration::from_secs(120);
                let guard = match who {
                    Contender::Semaphore => sem.acquire(&name, 1, ttl, wait).await.unwrap(),
                    _ => locker.lock(&name, ttl, wait).await.unwrap(),
                };
                let got = Instant::now();
                if let Some(at) = released.lock().unwrap().take() {
                    let mut l = latencies.lock().unwrap();
                    if l.len() < handoffs {
                        l.push(u64::try_from(got.duration_since(at).as_micros()).unwrap());
                    }
                    if l.len() >= handoffs {
                        generation.send_replace(u64::MAX);
                    }
                }
                generation.send_modify(|g| *g = g.saturating_add(1));
                let mine = *generation.borrow();
                // Hold briefly so the others are all waiting, then hand over.
                tokio::time::sleep(hold).await;
                *released.lock().unwrap() = Some(Instant::now());
                guard.release().await.unwrap();
                let _ = seen.wait_for(|g| *g != mine || *g == u64::MAX).await;
            }
        }));
    }
    // Everyone past the count stops after its next acquisition; the last holder's release
    // ends the round.
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    l
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(url: &str, hold: Duration, handoffs: usize, rounds: usize) {
    let mut hist = [
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    ];
    let mut ratios = Vec::new();
    let order = [Contender::Before, Contender::After, Contender::Semaphore];
    for r in 0..=rounds {
        let mut p50 = [0u64; 3];
        // Alternate which contender goes first.
        let mut turn: Vec<usize> = (0..3).collect();
        if r % 2 == 1 {
            turn.reverse();
        }
        for i in turn {
            let name = format!("handoff-{}-{r}-{i}", hold.as_millis());
            let l = round(url, order[i], &name, hold, handoffs).await;
            p50[i] = pct(&l, 0.5);
            if r > 0 {
                for v in &l {
                    hist[i].record(*v).unwrap();
                }
            }
        }
        if r > 0 {
            ratios.push(p50[0] as f64 / p50[1].max(1) as f64);
        }
    }
    ratios.sort_by(f64::total_cmp);
    let ms = |v: u64| v as f64 / 1000.0;
    println!("\nhold {hold:?}, {WAITERS} waiters, {rounds} rounds x {handoffs} hand-offs");
    println!("| contender | p50 (ms) | p99 (ms) | hand-offs |");
    println!("|---|---|---|---|");
    for (i, label) in [
        "before: polling only, 10 ms doubling to 500 ms",
        "after: lock, woken by release (pub/sub), poll cap 100 ms",
        "after: semaphore (1 permit), woken by release",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {label} | {:.2} | {:.2} | {} |",
            ms(hist[i].value_at_quantile(0.5)),
            ms(hist[i].value_at_quantile(0.99)),
            hist[i].len()
        );
    }
    println!(
        "median per-round p50 ratio before / after: {:.1}x",
        ratios[ratios.len() / 2]
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let url = server.url();
    rt.block_on(async {
        // Short holds (waiters re-queue often, their backoff stays short) and long holds
        // (waiters back off towards the poll cap while the holder works).
        for (hold, handoffs, rounds) in [
            (Duration::from_millis(2), HANDOFFS, ROUNDS),
            (Duration::from_millis(300), 20, 4),
        ] {
            run(&url, hold, handoffs, rounds).await;
        }
    });
}
