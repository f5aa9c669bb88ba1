//! Config basics shared by every Keel crate, so that a cache config, a log config and the
//! CLI read the same things the same way:
//!
//! - one [`Secret`] that never prints its value (`[REDACTED]` in `Debug` and `Display`, and in
//!   no parse error either);
//! - one duration syntax ([`parse_duration`]: `"250ms"`, `"5m"`, `"1h30m"` or whole seconds);
//! - one size syntax for byte options ([`parse_size`]: `"10MB"`, `"64KiB"`, `"1.5GB"` or whole
//!   bytes);
//! - one way to read a config file ([`from_path`], choosing TOML, YAML or JSON by extension),
//!   with the credentials of any URL masked in parse errors ([`redact_urls`]).
//!
//! Each crate keeps its own config structs and its own error enum (converting [`Error`] into
//! it); this crate only holds what would otherwise be written twice.
//!
//! # Layout
//! - `secret`: [`Secret`], [`REDACTED`];
//! - `units`: [`parse_duration`], [`parse_size`] and their serde helpers in [`de`];
//! - `file`: [`Format`], [`from_path`], [`from_str`], [`redact_urls`];
//! - `error`: [`Error`].
//!
//! ```
//! use std::time::Duration;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Sink {
//!     #[serde(default, deserialize_with = "keel_config::de::opt_duration")]
//!     flush_interval: Option<Duration>,
//!     #[serde(default, deserialize_with = "keel_config::de::opt_size")]
//!     max_bytes: Option<u64>,
//!     password: keel_config::Secret,
//! }
//!
//! let sink: Sink = keel_config::from_str(
//!     keel_config::Format::Toml,
//!     "flush_interval = \"250ms\"\nmax_bytes = \"10MB\"\npassword = \"hunter2\"\n",
//! )
//! .unwrap();
//! assert_eq!(sink.flush_interval, Some(Duration::from_millis(250)));
//! assert_eq!(sink.max_bytes, Some(10_000_000));
//! assert_eq!(format!("{:?}", sink.password), "[REDACTED]");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod file;
mod secret;
mod units;

pub use error::Error;
pub use file::{Format, from_path, from_str, redact_urls};
pub use secret::{REDACTED, Secret};
pub use units::{de, parse_duration, parse_size};
