//! The cache metric families, with the seed's exact names (part of the contract):
//! `<ns>_cache_requests_total{cache,operation,status}`, `<ns>_cache_operation_duration_seconds`,
//! `<ns>_cache_items`, `<ns>_cache_hits_total`, `<ns>_cache_misses_total`, plus
//! `<ns>_cache_evictions_total{cache,cause}`. Every backend records through
//! [`CacheInstruments`]; the families are encoded from its striped cells at render time, by a
//! collector registered once per [`MetricsService`].
//!
//! ```
//! use keel_cache::metrics::CacheMetrics;
//! use keel_metrics::MetricsService;
//!
//! let metrics = MetricsService::new("lab").unwrap();
//! let cache = CacheMetrics::of(&metrics).for_cache("sessions");
//! cache.record_hit(std::time::Duration::from_micros(3));
//! let text = metrics.render();
//! assert!(text.contains("lab_cache_requests_total{cache=\"sessions\",operation=\"get\",status=\"hit\"} 1"));
//! assert!(text.contains("lab_cache_hits_total{cache=\"sessions\"} 1"));
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_metrics::MetricsService;
use keel_metrics::striped::{BUCKETS, STRIPES, Slot, bucket_index, bucket_pairs, slot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// A cache operation, the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `get`
    Get,
    /// `get_many`
    GetMany,
    /// `set`
    Set,
    /// `set_many`
    SetMany,
    /// `setnx` (set if absent)
    SetNx,
    /// `cas` (set if the current value matches)
    Cas,
    /// `delete`
    Delete,
    /// `delete_many`
    DeleteMany,
    /// `exists`
    Exists,
    /// `expire`
    Expire,
    /// `ttl`
    Ttl,
    /// `incr` (also used by decrements)
    Incr,
    /// `clear`
    Clear,
}

impl Operation {
    /// Every operation, in label order.
    pub const ALL: [Operation; 13] = [
        Operation::Get,
        Operation::GetMany,
        Operation::Set,
        Operation::SetMany,
        Operation::SetNx,
        Operation::Cas,
        Operation::Delete,
        Operation::DeleteMany,
        Operation::Exists,
        Operation::Expire,
        Operation::Ttl,
        Operation::Incr,
        Operation::Clear,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::GetMany => "get_many",
            Operation::Set => "set",
            Operation::SetMany => "set_many",
            Operation::SetNx => "setnx",
            Operation::Cas => "cas",
            Operation::Delete => "delete",
            Operation::DeleteMany => "delete_many",
            Operation::Exists => "exists",
            Operation::Expire => "expire",
            Operation::Ttl => "ttl",
            Operation::Incr => "incr",
            Operation::Clear => "clear",
        }
    }

    /// Which statuses this operation reports: lookups report hit/miss, the rest ok.
    const fn statuses(self) -> &'static [Status] {
        match self {
            Operation::Get => &[Status::Hit, Status::Miss, Status::Error],
            _ => &[Status::Ok, Status::Error],
        }
    }
}

/// The outcome of a request, the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// A lookup found the key.
    Hit,
    /// A lookup did not find the key.
    Miss,
    /// The operation succeeded.
    Ok,
    /// The operation failed.
    Error,
}

