//! Level directives in the `tracing_subscriber::EnvFilter` syntax: `info,keel_cache=debug,smtp::session=trace`.
//!
//! A [`Filter`] is a default level plus per-target levels. A target is a logger's name (for
//! the logger's own records) or the target of a `log` record or `tracing` event that reaches a
//! logger through a bridge. A directive names a target prefix at a `::` boundary
//! (`smtp` matches `smtp` and `smtp::session`, not `smtplib`); the longest matching prefix
//! wins, then the default. Levels: `trace` (written as Debug: Keel has no Trace), `debug`,
//! `info`, `warn`, `error`, `fatal`, `off`; a bare target (`keel_cache`) enables everything
//! for it, as in EnvFilter. Span and field filters (`[span{field=value}]`) and regexes are not
//! supported and are rejected with [`Error::InvalidFilter`].
//!
//! ```
//! use keel_log::{Filter, Level};
//!
//! let filter: Filter = "warn,keel_cache=debug,smtp::session=trace,noisy=off".parse().unwrap();
//! assert!(filter.enabled("keel_cache::redis", Level::Debug));
//! assert!(!filter.enabled("smtp", Level::Info));
//! assert!(filter.enabled("smtp::session", Level::Debug));
//! assert!(!filter.enabled("noisy", Level::Fatal));
//! assert_eq!(filter.to_string(), "warn,smtp::session=debug,keel_cache=debug,noisy=off");
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::record::Level;

/// The threshold that writes nothing (one above `Fatal`).
pub(crate) const OFF: u8 = Level::Fatal as u8 + 1;

/// The environment variable [`Filter::from_env`] and `build` read: `KEEL_LOG`.
pub const FILTER_ENV: &str = "KEEL_LOG";

/// A default level and per-target levels (see the module docs for the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The default threshold, when one was given.
    default: Option<u8>,
    /// `(target, threshold)`, longest target first, one entry per target (the last given
    /// wins).
    directives: Vec<(String, u8)>,
}

impl Default for Filter {
    /// `info` for everything.
    fn default() -> Self {
        Self::level(Level::Info)
    }
}

fn parse_threshold(text: &str) -> Option<u8> {
    match text.trim().to_ascii_lowercase().as_str() {
        "trace" | "debug" => Some(Level::Debug as u8),
        "info" => Some(Level::Info as u8),
        "warn" | "warning" => Some(Level::Warn as u8),
        "error" => Some(Level::Error as u8),
        "fatal" => Some(Level::Fatal as u8),
        "off" => Some(OFF),
        _ => None,
    }
}

fn threshold_name(t: u8) -> &'static str {
    match t {
        0 => "debug",
        1 => "info",
        2 => "warn",
        3 => "error",
        4 => "fatal",
        _ => "off",
    }
}

impl Filter {
    /// Everything at `level` and above, whatever the target.
    pub fn level(level: Level) -> Self {
        Self {
            default: Some(level as u8),
            directives: Vec::new(),
        }
    }

    /// Parses directives (see the module docs).
    ///
    /// # Errors
    /// [`Error::InvalidFilter`] naming the directive and why.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut filter = Self {
            default: None,
            directives: Vec::new(),
        };
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let invalid = |reason: &str| Error::InvalidFilter {
                directive: directive.to_owned(),
                reason: reason.to_owned(),
            };
            if directive.contains(['[', ']', '{', '}']) {
                return Err(invalid(
                    "span and field filters are not supported; use target=level",
                ));
            }
            let (target, threshold) = match directive.split_once('=') {
                Some((target, level)) => {
                    let target = target.trim();
                    if target.is_empty() {
                        return Err(invalid("the target before `=` is empty"));
                    }
                    let threshold = parse_threshold(level).ok_or_else(|| {
                        invalid("unknown level; use trace, debug, info, warn, error, fatal or off")
                    })?;
                    (Some(target), threshold)
                }
                None => match parse_threshold(directive) {
                    Some(threshold) => (None, threshold),
                    // A bare target enables all its levels.
                    None => (Some(directive), Level::Debug as u8),
                },
            };
            if let Some(target) = target {
                if target.contains(char::is_whitespace) || target.contains('=') {
                    return Err(invalid("a target holds no whitespace or `=`"));
                }
                filter.set(target, threshold);
            } else {
                filter.default = Some(threshold);
            }
        }
        Ok(filter)
    }

    /// The directives of `KEEL_LOG` ([`FILTER_ENV`]); `None` when it is unset or blank.
    ///
    /// # Errors
    /// [`Error::InvalidFilter`] when it is set and does not parse.
    pub fn from_env() -> Result<Option<Self>, Error> {
        match std::env::var(FILTER_ENV) {
            Ok(text) if !text.trim().is_empty() => Self::parse(&text).map(Some),
            _ => Ok(None),
        }
    }

    fn set(&mut self, target: &str, threshold: u8) {
        self.directives.retain(|(t, _)| t != target);
        self.directives.push((target.to_owned(), threshold));
        // Stable: equal lengths keep their order (and the Display output its input order).
        self.directives
            .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    }

    /// `self` with `other` applied on top: its default (if it has one) replaces this one, and
    /// its directives replace those for the same target (`KEEL_LOG` is applied to a config's
    /// filter this way).
    #[must_use]
    pub fn overridden_by(mut self, other: &Filter) -> Self {
        if other.default.is_some() {
            self.default = other.default;
        }
        for (target, threshold) in &other.directives {
            self.set(target, *threshold);
        }
        self
    }

    /// The lowest threshold written for `target` (`OFF` when nothing is).
    pub(crate) fn threshold(&self, target: &str) -> u8 {
        self.directives
            .iter()
            .find(|(prefix, _)| {
                target
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default.unwrap_or(Level::Info as u8), |(_, t)| *t)
    }

    /// The most verbose threshold of any target (what a bridge compares against first).
    pub(crate) fn most_verbose(&self) -> u8 {
        self.directives
            .iter()
            .map(|(_, t)| *t)
            .chain([self.default.unwrap_or(Level::Info as u8)])
            .min()
            .unwrap_or(OFF)
    }

    /// Whether a record at `level` for `target` is written.
    pub fn enabled(&self, target: &str, level: Level) -> bool {
        level as u8 >= self.threshold(target)
    }

    /// The lowest level written for `target`, `None` when it is `off`.
    pub fn level_for(&self, target: &str) -> Option<Level> {
        match self.threshold(target) {
            0 => Some(Level::Debug),
            1 => Some(Level::Info),
            2 => Some(Level::Warn),
            3 => Some(Level::Error),
            4 => Some(Level::Fatal),
            _ => None,
        }
    }
}

