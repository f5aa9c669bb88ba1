//! Non-blocking sinks: a bounded queue in front of a writer thread.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};

use crate::format::Format;
use crate::record::{Level, Record, field};

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
/// They count the records given to the sink: once it is idle, `written + dropped + failed`
/// is the number of records it was given. In-band "N records dropped" reports are extra
/// lines in the output and are not counted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryStats {
    /// Records written by the sink's writer.
    pub written: u64,
    /// Records dropped because the queue was full (`DropNewest`).
    pub dropped: u64,
    /// Records the writer failed to write (I/O errors).
    pub failed: u64,
    /// Records still queued when `flush`/`shutdown` gave up waiting.
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
    /// Waits (up to `timeout`) until everything queued so far is written.
    fn flush(&self, timeout: Duration) -> DeliveryStats;
    /// Flushes, then stops the sink; later writes are counted as dropped.
    fn shutdown(&self, timeout: Duration) -> DeliveryStats;
}

/// Where a queue sink's worker writes formatted bytes.
pub trait RecordWriter: Send + 'static {
    /// Writes one formatted record.
    ///
    /// # Errors
    /// I/O errors (the record is counted as failed).
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Flushes buffered bytes.
    ///
    /// # Errors
    /// I/O errors.
    fn flush(&mut self) -> std::io::Result<()>;
}

impl<W: Write + Send + 'static> RecordWriter for W {
    fn write_record(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Write::flush(self)
    }
}

// Records are held inline in the queue's slots on purpose: a boxed record would be freed by
// the writer thread and reallocated by the caller while its cache lines still sit in the
// writer's cache, which made each call pay for pulling them back (see docs/logging.md).
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Record),
    Flush(Sender<()>),
    Stop(Sender<()>),
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Dropped since the last in-band report.
    unreported: AtomicU64,
}

/// How long the writer naps when its queue is empty, and how many naps before it blocks.
const NAP: Duration = Duration::from_micros(50);
const NAPS: u32 = 20;

/// The next message for a writer thread (`None` once every sender is gone). While records
/// keep coming the writer never blocks on the channel, so callers never pay for waking it
/// (a futex wake costs more than the whole logging call); only after about a millisecond
/// without records does it block until the next one.
fn next_msg(rx: &Receiver<Msg>) -> Option<Msg> {
    for _ in 0..NAPS {
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => std::thread::sleep(NAP),
        }
    }
    rx.recv().ok()
}

/// A bounded queue drained by one writer thread that formats and writes records.
pub struct QueueSink {
    name: String,
    tx: Sender<Msg>,
    policy: Overflow,
    counters: Arc<Counters>,
    /// `<ns>_log_dropped_total{sink}` in the global registry.
    dropped_metric: prometheus_client::metrics::counter::Counter,
    worker: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for QueueSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSink")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl QueueSink {
    /// Starts the writer thread. `capacity` is the queue bound in records (at least 1); the
    /// queue's slots hold records inline (`size_of::<Record>()` each, allocated here).
    ///
    /// # Errors
    /// The OS could not start a thread.
    pub fn start(
        name: impl Into<String>,
        capacity: usize,
        policy: Overflow,
        format: Box<dyn Format>,
        mut writer: impl RecordWriter,
    ) -> std::io::Result<Self> {
        let name = name.into();
        let (tx, rx): (Sender<Msg>, Receiver<Msg>) = bounded(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let logger_name = name.clone();
        let worker = std::thread::Builder::new()
            .name(format!("keel-log-{name}"))
            .spawn(move || {
                let mut buf = Vec::with_capacity(512);
                let write = |writer: &mut dyn RecordWriter, record: &Record, buf: &mut Vec<u8>| {
                    buf.clear();
                    format.format(record, buf);
                    writer.write_record(buf).is_ok()
                };
                while let Some(msg) = next_msg(&rx) {
                    let lost = c.unreported.swap(0, Ordering::AcqRel);
                    if lost > 0 {
                        let report = Record::new(
                            Level::Warn,
                            logger_name.clone(),
                            format!("{lost} records dropped"),
                        )
                        .with(vec![field("dropped", lost)]);
                        // Not counted: the stats account for the caller's records only.
                        let _ = write(&mut writer, &report, &mut buf);
                    }
                    match msg {
                        Msg::Record(r) => {
                            let counter = if write(&mut writer, &r, &mut buf) {
                                &c.written
                            } else {
                                &c.failed
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Msg::Flush(ack) => {
                            let _ = writer.flush();
                            let _ = ack.send(());
                        }
                        Msg::Stop(ack) => {
                            let _ = writer.flush();
                            let _ = ack.send(());
                            return;
                        }
                    }
                }
            })?;
        let family: prometheus_client::metrics::family::Family<
            Vec<(&'static str, String)>,
            prometheus_client::metrics::counter::Counter,
        > = keel_metrics::MetricsService::global()
            .get_or_register(
                "log_dropped",
                "Log records dropped because a sink's queue was full",
                Default::default,
            )
            .unwrap_or_default();
        let dropped_metric = family.get_or_create_owned(&vec![("sink", name.clone())]);
        Ok(Self {
            name,
            tx,
            policy,
            counters,
            dropped_metric,
            worker: std::sync::Mutex::new(Some(worker)),
        })
    }

    fn stats(&self, pending: u64) -> DeliveryStats {
        DeliveryStats {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            pending,
        }
    }

    fn drop_one(&self) {
        self.dropped_metric.inc();
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.unreported.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a control message and waits for its acknowledgement until `deadline`.
    fn control(&self, make: impl FnOnce(Sender<()>) -> Msg, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = bounded(1);
        if self.tx.send_deadline(make(ack_tx), deadline).is_err() {
            return false;
        }
        ack_rx.recv_deadline(deadline).is_ok()
    }
}

impl Sink for QueueSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&self, record: Record) {
        let msg = Msg::Record(record);
        let sent = match self.policy {
            Overflow::Block => self.tx.send(msg).is_ok(),
            Overflow::DropNewest => match self.tx.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
        };
        if !sent {
            self.drop_one();
        }
    }

    fn flush(&self, timeout: Duration) -> DeliveryStats {
        let done = self.control(Msg::Flush, timeout);
        self.stats(if done { 0 } else { self.tx.len() as u64 })
    }

    fn shutdown(&self, timeout: Duration) -> DeliveryStats {
        let done = self.control(Msg::Stop, timeout);
        if done
            && let Some(worker) = self
                .worker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            let _ = worker.join();
        }
        self.stats(if done { 0 } else { self.tx.len() as u64 })
    }
}
