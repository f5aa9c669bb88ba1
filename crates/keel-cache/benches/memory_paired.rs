//! Memory backend vs raw moka and raw quick_cache, measured in interleaved rounds.
//!
//! Contenders (see `workload.rs`): `raw_moka` (the anchor), `raw_quick_cache` (the memory
//! core's library, bare), `keel_memory` (through `dyn Cache`, metrics on, evictions counted,
//! the default 1-in-64 timing), `keel_memory_no_eviction_count` and
//! `keel_memory_time_every_call` (`time_one_in(1)`).
//!
//! `cargo bench -p keel-cache --bench memory_paired` — each round runs every contender for the
//! same number of operations back to back (order alternating), so slow drift on a shared
//! machine hits all of them alike; the table gives the median ns/op over 15 rounds and the
//! median of the per-round ratios `anchor_time / contender_time` (above 1.0 = faster than raw
//! moka). Set `KEEL_BENCH_MOKA_VARIANTS=1` for raw moka with the backend's features,
//! `ONLY=get_heavy_90_10` (or `write_heavy_20_80`) and `THREADS=1` (or 2) to run one row,
//! `ROUNDS=n` for another number of rounds. `PROFILE=keel_memory` (any contender's name) runs
//! only that contender, for profiling: `perf record -g target/release/deps/memory_paired-* --bench`.

#[path = "workload.rs"]
mod workload;

const ROUNDS: usize = 15;
const OPS_PER_ROUND: u64 = 200_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; only run when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let variants = std::env::var_os("KEEL_BENCH_MOKA_VARIANTS").is_some();
    println!("| workload | threads | contender | median ns/op | median ratio vs raw_moka |");
    println!("|---|---|---|---|---|");
    for (name, write_pct) in [("get_heavy_90_10", 10), ("write_heavy_20_80", 80)] {
        for threads in [1usize, 2] {
            let only = std::env::var("ONLY").ok();
            let only_threads = std::env::var("THREADS").ok();
            if only.is_some_and(|o| o != name)
                || only_threads.is_some_and(|t| t != threads.to_string())
            {
                continue;
            }
            let w = workload::Workload::new(write_pct, variants);
            if let Ok(profiled) = std::env::var("PROFILE") {
                let (_, c) = w
                    .contenders
                    .iter()
                    .find(|(n, _)| *n == profiled)
                    .expect("PROFILE names a contender");
                for _ in 0..ROUNDS {
                    w.timed(c, threads, OPS_PER_ROUND);
                }
                continue;
            }
            let n = w.contenders.len();
            for (_, c) in &w.contenders {
                w.timed(c, threads, OPS_PER_ROUND); // warm-up
            }
            let mut ns = vec![Vec::new(); n];
            let mut ratios = vec![Vec::new(); n];
            let rounds = std::env::var("ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(ROUNDS);
            for round in 0..rounds {
                let mut t = vec![0.0; n];
                for j in 0..n {
                    let i = if round % 2 == 0 { j } else { n - 1 - j };
                    let d = w.timed(&w.contenders[i].1, threads, OPS_PER_ROUND);
                    t[i] = d.as_nanos() as f64 / OPS_PER_ROUND as f64;
                }
                for i in 0..n {
                    ns[i].push(t[i]);
                    ratios[i].push(t[0] / t[i]);
                }
            }
            for (i, (contender, _)) in w.contenders.iter().enumerate() {
                println!(
                    "| {name} | {threads} | {contender} | {:.0} | {:.2}x |",
                    median(ns[i].clone()),
                    median(ratios[i].clone())
                );
            }
        }
    }
}
