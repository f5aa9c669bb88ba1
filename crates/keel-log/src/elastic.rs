//! The Elasticsearch / OpenSearch sink: a bounded buffer shipped in `_bulk` batches by a
//! background thread, with per-item results read, retries with backoff and jitter, and a
//! dead-letter file for documents the server rejects.
//!
//! Delivery model:
//! - `write` only queues the record; the sender thread encodes it. The bound counts every
//!   document not yet finished, including those in flight or waiting for a retry, in documents
//!   and in estimated encoded bytes. A full buffer applies the sink's [`Overflow`] policy.
//! - A batch leaves when it reaches `batch_records` or `batch_bytes`, when the oldest queued
//!   document is `flush_interval` old, or on `flush`/`shutdown`.
//! - Whole-request failures (network errors, timeouts, HTTP 429 and 5xx, unreadable answers)
//!   retry the whole batch, without limit, with exponential backoff and jitter: the bound, not a
//!   retry count, limits what an outage can cost. Items answered 429 or 5xx retry up to
//!   `max_retries` times. Other 4xx items (mapping errors) go to the dead-letter file.
//! - Every document carries an `_id` made of a per-sink random prefix and a sequence number,
//!   so a retried batch overwrites (`index`) or conflicts (`create`, 409 = already delivered)
//!   instead of duplicating.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::error::Error;
use crate::format::{JsonFormat, rfc3339_millis, write_json_fields};
use crate::record::{Level, Record, Value, field};
use crate::sink::file::{FileOptions, FileSink};
use crate::sink::{DeliveryStats, Overflow, Sink};

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

/// Settings of an [`ElasticSink`]. [`ElasticOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ElasticOptions {
    /// Base URL of the cluster (`http://127.0.0.1:9200`); `/_bulk` is appended.
    pub url: String,
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
}

impl ElasticOptions {
    /// The defaults for a cluster at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
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
        }
    }
}

fn bad(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One piece of an index name pattern.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Year,
    Month,
    Day,
    Hour,
}

