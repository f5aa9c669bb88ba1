//! Loggers, children that share their parent's sinks, and the Fatal hook.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keel_metrics::MetricsService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::filter::{Filter, OFF};
use crate::record::{Field, Level, Record, Value, field};
use crate::sampling::{Decision, Sampler, Sampling};
use crate::sink::{DeliveryStats, Sink, deadline_after, on_every_sink, write_all_until};

struct Core {
    name: &'static str,
    /// The threshold of the logger's own records (`filter` applied to `name`; `OFF` = 5
    /// writes nothing): the one load a disabled call costs.
    level: AtomicU8,
    /// The most verbose threshold of any target in `filter`: a bridge record below it is
    /// rejected without reading `filter`.
    most_verbose: AtomicU8,
    filter: RwLock<Arc<Filter>>,
    sampler: Sampler,
    sinks: Vec<Arc<dyn Sink>>,
    /// `<ns>_log_records_total{logger,level}`, one counter per level.
    records: [Counter; 5],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RecordLabels {
    logger: String,
    level: &'static str,
}

fn sampled_counters(metrics: &MetricsService, logger: &str) -> [Counter; 4] {
    let family: Family<RecordLabels, Counter> = metrics
        .get_or_register(
            "log_sampled",
            "Log records sampled away (not written), by logger and level",
            Family::default,
        )
        .unwrap_or_default();
    [Level::Debug, Level::Info, Level::Warn, Level::Error].map(|level| {
        family.get_or_create_owned(&RecordLabels {
            logger: logger.to_owned(),
            level: level.as_str(),
        })
    })
}

fn record_counters(metrics: &MetricsService, logger: &str) -> [Counter; 5] {
    let family: Family<RecordLabels, Counter> = metrics
        .get_or_register(
            "log_records",
            "Log records written, by logger and level",
            Family::default,
        )
        .unwrap_or_default();
    [
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ]
    .map(|level| {
        family.get_or_create_owned(&RecordLabels {
            logger: logger.to_owned(),
            level: level.as_str(),
        })
    })
}

/// A named logger. Cheap to clone; [`with_fields`](Self::with_fields) children share the
/// parent's sinks and level, so a child never outlives its parent's files or buffers.
#[derive(Clone)]
pub struct Logger {
    core: Arc<Core>,
    fields: Arc<[Field]>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("name", &self.core.name)
            .field("filter", &self.filter().to_string())
            .field("fields", &self.fields.len())
            .finish_non_exhaustive()
    }
}

fn level_from(v: u8) -> Level {
    debug_assert!(v <= OFF);
    match v {
        0 => Level::Debug,
        1 => Level::Info,
        2 => Level::Warn,
        3 => Level::Error,
        _ => Level::Fatal,
    }
}

/// The one `'static` copy of a logger name. Records carry their logger's name; a borrowed
/// `'static` name is copied into each record without an allocation, while an owned one (from a
/// config file) would be cloned on every call and freed by the sink's writer thread. Names are
/// kept for the life of the process, once per distinct name (a process has a handful).
fn intern(name: Cow<'static, str>) -> &'static str {
    static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(Default::default);
    match name {
        Cow::Borrowed(name) => name,
        Cow::Owned(name) => {
            let mut names = NAMES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(known) = names.get(name.as_str()) {
                return known;
            }
            let leaked: &'static str = Box::leak(name.into_boxed_str());
            names.insert(leaked);
            leaked
        }
    }
}

type FatalHook = Box<dyn Fn() + Send + Sync>;

static FATAL_HOOK: RwLock<Option<FatalHook>> = RwLock::new(None);

/// Replaces what `Logger::fatal` does after flushing every sink (default: exit with code 1).
pub fn set_fatal_hook(hook: impl Fn() + Send + Sync + 'static) {
    *FATAL_HOOK
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(hook));
}

/// How long `fatal` (and the panic hook) may take in total before the hook runs.
pub(crate) const FATAL_FLUSH: Duration = Duration::from_secs(5);
/// The part of [`FATAL_FLUSH`] the fatal or panic record may wait for queue room: the rest is
/// left for the flushes, so a full queue cannot use up the time of every other logger.
pub(crate) const FATAL_RECORD: Duration = Duration::from_secs(1);