impl Status {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// Every (operation, status) pair a cache reports, in a fixed order: one statistics cell each.
const CELLS: [(Operation, Status); 27] = {
    let mut out = [(Operation::Get, Status::Hit); 27];
    let mut n = 0;
    let mut i = 0;
    while i < Operation::ALL.len() {
        let op = Operation::ALL[i];
        let statuses = op.statuses();
        let mut j = 0;
        while j < statuses.len() {
            out[n] = (op, statuses[j]);
            n += 1;
            j += 1;
        }
        i += 1;
    }
    out
};

/// The cell of `(op, status)`, or `None` for a pair the operation never reports.
const fn cell_index(op: Operation, status: Status) -> Option<usize> {
    let mut i = 0;
    while i < CELLS.len() {
        if CELLS[i].0 as usize == op as usize && CELLS[i].1 as usize == status as usize {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Slots per cell: the histogram buckets, the sum in nanoseconds, then the calls counted
/// without a duration ([`CacheInstruments::count`]).
const CELL_SLOTS: usize = BUCKETS + 2;

/// Offset of the untimed count within a cell.
const UNTIMED: usize = BUCKETS + 1;

/// One thread stripe of a cache's statistics: every cell's buckets and sum, contiguous, padded
/// so two stripes never share a cache line.
#[repr(align(128))]
struct StatsStripe {
    slots: [AtomicU64; CELLS.len() * CELL_SLOTS],
    batch_hits: AtomicU64,
    batch_misses: AtomicU64,
    evicted_size: AtomicU64,
    evicted_expired: AtomicU64,
    /// Countdowns choosing which calls are timed ([`CacheInstruments::sampled`]), one per
    /// operation.
    ticks: [AtomicU32; OPS],
}

impl Default for StatsStripe {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            batch_hits: AtomicU64::new(0),
            batch_misses: AtomicU64::new(0),
            evicted_size: AtomicU64::new(0),
            evicted_expired: AtomicU64::new(0),
            ticks: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

struct CacheStats {
    name: String,
    stripes: Box<[StatsStripe; STRIPES]>,
    items: AtomicI64,
}

/// A summed view of one cache's statistics at render time.
struct Snapshot {
    slots: Vec<u64>,
    batch_hits: u64,
    batch_misses: u64,
    evicted_size: u64,
    evicted_expired: u64,
}

impl Snapshot {
    /// Every call of the cell: the timed ones (in the buckets) and the untimed ones.
    fn count(&self, cell: usize) -> u64 {
        let base = cell * CELL_SLOTS;
        self.slots[base..base + BUCKETS].iter().sum::<u64>() + self.slots[base + UNTIMED]
    }
}

impl CacheStats {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            stripes: Box::new(std::array::from_fn(|_| StatsStripe::default())),
            items: AtomicI64::new(0),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            slots: vec![0; CELLS.len() * CELL_SLOTS],
            batch_hits: 0,
            batch_misses: 0,
            evicted_size: 0,
            evicted_expired: 0,
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for s in self.stripes.iter() {
            for (total, slot) in snap.slots.iter_mut().zip(&s.slots) {
                *total = total.wrapping_add(load(slot));
            }
            snap.batch_hits += load(&s.batch_hits);
            snap.batch_misses += load(&s.batch_misses);
            snap.evicted_size += load(&s.evicted_size);
            snap.evicted_expired += load(&s.evicted_expired);
        }
        snap
    }
}

type CacheMap = Arc<Mutex<BTreeMap<String, Arc<CacheStats>>>>;

/// The cache metric families of one registry. Obtain it with
/// [`CacheMetrics::of`], then resolve per-cache instruments with
/// [`for_cache`](Self::for_cache).
///
/// Recording is cheap because nothing is counted twice: each (operation, status) pair keeps
/// one latency histogram per thread stripe, and `requests_total`, the per-operation duration
/// histogram, `hits_total` and `misses_total` are all derived from those cells when the
/// registry is rendered.
#[derive(Clone)]
pub struct CacheMetrics {
    caches: CacheMap,
}

impl std::fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheMetrics").finish_non_exhaustive()
    }
}

/// The metric names (without namespace) the cache collector owns.
pub const CACHE_FAMILY_NAMES: [&str; 6] = [
    "cache_requests",
    "cache_operation_duration_seconds",
    "cache_items",
    "cache_hits",
    "cache_misses",
    "cache_evictions",
];

impl CacheMetrics {
    /// The cache families of `service`, registered on first use (one collector per registry,
    /// shared by every cache that records into it).
    ///
    /// When the registry already holds a family under one of [`CACHE_FAMILY_NAMES`] (the
    /// application registered a `cache_hits` metric of its own first), the caches still count
    /// but their families are not exported from that registry; a debug build panics instead,
    /// so the clash shows in tests.
    pub fn of(service: &MetricsService) -> Self {
        let registered =
            service.get_or_register_collector("keel_cache", &CACHE_FAMILY_NAMES, || {
                let (metrics, collector) = Self::new();
                (metrics, Box::new(collector) as Box<dyn Collector>)
            });
        match registered {
            Ok(metrics) => metrics,
            Err(e) => {
                debug_assert!(false, "cache metric families not registered: {e}");
                Self::new().0
            }
        }
    }

    fn new() -> (Self, CacheCollector) {
        let caches = CacheMap::default();
        (
            Self {
                caches: caches.clone(),
            },
            CacheCollector { caches },
        )
    }

    /// Instruments for the cache named `cache`. Resolving the same name twice returns handles
    /// to the same series. Every (operation, status) pair the cache can report starts at 0.
    pub fn for_cache(&self, cache: &str) -> CacheInstruments {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = caches
            .entry(cache.to_owned())
            .or_insert_with(|| Arc::new(CacheStats::new(cache)))
            .clone();
        CacheInstruments { stats }
    }
}

/// Operations with a tick of their own.
const OPS: usize = 13;

#[inline]
fn op_slot(op: Operation) -> usize {
    match op {
        Operation::Get => 0,
        Operation::GetMany => 1,
        Operation::Set => 2,
        Operation::SetMany => 3,
        Operation::SetNx => 4,
        Operation::Cas => 5,
        Operation::Delete => 6,
        Operation::DeleteMany => 7,
        Operation::Exists => 8,
        Operation::Expire => 9,
        Operation::Ttl => 10,
        Operation::Incr => 11,
        _ => 12,
    }
}

/// Pre-resolved metric handles for one cache: recording touches no lock and no map, only the
/// calling thread's stripe (two relaxed atomic adds per request).
#[derive(Clone)]
pub struct CacheInstruments {
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for CacheInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheInstruments")
            .field("cache", &self.stats.name)
            .finish_non_exhaustive()
    }
}

impl CacheInstruments {
    /// The calling thread's stripe of this cache's cells, and how to add to it.
    #[inline(always)]
    fn stripe(&self, slot: Slot) -> &StatsStripe {
        // `% STRIPES` is a mask: no bounds check left.
        &self.stats.stripes[slot.index() % STRIPES]
    }

