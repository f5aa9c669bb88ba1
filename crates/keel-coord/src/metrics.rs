//! The lock and semaphore metric families (`<ns>_lock_*` with label `lock`,
//! `<ns>_semaphore_*` with label `semaphore`), next to the code that records them.

use std::fmt::Debug;
use std::hash::Hash;

use keel_metrics::MetricsService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::lease::Instruments;

/// The label of the lock families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LockLabels {
    pub(crate) lock: String,
}

/// The label of the semaphore families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SemaphoreLabels {
    pub(crate) semaphore: String,
}

/// One family set per kind of lease: `<kind>_acquisitions`, `_contention`, `_wait_seconds`,
/// `_hold_seconds`, `_renew_failures`, `_losses`.
#[derive(Clone, Debug)]
pub(crate) struct LeaseMetrics<
    L: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static,
> {
    pub(crate) acquisitions: Family<L, Counter>,
    pub(crate) contention: Family<L, Counter>,
    pub(crate) wait: Family<L, Histogram>,
    hold: Family<L, Histogram>,
    renew_failures: Family<L, Counter>,
    losses: Family<L, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0,
    ])
}

impl<L: Clone + Hash + Eq + EncodeLabelSet + Debug + Send + Sync + 'static> LeaseMetrics<L> {
    /// Registers (or finds) the families of `kind` (`lock`, `semaphore`). A registry whose
    /// names are taken by other metric types records nowhere instead of failing.
    pub(crate) fn register(m: &MetricsService, kind: &str) -> Self {
        Self::try_register(m, kind).unwrap_or_else(|_| Self {
            acquisitions: Family::default(),
            contention: Family::default(),
            wait: Family::new_with_constructor(seconds_histogram),
            hold: Family::new_with_constructor(seconds_histogram),
            renew_failures: Family::default(),
            losses: Family::default(),
        })
    }

    fn try_register(m: &MetricsService, kind: &str) -> Result<Self, keel_metrics::Error> {
        let what = if kind == "lock" { "Locks" } else { "Permits" };
        let histogram = || Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        Ok(Self {
            acquisitions: m.get_or_register(
                &format!("{kind}_acquisitions"),
                &format!("{what} acquired"),
                Family::default,
            )?,
            contention: m.get_or_register(
                &format!("{kind}_contention"),
                &format!("Acquire attempts that found the {kind} held"),
                Family::default,
            )?,
            wait: m.get_or_register(
                &format!("{kind}_wait_seconds"),
                &format!("Time from asking for a {kind} to getting it"),
                histogram,
            )?,
            hold: m.get_or_register(
                &format!("{kind}_hold_seconds"),
                &format!("Time a {kind} was held until release or loss"),
                histogram,
            )?,
            renew_failures: m.get_or_register(
                &format!("{kind}_renew_failures"),
                "Renewals that failed (error or not the owner)",
                Family::default,
            )?,
            losses: m.get_or_register(
                &format!("{kind}_losses"),
                &format!("{what} lost before release (deadline passed or taken over)"),
                Family::default,
            )?,
        })
    }

    /// The per-name instruments a held lease records into.
    pub(crate) fn instruments(&self, labels: &L) -> Instruments {
        Instruments {
            hold: self.hold.get_or_create_owned(labels),
            renew_failures: self.renew_failures.get_or_create_owned(labels),
            losses: self.losses.get_or_create_owned(labels),
        }
    }
}
