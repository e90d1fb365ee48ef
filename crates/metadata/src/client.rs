//! The HTTP client for the metadata server. Strict on purpose: it talks to one base URL (by IP by
//! default), never through a proxy, never follows a redirect, sends `Metadata-Flavor: Google` and
//! refuses any answer that does not carry it back, caps response bodies, and bounds every request
//! in time. Non-200 answers become typed errors.

use crate::error::Error;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The metadata server, reached by IP: the DNS name was spoofed in the wild (SPEC §1).
pub const DEFAULT_BASE_URL: &str = "http://169.254.169.254/computeMetadata/v1/";
const FLAVOR: &str = "Metadata-Flavor";

/// Knobs of the client; the defaults suit a daemon on GCE.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Bound on a plain (non-waiting) request.
    pub request_timeout: Duration,
    /// Largest body accepted; bigger answers are an error, not a truncation.
    pub max_body: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
        }
    }
}

/// One answer of the server.
#[derive(Debug, Clone)]
pub struct Response {
    pub body: Vec<u8>,
    pub etag: Option<String>,
}

impl Response {
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    opts: ClientOptions,
}

/// `http://HOST/computeMetadata/v1/` for a `GCE_METADATA_HOST`-style `host[:port]`.
pub fn base_url_for_host(host: &str) -> String {
    format!(
        "http://{}/computeMetadata/v1/",
        host.trim().trim_end_matches('/')
    )
}

impl Client {
    /// A client for `base_url` (e.g. [`DEFAULT_BASE_URL`] or an emulator's
    /// `http://127.0.0.1:PORT/computeMetadata/v1/`).
    pub fn new(base_url: &str, opts: ClientOptions) -> Result<Client, Error> {
        let bad = |reason: &str| Error::BadBaseUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http://"))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("no host"));
        }
        if base_url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("contains whitespace"));
        }
        let mut base = base_url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let mut headers = HeaderMap::new();
        headers.insert(FLAVOR, HeaderValue::from_static("Google"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .default_headers(headers)
            .user_agent(concat!("gce-guest-agents/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Build)?;
        Ok(Client { http, base, opts })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    /// GET `path` (relative to the base, may carry a query) with the default request timeout.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        self.get_with_timeout(path, self.opts.request_timeout).await
    }

    /// GET with an explicit bound, used by long polls (`timeout_sec` + 10 s).
    pub async fn get_with_timeout(&self, path: &str, timeout: Duration) -> Result<Response, Error> {
        let url = self.url(path);
        let req = self.http.get(&url).timeout(timeout);
        self.send(req, url, timeout).await
    }

    /// GET and decode JSON into `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let resp = self.get(path).await?;
        decode(&self.url(path), &resp.body)
    }

    /// GET a leaf as text.
    pub async fn get_text(&self, path: &str) -> Result<String, Error> {
        let url = self.url(path);
        let resp = self.get(path).await?;
        String::from_utf8(resp.body).map_err(|_| Error::NotUtf8 { url })
    }

    /// Write guest attribute `NS/KEY` (needs `enable-guest-attributes=TRUE`).
    pub async fn put_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Error> {
        let url = self.url(&guest_attribute_path(namespace, key));
        let req = self
            .http
            .put(&url)
            .timeout(self.opts.request_timeout)
            .body(value.to_string());
        self.send(req, url, self.opts.request_timeout)
            .await
            .map(|_| ())
    }

    /// Read guest attribute `NS/KEY`; `None` when it does not exist.
    pub async fn get_guest_attribute(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<String>, Error> {
        match self.get_text(&guest_attribute_path(namespace, key)).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete guest attribute `NS/KEY`; deleting a missing one is not an error.
    pub async fn delete_guest_attribute(&self, namespace: &str, key: &str) -> Result<(), Error> {
        let url = self.url(&guest_attribute_path(namespace, key));
        let req = self.http.delete(&url).timeout(self.opts.request_timeout);
        match self.send(req, url, self.opts.request_timeout).await {
            Ok(_) | Err(Error::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let map_err = |e: reqwest::Error, url: &str| {
            if e.is_timeout() {
                Error::Timeout {
                    url: url.to_string(),
                    after: timeout,
                }
            } else if e.is_connect() {
                Error::Connect {
                    url: url.to_string(),
                    source: e,
                }
            } else {
                Error::Transport {
                    url: url.to_string(),
                    source: e,
                }
            }
        };
        let mut resp = req.send().await.map_err(|e| map_err(e, &url))?;
        // The flavor check comes first: an answer without it is not from the metadata server,
        // whatever its status says.
        let flavor_ok = resp
            .headers()
            .get(FLAVOR)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
        if !flavor_ok {
            return Err(Error::NotMetadataServer { url });
        }
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(Error::Status { url, status });
        }
        let etag = resp
            .headers()
            .get("ETag")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string());
        if resp
            .content_length()
            .is_some_and(|n| n > self.opts.max_body as u64)
        {
            return Err(Error::TooLarge {
                url,
                limit: self.opts.max_body,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| map_err(e, &url))? {
            if body.len() + chunk.len() > self.opts.max_body {
                return Err(Error::TooLarge {
                    url,
                    limit: self.opts.max_body,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { body, etag })
    }
}

fn guest_attribute_path(namespace: &str, key: &str) -> String {
    format!("instance/guest-attributes/{namespace}/{key}")
}

pub(crate) fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        url: url.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        for bad in [
            "https://169.254.169.254/",
            "169.254.169.254",
            "http://",
            "http:///x",
            "http://a b/",
        ] {
            assert!(
                Client::new(bad, ClientOptions::default()).is_err(),
                "{bad} must be refused"
            );
        }
        let c = Client::new(
            "http://127.0.0.1:1/computeMetadata/v1",
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(
            c.url("/instance/id"),
            "http://127.0.0.1:1/computeMetadata/v1/instance/id"
        );
        assert_eq!(
            base_url_for_host("127.0.0.1:8080"),
            "http://127.0.0.1:8080/computeMetadata/v1/"
        );
    }
}
