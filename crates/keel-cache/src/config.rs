//! Serde config at the edge: TOML, YAML or JSON, with the seed's field names.
//!
//! ```
//! use keel_cache::CacheConfig;
//!
//! // The seed's Go config, as YAML.
//! let cfg = CacheConfig::from_yaml("type: memory\nname: sessions\nconfig:\n  defaultTTL: 5m\n").unwrap();
//! assert_eq!(cfg.options.default_ttl, Some(std::time::Duration::from_secs(300)));
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[cfg(any(doc, test))]
use crate::Error;
use crate::Result;

pub use keel_config::Secret;

/// One cache's config. Field names follow the seeds (`type`, `name`, `host`, `port`,
/// `password`, `database`, `options` or `config` with `defaultTTL`); unknown fields are errors,
/// so a typo is caught instead of silently ignored.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Backend: `memory` (and, as they land, `redis`, `tiered`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Name in the manager, in the `cache` metrics label and (Redis) in the default key
    /// prefix. Required for `redis` and `tiered` caches, whose names pick their keys on a
    /// shared server; a `memory` cache without one is called `default`. Empty when omitted.
    #[serde(default)]
    pub name: String,
    /// Server URL (networked backends).
    #[serde(default)]
    pub url: Option<Secret>,
    /// Server host (networked backends).
    #[serde(default)]
    pub host: Option<String>,
    /// Server port (networked backends).
    #[serde(default)]
    pub port: Option<u16>,
    /// User name (networked backends).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (networked backends); redacted in `Debug`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Database number (networked backends).
    #[serde(default)]
    pub database: Option<i64>,
    /// Redis topology: `standalone` (default), `cluster` or `sentinel`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Redis Cluster seed nodes (`host:port` or URLs); `url` or `host`/`port` also work as
    /// the single seed.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Redis Sentinel addresses (`host:port` or URLs).
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// Redis Sentinel: the monitored master's name.
    #[serde(default, alias = "masterName", alias = "master")]
    pub master_name: Option<String>,
    /// Key prefix (networked backends; default `"<name>:"`). `clear` deletes only keys with
    /// this prefix and refuses to run with an empty one.
    #[serde(default, alias = "key_prefix", alias = "keyPrefix")]
    pub prefix: Option<String>,
    /// Tiered: the in-process tier (a `memory` config; default: 10 000 entries).
    #[serde(default)]
    pub l1: Option<Box<CacheConfig>>,
    /// Tiered: the shared tier (a `redis` config).
    #[serde(default)]
    pub l2: Option<Box<CacheConfig>>,
    /// Backend options; the seed calls this `config`.
    #[serde(default, alias = "config")]
    pub options: CacheOptions,
}

/// Prints every field, with passwords and `url` as `[REDACTED]` and the credentials inside
/// the `nodes` and `sentinels` addresses as `***`.
impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |list: &[String]| list.iter().map(|u| redact_urls(u)).collect::<Vec<_>>();
        f.debug_struct("CacheConfig")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("database", &self.database)
            .field("mode", &self.mode)
            .field("nodes", &redacted(&self.nodes))
            .field("sentinels", &redacted(&self.sentinels))
            .field("master_name", &self.master_name)
            .field("prefix", &self.prefix)
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("options", &self.options)
            .finish()
    }
}

pub(crate) use keel_config::redact_urls;

