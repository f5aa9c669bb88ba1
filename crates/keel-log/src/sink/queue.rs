//! [`QueueSink`]: a bounded queue drained by one writer thread that formats, writes and
//! flushes records by the [`FlushPolicy`], counting every record exactly once as written,
//! dropped or failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use prometheus_client::metrics::counter::Counter;

use super::{
    DeliveryStats, FlushPolicy, Overflow, RecordWriter, Sink, deadline_after, sink_counter,
};
use crate::format::Format;
use crate::record::{Level, Record, field};

// Records are held inline in the queue's slots on purpose: a boxed record would be freed by
// the writer thread and reallocated by the caller while its cache lines still sit in the
// writer's cache, which made each call pay for pulling them back (see docs/logging.md).
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Record),
    Flush(Sender<()>),
    /// Stop, finishing the writer's background work by the deadline.
    Stop(Sender<()>, Instant),
}

/// What the callers and the writer thread share.
struct Shared {
    name: String,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Records queued, or taken by the writer and not yet written or failed (`pending`).
    queued: AtomicU64,
    /// Dropped since the last in-band report.
    unreported: AtomicU64,
    /// Set by `shutdown` before it queues the stop: later records are dropped at once.
    stopped: AtomicBool,
    /// Set when the writer thread has exited (normally or by a panic): whoever queues
    /// something after that drains the queue itself, so nothing is left there uncounted.
    finished: AtomicBool,
    rx: Receiver<Msg>,
    /// `<ns>_log_dropped_total{sink}` in the global registry.
    dropped_metric: Counter,
    /// `<ns>_log_write_errors_total{sink}` in the global registry.
    errors_metric: Counter,
}