fn check_index_chars(name: &str, field: &str) -> Result<(), Error> {
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

fn parse_pattern(pattern: &str) -> Result<Vec<Piece>, Error> {
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
fn expand(pieces: &[Piece], stamp: &str, out: &mut String) {
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
fn redact_url(base: &str) -> String {
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

fn bulk_url(base: &str) -> Result<reqwest::Url, Error> {
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

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, Error> {
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

/// `<ns>_es_*` metrics in the global registry, labelled by sink.
struct EsMetrics {
    documents: Family<Vec<(&'static str, String)>, Counter>,
    requests: Family<Vec<(&'static str, String)>, Counter>,
    buffer: Gauge,
    dropped: Counter,
    sink: String,
}

impl EsMetrics {
    fn new(sink: &str) -> Self {
        let m = keel_metrics::MetricsService::global();
        let documents: Family<Vec<(&'static str, String)>, Counter> = m
            .get_or_register(
                "es_documents",
                "Documents handled by the Elasticsearch sink, by outcome (success, retried, rejected, exhausted)",
                Family::default,
            )
            .unwrap_or_default();
        let requests: Family<Vec<(&'static str, String)>, Counter> = m
            .get_or_register(
                "es_bulk_requests",
                "_bulk requests by outcome (success, partial, throttled, server_error, client_error, network)",
                Family::default,
            )
            .unwrap_or_default();
        let buffer: Family<Vec<(&'static str, String)>, Gauge> = m
            .get_or_register(
                "es_buffer_records",
                "Documents buffered by the Elasticsearch sink (queued, in flight or awaiting retry)",
                Family::default,
            )
            .unwrap_or_default();
        let dropped: Family<Vec<(&'static str, String)>, Counter> = m
            .get_or_register(
                "es_dropped",
                "Documents the Elasticsearch sink dropped because its buffer was full or it was stopped",
                Family::default,
            )
            .unwrap_or_default();
        let label = vec![("sink", sink.to_owned())];
        Self {
            buffer: buffer.get_or_create_owned(&label),
            dropped: dropped.get_or_create_owned(&label),
            documents,
            requests,
            sink: sink.to_owned(),
        }
    }

    fn documents(&self, status: &'static str, n: u64) {
        if n > 0 {
            self.documents
                .get_or_create(&vec![
                    ("sink", self.sink.clone()),
                    ("status", status.into()),
                ])
                .inc_by(n);
        }
    }

    fn request(&self, status: &'static str) {
        self.requests
            .get_or_create(&vec![
                ("sink", self.sink.clone()),
                ("status", status.into()),
            ])
            .inc();
    }
}

/// One document: a record waiting to be encoded, then its action and source lines.
struct Doc {
    seq: u64,
    /// The record until the sender encodes it (on its own thread, not the caller's).
    record: Option<Record>,
    /// The encoded action and source lines (empty until encoded).
    bytes: Vec<u8>,
    /// The size the buffer bound counts: an estimate of the encoded size made at `write`.
    size: usize,
    /// Item-level retries so far.
    attempts: u32,
    /// Whether it counts against the buffer bound (the in-band drop report does not).
    counted: bool,
}

struct State {
    queue: VecDeque<(Instant, Doc)>,
    queued_bytes: usize,
    /// Documents not finished (queued, in flight, awaiting retry) and their bytes.
    records: usize,
    bytes: usize,
    next_seq: u64,
    /// The smallest sequence number the worker holds (in flight or awaiting retry).
    inflight_min: Option<u64>,
    flush_requested: bool,
    closing: bool,
    /// Shutdown gave up waiting: the worker drops what it holds and exits.
    abandon: bool,
    stopped: bool,
}

impl State {
    /// Every document with a smaller sequence number is finished.
    fn finished_below(&self) -> u64 {
        let queued = self.queue.front().map_or(self.next_seq, |(_, d)| d.seq);
        self.inflight_min.map_or(queued, |m| m.min(queued))
    }
}

struct Shared {
    name: String,
    state: Mutex<State>,
    /// Writers waiting for room (`Overflow::Block`).
    space: Condvar,
    /// `flush`/`shutdown` waiting for the worker.
    progress: Condvar,
    wake: tokio::sync::Notify,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    unreported: AtomicU64,
    ids: AtomicU64,
    id_prefix: String,
    metrics: EsMetrics,
    opts: ElasticOptions,
    pattern: Vec<Piece>,
    /// Rejected documents go here (JSON lines), when configured.
    dead_letter: Option<FileSink>,
    /// The index (or data stream) name's length, for the size estimate.
    index_len: usize,
    /// The last delivery error, and when one was last printed to stderr.
    last_error: Mutex<(Option<String>, Option<Instant>)>,
}

/// How often a failing sink may print to stderr.
const ERROR_PRINT_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Set on the sender thread: records logged from it (by a `log`/`tracing` bridge fed by
    /// reqwest or hyper) are discarded, so the sink never feeds or blocks itself.
    static IN_SENDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers a delivery error and prints it to stderr at most once a minute (it cannot be
    /// logged through the sink that is failing).
    fn note_error(&self, reason: &str) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.0 = Some(reason.to_owned());
        if last.1.is_none_or(|t| t.elapsed() >= ERROR_PRINT_EVERY) {
            last.1 = Some(Instant::now());
            eprintln!(
                "keel-log: elasticsearch sink {:?}: {reason} (repeats are not printed for {}s; see keel_es_bulk_requests_total)",
                self.name,
                ERROR_PRINT_EVERY.as_secs()
            );
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped.inc();
    }

    fn stats(&self, pending: u64) -> DeliveryStats {
        DeliveryStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            pending,
        }
    }

    /// Appends the action and source lines of `record` to `out`.
    fn encode(&self, record: &Record, out: &mut Vec<u8>) {
        let stamp = rfc3339_millis(record.time);
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut index = String::with_capacity(32);
        let action = match &self.opts.data_stream {
            Some(ds) => {
                index.push_str(ds);
                "create"
            }
            None => {
                expand(&self.pattern, &stamp, &mut index);
                "index"
            }
        };
        let _ = write!(
            out,
            "{{\"{action}\":{{\"_index\":\"{index}\",\"_id\":\"{}-{id}\"}}}}\n{{\"@timestamp\":\"{stamp}\",\"level\":\"{}\",\"logger\":",
            self.id_prefix,
            record.level.as_str()
        );
        let _ = serde_json::to_writer(&mut *out, record.logger.as_ref());
        out.extend_from_slice(b",\"message\":");
        let _ = serde_json::to_writer(&mut *out, record.message.as_ref());
        out.extend_from_slice(b",\"fields\":{");
        write_json_fields(out, record.all_fields(), false, true);
        out.extend_from_slice(b"}}\n");
    }
}

/// An Elasticsearch / OpenSearch [`Sink`]. Start it with [`ElasticSink::start`] or through a
/// `type = "elastic"` [`LogConfig`](crate::LogConfig); see the module docs for the delivery
/// model.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use keel_log::{Auth, ElasticOptions, ElasticSink, Level, Logger, Sink, field};
///
/// let mut options = ElasticOptions::new("https://es.internal:9200");
/// options.index = "smtp-%Y.%m.%d".into();
/// options.auth = Auth::ApiKey(std::env::var("ES_API_KEY").unwrap_or_default());
/// options.ca_file = Some("/etc/ssl/es-ca.pem".into());
/// options.dead_letter = Some("/var/log/smtp/es-dead-letter.jsonl".into());
/// let sink = Arc::new(ElasticSink::start("smtp:elastic", options)?);
/// let log = Logger::new("smtp", Level::Info, vec![sink.clone() as Arc<dyn Sink>]);
/// log.with_fields(&[field("node", "mx1")])
///     .info("message queued", &[field("queue_id", "4F2A"), field("bytes", 5120)]);
/// // Before exit: deliver what can be delivered, learn what could not.
/// let stats = log.shutdown(Duration::from_secs(10));
/// if stats.pending > 0 {
///     eprintln!("{} records not delivered: {:?}", stats.pending, sink.last_error());
/// }
/// # Ok::<(), keel_log::Error>(())
/// ```
pub struct ElasticSink {
    shared: Arc<Shared>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for ElasticSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticSink")
            .field("name", &self.shared.name)
            .field("options", &self.shared.opts)
            .finish_non_exhaustive()
    }
}

impl ElasticSink {
    /// Validates `options` and starts the background sender. Does not contact the server: a
    /// cluster that is down only means documents wait in the buffer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad URL, index pattern, data stream name, CA file or a
    /// zero bound; [`Error::Sink`] when the thread or the dead-letter file cannot start.
    pub fn start(name: impl Into<String>, options: ElasticOptions) -> Result<Self, Error> {
        let name = name.into();
        let url = bulk_url(&options.url)?;
        let pattern = parse_pattern(&options.index)?;
        if let Some(ds) = &options.data_stream {
            if ds.is_empty() {
                return Err(bad("options.data_stream", "the data stream name is empty"));
            }
            check_index_chars(ds, "options.data_stream")?;
        }
        for (field, v) in [
            ("options.batch_size", options.batch_records),
            ("options.batch_bytes", options.batch_bytes),
            ("options.queue", options.max_records),
            ("options.max_buffer_bytes", options.max_bytes),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1"));
            }
        }
        if options.flush_interval.is_zero() || options.timeout.is_zero() {
            return Err(bad(
                "options.flush_interval/timeout",
                "must be longer than zero",
            ));
        }
        if let Auth::ApiKey(key) = &options.auth
            && (key.is_empty()
                || reqwest::header::HeaderValue::from_str(&format!("ApiKey {key}")).is_err())
        {
            return Err(bad(
                "options.api_key",
                "the API key is empty or has characters a header cannot carry",
            ));
        }
        if let Auth::Basic { username, .. } = &options.auth
            && username.contains(':')
        {
            return Err(bad(
                "options.username",
                "a basic-auth user cannot contain ':'",
            ));
        }
        let tls = tls_config(options.ca_file.as_deref())?;
        let dead_letter = match &options.dead_letter {
            Some(path) => {
                let dl_name = format!("{name}:dead-letter");
                Some(
                    FileSink::start(
                        &dl_name,
                        FileOptions::new(path),
                        1024,
                        Overflow::Block,
                        Box::new(JsonFormat),
                    )
                    .map_err(|source| Error::Sink {
                        sink: dl_name,
                        source,
                    })?,
                )
            }
            None => None,
        };
        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix).map_err(|e| Error::Sink {
            sink: name.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let id_prefix: String = prefix.iter().map(|b| format!("{b:02x}")).collect();
        let client = reqwest::Client::builder()
            // A redirect would turn the POST into a GET; proxies come only from the config.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(5)))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| Error::Sink {
                sink: name.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let index_len = options
            .data_stream
            .as_ref()
            .map_or(options.index.len() + 8, String::len);
        let shared = Arc::new(Shared {
            index_len,
            metrics: EsMetrics::new(&name),
            name: name.clone(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                records: 0,
                bytes: 0,
                next_seq: 0,
                inflight_min: None,
                flush_requested: false,
                closing: false,
                abandon: false,
                stopped: false,
            }),
            space: Condvar::new(),
            progress: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            ids: AtomicU64::new(0),
            id_prefix,
            pattern,
            opts: options,
            dead_letter,
            last_error: Mutex::new((None, None)),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Sink {
                sink: name.clone(),
                source,
            })?;
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("keel-es-{name}"))
            .spawn(move || {
                IN_SENDER.with(|f| f.set(true));
                // Marks the sink stopped however the thread ends (a panic included), so
                // writers and flushes never wait for a sender that is gone.
                struct Stopped(Arc<Shared>);
                impl Drop for Stopped {
                    fn drop(&mut self) {
                        self.0.lock().stopped = true;
                        self.0.progress.notify_all();
                        self.0.space.notify_all();
                    }
                }
                let _stopped = Stopped(worker_shared.clone());
                let sender = Sender {
                    shared: worker_shared.clone(),
                    client,
                    url,
                    failures: 0,
                    rng: u64::from_le_bytes(prefix) | 1,
                };
                runtime.block_on(sender.run());
            })
            .map_err(|source| Error::Sink { sink: name, source })?;
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// The id prefix of this sink's documents (`<prefix>-<n>`), for tests and forensics.
    pub fn id_prefix(&self) -> &str {
        &self.shared.id_prefix
    }

    /// The last delivery error (a network error, an HTTP status, a rejected document), if
    /// any; also printed to stderr at most once a minute.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Documents not yet finished (queued, in flight or awaiting retry).
    pub fn buffered(&self) -> usize {
        self.shared.lock().records
    }

    /// Waits until every document queued before the call is finished or `deadline` passes.
    fn wait_finished(&self, deadline: Instant) -> bool {
        let shared = &self.shared;
        let mut state = shared.lock();
        let target = state.next_seq;
        state.flush_requested = true;
        shared.wake.notify_one();
        loop {
            if state.finished_below() >= target {
                return true;
            }
            if state.stopped {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = shared
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl ElasticSink {
    /// Queues a record; under `Block` waits for room until `deadline` (forever without one).
    /// A record that is not queued is counted as dropped.
    fn write_until(&self, record: Record, deadline: Option<Instant>) -> bool {
        if IN_SENDER.with(std::cell::Cell::get) {
            return false;
        }

        let shared = &self.shared;
        let len = estimate(&record, shared.index_len);
        if len > shared.opts.max_bytes {
            shared.drop_one();
            return false;
        }
        let mut state = shared.lock();
        loop {
            if state.closing || state.stopped {
                drop(state);
                shared.drop_one();
                return false;
            }
            if state.records < shared.opts.max_records && state.bytes + len <= shared.opts.max_bytes
            {
                break;
            }
            match shared.opts.overflow {
                Overflow::DropNewest => {
                    drop(state);
                    shared.drop_one();
                    return false;
                }
                Overflow::Block => match deadline {
                    None => {
                        state = shared
                            .space
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            drop(state);
                            shared.drop_one();
                            return false;
                        }
                        state = shared
                            .space
                            .wait_timeout(state, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                },
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.records += 1;
        state.bytes += len;
        state.queued_bytes += len;
        state.queue.push_back((
            Instant::now(),
            Doc {
                seq,
                record: Some(record),
                bytes: Vec::new(),
                size: len,
                attempts: 0,
                counted: true,
            },
        ));
        let full = state.queue.len() >= shared.opts.batch_records
            || state.queued_bytes >= shared.opts.batch_bytes;
        let first = state.queue.len() == 1;
        shared.metrics.buffer.set(state.records as i64);
        drop(state);
        if full || first {
            shared.wake.notify_one();
        }
        true
    }
}

impl Sink for ElasticSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn write(&self, record: Record) {
        self.write_until(record, None);
    }

    fn write_within(&self, record: Record, timeout: Duration) -> bool {
        self.write_until(record, Some(crate::sink::deadline_after(timeout)))
    }
    fn flush(&self, timeout: Duration) -> DeliveryStats {
        let deadline = crate::sink::deadline_after(timeout);
        let done = self.wait_finished(deadline);
        if let Some(dl) = &self.shared.dead_letter {
            let _ = dl.flush(deadline.saturating_duration_since(Instant::now()));
        }
        let pending = if done { 0 } else { self.buffered() as u64 };
        self.shared.stats(pending)
    }

    fn shutdown(&self, timeout: Duration) -> DeliveryStats {
        let deadline = crate::sink::deadline_after(timeout);
        {
            let mut state = self.shared.lock();
            state.closing = true;
            state.flush_requested = true;
        }
        self.shared.space.notify_all();
        self.shared.wake.notify_one();
        let mut state = self.shared.lock();
        while !state.stopped {
            let now = Instant::now();
            if now >= deadline {
                state.abandon = true;
                break;
            }
            state = self
                .shared
                .progress
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let (stopped, pending) = (state.stopped, state.records as u64);
        drop(state);
        self.shared.wake.notify_one();
        if stopped
            && let Some(worker) = self
                .worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        {
            let _ = worker.join();
        }
        self.shared.stats(pending)
    }
}

impl Drop for ElasticSink {
    fn drop(&mut self) {
        let running = self
            .worker
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if running {
            let _ = self.shutdown(Duration::from_secs(1));
        }
    }
}

/// What one `_bulk` request came to.
enum Outcome {
    /// The whole request failed in a way worth retrying (network, timeout, 429, 5xx, an
    /// answer that cannot be read).
    Retry(&'static str, String),
    /// 413: the batch is too large.
    TooLarge,
    /// Another 4xx: the request itself is refused (auth, bad request).
    Refused(u16, String),
    /// Per-item statuses (and error descriptions), in request order.
    Items(Vec<(u16, Option<String>)>),
}

#[derive(serde::Deserialize)]
struct ErrorsFlag {
    #[serde(default)]
    errors: bool,
}

#[derive(serde::Deserialize)]
struct BulkResponse {
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(serde::Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

struct Sender {
    shared: Arc<Shared>,
    client: reqwest::Client,
    url: reqwest::Url,
    /// Consecutive failed rounds (drives the backoff).
    failures: u32,
    rng: u64,
}

impl Sender {
    fn backoff(&mut self) -> Duration {
        let opts = &self.shared.opts;
        let exp = self.failures.saturating_sub(1).min(20);
        let base = opts
            .backoff
            .saturating_mul(1 << exp)
            .min(opts.max_backoff)
            .max(Duration::from_millis(1));
        // xorshift64: jitter only, not security.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }

    /// Waits until `until` (or forever with `None`) unless woken; returns early on a wake.
    async fn sleep(&self, until: Option<Instant>) {
        let notified = self.shared.wake.notified();
        match until {
            Some(t) => {
                let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(t), notified).await;
            }
            None => notified.await,
        }
    }

    async fn run(mut self) {
        self.deliver().await;
        if let Some(dl) = &self.shared.dead_letter {
            let _ = dl.shutdown(Duration::from_secs(5));
        }
    }

    async fn deliver(&mut self) {
        let mut retry: VecDeque<Doc> = VecDeque::new();
        let mut not_before: Option<Instant> = None;
        let mut batch_cap = self.shared.opts.batch_records;
        loop {
            // Decide whether a batch leaves now.
            let (batch, wait_until) = {
                let shared = self.shared.clone();
                let mut state = shared.lock();
                if state.abandon {
                    return;
                }
                let now = Instant::now();
                let backing_off = not_before.is_some_and(|t| now < t);
                let opts = &shared.opts;
                let urgent = state.flush_requested || state.closing;
                // Drops not yet reported, and no report already on its way.
                let report_due = shared.unreported.load(Ordering::Acquire) > 0
                    && retry.iter().all(|d| d.counted);
                let due = urgent
                    || state.queue.len() >= opts.batch_records
                    || state.queued_bytes >= opts.batch_bytes
                    || state
                        .queue
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t) >= opts.flush_interval)
                    || !retry.is_empty();
                let nothing = state.queue.is_empty() && retry.is_empty() && !(urgent && report_due);
                if state.closing && nothing {
                    return;
                }
                if state.queue.is_empty() {
                    state.flush_requested = false;
                }
                if !due || backing_off || nothing {
                    let oldest_due = state.queue.front().map(|(t, _)| *t + opts.flush_interval);
                    let until = match (backing_off, not_before, oldest_due) {
                        (true, Some(t), _) => Some(t),
                        (_, _, Some(t)) => Some(t),
                        _ => Some(now + opts.flush_interval),
                    };
                    (None, until)
                } else {
                    // Retries first (they are the oldest), then queued documents; the cap
                    // (halved after a 413) and the byte limit apply to both.
                    let mut batch = Vec::new();
                    let mut bytes = 0;
                    let fits = |batch: &Vec<Doc>, bytes: usize, size: usize| {
                        batch.is_empty()
                            || (batch.len() < batch_cap && bytes + size <= opts.batch_bytes)
                    };
                    while let Some(front) = retry.front() {
                        if !fits(&batch, bytes, front.size) {
                            break;
                        }
                        let doc = retry.pop_front().expect("front exists");
                        bytes += doc.size;
                        batch.push(doc);
                    }
                    while let Some((_, front)) = state.queue.front() {
                        if !fits(&batch, bytes, front.size) {
                            break;
                        }
                        let (_, doc) = state.queue.pop_front().expect("front exists");
                        bytes += doc.size;
                        state.queued_bytes -= doc.size;
                        batch.push(doc);
                    }
                    if state.queue.is_empty() {
                        state.flush_requested = false;
                    }
                    state.inflight_min = batch
                        .iter()
                        .chain(&retry)
                        .filter(|d| d.counted)
                        .map(|d| d.seq)
                        .min();
                    (Some(batch), None)
                }
            };
            let Some(mut batch) = batch else {
                self.sleep(wait_until).await;
                continue;
            };
            for doc in &mut batch {
                if let Some(record) = doc.record.take() {
                    self.shared.encode(&record, &mut doc.bytes);
                }
            }
            // One drop report in flight at a time; drops counted meanwhile go in the next.
            if batch.iter().chain(&retry).all(|d| d.counted) {
                let lost = self.shared.unreported.swap(0, Ordering::AcqRel);
                if lost > 0 {
                    batch.insert(0, self.drop_report(lost));
                }
            }
            let outcome = self.send(&batch).await;
            let mut finished: Vec<Doc> = Vec::new();
            let requeue = |retry: &mut VecDeque<Doc>, batch: Vec<Doc>| {
                for doc in batch.into_iter().rev() {
                    retry.push_front(doc);
                }
            };
            match outcome {
                Outcome::Retry(status, why) => {
                    self.shared.metrics.request(status);
                    self.shared.note_error(&why);
                    self.failures += 1;
                    not_before = Some(Instant::now() + self.backoff());
                    requeue(&mut retry, batch);
                }
                Outcome::TooLarge if batch.len() > 1 => {
                    self.shared.metrics.request("client_error");
                    self.shared.note_error(&format!(
                        "HTTP 413 for {} documents; halving the batch",
                        batch.len()
                    ));
                    batch_cap = (batch.len() / 2).max(1);
                    requeue(&mut retry, batch);
                }
                Outcome::TooLarge => {
                    self.shared.metrics.request("client_error");
                    self.reject_all(&batch, 413, "HTTP 413: a single document is too large");
                    finished = batch;
                }
                Outcome::Refused(status, why) => {
                    self.shared.metrics.request("client_error");
                    self.reject_all(&batch, status, &why);
                    finished = batch;
                }
                Outcome::Items(items) if items.len() != batch.len() => {
                    self.shared.metrics.request("server_error");
                    self.shared.note_error(&format!(
                        "the _bulk answer has {} items for {} documents",
                        items.len(),
                        batch.len()
                    ));
                    self.failures += 1;
                    not_before = Some(Instant::now() + self.backoff());
                    requeue(&mut retry, batch);
                }
                Outcome::Items(items) => {
                    let create = self.shared.opts.data_stream.is_some();
                    let mut ok = 0u64;
                    let mut retried = 0u64;
                    for (mut doc, (status, error)) in batch.into_iter().zip(items) {
                        if (200..300).contains(&status) || (create && status == 409) {
                            ok += u64::from(doc.counted);
                            finished.push(doc);
                        } else if status == 429 || status >= 500 {
                            doc.attempts += 1;
                            if doc.attempts > self.shared.opts.max_retries {
                                self.dead_letter(
                                    &doc,
                                    status,
                                    &format!(
                                        "gave up after {} retries: {}",
                                        self.shared.opts.max_retries,
                                        error.unwrap_or_default()
                                    ),
                                    "exhausted",
                                );
                                finished.push(doc);
                            } else {
                                retried += 1;
                                retry.push_back(doc);
                            }
                        } else {
                            self.dead_letter(&doc, status, &error.unwrap_or_default(), "rejected");
                            finished.push(doc);
                        }
                    }
                    self.shared.written.fetch_add(ok, Ordering::Relaxed);
                    self.shared.metrics.documents("success", ok);
                    self.shared.metrics.documents("retried", retried);
                    if retried == 0 {
                        self.shared.metrics.request("success");
                        self.failures = 0;
                        not_before = None;
                        // After a 413 the cap grows back by doubling, not all at once.
                        batch_cap = (batch_cap * 2).min(self.shared.opts.batch_records);
                    } else {
                        self.shared.metrics.request("partial");
                        self.failures += 1;
                        not_before = Some(Instant::now() + self.backoff());
                    }
                }
            }
            let shared = self.shared.clone();
            let mut state = shared.lock();
            for doc in finished.iter().filter(|d| d.counted) {
                state.records -= 1;
                state.bytes -= doc.size;
            }
            state.inflight_min = retry.iter().filter(|d| d.counted).map(|d| d.seq).min();
            shared.metrics.buffer.set(state.records as i64);
            drop(state);
            shared.space.notify_all();
            shared.progress.notify_all();
        }
    }

    /// The in-band "N records dropped" document (not counted against the bound).
    fn drop_report(&self, lost: u64) -> Doc {
        let report = Record::new(
            Level::Warn,
            self.shared.name.clone(),
            format!("{lost} records dropped"),
        )
        .with(vec![field("dropped", lost)]);
        let mut bytes = Vec::new();
        self.shared.encode(&report, &mut bytes);
        Doc {
            seq: 0,
            record: None,
            size: bytes.len(),
            bytes,
            attempts: 0,
            counted: false,
        }
    }

    fn reject_all(&self, batch: &[Doc], status: u16, why: &str) {
        for doc in batch.iter() {
            self.dead_letter(doc, status, why, "rejected");
        }
    }

    /// Writes a rejected document (with why) to the dead-letter file and counts it.
    fn dead_letter(&self, doc: &Doc, status: u16, why: &str, outcome: &'static str) {
        if !doc.counted {
            return;
        }
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.documents(outcome, 1);
        let Some(sink) = &self.shared.dead_letter else {
            self.shared.note_error(&format!(
                "a document was not delivered (HTTP {status}): {why}"
            ));
            return;
        };
        let text = String::from_utf8_lossy(&doc.bytes);
        let mut lines = text.lines();
        let action: serde_json::Value = lines
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let source: serde_json::Value = lines
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let record = Record::new(
            Level::Error,
            self.shared.name.clone(),
            "document not delivered to Elasticsearch",
        )
        .with(vec![
            field("status", u64::from(status)),
            field("reason", why.to_owned()),
            field("action", Value::Json(action)),
            field("document", Value::Json(source)),
        ]);
        sink.write(record);
    }

    async fn send(&self, batch: &[Doc]) -> Outcome {
        let mut body = Vec::with_capacity(batch.iter().map(|d| d.bytes.len()).sum());
        for doc in batch {
            body.extend_from_slice(&doc.bytes);
        }
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        if self.shared.opts.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            if enc.write_all(&body).is_ok()
                && let Ok(gz) = enc.finish()
            {
                body = gz;
                request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
        }
        request = match &self.shared.opts.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::ApiKey(key) => {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("ApiKey {key}"))
                    .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
                value.set_sensitive(true);
                request.header(reqwest::header::AUTHORIZATION, value)
            }
        };
        let response = match request.body(body).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry("network", e.to_string()),
        };
        let status = response.status().as_u16();
        let text = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Outcome::Retry("network", e.to_string()),
        };
        match status {
            200..=299 => {}
            413 => return Outcome::TooLarge,
            429 => return Outcome::Retry("throttled", format!("HTTP {status}")),
            // Credentials or the URL path are wrong: an outage until someone fixes it, so the
            // documents wait (within the bound) instead of being thrown away.
            401 | 403 | 404 => {
                let excerpt = String::from_utf8_lossy(&text[..text.len().min(512)]).into_owned();
                return Outcome::Retry("client_error", format!("HTTP {status}: {excerpt}"));
            }
            400..=499 => {
                let excerpt = String::from_utf8_lossy(&text[..text.len().min(512)]).into_owned();
                return Outcome::Refused(status, format!("HTTP {status}: {excerpt}"));
            }
            _ => return Outcome::Retry("server_error", format!("HTTP {status}")),
        }
        match serde_json::from_slice::<ErrorsFlag>(&text) {
            Ok(ErrorsFlag { errors: false, .. }) => {
                // The fast path: every item succeeded; still check the count.
                match count_items(&text) {
                    Some(n) => Outcome::Items(vec![(200, None); n]),
                    None => Outcome::Retry("server_error", "unreadable _bulk answer".into()),
                }
            }
            Ok(_) => match serde_json::from_slice::<BulkResponse>(&text) {
                Ok(r) => Outcome::Items(
                    r.items
                        .into_iter()
                        .map(|item| {
                            item.into_values()
                                .next()
                                .map_or((500, Some("empty item".into())), |i| {
                                    (i.status, i.error.map(|e| describe(&e)))
                                })
                        })
                        .collect(),
                ),
                Err(e) => Outcome::Retry("server_error", format!("unreadable _bulk answer: {e}")),
            },
            Err(e) => Outcome::Retry("server_error", format!("unreadable _bulk answer: {e}")),
        }
    }
}

/// The number of entries in a `_bulk` answer's `items` array, without building them.
fn count_items(text: &[u8]) -> Option<usize> {
    struct Count(usize);
    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Count;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an array")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Count, A::Error> {
                    let mut n = 0;
                    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(Count(n))
                }
            }
            d.deserialize_seq(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Items {
        items: Count,
    }
    serde_json::from_slice::<Items>(text)
        .ok()
        .map(|i| i.items.0)
}

/// The encoded size of `record`, estimated without encoding it (escapes and redaction make
/// the real size differ a little); what the byte bound counts.
fn estimate(record: &Record, index_len: usize) -> usize {
    fn json_size(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Null | serde_json::Value::Bool(_) => 5,
            serde_json::Value::Number(_) => 20,
            serde_json::Value::String(s) => s.len() + 2,
            serde_json::Value::Array(items) => {
                2 + items.iter().map(|i| json_size(i) + 1).sum::<usize>()
            }
            serde_json::Value::Object(map) => {
                2 + map
                    .iter()
                    .map(|(k, v)| k.len() + 4 + json_size(v))
                    .sum::<usize>()
            }
        }
    }
    // Action line, timestamp, level and the fixed keys.
    let fixed = 170;
    let fields: usize = record
        .all_fields()
        .map(|f| {
            f.key.len()
                + 4
                + match &f.value {
                    Value::Str(s) => s.len() + 2,
                    Value::I64(_) | Value::U64(_) | Value::F64(_) => 20,
                    Value::Bool(_) => 5,
                    Value::Json(v) => json_size(v),
                }
        })
        .sum();
    fixed + index_len + record.logger.len() + record.message.len() + fields
}

/// `type: reason` of a bulk item error.
fn describe(e: &serde_json::Value) -> String {
    match (e.get("type"), e.get("reason")) {
        (Some(t), Some(r)) => format!(
            "{}: {}",
            t.as_str().unwrap_or_default(),
            r.as_str().unwrap_or_default()
        ),
        _ => e.to_string(),
    }
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

    #[test]
    fn item_counting_reads_only_the_array() {
        assert_eq!(
            count_items(br#"{"took":1,"errors":false,"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#),
            Some(2)
        );
        assert_eq!(count_items(br#"{"errors":false}"#), None);
    }
}
