//! Access tokens for the Compute API from the credentials a user already has, tried in the
//! order Google's client libraries use (SPEC §11):
//!
//! 1. an explicit token (`--token`, `GCE_ACCESS_TOKEN`);
//! 2. the JSON file named by `GOOGLE_APPLICATION_CREDENTIALS`;
//! 3. gcloud's application default credentials (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`,
//!    `application_default_credentials.json`);
//! 4. the metadata server's `instance/service-accounts/default/token`, when running on a GCE VM
//!    (`GCE_METADATA_HOST`, else by IP as the daemons find it: `169.254.169.254` where it is
//!    reachable, `[fd20:ce::254]` on IPv6-only VMs — `gce_metadata::Client::gce`; never through a
//!    proxy; skipped with `NO_GCE_CHECK=true` as in Google's libraries);
//! 5. `gcloud auth print-access-token`, when gcloud is on `PATH`.
//!
//! Each source also says whose token it is where it can, for OS Login (whose API is addressed by
//! the account's email): a service account key's `client_email`; an authorized user's ID token
//! (`email` claim of the `id_token` the refresh answer carries when the grant included `openid`,
//! as gcloud's application-default login does); the VM's default service account
//! (`instance/service-accounts/default/email`); gcloud's active account (`CLOUDSDK_CORE_ACCOUNT`,
//! else `[core] account`). An explicit token says nothing: [`token_email`] asks Google's token
//! info endpoint.
//!
//! A credential file is either a service account key (a JWT signed RS256 with its PKCS#8
//! `private_key`, exchanged at its `token_uri` with the jwt-bearer grant) or an `authorized_user`
//! (its refresh token exchanged at its `token_uri`, default Google's). A source that is present
//! but broken stops the search with its error rather than falling through to another identity,
//! as Google's libraries do; the error lists what was tried, one line each.
//!
//! RSA signing uses `ring`, which rustls already brings in for TLS: no second crypto library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use gce_metadata::{Client, ClientOptions, Endpoint};

use crate::http::Http;
use crate::tool;

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Where an access token's owner is looked up (`email`, when the token has the email scope).
pub const GOOGLE_TOKENINFO_URI: &str = "https://oauth2.googleapis.com/tokeninfo";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const DMI_PRODUCT: &str = "/sys/class/dmi/id/product_name";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}", tried_lines("no credentials for the Compute API", .tried))]
    NoCredentials { tried: Vec<String> },
    #[error("{}", tried_lines(&format!("{what}: {reason}"), .tried))]
    Broken {
        what: String,
        reason: String,
        tried: Vec<String>,
    },
}

fn tried_lines(head: &str, tried: &[String]) -> String {
    let mut s = head.to_string();
    if !tried.is_empty() {
        s.push_str("; tried:");
        for t in tried {
            s.push_str("\n  ");
            s.push_str(t);
        }
    }
    s
}

/// A token, where it came from (shown with `--timings`) and, where the source says, whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub source: String,
    /// The account's email, as the source tells it (`None`: ask [`token_email`]).
    pub account: Option<String>,
}

/// What the search reads from the environment; [`Sources::from_process`] fills it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub explicit: Option<String>,
    pub application_credentials: Option<PathBuf>,
    pub adc_file: Option<PathBuf>,
    /// `GCE_METADATA_HOST` (`host[:port]`).
    pub metadata_host: Option<String>,
    /// `NO_GCE_CHECK` is true: never ask a metadata server.
    pub no_gce_check: bool,
    /// The machine's DMI product name (`Google Compute Engine` on GCE).
    pub dmi_product: Option<String>,
    /// gcloud's path when it is on `PATH`.
    pub gcloud: Option<PathBuf>,
    /// gcloud's active account (whose token gcloud prints).
    pub gcloud_account: Option<String>,
}

