//! Named loggers with a default; an explicit `Manager` or the process-wide one, and the
//! panic hook that flushes the process-wide one.

use std::collections::BTreeMap;
use std::sync::{Once, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::config::LogConfig;
use crate::error::Error;
use crate::filter::Filter;
use crate::logger::Logger;
use crate::logger::{FATAL_FLUSH, FATAL_RECORD};
use crate::record::Record;
use crate::record::{Level, field};
use crate::sampling::Sampling;
use crate::sink::{DeliveryStats, Sink, deadline_after, on_every, write_all_until};

/// How long dropping a manager, or the panic hook, waits for every sink to flush (in total).
pub const FLUSH_ON_EXIT: Duration = Duration::from_secs(5);

/// Loggers by name, plus which one is the default. Safe from many threads.
///
/// Dropping a manager flushes every logger still registered (waiting at most
/// [`FLUSH_ON_EXIT`] in total, or the time given to [`with_drop_timeout`](Self::with_drop_timeout)),
/// so records logged just before the end of a scope reach their files. It flushes rather than
/// shuts down: clones of the loggers may live on and keep writing. The [`global`] manager is a
/// static and is never dropped; [`install_panic_hook`] covers the panicking path there, and a
/// service should call `global().close_all(..)` before it exits normally.
#[derive(Debug)]
pub struct Manager {
    loggers: RwLock<BTreeMap<String, Logger>>,
    default: RwLock<Option<String>>,
    /// The console logger handed out while no default is set (built on first use, shut down
    /// and forgotten by `close_all`).
    fallback: RwLock<Option<Logger>>,
    /// The config each logger was last built or reloaded from (by [`Manager::reload`]).
    configs: RwLock<BTreeMap<String, LogConfig>>,
    drop_timeout: Duration,
}

/// What [`Manager::reload`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// The logger's name.
    pub logger: String,
    /// The logger was not registered: it was built from the config and registered.
    pub added: bool,
    /// The level directives now in force (with `KEEL_LOG` applied on top).
    pub filter: String,
    /// The sampling now in force.
    pub sampling: Option<Sampling>,
    /// Sink settings (`type`, `formatter`, `output`, `options`) that differ from the config
    /// the logger was built from and were NOT applied: sinks are never rebuilt live (a second
    /// writer on the same file, or a queue swapped under writers, could lose or interleave
    /// records); they take effect at the next start. Empty when nothing differs or the
    /// logger's earlier config is unknown (it was registered with [`Manager::register`]).
    pub restart_needed: Vec<&'static str>,
}

/// The sink settings of `new` that differ from `old`.
fn sink_changes(old: &LogConfig, new: &LogConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if !old.kind.eq_ignore_ascii_case(&new.kind) {
        changed.push("type");
    }
    if old.formatter != new.formatter {
        changed.push("formatter");
    }
    if old.output != new.output {
        changed.push("output");
    }
    if old.options != new.options {
        changed.push("options");
    }
    changed
}

impl Default for Manager {
    fn default() -> Self {
        Self::with_drop_timeout(FLUSH_ON_EXIT)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.flush_all(self.drop_timeout);
    }
}

