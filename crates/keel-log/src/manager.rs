//! Named loggers with a default; an explicit `Manager` or the process-wide one.

use std::collections::BTreeMap;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use crate::error::Error;
use crate::logger::Logger;
use crate::record::Level;
use crate::sink::DeliveryStats;

/// Loggers by name, plus which one is the default. Safe from many threads.
#[derive(Debug, Default)]
pub struct Manager {
    loggers: RwLock<BTreeMap<String, Logger>>,
    default: RwLock<Option<String>>,
}

impl Manager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
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

    /// The default logger, or — when none is set — a logger that discards everything below
    /// `Error` and has no sinks (so nothing is written until one is configured).
    pub fn default_logger(&self) -> Logger {
        let name = self
            .default
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        name.and_then(|n| self.get(&n))
            .unwrap_or_else(|| Logger::new("default", Level::Error, Vec::new()))
    }

    /// Shuts down every logger's sinks (each waiting up to `timeout`) and forgets them;
    /// returns each logger's stats.
    pub fn close_all(&self, timeout: Duration) -> BTreeMap<String, DeliveryStats> {
        let loggers =
            std::mem::take(&mut *self.loggers.write().unwrap_or_else(PoisonError::into_inner));
        self.default
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        loggers
            .into_iter()
            .map(|(name, logger)| {
                let stats = logger.shutdown(timeout);
                (name, stats)
            })
            .collect()
    }
}

/// The process-wide manager.
pub fn global() -> &'static Manager {
    static GLOBAL: OnceLock<Manager> = OnceLock::new();
    GLOBAL.get_or_init(Manager::new)
}
