//! Script URLs (SPEC §5): which ones are Cloud Storage objects (fetched with the default service
//! account's token, from a configurable endpoint) and which are plain web URLs. Pure.

/// The real Cloud Storage endpoint; `[MetadataScripts] gcs_endpoint` overrides it (tests).
pub const DEFAULT_GCS_ENDPOINT: &str = "https://storage.googleapis.com";

/// Hosts that serve `/<bucket>/<object>` (path style). The first is the documented one; the
/// others are the aliases Google's Python runner also recognised.
const PATH_STYLE_HOSTS: &[&str] = &[
    "storage.googleapis.com",
    "storage.cloud.google.com",
    "commondatastorage.googleapis.com",
];
/// `<bucket>.storage.googleapis.com/<object>` (virtual-host style).
const VHOST_SUFFIX: &str = ".storage.googleapis.com";

/// What to fetch and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub url: String,
    /// Send `Authorization: Bearer <default service account token>`.
    pub authenticated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("unsupported URL {0:?}: only gs://, http:// and https:// are fetched")]
    Scheme(String),
    #[error("malformed Cloud Storage URL {0:?}: expected gs://BUCKET/OBJECT")]
    Gcs(String),
}

/// Classify `url` and, for Cloud Storage objects, rewrite it onto `gcs_endpoint` as
/// `<endpoint>/<bucket>/<object>`.
pub fn classify(url: &str, gcs_endpoint: &str) -> Result<Download, UrlError> {
    let url = url.trim();
    let endpoint = gcs_endpoint.trim().trim_end_matches('/');
    let gcs = |bucket: &str, object: &str, encode: bool| -> Result<Download, UrlError> {
        if bucket.is_empty() || object.is_empty() || bucket.contains(['/', '?', '#']) {
            return Err(UrlError::Gcs(url.to_string()));
        }
        let object = if encode {
            percent_encode_path(object)
        } else {
            object.to_string()
        };
        Ok(Download {
            url: format!("{endpoint}/{bucket}/{object}"),
            authenticated: true,
        })
    };
    if let Some(rest) = url.strip_prefix("gs://") {
        // gs:// names the object literally, so it is percent-encoded here; http(s) forms are
        // already URLs and are passed through.
        let (bucket, object) = rest.split_once('/').unwrap_or((rest, ""));
        return gcs(bucket, object, true);
    }
    let rest = match url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        Some(rest) if !rest.is_empty() => rest,
        _ => return Err(UrlError::Scheme(url.to_string())),
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::Scheme(url.to_string()));
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_lc = host.to_ascii_lowercase();
    if PATH_STYLE_HOSTS.contains(&host_lc.as_str()) {
        let (bucket, object) = path.split_once('/').unwrap_or((path, ""));
        return gcs(bucket, object, false);
    }
    if let Some(bucket) = host_lc.strip_suffix(VHOST_SUFFIX) {
        return gcs(bucket, path, false);
    }
    Ok(Download {
        url: url.to_string(),
        authenticated: false,
    })
}

/// Percent-encode an object name for a URL path, keeping `/` and RFC 3986 unreserved bytes.
fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_of_spec_5() {
        let ep = "http://127.0.0.1:9/";
        type Row = (&'static str, Result<(&'static str, bool), ()>);
        let rows: &[Row] = &[
            (
                "gs://bkt/dir/obj.sh",
                Ok(("http://127.0.0.1:9/bkt/dir/obj.sh", true)),
            ),
            (
                "gs://bkt/a b+c.sh",
                Ok(("http://127.0.0.1:9/bkt/a%20b%2Bc.sh", true)),
            ),
            (
                "https://bkt.storage.googleapis.com/obj.sh",
                Ok(("http://127.0.0.1:9/bkt/obj.sh", true)),
            ),
            (
                "https://storage.googleapis.com/bkt/d/obj.sh",
                Ok(("http://127.0.0.1:9/bkt/d/obj.sh", true)),
            ),
            (
                "http://storage.googleapis.com/bkt/obj",
                Ok(("http://127.0.0.1:9/bkt/obj", true)),
            ),
            (
                "https://storage.cloud.google.com/bkt/obj",
                Ok(("http://127.0.0.1:9/bkt/obj", true)),
            ),
            (
                "https://commondatastorage.googleapis.com/bkt/obj",
                Ok(("http://127.0.0.1:9/bkt/obj", true)),
            ),
            (
                "https://example.com/s.sh",
                Ok(("https://example.com/s.sh", false)),
            ),
            (
                "http://10.0.0.1:8080/s.sh?x=1",
                Ok(("http://10.0.0.1:8080/s.sh?x=1", false)),
            ),
            (
                "https://evil.com/storage.googleapis.com/b/o",
                Ok(("https://evil.com/storage.googleapis.com/b/o", false)),
            ),
            (
                "https://storage.googleapis.com.evil.com/b/o",
                Ok(("https://storage.googleapis.com.evil.com/b/o", false)),
            ),
            ("gs://bkt", Err(())),
            ("gs://bkt/", Err(())),
            ("gs:///obj", Err(())),
            ("https://storage.googleapis.com/bkt", Err(())),
            ("ftp://h/x", Err(())),
            ("file:///etc/passwd", Err(())),
            ("/etc/passwd", Err(())),
            ("http://", Err(())),
        ];
        for (url, want) in rows {
            let got = classify(url, ep)
                .map(|d| (d.url, d.authenticated))
                .map_err(|_| ());
            let want = want.map(|(u, a)| (u.to_string(), a));
            assert_eq!(got, want, "{url}");
        }
        assert_eq!(
            classify("gs://b/o", DEFAULT_GCS_ENDPOINT).unwrap().url,
            "https://storage.googleapis.com/b/o"
        );
    }
}