impl Logger {
    /// A logger writing to `sinks` at `level` and above, counting records in
    /// [`MetricsService::global`].
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        level: Level,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Self {
        Self::with_metrics(name, level, sinks, MetricsService::global())
    }

    /// Like [`new`](Self::new), counting `<ns>_log_records_total{logger,level}` in `metrics`.
    pub fn with_metrics(
        name: impl Into<Cow<'static, str>>,
        level: Level,
        sinks: Vec<Arc<dyn Sink>>,
        metrics: &MetricsService,
    ) -> Self {
        let name = intern(name.into());
        Self {
            core: Arc::new(Core {
                records: record_counters(metrics, name),
                sampler: Sampler::new(sampled_counters(metrics, name)),
                name,
                level: AtomicU8::new(level as u8),
                most_verbose: AtomicU8::new(level as u8),
                filter: RwLock::new(Arc::new(Filter::level(level))),
                sinks,
            }),
            fields: Arc::from(Vec::new()),
        }
    }

    /// The logger's name.
    pub fn name(&self) -> &str {
        self.core.name
    }

    /// The lowest level written for the logger's own records (its [`filter`](Self::filter)
    /// applied to its name); `Fatal` also when the filter turns it `off`.
    pub fn level(&self) -> Level {
        level_from(self.core.level.load(Ordering::Relaxed))
    }

    /// Changes the minimum level at runtime (for this logger and all its children): the
    /// filter becomes just this level, for every target.
    pub fn set_level(&self, level: Level) {
        self.set_filter(Filter::level(level));
    }

