//! The cache metric families (names are part of the contract: see the crate docs).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::service::MetricsService;
use crate::striped::{DurationHistogram, StripedCounter};

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
    fn statuses(self) -> &'static [Status] {
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    cache: String,
    operation: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    cache: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    cache: String,
    cause: &'static str,
}

/// The cache metric families of one registry. Obtain it with
/// [`MetricsService::cache_metrics`], then resolve per-cache instruments with
/// [`for_cache`](Self::for_cache).
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    requests: Family<RequestLabels, StripedCounter>,
    durations: Family<OperationLabels, DurationHistogram>,
    items: Family<CacheLabels, Gauge>,
    hits: Family<CacheLabels, StripedCounter>,
    misses: Family<CacheLabels, StripedCounter>,
    evictions: Family<EvictionLabels, StripedCounter>,
}

impl CacheMetrics {
    pub(crate) fn register(service: &MetricsService) -> Self {
        // The names are fixed and valid, and nothing else registers them with other types
        // before this runs once per service, so these cannot fail; fall back to unregistered
        // families rather than panic if a caller squatted on a name.
        fn family<M: prometheus_client::registry::Metric + Clone + Default>(
            service: &MetricsService,
            name: &str,
            help: &str,
        ) -> M {
            service
                .get_or_register(name, help, M::default)
                .unwrap_or_default()
        }
        Self {
            requests: family(service, "cache_requests", "Total number of cache requests"),
            durations: family(
                service,
                "cache_operation_duration_seconds",
                "Duration of cache operations in seconds",
            ),
            items: family(
                service,
                "cache_items",
                "Current number of items in the cache",
            ),
            hits: family(service, "cache_hits", "Total number of cache hits"),
            misses: family(service, "cache_misses", "Total number of cache misses"),
            evictions: family(
                service,
                "cache_evictions",
                "Entries removed by the cache itself (cause: size or expired)",
            ),
        }
    }

    /// Instruments for the cache named `cache`. Resolving the same name twice returns handles
    /// to the same series. Every (operation, status) pair the cache can report starts at 0.
    pub fn for_cache(&self, cache: &str) -> CacheInstruments {
        let cache = cache.to_owned();
        let requests = Operation::ALL.map(|op| {
            let mut by_status: [Option<StripedCounter>; 4] = Default::default();
            for &status in op.statuses() {
                by_status[status as usize] =
                    Some(self.requests.get_or_create_owned(&RequestLabels {
                        cache: cache.clone(),
                        operation: op.as_str(),
                        status: status.as_str(),
                    }));
            }
            by_status
        });
        let durations = Operation::ALL.map(|op| {
            self.durations.get_or_create_owned(&OperationLabels {
                cache: cache.clone(),
                operation: op.as_str(),
            })
        });
        let labels = CacheLabels {
            cache: cache.clone(),
        };
        let eviction = |cause| {
            self.evictions.get_or_create_owned(&EvictionLabels {
                cache: cache.clone(),
                cause,
            })
        };
        CacheInstruments {
            requests,
            durations,
            items: self.items.get_or_create_owned(&labels),
            hits: self.hits.get_or_create_owned(&labels),
            misses: self.misses.get_or_create_owned(&labels),
            evicted_size: eviction("size"),
            evicted_expired: eviction("expired"),
            spare: StripedCounter::default(),
        }
    }
}

/// Pre-resolved metric handles for one cache: recording touches no lock and no map.
#[derive(Debug, Clone)]
pub struct CacheInstruments {
    requests: [[Option<StripedCounter>; 4]; Operation::ALL.len()],
    durations: [DurationHistogram; Operation::ALL.len()],
    items: Gauge,
    hits: StripedCounter,
    misses: StripedCounter,
    evicted_size: StripedCounter,
    evicted_expired: StripedCounter,
    /// Target for (operation, status) pairs an operation never reports, so a mistaken call
    /// is counted nowhere visible instead of panicking.
    spare: StripedCounter,
}

impl CacheInstruments {
    fn op_index(op: Operation) -> usize {
        op as usize
    }

    /// Counts one request of `op` with `status` that took `elapsed`.
    #[inline]
    pub fn record(&self, op: Operation, status: Status, elapsed: Duration) {
        let i = Self::op_index(op);
        self.requests[i][status as usize]
            .as_ref()
            .unwrap_or(&self.spare)
            .inc();
        self.durations[i].observe(elapsed);
    }

    /// A `get` that found its key: request, duration and `hits_total`.
    #[inline]
    pub fn record_hit(&self, elapsed: Duration) {
        self.record(Operation::Get, Status::Hit, elapsed);
        self.hits.inc();
    }

    /// A `get` that missed: request, duration and `misses_total`.
    #[inline]
    pub fn record_miss(&self, elapsed: Duration) {
        self.record(Operation::Get, Status::Miss, elapsed);
        self.misses.inc();
    }

    /// Adds the hits and misses of a batch lookup to `hits_total` / `misses_total`.
    pub fn record_lookups(&self, hits: u64, misses: u64) {
        self.hits.inc_by(hits);
        self.misses.inc_by(misses);
    }

    /// Sets the `cache_items` gauge.
    pub fn set_items(&self, items: i64) {
        self.items.set(items);
    }

    /// Counts entries the cache removed on its own because it was full.
    pub fn record_size_eviction(&self) {
        self.evicted_size.inc();
    }

    /// Counts entries the cache removed on its own because they expired.
    pub fn record_expiry_eviction(&self) {
        self.evicted_expired.inc();
    }

    /// Number of `op` requests with `status` so far (for tests and status pages).
    pub fn requests(&self, op: Operation, status: Status) -> u64 {
        self.requests[Self::op_index(op)][status as usize]
            .as_ref()
            .map_or(0, |c| c.get())
    }

    /// The current `cache_items` value.
    pub fn items(&self) -> i64 {
        self.items.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_and_labels() {
        let m = MetricsService::new("lab").unwrap();
        let c = m.cache_metrics().for_cache("c1");
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
        // Lookups never report "ok", writes never "hit".
        assert!(!text.contains("operation=\"get\",status=\"ok\""));
        assert!(!text.contains("operation=\"set\",status=\"hit\""));
    }

    #[test]
    fn same_cache_twice_shares_series() {
        let m = MetricsService::new("lab").unwrap();
        let a = m.cache_metrics().for_cache("c");
        let b = m.cache_metrics().for_cache("c");
        a.record_hit(Duration::ZERO);
        assert_eq!(b.requests(Operation::Get, Status::Hit), 1);
        assert_eq!(m.render().matches("status=\"hit\"} 1").count(), 1);
    }
}