impl Manager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty manager whose drop waits at most `timeout` (in total) for its loggers' sinks.
    pub fn with_drop_timeout(timeout: Duration) -> Self {
        Self {
            loggers: RwLock::default(),
            default: RwLock::default(),
            fallback: RwLock::default(),
            configs: RwLock::default(),
            drop_timeout: timeout,
        }
    }

    /// Adds `logger` under its name.
    ///
    /// # Errors
    /// [`Error::DuplicateName`] when the name is taken.
    pub fn register(&self, logger: Logger) -> Result<(), Error> {
        let mut loggers = self.loggers.write().unwrap_or_else(PoisonError::into_inner);
        let name = logger.name().to_owned();
        if loggers.contains_key(&name) {
            return Err(Error::DuplicateName { name });
        }
        loggers.insert(name, logger);
        Ok(())
    }

    /// Applies `config` to the logger of its `name` without dropping a record: the level,
    /// `filter` (with `KEEL_LOG` on top, as [`open`](crate::open) does), `sampling` and
    /// `redact_keys` change in place, for every clone and child of the logger, between two
    /// records; its sinks and what they hold are not touched. A logger of that name that is
    /// not registered yet is built and registered. Sink settings that changed are reported
    /// in [`ReloadReport::restart_needed`] and not applied.
    ///
    /// The whole config is validated first: on an error nothing changes and the logger keeps
    /// its old settings.
    ///
    /// # Errors
    /// What [`open`](crate::open) returns for a bad config ([`Error::InvalidConfig`],
    /// [`Error::InvalidFilter`], [`Error::UnknownType`], …).
    pub fn reload(&self, config: &LogConfig) -> Result<ReloadReport, Error> {
        self.reload_with_env(config, Filter::from_env()?.as_ref())
    }

    pub(crate) fn reload_with_env(
        &self,
        config: &LogConfig,
        env: Option<&Filter>,
    ) -> Result<ReloadReport, Error> {
        let controls = crate::controls::controls(config, env)?;
        let mut configs = self.configs.write().unwrap_or_else(PoisonError::into_inner);
        let (logger, added, restart_needed) = match self.get(&config.name) {
            Some(logger) => {
                // The sinks are not rebuilt, but a bad sink config is refused all the same.
                crate::config::validate_sink(config)?;
                let changed = configs
                    .get(&config.name)
                    .map(|old| sink_changes(old, config))
                    .unwrap_or_default();
                controls.apply(&logger);
                if let Some(keys) = &config.redact_keys {
                    crate::format::add_secret_keys(keys);
                }
                (logger, false, changed)
            }
            None => {
                let logger = crate::controls::build_with_env(config, env)?;
                self.register(logger.clone())?;
                (logger, true, Vec::new())
            }
        };
        // What is remembered is what the sinks were built from: a sink change not applied
        // stays reported until a restart.
        if added || restart_needed.is_empty() {
            configs.insert(config.name.clone(), config.clone());
        } else if let Some(old) = configs.get_mut(&config.name) {
            let mut kept = config.clone();
            kept.kind.clone_from(&old.kind);
            kept.formatter.clone_from(&old.formatter);
            kept.output.clone_from(&old.output);
            kept.options = old.options.clone();
            *old = kept;
        }
        Ok(ReloadReport {
            logger: config.name.clone(),
            added,
            filter: logger.filter().to_string(),
            sampling: logger.sampling(),
            restart_needed,
        })
    }

    /// Removes the logger called `name` and returns it (its sinks keep running until it and
    /// its clones are shut down or dropped); if it was the default, no default is set
    /// afterwards.
    pub fn remove(&self, name: &str) -> Option<Logger> {
        let removed = self
            .loggers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.configs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let mut default = self.default.write().unwrap_or_else(PoisonError::into_inner);
        if default.as_deref() == Some(name) {
            *default = None;
        }
        removed
    }

    /// The names of the registered loggers, sorted.
    pub fn names(&self) -> Vec<String> {
        self.loggers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The logger called `name`.
    pub fn get(&self, name: &str) -> Option<Logger> {
        self.loggers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Makes `name` the default logger.
    ///
    /// # Errors
    /// [`Error::UnknownLogger`] when no logger has that name.
    pub fn set_default(&self, name: &str) -> Result<(), Error> {
        if self.get(name).is_none() {
            return Err(Error::UnknownLogger { name: name.into() });
        }
        *self.default.write().unwrap_or_else(PoisonError::into_inner) = Some(name.into());
        Ok(())
    }

    /// The default logger, or — when none is set — a console logger named `default` that
    /// writes `Info` and above as text to stderr (as the original's default does), so
    /// records logged before any configuration are not lost. It is built on first use and
    /// flushed by [`flush_all`](Self::flush_all) and [`close_all`](Self::close_all) with the
    /// registered loggers.
    pub fn default_logger(&self) -> Logger {
        let name = self
            .default
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(logger) = name.and_then(|n| self.get(&n)) {
            return logger;
        }
        if let Some(logger) = self
            .fallback
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            return logger.clone();
        }
        self.fallback
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(console_default)
            .clone()
    }

    /// Flushes every registered logger's sinks, giving up once `timeout` has passed in total
    /// (what is still queued then shows as `pending`); returns each logger's stats. Loggers
    /// stay registered and usable.
    ///
    /// Every sink is asked to flush at once and all are waited for until the deadline, so a
    /// stuck logger does not shorten the others' time. With sampling on, each logger's
    /// in-band reports of the records sampled away are queued first, within the same
    /// deadline (one that finds no room in time is counted as dropped by its sink); so do
    /// [`close_all`](Self::close_all), a manager's drop, `fatal` and the panic hook.
    pub fn flush_all(&self, timeout: Duration) -> BTreeMap<String, DeliveryStats> {
        self.flush_all_with(None, deadline_after(timeout))
    }

    /// The fallback default logger, if it was handed out.
    fn fallback(&self) -> Option<Logger> {
        self.fallback
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Flushes every registered logger and `extra` (not reported) until `deadline`.
    pub(crate) fn flush_all_with(
        &self,
        extra: Option<&Logger>,
        deadline: Instant,
    ) -> BTreeMap<String, DeliveryStats> {
        // Clone out of the lock: a slow sink must not block `register`/`get` meanwhile.
        let loggers: Vec<(String, Logger)> = self
            .loggers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, logger)| (name.clone(), logger.clone()))
            .collect();
        let fallback = self.fallback();
        let extras: Vec<&Logger> = extra.into_iter().chain(fallback.as_ref()).collect();
        settle(&loggers, &extras, deadline, |s, left| s.flush(left))
    }

    /// Shuts down every logger's sinks and forgets them, giving up once `timeout` has passed
    /// in total (what is not written by then shows as `pending`); returns each logger's
    /// stats. Every sink is asked to stop at once and all are waited for until the deadline.
    pub fn close_all(&self, timeout: Duration) -> BTreeMap<String, DeliveryStats> {
        let deadline = deadline_after(timeout);
        let loggers: Vec<(String, Logger)> =
            std::mem::take(&mut *self.loggers.write().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        self.configs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.default
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The fallback goes too; the next `default_logger()` builds a new one.
        let fallback = self
            .fallback
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let extras: Vec<&Logger> = fallback.iter().collect();
        settle(&loggers, &extras, deadline, |s, left| s.shutdown(left))
    }
}

