//! Sinks: the [`Sink`] trait, delivery stats, the overflow and flush policies, and the
//! non-blocking sinks built on them.
//!
//! # Layout
//! - `queue`: [`QueueSink`], a bounded queue in front of a writer thread (console sinks are
//!   a queue sink writing to stdout or stderr).
//! - `file`: [`FileSink`](file::FileSink), a queue sink whose writer rotates files.
//! - `elastic` (feature `elastic`): the Elasticsearch / OpenSearch sink.
//! - `syslog`: [`SyslogSink`](syslog::SyslogSink), RFC 5424 over `/dev/log`, UDP or TCP.
//! - `journald`: [`JournaldSink`](journald::JournaldSink), the journal's native protocol.
//! - `transport`: the datagram and octet-counted TCP writer both of them use, with
//!   reconnects and backoff.

#[cfg(feature = "elastic")]
pub mod elastic;
pub mod file;
pub mod journald;
mod queue;
pub mod syslog;
mod transport;

use std::io::Write;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

pub use queue::QueueSink;

use crate::record::Record;

/// What a sink does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The caller waits for room (nothing is lost; logging can slow the caller down).
    #[default]
    Block,
    /// The new record is dropped and counted; the sink writes an in-band "N records dropped"
    /// record before the next one it delivers.
    DropNewest,
}

/// Delivery counters of a sink (or the sum over a logger's sinks).
///
/// They count the records given to the sink, each exactly once: `written + dropped + failed +
/// pending` is the number of records it was given (once it is idle, `pending` is 0), on every path
/// (write errors, a full queue, records that arrive during or after `shutdown`). In-band
/// "N records dropped" reports are extra lines in the output and are not counted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryStats {
    /// Records that reached the writer's destination: a flush after them succeeded (for a
    /// file: handed to the kernel, and `fsync`ed with [`FlushPolicy::sync`]).
    pub written: u64,
    /// Records dropped: no room in the queue (`DropNewest`, or an exit path's bounded wait),
    /// or given after `shutdown` began.
    pub dropped: u64,
    /// Records lost to I/O errors (their write or the flush after them failed); also counted
    /// in `<ns>_log_write_errors_total{sink}`.
    pub failed: u64,
    /// Records given to the sink and not yet counted above: still queued, or taken by the
    /// writer and not yet flushed (for example when `flush`/`shutdown` gave up waiting).
    /// `written + dropped + failed + pending` is what the sink was given.
    pub pending: u64,
}

impl std::ops::Add for DeliveryStats {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            written: self.written + o.written,
            dropped: self.dropped + o.dropped,
            failed: self.failed + o.failed,
            pending: self.pending + o.pending,
        }
    }
}

/// A destination for records. Implementations must not block the caller longer than their
/// overflow policy says.
pub trait Sink: Send + Sync {
    /// The sink's name (for metrics and errors).
    fn name(&self) -> &str;
    /// Queues a record. The sink owns it: a logger with several sinks gives each its own
    /// copy, so a queue can hold records inline instead of behind one allocation each.
    fn write(&self, record: Record);
    /// Queues a record like [`write`](Self::write) but never waits longer than `timeout` for
    /// room, whatever the overflow policy: a record that did not fit in time is counted as
    /// dropped. Returns whether it was queued. Used on exit paths (`fatal`, the panic hook)
    /// that must not hang on a stalled writer.
    ///
    /// The default calls `write`; a sink whose `write` can block must override it.
    fn write_within(&self, record: Record, timeout: Duration) -> bool {
        let _ = timeout;
        self.write(record);
        true
    }
    /// Waits (up to `timeout`) until everything queued so far is written.
    fn flush(&self, timeout: Duration) -> DeliveryStats;
    /// Flushes, then stops the sink; later writes are counted as dropped.
    fn shutdown(&self, timeout: Duration) -> DeliveryStats;
    /// Closes and reopens the sink's file before its next write (after logrotate renamed
    /// it, on SIGHUP). The default does nothing: only file sinks have a file.
    fn reopen(&self) {}
}

/// Where a queue sink's worker writes formatted bytes.
///
/// The sink counts a record as written once a `flush` (or `sync`) after it succeeded, and as
/// failed when `write_record` returned an error for it or the next flush failed. So a writer
/// that buffers must keep the bytes of records it accepted until a flush, and a failed
/// `write_record` must not lose earlier records' bytes (they are retried by the next flush);
/// a failed flush discards what it could not write.
pub trait RecordWriter: Send + 'static {
    /// Writes (or buffers) one formatted record.
    ///
    /// # Errors
    /// I/O errors (this record is counted as failed).
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Writes out buffered bytes.
    ///
    /// # Errors
    /// I/O errors (every record accepted since the last flush is counted as failed).
    fn flush(&mut self) -> std::io::Result<()>;
    /// Flushes, then makes the bytes durable on the device (`fsync`) where that means
    /// something; the default only flushes.
    ///
    /// # Errors
    /// I/O errors, as for `flush`.
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()
    }
    /// Called once when the sink shuts down, after its last flush: finishes background work
    /// (a file sink's gzip of its last rotated file), waiting at most until `deadline`. The
    /// default does nothing.
    fn close(&mut self, deadline: Instant) {
        let _ = deadline;
    }
}

