/// Everything that can go wrong in `keel-log`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `type` of a logger config is not one this crate knows.
    #[error("unknown logger type {got:?}; valid types are: {valid}")]
    UnknownType {
        /// The rejected type.
        got: String,
        /// The valid types, comma separated.
        valid: String,
    },
    /// A known type whose sink is not compiled in (its cargo feature is off).
    #[error("logger type {kind:?} needs keel-log built with the `{feature}` feature")]
    NotAvailable {
        /// The type.
        kind: String,
        /// The cargo feature that provides it.
        feature: &'static str,
    },
    /// A config field has a bad value.
    #[error("invalid logger config field `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A config file could not be read.
    #[error("cannot read logger config {path}: {source}")]
    ConfigFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A level directive (`KEEL_LOG`, a config's `filter`) does not parse.
    #[error("invalid log filter directive {directive:?}: {reason}")]
    InvalidFilter {
        /// The directive.
        directive: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A config document could not be parsed.
    #[error("cannot parse logger config: {0}")]
    Parse(String),
    /// A logger with this name is already registered.
    #[error("a logger named {name:?} is already registered")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// No logger with this name is registered.
    #[error("no logger named {name:?} is registered")]
    UnknownLogger {
        /// The name.
        name: String,
    },
    /// A time zone name that the time zone database does not know.
    #[error("unknown time zone {name:?}: {reason}")]
    UnknownTimeZone {
        /// The name.
        name: String,
        /// Why it could not be loaded.
        reason: String,
    },
    /// A disk buffer directory is already used by another sink, in this process or another.
    #[error(
        "cannot start sink {sink:?}: its disk buffer {path} is in use by another sink or process (its lock file is held); give each sink its own buffer_path"
    )]
    BufferLocked {
        /// The sink.
        sink: String,
        /// The buffer directory.
        path: String,
    },
    /// A sink could not start (thread or I/O).
    #[error("cannot start sink {sink:?}: {source}")]
    Sink {
        /// The sink.
        sink: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<keel_config::Error> for Error {
    fn from(e: keel_config::Error) -> Self {
        match e {
            keel_config::Error::File { path, source } => Self::ConfigFile { path, source },
            keel_config::Error::UnknownExtension { path } => Self::InvalidConfig {
                field: "path".into(),
                reason: format!("{path}: unknown extension; use .toml, .yaml, .yml or .json"),
            },
            other => Self::Parse(other.to_string()),
        }
    }
}
