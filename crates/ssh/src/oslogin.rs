//! OS Login for `gce-ssh`: whether the instance uses it, and the OS Login API calls that make an
//! ephemeral key usable there — `users/<email>:importSshPublicKey` with an expiry (the answer is
//! the login profile, whose primary POSIX account is the name to log in as) and
//! `users/<email>/sshPublicKeys/<fingerprint>` DELETE once the session is over.
//!
//! The same paths serve the real API (`https://oslogin.googleapis.com`, bearer token) and the
//! emulator (its `--endpoint` root). Google's error answers (`{"error":{"code","message",
//! "status","details":[{"reason"}]}}`) become one line with what to do about them.

use crate::compute::Metadata;
use crate::http::{Api, Http, HttpError};

pub const OSLOGIN_API: &str = "https://oslogin.googleapis.com";

/// The comment of every key gce-ssh generates: how its own stale keys are told from others in a
/// login profile.
pub const KEY_COMMENT: &str = "gce-ssh";

/// What the instance's and project's metadata say about OS Login (SPEC §10: the instance's
/// value when it parses as Go's ParseBool, else the project's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detected {
    pub enabled: bool,
    /// `enable-oslogin-2fa`: sshd also asks for a second factor (keyboard-interactive).
    pub two_factor: bool,
    /// `enable-oslogin-sk`: only security keys are accepted.
    pub security_key: bool,
}

impl Detected {
    pub fn from_metadata(instance: &Metadata, project: Option<&Metadata>) -> Detected {
        let flag = |key: &str| {
            gce_metadata::model::oslogin_flag(instance.get(key), project.and_then(|p| p.get(key)))
        };
        Detected {
            enabled: flag("enable-oslogin"),
            two_factor: flag("enable-oslogin-2fa"),
            security_key: flag("enable-oslogin-sk"),
        }
    }

    /// Whether the instance's own metadata decides `enable-oslogin` (then the project's value
    /// does not matter).
    pub fn instance_decides(instance: &Metadata) -> bool {
        instance
            .get("enable-oslogin")
            .and_then(gce_metadata::model::parse_go_bool)
            .is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OsLoginError {
    #[error(transparent)]
    Transport(#[from] HttpError),
    #[error("{url} answered {status}{}: {message}{}", fmt_status_name(.status_name), fmt_hint(.hint))]
    Api {
        url: String,
        status: u16,
        status_name: String,
        message: String,
        hint: Option<String>,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error(
        "the OS Login profile of {email} has no POSIX account usable on project {project} (the answer lists {found})"
    )]
    NoPosixAccount {
        email: String,
        project: String,
        found: String,
    },
}

fn fmt_status_name(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" {s}")
    }
}

fn fmt_hint(h: &Option<String>) -> String {
    h.as_ref().map(|h| format!("\n  {h}")).unwrap_or_default()
}

/// A POSIX account of a login profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosixAccount {
    pub username: String,
    pub uid: String,
    pub primary: bool,
    /// The project (or organisation) the account is for.
    pub account_id: String,
}

/// An SSH public key of a login profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileKey {
    pub key: String,
    pub fingerprint: String,
    pub expiration_usec: Option<u64>,
}

/// The parts of a login profile gce-ssh uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginProfile {
    /// The account (an email).
    pub name: String,
    pub posix_accounts: Vec<PosixAccount>,
    pub keys: Vec<ProfileKey>,
}