impl Sources {
    pub fn from_process(explicit: Option<String>, gcloud_env: &crate::gcloud::Env) -> Sources {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Sources {
            explicit: explicit.filter(|t| !t.is_empty()),
            application_credentials: var("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
            adc_file: gcloud_env.adc_file(),
            metadata_host: var("GCE_METADATA_HOST"),
            no_gce_check: var("NO_GCE_CHECK").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
            dmi_product: std::fs::read_to_string(DMI_PRODUCT)
                .ok()
                .map(|s| s.trim().to_string()),
            gcloud: crate::gcloud::on_path("gcloud", std::env::var_os("PATH").as_deref()),
            gcloud_account: crate::gcloud::account(gcloud_env).ok().map(|f| f.value),
        }
    }
}

/// Finds a token, trying each source in order.
pub fn access_token(http: &Http, s: &Sources) -> Result<AccessToken, AuthError> {
    let mut tried = Vec::new();
    let broken = |what: String, reason: String, tried: &Vec<String>| AuthError::Broken {
        what,
        reason,
        tried: tried.clone(),
    };

    if let Some(t) = &s.explicit {
        return Ok(AccessToken {
            token: t.clone(),
            source: "--token".into(),
            account: None,
        });
    }
    tried.push("--token / GCE_ACCESS_TOKEN: not set".into());

    match &s.application_credentials {
        Some(path) => {
            let what = format!("GOOGLE_APPLICATION_CREDENTIALS={}", path.display());
            return from_file(http, path)
                .map(|(token, account)| AccessToken {
                    token,
                    source: what.clone(),
                    account,
                })
                .map_err(|reason| broken(what, reason, &tried));
        }
        None => tried.push("GOOGLE_APPLICATION_CREDENTIALS: not set".into()),
    }

    match &s.adc_file {
        Some(path) if path.exists() => {
            let what = format!("application default credentials {}", path.display());
            return from_file(http, path)
                .map(|(token, account)| AccessToken {
                    token,
                    source: what.clone(),
                    account,
                })
                .map_err(|reason| broken(what, reason, &tried));
        }
        Some(path) => tried.push(format!(
            "application default credentials {}: not found",
            path.display()
        )),
        None => tried.push(
            "application default credentials: neither CLOUDSDK_CONFIG nor HOME is set".into(),
        ),
    }

    match metadata_endpoint(s) {
        Err(why) => tried.push(format!("metadata server: {why}")),
        Ok(endpoint) => match from_metadata(&endpoint) {
            Ok(found) => return Ok(found),
            Err(MetadataFailure::Unreachable(e)) => tried.push(format!("metadata server: {e}")),
            Err(MetadataFailure::Broken { url, reason }) => {
                return Err(broken(format!("metadata server {url}"), reason, &tried));
            }
        },
    }

    match &s.gcloud {
        Some(gcloud) => {
            let what = format!("{} auth print-access-token", gcloud.display());
            return from_gcloud(gcloud)
                .map(|token| AccessToken {
                    token,
                    source: what.clone(),
                    account: s.gcloud_account.clone(),
                })
                .map_err(|reason| broken(what, reason, &tried));
        }
        None => tried.push(
            "gcloud auth print-access-token: gcloud is not on PATH (install the Google Cloud CLI)"
                .into(),
        ),
    }
    Err(AuthError::NoCredentials { tried })
}

/// The metadata server to ask, or why none.
fn metadata_endpoint(s: &Sources) -> Result<Endpoint, String> {
    if s.no_gce_check {
        return Err("skipped (NO_GCE_CHECK is set)".into());
    }
    if let Some(h) = &s.metadata_host {
        return Ok(Endpoint::from_host(h));
    }
    // Google's libraries read the DMI product name before touching the network; off GCE this
    // avoids a connect timeout to a link-local address on every run.
    match &s.dmi_product {
        Some(p) if p.starts_with("Google") => Ok(Endpoint::gce()),
        Some(p) => Err(format!(
            "not a GCE VM ({DMI_PRODUCT} is {p:?}) and GCE_METADATA_HOST is not set"
        )),
        None => Err(format!(
            "not a GCE VM ({DMI_PRODUCT} unreadable) and GCE_METADATA_HOST is not set"
        )),
    }
}

enum MetadataFailure {
    /// Nobody answered: not a reason to stop looking.
    Unreachable(String),
    /// A metadata server answered but gave no token.
    Broken { url: String, reason: String },
}

const TOKEN_PATH: &str = "instance/service-accounts/default/token";
const EMAIL_PATH: &str = "instance/service-accounts/default/email";

/// The default service account's token and email, asked together. The client is the daemons'
/// (`gce_metadata`): it picks 169.254.169.254 or [fd20:ce::254] by reachability, never uses a
/// proxy and refuses an answer without `Metadata-Flavor: Google`.
fn from_metadata(endpoint: &Endpoint) -> Result<AccessToken, MetadataFailure> {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_body: 64 * 1024,
    };
    let broken = |url: String, reason: String| MetadataFailure::Broken { url, reason };
    let client = Client::for_endpoint(endpoint, opts)
        .map_err(|e| broken(endpoint.to_string(), e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| broken(endpoint.to_string(), format!("cannot start a runtime: {e}")))?;
    let (token, email) = rt
        .block_on(async { tokio::join!(client.get_text(TOKEN_PATH), client.get_text(EMAIL_PATH)) });
    let url = client.url(TOKEN_PATH);
    let body = match token {
        Ok(b) => b,
        Err(e) if e.is_connection_level() => {
            return Err(MetadataFailure::Unreachable(e.to_string()));
        }
        Err(e) => return Err(broken(url, e.to_string())),
    };
    let token = token_from_response(&body).map_err(|e| broken(url, e))?;
    Ok(AccessToken {
        token,
        source: format!("metadata server {}", client.base_url()),
        account: email
            .ok()
            .map(|e| e.trim().to_string())
            .filter(|e| e.contains('@')),
    })
}

fn from_gcloud(gcloud: &Path) -> Result<String, String> {
    let out = tool::run(
        Command::new(gcloud).args(["auth", "print-access-token"]),
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())?;
    let token = out.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!("printed no single token: {:?}", first_line(&out)));
    }
    Ok(token.to_string())
}

