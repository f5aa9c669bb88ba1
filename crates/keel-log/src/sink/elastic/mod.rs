//! The Elasticsearch / OpenSearch sink: a bounded buffer shipped in `_bulk` batches by a
//! background thread, with per-item results read, retries with backoff and jitter, and a
//! dead-letter file for documents the server rejects.
//!
//! Delivery model:
//! - `write` only queues the record; the sender thread encodes it. The bound counts every
//!   document not yet finished, including those in flight or waiting for a retry, in documents
//!   and in estimated encoded bytes. A full buffer applies the sink's [`Overflow`] policy.
//!   With a disk buffer `write` encodes the record and appends it to the buffer's log before
//!   it returns; the bound is the log's bytes; a restart replays what was not finished.
//! - A batch leaves when it reaches `batch_records` or `batch_bytes`, when the oldest queued
//!   document is `flush_interval` old, or on `flush`/`shutdown`.
//! - Whole-request failures (network errors, timeouts, HTTP 408, 429, 499 and 5xx, unreadable
//!   answers) retry the whole batch, without limit, with exponential backoff and jitter (or at
//!   once on another endpoint that is up): the bound, not a retry count, limits what an outage
//!   can cost. Items answered 429 retry without limit, 5xx up to `max_retries` times. Other
//!   4xx items (mapping errors) go to the dead-letter file. `shutdown` makes one attempt at
//!   once, whatever the backoff says.
//! - Every document carries an `_id` made of a per-sink random prefix and a sequence number,
//!   so a retried batch overwrites (`index`) or conflicts (`create`, 409 = already delivered)
//!   instead of duplicating.
//!
//! # Layout
//! - `options`: [`ElasticOptions`], [`Auth`], the URL, index pattern and TLS checks.
//! - `state`: the buffer shared by writers and the sender thread.
//! - `sender`: the sender thread's loop (batches, retries, backoff).
//! - `bulk`: the `_bulk` request and its answer, the size estimate.
//! - `endpoints`: several endpoints, round-robin, health checks.
//! - `disk_buffer`: the optional crash-safe buffer (segments, checksums, ack, replay, lock).
//! - `dead_letter`: rejected documents, in a bounded, rotated file.
//! - `metrics`: the `<ns>_es_*` families.

mod bulk;
mod dead_letter;
mod disk_buffer;
mod endpoints;
mod metrics;
mod options;
mod sender;
mod state;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use options::{Auth, ElasticOptions};

use crate::error::Error;
use crate::record::Record;
use crate::sink::{DeliveryStats, Overflow, Sink};
use bulk::estimate;
use disk_buffer::{DiskBuffer, HEADER};
use metrics::EsMetrics;
use options::{bad, bulk_url, check_index_chars, parse_pattern, tls_config};
use sender::Sender;
use state::{Doc, IN_SENDER, Shared, State};

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
        let urls = if options.urls.is_empty() {
            vec![options.url.clone()]
        } else {
            options.urls.clone()
        };
        for url in &urls {
            bulk_url(url)?;
        }
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
            (
                "options.buffer_max_bytes",
                usize::try_from(options.disk_buffer_max_bytes).unwrap_or(usize::MAX),
            ),
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
        if options.dead_letter_max_bytes < 4096 {
            return Err(bad(
                "options.dead_letter_max_bytes",
                "must be at least 4096 bytes",
            ));
        }
        let dead_letter = match &options.dead_letter {
            Some(path) => Some(dead_letter::open(
                &name,
                path,
                options.dead_letter_max_bytes,
            )?),
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
        let (disk, replay) = match &options.disk_buffer {
            Some(dir) => {
                let (disk, replay) = DiskBuffer::open(&name, dir, options.disk_buffer_max_bytes)?;
                (Some(disk), replay)
            }
            None => (None, disk_buffer::Replay::default()),
        };
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
                // What an earlier run left unfinished is sent first, read from disk.
                records: replay.records,
                bytes: replay.bytes,
                next_seq: replay.records as u64,
                spilled: replay.records,
                spilled_bytes: replay.bytes,
                disk,
                inflight_min: None,
                flush_requested: false,
                closing: false,
                deadline: None,
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
        if replay.corrupt > 0 {
            shared.metrics.disk_corrupt.inc_by(replay.corrupt);
            shared.note_error(&format!(
                "disk buffer: skipped {} damaged region(s), {} bytes (a torn write at a crash, or damage)",
                replay.corrupt, replay.corrupt_bytes
            ));
        }
        let endpoints = endpoints::Endpoints::new(&urls, &shared.metrics)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Sink {
                sink: name.clone(),
                source,
            })?;
        if shared.opts.disk_buffer.is_some() {
            disk_buffer::spawn_syncer(&name, Arc::downgrade(&shared)).map_err(|source| {
                Error::Sink {
                    sink: name.clone(),
                    source,
                }
            })?;
        }
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
                    endpoints,
                    failures: 0,
                    rng: u64::from_le_bytes(prefix) | 1,
                    last_checkpoint: Instant::now(),
                    dead_letters_unflushed: std::cell::Cell::new(false),
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
        // With a disk buffer the caller encodes: the log holds the document as it is sent.
        let (len, encoded) = if shared.opts.disk_buffer.is_some() {
            let mut bytes = Vec::new();
            shared.encode(&record, &mut bytes);
            (bytes.len() + HEADER as usize, Some(bytes))
        } else {
            (estimate(&record, shared.index_len), None)
        };
        let (max_records, max_bytes) = shared.bounds();
        if len > max_bytes {
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
            // With a disk buffer the bound counts the files from the ack position (what a
            // document stuck in retry keeps on disk), at least the unfinished documents.
            let used = state.disk.as_ref().map_or(state.bytes, |d| {
                usize::try_from(d.live_bytes())
                    .unwrap_or(usize::MAX)
                    .max(state.bytes)
            });
            if state.records < max_records && used.saturating_add(len) <= max_bytes {
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
        let doc = match encoded {
            None => Doc {
                seq,
                record: Some(record),
                bytes: Vec::new(),
                size: len,
                attempts: 0,
                counted: true,
                pos: None,
            },
            Some(bytes) => {
                let appended = match state.disk.as_mut() {
                    Some(disk) => disk.append(&bytes),
                    None => Err(std::io::Error::other("the disk buffer is closed")),
                };
                match appended {
                    Ok(pos) => Doc::encoded(seq, bytes, Some(pos)),
                    Err(e) => {
                        drop(state);
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        shared.note_error(&format!("disk buffer: a write failed: {e}"));
                        return false;
                    }
                }
            }
        };
        state.next_seq += 1;
        state.records += 1;
        state.bytes += len;
        // Memory holds two batches of a disk buffer; the rest waits on disk, in order.
        let opts = &shared.opts;
        if doc.pos.is_some()
            && (state.spilled > 0
                || state.queue.len() >= 2 * opts.batch_records
                || state.queued_bytes >= 2 * opts.batch_bytes)
        {
            state.spilled += 1;
            state.spilled_bytes += len;
        } else {
            if let Some(disk) = state.disk.as_mut() {
                // In memory already: the disk reader goes on after it.
                disk.read = disk.end();
            }
            state.queued_bytes += len;
            state.queue.push_back((Instant::now(), doc));
        }
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
        // What the disk buffer accepted survives a power loss from here on.
        let segment = self
            .shared
            .lock()
            .disk
            .as_ref()
            .map(DiskBuffer::sync_handle);
        if let Some(Ok(file)) = segment {
            let _ = file.sync_data();
        }
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
            state.deadline = Some(deadline);
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
