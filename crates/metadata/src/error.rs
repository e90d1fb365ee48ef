//! The metadata client's error type: one variant per way the server (or something pretending to
//! be it) can fail us, each carrying the URL so a log line says where.

use std::time::Duration;

/// The cause behind a connection-level failure (an I/O or HTTP library error).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

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
        source: Cause,
    },
    #[error("metadata request {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("metadata request {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: Cause,
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
            Error::Status { status: 429, .. } => "too-many-requests",
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

    /// The request never got an answer: the connection could not be made, timed out or was
    /// dropped. Such a failure may mean the chosen address is no longer the right one.
    pub fn is_connection_level(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Timeout { .. } | Error::Transport { .. }
        )
    }

    /// The server is down or busy rather than refusing us: no answer at all, a 5xx or a 429.
    /// Such failures end on their own and are retried about once a second; anything else (a 404
    /// for a deleted key, a 403, an answer without the flavor header) backs off further.
    pub fn is_outage(&self) -> bool {
        self.is_connection_level()
            || matches!(self, Error::Status { status, .. } if *status >= 500 || *status == 429)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_errors_are_the_ones_that_end_on_their_own() {
        let url = || "u".to_string();
        let rows: [(Error, bool, bool); 9] = [
            (
                Error::Status {
                    url: url(),
                    status: 503,
                },
                true,
                false,
            ),
            (
                Error::Status {
                    url: url(),
                    status: 500,
                },
                true,
                false,
            ),
            (
                Error::Status {
                    url: url(),
                    status: 429,
                },
                true,
                false,
            ),
            (
                Error::Status {
                    url: url(),
                    status: 404,
                },
                false,
                false,
            ),
            (
                Error::Status {
                    url: url(),
                    status: 403,
                },
                false,
                false,
            ),
            (
                Error::Connect {
                    url: url(),
                    source: "refused".into(),
                },
                true,
                true,
            ),
            (
                Error::Transport {
                    url: url(),
                    source: "reset".into(),
                },
                true,
                true,
            ),
            (
                Error::Timeout {
                    url: url(),
                    after: Duration::from_secs(1),
                },
                true,
                true,
            ),
            (Error::NotMetadataServer { url: url() }, false, false),
        ];
        for (e, outage, connection) in rows {
            assert_eq!(e.is_outage(), outage, "{e}");
            assert_eq!(e.is_connection_level(), connection, "{e}");
        }
    }
}