/// A credentials file as Google's tools write them.
#[derive(Debug, Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type", default)]
    kind: String,
    // service_account
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    // authorized_user
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    refresh_token: String,
    // both
    #[serde(default)]
    token_uri: String,
}

/// A token from a credentials file, and the account it belongs to when the file or the token
/// endpoint says.
fn from_file(http: &Http, path: &Path) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::gcloud::short_io(&e))?;
    let f: CredentialsFile =
        serde_json::from_str(&text).map_err(|e| format!("not a credentials JSON file: {e}"))?;
    let token_uri = if f.token_uri.is_empty() {
        GOOGLE_TOKEN_URI.to_string()
    } else {
        f.token_uri.clone()
    };
    match f.kind.as_str() {
        "service_account" => {
            if f.client_email.is_empty() || f.private_key.is_empty() {
                return Err("service_account without client_email or private_key".into());
            }
            let now = chrono::Utc::now().timestamp();
            let jwt = sign_jwt(
                &f.private_key,
                &f.private_key_id,
                &f.client_email,
                &token_uri,
                now,
            )?;
            exchange(
                http,
                &token_uri,
                &[("grant_type", JWT_BEARER), ("assertion", &jwt)],
            )
            .map(|t| (t.access_token, Some(f.client_email.clone())))
        }
        "authorized_user" => {
            if f.refresh_token.is_empty() || f.client_id.is_empty() {
                return Err("authorized_user without refresh_token or client_id".into());
            }
            exchange(
                http,
                &token_uri,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", &f.client_id),
                    ("client_secret", &f.client_secret),
                    ("refresh_token", &f.refresh_token),
                ],
            )
            .map(|t| (t.access_token, t.id_token_email))
        }
        "" => Err("no \"type\" field".into()),
        other => Err(format!(
            "credential type {other:?} is not supported (service_account and authorized_user are)"
        )),
    }
}

