//! The device API's HTTPS binding (docs/protocol.md, "HTTPS device API"): bytes to a `dps_core::device`
//! request, the typed reply back to status, headers and JSON. Nothing else is decided here.
//!
//! | request                                               | core operation                |
//! |-------------------------------------------------------|-------------------------------|
//! | `PUT /{scope}/registrations/{id}/register`            | `Operation::Register`         |
//! | `GET /{scope}/registrations/{id}/operations/{opId}`   | `Operation::OperationStatus`  |
//! | `POST /{scope}/registrations/{id}`                    | `Operation::StatusLookup`     |
//!
//! The credential is the `Authorization` header (a SAS token), else a TPM device's keys in the
//! register body, else the connection's TLS client certificate.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dps_core::device::{DeviceReply, Operation};

use crate::error::ApiError;
use crate::{AppState, Request};

/// Routes `/{idScope}/registrations/{id}[...]`; `None` if the path is not a device API path.
pub async fn handle(state: &AppState, req: &Request) -> Option<Response> {
    let seg = &req.segments;
    if seg.len() < 3 || !seg[1].eq_ignore_ascii_case("registrations") {
        return None;
    }
    let method = req.method.as_str();
    let path = || format!("/{}", seg.join("/"));
    let lower = |i: usize| seg.get(i).map(|s| s.to_ascii_lowercase());
    let op = match (seg.len(), &req.method) {
        (4, &Method::PUT) if lower(3).as_deref() == Some("register") => Operation::Register { body: &req.body },
        (5, &Method::GET) if lower(3).as_deref() == Some("operations") => {
            Operation::OperationStatus { operation_id: &seg[4] }
        }
        (3, &Method::POST) => Operation::StatusLookup,
        _ => {
            let e = ApiError::new(
                405,
                format!("{method} {} is not an operation of the device API", dps_core::device::excerpt(&path(), 200)),
            );
            return Some(e.into_response(state, method, &path()));
        }
    };
    let Some(conn) = &req.conn else {
        return Some(ApiError::new(500, "connection information missing").into_response(state, method, &path()));
    };
    let reply = conn
        .device
        .lock()
        .await
        .request(&seg[0], &seg[2], req.query("api-version"), req.header("authorization"), op)
        .await;
    Some(response(&reply))
}

/// The HTTP form of a device reply (refusals were logged once by the session).
fn response(reply: &DeviceReply) -> Response {
    if let DeviceReply::Error(e) = reply {
        return crate::error_response(e);
    }
    let status = StatusCode::from_u16(reply.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, Json(reply.body())).into_response();
    if let Some(v) = reply.retry_after().and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}
