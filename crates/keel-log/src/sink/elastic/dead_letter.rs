//! The dead-letter file: documents the server rejected, as JSON lines with the reason.

use std::sync::atomic::Ordering;

use super::sender::Sender;
use super::state::Doc;
use crate::record::{Level, Record, Value, field};
use crate::sink::Sink as _;

impl Sender {
    pub(super) fn reject_all(&self, batch: &[Doc], status: u16, why: &str) {
        for doc in batch.iter() {
            self.dead_letter(doc, status, why, "rejected");
        }
    }

    /// Writes a rejected document (with why) to the dead-letter file and counts it.
    pub(super) fn dead_letter(&self, doc: &Doc, status: u16, why: &str, outcome: &'static str) {
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
}