    /// Whether to time this call of `op`: one call in `one_in` per operation and thread
    /// stripe of this cache, the first included, so even a short-lived thread or a rare
    /// operation has its latency in the histogram (for backends that time a sample; see
    /// docs/metrics.md); `one_in <= 1` times every call. A countdown, not a modulo: no
    /// division on the hot path. On a stripe shared by several threads a race may skip or
    /// repeat a tick: which calls are timed shifts, the counts stay exact.
    #[inline(always)]
    pub(crate) fn sampled(&self, slot: Slot, one_in: u32, op: Operation) -> bool {
        if one_in <= 1 {
            return true;
        }
        let tick = &self.stripe(slot).ticks[op_slot(op)];
        let left = tick.load(Ordering::Relaxed);
        tick.store(
            if left == 0 { one_in - 1 } else { left - 1 },
            Ordering::Relaxed,
        );
        left == 0
    }

    /// Counts one request of `op` with `status` that took `elapsed`. A pair the operation
    /// never reports (e.g. `set`/`hit`) is counted as `Ok` for writes and `Error` otherwise.
    #[inline]
    pub fn record(&self, op: Operation, status: Status, elapsed: Duration) {
        self.record_in(slot(), op, status, elapsed);
    }

    /// [`record`](Self::record) with the calling thread's [`Slot`] already in hand (it must
    /// be the calling thread's own: see [`keel_metrics::striped::Slot`]).
    #[inline(always)]
    pub(crate) fn record_in(&self, slot: Slot, op: Operation, status: Status, elapsed: Duration) {
        let cell = cell_index(op, status)
            .or_else(|| cell_index(op, Status::Ok))
            .or_else(|| cell_index(op, Status::Error))
            .unwrap_or(0);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let base = cell * CELL_SLOTS;
        let s = self.stripe(slot);
        slot.add(&s.slots[base + bucket_index(nanos)], 1);
        slot.add(&s.slots[base + BUCKETS], nanos);
    }

