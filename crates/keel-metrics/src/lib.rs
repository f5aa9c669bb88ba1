//! Prometheus metrics for Keel services.
//!
//! A [`MetricsService`] owns one namespaced registry (the seed's `NewMetricsService("lab", …)`),
//! hands out metric families that are registered exactly once no matter how often they are asked
//! for, renders the registry in the OpenMetrics text format and can serve it on `/metrics`.
//! [`CacheMetrics`] defines the cache metric families with the seed's exact names
//! (`<ns>_cache_requests_total{operation,status}`, `<ns>_cache_operation_duration_seconds`,
//! `<ns>_cache_items`, `<ns>_cache_hits_total`, `<ns>_cache_misses_total`) plus evictions, each
//! with a `cache` label so several caches can share one registry.
//!
//! Hot-path instruments are lock-free: counters are striped over cache-padded atomics and the
//! duration histogram keeps per-stripe atomic buckets, so two threads recording the same
//! operation do not fight over one cache line.
//!
//! ```
//! use keel_metrics::MetricsService;
//!
//! let metrics = MetricsService::new("lab").unwrap();
//! let cache = metrics.cache_metrics().for_cache("sessions");
//! cache.record_hit(std::time::Duration::from_micros(3));
//! let text = metrics.render();
//! assert!(text.contains("lab_cache_requests_total{cache=\"sessions\",operation=\"get\",status=\"hit\"} 1"));
//! assert!(text.contains("lab_cache_hits_total{cache=\"sessions\"} 1"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod error;
#[cfg(feature = "http")]
mod http;
mod service;
mod striped;

pub use cache::{CacheInstruments, CacheMetrics, Operation, Status};
pub use error::Error;
#[cfg(feature = "http")]
pub use http::MetricsServer;
pub use service::{CONTENT_TYPE, MetricsService};
pub use striped::{DurationHistogram, StripedCounter, StripedU64};

/// Re-export of the `prometheus-client` crate the registry is built on, so callers can register
/// their own metric types with [`MetricsService::get_or_register`].
pub use prometheus_client;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
