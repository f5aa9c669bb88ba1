//! Lock-free instruments for hot paths, and the striping and bucketing they are built from
//! (public so that a component's own collector, such as keel-cache's cache families, can
//! use the same cells).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{Atomic, Counter};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Stripes a thread can own alone (see [`Slot`]).
pub const OWNED: usize = 12;

/// Number of stripes: the [`OWNED`] ones, then the ones shared by the threads beyond them
/// (still correct, only slower).
pub const STRIPES: usize = 16;

/// One cache line (128 bytes covers adjacent-line prefetching on x86) per stripe.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The calling thread's stripe, and whether the thread owns it alone.
///
/// The first [`OWNED`] threads to record (at a time) each own a stripe: nobody else writes
/// there, so an increment is a plain load and store instead of a lock-prefixed
/// read-modify-write, which on x86 is a full barrier that costs ~20 cycles and stops the
/// memory accesses around it from overlapping. A thread gives its stripe back when it exits
/// (the next owner's first load sees every store of the last one: the hand-over is a
/// release/acquire pair). Threads beyond [`OWNED`] share the remaining stripes and add
/// atomically. Readers add all stripes up with plain loads either way.
///
/// Every write to a stripe must go through the writing thread's own slot ([`slot`]): that
/// is what makes an owned stripe single-writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    index: usize,
    owned: bool,
}

impl Slot {
    /// The stripe, in `0..STRIPES`.
    #[inline]
    pub fn index(self) -> usize {
        self.index
    }

    /// Whether the calling thread owns the stripe alone.
    #[inline]
    pub fn is_owned(self) -> bool {
        self.owned
    }

    /// Adds `v` to `cell`, this slot's copy of a value; returns the previous value.
    #[inline]
    pub fn add(self, cell: &AtomicU64, v: u64) -> u64 {
        if self.owned {
            let old = cell.load(Ordering::Relaxed);
            cell.store(old.wrapping_add(v), Ordering::Relaxed);
            old
        } else {
            cell.fetch_add(v, Ordering::Relaxed)
        }
    }
}

/// Which owned stripes are taken (bit `i` = stripe `i`).
static TAKEN: AtomicU32 = AtomicU32::new(0);
const _: () = assert!(OWNED < 32 && OWNED < STRIPES);

/// A thread's slot; an owned stripe is given back when the thread exits.
struct Held(Slot);

impl Held {
    fn acquire() -> Self {
        let all = (1u32 << OWNED) - 1;
        let mut taken = TAKEN.load(Ordering::Relaxed);
        loop {
            let free = !taken & all;
            if free == 0 {
                break;
            }
            let i = free.trailing_zeros();
            // Acquire: see every store of the stripe's previous owner.
            match TAKEN.compare_exchange_weak(
                taken,
                taken | 1 << i,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Held(Slot {
                        index: i as usize,
                        owned: true,
                    });
                }
                Err(now) => taken = now,
            }
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Held(Slot {
            index: OWNED + NEXT.fetch_add(1, Ordering::Relaxed) % (STRIPES - OWNED),
            owned: false,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.owned {
            // Release: the next owner sees this thread's last stores.
            TAKEN.fetch_and(!(1u32 << self.0.index), Ordering::Release);
        }
    }
}

/// The calling thread's [`Slot`] (taken on first use). During the thread's exit, once its
/// slot is given back, a shared stripe.
#[inline]
pub fn slot() -> Slot {
    thread_local! {
        static HELD: Held = Held::acquire();
    }
    HELD.try_with(|h| h.0).unwrap_or(Slot {
        index: OWNED,
        owned: false,
    })
}

/// The calling thread's stripe, in `0..STRIPES` ([`slot`]'s index).
#[inline]
pub fn stripe() -> usize {
    slot().index
}

/// A `u64` counter value striped over cache-padded atomics: increments touch only the calling
/// thread's stripe; reads add all stripes up (exact once writers are quiet, never torn).
#[derive(Debug, Default)]
pub struct StripedU64 {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl Atomic<u64> for StripedU64 {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        let slot = slot();
        slot.add(&self.stripes[slot.index() % STRIPES].0, v)
    }

    fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// A Prometheus counter backed by [`StripedU64`]; cloning shares the value.
pub type StripedCounter = Counter<u64, StripedU64>;

/// Default upper bounds of [`DurationHistogram`]: 1 µs to 10 s, roughly ×2.5 per step, which
/// resolves both in-process cache calls (microseconds) and network round trips (milliseconds).
pub const DEFAULT_BOUNDS: [Duration; 16] = [
    Duration::from_micros(1),
    Duration::from_micros(5),
    Duration::from_micros(10),
    Duration::from_micros(25),
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(10),
];
/// Number of buckets of [`DEFAULT_BOUNDS`] plus the `+Inf` bucket.
pub const BUCKETS: usize = DEFAULT_BOUNDS.len() + 1;

/// [`DEFAULT_BOUNDS`] in nanoseconds, for a cheap bucket search.
const BOUNDS_NANOS: [u64; DEFAULT_BOUNDS.len()] = {
    let mut out = [0u64; DEFAULT_BOUNDS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = DEFAULT_BOUNDS[i].as_nanos() as u64;
        i += 1;
    }
    out
};

/// The bucket of an observation of `nanos` (bounds are inclusive upper bounds).
#[inline]
pub fn bucket_index(nanos: u64) -> usize {
    BOUNDS_NANOS.partition_point(|&b| b < nanos)
}

/// Per-bucket counts paired with their upper bounds in seconds, as the encoder wants them
/// (not cumulative: the OpenMetrics encoder accumulates).
pub fn bucket_pairs(counts: &[u64; BUCKETS]) -> Vec<(f64, u64)> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let bound = DEFAULT_BOUNDS
                .get(i)
                .map_or(f64::INFINITY, Duration::as_secs_f64);
            (bound, c)
        })
        .collect()
}

