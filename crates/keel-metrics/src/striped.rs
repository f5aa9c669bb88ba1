//! Lock-free instruments for hot paths, and the striping and bucketing they are built from
//! (public so that a component's own collector, such as keel-cache's cache families, can
//! use the same cells).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{Atomic, Counter};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Number of stripes. A power of two comfortably above the core counts Keel targets; threads
/// beyond that share stripes, which is still correct, only slower.
pub const STRIPES: usize = 8;

/// One cache line (128 bytes covers adjacent-line prefetching on x86) per stripe.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The calling thread's stripe, in `0..STRIPES` (assigned round-robin on first use).
#[inline]
pub fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
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
        self.stripes[stripe()].0.fetch_add(v, Ordering::Relaxed)
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
/// An observation is two relaxed atomic adds on the calling thread's stripe; the count is
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
        let s = &self.inner[stripe()].0;
        s.buckets[idx].fetch_add(1, Ordering::Relaxed);
        s.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
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
