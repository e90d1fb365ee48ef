//! Downloading `<type>-script-url`: Cloud Storage objects with the default service account's
//! token, other URLs without credentials; retried with backoff, bounded in time and size.
//!
//! Transport: plain `http://` goes through reqwest, `https://` through `curl`. The workspace's
//! reqwest is built without TLS on purpose (the metadata server is plain HTTP); turning on a
//! rustls feature here would be unified into every daemon of a workspace build, and with
//! `rustls-no-provider` every other daemon's `reqwest::Client` build would panic for want of an
//! installed crypto provider. `curl` is on every GCE image; the token reaches it on stdin
//! (`--config -`), never on its command line where any local user could read it.

use std::path::Path;
use std::time::{Duration, Instant};

use gce_agent::cmd::{self, RunOpts};
use serde::Deserialize;

use crate::url::{Download, UrlError, classify};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// `[MetadataScripts] gcs_endpoint`: where Cloud Storage objects are fetched from.
    pub gcs_endpoint: String,
    /// Tries per download (the first one included).
    pub attempts: u32,
    /// Wait before the second try; doubled for each later one.
    pub backoff: Duration,
    /// Bound on one download, all tries included.
    pub total_timeout: Duration,
    /// Largest script accepted.
    pub max_size: usize,
    /// The `curl` used for https.
    pub curl: String,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            gcs_endpoint: crate::url::DEFAULT_GCS_ENDPOINT.to_string(),
            attempts: 3,
            backoff: Duration::from_secs(1),
            total_timeout: Duration::from_secs(60),
            max_size: 32 << 20,
            curl: "curl".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("cannot get the default service account token: {0}")]
    Token(String),
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: gave up after {tries} tries in {elapsed:?}: {last}")]
    GaveUp {
        url: String,
        tries: u32,
        elapsed: Duration,
        last: Box<FetchError>,
    },
}

impl FetchError {
    /// Worth another try: transport trouble, 408, 429 and 5xx. Other 4xx answers are final.
    fn retriable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            FetchError::Transport { .. } | FetchError::Token(_) => true,
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

/// Fetches script URLs; caches the token for the run (they live an hour; a run is minutes).
pub struct Fetcher {
    http: reqwest::Client,
    metadata: gce_metadata::Client,
    opts: FetchOptions,
    token: Option<String>,
}

impl Fetcher {
    pub fn new(metadata: gce_metadata::Client, opts: FetchOptions) -> Result<Fetcher, FetchError> {
        let http = reqwest::Client::builder()
            // Redirects keep the bearer token only on the same host (reqwest strips
            // Authorization across hosts).
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gce-guest-agents/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport {
                url: String::new(),
                reason: format!("cannot build HTTP client: {e}"),
            })?;
        Ok(Fetcher {
            http,
            metadata,
            opts,
            token: None,
        })
    }