#[derive(Debug, Default)]
struct HistogramStripe {
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

/// A lock-free latency histogram in seconds with fixed bounds (1 µs to 10 s, about ×2.5 per step).
///
/// An observation is two adds on the calling thread's stripe (see [`Slot`]); the count is
/// derived from the buckets when rendering, so it always equals the `+Inf` bucket.
#[derive(Debug, Clone, Default)]
pub struct DurationHistogram {
    inner: std::sync::Arc<[Padded<HistogramStripe>; STRIPES]>,
}

impl DurationHistogram {
    /// A new, empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one observation.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let idx = bucket_index(nanos);
        let slot = slot();
        let s = &self.inner[slot.index() % STRIPES].0;
        slot.add(&s.buckets[idx], 1);
        slot.add(&s.sum_nanos, nanos);
    }

    /// Total number of observations so far.
    pub fn count(&self) -> u64 {
        self.snapshot().1
    }

    /// `(sum in seconds, count, buckets as (upper bound in seconds, count in that bucket))`.
    /// The counts are per bucket, not cumulative: the OpenMetrics encoder accumulates them.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut counts = [0u64; BUCKETS];
        let mut sum_nanos: u128 = 0;
        for s in self.inner.iter() {
            for (c, b) in counts.iter_mut().zip(&s.0.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
            sum_nanos += u128::from(s.0.sum_nanos.load(Ordering::Relaxed));
        }
        (
            sum_nanos as f64 / 1e9,
            counts.iter().sum(),
            bucket_pairs(&counts),
        )
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_all_threads() {
        let c = StripedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let c = c.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        c.inc();
                    }
                });
            }
        });
        assert_eq!(c.get(), 80_000);
    }

    #[test]
    fn owned_stripes_are_exclusive_and_handed_over_with_their_counts() {
        // More threads than owned stripes, started and finished in waves: every increment
        // counts, whichever mix of owned and shared stripes the threads got.
        let c = StripedCounter::default();
        for _ in 0..4 {
            std::thread::scope(|s| {
                for _ in 0..(OWNED + 6) {
                    let c = c.clone();
                    s.spawn(move || {
                        for _ in 0..20_000 {
                            c.inc();
                        }
                    });
                }
            });
        }
        assert_eq!(c.get(), 4 * (OWNED as u64 + 6) * 20_000);
        // No two live threads own the same stripe.
        let slots = std::sync::Mutex::new(Vec::new());
        let barrier = std::sync::Barrier::new(OWNED + 2);
        std::thread::scope(|s| {
            for _ in 0..(OWNED + 2) {
                s.spawn(|| {
                    slots.lock().unwrap().push(slot());
                    barrier.wait();
                });
            }
        });
        let slots = slots.into_inner().unwrap();
        let mut owned: Vec<usize> = slots
            .iter()
            .filter(|s| s.is_owned())
            .map(|s| s.index())
            .collect();
        let n = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(
            owned.len(),
            n,
            "an owned stripe was handed to two live threads: {slots:?}"
        );
        assert!(slots.iter().all(|s| s.index() < STRIPES));
    }

    #[test]
    fn histogram_bounds_are_inclusive_and_count_is_the_total() {
        let h = DurationHistogram::new();
        h.observe(Duration::from_micros(1)); // on the first bound: le="1e-6"
        h.observe(Duration::from_micros(2));
        h.observe(Duration::from_secs(60)); // only +Inf
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], (1e-6, 1));
        assert_eq!(buckets[1], (5e-6, 1));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
        assert!((sum - 60.000003).abs() < 1e-9);
    }
}
