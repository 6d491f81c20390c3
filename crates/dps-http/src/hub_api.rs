//! The embedded IoT hub registry's REST API (docs/hub.md): `/devices/…`, `/twins/…` and the
//! devices query, answered when the request's `Host` is an embedded hub's host name. SAS
//! authentication and every decision are in `dps_core::service` (`hub.rs`); errors take IoT
//! Hub's shape (`{"Message": "ErrorCode:…;…", "ExceptionMessage": "Tracking ID:…"}` and the
//! `iothub-errorcode` header).

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dps_core::model::Hub;
use dps_core::service::{check_hub_api_version, HubAccess, HubError};
use serde_json::{json, Value};

use crate::{AppState, Request};

/// A registry operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    ListDevices,
    Query,
    GetDevice,
    PutDevice,
    DeleteDevice,
    GetTwin,
    UpdateTwin { replace: bool },
}

fn op_of(req: &Request) -> Option<Op> {
    let seg: Vec<String> = req.segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    Some(match (seg.as_slice(), &req.method) {
        (["devices"], &Method::GET) => Op::ListDevices,
        (["devices", "query"], &Method::POST) => Op::Query,
        (["devices", _], &Method::GET) => Op::GetDevice,
        (["devices", _], &Method::PUT) => Op::PutDevice,
        (["devices", _], &Method::DELETE) => Op::DeleteDevice,
        (["twins", _], &Method::GET) => Op::GetTwin,
        (["twins", _], &Method::PATCH) => Op::UpdateTwin { replace: false },
        (["twins", _], &Method::PUT) => Op::UpdateTwin { replace: true },
        _ => return None,
    })
}

/// Answers every request under `/devices` and `/twins` (no DPS path starts so), or `None`.
/// The hub is the one whose host name the request's `Host` names.
pub async fn handle(state: &AppState, req: &Request) -> Option<Response> {
    let first = req.segments.first()?.to_ascii_lowercase();
    if first != "devices" && first != "twins" {
        return None;
    }
    Some(answer(state, req).await.unwrap_or_else(|e| error_response(state, req, e)))
}

async fn answer(state: &AppState, req: &Request) -> Result<Response, HubError> {
    let op = op_of(req).ok_or_else(|| {
        HubError::NoOperation(format!(
            "{} /{} is not an operation of the IoT hub registry API",
            req.method,
            dps_core::device::excerpt(&req.segments.join("/"), 200)
        ))
    })?;
    let host = crate::request_host(&req.headers);
    let hub = state.services.hub_at(&host).await?.ok_or_else(|| {
        HubError::HubNotFound(format!(
            "no IoT hub of this server has host name {:?} (opendps hub list shows them)",
            dps_core::device::excerpt(&host, 100)
        ))
    })?;
    route(state, req, &hub, op).await
}

fn body_json(req: &Request) -> Result<Value, HubError> {
    serde_json::from_slice(&req.body).map_err(|e| HubError::Invalid(format!("the body is not valid JSON: {e}")))
}

fn with_etag(v: Value) -> Response {
    let etag = v.get("etag").and_then(Value::as_str).map(|e| format!("\"{}\"", e.trim_matches('"')));
    let mut r = Json(v).into_response();
    if let Some(h) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        r.headers_mut().insert("etag", h);
    }
    r
}

async fn route(state: &AppState, req: &Request, hub: &Hub, op: Op) -> Result<Response, HubError> {
    let s = &state.services;
    check_hub_api_version(req.query("api-version"))?;
    let auth = req.header("authorization");
    let if_match = req.header("if-match");
    let id = req.segments.get(1).map(String::as_str).unwrap_or("");
    let access = match op {
        Op::ListDevices | Op::GetDevice => HubAccess::Read,
        Op::PutDevice | Op::DeleteDevice => HubAccess::Write,
        Op::Query | Op::GetTwin => HubAccess::TwinRead,
        Op::UpdateTwin { .. } => HubAccess::TwinWrite,
    };
    s.hub_caller(hub, auth, access)?;
    match op {
        Op::ListDevices => {
            let top = req.query("top").and_then(|t| t.parse().ok());
            Ok(Json(Value::Array(s.hub_list_devices(hub, top).await?)).into_response())
        }
        Op::Query => {
            let body = body_json(req)?;
            let max = req.header("x-ms-max-item-count").and_then(|m| m.parse().ok());
            let (items, next) = s.hub_query(hub, &body, req.header("x-ms-continuation"), max).await?;
            let mut r = Json(Value::Array(items)).into_response();
            r.headers_mut().insert("x-ms-item-type", HeaderValue::from_static("Twin"));
            if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                r.headers_mut().insert("x-ms-continuation", v);
            }
            Ok(r)
        }
        Op::GetDevice => Ok(with_etag(s.hub_get_device(hub, id).await?)),
        Op::PutDevice => {
            let body = body_json(req)?;
            Ok(with_etag(s.hub_put_device(hub, id, &body, if_match).await?))
        }
        Op::DeleteDevice => {
            s.hub_delete_device(hub, id, if_match).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Op::GetTwin => Ok(with_etag(s.hub_get_twin(hub, id).await?)),
        Op::UpdateTwin { replace } => {
            let body = body_json(req)?;
            Ok(with_etag(s.hub_update_twin(hub, id, &body, if_match, replace).await?))
        }
    }
}

/// IoT Hub's error shape; refusals logged once, briefly, and server failures once with their
/// chain (by `Services::wire_error`), never with a token or key.
fn error_response(state: &AppState, req: &Request, e: HubError) -> Response {
    let path = format!("/{}", req.segments.join("/"));
    let method = req.method.as_str();
    let code = e.code();
    let wire = match &e {
        HubError::Domain(inner) => state.services.wire_error(inner),
        other => state.services.wire(other.status(), u32::from(other.status()) * 1000, other.to_string()),
    };
    crate::error::log_refusal(&wire, method, &path);
    let status = StatusCode::from_u16(wire.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "Message": format!("ErrorCode:{code};{}", wire.message),
        "ExceptionMessage": format!("Tracking ID:{}-G:0-TimeStamp:{}", wire.tracking_id, wire.timestamp_utc),
    });
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("iothub-errorcode", v);
    }
    if let Ok(v) = HeaderValue::from_str(&wire.tracking_id) {
        r.headers_mut().insert("x-ms-request-id", v);
    }
    r
}