    /// Counts one request of `op` with `status` without a duration: it counts in
    /// `requests_total` (and `hits_total`/`misses_total`) but not in the duration histogram,
    /// whose count is then that of the timed calls. For backends that time a sample of their
    /// calls (see docs/metrics.md): one add to the calling thread's stripe.
    #[inline]
    pub fn count(&self, op: Operation, status: Status) {
        self.count_in(slot(), op, status);
    }

    /// [`count`](Self::count) with the calling thread's [`Slot`] already in hand (see
    /// [`record_in`](Self::record_in)).
    #[inline(always)]
    pub(crate) fn count_in(&self, slot: Slot, op: Operation, status: Status) {
        let cell = cell_index(op, status)
            .or_else(|| cell_index(op, Status::Ok))
            .or_else(|| cell_index(op, Status::Error))
            .unwrap_or(0);
        slot.add(&self.stripe(slot).slots[cell * CELL_SLOTS + UNTIMED], 1);
    }

    /// A `get` that found its key (also counts towards `hits_total`).
    #[inline]
    pub fn record_hit(&self, elapsed: Duration) {
        self.record(Operation::Get, Status::Hit, elapsed);
    }

    /// A `get` that missed (also counts towards `misses_total`).
    #[inline]
    pub fn record_miss(&self, elapsed: Duration) {
        self.record(Operation::Get, Status::Miss, elapsed);
    }

    /// Adds the hits and misses of a batch lookup to `hits_total` / `misses_total`.
    pub fn record_lookups(&self, hits: u64, misses: u64) {
        let slot = slot();
        let s = self.stripe(slot);
        slot.add(&s.batch_hits, hits);
        slot.add(&s.batch_misses, misses);
    }

    /// Sets the `cache_items` gauge.
    pub fn set_items(&self, items: i64) {
        self.stats.items.store(items, Ordering::Relaxed);
    }

    /// Counts entries the cache removed on its own because it was full.
    pub fn record_size_eviction(&self) {
        let slot = slot();
        slot.add(&self.stripe(slot).evicted_size, 1);
    }

    /// Counts entries the cache removed on its own because they expired.
    pub fn record_expiry_eviction(&self) {
        let slot = slot();
        slot.add(&self.stripe(slot).evicted_expired, 1);
    }

    /// Number of `op` requests with `status` so far (for tests and status pages).
    pub fn requests(&self, op: Operation, status: Status) -> u64 {
        cell_index(op, status).map_or(0, |cell| self.stats.snapshot().count(cell))
    }

