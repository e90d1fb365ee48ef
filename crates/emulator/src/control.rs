//! The Compute API's metadata calls (`/compute/v1/…`), shaped like GCE's: instances.get,
//! instances.setMetadata, instances.getGuestAttributes, projects.get and
//! projects.setCommonInstanceMetadata. Fingerprints guard read-modify-write (412 on a stale
//! one); GCE's size limits are enforced and nothing changes on error. `Authorization` is ignored
//! unless a token was required (`EmulatorHandle::require_compute_token`): then a request without
//! that bearer token gets Google's 401 UNAUTHENTICATED answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::{Shared, doc};

const API: &str = "https://www.googleapis.com/compute/v1";
const MAX_VALUE: usize = 256 * 1024;
const MAX_TOTAL: usize = 512 * 1024;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/compute/v1/projects/{project}", get(get_project))
        .route(
            "/compute/v1/projects/{project}/setCommonInstanceMetadata",
            post(set_project_metadata),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}",
            get(get_instance),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/setMetadata",
            post(set_instance_metadata),
        )
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/getGuestAttributes",
            get(get_guest_attributes),
        )
}

/// A Google-style API error.
pub struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.code == 401 {
            // Google's shape for a missing or bad token: the header location and a status name.
            let item = if self.reason == "required" {
                "Login Required."
            } else {
                "Invalid Credentials"
            };
            let body = json!({"error": {
                "code": 401,
                "message": self.message,
                "errors": [{"message": item, "domain": "global", "reason": self.reason,
                            "location": "Authorization", "locationType": "header"}],
                "status": "UNAUTHENTICATED",
            }});
            return (
                status,
                [
                    ("content-type", "application/json; charset=UTF-8"),
                    (
                        "www-authenticate",
                        "Bearer realm=\"https://accounts.google.com/\"",
                    ),
                ],
                body.to_string(),
            )
                .into_response();
        }
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
        }});
        (
            status,
            [("content-type", "application/json; charset=UTF-8")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Checks the bearer token when one is required (401 as Google answers otherwise).
fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let required = shared
        .compute_token
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(required) = required else {
        return Ok(());
    };
    // A header that is not `Bearer <the token>` is an invalid credential; none is a missing one.
    let given = headers
        .get("authorization")
        .map(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
    match given {
        Some(Some(t)) if t == required => Ok(()),
        None => Err(ApiError::new(
            401,
            "required",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )),
        Some(_) => Err(ApiError::new(
            401,
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )),
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok((
        [("content-type", "application/json; charset=UTF-8")],
        v.to_string(),
    )
        .into_response())
}

fn str_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A number or a string, as text (ids are u64 above 2^53: never through f64).
fn id_at(doc: &Value, pointer: &str) -> String {
    match doc.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn check_project(doc: &Value, project: &str) -> Result<(), ApiError> {
    if project == str_at(doc, "/project/projectId")
        || project == id_at(doc, "/project/numericProjectId")
    {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            "notFound",
            format!("The resource 'projects/{project}' was not found"),
        ))
    }
}

fn check_instance(doc: &Value, project: &str, zone: &str, instance: &str) -> Result<(), ApiError> {
    check_project(doc, project)?;
    let own_zone = str_at(doc, "/instance/zone")
        .rsplit('/')
        .next()
        .unwrap_or("");
    let name = str_at(doc, "/instance/name");
    if zone == own_zone && (instance == name || instance == id_at(doc, "/instance/id")) {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            "notFound",
            format!(
                "The resource 'projects/{project}/zones/{zone}/instances/{instance}' was not found"
            ),
        ))
    }
}