/// Backend options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOptions {
    /// TTL used by `Ttl::Default`: `"5m"`, `"250ms"`, `"1h30m"` or a number of seconds;
    /// `0` means no default expiry (the seed's Go meaning).
    #[serde(
        default,
        alias = "defaultTTL",
        alias = "defaultTtl",
        deserialize_with = "opt_duration"
    )]
    pub default_ttl: Option<Duration>,
    /// Memory backend: at most this many entries (default 100 000). Exclusive with `max_bytes`.
    #[serde(default, alias = "maxEntries")]
    pub max_entries: Option<u64>,
    /// Memory backend: at most this many bytes. Exclusive with `max_entries`.
    #[serde(default, alias = "maxBytes")]
    pub max_bytes: Option<u64>,
    /// Memory backend: count evictions in the metrics (default true; costs a per-key lock on
    /// every write).
    #[serde(default, alias = "countEvictions")]
    pub count_evictions: Option<bool>,
    /// Networked backends: how long connecting may take (default 5s).
    #[serde(default, alias = "connectTimeout", deserialize_with = "opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// Networked backends: how long one request may wait for its answer (default 2s).
    #[serde(default, alias = "responseTimeout", deserialize_with = "opt_duration")]
    pub response_timeout: Option<Duration>,
    /// Redis: how often the `cache_items` gauge is recounted by a SCAN over the prefix
    /// (default: never — each count walks the whole database on every master; `"0s"`: never).
    #[serde(
        default,
        alias = "itemsRefresh",
        deserialize_with = "opt_duration_keep_zero"
    )]
    pub items_refresh: Option<Duration>,
    /// Redis: use TLS with `host`/`port` (a `rediss://` URL implies it).
    #[serde(default)]
    pub tls: Option<bool>,
    /// Redis TLS: PEM file of the CA that signed the server certificate (default: the
    /// system's roots).
    #[serde(default, alias = "tlsCaFile")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Redis TLS: client certificate (PEM) for servers that require one.
    #[serde(default, alias = "tlsCertFile")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// Redis TLS: client private key (PEM), with `tls_cert_file`.
    #[serde(default, alias = "tlsKeyFile")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Tiered: the longest an entry stays in L1 (default 60s; `0` is an error, not "the
    /// default").
    #[serde(
        default,
        alias = "l1TTL",
        alias = "l1Ttl",
        deserialize_with = "opt_duration_keep_zero"
    )]
    pub l1_ttl: Option<Duration>,
    /// Tiered: how L1 learns of changes in L2 (default `"tracking"`, falling back to
    /// `"pubsub"` where the server refuses client tracking).
    #[serde(default)]
    pub invalidation: Option<Invalidation>,
    /// Tiered: stale-if-error window (default: off; `"0s"`: off). While Redis is
    /// unreachable, an L1 entry is served up to this long past its L1 expiry instead of the
    /// error (see docs/tiered.md).
    #[serde(default, alias = "staleIfError", deserialize_with = "opt_duration")]
    pub stale_if_error: Option<Duration>,
    /// Tiered: TTL jitter for L1 fills as a percentage, e.g. `"10%"` (default: none): each
    /// fill's L1 lifetime is shortened by a random fraction below it.
    #[serde(default, alias = "ttlJitter")]
    pub ttl_jitter: Option<String>,
    /// Longest key in bytes (default 4096); a number or a size such as `"4KiB"`.
    #[serde(
        default,
        alias = "maxKeyBytes",
        deserialize_with = "keel_config::de::opt_size_usize"
    )]
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes (default 32 MiB); a number or a size such as `"8MiB"`.
    #[serde(
        default,
        alias = "maxValueBytes",
        deserialize_with = "keel_config::de::opt_size_usize"
    )]
    pub max_value_bytes: Option<usize>,
}

/// Accepts `"5m"`-style strings (humantime) or a number of seconds; zero means "none".
fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(opt_duration_keep_zero(d)?.filter(|d| !d.is_zero()))
}

/// Like `opt_duration`, but zero stays zero (it means "off" there). The syntax is the one of
/// every Keel config ([`keel_config::de::opt_duration`]).
fn opt_duration_keep_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    keel_config::de::opt_duration(d)
}

pub use keel_config::parse_duration;