    /// The current `cache_items` value.
    pub fn items(&self) -> i64 {
        self.stats.items.load(Ordering::Relaxed)
    }
}

/// Encodes every cache's statistics at render time.
#[derive(Debug)]
struct CacheCollector {
    caches: CacheMap,
}

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStats")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let caches: Vec<(Arc<CacheStats>, Snapshot)> = self
            .caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| (c.clone(), c.snapshot()))
            .collect();
        let label = |c: &CacheStats| [("cache", c.name.clone())];

        let mut family = encoder.encode_descriptor(
            "cache_requests",
            "Total number of cache requests",
            None,
            MetricType::Counter,
        )?;
        for (c, snap) in &caches {
            for (cell, (op, status)) in CELLS.iter().enumerate() {
                let labels = [
                    ("cache", c.name.as_str()),
                    ("operation", op.as_str()),
                    ("status", status.as_str()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&snap.count(cell), None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "cache_operation_duration_seconds",
            "Duration of cache operations in seconds",
            None,
            MetricType::Histogram,
        )?;
        for (c, snap) in &caches {
            for op in Operation::ALL {
                let mut counts = [0u64; BUCKETS];
                let mut sum_nanos: u128 = 0;
                for (cell, _) in CELLS.iter().enumerate().filter(|(_, (o, _))| *o == op) {
                    let base = cell * CELL_SLOTS;
                    for (total, v) in counts.iter_mut().zip(&snap.slots[base..base + BUCKETS]) {
                        *total += v;
                    }
                    sum_nanos += u128::from(snap.slots[base + BUCKETS]);
                }
                let labels = [("cache", c.name.as_str()), ("operation", op.as_str())];
                let buckets = bucket_pairs(&counts);
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        sum_nanos as f64 / 1e9,
                        counts.iter().sum(),
                        &buckets,
                        None,
                    )?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "cache_items",
            "Current number of items in the cache",
            None,
            MetricType::Gauge,
        )?;
        for (c, _) in &caches {
            family
                .encode_family(&label(c))?
                .encode_gauge(&c.items.load(Ordering::Relaxed))?;
        }

        let hit_cell = cell_index(Operation::Get, Status::Hit).unwrap_or(0);
        let miss_cell = cell_index(Operation::Get, Status::Miss).unwrap_or(0);
        for (name, help, pick) in [
            (
                "cache_hits",
                "Total number of cache hits",
                (|s: &Snapshot, cell| s.count(cell) + s.batch_hits) as fn(&Snapshot, usize) -> u64,
            ),
            (
                "cache_misses",
                "Total number of cache misses",
                |s: &Snapshot, cell| s.count(cell) + s.batch_misses,
            ),
        ] {
            let cell = if name == "cache_hits" {
                hit_cell
            } else {
                miss_cell
            };
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (c, snap) in &caches {
                family
                    .encode_family(&label(c))?
                    .encode_counter::<NoLabelSet, _, u64>(&pick(snap, cell), None)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "cache_evictions",
            "Entries removed by the cache itself (cause: size or expired)",
            None,
            MetricType::Counter,
        )?;
        for (c, snap) in &caches {
            for (cause, n) in [
                ("size", snap.evicted_size),
                ("expired", snap.evicted_expired),
            ] {
                let labels = [("cache", c.name.as_str()), ("cause", cause)];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_and_labels() {
        let m = MetricsService::new("lab").unwrap();
        let c = CacheMetrics::of(&m).for_cache("c1");
        c.record_hit(Duration::from_micros(2));
        c.record_miss(Duration::from_micros(2));
        c.record(Operation::Set, Status::Ok, Duration::from_micros(2));
        c.record(Operation::Delete, Status::Error, Duration::from_micros(2));
        c.set_items(7);
        c.record_size_eviction();
        let text = m.render();
        for needle in [
            "# TYPE lab_cache_requests counter",
            "lab_cache_requests_total{cache=\"c1\",operation=\"get\",status=\"hit\"} 1",
            "lab_cache_requests_total{cache=\"c1\",operation=\"get\",status=\"miss\"} 1",
            "lab_cache_requests_total{cache=\"c1\",operation=\"set\",status=\"ok\"} 1",
            "lab_cache_requests_total{cache=\"c1\",operation=\"delete\",status=\"error\"} 1",
            "# TYPE lab_cache_operation_duration_seconds histogram",
            "lab_cache_operation_duration_seconds_count{cache=\"c1\",operation=\"get\"} 2",
            "lab_cache_operation_duration_seconds_bucket{le=\"+Inf\",cache=\"c1\",operation=\"get\"} 2",
            "lab_cache_operation_duration_seconds_bucket{le=\"0.000005\",cache=\"c1\",operation=\"get\"} 2",
            "lab_cache_items{cache=\"c1\"} 7",
            "lab_cache_hits_total{cache=\"c1\"} 1",
            "lab_cache_misses_total{cache=\"c1\"} 1",
            "lab_cache_evictions_total{cache=\"c1\",cause=\"size\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // Lookups never report "ok", writes never "hit"; derived totals agree with the cells.
        c.record_lookups(3, 4);
        let text = m.render();
        assert!(
            text.contains("lab_cache_hits_total{cache=\"c1\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("lab_cache_misses_total{cache=\"c1\"} 5"),
            "{text}"
        );
        assert!(!text.contains("operation=\"get\",status=\"ok\""));
        assert!(!text.contains("operation=\"set\",status=\"hit\""));
    }

    #[test]
    fn same_cache_twice_shares_series() {
        let m = MetricsService::new("lab").unwrap();
        let a = CacheMetrics::of(&m).for_cache("c");
        let b = CacheMetrics::of(&m).for_cache("c");
        a.record_hit(Duration::ZERO);
        assert_eq!(b.requests(Operation::Get, Status::Hit), 1);
        assert_eq!(m.render().matches("status=\"hit\"} 1").count(), 1);
    }
}
