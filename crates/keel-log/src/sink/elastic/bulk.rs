//! The `_bulk` request: building and sending the body, reading the answer per item, and the
//! size estimate the buffer bound counts.

use std::io::Write as _;

use super::endpoints::authorize;
use super::sender::Sender;
use super::state::Doc;
use crate::record::{Record, Value};

/// What one `_bulk` request came to.
pub(super) enum Outcome {
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
pub(super) struct ErrorsFlag {
    #[serde(default)]
    pub(super) errors: bool,
}

#[derive(serde::Deserialize)]
pub(super) struct BulkResponse {
    pub(super) items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(serde::Deserialize)]
pub(super) struct BulkItem {
    pub(super) status: u16,
    #[serde(default)]
    pub(super) error: Option<serde_json::Value>,
}

impl Sender {
    pub(super) async fn send(&self, batch: &[Doc], url: reqwest::Url) -> Outcome {
        let mut body = Vec::with_capacity(batch.iter().map(|d| d.bytes.len()).sum());
        for doc in batch {
            body.extend_from_slice(&doc.bytes);
        }
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        // During shutdown a request ends by the deadline, not only by the request timeout.
        let deadline = self.shared.lock().deadline;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            request = request.timeout(left.min(self.shared.opts.timeout));
        }
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
        request = authorize(request, &self.shared.opts.auth);
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
            // A proxy or load balancer timed out (408, nginx's 499): the request may have
            // been applied or not; either way a retry is safe (deterministic ids).
            408 | 499 => {
                return Outcome::Retry("network", format!("HTTP {status} (a proxy timed out)"));
            }
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
pub(super) fn count_items(text: &[u8]) -> Option<usize> {
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
pub(super) fn estimate(record: &Record, index_len: usize) -> usize {
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
pub(super) fn describe(e: &serde_json::Value) -> String {
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
    fn item_counting_reads_only_the_array() {
        assert_eq!(
            count_items(br#"{"took":1,"errors":false,"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#),
            Some(2)
        );
        assert_eq!(count_items(br#"{"errors":false}"#), None);
    }
}