    /// The level directives in force.
    pub fn filter(&self) -> Arc<Filter> {
        self.core
            .filter
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the level directives at runtime (for this logger and all its children, and
    /// for the bridge records it receives). Records already queued are not affected.
    pub fn set_filter(&self, filter: Filter) {
        let mut current = self
            .core
            .filter
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.core
            .level
            .store(filter.threshold(self.core.name), Ordering::Relaxed);
        self.core
            .most_verbose
            .store(filter.most_verbose(), Ordering::Relaxed);
        *current = Arc::new(filter);
    }

    /// The sampling policy in force, if any.
    pub fn sampling(&self) -> Option<Sampling> {
        self.core.sampler.get()
    }

    /// Turns sampling on with `policy` or off (`None`), at runtime, for this logger and all
    /// its children. See [`Sampling`]: records sampled away are counted in
    /// `<ns>_log_sampled_total{logger,level}` and reported in-band.
    ///
    /// Turning it off writes the in-band reports of the counts still open at once.
    pub fn set_sampling(&self, policy: Option<Sampling>) {
        let off = policy.is_none();
        self.core.sampler.set(policy);
        if off {
            for (level, n, message) in self.core.sampler.drain() {
                self.write_report(level, n, message);
            }
        }
    }

    /// Whether `level` would be written for the logger's own records.
    #[inline]
    pub fn enabled(&self, level: Level) -> bool {
        level as u8 >= self.core.level.load(Ordering::Relaxed)
    }

    /// Whether a bridge record of `target` at `level` would be written: the filter's
    /// directive for `target` decides (the logger's name plays no part).
    pub fn enabled_for(&self, target: &str, level: Level) -> bool {
        if (level as u8) < self.core.most_verbose.load(Ordering::Relaxed) {
            return false;
        }
        level as u8
            >= self
                .core
                .filter
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .threshold(target)
    }

    /// A child with `fields` bound to every record (after the parent's own bound fields).
    #[must_use]
    pub fn with_fields(&self, fields: &[Field]) -> Logger {
        let mut all = self.fields.to_vec();
        all.extend_from_slice(fields);
        Logger {
            core: self.core.clone(),
            fields: Arc::from(all),
        }
    }

    /// A child with one more bound field.
    #[must_use]
    pub fn with_field(&self, field: Field) -> Logger {
        self.with_fields(&[field])
    }

    /// Writes a record if `level` is enabled (a disabled call costs one load and a compare).
    #[inline]
    pub fn log(&self, level: Level, message: impl Into<Cow<'static, str>>, fields: &[Field]) {
        if !self.enabled(level) {
            return;
        }
        self.write_enabled(level, message.into(), fields);
    }

    /// Writes a bridge record of `target` if the filter enables `target` at `level`.
    #[cfg(any(feature = "log", feature = "tracing"))]
    pub(crate) fn log_target(
        &self,
        target: &str,
        level: Level,
        message: impl Into<Cow<'static, str>>,
        fields: &[Field],
    ) {
        if self.enabled_for(target, level) {
            self.write_enabled(level, message.into(), fields);
        }
    }

    fn write_enabled(&self, level: Level, message: Cow<'static, str>, fields: &[Field]) {
        if self.core.sampler.is_active() {
            match self.core.sampler.decide(level, &message) {
                Decision::Drop => return,
                Decision::Pass(Some((n, sampled))) => self.write_report(level, n, sampled),
                Decision::Pass(None) => {}
            }
        }
        self.write_record(self.record(level, message, fields));
    }

    fn write_record(&self, record: Record) {
        if let Some((last, rest)) = self.core.sinks.split_last() {
            for sink in rest {
                sink.write(record.clone());
            }
            last.write(record);
        }
    }

    /// The in-band report of `n` records of `level` with `message` sampled away.
    fn write_report(&self, level: Level, n: u64, message: Cow<'static, str>) {
        self.write_record(self.report(level, n, message));
    }

    fn report(&self, level: Level, n: u64, message: Cow<'static, str>) -> Record {
        let report = format!("{n} similar records sampled");
        self.record(
            level,
            report,
            &[
                field("sampled", n),
                field("sampled_message", Value::Str(message)),
            ],
        )
    }

    /// Takes every count the sampler holds as in-band report records (before a flush or a
    /// shutdown, which queue them with [`write_all_until`] against their own deadline, so a
    /// stalled writer cannot hold the call past it).
    pub(crate) fn sampled_reports(&self) -> Vec<Record> {
        self.core
            .sampler
            .drain()
            .into_iter()
            .map(|(level, n, message)| self.report(level, n, message))
            .collect()
    }

    /// Queues `reports` into every sink, then runs `op` on it, all sinks at once against one
    /// `deadline`.
    fn settle(
        &self,
        deadline: Instant,
        op: impl Fn(&dyn Sink, Duration) -> DeliveryStats + Sync,
    ) -> DeliveryStats {
        let reports = self.sampled_reports();
        on_every_sink(&self.sink_refs(), deadline, |s, _| {
            write_all_until(s, &reports, deadline);
            op(s, deadline.saturating_duration_since(Instant::now()))
        })
        .into_iter()
        .fold(DeliveryStats::default(), |a, b| a + b)
    }

    fn record(
        &self,
        level: Level,
        message: impl Into<Cow<'static, str>>,
        fields: &[Field],
    ) -> Record {
        self.core.records[level as usize].inc();
        let mut record = Record::new(level, self.core.name, message);
        if !self.fields.is_empty() {
            record.bound = Some(self.fields.clone());
        }
        record.fields.extend(fields.iter().cloned());
        record
    }

    /// Writes a record if `level` is enabled, waiting at most until `deadline` (in total) for
    /// room in the sinks' queues whatever their overflow policy; a record that found no room
    /// in time is counted as dropped by its sink. Returns how many sinks did not take it.
    pub(crate) fn log_until(
        &self,
        level: Level,
        message: impl Into<Cow<'static, str>>,
        fields: &[Field],
        deadline: Instant,
    ) -> usize {
        if !self.enabled(level) {
            return 0;
        }
        let record = self.record(level, message, fields);
        on_every_sink(&self.sink_refs(), deadline, |sink, left| {
            sink.write_within(record.clone(), left)
        })
        .into_iter()
        .filter(|queued| !queued)
        .count()
    }

    pub(crate) fn sink_refs(&self) -> Vec<&dyn Sink> {
        self.core.sinks.iter().map(|s| &**s as &dyn Sink).collect()
    }

    /// Logs at `Debug`.
    #[inline]
    pub fn debug(&self, message: impl Into<Cow<'static, str>>, fields: &[Field]) {
        self.log(Level::Debug, message, fields);
    }

    /// Logs at `Info`.
    #[inline]
    pub fn info(&self, message: impl Into<Cow<'static, str>>, fields: &[Field]) {
        self.log(Level::Info, message, fields);
    }

    /// Logs at `Warn`.
    #[inline]
    pub fn warn(&self, message: impl Into<Cow<'static, str>>, fields: &[Field]) {
        self.log(Level::Warn, message, fields);
    }

    /// Logs at `Error`.
    #[inline]
    pub fn error(&self, message: impl Into<Cow<'static, str>>, fields: &[Field]) {
        self.log(Level::Error, message, fields);
    }

    /// Logs at `Fatal`, flushes every sink of this logger and every logger registered in the
    /// [`global`](crate::global) manager, then runs the fatal hook (by default: exit with
    /// code 1).
    ///
    /// Everything before the hook takes at most 5 s in total, even when writers are stalled:
    /// the record waits for queue room at most 1 s (it is counted as dropped if it finds
    /// none, and a line on stderr says so); then every sink of this logger and of every
    /// global logger is asked to flush at once, and all are waited for until the 5 s are up,
    /// so one stuck sink does not keep the others from being flushed.
    pub fn fatal(&self, message: impl Into<Cow<'static, str>>, fields: &[Field]) {
        let deadline = deadline_after(FATAL_FLUSH);
        let missed = self.log_until(Level::Fatal, message, fields, deadline_after(FATAL_RECORD));
        if missed > 0 {
            eprintln!(
                "keel-log: the fatal record of logger {:?} found no room in {missed} sink(s) \
                 within the exit bound (counted as dropped)",
                self.core.name
            );
        }
        crate::manager::global().flush_all_with(Some(self), deadline);
        let hook = FATAL_HOOK
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match hook.as_ref() {
            Some(hook) => hook(),
            None => std::process::exit(1),
        }
    }

    /// Waits until every sink has written what was queued, `timeout` bounding the whole call
    /// (all sinks are asked at once and waited for until the deadline, so a stuck sink does
    /// not shorten the others' time); sums their stats.
    ///
    /// With sampling on, the in-band reports of the records sampled away so far are queued
    /// first, within the same bound (a report that finds no room in time is counted as
    /// dropped by its sink).
    pub fn flush(&self, timeout: Duration) -> DeliveryStats {
        self.settle(deadline_after(timeout), |s, left| s.flush(left))
    }

    /// Asks every file sink of this logger to close and reopen its path before its next
    /// write (what a SIGHUP handler calls after logrotate renamed the files).
    pub fn reopen(&self) {
        for sink in &self.core.sinks {
            sink.reopen();
        }
    }

    /// Flushes and stops every sink, `timeout` bounding the whole call (all sinks are asked
    /// at once and waited for until the deadline); sums their stats.
    ///
    /// With sampling on, the in-band reports of the records sampled away are queued first,
    /// within the same bound (a report that finds no room in time is counted as dropped by
    /// its sink).
    pub fn shutdown(&self, timeout: Duration) -> DeliveryStats {
        self.settle(deadline_after(timeout), |s, left| s.shutdown(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_names_are_interned_once_per_distinct_name() {
        let a = Logger::new(String::from("interned-a"), Level::Info, Vec::new());
        let b = Logger::new(String::from("interned-a"), Level::Info, Vec::new());
        let c = Logger::new(String::from("interned-c"), Level::Info, Vec::new());
        assert_eq!(a.name(), "interned-a");
        assert!(std::ptr::eq(a.name(), b.name()));
        assert!(!std::ptr::eq(a.name(), c.name()));
        assert_eq!(c.name(), "interned-c");
    }
}
