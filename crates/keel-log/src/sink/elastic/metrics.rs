//! The `<ns>_es_*` metric families.

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

type Labels = Vec<(&'static str, String)>;

/// `<ns>_es_*` metrics in the global registry, labelled by sink.
pub(super) struct EsMetrics {
    documents: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    pub(super) buffer: Gauge,
    pub(super) dropped: Counter,
    /// Documents written to the dead-letter file.
    pub(super) dead_letters: Counter,
    /// Damaged regions of the disk buffer skipped.
    pub(super) disk_corrupt: Counter,
    sink: String,
}

/// The family `name` from the global registry (registered on first use; a second sink with
/// the same family shares it).
fn family<
    M: EncodeMetric + TypedMetric + Clone + Default + Send + Sync + std::fmt::Debug + 'static,
>(
    name: &str,
    help: &str,
) -> Family<Labels, M> {
    keel_metrics::MetricsService::global()
        .get_or_register(name, help, Family::default)
        .unwrap_or_default()
}

impl EsMetrics {
    pub(super) fn new(sink: &str) -> Self {
        let label = vec![("sink", sink.to_owned())];
        let one =
            |name: &str, help: &str| family::<Counter>(name, help).get_or_create_owned(&label);
        Self {
            documents: family(
                "es_documents",
                "Documents handled by the Elasticsearch sink, by outcome (success, retried, rejected, exhausted)",
            ),
            requests: family(
                "es_bulk_requests",
                "_bulk requests by outcome (success, partial, throttled, server_error, client_error, network)",
            ),
            buffer: family::<Gauge>(
                "es_buffer_records",
                "Documents buffered by the Elasticsearch sink (queued, in flight or awaiting retry)",
            )
            .get_or_create_owned(&label),
            dropped: one(
                "es_dropped",
                "Documents the Elasticsearch sink dropped because its buffer was full or it was stopped",
            ),
            dead_letters: one(
                "es_dead_letters",
                "Documents the Elasticsearch sink wrote to its dead-letter file",
            ),
            disk_corrupt: one(
                "es_disk_buffer_corrupt",
                "Damaged regions (torn or failing their checksum) skipped in the Elasticsearch sink's disk buffer",
            ),
            sink: sink.to_owned(),
        }
    }

    /// The `up` gauge and the ok/failed request counters of one endpoint.
    pub(super) fn endpoint(&self, url: &str) -> (Gauge, Counter, Counter) {
        let requests: Family<Labels, Counter> = family(
            "es_endpoint_requests",
            "_bulk requests per endpoint: ok (answered) or failed (connection or server error)",
        );
        let label = |status: &str| {
            vec![
                ("sink", self.sink.clone()),
                ("endpoint", url.to_owned()),
                ("status", status.to_owned()),
            ]
        };
        let up = family::<Gauge>(
            "es_endpoint_up",
            "1 while an Elasticsearch endpoint is in rotation, 0 while it is out and health-checked",
        )
        .get_or_create_owned(&vec![("sink", self.sink.clone()), ("endpoint", url.to_owned())]);
        (
            up,
            requests.get_or_create_owned(&label("ok")),
            requests.get_or_create_owned(&label("failed")),
        )
    }

    fn labels(&self, status: &'static str) -> Labels {
        vec![("sink", self.sink.clone()), ("status", status.into())]
    }

    pub(super) fn documents(&self, status: &'static str, n: u64) {
        if n > 0 {
            self.documents.get_or_create(&self.labels(status)).inc_by(n);
        }
    }

    pub(super) fn request(&self, status: &'static str) {
        self.requests.get_or_create(&self.labels(status)).inc();
    }
}
