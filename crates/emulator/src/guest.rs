//! The guest API, `/computeMetadata/v1/…`, with the exact semantics of SPEC §1: flavor check,
//! faults and pause, listings, recursive output, long polls and guest attributes; and the few
//! paths above it that clients probe (`/`, `/computeMetadata/`), which share its faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::conn::ConnTag;
use crate::doc::{self, Target};
use crate::{Fault, Shared, Snapshot};

const PREFIX: &str = "/computeMetadata/v1";
/// Longest a long poll parks; also the default when `timeout_sec` is absent.
const MAX_WAIT_SECS: u64 = 3600;

pub async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnTag>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let rest = path
        .strip_prefix(PREFIX)
        .filter(|r| r.is_empty() || r.starts_with('/'));
    let above = Above::of(path);
    if rest.is_none() && above.is_none() {
        return (StatusCode::NOT_FOUND, html_error(404, path, "")).into_response();
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut shutdown = shared.shutdown.subscribe();

    // Pause: the server is unreachable until resumed.
    let mut paused = shared.paused.subscribe();
    tokio::select! {
        _ = paused.wait_for(|p| !*p) => {}
        _ = shutdown.wait_for(|s| *s) => return cut(&conn),
    }

    let mut no_flavor = false;
    match shared.next_fault() {
        None => {}
        Some(Fault::Status { status, .. }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let body = format!("emulated fault: {status}\n");
            return reply(status, "text/plain; charset=utf-8", body, None);
        }
        Some(Fault::Latency { ms, .. }) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = shutdown.wait_for(|s| *s) => return cut(&conn),
            }
        }
        Some(Fault::Drop { .. }) => return cut(&conn),
        Some(Fault::NoFlavor { .. }) => no_flavor = true,
        Some(Fault::Hang { .. }) => return wedged(&mut shutdown, &conn).await,
    }

    let mut resp = match (rest, above) {
        (Some(rest), _) => serve(&shared, &conn, &method, &uri, rest, &headers, &body).await,
        (None, Some(above)) => serve_above(above, &method, &uri, &headers),
        (None, None) => html(404, path, ""),
    };
    if no_flavor {
        resp.headers_mut().remove("metadata-flavor");
    }
    resp
}

/// Never answer: a wedged server. The connection is closed only when the server shuts down.
async fn wedged(shutdown: &mut tokio::sync::watch::Receiver<bool>, conn: &ConnTag) -> Response {
    let _ = shutdown.wait_for(|s| *s).await;
    cut(conn)
}

/// The paths above `/computeMetadata/v1/` that the real server answers. Clients probe them:
/// google-auth's `ping()` decides "am I on GCE?" from `GET /` (200 and the flavor header).
/// The retired `/0.1/` and `/computeMetadata/v1beta1/` APIs (shut down by Google in 2020) and
/// anything else stay 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Above {
    /// `/`: lists `computeMetadata/`; the one path answered without the flavor header, as the
    /// real server does (it reveals nothing).
    Root,
    /// `/computeMetadata`: a directory without its slash, redirected like any other.
    ComputeMetadata,
    /// `/computeMetadata/`: lists `v1/`.
    ComputeMetadataDir,
}

impl Above {
    fn of(path: &str) -> Option<Above> {
        match path {
            "/" => Some(Above::Root),
            "/computeMetadata" => Some(Above::ComputeMetadata),
            "/computeMetadata/" => Some(Above::ComputeMetadataDir),
            _ => None,
        }
    }
}

fn serve_above(above: Above, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    if headers.contains_key("x-forwarded-for") {
        return html(
            403,
            path,
            "Request had X-Forwarded-For header and was rejected.",
        );
    }
    if above != Above::Root
        && headers.get("metadata-flavor").map(HeaderValue::as_bytes) != Some(b"Google")
    {
        return html(403, path, "Missing Metadata-Flavor:Google header.");
    }
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed\n".into(),
        );
    }
    match above {
        Above::Root => reply(StatusCode::OK, TEXT, "computeMetadata/\n".into(), None),
        Above::ComputeMetadata => redirect(uri),
        Above::ComputeMetadataDir => reply(StatusCode::OK, TEXT, "v1/\n".into(), None),
    }
}

