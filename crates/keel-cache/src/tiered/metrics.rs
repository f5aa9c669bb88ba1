//! The `tiered_*` metric families.

use keel_metrics::{MetricsService, StripedCounter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct TierLabels {
    cache: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CacheLabel {
    cache: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct DirectionLabels {
    cache: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct SourceLabels {
    cache: String,
    source: &'static str,
}

/// Hits and misses are on every read, from every thread: they are striped per thread (like the
/// cache operation counters), so L1 hits on different threads rarely share a cache line.
#[derive(Clone)]
pub(super) struct TierMetrics {
    pub(super) l1_hits: StripedCounter,
    pub(super) l1_misses: StripedCounter,
    pub(super) l2_hits: StripedCounter,
    pub(super) l2_misses: StripedCounter,
    pub(super) sent: Counter,
    pub(super) received: Counter,
    /// Received by source: Keel's messages, or the server's client tracking.
    pub(super) received_keel: Counter,
    pub(super) received_tracking: Counter,
    pub(super) flushes: Counter,
    pub(super) publish_failures: Counter,
    pub(super) subscribe_failures: Counter,
    /// Reads answered from L1 past its expiry because L2 was unreachable.
    pub(super) stale_served: Counter,
    /// Reads that failed because L2 was unreachable and L1 held nothing within the window.
    pub(super) stale_missing: Counter,
    /// L1 fills whose lifetime was jittered.
    pub(super) jittered_fills: Counter,
}

impl TierMetrics {
    pub(super) fn new(service: &MetricsService, cache: &str) -> Self {
        let hits: Family<TierLabels, StripedCounter> = service
            .get_or_register("tiered_hits", "Tiered cache hits by tier", Family::default)
            .unwrap_or_default();
        let misses: Family<TierLabels, StripedCounter> = service
            .get_or_register(
                "tiered_misses",
                "Tiered cache misses by tier",
                Family::default,
            )
            .unwrap_or_default();
        let inval: Family<DirectionLabels, Counter> = service
            .get_or_register(
                "tiered_invalidations",
                "L1 invalidation messages sent and received",
                Family::default,
            )
            .unwrap_or_default();
        let flushes: Family<TierLabels, Counter> = service
            .get_or_register(
                "tiered_l1_flushes",
                "Whole-L1 flushes (clear, or pub/sub reconnects)",
                Family::default,
            )
            .unwrap_or_default();
        let failures: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_invalidation_failures",
                "Invalidation messages that could not be published (each is retried)",
                Family::default,
            )
            .unwrap_or_default();
        let subscribe_failures: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_subscribe_failures",
                "Failed attempts to subscribe to the invalidation channel (L1 is bypassed meanwhile)",
                Family::default,
            )
            .unwrap_or_default();
        let by_source: Family<SourceLabels, Counter> = service
            .get_or_register(
                "tiered_invalidations_received",
                "L1 invalidations received, by source (keel: Keel's messages; tracking: the \
                 server's client tracking, one per push, which may name several keys)",
                Family::default,
            )
            .unwrap_or_default();
        let stale: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_stale_served",
                "Reads answered from L1 past its expiry while L2 was unreachable (stale-if-error)",
                Family::default,
            )
            .unwrap_or_default();
        let stale_missing: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_stale_unavailable",
                "Reads that failed while L2 was unreachable: no L1 entry within the stale-if-error window",
                Family::default,
            )
            .unwrap_or_default();
        let jittered: Family<CacheLabel, Counter> = service
            .get_or_register(
                "tiered_l1_jittered_fills",
                "L1 fills whose lifetime was shortened by the TTL jitter",
                Family::default,
            )
            .unwrap_or_default();
        let label = CacheLabel {
            cache: cache.to_owned(),
        };
        let source = |s| SourceLabels {
            cache: cache.to_owned(),
            source: s,
        };
        let tier = |t| TierLabels {
            cache: cache.to_owned(),
            tier: t,
        };
        let dir = |d| DirectionLabels {
            cache: cache.to_owned(),
            direction: d,
        };
        Self {
            l1_hits: hits.get_or_create_owned(&tier("l1")),
            l1_misses: misses.get_or_create_owned(&tier("l1")),
            l2_hits: hits.get_or_create_owned(&tier("l2")),
            l2_misses: misses.get_or_create_owned(&tier("l2")),
            sent: inval.get_or_create_owned(&dir("sent")),
            received: inval.get_or_create_owned(&dir("received")),
            received_keel: by_source.get_or_create_owned(&source("keel")),
            received_tracking: by_source.get_or_create_owned(&source("tracking")),
            flushes: flushes.get_or_create_owned(&tier("l1")),
            publish_failures: failures.get_or_create_owned(&CacheLabel {
                cache: cache.to_owned(),
            }),
            subscribe_failures: subscribe_failures.get_or_create_owned(&label),
            stale_served: stale.get_or_create_owned(&label),
            stale_missing: stale_missing.get_or_create_owned(&label),
            jittered_fills: jittered.get_or_create_owned(&label),
        }
    }
}
