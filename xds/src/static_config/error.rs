//! Why a static file was rejected.

/// Why a static file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes; at most {max} allowed")]
    TooLarge { path: String, len: u64, max: u64 },
    /// Not valid YAML for the schema; the message names the field path, line and column.
    #[error("{0}")]
    Syntax(String),
    /// Valid YAML, but the content does not hold together.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

pub(super) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> StaticConfigError {
    StaticConfigError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}