/// Close the connection without an answer; the response returned is never written.
fn cut(conn: &ConnTag) -> Response {
    conn.kill();
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// Parsed query parameters that matter to the metadata server.
struct Query {
    recursive: bool,
    alt: Option<String>,
    wait: bool,
    last_etag: Option<String>,
    timeout: Duration,
    audience: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        recursive: false,
        alt: None,
        wait: false,
        last_etag: None,
        timeout: Duration::from_secs(MAX_WAIT_SECS),
        audience: None,
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "recursive" => q.recursive = v.eq_ignore_ascii_case("true"),
            "wait_for_change" => q.wait = v.eq_ignore_ascii_case("true"),
            "alt" => match v.as_str() {
                "json" | "text" => q.alt = Some(v),
                _ => return Err(format!("Invalid alt parameter: {v}")),
            },
            "last_etag" => q.last_etag = Some(v),
            "timeout_sec" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("Invalid timeout_sec parameter: {v}"))?;
                q.timeout = Duration::from_secs(secs.min(MAX_WAIT_SECS));
            }
            "audience" => q.audience = Some(v),
            _ => {}
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(
    shared: &Shared,
    conn: &ConnTag,
    method: &Method,
    uri: &Uri,
    rest: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let path = uri.path();
    if headers.get("metadata-flavor").map(HeaderValue::as_bytes) != Some(b"Google") {
        return html(403, path, "Missing Metadata-Flavor:Google header.");
    }
    if headers.contains_key("x-forwarded-for") {
        return html(
            403,
            path,
            "Request had X-Forwarded-For header and was rejected.",
        );
    }
    if rest.is_empty() {
        return redirect(uri);
    }
    let trailing = rest.ends_with('/');
    let segs: Vec<&str> = rest
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg + "\n"),
    };

    if segs.len() == 2 && segs[0] == "oslogin" && !trailing {
        return oslogin(shared, method, path, segs[1], uri.query());
    }
    if segs.len() >= 2 && segs[0] == "instance" && segs[1] == "guest-attributes" {
        return guest_attributes(shared, method, uri, &segs[2..], trailing, &q, body);
    }
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed\n".into(),
        );
    }

    let mut rx = shared.snap.subscribe();
    let snap: Arc<Snapshot> = rx.borrow_and_update().clone();
    let (value, key, account) = match doc::resolve(&snap.view, &segs) {
        None => return html(404, path, ""),
        Some(Target::Token { .. }) if q.wait => {
            return text(
                StatusCode::BAD_REQUEST,
                "wait_for_change is not supported for tokens\n".into(),
            );
        }
        Some(Target::Token { account }) => return token(account),
        Some(Target::Identity { account }) => return identity(account, &q),
        Some(Target::Node {
            value,
            key,
            account,
        }) => (value, key, account),
    };
    let dir = doc::is_dir(&key, value);
    if dir && !trailing && !q.recursive {
        return redirect(uri);
    }
    let listing = (dir || value.is_array()) && trailing && !q.recursive;
    if listing && q.wait {
        return text(
            StatusCode::BAD_REQUEST,
            "wait_for_change requires recursive=true on a directory\n".into(),
        );
    }
    let mode = Mode {
        recursive: q.recursive && (dir || value.is_array()),
        listing,
        account,
        alt: q.alt.clone(),
    };

    let current = doc::etag_of(value);
    if !q.wait || q.last_etag.as_deref().is_some_and(|e| e != current) {
        return render(value, &key, &mode, &current);
    }
    drop(snap);

    // Long poll: park until this subtree's ETag moves away from `baseline`, or time out.
    let baseline = current;
    let waiter = WaiterGuard::new(shared);
    let deadline = tokio::time::Instant::now() + q.timeout;
    let mut shutdown = shared.shutdown.subscribe();
    // A hang injected while this request is parked wedges it too; a status outage answers it.
    let mut hang = shared.hang_epoch.subscribe();
    hang.borrow_and_update();
    let mut fail = shared.fail_parked.subscribe();
    fail.borrow_and_update();
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return cut(conn);
                }
                let snap = rx.borrow_and_update().clone();
                let Some(Target::Node { value, key, .. }) = doc::resolve(&snap.view, &segs) else {
                    return html(404, path, "");
                };
                let etag = doc::etag_of(value);
                if etag != baseline {
                    return render(value, &key, &mode, &etag);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let snap = rx.borrow_and_update().clone();
                return match doc::resolve(&snap.view, &segs) {
                    Some(Target::Node { value, key, .. }) => {
                        let etag = doc::etag_of(value);
                        render(value, &key, &mode, &etag)
                    }
                    _ => html(404, path, ""),
                };
            }
            _ = shutdown.wait_for(|s| *s) => return cut(conn),
            Ok(()) = hang.changed() => break,
            Ok(()) = fail.changed() => {
                let status = fail.borrow().1;
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return reply(status, "text/plain; charset=utf-8", format!("emulated fault: {status}\n"), None);
            }
        }
    }
    // Wedged: no longer waiting for a change, never answering.
    drop(waiter);
    wedged(&mut shutdown, conn).await
}