    /// Download `url` (any SPEC §5 form). `scratch` is a private directory for curl's output.
    pub async fn fetch(&mut self, url: &str, scratch: &Path) -> Result<Vec<u8>, FetchError> {
        let dl = classify(url, &self.opts.gcs_endpoint)?;
        let started = Instant::now();
        let deadline = started + self.opts.total_timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.try_once(&dl, deadline, scratch).await;
            let err = match result {
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            let wait = self.opts.backoff.saturating_mul(1 << (tries - 1).min(10));
            let out_of_time = Instant::now() + wait >= deadline;
            if !err.retriable() || tries >= self.opts.attempts || out_of_time {
                if tries == 1 {
                    return Err(err);
                }
                return Err(FetchError::GaveUp {
                    url: dl.url,
                    tries,
                    elapsed: started.elapsed(),
                    last: Box::new(err),
                });
            }
            tracing::warn!(
                "download of {} failed (try {tries}), retrying in {wait:?}: {err}",
                dl.url
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn try_once(
        &mut self,
        dl: &Download,
        deadline: Instant,
        scratch: &Path,
    ) -> Result<Vec<u8>, FetchError> {
        let token = if dl.authenticated {
            Some(self.token().await?)
        } else {
            None
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if dl.url.starts_with("https://") {
            self.curl(dl, token.as_deref(), left, scratch).await
        } else {
            self.plain(dl, token.as_deref(), left).await
        }
    }

    async fn token(&mut self) -> Result<String, FetchError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let t: Token = self
            .metadata
            .get_json("instance/service-accounts/default/token")
            .await
            .map_err(|e| FetchError::Token(e.to_string()))?;
        // It goes into a curl config line and an HTTP header: refuse anything odd.
        let ok = !t.access_token.is_empty()
            && t.access_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        if !ok {
            return Err(FetchError::Token(
                "the token has unexpected characters".into(),
            ));
        }
        self.token = Some(t.access_token.clone());
        Ok(t.access_token)
    }

    async fn plain(
        &self,
        dl: &Download,
        token: Option<&str>,
        left: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: dl.url.clone(),
            reason: if e.is_timeout() {
                format!("timed out after {left:?}")
            } else {
                error_chain(&e)
            },
        };
        let mut req = self.http.get(&dl.url).timeout(left);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status {
                url: dl.url.clone(),
                status,
            });
        }
        let too_large = || FetchError::TooLarge {
            url: dl.url.clone(),
            limit: self.opts.max_size,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.opts.max_size as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > self.opts.max_size {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn curl(
        &self,
        dl: &Download,
        token: Option<&str>,
        left: Duration,
        scratch: &Path,
    ) -> Result<Vec<u8>, FetchError> {
        let out = scratch.join(".download");
        let _ = std::fs::remove_file(&out);
        let secs = left.as_secs().max(1).to_string();
        let mut argv: Vec<String> = [
            self.opts.curl.as_str(),
            "--silent",
            "--show-error",
            "--proto",
            "=https",
            "--connect-timeout",
            "10",
            "--max-time",
            &secs,
            "--max-filesize",
            &self.opts.max_size.to_string(),
            "--output",
            &out.to_string_lossy(),
            "--write-out",
            "%{http_code}",
            "--config",
            "-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if token.is_none() {
            // Only unauthenticated downloads follow redirects.
            argv.extend(
                ["--location", "--max-redirs", "5", "--proto-redir", "=https"].map(String::from),
            );
        }
        argv.push("--".to_string());
        argv.push(dl.url.clone());
        let config = match token {
            Some(t) => format!("header = \"Authorization: Bearer {t}\"\n"),
            None => String::new(),
        };
        let opts = RunOpts {
            timeout: left + Duration::from_secs(5),
            stdin: Some(config.into_bytes()),
            ..RunOpts::default()
        };
        let result = cmd::run_status(&argv, &opts).await;
        let body = std::fs::read(&out);
        let _ = std::fs::remove_file(&out);
        let output = result.map_err(|e| FetchError::Transport {
            url: dl.url.clone(),
            reason: e.to_string(),
        })?;
        let code: u16 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if !output.status.success() {
            // 63: --max-filesize exceeded.
            if output.status.code() == Some(63) {
                return Err(FetchError::TooLarge {
                    url: dl.url.clone(),
                    limit: self.opts.max_size,
                });
            }
            return Err(FetchError::Transport {
                url: dl.url.clone(),
                reason: format!(
                    "curl failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        if code != 200 {
            return Err(FetchError::Status {
                url: dl.url.clone(),
                status: code,
            });
        }
        let body = body.map_err(|e| FetchError::Transport {
            url: dl.url.clone(),
            reason: format!("reading curl's output: {e}"),
        })?;
        if body.len() > self.opts.max_size {
            return Err(FetchError::TooLarge {
                url: dl.url.clone(),
                limit: self.opts.max_size,
            });
        }
        Ok(body)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
