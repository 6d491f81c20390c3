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

/// Which device API operation a request is: `None` if the path is not a device API path
/// (`/{idScope}/registrations/{id}…`), `Some(Err(message))` for a method or path the device API
/// does not answer (405; the message quotes at most 200 characters of the path). Pure; fuzzed
/// (`http_device_route`, docs/fuzzing.md).
pub fn route<'a>(method: &Method, segments: &'a [String], body: &'a [u8]) -> Option<Result<Operation<'a>, String>> {
    if !crate::is_device_path(segments) {
        return None;
    }
    let lower = |i: usize| segments.get(i).map(|s| s.to_ascii_lowercase());
    Some(match (segments.len(), method) {
        (4, &Method::PUT) if lower(3).as_deref() == Some("register") => Ok(Operation::Register { body }),
        (5, &Method::GET) if lower(3).as_deref() == Some("operations") => {
            Ok(Operation::OperationStatus { operation_id: &segments[4] })
        }
        (3, &Method::POST) => Ok(Operation::StatusLookup),
        _ => Err(format!(
            "{} {} is not an operation of the device API",
            dps_core::device::excerpt(method.as_str(), 20),
            dps_core::device::excerpt(&format!("/{}", segments.join("/")), 200)
        )),
    })
}

/// Answers `/{idScope}/registrations/{id}[...]`; `None` if the path is not a device API path.
pub async fn handle(state: &AppState, req: &Request) -> Option<Response> {
    let seg = &req.segments;
    let method = req.method.as_str();
    let path = || format!("/{}", seg.join("/"));
    let op = match route(&req.method, seg, &req.body)? {
        Ok(op) => op,
        Err(message) => return Some(ApiError::new(405, message).into_response(state, method, &path())),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `http_device_route` fuzz target: the 405 message quoted an extension method
    /// of any length.
    #[test]
    fn a_405_quotes_an_excerpt_of_the_method() {
        let method = Method::from_bytes("POST".repeat(1000).as_bytes()).expect("a token");
        let segments: Vec<String> = ["s", "registrations", "d"].map(String::from).to_vec();
        let Some(Err(message)) = route(&method, &segments, b"") else { panic!("not a 405") };
        assert!(message.len() < 300, "{message}");
    }
}
