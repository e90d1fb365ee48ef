//! Test support for `gce-ssh` against an HTTPS Compute API without the internet: a test CA
//! (made here with rcgen), a TLS-terminating front for any plain-HTTP server on loopback (the
//! emulator, the token endpoint), an OAuth token endpoint that checks service-account JWTs with
//! the test key and refresh tokens, and a fake gcloud (configuration directory and program).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gce_testkit::BackgroundRuntime;

/// A certificate authority that exists only for this test, and a server certificate from it
/// for `127.0.0.1` and `localhost`.
pub struct TestCa {
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let p = dir.join("test-ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// Serves HTTPS on a fresh loopback port, passing every connection's bytes to `backend`.
    pub fn front(&self, rt: &BackgroundRuntime, backend: SocketAddr) -> String {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.block_on(async move {
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // A client that rejects the certificate ends the handshake: nothing to do.
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            });
        });
        format!("https://127.0.0.1:{}", addr.port())
    }
}

/// A service account key as the Cloud console downloads it, with a fresh RSA key (ssh-keygen
/// writes PKCS#8 PEM, as Google's key files hold) and `token_uri` pointing at the test endpoint.
pub struct ServiceAccount {
    pub json_path: PathBuf,
    pub email: String,
    pub key_id: String,
    /// RSAPublicKey DER, to verify signatures.
    pub public_der: Vec<u8>,
}

impl ServiceAccount {
    pub fn new(dir: &Path, token_uri: &str) -> ServiceAccount {
        let key = dir.join("sa-key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        gce_testkit::sh(&[
            "ssh-keygen",
            "-q",
            "-t",
            "rsa",
            "-b",
            "2048",
            "-m",
            "PKCS8",
            "-N",
            "",
            "-f",
            key.to_str().unwrap(),
        ])
        .unwrap();
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let der = {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let pair = ring::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let public_der = pair.public().as_ref().to_vec();
        let email = "gce-ssh-test@my-proj.iam.gserviceaccount.com".to_string();
        let key_id = "0123456789abcdef0123456789abcdef01234567".to_string();
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "my-proj",
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        let json_path = dir.join("service-account.json");
        std::fs::write(&json_path, json.to_string()).unwrap();
        ServiceAccount {
            json_path,
            email,
            key_id,
            public_der,
        }
    }
}

/// What the token endpoint accepts and what it saw.
#[derive(Default)]
pub struct TokenRules {
    /// Service accounts: (email, RSAPublicKey DER, key id) → token handed out.
    pub service_accounts: Vec<(String, Vec<u8>, String, String)>,
    /// Refresh tokens: (client_id, client_secret, refresh_token) → token handed out.
    pub refresh: Vec<(String, String, String, String)>,
    /// The `aud` a JWT must carry (the endpoint's own URL).
    pub audience: String,
    /// Tokens handed out with an `id_token` naming this email (an `openid` grant).
    pub id_tokens: Vec<(String, String)>,
    /// What `/tokeninfo` says about a token: (token, email).
    pub token_emails: Vec<(String, String)>,
    /// One line per rejected request, saying why.
    pub rejected: Vec<String>,
    pub granted: Vec<String>,
}

/// An unsigned JWT carrying `claims` (what a test needs of an ID token: its payload).
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An OAuth 2 token endpoint (`POST /token`, form-encoded) and Google's token info
/// (`POST /tokeninfo`), plain HTTP for a [`TestCa::front`].
pub fn token_server(rt: &BackgroundRuntime, rules: Arc<Mutex<TokenRules>>) -> SocketAddr {
    use axum::routing::post;
    let info_rules = rules.clone();
    let app = axum::Router::new()
        .route(
            "/token",
            post(move |body: String| {
                let rules = rules.clone();
                async move {
                    let form = parse_form(&body);
                    let mut r = rules.lock().unwrap();
                    match check_token_request(&r, &form) {
                        Ok(token) => {
                            r.granted.push(token.clone());
                            let mut answer = serde_json::json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"});
                            if let Some((_, email)) = r.id_tokens.iter().find(|(t, _)| *t == token) {
                                answer["id_token"] = serde_json::json!(unsigned_jwt(
                                    &serde_json::json!({"iss": "https://accounts.google.com", "email": email, "email_verified": true})
                                ));
                            }
                            (axum::http::StatusCode::OK, answer.to_string())
                        }
                        Err(why) => {
                            r.rejected.push(why.clone());
                            (
                                axum::http::StatusCode::BAD_REQUEST,
                                serde_json::json!({"error": "invalid_grant", "error_description": why})
                                    .to_string(),
                            )
                        }
                    }
                }
            }),
        )
        .route(
            "/tokeninfo",
            post(move |body: String| {
                let rules = info_rules.clone();
                async move {
                    let form = parse_form(&body);
                    let token = form.get("access_token").cloned().unwrap_or_default();
                    let r = rules.lock().unwrap();
                    match r.token_emails.iter().find(|(t, _)| *t == token) {
                        Some((_, email)) => (
                            axum::http::StatusCode::OK,
                            serde_json::json!({"azp": "32555940559.apps.googleusercontent.com",
                                "scope": "openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/cloud-platform",
                                "exp": "1900000000", "expires_in": "3599", "email": email,
                                "email_verified": "true", "access_type": "offline"})
                            .to_string(),
                        ),
                        None => (
                            axum::http::StatusCode::BAD_REQUEST,
                            serde_json::json!({"error": "invalid_token", "error_description": "Invalid Value"})
                                .to_string(),
                        ),
                    }
                }
            }),
        );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.block_on(async move {
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    });
    addr
}

