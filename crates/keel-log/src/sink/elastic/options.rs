//! [`ElasticOptions`] and [`Auth`], and their checks: the index pattern, the URL, the TLS roots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::sink::Overflow;

/// How the sink authenticates.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user.
        username: String,
        /// The password (never printed).
        password: String,
    },
    /// An API key as Elasticsearch returns it in `encoded` (sent as `Authorization: ApiKey …`).
    ApiKey(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &crate::REDACTED)
                .finish(),
            Auth::ApiKey(_) => f.debug_tuple("ApiKey").field(&crate::REDACTED).finish(),
        }
    }
}

/// Settings of an [`ElasticSink`](super::ElasticSink). [`ElasticOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ElasticOptions {
    /// Base URL of the cluster (`http://127.0.0.1:9200`); `/_bulk` is appended.
    pub url: String,
    /// Several endpoints of the cluster (config `urls`), used round-robin, a failing one taken
    /// out and health-checked back in; when not empty, `url` is not used.
    pub urls: Vec<String>,
    /// Index name pattern, expanded with the event's UTC time: `%Y`, `%m`, `%d`, `%H`, `%%`
    /// (default `logs-%Y.%m.%d`).
    pub index: String,
    /// Write to this data stream instead (`create` actions); `index` is then ignored.
    pub data_stream: Option<String>,
    /// A batch leaves once it holds this many documents (default 500).
    pub batch_records: usize,
    /// … or this many bytes of NDJSON (default 5 MiB).
    pub batch_bytes: usize,
    /// … or when its oldest document has waited this long (default 1 s).
    pub flush_interval: Duration,
    /// Buffer bound in documents, counting those in flight and awaiting retry (default 10 000).
    pub max_records: usize,
    /// Buffer bound in bytes of encoded documents, as estimated when they are written
    /// (default 32 MiB). A single larger document is dropped.
    pub max_bytes: usize,
    /// What a write does when the buffer is full (default: drop the new record, so an outage
    /// never stalls the application).
    pub overflow: Overflow,
    /// Gzip request bodies (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Retries of an item answered 429 or 5xx before it goes to the dead-letter file
    /// (default 8). Whole-request failures retry without limit.
    pub max_retries: u32,
    /// First retry delay (default 100 ms); doubles per consecutive failure, with jitter.
    pub backoff: Duration,
    /// Longest retry delay (default 30 s).
    pub max_backoff: Duration,
    /// Timeout of one `_bulk` request, connecting included (default 10 s).
    pub timeout: Duration,
    /// Credentials.
    pub auth: Auth,
    /// PEM file with the CA certificates to trust for `https` (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Where rejected documents are written (JSON lines with the reason); without it they are
    /// only counted.
    pub dead_letter: Option<PathBuf>,
    /// Bound of the dead-letter files together (default 100 MiB): the file rotates at a
    /// quarter of it and the oldest rotated files are deleted.
    pub dead_letter_max_bytes: u64,
    /// Keep the buffer on disk in this directory (config `buffer = "disk"` and
    /// `buffer_path`): documents are appended to a checksummed log before `write` returns,
    /// survive a crash or restart, and are replayed on the next start. `None` (the default)
    /// buffers in memory only.
    pub disk_buffer: Option<PathBuf>,
    /// Bound of the disk buffer in bytes of documents not yet finished (config
    /// `buffer_max_bytes`, default 256 MiB); at the bound `overflow` applies. With a disk
    /// buffer this replaces `max_records` and `max_bytes`.
    pub disk_buffer_max_bytes: u64,
    /// Write each document as an Elastic Common Schema object ([`EcsFormat`](crate::EcsFormat),
    /// config `formatter = "ecs"`) instead of the default `{@timestamp, level, logger,
    /// message, fields: {…}}` shape. `None` by default.
    pub ecs: Option<crate::format::EcsFormat>,
}

impl ElasticOptions {
    /// The defaults for a cluster at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            urls: Vec::new(),
            index: "logs-%Y.%m.%d".into(),
            data_stream: None,
            batch_records: 500,
            batch_bytes: 5 << 20,
            flush_interval: Duration::from_secs(1),
            max_records: 10_000,
            max_bytes: 32 << 20,
            overflow: Overflow::DropNewest,
            gzip: false,
            max_retries: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            auth: Auth::None,
            ca_file: None,
            dead_letter: None,
            dead_letter_max_bytes: 100 << 20,
            disk_buffer: None,
            disk_buffer_max_bytes: 256 << 20,
            ecs: None,
        }
    }
}

pub(super) fn bad(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One piece of an index name pattern.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    Lit(String),
    Year,
    Month,
    Day,
    Hour,
}