impl Shared {
    fn drop_one(&self, report_in_band: bool) {
        self.dropped_metric.inc();
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if report_in_band {
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` records the writer had taken failed.
    fn fail(&self, n: u64) {
        if n > 0 {
            self.failed.fetch_add(n, Ordering::Relaxed);
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.errors_metric.inc_by(n);
        }
    }

    /// `n` records the writer had taken were written.
    fn wrote(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Empties the queue once the writer is gone: records count as dropped, control messages
    /// are answered.
    fn drain(&self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Record(_) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    self.drop_one(false);
                }
                Msg::Flush(ack) | Msg::Stop(ack, _) => {
                    let _ = ack.send(());
                }
            }
        }
    }
}

/// Marks the writer finished and drains the queue when the writer thread ends, by returning
/// or by a panic (so callers blocked on a full queue are released).
struct FinishGuard(Arc<Shared>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.finished.store(true, Ordering::SeqCst);
        self.0.drain();
    }
}

/// How long the writer naps when its queue is empty, and how many naps before it blocks.
const NAP: Duration = Duration::from_micros(50);
const NAPS: u32 = 20;

/// The next message for a writer thread whose queue just ran empty (`None` once every sender
/// is gone). While records keep coming the writer never blocks on the channel, so callers
/// never pay for waking it (a futex wake costs more than the whole logging call); only after
/// about a millisecond without records does it block until the next one.
fn next_msg(rx: &Receiver<Msg>) -> Option<Msg> {
    for _ in 0..NAPS {
        std::thread::sleep(NAP);
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
    }
    rx.recv().ok()
}

/// The writer thread's side: formats, writes, flushes by the policy, counts.
struct Worker<W> {
    shared: Arc<Shared>,
    writer: W,
    format: Box<dyn Format>,
    policy: FlushPolicy,
    buf: Vec<u8>,
    /// Records the writer accepted since the last flush: written once a flush succeeds,
    /// failed when it fails.
    buffered: u64,
    /// Bytes (an in-band report) were written since the last flush.
    dirty: bool,
    last_flush: Instant,
    /// Records failed in the current error episode (reported on stderr once per episode).
    episode: u64,
}

impl<W: RecordWriter> Worker<W> {
    fn run(mut self) {
        let rx = self.shared.rx.clone();
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                // The sink was dropped without a shutdown: what was written still goes out.
                Err(TryRecvError::Disconnected) => return self.flush_now(),
                Err(TryRecvError::Empty) => {
                    // The queue drained: what was written goes to the file now.
                    self.flush_now();
                    match next_msg(&rx) {
                        Some(msg) => msg,
                        None => return self.flush_now(),
                    }
                }
            };
            self.report_drops();
            match msg {
                Msg::Record(record) => {
                    self.write(&record);
                    if self.policy.interval.is_zero()
                        || self.last_flush.elapsed() >= self.policy.interval
                    {
                        self.flush_now();
                    }
                }
                Msg::Flush(ack) => {
                    self.flush_now();
                    let _ = ack.send(());
                }
                Msg::Stop(ack, deadline) => {
                    self.flush_now();
                    self.writer.close(deadline);
                    // Whatever was queued behind the stop is dropped and counted; the
                    // `FinishGuard` then answers anything that arrives later.
                    self.shared.finished.store(true, Ordering::SeqCst);
                    self.shared.drain();
                    let _ = ack.send(());
                    return;
                }
            }
        }
    }

    fn report_drops(&mut self) {
        let lost = self.shared.unreported.swap(0, Ordering::AcqRel);
        if lost > 0 {
            let report = Record::new(
                Level::Warn,
                self.shared.name.clone(),
                format!("{lost} records dropped"),
            )
            .with(vec![field("dropped", lost)]);
            // Not counted: the stats account for the caller's records only.
            self.buf.clear();
            self.format.format(&report, &mut self.buf);
            self.dirty |= self.writer.write_record(&self.buf).is_ok();
        }
    }

    fn write(&mut self, record: &Record) {
        self.buf.clear();
        self.format.format(record, &mut self.buf);
        match self.writer.write_record(&self.buf) {
            Ok(()) => self.buffered += 1,
            Err(e) => {
                self.shared.fail(1);
                self.trouble(&e, 1);
            }
        }
    }

    fn flush_now(&mut self) {
        if self.buffered == 0 && !self.dirty {
            return;
        }
        let result = if self.policy.sync {
            self.writer.sync()
        } else {
            self.writer.flush()
        };
        let n = std::mem::take(&mut self.buffered);
        self.dirty = false;
        self.last_flush = Instant::now();
        match result {
            Ok(()) => {
                self.shared.wrote(n);
                if self.episode > 0 && n > 0 {
                    eprintln!(
                        "keel-log: sink {:?} is writing again ({} records failed meanwhile)",
                        self.shared.name, self.episode
                    );
                    self.episode = 0;
                }
            }
            Err(e) => {
                self.shared.fail(n);
                self.trouble(&e, n);
            }
        }
    }

    /// Reports the first failure of an episode on stderr (the counter has every one).
    fn trouble(&mut self, error: &std::io::Error, failed: u64) {
        if self.episode == 0 {
            eprintln!(
                "keel-log: sink {:?} cannot write: {error}; records fail until it recovers \
                 (retried with backoff, counted in log_write_errors_total)",
                self.shared.name
            );
        }
        self.episode += failed.max(1);
    }
}

/// A bounded queue drained by one writer thread that formats and writes records.
pub struct QueueSink {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    policy: Overflow,
    worker: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for QueueSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSink")
            .field("name", &self.shared.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl QueueSink {
    /// Starts the writer thread with the default [`FlushPolicy`]. `capacity` is the queue
    /// bound in records (at least 1); the queue's slots hold records inline
    /// (`size_of::<Record>()` each, allocated here).
    ///
    /// # Errors
    /// The OS could not start a thread.
    pub fn start(
        name: impl Into<String>,
        capacity: usize,
        policy: Overflow,
        format: Box<dyn Format>,
        writer: impl RecordWriter,
    ) -> std::io::Result<Self> {
        Self::start_with_flush(
            name,
            capacity,
            policy,
            FlushPolicy::default(),
            format,
            writer,
        )
    }

    /// Like [`start`](Self::start), flushing the writer by `flush`.
    ///
    /// # Errors
    /// The OS could not start a thread.
    pub fn start_with_flush(
        name: impl Into<String>,
        capacity: usize,
        policy: Overflow,
        flush: FlushPolicy,
        format: Box<dyn Format>,
        writer: impl RecordWriter,
    ) -> std::io::Result<Self> {
        let name = name.into();
        let (tx, rx): (Sender<Msg>, Receiver<Msg>) = bounded(capacity.max(1));
        let shared = Arc::new(Shared {
            dropped_metric: sink_counter(
                "log_dropped",
                "Log records dropped because a sink's queue was full",
                &name,
            ),
            errors_metric: sink_counter(
                "log_write_errors",
                "Log records a sink failed to write (I/O errors)",
                &name,
            ),
            name,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            rx,
        });
        let worker = Worker {
            shared: shared.clone(),
            writer,
            format,
            policy: flush,
            buf: Vec::with_capacity(512),
            buffered: 0,
            dirty: false,
            last_flush: Instant::now(),
            episode: 0,
        };
        let guard = FinishGuard(shared.clone());
        let worker = std::thread::Builder::new()
            .name(format!("keel-log-{}", shared.name))
            .spawn(move || {
                let _guard = guard;
                worker.run();
            })?;
        Ok(Self {
            shared,
            tx,
            policy,
            worker: std::sync::Mutex::new(Some(worker)),
        })
    }

    fn stats(&self) -> DeliveryStats {
        let s = &self.shared;
        DeliveryStats {
            written: s.written.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            pending: s.queued.load(Ordering::Relaxed),
        }
    }

    /// Queues `msg` by the overflow policy, waiting at most until `deadline` under `Block`.
    /// A record that was not queued is counted as dropped.
    fn send_record(&self, record: Record, deadline: Option<Instant>) -> bool {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::SeqCst) {
            shared.drop_one(false);
            return false;
        }
        let msg = Msg::Record(record);
        // Counted before it is sent: the writer may count it as written at once.
        shared.queued.fetch_add(1, Ordering::Relaxed);
        let sent = match (self.policy, deadline) {
            (Overflow::Block, None) => self.tx.send(msg).is_ok(),
            (Overflow::Block, Some(deadline)) => self.tx.send_deadline(msg, deadline).is_ok(),
            (Overflow::DropNewest, _) => match self.tx.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
        };
        if !sent {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared.drop_one(true);
        }
        if shared.finished.load(Ordering::SeqCst) {
            // The writer is gone: count what we (or anyone) left in the queue.
            shared.drain();
        }
        sent
    }

    /// Sends a control message and waits for its acknowledgement until the deadline.
    fn control(&self, make: impl FnOnce(Sender<()>) -> Msg, timeout: Duration) -> bool {
        let deadline = deadline_after(timeout);
        let (ack_tx, ack_rx) = bounded(1);
        if self.tx.send_deadline(make(ack_tx), deadline).is_err() {
            return false;
        }
        loop {
            if self.shared.finished.load(Ordering::SeqCst) {
                // Answers our own message too, if the writer left it behind.
                self.shared.drain();
            }
            let now = Instant::now();
            if now >= deadline {
                return ack_rx.try_recv().is_ok();
            }
            let slice = (deadline - now).min(Duration::from_millis(20));
            match ack_rx.recv_timeout(slice) {
                Ok(()) => return true,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return false,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Sink for QueueSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn write(&self, record: Record) {
        self.send_record(record, None);
    }

    fn write_within(&self, record: Record, timeout: Duration) -> bool {
        self.send_record(record, Some(deadline_after(timeout)))
    }

    fn flush(&self, timeout: Duration) -> DeliveryStats {
        self.control(Msg::Flush, timeout);
        self.stats()
    }

    fn shutdown(&self, timeout: Duration) -> DeliveryStats {
        self.shared.stopped.store(true, Ordering::SeqCst);
        let deadline = deadline_after(timeout);
        let done = self.control(|ack| Msg::Stop(ack, deadline), timeout);
        if done
            && let Some(worker) = self
                .worker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            let _ = worker.join();
        }
        self.stats()
    }
}
