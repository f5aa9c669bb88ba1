//! The `<ns>_es_*` metric families.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// `<ns>_es_*` metrics in the global registry, labelled by sink.
pub(super) struct EsMetrics {
    pub(super) documents: Family<Vec<(&'static str, String)>, Counter>,
    pub(super) requests: Family<Vec<(&'static str, String)>, Counter>,
    pub(super) buffer: Gauge,
    pub(super) dropped: Counter,
    pub(super) sink: String,
}

impl EsMetrics {
    pub(super) fn new(sink: &str) -> Self {
        let m = keel_metrics::MetricsService::global();
        let documents: Family<Vec<(&'static str, String)>, Counter> = m
            .get_or_register(
                "es_documents",
                "Documents handled by the Elasticsearch sink, by outcome (success, retried, rejected, exhausted)",
                Family::default,
            )
            .unwrap_or_default();
        let requests: Family<Vec<(&'static str, String)>, Counter> = m
            .get_or_register(
                "es_bulk_requests",
                "_bulk requests by outcome (success, partial, throttled, server_error, client_error, network)",
                Family::default,
            )
            .unwrap_or_default();
        let buffer: Family<Vec<(&'static str, String)>, Gauge> = m
            .get_or_register(
                "es_buffer_records",
                "Documents buffered by the Elasticsearch sink (queued, in flight or awaiting retry)",
                Family::default,
            )
            .unwrap_or_default();
        let dropped: Family<Vec<(&'static str, String)>, Counter> = m
            .get_or_register(
                "es_dropped",
                "Documents the Elasticsearch sink dropped because its buffer was full or it was stopped",
                Family::default,
            )
            .unwrap_or_default();
        let label = vec![("sink", sink.to_owned())];
        Self {
            buffer: buffer.get_or_create_owned(&label),
            dropped: dropped.get_or_create_owned(&label),
            documents,
            requests,
            sink: sink.to_owned(),
        }
    }

    pub(super) fn documents(&self, status: &'static str, n: u64) {
        if n > 0 {
            self.documents
                .get_or_create(&vec![
                    ("sink", self.sink.clone()),
                    ("status", status.into()),
                ])
                .inc_by(n);
        }
    }

    pub(super) fn request(&self, status: &'static str) {
        self.requests
            .get_or_create(&vec![
                ("sink", self.sink.clone()),
                ("status", status.into()),
            ])
            .inc();
    }
}