fn parse_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Google's checks on a token request, as far as a test can make them: the grant, and for a
/// JWT its RS256 signature with the registered key and its claims.
fn check_token_request(r: &TokenRules, form: &HashMap<String, String>) -> Result<String, String> {
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    match grant {
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let jwt = form.get("assertion").ok_or("no assertion")?;
            let parts: Vec<&str> = jwt.split('.').collect();
            if parts.len() != 3 {
                return Err("assertion is not a JWT".into());
            }
            let dec = |p: &str| {
                URL_SAFE_NO_PAD
                    .decode(p)
                    .map_err(|e| format!("base64url: {e}"))
            };
            let header: serde_json::Value =
                serde_json::from_slice(&dec(parts[0])?).map_err(|e| e.to_string())?;
            let claims: serde_json::Value =
                serde_json::from_slice(&dec(parts[1])?).map_err(|e| e.to_string())?;
            let sig = dec(parts[2])?;
            if header["alg"] != "RS256" || header["typ"] != "JWT" {
                return Err(format!("bad header {header}"));
            }
            let iss = claims["iss"].as_str().unwrap_or("");
            let (_, public, kid, token) = r
                .service_accounts
                .iter()
                .find(|(email, ..)| email == iss)
                .ok_or(format!("unknown iss {iss}"))?;
            if header["kid"] != kid.as_str() {
                return Err(format!("kid {} is not {kid}", header["kid"]));
            }
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                public,
            )
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .map_err(|_| "bad signature".to_string())?;
            if claims["aud"] != r.audience.as_str() {
                return Err(format!("aud {} is not {}", claims["aud"], r.audience));
            }
            let scope = claims["scope"].as_str().unwrap_or("");
            if !scope.split(' ').any(|s| {
                s == "https://www.googleapis.com/auth/cloud-platform"
                    || s == "https://www.googleapis.com/auth/compute"
            }) {
                return Err(format!("scope {scope:?} does not cover Compute"));
            }
            let now = chrono::Utc::now().timestamp();
            let iat = claims["iat"].as_i64().ok_or("no iat")?;
            let exp = claims["exp"].as_i64().ok_or("no exp")?;
            if (iat - now).abs() > 60 || exp <= now || exp - iat > 3600 {
                return Err(format!("iat {iat} / exp {exp} do not fit now {now}"));
            }
            Ok(token.clone())
        }
        "refresh_token" => {
            let get = |k: &str| form.get(k).cloned().unwrap_or_default();
            r.refresh
                .iter()
                .find(|(id, secret, refresh, _)| {
                    *id == get("client_id")
                        && *secret == get("client_secret")
                        && *refresh == get("refresh_token")
                })
                .map(|(.., token)| token.clone())
                .ok_or_else(|| "unknown refresh token".to_string())
        }
        other => Err(format!("unsupported grant_type {other:?}")),
    }
}

/// A gcloud configuration directory (`CLOUDSDK_CONFIG`) with an active configuration naming
/// `project` and `zone`, and optionally application default credentials.
pub fn gcloud_config(dir: &Path, project: &str, zone: &str, adc: Option<&str>) -> PathBuf {
    let cfg = dir.join("gcloud");
    std::fs::create_dir_all(cfg.join("configurations")).unwrap();
    std::fs::write(cfg.join("active_config"), "work").unwrap();
    std::fs::write(
        cfg.join("configurations/config_default"),
        "[core]\nproject = not-this-one\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("configurations/config_work"),
        format!("[core]\naccount = dev@example.com\nproject = {project}\n\n[compute]\nzone = {zone}\nregion = x\n"),
    )
    .unwrap();
    if let Some(adc) = adc {
        std::fs::write(cfg.join("application_default_credentials.json"), adc).unwrap();
    }
    cfg
}

/// A directory with a fake `gcloud` that prints `token` for `auth print-access-token` and fails
/// otherwise; returns a PATH with it first.
pub fn fake_gcloud(dir: &Path, token: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("fake-gcloud-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("gcloud");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1 $2\" = \"auth print-access-token\" ]; then echo {token}; exit 0; fi\necho \"unexpected: $*\" >&2; exit 1\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The environment variables of a user's machine that would change which credentials,
/// project, roots or proxy `gce-ssh` uses: cleared for every test run.
pub const USER_ENV: &[&str] = &[
    "GCE_ACCESS_TOKEN",
    "GCE_SSH_ENDPOINT",
    "GCE_SSH_KNOWN_HOSTS",
    "GCE_SSH_ACCOUNT",
    "GCE_SSH_OSLOGIN_ENDPOINT",
    "CLOUDSDK_CORE_ACCOUNT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "CLOUDSDK_ACTIVE_CONFIG_NAME",
    "CLOUDSDK_CORE_PROJECT",
    "CLOUDSDK_COMPUTE_ZONE",
    "GCE_METADATA_HOST",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];
