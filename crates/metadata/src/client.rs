//! The HTTP client for the metadata server. Strict on purpose: it talks to one server (by IP by
//! default, IPv4 or IPv6 as [`crate::endpoint`] decides), never through a proxy, never follows a
//! redirect, sends `Metadata-Flavor: Google` and refuses any answer that does not carry it back,
//! caps response bodies, and bounds every request in time. Non-200 answers become typed errors.

use crate::endpoint::{Endpoint, SelectOptions, Selector};
use crate::error::Error;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// The metadata server over IPv4, reached by IP: the DNS name was spoofed in the wild (SPEC §1).
/// Daemons use [`Client::gce`] instead, which also finds the IPv6 address.
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

/// A cheap-to-clone handle; clones share the connection pool and the address decision.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    target: Arc<Target>,
    opts: ClientOptions,
}

enum Target {
    Fixed(String),
    Auto(Selector),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base_url())
            .finish_non_exhaustive()
    }
}

/// `http://HOST/computeMetadata/v1/` for a `GCE_METADATA_HOST`-style `host[:port]`; a bare IPv6
/// address gets its brackets, a pasted `http://` and trailing `/` are forgiven.
pub fn base_url_for_host(host: &str) -> String {
    let host = host.trim();
    let host = host.strip_prefix("http://").unwrap_or(host);
    let host = host.trim_end_matches('/');
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("http://[{host}]/computeMetadata/v1/")
    } else {
        format!("http://{host}/computeMetadata/v1/")
    }
}

impl Client {
    /// The client every daemon uses when nothing overrides the address: GCE's server at
    /// `169.254.169.254` where that is reachable, else at `[fd20:ce::254]` (IPv6-only instances).
    pub fn gce(opts: ClientOptions) -> Result<Client, Error> {
        Client::for_endpoint(&Endpoint::gce(), opts)
    }

    /// A client for `endpoint`: a fixed base URL or candidate addresses to choose from.
    pub fn for_endpoint(endpoint: &Endpoint, opts: ClientOptions) -> Result<Client, Error> {
        match endpoint {
            Endpoint::Fixed(url) => Client::new(url, opts),
            Endpoint::Auto(addrs) => {
                Client::choosing(addrs.clone(), SelectOptions::default(), opts)
            }
        }
    }

    /// A client that chooses among `addrs` (most preferred first) with explicit timing.
    pub fn choosing(
        addrs: Vec<std::net::SocketAddr>,
        select: SelectOptions,
        opts: ClientOptions,
    ) -> Result<Client, Error> {
        if addrs.is_empty() {
            return Err(Error::BadBaseUrl {
                url: String::new(),
                reason: "no candidate address".into(),
            });
        }
        Ok(Client {
            http: http_client(&opts)?,
            target: Arc::new(Target::Auto(Selector::new(addrs, select))),
            opts,
        })
    }

    /// A client for `base_url` (e.g. an override or an emulator's
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
        Ok(Client {
            http: http_client(&opts)?,
            target: Arc::new(Target::Fixed(base)),
            opts,
        })
    }

    /// The base URL requests go to now (before a decision: the preferred candidate's).
    pub fn base_url(&self) -> String {
        match &*self.target {
            Target::Fixed(base) => base.clone(),
            Target::Auto(sel) => sel.url(sel.current_or_preferred()).to_string(),
        }
    }

    /// The full URL of `path` at the current base (for messages).
    pub fn url(&self, path: &str) -> String {
        join(&self.base_url(), path)
    }

    /// GET `path` (relative to the base, may carry a query) with the default request timeout.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        self.get_with_timeout(path, self.opts.request_timeout).await
    }

    /// GET with an explicit bound, used by long polls (`timeout_sec` + 10 s).
    pub async fn get_with_timeout(&self, path: &str, timeout: Duration) -> Result<Response, Error> {
        let resp = self
            .execute(path, timeout, None, |url| self.http.get(url))
            .await?;
        // Without an ETag to match, an answer always carries its body.
        Ok(resp.unwrap_or(Response {
            body: Vec::new(),
            etag: None,
        }))
    }

    /// GET with an explicit bound; `None` when the answer's ETag is `etag`, in which case the
    /// body is not even read (a watcher's probe costs headers only when nothing changed).
    pub async fn get_unless_etag(
        &self,
        path: &str,
        timeout: Duration,
        etag: &str,
    ) -> Result<Option<Response>, Error> {
        self.execute(path, timeout, Some(etag), |url| self.http.get(url))
            .await
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
        self.execute(
            &guest_attribute_path(namespace, key),
            self.opts.request_timeout,
            None,
            |url| self.http.put(url).body(value.to_string()),
        )
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
        let path = guest_attribute_path(namespace, key);
        let timeout = self.opts.request_timeout;
        match self
            .execute(&path, timeout, None, |url| self.http.delete(url))
            .await
        {
            Ok(_) | Err(Error::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Send the request `build` makes for a URL, at the current address. With candidate
    /// addresses, a connection-level failure makes the choice again, and the request is sent
    /// once more when that moved it to another address.
    async fn execute(
        &self,
        path: &str,
        timeout: Duration,
        unless_etag: Option<&str>,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Option<Response>, Error> {
        let sel = match &*self.target {
            Target::Fixed(base) => {
                let url = join(base, path);
                return self
                    .send(build(&url).timeout(timeout), url, timeout, unless_etag)
                    .await;
            }
            Target::Auto(sel) => sel,
        };
        let i = sel.current().await;
        let url = join(sel.url(i), path);
        let started = tokio::time::Instant::now();
        match self
            .send(build(&url).timeout(timeout), url, timeout, unless_etag)
            .await
        {
            Err(e) if e.is_connection_level() => {
                let j = sel.decide(Some((i, started))).await;
                if j == i {
                    return Err(e);
                }
                let url = join(sel.url(j), path);
                self.send(build(&url).timeout(timeout), url, timeout, unless_etag)
                    .await
            }
            r => r,
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
        timeout: Duration,
        unless_etag: Option<&str>,
    ) -> Result<Option<Response>, Error> {
        let map_err = |e: reqwest::Error, url: &str| {
            // A connect timeout is both: it counts as a connection failure.
            if e.is_connect() {
                Error::Connect {
                    url: url.to_string(),
                    source: Box::new(e),
                }
            } else if e.is_timeout() {
                Error::Timeout {
                    url: url.to_string(),
                    after: timeout,
                }
            } else {
                Error::Transport {
                    url: url.to_string(),
                    source: Box::new(e),
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
        if unless_etag.is_some() && etag.as_deref() == unless_etag {
            // Dropping the unread body closes this connection; the next request opens another.
            return Ok(None);
        }
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
        Ok(Some(Response { body, etag }))
    }
}

fn http_client(opts: &ClientOptions) -> Result<reqwest::Client, Error> {
    let mut headers = HeaderMap::new();
    headers.insert(FLAVOR, HeaderValue::from_static("Google"));
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(opts.connect_timeout)
        .default_headers(headers)
        .user_agent(concat!("gce-guest-agents/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::Build)
}

fn join(base: &str, path: &str) -> String {
    format!("{base}{}", path.trim_start_matches('/'))
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