/// Attributes as Compute `items`, in key order, values as strings.
fn items_of(attrs: Option<&Value>) -> Vec<(String, String)> {
    match attrs {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// base64 of an 8-byte hash of the items: changes whenever any key or value does.
fn fingerprint(items: &[(String, String)]) -> String {
    let mut bytes = Vec::new();
    for (k, v) in items {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    doc::base64(&doc::fnv1a(&bytes).to_be_bytes())
}

fn metadata_json(items: &[(String, String)]) -> Value {
    json!({
        "kind": "compute#metadata",
        "fingerprint": fingerprint(items),
        "items": items.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
    })
}

fn project_name(doc: &Value) -> String {
    str_at(doc, "/project/projectId").to_string()
}

async fn get_instance(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((project, zone, instance)): Path<(String, String, String)>,
) -> ApiResult {
    authorize(&shared, &headers)?;
    let snap = shared.snapshot();
    let d = &snap.doc;
    check_instance(d, &project, &zone, &instance)?;
    let p = project_name(d);
    let nics: Vec<Value> = d
        .pointer("/instance/networkInterfaces")
        .and_then(Value::as_array)
        .map(|nics| {
            nics.iter()
                .enumerate()
                .map(|(i, nic)| {
                    // The guest sees `accessConfigs[].externalIp`; the API calls it `natIP`.
                    let access: Vec<Value> = nic
                        .get("accessConfigs")
                        .and_then(Value::as_array)
                        .map(|acs| {
                            acs.iter()
                                .map(|ac| {
                                    json!({
                                        "kind": "compute#accessConfig",
                                        "type": ac.get("type").cloned().unwrap_or(json!("ONE_TO_ONE_NAT")),
                                        "name": "External NAT",
                                        "natIP": ac.get("externalIp").cloned().unwrap_or(Value::Null),
                                        "networkTier": "PREMIUM",
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    json!({
                        "kind": "compute#networkInterface",
                        "name": format!("nic{i}"),
                        "network": format!("{API}/projects/{p}/global/networks/default"),
                        "networkIP": nic.get("ip").cloned().unwrap_or(Value::Null),
                        "accessConfigs": access,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let tags = d.pointer("/instance/tags").cloned().unwrap_or(json!([]));
    let machine = str_at(d, "/instance/machineType")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    ok(json!({
        "kind": "compute#instance",
        "id": id_at(d, "/instance/id"),
        "name": str_at(d, "/instance/name"),
        "zone": format!("{API}/projects/{p}/zones/{zone}"),
        "machineType": format!("{API}/projects/{p}/zones/{zone}/machineTypes/{machine}"),
        "status": "RUNNING",
        "cpuPlatform": str_at(d, "/instance/cpuPlatform"),
        "tags": {"items": tags},
        "metadata": metadata_json(&items_of(d.pointer("/instance/attributes"))),
        "networkInterfaces": nics,
        "selfLink": format!("{API}/projects/{p}/zones/{zone}/instances/{instance}"),
    }))
}

async fn get_project(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> ApiResult {
    authorize(&shared, &headers)?;
    let snap = shared.snapshot();
    let d = &snap.doc;
    check_project(d, &project)?;
    ok(json!({
        "kind": "compute#project",
        "name": project_name(d),
        "id": id_at(d, "/project/numericProjectId"),
        "commonInstanceMetadata": metadata_json(&items_of(d.pointer("/project/attributes"))),
        "selfLink": format!("{API}/projects/{}", project_name(d)),
    }))
}

/// Parse and validate a `{fingerprint, items}` body as GCE does.
fn parse_metadata(body: &Bytes) -> Result<(Option<String>, Map<String, Value>), ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "parseError",
            format!("Invalid JSON payload received. {e}"),
        )
    })?;
    let fingerprint = v
        .get("fingerprint")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut seen = HashSet::new();
    let mut total = 0usize;
    let mut attrs = Map::new();
    let items = match v.get("items") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::new(
                400,
                "invalid",
                "Invalid value for field 'metadata.items'",
            ));
        }
    };
    for item in items {
        let key = item.get("key").and_then(Value::as_str).unwrap_or("");
        let value = match item.get("value") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "invalid",
                    format!("Invalid value for field 'metadata.items.value' of key '{key}'"),
                ));
            }
        };
        let key_ok = (1..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(ApiError::new(
                400,
                "invalid",
                format!(
                    "Invalid value for field 'metadata.items.key': '{key}'. Must be a match of regex '[a-zA-Z0-9-_]{{1,128}}'"
                ),
            ));
        }
        if value.len() > MAX_VALUE {
            return Err(ApiError::new(
                400,
                "invalid",
                format!("Value for metadata key '{key}' exceeds the limit of {MAX_VALUE} bytes"),
            ));
        }
        if !seen.insert(key) {
            return Err(ApiError::new(
                400,
                "invalid",
                format!("Duplicate metadata key '{key}'"),
            ));
        }
        total += key.len() + value.len();
        attrs.insert(key.to_string(), Value::String(value.to_string()));
    }
    if total >= MAX_TOTAL {
        return Err(ApiError::new(
            400,
            "invalid",
            format!("Metadata total size {total} bytes exceeds the limit of {MAX_TOTAL} bytes"),
        ));
    }
    Ok((fingerprint, attrs))
}

/// Replace `scope`'s attributes if `fingerprint` is current: one atomic step.
fn replace_attributes(
    shared: &Shared,
    scope: &str,
    fingerprint: Option<String>,
    attrs: Map<String, Value>,
) -> Result<(), ApiError> {
    let pointer = format!("/{scope}/attributes");
    shared.try_update(|d, _| {
        let current = fingerprint_of_doc(d, &pointer);
        if fingerprint.as_deref() != Some(current.as_str()) {
            return Err(ApiError::new(
                412,
                "conditionNotMet",
                format!(
                    "Supplied fingerprint does not match current metadata fingerprint ({}).",
                    current
                ),
            ));
        }
        doc::pointer_set(d, &pointer, Value::Object(attrs));
        Ok(())
    })
}

fn fingerprint_of_doc(d: &Value, pointer: &str) -> String {
    fingerprint(&items_of(d.pointer(pointer)))
}

fn operation(shared: &Shared, kind: &str, target: String, zone: Option<&str>) -> Value {
    let n = shared.operations.fetch_add(1, Ordering::Relaxed) + 1;
    let mut op = json!({
        "kind": "compute#operation",
        "id": (1_000_000_000u64 + n).to_string(),
        "name": format!("operation-emulated-{n}"),
        "operationType": kind,
        "status": "DONE",
        "progress": 100,
        "targetLink": target,
    });
    if let Some(zone) = zone {
        op["zone"] = json!(zone);
    }
    op
}

async fn set_instance_metadata(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((project, zone, instance)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers)?;
    check_instance(&shared.snapshot().doc, &project, &zone, &instance)?;
    let (fp, attrs) = parse_metadata(&body)?;
    replace_attributes(&shared, "instance", fp, attrs)?;
    let zone_link = format!("{API}/projects/{project}/zones/{zone}");
    let target = format!("{zone_link}/instances/{instance}");
    ok(operation(&shared, "setMetadata", target, Some(&zone_link)))
}

async fn set_project_metadata(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: Bytes,
) -> ApiResult {
    authorize(&shared, &headers)?;
    check_project(&shared.snapshot().doc, &project)?;
    let (fp, attrs) = parse_metadata(&body)?;
    replace_attributes(&shared, "project", fp, attrs)?;
    ok(operation(
        &shared,
        "setCommonInstanceMetadata",
        format!("{API}/projects/{project}"),
        None,
    ))
}

async fn get_guest_attributes(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((project, zone, instance)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    authorize(&shared, &headers)?;
    let snap = shared.snapshot();
    check_instance(&snap.doc, &project, &zone, &instance)?;
    let self_link =
        format!("{API}/projects/{project}/zones/{zone}/instances/{instance}/guestAttributes");
    let not_found = |what: &str| {
        ApiError::new(
            404,
            "notFound",
            format!("The resource '{what}' of type 'Guest Attribute' was not found."),
        )
    };
    let single = |path: &str| -> Option<(String, String)> {
        let (ns, key) = path.split_once('/')?;
        let v = snap.guest.get(ns)?.get(key)?;
        Some((path.to_string(), v.clone()))
    };
    if let Some(var) = params.get("variableKey") {
        let (k, v) = single(var).ok_or_else(|| not_found(var))?;
        return ok(
            json!({"kind": "compute#guestAttributes", "selfLink": self_link, "variableKey": k, "variableValue": v}),
        );
    }
    let query_path = params.get("queryPath").cloned().unwrap_or_default();
    let trimmed = query_path.trim_start_matches('/');
    if let Some((ns, key)) = trimmed.split_once('/').filter(|(_, k)| !k.is_empty()) {
        let (k, v) = single(&format!("{ns}/{key}")).ok_or_else(|| not_found(&query_path))?;
        return ok(
            json!({"kind": "compute#guestAttributes", "selfLink": self_link, "variableKey": k, "variableValue": v}),
        );
    }
    let ns = trimmed.trim_end_matches('/');
    if !ns.is_empty() && !snap.guest.contains_key(ns) {
        return Err(not_found(&query_path));
    }
    let items: Vec<Value> = snap
        .guest
        .iter()
        .filter(|(n, _)| ns.is_empty() || n.as_str() == ns)
        .flat_map(|(ns, keys)| {
            keys.iter()
                .map(move |(k, v)| json!({"namespace": ns, "key": k, "value": v}))
        })
        .collect();
    ok(json!({
        "kind": "compute#guestAttributes",
        "selfLink": self_link,
        "queryPath": query_path,
        "queryValue": {"items": items},
    }))
}
