//! HTTP faces of the OS Login directory: the OS Login API under `/v1/users/…` (shaped like
//! `oslogin.googleapis.com`: `importSshPublicKey`, `loginProfile`, `sshPublicKeys/<fp>`), and
//! the emulator-only `/emulator/oslogin/…` that creates users and groups, grants or revokes the
//! IAM roles' effect (`login`, `adminLogin`) and sets the trusted user CA keys. `Authorization`
//! is ignored, as in the Compute API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use crate::Shared;
use crate::oslogin::{OsLoginError, profile_json};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/users/{user}", post(user_action))
        .route("/v1/users/{user}/loginProfile", get(login_profile))
        .route(
            "/v1/users/{user}/sshPublicKeys/{fingerprint}",
            get(get_key).delete(delete_key),
        )
        .route("/emulator/oslogin", get(dump))
        .route(
            "/emulator/oslogin/users/{user}",
            put(put_user).delete(delete_user),
        )
        .route("/emulator/oslogin/users/{user}/policy", put(put_policy))
        .route(
            "/emulator/oslogin/groups/{group}",
            put(put_group).delete(delete_group),
        )
        .route("/emulator/oslogin/certificates", put(put_certificates))
}

type ApiResult = Result<Response, OsLoginError>;

impl IntoResponse for OsLoginError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::BAD_REQUEST);
        json_response(status, &self.body())
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [("content-type", "application/json; charset=UTF-8")],
        v.to_string(),
    )
        .into_response()
}

fn ok(v: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &v))
}

fn body_json(body: &Bytes) -> Result<Value, OsLoginError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| OsLoginError::Invalid(format!("Invalid JSON payload received. {e}")))
}

/// An int64 field: Google sends them as strings, clients may send numbers.
fn int64(v: Option<&Value>, field: &str) -> Result<Option<u64>, OsLoginError> {
    match v {
        None | Some(Value::Null) => Some(None),
        Some(Value::Number(n)) => n.as_u64().map(Some),
        Some(Value::String(s)) if s.is_empty() => Some(None),
        Some(Value::String(s)) => s.parse().ok().map(Some),
        Some(_) => None,
    }
    .ok_or_else(|| OsLoginError::Invalid(format!("Invalid value at '{field}'")))
}

fn project(shared: &Shared) -> String {
    shared
        .snapshot()
        .doc
        .pointer("/project/projectId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn profile_of(shared: &Shared, email: &str) -> ApiResult {
    let project = project(shared);
    let dir = shared.oslogin_dir();
    let user = dir.user(email).ok_or_else(|| {
        OsLoginError::NotFound(format!("Requested entity was not found: users/{email}"))
    })?;
    ok(profile_json(user, &project))
}

/// `POST /v1/users/<email>:importSshPublicKey[?projectId=P]` with
/// `{"key":…,"expirationTimeUsec":…}` → `{"loginProfile":{…}}`.
async fn user_action(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
    Query(_params): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let Some(email) = user.strip_suffix(":importSshPublicKey") else {
        return Err(OsLoginError::NotFound(format!(
            "Unknown method on users/{user}"
        )));
    };
    let v = body_json(&body)?;
    let key = v
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| OsLoginError::Invalid("Missing required field 'key'".into()))?;
    let expiration = int64(v.get("expirationTimeUsec"), "expirationTimeUsec")?;
    shared.oslogin_dir().import_key(email, key, expiration)?;
    let project = project(&shared);
    let dir = shared.oslogin_dir();
    let user = dir.user(email).expect("created by import");
    ok(json!({"loginProfile": profile_json(user, &project)}))
}

