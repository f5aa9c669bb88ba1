//! The operator controls of a logger config (`level`, `filter` with `KEEL_LOG`, `sampling`,
//! `redact_keys`): parsed and validated apart from the sinks, so that
//! [`Manager::reload`](crate::Manager::reload) can apply them to a running logger in place.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{LogConfig, bad};
use crate::error::Error;
use crate::filter::Filter;
use crate::logger::Logger;
use crate::record::Level;
use crate::sampling::Sampling;

/// `sampling = { tick = "1s", first = 100, thereafter = 100 }`: per `tick`, the first `first`
/// records of each (level, message), then every `thereafter`-th (0: none).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SamplingConfig {
    /// The window (a duration such as `"1s"`, `"100ms"`; default 1 s).
    #[serde(default)]
    pub tick: Option<String>,
    /// Records per (level, message) written per tick before sampling starts (default 100).
    #[serde(default)]
    pub first: Option<u64>,
    /// Then every this-many-th record is written (default 100; 0 writes none).
    #[serde(default)]
    pub thereafter: Option<u64>,
}

/// What a config sets that a running logger can change in place (see
/// [`Manager::reload`](crate::Manager::reload)).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Controls {
    pub(crate) filter: Filter,
    pub(crate) sampling: Option<Sampling>,
}

/// The level, filter (with `env` on top) and sampling of `config`, validated.
pub(crate) fn controls(config: &LogConfig, env: Option<&Filter>) -> Result<Controls, Error> {
    let level: Level = match &config.level {
        Some(l) => l
            .parse()
            .map_err(|e: crate::ParseLevelError| bad("level", e.to_string()))?,
        None => Level::Info,
    };
    let mut filter = Filter::level(level);
    if let Some(text) = &config.filter {
        filter = filter.overridden_by(&Filter::parse(text)?);
    }
    if let Some(env) = env {
        filter = filter.overridden_by(env);
    }
    let sampling = match &config.sampling {
        None => None,
        Some(s) => {
            let tick = match &s.tick {
                None => Duration::from_secs(1),
                Some(t) => humantime::parse_duration(t)
                    .map_err(|e| bad("sampling.tick", format!("{t:?}: {e}")))?,
            };
            if tick.is_zero() {
                return Err(bad("sampling.tick", "must be above zero"));
            }
            Some(Sampling::new(
                tick,
                s.first.unwrap_or(100),
                s.thereafter.unwrap_or(100),
            ))
        }
    };
    Ok(Controls { filter, sampling })
}

impl Controls {
    /// Sets them on a running logger.
    pub(crate) fn apply(&self, logger: &Logger) {
        logger.set_filter(self.filter.clone());
        logger.set_sampling(self.sampling);
    }
}

/// [`open`](crate::open) with `env` as the directives applied on top (instead of reading `KEEL_LOG`).
pub(crate) fn build_with_env(config: &LogConfig, env: Option<&Filter>) -> Result<Logger, Error> {
    let controls = controls(config, env)?;
    let logger = crate::config::build_sinks(config)?;
    controls.apply(&logger);
    if let Some(keys) = &config.redact_keys {
        crate::format::add_secret_keys(keys);
    }
    Ok(logger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_sampling_and_env_are_applied() {
        let config = LogConfig::from_toml(
            "type = \"console\"\nname = \"svc\"\nlevel = \"warn\"\n\
             filter = \"svc::db=debug,other=error\"\n\
             sampling = { tick = \"2s\", first = 5 }\n",
        )
        .unwrap();
        let c = controls(&config, None).unwrap();
        assert_eq!(c.filter.to_string(), "warn,svc::db=debug,other=error");
        assert_eq!(
            c.sampling,
            Some(Sampling::new(Duration::from_secs(2), 5, 100))
        );
        let env = Filter::parse("debug,other=off").unwrap();
        let c = controls(&config, Some(&env)).unwrap();
        assert_eq!(c.filter.level_for("svc"), Some(Level::Debug));
        assert_eq!(c.filter.level_for("other"), None);
        let logger = build_with_env(&config, Some(&env)).unwrap();
        assert_eq!(logger.level(), Level::Debug);
        assert!(!logger.enabled_for("other::x", Level::Fatal));
        assert_eq!(logger.sampling().map(|s| s.first), Some(5));
        for bad_toml in [
            "filter = \"a=loud\"",
            "sampling = { tick = \"0s\" }",
            "sampling = { tick = \"soon\" }",
        ] {
            let config =
                LogConfig::from_toml(&format!("type = \"console\"\nname = \"x\"\n{bad_toml}\n"))
                    .unwrap();
            assert!(
                matches!(
                    build_with_env(&config, None),
                    Err(Error::InvalidFilter { .. } | Error::InvalidConfig { .. })
                ),
                "{bad_toml}"
            );
        }
    }
}
