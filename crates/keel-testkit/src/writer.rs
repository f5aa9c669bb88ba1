//! An in-memory `Write` destination for sink tests.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes written by a sink's writer thread, shared with the test. Holding [`gate`](Self::gate)
/// stalls the writer inside `write` (to fill a queue on purpose); [`started`](Self::started)
/// counts writes that have begun.
#[derive(Clone, Default, Debug)]
pub struct SharedBuffer {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Locked by every `write`; hold it to stall the writer.
    pub gate: Arc<Mutex<()>>,
    started: Arc<AtomicUsize>,
}

impl Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        self.bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuffer {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// Every line parsed as JSON (panics on a line that is not JSON).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// How many writes have begun (including one stalled at the gate).
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// A `Write` destination that holds written bytes back until `flush`, like a file's buffer,
/// optionally taking `delay` per write (a writer slower than its callers, so its sink's queue
/// never drains and the sink flushes only when asked or by its interval). Clones share what
/// was published.
#[derive(Clone, Default, Debug)]
pub struct FlushGated {
    pending: Vec<u8>,
    published: Arc<Mutex<Vec<u8>>>,
    delay: std::time::Duration,
}

impl FlushGated {
    /// A writer that takes `delay` per write.
    pub fn slow(delay: std::time::Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Everything flushed so far, as text.
    pub fn published(&self) -> String {
        String::from_utf8_lossy(
            &self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_owned()
    }
}

impl Write for FlushGated {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.pending.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(&mut self.pending);
        Ok(())
    }
}
