//! The metadata client's error type: one variant per way the server (or something pretending to
//! be it) can fail us, each carrying the URL so a log line says where.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid metadata base URL {url:?}: {reason}")]
    BadBaseUrl { url: String, reason: String },
    #[error("could not build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    #[error("cannot connect to the metadata server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("metadata request {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("metadata request {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("metadata server answered {status} for {url}")]
    Status { url: String, status: u16 },
    #[error("response from {url} has no `Metadata-Flavor: Google` header: not the metadata server")]
    NotMetadataServer { url: String },
    #[error("response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("response from {url} is not valid JSON for the expected shape: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("response from {url} is not UTF-8")]
    NotUtf8 { url: String },
}

impl Error {
    /// A short, stable name for the kind of failure, so a watcher can log a failure once when it
    /// starts and once when it clears instead of on every retry.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadBaseUrl { .. } => "bad-url",
            Error::Build(_) => "build",
            Error::Connect { .. } => "connect",
            Error::Timeout { .. } => "timeout",
            Error::Transport { .. } => "transport",
            Error::Status { status, .. } if *status >= 500 => "server-error",
            Error::Status { .. } => "status",
            Error::NotMetadataServer { .. } => "no-flavor",
            Error::TooLarge { .. } => "too-large",
            Error::Decode { .. } => "decode",
            Error::NotUtf8 { .. } => "not-utf8",
        }
    }

    /// The HTTP status, when the server answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
