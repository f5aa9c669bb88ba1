/// Everything that can go wrong in `keel-metrics`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace is not a valid Prometheus metric name prefix.
    #[error("invalid metrics namespace {namespace:?}: use [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidNamespace {
        /// The rejected namespace.
        namespace: String,
    },
    /// A metric name is not a valid Prometheus metric name.
    #[error("invalid metric name {name:?}: use [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A metric was already registered under this name with a different type.
    #[error("metric {name:?} is already registered with a different type")]
    TypeMismatch {
        /// The metric name (without namespace).
        name: String,
    },
    /// The `/metrics` listener could not bind or serve.
    #[error("metrics listener on {addr}: {source}")]
    Listen {
        /// The address that was asked for.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