impl<W: Write + Send + 'static> RecordWriter for W {
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(self)
    }
}

/// Runs `op` on every sink at once against one shared `deadline` (each sink on its own thread
/// when there are several), so a stuck sink cannot use up the time of the others: a flush or
/// stop reaches every sink first, and then all of them are waited for until the deadline.
/// `op` gets the time left. Results are in the order of `sinks`.
pub(crate) fn on_every_sink<R: Send>(
    sinks: &[&dyn Sink],
    deadline: Instant,
    op: impl Fn(&dyn Sink, Duration) -> R + Sync,
) -> Vec<R> {
    on_every(sinks, deadline, |sink, left| op(*sink, left))
}

/// [`on_every_sink`] over any items (a sink with what else its `op` needs).
pub(crate) fn on_every<T: Sync, R: Send>(
    items: &[T],
    deadline: Instant,
    op: impl Fn(&T, Duration) -> R + Sync,
) -> Vec<R> {
    let left = || deadline.saturating_duration_since(Instant::now());
    if let [one] = items {
        return vec![op(one, left())];
    }
    std::thread::scope(|scope| {
        let started: Vec<_> = items
            .iter()
            .map(|item| {
                std::thread::Builder::new()
                    .name("keel-log-settle".into())
                    .spawn_scoped(scope, || op(item, left()))
                    .map_err(|_| item)
            })
            .collect();
        started
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to spare: this sink waits in line.
                Err(item) => op(item, left()),
            })
            .collect()
    })
}

/// Queues `records` (in-band sampling reports) into `sink`, none waiting past `deadline`
/// whatever the overflow policy: a record that finds no room in time is counted as dropped
/// by the sink.
pub(crate) fn write_all_until(sink: &dyn Sink, records: &[Record], deadline: Instant) {
    for record in records {
        sink.write_within(
            record.clone(),
            deadline.saturating_duration_since(Instant::now()),
        );
    }
}

/// `<ns>_<name>_total{sink}` in the global registry.
pub(crate) fn sink_counter(name: &str, help: &str, sink: &str) -> Counter {
    let family: Family<Vec<(&'static str, String)>, Counter> =
        keel_metrics::MetricsService::global()
            .get_or_register(name, help, Default::default)
            .unwrap_or_default();
    family.get_or_create_owned(&vec![("sink", sink.to_owned())])
}

/// The latest instant `timeout` from now can name: `now + timeout`, or about thirty years
/// ahead when that overflows (`Duration::MAX` means "no bound", and `Instant + Duration::MAX`
/// would panic).
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// When a queue sink's writer flushes its writer (and, with `sync`, syncs it to the device).
///
/// The writer always flushes when its queue drains, so a logger that logs a few records and
/// then stays quiet has them in its file at once; while records keep coming it flushes at
/// least every [`interval`](Self::interval). A process killed by `SIGKILL` (an OOM kill, a
/// crash) therefore loses at most the records of the last interval that were still in the
/// writer's buffer, plus what was queued and not yet written. Flushing hands the bytes to the
/// kernel; only `sync` makes them survive a power loss or a kernel crash.
///
/// ```
/// use std::time::Duration;
/// use keel_log::FlushPolicy;
///
/// let default = FlushPolicy::default();
/// assert_eq!(default.interval, Duration::from_secs(1));
/// let every_record = FlushPolicy::every(Duration::ZERO).with_sync(true);
/// assert!(every_record.sync);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushPolicy {
    /// Flush at least this often while records keep coming (default 1 s; `Duration::ZERO`
    /// flushes after every record, one `write` system call each).
    pub interval: Duration,
    /// `fsync` (`fdatasync`) after every flush (default off; costs a device round trip per
    /// flush).
    pub sync: bool,
}

/// The default [`FlushPolicy::interval`]: 1 s.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            interval: DEFAULT_FLUSH_INTERVAL,
            sync: false,
        }
    }
}

impl FlushPolicy {
    /// Flush when the queue drains and at least every `interval`, without `fsync`.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            sync: false,
        }
    }

    /// Also `fsync` after every flush.
    #[must_use]
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }
}
