//! HTTP for `gce-ssh` alone: ureq over rustls with the `ring` provider. The daemons share one
//! reqwest built without TLS; giving this workstation client its own small blocking stack keeps
//! TLS and crypto out of their binaries however the workspace is built (cargo unifies a shared
//! crate's features across the build, so enabling reqwest's TLS here would compile it into them).
//!
//! Certificates are verified against the system's roots found the way OpenSSL finds them: the
//! CA file (`SSL_CERT_FILE`, else the distribution's bundle) and the CA directories
//! (`SSL_CERT_DIR`, colon-separated, else the distribution's), each variable replacing only its
//! own default, plus any `--ca-file`. Roots are loaded on the first `https` request only, so
//! talking to the plain-HTTP emulator costs nothing.
//!
//! Proxies: `https` requests honour `HTTPS_PROXY`/`NO_PROXY` as gcloud does on a workstation;
//! plain-HTTP requests (the emulator, the metadata server) never go through a proxy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "TLS: the certificate of {host} is not trusted ({reason}); trusted roots: {roots}. Add its CA with --ca-file or SSL_CERT_FILE"
    )]
    Untrusted {
        host: String,
        reason: String,
        roots: String,
    },
    #[error("TLS: cannot load trusted roots: {0}")]
    Roots(String),
    #[error("{method} {url}: {reason}")]
    Transport {
        method: &'static str,
        url: String,
        reason: String,
    },
}

/// A response: status and body (bodies here are small JSON documents).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Where trusted roots come from.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Extra CA files (PEM), trusted in addition to the system's.
    pub ca_files: Vec<PathBuf>,
}

pub struct Http {
    trust: Trust,
    plain: ureq::Agent,
    tls: OnceLock<(ureq::Agent, String)>,
    /// Held while the roots are loaded, so parallel first requests load them once.
    tls_init: Mutex<()>,
    timeout: Duration,
}

impl Http {
    pub fn new(trust: Trust, timeout: Duration) -> Http {
        let plain = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(5).min(timeout)))
            .timeout_global(Some(timeout))
            .user_agent(USER_AGENT)
            .build()
            .new_agent();
        Http {
            trust,
            plain,
            tls: OnceLock::new(),
            tls_init: Mutex::new(()),
            timeout,
        }
    }

    fn agent(&self, url: &str) -> Result<(&ureq::Agent, Option<&str>), HttpError> {
        if !url.starts_with("https://") {
            return Ok((&self.plain, None));
        }
        let _loading = match self.tls.get() {
            Some(_) => None,
            None => Some(self.tls_init.lock().unwrap_or_else(|e| e.into_inner())),
        };
        if self.tls.get().is_none() {
            let (certs, described) = load_roots(&self.trust)?;
            let tls = TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .root_certs(RootCerts::Specific(Arc::new(certs)))
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build();
            let agent = ureq::Agent::config_builder()
                .tls_config(tls)
                .http_status_as_error(false)
                .https_only(true)
                .max_redirects(0)
                .timeout_connect(Some(Duration::from_secs(10).min(self.timeout)))
                .timeout_global(Some(self.timeout))
                .user_agent(USER_AGENT)
                .build()
                .new_agent();
            let _ = self.tls.set((agent, described));
        }
        let (agent, roots) = self.tls.get().expect("set above");
        Ok((agent, Some(roots.as_str())))
    }

    /// GET with extra headers.
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
        let (agent, roots) = self.agent(url)?;
        let mut req = agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        finish("GET", url, roots, req.call())
    }

    /// DELETE with extra headers.
    pub fn delete(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
        let (agent, roots) = self.agent(url)?;
        let mut req = agent.delete(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        finish("DELETE", url, roots, req.call())
    }

    /// POST a body of `content_type` with extra headers.
    pub fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let (agent, roots) = self.agent(url)?;
        let mut req = agent.post(url).header("Content-Type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        finish("POST", url, roots, req.send(body))
    }

    /// POST `application/x-www-form-urlencoded` pairs (OAuth token endpoints).
    pub fn post_form(&self, url: &str, pairs: &[(&str, &str)]) -> Result<Response, HttpError> {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect();
        self.post(
            url,
            &[],
            "application/x-www-form-urlencoded",
            body.join("&").as_bytes(),
        )
    }
}

const USER_AGENT: &str = concat!("gce-ssh/", env!("CARGO_PKG_VERSION"));

fn form_encode(s: &str) -> String {
    percent_encode(s, b"")
}

/// Percent-encodes every byte of `s` but RFC 3986's unreserved characters and those in `keep`.
pub fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char)
        } else {
            out.push_str(&format!("%{b:02X}"))
        }
    }
    out
}

fn finish(
    method: &'static str,
    url: &str,
    roots: Option<&str>,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Response, HttpError> {
    let transport = |reason: String| HttpError::Transport {
        method,
        url: url.to_string(),
        reason,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let (Some(reason), Some(roots)) = (certificate_problem(&e), roots) {
                return Err(HttpError::Untrusted {
                    host: host_of(url).to_string(),
                    reason,
                    roots: roots.to_string(),
                });
            }
            return Err(transport(describe(&e)));
        }
    };
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| transport(format!("reading the answer: {}", describe(&e))))?;
    Ok(Response { status, body })
}

