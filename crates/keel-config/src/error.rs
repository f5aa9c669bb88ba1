/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    File {
        /// The path given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's extension names no format this crate reads.
    #[error("config file {path}: unknown extension; use .toml, .yaml, .yml or .json")]
    UnknownExtension {
        /// The path given.
        path: String,
    },
    /// The text is not valid in its format, or does not fit the config's shape. The message
    /// names the position where the format's parser gives one, and never shows a URL's
    /// credentials or a [`Secret`](crate::Secret)'s value.
    #[error("invalid {format} config: {message}")]
    Parse {
        /// `toml`, `yaml` or `json`.
        format: &'static str,
        /// What the parser said.
        message: String,
    },
}