/// The signed assertion a service account presents: RS256 over `header.claims`, claims as
/// Google's token endpoint requires them (iss, scope, aud = the token URI, iat, exp = iat + 1 h).
pub fn sign_jwt(
    private_key_pem: &str,
    key_id: &str,
    email: &str,
    token_uri: &str,
    now: i64,
) -> Result<String, String> {
    let key = rsa_key(private_key_pem)?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if !key_id.is_empty() {
        header["kid"] = serde_json::json!(key_id);
    }
    let claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now,
        "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "RSA signing failed".to_string())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

fn rsa_key(pem: &str) -> Result<ring::rsa::KeyPair, String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("private_key is not a PEM private key: {e:?}"))?;
    let parsed = match &der {
        PrivateKeyDer::Pkcs8(k) => ring::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => ring::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err("private_key is not an RSA key".into()),
    };
    parsed.map_err(|e| format!("private_key rejected: {e}"))
}

/// What a token endpoint answered.
struct Exchanged {
    access_token: String,
    /// The `email` claim of the `id_token` that comes with it, if any (the grant had `openid`).
    id_token_email: Option<String>,
}

/// POSTs an OAuth form to a token endpoint and returns its `access_token`.
fn exchange(http: &Http, token_uri: &str, form: &[(&str, &str)]) -> Result<Exchanged, String> {
    if !token_uri.starts_with("https://") {
        // A JWT or refresh token is a long-lived secret: never over plain HTTP.
        return Err(format!("token_uri {token_uri} is not https"));
    }
    let resp = http.post_form(token_uri, form).map_err(|e| e.to_string())?;
    if resp.status != 200 {
        let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
        let err = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
        let desc = v
            .get("error_description")
            .and_then(|e| e.as_str())
            .unwrap_or("");
        return Err(format!(
            "{token_uri} answered {}: {}",
            resp.status,
            if err.is_empty() {
                first_line(&resp.body).to_string()
            } else {
                format!("{err} {desc}").trim().to_string()
            }
        ));
    }
    let access_token = token_from_response(&resp.body).map_err(|e| format!("{token_uri}: {e}"))?;
    let id_token_email = serde_json::from_str::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("id_token")?.as_str().map(str::to_string))
        .and_then(|t| id_token_email(&t));
    Ok(Exchanged {
        access_token,
        id_token_email,
    })
}

/// The `email` claim of an ID token. Its signature is not checked: it came straight from the
/// token endpoint over verified TLS, which OpenID Connect accepts in place of the signature
/// (Core §3.1.3.7), and it only names the account, it grants nothing.
pub fn id_token_email(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?)
            .ok()?;
    claims
        .get("email")?
        .as_str()
        .filter(|e| e.contains('@'))
        .map(str::to_string)
}

/// Asks Google's token info endpoint whose `token` is (POSTed, so the token stays out of URLs
/// and logs); the answer carries `email` when the token has the email scope, as gcloud's tokens
/// do.
pub fn token_email(http: &Http, tokeninfo_url: &str, token: &str) -> Result<String, String> {
    let resp = http
        .post_form(tokeninfo_url, &[("access_token", token)])
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
    if resp.status != 200 {
        let desc = v
            .get("error_description")
            .or_else(|| v.get("error"))
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| first_line(&resp.body).to_string());
        return Err(format!("{tokeninfo_url} answered {}: {desc}", resp.status));
    }
    v.get("email")
        .and_then(|e| e.as_str())
        .filter(|e| e.contains('@'))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{tokeninfo_url} names no email for this token (it lacks the userinfo.email scope)"
            )
        })
}

fn token_from_response(body: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct T {
        #[serde(default)]
        access_token: String,
    }
    let t: T = serde_json::from_str(body).map_err(|e| format!("unexpected answer: {e}"))?;
    if t.access_token.is_empty() {
        return Err("answer has no access_token".into());
    }
    Ok(t.access_token)
}

