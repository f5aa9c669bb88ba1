//! The sender thread: takes batches from the buffer, sends them, reads the answers, retries
//! with backoff and jitter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::bulk::Outcome;
use super::disk_buffer::SYNC_EVERY;
use super::endpoints::Endpoints;
use super::state::{Doc, Shared};
use crate::record::{Level, Record, field};
use crate::sink::Sink as _;

pub(super) struct Sender {
    pub(super) shared: Arc<Shared>,
    pub(super) client: reqwest::Client,
    pub(super) endpoints: Endpoints,
    /// Consecutive failed rounds (drives the backoff).
    pub(super) failures: u32,
    pub(super) rng: u64,
    /// When the disk buffer was last synced and acknowledged.
    pub(super) last_checkpoint: Instant,
    /// Documents went to the dead-letter sink and may still be in its queue: the disk
    /// buffer's `ack` must not move past them until that sink has written them.
    pub(super) dead_letters_unflushed: std::cell::Cell<bool>,
}

/// How long the sender waits for the dead-letter sink to write what it was given.
const DEAD_LETTER_FLUSH: Duration = Duration::from_secs(5);

impl Sender {
    pub(super) fn backoff(&mut self) -> Duration {
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
    pub(super) async fn sleep(&self, until: Option<Instant>) {
        let notified = self.shared.wake.notified();
        match until {
            Some(t) => {
                let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(t), notified).await;
            }
            None => notified.await,
        }
    }

    /// Waits (bounded) for the dead-letter sink to write the documents given to it; `true`
    /// when nothing given to it is left unwritten.
    pub(super) fn flush_dead_letters(&self) -> bool {
        if !self.dead_letters_unflushed.get() {
            return true;
        }
        let Some(sink) = &self.shared.dead_letter else {
            self.dead_letters_unflushed.set(false);
            return true;
        };
        if sink.flush(DEAD_LETTER_FLUSH).pending == 0 {
            self.dead_letters_unflushed.set(false);
        }
        !self.dead_letters_unflushed.get()
    }

    pub(super) async fn run(mut self) {
        self.deliver().await;
        // Releases the disk buffer's lock (what is left in it waits for the next start).
        self.shared.lock().disk = None;
        if let Some(dl) = &self.shared.dead_letter {
            let _ = dl.shutdown(Duration::from_secs(5));
        }
    }

    pub(super) async fn deliver(&mut self) {
        let mut retry: VecDeque<Doc> = VecDeque::new();
        let mut not_before: Option<Instant> = None;
        let mut batch_cap = self.shared.opts.batch_records;
        // Shutdown makes one attempt at once, whatever the backoff says: the server may be
        // back, and the deadline may not outlast the delay.
        let mut final_attempt_made = false;
        loop {
            // A dead-letter flush that timed out is tried again (unlocked) before a checkpoint.
            self.flush_dead_letters();
            // The disk buffer's active segment, when it is due for a sync (done unlocked).
            let to_sync;
            // Decide whether a batch leaves now.
            let (batch, wait_until) = {
                let shared = self.shared.clone();
                let mut state = shared.lock();
                if state.abandon {
                    let _ = self
                        .checkpoint(&mut state, &retry, true)
                        .map(|f| f.sync_data());
                    return;
                }
                self.refill(&mut state);
                to_sync = self.checkpoint(&mut state, &retry, false);
                let now = Instant::now();
                let backing_off =
                    (final_attempt_made || !state.closing) && not_before.is_some_and(|t| now < t);
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
                    let _ = self
                        .checkpoint(&mut state, &retry, true)
                        .map(|f| f.sync_data());
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
                    // With a disk buffer, wake for its syncs and acknowledgements too.
                    let until = match (&state.disk, until) {
                        (Some(_), Some(t)) => Some(t.min(self.last_checkpoint + SYNC_EVERY)),
                        (_, until) => until,
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
                    final_attempt_made |= state.closing;
                    (Some(batch), None)
                }
            };
            if let Some(file) = to_sync {
                let _ = file.sync_data();
            }
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
            self.endpoints
                .check(&self.client, &self.shared.opts.auth)
                .await;
            let endpoint = self.endpoints.pick();
            let outcome = self.send(&batch, self.endpoints.bulk(endpoint)).await;
            // A connection or server failure takes the endpoint out of rotation; with another
            // one up the batch goes there at once instead of waiting out the backoff.
            let endpoint_failed = matches!(outcome, Outcome::Retry("network" | "server_error", _));
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
                        } else if status == 429 {
                            // Throttling is the cluster asking for time, not a verdict on the
                            // document: it waits in the buffer (whose bound is what an
                            // unending storm can cost) instead of going to the dead letters.
                            retried += 1;
                            retry.push_back(doc);
                        } else if status >= 500 {
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
            if endpoint_failed {
                self.endpoints.failed(endpoint);
                if self.endpoints.any_up() {
                    not_before = None;
                }
            } else {
                self.endpoints.succeeded(endpoint);
            }
            // Dead-lettered documents are finished, and the next checkpoint may acknowledge
            // them in the disk buffer: they must be in the dead-letter file first (written
            // before the `ack` file, so a kill in between loses them from neither).
            self.flush_dead_letters();
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
    pub(super) fn drop_report(&self, lost: u64) -> Doc {
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
            pos: None,
        }
    }
}