struct WaiterGuard<'a>(&'a Shared);

impl<'a> WaiterGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.waiters.fetch_add(1, Ordering::Relaxed);
        WaiterGuard(shared)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Mode {
    recursive: bool,
    listing: bool,
    account: bool,
    alt: Option<String>,
}

fn render(value: &Value, key: &str, mode: &Mode, etag: &str) -> Response {
    let text_alt = mode.alt.as_deref() == Some("text");
    let json_alt = mode.alt.as_deref() == Some("json");
    let (ct, body) = if mode.recursive {
        if text_alt {
            (TEXT, doc::recursive_text(value, key))
        } else {
            (JSON, value.to_string())
        }
    } else if mode.listing {
        let extra: &[&str] = if mode.account {
            &["identity", "token"]
        } else {
            &[]
        };
        let listing = doc::listing(value, key, extra);
        let mut lines: Vec<&str> = listing.lines().collect();
        lines.sort_unstable();
        (TEXT, lines.iter().map(|l| format!("{l}\n")).collect())
    } else if json_alt {
        (JSON, value.to_string())
    } else {
        (TEXT, doc::leaf_text(value))
    };
    reply(StatusCode::OK, ct, body, Some(etag))
}

const TEXT: &str = "application/text";
const JSON: &str = "application/json";

/// Every guest-API answer carries the flavor, the server name and an ETag.
fn reply(status: StatusCode, content_type: &str, body: String, etag: Option<&str>) -> Response {
    let etag = match etag {
        Some(e) => e.to_string(),
        None => doc::etag_of_bytes(body.as_bytes()),
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert("metadata-flavor", HeaderValue::from_static("Google"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static("Metadata Server for VM"),
    );
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("static content type"),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex etag"),
    );
    h.insert("x-xss-protection", HeaderValue::from_static("0"));
    h.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
    resp
}

fn text(status: StatusCode, body: String) -> Response {
    reply(status, "text/plain; charset=utf-8", body, None)
}

fn html(code: u16, path: &str, detail: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply(
        status,
        "text/html; charset=UTF-8",
        html_error(code, path, detail),
        None,
    )
}

/// The shape of Google's front-end error pages.
fn html_error(code: u16, path: &str, detail: &str) -> String {
    let (title, what) = match code {
        403 => (
            "Forbidden",
            "Your client does not have permission to get URL",
        ),
        404 => ("Not Found", "The requested URL"),
        _ => ("Error", "The request for"),
    };
    let tail = if code == 404 {
        " was not found on this server."
    } else {
        " from this server."
    };
    let path = path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error {code} ({title})!!1</title>\n  \
         <p><b>{code}.</b> <ins>That’s an error.</ins>\n  <p>{what} <code>{path}</code>{tail} {detail}  \
         <ins>That’s all we know.</ins>\n"
    )
}