fn first_line(s: &str) -> &str {
    s.trim().lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Trust;

    fn https() -> Http {
        Http::new(Trust::default(), Duration::from_secs(1))
    }

    #[test]
    fn an_explicit_token_wins_without_looking_further() {
        let s = Sources {
            explicit: Some("tok".into()),
            application_credentials: Some("/nonexistent".into()),
            ..Sources::default()
        };
        let t = access_token(&https(), &s).unwrap();
        assert_eq!(t.token, "tok");
        assert_eq!(t.source, "--token");
    }

    #[test]
    fn nothing_available_lists_every_source_tried_one_line_each() {
        let s = Sources {
            adc_file: Some("/nonexistent/gcloud/application_default_credentials.json".into()),
            dmi_product: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            ..Sources::default()
        };
        let e = access_token(&https(), &s).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 6, "{e}");
        assert_eq!(lines[0], "no credentials for the Compute API; tried:");
        let want = [
            "--token / GCE_ACCESS_TOKEN: not set",
            "GOOGLE_APPLICATION_CREDENTIALS: not set",
            "application_default_credentials.json: not found",
            "metadata server: not a GCE VM",
            "gcloud is not on PATH",
        ];
        for (line, w) in lines[1..].iter().zip(want) {
            assert!(line.contains(w), "{line:?} should say {w:?}");
        }
    }

    #[test]
    fn a_broken_credentials_file_stops_the_search_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let rows = [
            ("{}", "no \"type\" field"),
            ("not json", "not a credentials JSON file"),
            (
                r#"{"type":"external_account"}"#,
                "\"external_account\" is not supported",
            ),
            (
                r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
                "private_key rejected",
            ),
            (
                r#"{"type":"authorized_user","client_id":"c","refresh_token":"r","token_uri":"http://127.0.0.1:9/token"}"#,
                "is not https",
            ),
        ];
        for (text, want) in rows {
            let f = d.path().join("creds.json");
            std::fs::write(&f, text).unwrap();
            let s = Sources {
                application_credentials: Some(f.clone()),
                gcloud: Some("/bin/false".into()),
                ..Sources::default()
            };
            let e = access_token(&https(), &s).unwrap_err().to_string();
            assert!(e.starts_with("GOOGLE_APPLICATION_CREDENTIALS="), "{e}");
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn metadata_server_is_asked_by_ip_only_on_gce_or_when_named() {
        let on_gce = Sources {
            dmi_product: Some("Google Compute Engine".into()),
            ..Sources::default()
        };
        assert_eq!(metadata_endpoint(&on_gce).unwrap(), Endpoint::gce());
        let named = Sources {
            metadata_host: Some("127.0.0.1:8080".into()),
            ..Sources::default()
        };
        assert_eq!(
            metadata_endpoint(&named).unwrap(),
            Endpoint::Fixed("http://127.0.0.1:8080/computeMetadata/v1/".into())
        );
        let v6 = Sources {
            metadata_host: Some("[fd20:ce::254]".into()),
            ..Sources::default()
        };
        assert_eq!(
            metadata_endpoint(&v6).unwrap(),
            Endpoint::Fixed("http://[fd20:ce::254]/computeMetadata/v1/".into())
        );
        let off = Sources {
            metadata_host: Some("127.0.0.1:8080".into()),
            no_gce_check: true,
            ..Sources::default()
        };
        assert!(
            metadata_endpoint(&off)
                .unwrap_err()
                .contains("NO_GCE_CHECK")
        );
    }

    fn jwt(claims: &serde_json::Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn an_id_token_names_its_account_by_the_email_claim() {
        let rows = [
            (
                jwt(
                    &serde_json::json!({"iss":"https://accounts.google.com","email":"dev@example.com","email_verified":true}),
                ),
                Some("dev@example.com"),
            ),
            (jwt(&serde_json::json!({"sub":"1234"})), None),
            (jwt(&serde_json::json!({"email":"not-an-email"})), None),
            ("not.a-jwt".to_string(), None),
            (String::new(), None),
        ];
        for (token, want) in rows {
            assert_eq!(id_token_email(&token).as_deref(), want, "{token}");
        }
    }
}
