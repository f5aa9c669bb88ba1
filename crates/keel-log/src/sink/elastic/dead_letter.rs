//! The dead-letter file: documents the server rejected (or that exhausted their retries), as
//! JSON lines with the reason. Bounded: the file rotates at a quarter of
//! `dead_letter_max_bytes` and rotated files are deleted oldest first (by the file sink's
//! retention, on its background thread) to keep them within half of it. A dead-lettered document is still an error: it is counted, reported through
//! `last_error()` and stderr, and in `<ns>_es_dead_letters_total`.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::sender::Sender;
use super::state::Doc;
use crate::error::Error;
use crate::format::JsonFormat;
use crate::record::{Level, Record, Value, field};
use crate::sink::file::{FileOptions, FileSink};
use crate::sink::{Overflow, Sink as _};

/// Starts the dead-letter file sink of the sink `name`.
pub(super) fn open(name: &str, path: &Path, max_bytes: u64) -> Result<FileSink, Error> {
    let dl_name = format!("{name}:dead-letter");
    let mut options = FileOptions::new(path);
    // The live file a quarter, rotated files half: the last quarter is room for rotations
    // the background retention (which deletes the oldest) has not pruned yet.
    options.max_bytes = Some(max_bytes / 4);
    options.max_total_bytes = Some(max_bytes / 2);
    FileSink::start(
        &dl_name,
        options,
        1024,
        Overflow::Block,
        Box::new(JsonFormat),
    )
    .map_err(|source| Error::Sink {
        sink: dl_name,
        source,
    })
}

impl Sender {
    pub(super) fn reject_all(&self, batch: &[Doc], status: u16, why: &str) {
        for doc in batch.iter() {
            self.dead_letter(doc, status, why, "rejected");
        }
    }

    /// Counts a document that will not be delivered, reports it, and writes it (with why) to
    /// the dead-letter file when there is one.
    pub(super) fn dead_letter(&self, doc: &Doc, status: u16, why: &str, outcome: &'static str) {
        if !doc.counted {
            return;
        }
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.documents(outcome, 1);
        self.shared.note_error(&format!(
            "a document was not delivered (HTTP {status}): {why}"
        ));
        let Some(sink) = &self.shared.dead_letter else {
            return;
        };
        let text = String::from_utf8_lossy(&doc.bytes);
        let mut lines = text.lines();
        let mut next_json = || -> serde_json::Value {
            lines
                .next()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_default()
        };
        let action = next_json();
        let source = next_json();
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
        self.dead_letters_unflushed.set(true);
        self.shared.metrics.dead_letters.inc();
    }
}
