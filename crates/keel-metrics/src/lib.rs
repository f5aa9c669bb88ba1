//! Prometheus metrics for Keel services.
//!
//! A [`MetricsService`] owns one namespaced registry (the seed's `NewMetricsService("lab", …)`),
//! hands out metric families that are registered exactly once no matter how often they are asked
//! for, renders the registry in the OpenMetrics text format and can serve it on `/metrics`.
//! Nothing here is specific to one component: each component defines its own families next to
//! its code (keel-cache's `metrics` module holds the seed's cache families, keel-log its sink
//! families) and registers them here, as plain metrics with
//! [`MetricsService::get_or_register`] or as a render-time collector with
//! [`MetricsService::get_or_register_collector`].
//!
//! Hot-path instruments are lock-free: counters are striped over cache-padded atomics and the
//! duration histogram keeps per-stripe atomic buckets, so two threads recording the same
//! operation do not fight over one cache line.
//!
//! # Layout
//! - `service`: [`MetricsService`], the namespaced registry (get-or-register, collectors,
//!   render hooks, OpenMetrics rendering).
//! - [`striped`]: [`StripedCounter`], [`DurationHistogram`] and the striping and bucketing
//!   they are built from.
//! - `http` (feature `http`): [`MetricsServer`], the `/metrics` listener.
//! - `error`: [`Error`].
//!
//! ```
//! use keel_metrics::{MetricsService, StripedCounter};
//!
//! let metrics = MetricsService::new("lab").unwrap();
//! let jobs: StripedCounter = metrics.get_or_register("jobs", "Jobs run", StripedCounter::default).unwrap();
//! jobs.inc();
//! assert!(metrics.render().contains("lab_jobs_total 1"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
#[cfg(feature = "http")]
mod http;
mod service;
pub mod striped;

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