/// Google's int64 JSON fields travel as strings; numbers are taken too.
fn int64(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// OS Login's own rule for names it hands out (and what is safe on an ssh command line: no
/// leading `-`, no `@`, no blanks).
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_alphanumeric() || b[0] == b'.' || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl LoginProfile {
    pub fn from_json(v: &serde_json::Value) -> Result<LoginProfile, String> {
        if !v.is_object() {
            return Err("the login profile is not a JSON object".into());
        }
        let s = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let posix_accounts = v
            .get("posixAccounts")
            .and_then(|a| a.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| PosixAccount {
                username: s(a, "username"),
                uid: match a.get("uid") {
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => s(a, "uid"),
                },
                primary: a.get("primary").and_then(|p| p.as_bool()).unwrap_or(false),
                account_id: s(a, "accountId"),
            })
            .collect();
        let keys = match v.get("sshPublicKeys") {
            Some(serde_json::Value::Object(map)) => map
                .iter()
                .map(|(fp, k)| ProfileKey {
                    key: s(k, "key"),
                    fingerprint: k
                        .get("fingerprint")
                        .and_then(|f| f.as_str())
                        .unwrap_or(fp)
                        .to_string(),
                    expiration_usec: int64(k.get("expirationTimeUsec")),
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(LoginProfile {
            name: s(v, "name"),
            posix_accounts,
            keys,
        })
    }

    /// The POSIX user to log in as on `project`, as gcloud picks it: the primary account (the
    /// one for this project first), else the project's, else the first; a name OS Login would
    /// not hand out is never used.
    pub fn login_user(&self, project: &str) -> Option<&str> {
        let usable = || {
            self.posix_accounts
                .iter()
                .filter(|a| valid_username(&a.username))
        };
        usable()
            .find(|a| a.primary && a.account_id == project)
            .or_else(|| usable().find(|a| a.primary))
            .or_else(|| usable().find(|a| a.account_id == project))
            .or_else(|| usable().next())
            .map(|a| a.username.as_str())
    }

    /// The profile's fingerprint of `public_key` (`TYPE BLOB [comment]`), matched on the blob.
    pub fn fingerprint_of(&self, public_key: &str) -> Option<&str> {
        let blob = public_key.split_whitespace().nth(1)?;
        self.keys
            .iter()
            .find(|k| k.key.split_whitespace().nth(1) == Some(blob))
            .map(|k| k.fingerprint.as_str())
    }

    /// Keys an earlier gce-ssh run imported and that have expired (its comment, an expiry in the
    /// past): dead weight in a profile that OS Login caps at 32 KiB.
    pub fn stale_keys(&self, now_usec: u64) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| k.key.split_whitespace().nth(2) == Some(KEY_COMMENT))
            .filter(|k| k.expiration_usec.is_some_and(|e| e < now_usec))
            .map(|k| k.fingerprint.clone())
            .collect()
    }

    fn describe_accounts(&self) -> String {
        if self.posix_accounts.is_empty() {
            return "no POSIX account".into();
        }
        let names: Vec<String> = self
            .posix_accounts
            .iter()
            .map(|a| format!("{:?} for {:?}", a.username, a.account_id))
            .collect();
        names.join(", ")
    }
}

/// OS Login's fingerprint of a public key (`TYPE BLOB [comment]`): SHA-256 of the decoded blob,
/// lowercase hex, the key of `sshPublicKeys` in a login profile.
pub fn key_fingerprint(public_key: &str) -> Option<String> {
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(public_key.split_whitespace().nth(1)?)
        .ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &blob);
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Percent-encodes a path segment or query value (an email keeps its `@` and `+`).
fn encode(s: &str) -> String {
    crate::http::percent_encode(s, b"@+")
}

/// A Google API error answer as one [`OsLoginError::Api`], with what to do about it.
pub fn api_error(url: &str, status: u16, body: &str, email: &str) -> OsLoginError {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let e = v.get("error").cloned().unwrap_or_default();
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().lines().next().unwrap_or("").to_string());
    let status_name = e
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_string();
    let reasons: Vec<&str> = e
        .get("details")
        .and_then(|d| d.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d.get("reason").and_then(|r| r.as_str()))
        .collect();
    let has = |r: &str| reasons.contains(&r);
    let hint = if has("SERVICE_DISABLED") {
        Some(
            "enable the OS Login API (oslogin.googleapis.com) in the project, or pass \
             --no-oslogin if the instance does not use OS Login"
                .to_string(),
        )
    } else if has("ACCESS_TOKEN_SCOPE_INSUFFICIENT") {
        Some(
            "the access token lacks the cloud-platform scope: use credentials with it \
             (e.g. gcloud auth login)"
                .to_string(),
        )
    } else if message.contains("Login profile size exceeds") {
        Some(format!(
            "the OS Login profile of {email} is full: remove old keys (gcloud compute os-login \
             ssh-keys list / remove)"
        ))
    } else {
        match status {
            401 => {
                Some("the access token was refused (expired or revoked): log in again".to_string())
            }
            403 => Some(format!(
                "the credentials may belong to another account than {email} (see --account), \
                 or may not manage that account's OS Login profile"
            )),
            404 => Some(format!("OS Login knows no account {email} (see --account)")),
            429 => Some("OS Login API quota exhausted: try again shortly".to_string()),
            _ => None,
        }
    };
    OsLoginError::Api {
        url: url.to_string(),
        status,
        status_name,
        message,
        hint,
    }
}

/// The OS Login API at `endpoint` (`https://oslogin.googleapis.com`, or the emulator's root).
pub struct OsLoginApi<'h> {
    api: Api<'h>,
}