fn redirect(uri: &Uri) -> Response {
    let location = match uri.query() {
        Some(q) => format!("{}/?{q}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut resp = reply(
        StatusCode::MOVED_PERMANENTLY,
        "text/html; charset=UTF-8",
        format!(
            "<HTML><HEAD><meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n<TITLE>301 Moved</TITLE></HEAD><BODY>\n<H1>301 Moved</H1>\nThe document has moved\n<A HREF=\"{location}\">here</A>.\r\n</BODY></HTML>\r\n"
        ),
        None,
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn token(account: &Value) -> Response {
    let email = account
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let body = json!({
        "access_token": format!("ya29.emulated-{:016x}", doc::fnv1a(email.as_bytes())),
        "expires_in": 3599,
        "token_type": "Bearer",
    });
    reply(StatusCode::OK, JSON, body.to_string(), None)
}

fn identity(account: &Value, q: &Query) -> Response {
    let Some(aud) = q.audience.as_deref().filter(|a| !a.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required\n".into(),
        );
    };
    let email = account
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let claims =
        json!({"aud": aud, "azp": email, "email": email, "iss": "https://accounts.google.com"});
    let jwt = format!(
        "{}.{}.emulated",
        doc::base64(br#"{"alg":"RS256","typ":"JWT"}"#).trim_end_matches('='),
        doc::base64(claims.to_string().as_bytes()).trim_end_matches('=')
    );
    reply(StatusCode::OK, TEXT, jwt, None)
}

/// `enable-guest-attributes`: the instance value wins; else the project's; else off.
fn guest_attributes_enabled(view: &Value) -> bool {
    let flag = |scope: &str| {
        view.pointer(&format!("/{scope}/attributes/enable-guest-attributes"))
            .and_then(Value::as_str)
    };
    flag("instance")
        .or_else(|| flag("project"))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn guest_attributes(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    sub: &[&str],
    trailing: bool,
    q: &Query,
    body: &Bytes,
) -> Response {
    let snap = shared.snapshot();
    if !guest_attributes_enabled(&snap.view) {
        return text(
            StatusCode::FORBIDDEN,
            "Guest attributes endpoint access is disabled.\n".into(),
        );
    }
    let path = uri.path();
    match (method.as_str(), sub) {
        ("GET" | "HEAD", []) => {
            let tree = json!(snap.guest);
            let etag = doc::etag_of(&tree);
            if q.recursive {
                if q.alt.as_deref() == Some("text") {
                    return reply(
                        StatusCode::OK,
                        TEXT,
                        doc::recursive_text(&tree, "attributes"),
                        Some(&etag),
                    );
                }
                return reply(StatusCode::OK, JSON, tree.to_string(), Some(&etag));
            }
            if !trailing {
                return redirect(uri);
            }
            let body = snap.guest.keys().map(|ns| format!("{ns}/\n")).collect();
            reply(StatusCode::OK, TEXT, body, Some(&etag))
        }
        ("GET" | "HEAD", [ns]) => {
            let Some(keys) = snap.guest.get(*ns) else {
                return html(404, path, "");
            };
            let tree = json!(keys);
            let etag = doc::etag_of(&tree);
            if q.recursive {
                return reply(StatusCode::OK, JSON, tree.to_string(), Some(&etag));
            }
            if !trailing {
                return redirect(uri);
            }
            let body = keys.keys().map(|k| format!("{k}\n")).collect();
            reply(StatusCode::OK, TEXT, body, Some(&etag))
        }
        ("GET" | "HEAD", [ns, key]) => match snap.guest.get(*ns).and_then(|k| k.get(*key)) {
            Some(v) if q.alt.as_deref() == Some("json") => {
                reply(StatusCode::OK, JSON, json!(v).to_string(), None)
            }
            Some(v) => reply(StatusCode::OK, TEXT, v.clone(), None),
            None => html(404, path, ""),
        },
        ("PUT", [ns, key]) => {
            if !valid_guest_name(ns) || !valid_guest_name(key) {
                return text(
                    StatusCode::BAD_REQUEST,
                    "invalid guest attribute namespace or key\n".into(),
                );
            }
            let Ok(value) = std::str::from_utf8(body) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "guest attribute value must be UTF-8\n".into(),
                );
            };
            let (ns, key, value) = (ns.to_string(), key.to_string(), value.to_string());
            shared.update(move |_, g| {
                g.entry(ns).or_default().insert(key, value);
            });
            reply(StatusCode::OK, TEXT, String::new(), None)
        }
        ("DELETE", [ns, key]) => {
            shared.update(|_, g| {
                if let Some(keys) = g.get_mut(*ns) {
                    keys.remove(*key);
                    if keys.is_empty() {
                        g.remove(*ns);
                    }
                }
            });
            reply(StatusCode::OK, TEXT, String::new(), None)
        }
        ("PUT" | "DELETE", _) => text(
            StatusCode::BAD_REQUEST,
            "guest attributes are written as NAMESPACE/KEY\n".into(),
        ),
        ("GET" | "HEAD", _) => html(404, path, ""),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed\n".into(),
        ),
    }
}

fn valid_guest_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `oslogin/users|groups|authorize|certificates`: answered from the OS Login directory; every
/// endpoint is a 404 while `enable-oslogin` is off, which is how Google's package tells that
/// OS Login is not enabled.
fn oslogin(
    shared: &Shared,
    method: &Method,
    path: &str,
    endpoint: &str,
    raw_query: Option<&str>,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed\n".into(),
        );
    }
    let snap = shared.snapshot();
    if !crate::oslogin::enabled(&snap.view) {
        return html(404, path, "");
    }
    let project = snap
        .view
        .pointer("/project/projectId")
        .and_then(Value::as_str)
        .unwrap_or("");
    let query: Vec<(String, String)> = raw_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let (status, body) =
        crate::oslogin::guest_answer(&shared.oslogin_dir(), endpoint, &query, project);
    match status {
        200 => reply(StatusCode::OK, JSON, body.to_string(), None),
        404 => html(404, path, ""),
        s => text(
            StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
            format!("{}\n", body["error"].as_str().unwrap_or("bad request")),
        ),
    }
}