/// The certificate complaint inside a failed request, if that is what failed.
fn certificate_problem(e: &ureq::Error) -> Option<String> {
    let rustls_error = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }?;
    match rustls_error {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            rustls::CertificateError::UnknownIssuer => {
                "it is signed by an unknown certificate authority".to_string()
            }
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => {
                "it is not valid for this host name".to_string()
            }
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                "it has expired".to_string()
            }
            other => format!("{other:?}"),
        }),
        _ => None,
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            _ => io.to_string(),
        },
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found (DNS)".into(),
        other => other.to_string(),
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// A Google API root (`https://compute.googleapis.com`, or the emulator's) reached through an
/// [`Http`], with the bearer token, when there is one, on every request.
pub struct Api<'h> {
    http: &'h Http,
    endpoint: String,
    auth: Option<String>,
}

impl<'h> Api<'h> {
    pub fn new(http: &'h Http, endpoint: &str, token: Option<String>) -> Api<'h> {
        Api {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// The root, without a final `/`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.auth
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect()
    }

    pub fn get(&self, url: &str) -> Result<Response, HttpError> {
        self.http.get(url, &self.headers())
    }

    pub fn delete(&self, url: &str) -> Result<Response, HttpError> {
        self.http.delete(url, &self.headers())
    }

    pub fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<Response, HttpError> {
        self.http.post(
            url,
            &self.headers(),
            "application/json",
            body.to_string().as_bytes(),
        )
    }
}

/// The roots to trust: (certificates, a one-line description of where they came from).
pub fn load_roots(trust: &Trust) -> Result<(Vec<Certificate<'static>>, String), HttpError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut described = Vec::new();
    let mut ders = Vec::new();
    // The CA file: SSL_CERT_FILE replaces the distribution's bundle, as in OpenSSL.
    let file = match env("SSL_CERT_FILE") {
        Some(f) => {
            let f = PathBuf::from(f);
            if !f.is_file() {
                return Err(HttpError::Roots(format!(
                    "SSL_CERT_FILE={} is not a readable file",
                    f.display()
                )));
            }
            described.push(format!("SSL_CERT_FILE={}", f.display()));
            Some(f)
        }
        None => {
            let f = openssl_probe::probe().cert_file;
            if let Some(f) = &f {
                described.push(f.display().to_string());
            }
            f
        }
    };
    if let Some(f) = &file {
        let got = rustls_native_certs::load_certs_from_paths(Some(f), None);
        if env("SSL_CERT_FILE").is_some() && got.certs.is_empty() {
            return Err(HttpError::Roots(format!(
                "SSL_CERT_FILE={} holds no PEM certificate",
                f.display()
            )));
        }
        ders.extend(got.certs);
    }
    // The CA directories: SSL_CERT_DIR replaces the distribution's.
    let dirs: Vec<PathBuf> = match env("SSL_CERT_DIR") {
        Some(d) => {
            let dirs: Vec<PathBuf> = std::env::split_paths(&d)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            described.push(format!("SSL_CERT_DIR={}", d.to_string_lossy()));
            dirs
        }
        None => {
            let dirs: Vec<PathBuf> = openssl_probe::candidate_cert_dirs()
                .map(Path::to_path_buf)
                .collect();
            described.extend(dirs.iter().map(|d| d.display().to_string()));
            dirs
        }
    };
    for d in &dirs {
        ders.extend(rustls_native_certs::load_certs_from_paths(None, Some(d)).certs);
    }
    for f in &trust.ca_files {
        let bytes = std::fs::read(f).map_err(|e| {
            HttpError::Roots(format!(
                "--ca-file {}: {}",
                f.display(),
                crate::gcloud::short_io(&e)
            ))
        })?;
        let before = ders.len();
        for item in ureq::tls::parse_pem(&bytes) {
            if let Ok(PemItem::Certificate(c)) = item {
                ders.push(rustls_pki_types::CertificateDer::from(c.der().to_vec()));
            }
        }
        if ders.len() == before {
            return Err(HttpError::Roots(format!(
                "--ca-file {} holds no PEM certificate",
                f.display()
            )));
        }
        described.push(format!("--ca-file {}", f.display()));
    }
    ders.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    ders.dedup_by(|a, b| a.as_ref() == b.as_ref());
    if ders.is_empty() {
        return Err(HttpError::Roots(format!(
            "no CA certificate found in {}: install ca-certificates, or set SSL_CERT_FILE",
            if described.is_empty() {
                "the usual places".to_string()
            } else {
                described.join(", ")
            }
        )));
    }
    let certs = ders
        .iter()
        .map(|d| Certificate::from_der(d.as_ref()).to_owned())
        .collect();
    Ok((certs, described.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_percent_encoded_as_oauth_expects() {
        let rows = [
            ("abc-._~09", "abc-._~09"),
            (
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
            ),
            ("a b+c/=", "a%20b%2Bc%2F%3D"),
        ];
        for (raw, want) in rows {
            assert_eq!(form_encode(raw), want);
        }
    }

    #[test]
    fn host_is_taken_from_the_url() {
        assert_eq!(
            host_of("https://compute.googleapis.com/compute/v1/x"),
            "compute.googleapis.com"
        );
        assert_eq!(host_of("https://127.0.0.1:8443?x"), "127.0.0.1:8443");
    }
}