async fn login_profile(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> ApiResult {
    profile_of(&shared, &user)
}

async fn get_key(
    State(shared): State<Arc<Shared>>,
    Path((user, fingerprint)): Path<(String, String)>,
) -> ApiResult {
    let project = project(&shared);
    let dir = shared.oslogin_dir();
    let key = dir
        .user(&user)
        .and_then(|u| {
            profile_json(u, &project)["sshPublicKeys"]
                .get(&fingerprint)
                .cloned()
        })
        .ok_or_else(|| {
            OsLoginError::NotFound(format!(
                "Requested entity was not found: users/{user}/sshPublicKeys/{fingerprint}"
            ))
        })?;
    ok(key)
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    Path((user, fingerprint)): Path<(String, String)>,
) -> ApiResult {
    shared.oslogin_dir().delete_key(&user, &fingerprint)?;
    ok(json!({}))
}

async fn dump(State(shared): State<Arc<Shared>>) -> ApiResult {
    let project = project(&shared);
    let dir = shared.oslogin_dir();
    let users: Vec<Value> = dir
        .users()
        .map(|u| {
            let mut p = profile_json(u, &project);
            p["login"] = json!(u.login || u.admin_login);
            p["adminLogin"] = json!(u.admin_login);
            p
        })
        .collect();
    ok(json!({"users": users, "certificates": dir.ca_keys()}))
}

/// `PUT /emulator/oslogin/users/<email>` with optional `{"login":…,"adminLogin":…}`: creates
/// the profile (and POSIX account) if needed and sets the roles that are given.
async fn put_user(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
    body: Bytes,
) -> ApiResult {
    let v = body_json(&body)?;
    {
        let mut dir = shared.oslogin_dir();
        let u = dir.ensure_user(&user)?;
        let (login, admin) = (u.login, u.admin_login);
        let login = v.get("login").and_then(Value::as_bool).unwrap_or(login);
        let admin = v
            .get("adminLogin")
            .and_then(Value::as_bool)
            .unwrap_or(admin);
        dir.set_policy(&user, login, admin)?;
    }
    profile_of(&shared, &user)
}

async fn delete_user(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> ApiResult {
    if shared.oslogin_dir().remove_user(&user) {
        ok(json!({}))
    } else {
        Err(OsLoginError::NotFound(format!("no user {user}")))
    }
}

/// `PUT /emulator/oslogin/users/<email>/policy` with `{"login":bool,"adminLogin":bool}`
/// (absent = false): the effect of granting or revoking `roles/compute.osLogin` /
/// `roles/compute.osAdminLogin`.
async fn put_policy(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
    body: Bytes,
) -> ApiResult {
    let v = body_json(&body)?;
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    shared
        .oslogin_dir()
        .set_policy(&user, flag("login"), flag("adminLogin"))?;
    profile_of(&shared, &user)
}

/// `PUT /emulator/oslogin/groups/<name>` with `{"gid"?:N,"members":[emails]}`.
async fn put_group(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> ApiResult {
    let v = body_json(&body)?;
    let gid = int64(v.get("gid"), "gid")?
        .map(|g| u32::try_from(g).map_err(|_| OsLoginError::Invalid("gid out of range".into())))
        .transpose()?;
    let members: Vec<String> = v
        .get("members")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let gid = shared.oslogin_dir().set_group(&group, gid, &members)?;
    ok(json!({"name": group, "gid": gid.to_string(), "members": members}))
}

async fn delete_group(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> ApiResult {
    if shared.oslogin_dir().remove_group(&group) {
        ok(json!({}))
    } else {
        Err(OsLoginError::NotFound(format!("no group {group}")))
    }
}

/// `PUT /emulator/oslogin/certificates` with `["ssh-rsa …", …]` or the guest shape
/// `{"trustedCertificateAuthorities":[{"publicKey":…}]}`.
async fn put_certificates(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let v = body_json(&body)?;
    let list = match &v {
        Value::Array(a) => a.clone(),
        _ => v
            .get("trustedCertificateAuthorities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("publicKey").cloned())
                    .collect()
            })
            .ok_or_else(|| {
                OsLoginError::Invalid(
                    "expected [keys] or {\"trustedCertificateAuthorities\":[{\"publicKey\":…}]}"
                        .into(),
                )
            })?,
    };
    let keys: Vec<String> = list
        .iter()
        .map(|k| k.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| OsLoginError::Invalid("CA keys must be strings".into()))?;
    shared.oslogin_dir().set_ca_keys(keys);
    ok(json!({}))
}