/// Runs `op` on every sink of `loggers` and of `extras` at once against one deadline; sums the
/// results per logger of `loggers` (`extras` are not reported). Each sink first gets its
/// logger's in-band sampling reports, queued within the same deadline (one that finds no room
/// in time is counted as dropped by the sink).
fn settle(
    loggers: &[(String, Logger)],
    extras: &[&Logger],
    deadline: Instant,
    op: impl Fn(&dyn Sink, Duration) -> DeliveryStats + Sync,
) -> BTreeMap<String, DeliveryStats> {
    let all: Vec<&Logger> = loggers
        .iter()
        .map(|(_, l)| l)
        .chain(extras.iter().copied())
        .collect();
    let reports: Vec<Vec<Record>> = all.iter().map(|l| l.sampled_reports()).collect();
    let mut items: Vec<(usize, &dyn Sink)> = Vec::new();
    for (index, logger) in all.iter().enumerate() {
        for sink in logger.sink_refs() {
            items.push((index, sink));
        }
    }
    let mut totals = vec![DeliveryStats::default(); all.len()];
    let results = on_every(&items, deadline, |&(index, sink), _| {
        write_all_until(sink, &reports[index], deadline);
        op(sink, deadline.saturating_duration_since(Instant::now()))
    });
    for ((index, _), stats) in items.iter().zip(results) {
        totals[*index] = totals[*index] + stats;
    }
    loggers
        .iter()
        .zip(totals)
        .map(|((name, _), stats)| (name.clone(), stats))
        .collect()
}

/// The process-wide manager.
pub fn global() -> &'static Manager {
    static GLOBAL: OnceLock<Manager> = OnceLock::new();
    GLOBAL.get_or_init(Manager::new)
}

/// Installs a panic hook that logs the panic to the [`global`] manager's default logger, then
/// flushes every logger registered there, then runs the hook that was installed before.
///
/// The record is an `Error` (the process is not made to exit: that stays the previous hook's
/// and the runtime's business) with the message `panic: <payload>` and the fields `location`
/// (`file:line:column`) and `thread`. Logging and flushing take at most [`FLUSH_ON_EXIT`] in
/// total, so a stuck sink delays the panic by at most that: the record waits for queue room
/// at most 1 s of it, whatever the sink's overflow policy, and is counted as dropped (with a
/// line on stderr) when it finds none; then every global sink is asked to flush at once and
/// all are waited for until the bound. Calling this again does nothing: the hook is
/// installed once per process (a hook set by someone else afterwards replaces it as usual).
///
/// A panic on one of keel-log's own writer threads is not logged through keel-log (its record
/// could wait forever on the queue that thread drains); the previous hook still reports it.
/// Without a configured default logger the record goes to the console fallback (stderr, see
/// [`Manager::default_logger`]), and registered loggers are still flushed.
///
/// ```
/// keel_log::install_panic_hook();
/// keel_log::install_panic_hook(); // idempotent
/// ```
pub fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let thread_name = thread.name().unwrap_or("<unnamed>");
            if !thread_name.starts_with("keel-log") {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("Box<dyn Any>");
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                let deadline = deadline_after(FATAL_FLUSH);
                let missed = global().default_logger().log_until(
                    Level::Error,
                    format!("panic: {message}"),
                    &[
                        field("location", location),
                        field("thread", thread_name.to_owned()),
                    ],
                    deadline_after(FATAL_RECORD),
                );
                if missed > 0 {
                    eprintln!(
                        "keel-log: the panic record found no room in {missed} sink(s) within \
                         the exit bound (counted as dropped)"
                    );
                }
                global().flush_all_with(None, deadline);
            }
            previous(info);
        }));
    });
}

/// The default logger while none is configured: console, stderr, text, `Info`.
fn console_default() -> Logger {
    let config = crate::config::LogConfig::from_toml(
        "type = \"console\"\nname = \"default\"\nlevel = \"info\"\noutput = \"stderr\"\n",
    );
    // A bad KEEL_LOG must not leave the fallback without its console sink.
    let env = Filter::from_env().unwrap_or_else(|e| {
        eprintln!("keel-log: {e}; KEEL_LOG is ignored for the default console logger");
        None
    });
    config
        .and_then(|c| crate::controls::build_with_env(&c, env.as_ref()))
        .unwrap_or_else(|_| Logger::new("default", Level::Info, Vec::new()))
}
