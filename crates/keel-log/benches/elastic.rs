//! Client-side throughput of the Elasticsearch sink: documents per second encoded, buffered
//! and shipped in `_bulk` requests to a local endpoint that accepts everything (so the figure
//! is the client's, not a server's).
//!
//! `cargo bench -p keel-log --features elastic --bench elastic` — for each configuration, 7
//! rounds (after a warm-up) of 200 000 records with 3 call fields from T threads into one
//! sink (default batch of 500; a buffer bound above the round, so callers never wait for
//! room and nothing is dropped); the clock runs from the first log call until `flush` has
//! seen every document acknowledged. Prints the median docs/s and the caller-side ns per
//! record (time inside the logging calls, summed over threads).
//!
//! `cargo bench -p keel-log --features elastic --bench elastic -- disk-vs-memory` runs only
//! the disk buffer against the memory buffer (1 thread): 9 pairs of rounds, alternating which
//! goes first (the machine is shared and noisy), and prints each contender's median docs/s
//! and the median of the per-pair ratios disk/memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_log::{ElasticOptions, ElasticSink, Level, Logger, Overflow, Sink, field};
use keel_testkit::proxy::AcceptAll;

const RECORDS: u64 = 200_000;
const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One round: (docs/s including delivery, caller ns per record).
fn round(url: &str, threads: u64, gzip: bool) -> (f64, f64) {
    round_with(url, threads, gzip, None)
}

/// A round with the disk buffer in `disk` when given.
fn round_with(url: &str, threads: u64, gzip: bool, disk: Option<&std::path::Path>) -> (f64, f64) {
    let mut o = ElasticOptions::new(url);
    if let Some(dir) = disk {
        o.disk_buffer = Some(dir.to_owned());
        o.disk_buffer_max_bytes = 1 << 30;
    }
    o.overflow = Overflow::Block;
    // Room for the whole round: the caller's figure is its own cost, not waiting for room.
    o.max_records = RECORDS as usize + 1;
    o.max_bytes = 1 << 30;
    o.gzip = gzip;
    let sink = Arc::new(ElasticSink::start("bench", o).expect("sink"));
    let logger = Logger::new("bench", Level::Info, vec![sink.clone() as Arc<dyn Sink>]);
    let per = RECORDS / threads;
    let start = Instant::now();
    let caller: Duration = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let logger = logger.clone();
                s.spawn(move || {
                    let t0 = Instant::now();
                    for i in 0..per {
                        logger.info(
                            "request served",
                            &[
                                field("method", "GET"),
                                field("status", 200),
                                field("bytes", t * per + i),
                            ],
                        );
                    }
                    t0.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    let stats = logger.flush(Duration::from_secs(120));
    let elapsed = start.elapsed();
    assert_eq!(stats.written, per * threads, "every document acknowledged");
    let _ = logger.shutdown(Duration::from_secs(10));
    (
        (per * threads) as f64 / elapsed.as_secs_f64(),
        caller.as_nanos() as f64 / (per * threads) as f64,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let endpoint = AcceptAll::start();
    let url = endpoint.url();
    if std::env::args().any(|a| a == "disk-vs-memory") {
        disk_vs_memory(&url);
        return;
    }
    println!(
        "{:<28} {:>12} {:>18}",
        "configuration", "docs/s", "caller ns/record"
    );
    for (threads, gzip) in [(1, false), (2, false), (1, true)] {
        let _ = round(&url, threads, gzip);
        let mut rates = Vec::new();
        let mut callers = Vec::new();
        for _ in 0..ROUNDS {
            let (rate, caller) = round(&url, threads, gzip);
            rates.push(rate);
            callers.push(caller);
        }
        let label = format!(
            "{threads} thread{}{}",
            if threads > 1 { "s" } else { "" },
            if gzip { ", gzip" } else { "" }
        );
        println!(
            "{label:<28} {:>12.0} {:>18.0}",
            median(rates),
            median(callers)
        );
    }
}

fn disk_vs_memory(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = || {
        // A fresh directory per round: each round starts with an empty buffer.
        let d = tempfile::tempdir_in(dir.path()).expect("tempdir");
        round_with(url, 1, false, Some(d.path())).0
    };
    let memory = || round(url, 1, false).0;
    let _ = (disk(), memory());
    let (mut disks, mut memories, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..9 {
        let (d, m) = if pair % 2 == 0 {
            let d = disk();
            (d, memory())
        } else {
            let m = memory();
            (disk(), m)
        };
        println!(
            "pair {pair}: disk {d:.0} docs/s, memory {m:.0} docs/s, ratio {:.2}",
            d / m
        );
        disks.push(d);
        memories.push(m);
        ratios.push(d / m);
    }
    println!(
        "median: disk {:.0} docs/s, memory {:.0} docs/s, median per-pair ratio disk/memory {:.2}",
        median(disks),
        median(memories),
        median(ratios)
    );
}
