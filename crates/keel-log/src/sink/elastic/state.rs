//! The buffer shared by writers and the sender thread.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::disk_buffer::{DiskBuffer, HEADER, Pos};
use super::metrics::EsMetrics;
use super::options::{ElasticOptions, Piece, expand};
use crate::format::{Format, rfc3339_millis, write_json_fields};
use crate::record::Record;
use crate::sink::DeliveryStats;
use crate::sink::file::FileSink;

/// One document: a record waiting to be encoded, then its action and source lines.
pub(super) struct Doc {
    pub(super) seq: u64,
    /// The record until the sender encodes it (on its own thread, not the caller's).
    pub(super) record: Option<Record>,
    /// The encoded action and source lines (empty until encoded).
    pub(super) bytes: Vec<u8>,
    /// The size the buffer bound counts: an estimate of the encoded size made at `write`.
    pub(super) size: usize,
    /// Item-level retries so far.
    pub(super) attempts: u32,
    /// Whether it counts against the buffer bound (the in-band drop report does not).
    pub(super) counted: bool,
    /// Where it is in the disk buffer (with one).
    pub(super) pos: Option<Pos>,
}

impl Doc {
    /// A document already encoded (read from the disk buffer, or encoded at `write`).
    pub(super) fn encoded(seq: u64, bytes: Vec<u8>, pos: Option<Pos>) -> Self {
        Self {
            seq,
            record: None,
            size: bytes.len() + HEADER as usize,
            bytes,
            attempts: 0,
            counted: true,
            pos,
        }
    }
}

pub(super) struct State {
    pub(super) queue: VecDeque<(Instant, Doc)>,
    pub(super) queued_bytes: usize,
    /// Documents not finished (queued, in flight, awaiting retry) and their bytes.
    pub(super) records: usize,
    pub(super) bytes: usize,
    pub(super) next_seq: u64,
    /// The smallest sequence number the worker holds (in flight or awaiting retry).
    pub(super) inflight_min: Option<u64>,
    pub(super) flush_requested: bool,
    pub(super) closing: bool,
    /// When `shutdown` gives up: the final attempt's request must end by then.
    pub(super) deadline: Option<Instant>,
    /// Shutdown gave up waiting: the worker drops what it holds and exits.
    pub(super) abandon: bool,
    pub(super) stopped: bool,
    /// The disk buffer, when configured (dropped, releasing its lock, when the sender ends).
    pub(super) disk: Option<DiskBuffer>,
    /// Documents on disk not yet read into `queue` (they follow it in sequence order).
    pub(super) spilled: usize,
    /// Their bytes (frame headers included).
    pub(super) spilled_bytes: usize,
}

impl State {
    /// Every document with a smaller sequence number is finished.
    pub(super) fn finished_below(&self) -> u64 {
        let queued = self
            .queue
            .front()
            .map_or(self.next_seq - self.spilled as u64, |(_, d)| d.seq);
        self.inflight_min.map_or(queued, |m| m.min(queued))
    }
}

pub(super) struct Shared {
    pub(super) name: String,
    pub(super) state: Mutex<State>,
    /// Writers waiting for room (`Overflow::Block`).
    pub(super) space: Condvar,
    /// `flush`/`shutdown` waiting for the worker.
    pub(super) progress: Condvar,
    pub(super) wake: tokio::sync::Notify,
    pub(super) written: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) unreported: AtomicU64,
    pub(super) ids: AtomicU64,
    pub(super) id_prefix: String,
    pub(super) metrics: EsMetrics,
    pub(super) opts: ElasticOptions,
    pub(super) pattern: Vec<Piece>,
    /// Rejected documents go here (JSON lines), when configured.
    pub(super) dead_letter: Option<FileSink>,
    /// The index (or data stream) name's length, for the size estimate.
    pub(super) index_len: usize,
    /// The last delivery error, and when one was last printed to stderr.
    pub(super) last_error: Mutex<(Option<String>, Option<Instant>)>,
}

/// How often a failing sink may print to stderr.
pub(super) const ERROR_PRINT_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Set on the sender thread: records logged from it (by a `log`/`tracing` bridge fed by
    /// reqwest or hyper) are discarded, so the sink never feeds or blocks itself.
    pub(super) static IN_SENDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers a delivery error and prints it to stderr at most once a minute (it cannot be
    /// logged through the sink that is failing).
    pub(super) fn note_error(&self, reason: &str) {
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

    /// The buffer bound: in documents and bytes (with a disk buffer only its bytes).
    pub(super) fn bounds(&self) -> (usize, usize) {
        match self.opts.disk_buffer {
            Some(_) => (
                usize::MAX,
                usize::try_from(self.opts.disk_buffer_max_bytes).unwrap_or(usize::MAX),
            ),
            None => (self.opts.max_records, self.opts.max_bytes),
        }
    }

    pub(super) fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped.inc();
    }

    pub(super) fn stats(&self, pending: u64) -> DeliveryStats {
        DeliveryStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            pending,
        }
    }

    /// Appends the action and source lines of `record` to `out`.
    pub(super) fn encode(&self, record: &Record, out: &mut Vec<u8>) {
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
        if let Some(ecs) = &self.opts.ecs {
            let _ = writeln!(
                out,
                "{{\"{action}\":{{\"_index\":\"{index}\",\"_id\":\"{}-{id}\"}}}}",
                self.id_prefix
            );
            // One object and its newline: the bulk request's source line.
            ecs.format(record, out);
            return;
        }
        let _ = write!(
            out,
            "{{\"{action}\":{{\"_index\":\"{index}\",\"_id\":\"{}-{id}\"}}}}\n{{\"@timestamp\":\"{stamp}\",\"level\":\"{}\",\"logger\":",
            self.id_prefix,
            record.level.as_str()
        );
        let _ = serde_json::to_writer(&mut *out, record.logger.as_ref());
        out.extend_from_slice(b",\"message\":");
        let message = crate::format::mask_url_credentials(&record.message);
        let _ = serde_json::to_writer(&mut *out, message.as_ref());
        out.extend_from_slice(b",\"fields\":{");
        write_json_fields(out, record.all_fields(), false, true);
        out.extend_from_slice(b"}}\n");
    }
}