impl CacheConfig {
    /// A config of `kind` named `name` with default options.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            url: None,
            host: None,
            port: None,
            username: None,
            password: None,
            database: None,
            mode: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            prefix: None,
            l1: None,
            l2: None,
            options: CacheOptions::default(),
        }
    }

    /// Parses TOML.
    ///
    /// # Errors
    /// [`Error::Parse`] (credentials in URLs masked).
    pub fn from_toml(text: &str) -> Result<Self> {
        Ok(keel_config::from_str(keel_config::Format::Toml, text)?)
    }

    /// Parses YAML.
    ///
    /// # Errors
    /// [`Error::Parse`] (credentials in URLs masked).
    pub fn from_yaml(text: &str) -> Result<Self> {
        Ok(keel_config::from_str(keel_config::Format::Yaml, text)?)
    }

    /// Parses JSON.
    ///
    /// # Errors
    /// [`Error::Parse`] (credentials in URLs masked).
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(keel_config::from_str(keel_config::Format::Json, text)?)
    }

    /// Reads a file, choosing the format by extension (`.toml`, `.yaml`/`.yml`, `.json`).
    ///
    /// # Errors
    /// [`Error::ConfigFile`], [`Error::InvalidConfig`] for an unknown extension,
    /// [`Error::Parse`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        Ok(keel_config::from_path(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret written as a number is taken as its text; anything else that is not a string
    /// is an error that never echoes the value, in every format.
    #[test]
    fn secrets_never_show_in_parse_errors() {
        let parses = [
            CacheConfig::from_toml("type = \"redis\"\npassword = 123456\n"),
            CacheConfig::from_yaml("type: redis\npassword: 123456\n"),
            CacheConfig::from_json(r#"{"type":"redis","password":123456}"#),
        ];
        for parsed in parses {
            let cfg = parsed.unwrap();
            assert_eq!(cfg.password.as_ref().map(Secret::expose), Some("123456"));
        }
        // YAML keeps leading zeros: such a scalar is a string.
        let cfg = CacheConfig::from_yaml("type: redis\npassword: 0123\n").unwrap();
        assert_eq!(cfg.password.as_ref().map(Secret::expose), Some("0123"));
        let bad = [
            CacheConfig::from_toml("type = \"redis\"\npassword = 98765.4321\n").err(),
            CacheConfig::from_toml("type = \"redis\"\nurl = [\"s3cr3t-a\"]\n").err(),
            CacheConfig::from_yaml("type: redis\npassword: 98765.4321\n").err(),
            CacheConfig::from_yaml("type: redis\nurl: [s3cr3t-a]\n").err(),
            CacheConfig::from_yaml("type: redis\npassword: {s3cr3t-a: 1}\n").err(),
            CacheConfig::from_json(r#"{"type":"redis","password":98765.4321}"#).err(),
            CacheConfig::from_json(r#"{"type":"redis","url":["s3cr3t-a"]}"#).err(),
        ];
        for err in bad {
            let text = err.expect("not a string: an error").to_string();
            assert!(
                !text.contains("98765") && !text.contains("s3cr3t"),
                "the secret leaked: {text}"
            );
            assert!(text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn seed_go_config_as_json() {
        let cfg = CacheConfig::from_json(
            r#"{"type":"memory","name":"session-cache","host":"localhost","port":6379,
                "password":"hunter2","database":0,"config":{"defaultTTL":"5m"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.kind, "memory");
        assert_eq!(cfg.name, "session-cache");
        assert_eq!(cfg.port, Some(6379));
        assert_eq!(cfg.options.default_ttl, Some(Duration::from_secs(300)));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("[REDACTED]"), "{debug}");
    }

    #[test]
    fn toml_with_options_and_snake_case() {
        let cfg = CacheConfig::from_toml(
            "type = \"memory\"\n[options]\ndefault_ttl = \"250ms\"\nmax_bytes = 1048576\n",
        )
        .unwrap();
        assert_eq!(cfg.name, "", "omitted");
        assert_eq!(cfg.options.default_ttl, Some(Duration::from_millis(250)));
        assert_eq!(cfg.options.max_bytes, Some(1 << 20));
    }

    #[test]
    fn durations() {
        for (text, want) in [
            ("5m", Duration::from_secs(300)),
            ("250ms", Duration::from_millis(250)),
            ("1h30m", Duration::from_secs(5400)),
            ("90", Duration::from_secs(90)),
        ] {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
        assert!(
            parse_duration("five minutes")
                .unwrap_err()
                .contains("five minutes")
        );
        let zero = CacheConfig::from_yaml("type: memory\noptions:\n  defaultTTL: 0\n").unwrap();
        assert_eq!(zero.options.default_ttl, None);
        let secs = CacheConfig::from_yaml("type: memory\noptions:\n  defaultTTL: 30\n").unwrap();
        assert_eq!(secs.options.default_ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn bad_documents_are_typed_errors() {
        let typo = CacheConfig::from_toml("type = \"memory\"\n[options]\ndefaultTLL = \"5m\"\n");
        assert!(
            matches!(&typo, Err(Error::Parse { format: "toml", message }) if message.contains("defaultTLL")),
            "{typo:?}"
        );
        let bad_ttl = CacheConfig::from_json(r#"{"type":"memory","config":{"defaultTTL":"soon"}}"#);
        assert!(matches!(bad_ttl, Err(Error::Parse { format: "json", .. })));
        assert!(matches!(
            CacheConfig::from_yaml("name: x\n"),
            Err(Error::Parse { format: "yaml", .. })
        ));
        assert!(matches!(
            CacheConfig::from_path("/nonexistent/cache.toml"),
            Err(Error::ConfigFile { .. })
        ));
    }

    /// The addresses in `nodes` and `sentinels` lose their credentials in `Debug` (the
    /// masking itself is tested in keel-config).
    #[test]
    fn node_addresses_lose_their_credentials() {
        let cfg = CacheConfig::from_toml(
            "type = \"redis\"\nmode = \"cluster\"\nnodes = [\"u:hunter2@h:1\"]\n\
             sentinels = [\":hunter2@s:2\"]\n",
        )
        .unwrap();
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***@h:1"), "{debug}");
    }

    #[test]
    fn secrets_never_show_in_debug_or_parse_errors() {
        let cfg = CacheConfig::from_toml(
            "type = \"redis\"\nmode = \"cluster\"\nnodes = [\"redis://u:hunter2@h:1\"]\n\
             sentinels = [\"redis://:hunter2@s:2\"]\n",
        )
        .unwrap();
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        for bad in [
            "type = \"redis\"\npassword = \"hunter2\" oops\n",
            "type = \"redis\"\nurl = \"redis://:hunter2@h:1\"\nurl = \"again\"\n",
            "type = \"redis\"\n[options]\ntls = \"redis://:hunter2@h:1\"\n",
        ] {
            let e = CacheConfig::from_toml(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("line"), "{e}");
        }
        let e = CacheConfig::from_yaml("type: redis\noptions:\n  tls: redis://:hunter2@h:1\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e =
            CacheConfig::from_json(r#"{"type":"redis","options":{"tls":"redis://:hunter2@h"}}"#)
                .unwrap_err()
                .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}

/// How a tiered cache learns that L2 changed (config `options.invalidation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum Invalidation {
    /// Redis client tracking (`CLIENT TRACKING ON BCAST PREFIX <prefix>`, RESP3 push
    /// messages), plus Keel's own messages: every change to a key under the prefix (any
    /// client, Lua scripts, expiry, eviction) drops it from L1. Where the server refuses
    /// tracking (Redis before 6, a managed service that disables it), and in Cluster mode for
    /// now, Keel's messages alone are used, as with [`Invalidation::PubSub`].
    #[default]
    #[serde(rename = "tracking")]
    Tracking,
    /// Keel's own invalidation messages over pub/sub only: only writes made through Keel
    /// reach other nodes' L1; other changes are bounded by `l1_ttl`.
    #[serde(rename = "pubsub")]
    PubSub,
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Byte options take the shared size syntax; a bad size is a parse error naming it.
    #[test]
    fn byte_options_take_sizes() {
        let cfg = CacheConfig::from_toml(
            "type = \"memory\"\n[options]\nmaxKeyBytes = \"1KiB\"\nmax_value_bytes = \"8MB\"\n",
        )
        .unwrap();
        assert_eq!(cfg.options.max_key_bytes, Some(1024));
        assert_eq!(cfg.options.max_value_bytes, Some(8_000_000));
        let bad = CacheConfig::from_yaml("type: memory\noptions:\n  max_value_bytes: 8 parsecs\n");
        assert!(
            matches!(&bad, Err(Error::Parse { message, .. }) if message.contains("8 parsecs")),
            "{bad:?}"
        );
    }
}