pub(super) fn check_index_chars(name: &str, field: &str) -> Result<(), Error> {
    if let Some(c) = name
        .chars()
        .find(|c| c.is_uppercase() || c.is_control() || " \"*\\<|,>/?#:".contains(*c))
    {
        return Err(bad(
            field,
            format!(
                "{name:?} contains {c:?}; index names are lowercase without \\ / * ? \" < > | , # : or spaces"
            ),
        ));
    }
    if name.starts_with(['-', '_', '+']) {
        return Err(bad(field, format!("{name:?} must not start with - _ or +")));
    }
    Ok(())
}

pub(super) fn parse_pattern(pattern: &str) -> Result<Vec<Piece>, Error> {
    if pattern.is_empty() {
        return Err(bad("options.index", "the index pattern is empty"));
    }
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            lit.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('Y') => Piece::Year,
            Some('m') => Piece::Month,
            Some('d') => Piece::Day,
            Some('H') => Piece::Hour,
            Some('%') => {
                lit.push('%');
                continue;
            }
            other => {
                return Err(bad(
                    "options.index",
                    format!(
                        "unknown placeholder %{} in {pattern:?}; use %Y %m %d %H or %%",
                        other.map(String::from).unwrap_or_default()
                    ),
                ));
            }
        };
        if !lit.is_empty() {
            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
        }
        pieces.push(piece);
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    let literal: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Lit(s) => s.as_str(),
            _ => "0",
        })
        .collect();
    check_index_chars(&literal, "options.index")?;
    Ok(pieces)
}

/// `2026-11-22T23:59:59.123Z` → the index name for that UTC time.
pub(super) fn expand(pieces: &[Piece], stamp: &str, out: &mut String) {
    for p in pieces {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::Year => out.push_str(&stamp[0..4]),
            Piece::Month => out.push_str(&stamp[5..7]),
            Piece::Day => out.push_str(&stamp[8..10]),
            Piece::Hour => out.push_str(&stamp[11..13]),
        }
    }
}

/// `base` with any `user:password@` replaced, for error messages.
pub(super) fn redact_url(base: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}{}@{}", crate::REDACTED, &rest[at + 1..])
        }
        None => base.to_owned(),
    }
}

pub(super) fn bulk_url(base: &str) -> Result<reqwest::Url, Error> {
    let shown = redact_url(base);
    if shown != base {
        return Err(bad(
            "options.url",
            format!(
                "{shown:?}: put credentials in options.username/password or options.api_key, not in the URL"
            ),
        ));
    }
    let url = reqwest::Url::parse(base.trim_end_matches('/'))
        .map_err(|e| bad("options.url", format!("{shown:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(
            "options.url",
            format!("{shown:?}: the scheme must be http or https"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("options.url", format!("{shown:?} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "options.url",
            format!("{shown:?}: give the base URL without a query or fragment"),
        ));
    }
    let mut bulk = url.clone();
    let path = format!("{}/_bulk", url.path().trim_end_matches('/'));
    bulk.set_path(&path);
    // Only what the sender reads: smaller answers for big batches.
    bulk.set_query(Some("filter_path=errors,items.*.status,items.*.error"));
    Ok(bulk)
}

pub(super) fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| bad("options.ca_file", format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(
                    "options.ca_file",
                    format!("{}: no PEM certificates found", path.display()),
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad("options.ca_file", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("options.ca_file", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_patterns_expand_with_utc_time() {
        let p = parse_pattern("logs-%Y.%m.%d-%H%%").unwrap();
        let mut out = String::new();
        expand(&p, "2026-11-22T23:59:59.123Z", &mut out);
        assert_eq!(out, "logs-2026.11.22-23%");
        for bad in ["", "Logs-%Y", "logs-%j", "logs %Y", "-logs", "logs-%"] {
            let err = parse_pattern(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { ref field, .. } if field == "options.index"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn urls_are_checked() {
        let q = "?filter_path=errors,items.*.status,items.*.error";
        assert_eq!(
            bulk_url("http://127.0.0.1:9200/").unwrap().as_str(),
            format!("http://127.0.0.1:9200/_bulk{q}")
        );
        assert_eq!(
            bulk_url("https://es.internal/prefix").unwrap().as_str(),
            format!("https://es.internal/prefix/_bulk{q}")
        );
        for bad in [
            "",
            "127.0.0.1:9200",
            "ftp://x",
            "http://",
            "http://u:p@h:9200",
            "http://h?x=1",
        ] {
            assert!(bulk_url(bad).is_err(), "{bad:?}");
        }
        for leaky in [
            "http://u:secret@h:9200",
            "http://u:secret@h:99999",
            "https://u:secret@h/?pretty",
            "ftp://u:secret@h",
            "u:secret@h:9200",
        ] {
            let err = bulk_url(leaky).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let basic = Auth::Basic {
            username: "elastic".into(),
            password: "hunter2".into(),
        };
        let text = format!("{basic:?} {:?}", Auth::ApiKey("c2VjcmV0".into()));
        assert!(
            text.contains("elastic") && !text.contains("hunter2") && !text.contains("c2VjcmV0")
        );
    }
}
