//! Caller-side cost of a JSON log event written to a file: Keel vs tracing-subscriber's JSON
//! fmt layer, in the same run.
//!
//! `cargo bench -p keel-log --bench log` — 15 interleaved rounds of 100 000 events per
//! contender, one thread; median ns per event measured around the logging calls only (Keel
//! formats and writes on its sink thread; tracing-subscriber formats and writes on the
//! caller, into a `BufWriter<File>`). Two shapes: 3 call fields, and 10 prebound fields plus
//! 3 call fields (Keel: a `with_fields` child; tracing: an entered span with 10 fields).
//! A third row repeats the 3-field shape on the default queue (10 000 records) in bursts of
//! 5 000 with a flush between bursts (not timed), so the queue's slots are reused as in a
//! long-running service. A fourth row does the same on a 1 024-record queue in bursts of 500:
//! a ring small enough to stay in the writer core's cache. A last row times a disabled call
//! (`debug` with the 3 fields on an `info` logger; tracing: `debug!` under a subscriber whose
//! max level is INFO), 10 000 000 calls per round.

use std::fs::File;
use std::io::BufWriter;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_log::{FileOptions, FileSink, JsonFormat, Level, Logger, Overflow, Sink, field};
use tracing_subscriber::layer::SubscriberExt;

const EVENTS: u64 = 100_000;
const ROUNDS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How a Keel round queues: the whole round at once, or in bursts on a reused queue.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Fields3,
    Prebound,
    Bursts,
    SmallBursts,
}

impl Shape {
    /// The sink's queue bound and the events per timed burst (a flush follows each burst).
    fn queue_and_burst(self) -> (usize, u64) {
        match self {
            Shape::Fields3 | Shape::Prebound => ((EVENTS as usize) + 1, EVENTS),
            Shape::Bursts => (10_000, 5_000),
            Shape::SmallBursts => (1_024, 500),
        }
    }
}

fn keel_round(dir: &std::path::Path, shape: Shape) -> f64 {
    let prebound = shape == Shape::Prebound;
    let (queue, burst) = shape.queue_and_burst();
    let sink = FileSink::start(
        "bench",
        FileOptions::new(dir.join("keel.log")),
        queue,
        Overflow::Block,
        Box::new(JsonFormat),
    )
    .unwrap();
    let root = Logger::new("bench", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    let log = if prebound {
        root.with_fields(
            &(0..10)
                .map(|i| field(format!("k{i}"), i))
                .collect::<Vec<_>>(),
        )
    } else {
        root.clone()
    };
    let mut caller = Duration::ZERO;
    for start in (0..EVENTS).step_by(burst as usize) {
        let t = Instant::now();
        for i in start..start + burst {
            log.info(
                "request served",
                &[
                    field("method", "GET"),
                    field("status", 200),
                    field("bytes", i),
                ],
            );
        }
        caller += t.elapsed();
        root.flush(Duration::from_secs(60));
    }
    root.shutdown(Duration::from_secs(60));
    caller.as_nanos() as f64 / EVENTS as f64
}

const DISABLED_CALLS: u64 = 10_000_000;

/// ns per disabled call: the method (`log.debug(msg, &[..])`) and the `debug!` macro.
fn keel_disabled_round(dir: &std::path::Path) -> (f64, f64) {
    let sink = FileSink::start(
        "bench-disabled",
        FileOptions::new(dir.join("keel-disabled.log")),
        1_024,
        Overflow::Block,
        Box::new(JsonFormat),
    )
    .unwrap();
    let log = Logger::new("bench", Level::Info, vec![Arc::new(sink) as Arc<dyn Sink>]);
    let log = std::hint::black_box(&log);
    let t = Instant::now();
    for i in 0..DISABLED_CALLS {
        log.debug(
            "request served",
            &[
                field("method", "GET"),
                field("status", 200),
                field("bytes", i),
            ],
        );
    }
    let method = t.elapsed().as_nanos() as f64 / DISABLED_CALLS as f64;
    let t = Instant::now();
    for i in 0..DISABLED_CALLS {
        keel_log::debug!(log, "request served"; method = "GET", status = 200, bytes = i);
    }
    let ns = t.elapsed().as_nanos() as f64 / DISABLED_CALLS as f64;
    log.shutdown(Duration::from_secs(60));
    (method, ns)
}

fn tracing_disabled_round(dir: &std::path::Path) -> f64 {
    let file = BufWriter::new(File::create(dir.join("tracing-disabled.log")).unwrap());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(Mutex::new(file))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let t = Instant::now();
        for i in 0..DISABLED_CALLS {
            tracing::debug!(method = "GET", status = 200, bytes = i, "request served");
        }
        t.elapsed().as_nanos() as f64 / DISABLED_CALLS as f64
    })
}

fn tracing_round(dir: &std::path::Path, prebound: bool) -> f64 {
    let file = BufWriter::new(File::create(dir.join("tracing.log")).unwrap());
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(Mutex::new(file));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let span = prebound.then(|| {
            tracing::info_span!(
                "ctx",
                k0 = 0,
                k1 = 1,
                k2 = 2,
                k3 = 3,
                k4 = 4,
                k5 = 5,
                k6 = 6,
                k7 = 7,
                k8 = 8,
                k9 = 9
            )
        });
        let _entered = span.as_ref().map(tracing::Span::enter);
        let t = Instant::now();
        for i in 0..EVENTS {
            tracing::info!(method = "GET", status = 200, bytes = i, "request served");
        }
        t.elapsed().as_nanos() as f64 / EVENTS as f64
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!(
        "| shape | keel ns/event (caller) | tracing-subscriber json ns/event | ratio tracing / keel |"
    );
    println!("|---|---|---|---|");
    for shape in [
        Shape::Fields3,
        Shape::Prebound,
        Shape::Bursts,
        Shape::SmallBursts,
    ] {
        let prebound = shape == Shape::Prebound;
        let (mut k, mut t, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            let (kn, tn) = if round % 2 == 0 {
                let kn = keel_round(dir.path(), shape);
                (kn, tracing_round(dir.path(), prebound))
            } else {
                let tn = tracing_round(dir.path(), prebound);
                (keel_round(dir.path(), shape), tn)
            };
            if round == 0 {
                continue;
            }
            k.push(kn);
            t.push(tn);
            r.push(tn / kn);
        }
        let shape = match shape {
            Shape::Fields3 => "3 call fields",
            Shape::Prebound => "10 prebound + 3 call fields",
            Shape::Bursts => "3 call fields, default queue, bursts of 5 000",
            Shape::SmallBursts => "3 call fields, queue 1 024, bursts of 500",
        };
        println!(
            "| {shape} | {:.0} | {:.0} | {:.2}x |",
            median(k),
            median(t),
            median(r)
        );
    }
    let (mut k, mut m, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let ((kn, mn), tn) = if round % 2 == 0 {
            let kn = keel_disabled_round(dir.path());
            (kn, tracing_disabled_round(dir.path()))
        } else {
            let tn = tracing_disabled_round(dir.path());
            (keel_disabled_round(dir.path()), tn)
        };
        if round > 0 {
            k.push(kn);
            m.push(mn);
            t.push(tn);
        }
    }
    // A few cycles each: a ratio would only show noise.
    let t = median(t);
    println!(
        "| disabled call, method (`log.debug(msg, &[3 fields])`, info logger) | {:.1} | {t:.1} | - |",
        median(k)
    );
    println!(
        "| disabled call, macro (`keel_log::debug!(log, msg; 3 fields)`) | {:.1} | {t:.1} | - |",
        median(m)
    );
}
