//! `/emulator/…`: an HTTP mirror of `EmulatorHandle` for shell demos and out-of-process tests.
//! Never subject to faults or pause.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::{EmulatorHandle, Fault, Outage, Shared, doc};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/emulator/doc", get(get_doc).put(put_doc))
        .route("/emulator/doc/", get(get_doc).put(put_doc))
        .route(
            "/emulator/doc/{*pointer}",
            get(get_at).put(put_at).delete(delete_at),
        )
        .route("/emulator/faults", post(add_fault).delete(clear_faults))
        .route("/emulator/pause", post(pause))
        .route("/emulator/resume", post(resume))
        .route("/emulator/outage", post(begin_outage).delete(end_outage))
        .route("/emulator/stats", get(stats))
}

fn handle(shared: &Arc<Shared>) -> EmulatorHandle {
    EmulatorHandle {
        shared: shared.clone(),
    }
}

fn bad(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg.into()}))).into_response()
}

fn parse(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

async fn get_doc(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.snapshot().doc.clone())
}

async fn put_doc(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match parse(&body) {
        Ok(v) => {
            handle(&shared).set_doc(v);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(msg) => bad(msg),
    }
}

async fn get_at(State(shared): State<Arc<Shared>>, Path(pointer): Path<String>) -> Response {
    let snap = shared.snapshot();
    let tokens = doc::pointer_tokens(&pointer);
    let mut node = &snap.doc;
    for t in &tokens {
        let next = match node {
            Value::Object(m) => m.get(t.as_str()),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": format!("no value at /{pointer}")})),
                )
                    .into_response();
            }
        }
    }
    Json(node.clone()).into_response()
}

async fn put_at(
    State(shared): State<Arc<Shared>>,
    Path(pointer): Path<String>,
    body: Bytes,
) -> Response {
    match parse(&body) {
        Ok(v) => {
            handle(&shared).set(&format!("/{pointer}"), v);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(msg) => bad(msg),
    }
}

async fn delete_at(State(shared): State<Arc<Shared>>, Path(pointer): Path<String>) -> StatusCode {
    handle(&shared).remove(&format!("/{pointer}"));
    StatusCode::NO_CONTENT
}

/// `{"status":503,"count":3}` | `{"latency_ms":500,"count":1}` | `{"drop":2}` | `{"no_flavor":1}`
/// | `{"hang":1}`.
fn fault_from_json(v: &Value) -> Option<Fault> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    let count = n("count").unwrap_or(1) as u32;
    if let Some(status) = n("status") {
        return Some(Fault::Status {
            status: u16::try_from(status)
                .ok()
                .filter(|s| (100..600).contains(s))?,
            count,
        });
    }
    if let Some(ms) = n("latency_ms") {
        return Some(Fault::Latency { ms, count });
    }
    if let Some(c) = n("drop") {
        return Some(Fault::Drop { count: c as u32 });
    }
    if let Some(c) = n("no_flavor") {
        return Some(Fault::NoFlavor { count: c as u32 });
    }
    if let Some(c) = n("hang") {
        return Some(Fault::Hang { count: c as u32 });
    }
    None
}

/// `{"kind":"status","status":503}` | `{"kind":"refuse"}` | `{"kind":"hang"}` |
/// `{"kind":"drop"}`, with an optional `"ms"` after which it ends by itself (a refusal closes
/// this API's socket too, so it can only be ended by time or in-process).
fn outage_from_json(v: &Value) -> Option<(Outage, Option<u64>)> {
    let kind = match v.get("kind")?.as_str()? {
        "status" => Outage::Status(
            v.get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..600).contains(s))?,
        ),
        "refuse" => Outage::Refuse,
        "hang" => Outage::Hang,
        "drop" => Outage::Drop,
        _ => return None,
    };
    Some((kind, v.get("ms").and_then(Value::as_u64)))
}

async fn begin_outage(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let v = match parse(&body) {
        Ok(v) => v,
        Err(msg) => return bad(msg),
    };
    let Some((kind, ms)) = outage_from_json(&v) else {
        return bad(
            "expected {\"kind\":\"status\",\"status\":N} | {\"kind\":\"refuse\"|\"hang\"|\"drop\"}, optional \"ms\"",
        );
    };
    let h = handle(&shared);
    // Answer first: a refusal closes the socket this answer goes out on.
    // One task, so a short outage cannot end before it begins.
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        h.begin_outage(kind);
        if let Some(ms) = ms {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            h.end_outage();
        }
    });
    StatusCode::ACCEPTED.into_response()
}

async fn end_outage(State(shared): State<Arc<Shared>>) -> StatusCode {
    handle(&shared).end_outage();
    StatusCode::NO_CONTENT
}

async fn add_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let v = match parse(&body) {
        Ok(v) => v,
        Err(msg) => return bad(msg),
    };
    match fault_from_json(&v) {
        Some(f) => {
            handle(&shared).inject(f);
            StatusCode::NO_CONTENT.into_response()
        }
        None => bad(
            "expected {\"status\":N,\"count\":C} | {\"latency_ms\":MS,\"count\":C} | {\"drop\":C} | {\"no_flavor\":C} | {\"hang\":C}",
        ),
    }
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    handle(&shared).clear_faults();
    StatusCode::NO_CONTENT
}

async fn pause(State(shared): State<Arc<Shared>>) -> StatusCode {
    handle(&shared).pause();
    StatusCode::NO_CONTENT
}

async fn resume(State(shared): State<Arc<Shared>>) -> StatusCode {
    handle(&shared).resume();
    StatusCode::NO_CONTENT
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "requests": shared.requests.load(Ordering::Relaxed),
        "waiters": shared.waiters.load(Ordering::Relaxed),
        "paused": *shared.paused.borrow(),
    }))
}