impl FromStr for Filter {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Filter {
    /// The directives in the syntax [`Filter::parse`] reads (default first, then the targets
    /// longest first; `trace` shows as `debug`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        if let Some(d) = self.default {
            f.write_str(threshold_name(d))?;
            first = false;
        }
        for (target, t) in &self.directives {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{target}={}", threshold_name(*t))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse_and_match_at_path_boundaries() {
        let f = Filter::parse(" info , keel_cache=debug,smtp::session=TRACE, db=off,,").unwrap();
        assert!(f.enabled("keel_cache", Level::Debug));
        assert!(f.enabled("keel_cache::redis::scan", Level::Debug));
        assert!(!f.enabled("keel_cache_extra", Level::Debug));
        assert!(f.enabled("keel_cache_extra", Level::Info));
        assert!(!f.enabled("smtp", Level::Debug));
        assert!(f.enabled("smtp::session", Level::Debug));
        assert!(!f.enabled("db::pool", Level::Fatal));
        assert_eq!(f.level_for("db"), None);
        assert_eq!(f.level_for("other"), Some(Level::Info));
        assert_eq!(f.most_verbose(), 0);
    }

    #[test]
    fn longest_prefix_wins_and_the_last_directive_for_a_target_wins() {
        let f = Filter::parse("a=error,a::b=debug,a::b::c=warn,a=info").unwrap();
        assert_eq!(f.level_for("a::x"), Some(Level::Info));
        assert_eq!(f.level_for("a::b::x"), Some(Level::Debug));
        assert_eq!(f.level_for("a::b::c::d"), Some(Level::Warn));
        assert_eq!(f.to_string(), "a::b::c=warn,a::b=debug,a=info");
        let again: Filter = f.to_string().parse().unwrap();
        assert_eq!(again, f);
    }

    #[test]
    fn bare_targets_enable_everything_and_no_default_means_info() {
        let f = Filter::parse("keel_cache").unwrap();
        assert!(f.enabled("keel_cache", Level::Debug));
        assert!(!f.enabled("other", Level::Debug));
        assert!(f.enabled("other", Level::Info));
        assert_eq!(Filter::parse("").unwrap().level_for("x"), Some(Level::Info));
    }

    #[test]
    fn bad_directives_are_typed_errors() {
        for bad in [
            "=debug",
            "a=loud",
            "a[span]=debug",
            "a{x=1}=info",
            "a b=info",
            "a=b=c",
        ] {
            match Filter::parse(bad) {
                Err(Error::InvalidFilter { directive, reason }) => {
                    assert!(!directive.is_empty() && !reason.is_empty(), "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn overrides_replace_default_and_same_targets() {
        let base = Filter::parse("warn,a=debug,b=error").unwrap();
        let env = Filter::parse("b=info,c=off").unwrap();
        let f = base.clone().overridden_by(&env);
        assert_eq!(f.level_for("x"), Some(Level::Warn));
        assert_eq!(f.level_for("a"), Some(Level::Debug));
        assert_eq!(f.level_for("b"), Some(Level::Info));
        assert_eq!(f.level_for("c"), None);
        let f = base.overridden_by(&Filter::parse("error").unwrap());
        assert_eq!(f.level_for("x"), Some(Level::Error));
        assert_eq!(f.level_for("a"), Some(Level::Debug));
    }
}