impl<'h> OsLoginApi<'h> {
    pub fn new(http: &'h Http, endpoint: &str, token: Option<String>) -> OsLoginApi<'h> {
        OsLoginApi {
            api: Api::new(http, endpoint, token),
        }
    }

    fn user_url(&self, email: &str) -> String {
        format!("{}/v1/users/{}", self.api.endpoint(), encode(email))
    }

    /// `importSshPublicKey` with an expiry (microseconds since the epoch, as a string as Google
    /// sends int64s); the answer's login profile.
    pub fn import_key(
        &self,
        email: &str,
        project: &str,
        public_key: &str,
        expiration_usec: u64,
    ) -> Result<LoginProfile, OsLoginError> {
        let url = format!(
            "{}:importSshPublicKey?projectId={}",
            self.user_url(email),
            encode(project)
        );
        let body = serde_json::json!({
            "key": public_key,
            "expirationTimeUsec": expiration_usec.to_string(),
        });
        let resp = self.api.post_json(&url, &body)?;
        if resp.status != 200 {
            return Err(api_error(&url, resp.status, &resp.body, email));
        }
        let decode = |reason: String| OsLoginError::Decode {
            url: url.clone(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(&resp.body).map_err(|e| decode(e.to_string()))?;
        let profile = v
            .get("loginProfile")
            .ok_or_else(|| decode("no loginProfile".into()))?;
        LoginProfile::from_json(profile).map_err(decode)
    }

    /// Removes a key from the profile; a key already gone counts as removed.
    pub fn delete_key(&self, email: &str, fingerprint: &str) -> Result<(), OsLoginError> {
        let url = format!(
            "{}/sshPublicKeys/{}",
            self.user_url(email),
            encode(fingerprint)
        );
        let resp = self.api.delete(&url)?;
        match resp.status {
            200 | 204 | 404 => Ok(()),
            status => Err(api_error(&url, status, &resp.body, email)),
        }
    }
}

/// The POSIX user of `profile` for `project`, or why there is none.
pub fn login_user(
    profile: &LoginProfile,
    email: &str,
    project: &str,
) -> Result<String, OsLoginError> {
    profile
        .login_user(project)
        .map(str::to_string)
        .ok_or_else(|| OsLoginError::NoPosixAccount {
            email: email.to_string(),
            project: project.to_string(),
            found: profile.describe_accounts(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::Item;

    fn md(items: &[(&str, &str)]) -> Metadata {
        Metadata {
            fingerprint: String::new(),
            items: items
                .iter()
                .map(|(k, v)| Item {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    /// SPEC §10: the instance's `enable-oslogin` decides when it parses, else the project's.
    #[test]
    fn detection_follows_the_instance_then_the_project() {
        type Row<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a [(&'a str, &'a str)]>,
            bool,
        );
        let rows: [Row; 8] = [
            (&[], None, false),
            (&[], Some(&[("enable-oslogin", "TRUE")]), true),
            (
                &[("enable-oslogin", "FALSE")],
                Some(&[("enable-oslogin", "TRUE")]),
                false,
            ),
            (
                &[("enable-oslogin", "true")],
                Some(&[("enable-oslogin", "false")]),
                true,
            ),
            (&[("enable-oslogin", "1")], None, true),
            // Not Go's spelling: the instance's value counts as unset.
            (
                &[("enable-oslogin", "yes")],
                Some(&[("enable-oslogin", "TRUE")]),
                true,
            ),
            (&[("enable-oslogin", "yes")], None, false),
            // The project could not be read: the instance alone.
            (&[("enable-oslogin", "T")], None, true),
        ];
        for (instance, project, want) in rows {
            let project = project.map(md);
            let d = Detected::from_metadata(&md(instance), project.as_ref());
            assert_eq!(d.enabled, want, "{instance:?} / {project:?}");
        }
        let d = Detected::from_metadata(
            &md(&[("enable-oslogin", "TRUE"), ("enable-oslogin-2fa", "TRUE")]),
            Some(&md(&[("enable-oslogin-sk", "true")])),
        );
        assert_eq!(
            d,
            Detected {
                enabled: true,
                two_factor: true,
                security_key: true
            }
        );
        assert!(Detected::instance_decides(&md(&[(
            "enable-oslogin",
            "False"
        )])));
        assert!(!Detected::instance_decides(&md(&[(
            "enable-oslogin",
            "off"
        )])));
        assert!(!Detected::instance_decides(&md(&[])));
    }

    /// An importSshPublicKey answer as the real API sends it (two POSIX accounts, keys keyed
    /// by their SHA-256 fingerprint, int64s as strings).
    fn real_answer() -> serde_json::Value {
        serde_json::json!({"loginProfile": {
            "name": "alice@example.com",
            "posixAccounts": [
                {"username": "alice_example_com_other", "uid": "2001", "gid": "2001",
                 "homeDirectory": "/home/x", "operatingSystemType": "LINUX",
                 "accountId": "other-proj", "name": "users/alice@example.com/projects/other-proj"},
                {"primary": true, "username": "alice_example_com", "uid": "1234567",
                 "gid": "1234567", "homeDirectory": "/home/alice_example_com",
                 "operatingSystemType": "LINUX", "accountId": "my-proj",
                 "name": "users/alice@example.com/projects/my-proj"}
            ],
            "sshPublicKeys": {
                "1f2e": {"key": "ssh-ed25519 AAAAnew gce-ssh", "expirationTimeUsec": "1900000000000000",
                         "fingerprint": "1f2e", "name": "users/alice@example.com/sshPublicKeys/1f2e"},
                "aa01": {"key": "ssh-ed25519 AAAAold gce-ssh", "expirationTimeUsec": "1600000000000000",
                         "fingerprint": "aa01"},
                "bb02": {"key": "ssh-rsa AAAAlaptop alice@laptop", "fingerprint": "bb02"},
                "cc03": {"key": "ssh-ed25519 AAAAother someone-else", "expirationTimeUsec": "1600000000000000",
                         "fingerprint": "cc03"}
            }
        }})
    }

    #[test]
    fn the_login_user_is_the_primary_posix_account_of_the_project() {
        let p = LoginProfile::from_json(&real_answer()["loginProfile"]).unwrap();
        assert_eq!(p.name, "alice@example.com");
        assert_eq!(p.login_user("my-proj"), Some("alice_example_com"));
        assert_eq!(p.posix_accounts[1].uid, "1234567");
        // Rows: accounts (username, primary, accountId) → chosen for project "p".
        type Row<'a> = (&'a [(&'a str, bool, &'a str)], Option<&'a str>);
        let rows: [Row; 6] = [
            (
                &[("a", false, "x"), ("b", true, "x"), ("c", true, "p")],
                Some("c"),
            ),
            (&[("a", false, "x"), ("b", true, "x")], Some("b")),
            (&[("a", false, "x"), ("b", false, "p")], Some("b")),
            (&[("a", false, "x")], Some("a")),
            (&[], None),
            // Names OS Login would never hand out are skipped, never put on a command line.
            (&[("-oProxyCommand=x", true, "p"), ("x y", true, "p")], None),
        ];
        for (accounts, want) in rows {
            let p = LoginProfile {
                posix_accounts: accounts
                    .iter()
                    .map(|(u, primary, id)| PosixAccount {
                        username: u.to_string(),
                        uid: "1".into(),
                        primary: *primary,
                        account_id: id.to_string(),
                    })
                    .collect(),
                ..LoginProfile::default()
            };
            assert_eq!(p.login_user("p"), want, "{accounts:?}");
        }
        let e = login_user(&LoginProfile::default(), "a@b.c", "p").unwrap_err();
        assert!(e.to_string().contains("no POSIX account"), "{e}");
    }

    #[test]
    fn the_imported_key_and_our_expired_keys_are_found_by_blob_and_comment() {
        let p = LoginProfile::from_json(&real_answer()["loginProfile"]).unwrap();
        assert_eq!(
            p.fingerprint_of("ssh-ed25519 AAAAnew gce-ssh"),
            Some("1f2e")
        );
        assert_eq!(p.fingerprint_of("ssh-ed25519 AAAAnew"), Some("1f2e"));
        assert_eq!(p.fingerprint_of("ssh-ed25519 AAAAmissing"), None);
        // Only expired keys with gce-ssh's comment: never the user's own or someone else's.
        assert_eq!(p.stale_keys(1_700_000_000_000_000), ["aa01"]);
        let numeric = LoginProfile::from_json(&serde_json::json!({"sshPublicKeys": {
            "f": {"key": "k b gce-ssh", "expirationTimeUsec": 5}}}))
        .unwrap();
        assert_eq!(numeric.keys[0].expiration_usec, Some(5));
        assert!(LoginProfile::from_json(&serde_json::json!("x")).is_err());
    }

    /// The error answers the real API gives, each one line with what to do.
    #[test]
    fn google_error_answers_become_one_line_with_a_hint() {
        let rows = [
            (
                403,
                r#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}"#,
                "answered 403 PERMISSION_DENIED: The caller does not have permission",
                "another account than alice@example.com",
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"Cloud OS Login API has not been used in project 123 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com"}]}}"#,
                "has not been used in project 123",
                "enable the OS Login API",
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}}"#,
                "insufficient authentication scopes",
                "cloud-platform scope",
            ),
            (
                401,
                r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
                "answered 401 UNAUTHENTICATED",
                "log in again",
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"Login profile size exceeds 32 KiB. Delete profile values to make additional space.","status":"FAILED_PRECONDITION"}}"#,
                "answered 400 FAILED_PRECONDITION: Login profile size exceeds 32 KiB",
                "ssh-keys list / remove",
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"Invalid SSH public key","status":"INVALID_ARGUMENT"}}"#,
                "answered 400 INVALID_ARGUMENT: Invalid SSH public key",
                "",
            ),
            (
                502,
                "<html>bad gateway</html>\nmore",
                "answered 502: <html>bad gateway</html>",
                "",
            ),
        ];
        for (status, body, want, want_hint) in rows {
            let e =
                api_error("https://o/v1/users/a", status, body, "alice@example.com").to_string();
            let mut lines = e.lines();
            let first = lines.next().unwrap();
            assert!(first.contains(want), "{first}");
            let hint = lines.collect::<Vec<_>>().join("\n");
            if want_hint.is_empty() {
                assert!(hint.is_empty(), "{e}");
            } else {
                assert!(hint.contains(want_hint), "{e}");
            }
        }
    }

    #[test]
    fn fingerprints_are_the_hex_sha256_of_the_blob() {
        // `AAAAC3NzaC1lZDI1NTE5AAAAIA…` decodes to the ed25519 blob; sha256sum of those bytes.
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x";
        let fp = key_fingerprint(key).unwrap();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(key_fingerprint("ssh-ed25519 !!!"), None);
        assert_eq!(key_fingerprint("nothing"), None);
    }

    #[test]
    fn emails_and_fingerprints_are_encoded_for_the_url() {
        assert_eq!(encode("alice+ops@example.com"), "alice+ops@example.com");
        assert_eq!(encode("a b/c?d#"), "a%20b%2Fc%3Fd%23");
        assert!(valid_username("alice_example_com"));
        assert!(valid_username("sa_1234567890"));
        for bad in ["", "-x", "a b", "a@b", &"x".repeat(33)] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }
}
