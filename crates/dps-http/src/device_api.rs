//! The DPS device API over HTTPS (dps-protocol.md §1.5): register, operation status, and the
//! registration status lookup. Credentials: a SAS token in `Authorization`, or the TLS client
//! certificate (X.509; possession proved by the handshake, trust decided here against the
//! enrollment).

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dps_core::model::IdScope;
use dps_core::service::{Attested, Evidence};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::{AppState, Request};

/// Largest device request body (the DPS message size limit, dps-protocol.md §8).
pub const MAX_DEVICE_BODY: usize = 96 * 1024;

/// Seconds the device is told to wait before polling.
pub const RETRY_AFTER: &str = "1";

/// Whether `v` looks like an api-version (`2019-03-31`, `2021-11-01-preview`).
pub fn plausible_api_version(v: &str) -> bool {
    let (date, rest) = v.split_at(v.len().min(10));
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && date.chars().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && (rest.is_empty()
            || (rest.len() > 1 && rest.starts_with('-') && rest[1..].chars().all(|c| c.is_ascii_alphanumeric())))
}

/// Routes `/{idScope}/registrations/{id}[...]`; `None` if the path is not a device API path.
pub async fn handle(state: &AppState, req: &Request) -> Option<ApiResult<Response>> {
    let seg = &req.segments;
    if seg.len() < 3 || !seg[1].eq_ignore_ascii_case("registrations") || IdScope::parse(&seg[0]).is_err() {
        return None;
    }
    Some(route(state, req).await)
}

async fn authenticate(state: &AppState, req: &Request) -> ApiResult<Attested> {
    let (scope, id) = (&req.segments[0], &req.segments[2]);
    let conn = req.conn.as_ref();
    let evidence = match (req.header("authorization"), conn) {
        (Some(token), _) => Evidence::Sas(token),
        (None, Some(c)) if !c.peer_certificates.is_empty() => Evidence::X509(&c.peer_certificates.0),
        _ => Evidence::None,
    };
    if req.body.len() > MAX_DEVICE_BODY {
        return Err(ApiError::new(
            413,
            format!("the request body is larger than the {MAX_DEVICE_BODY}-byte DPS message limit"),
        ));
    }
    let negotiated = conn.map(|c| c.tls.negotiated.version);
    Ok(state.services.authenticate_device(scope, id, evidence, negotiated).await?)
}

async fn route(state: &AppState, req: &Request) -> ApiResult<Response> {
    match req.query("api-version") {
        Some(v) if plausible_api_version(v) => {}
        Some(v) => return Err(ApiError::bad_request(format!("api-version {v:?} is not a valid api-version"))),
        None => return Err(ApiError::bad_request("the api-version query parameter is required")),
    }
    let seg: Vec<String> = req.segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    match (seg.len(), &req.method) {
        (4, &Method::PUT) if seg[3] == "register" => register(state, req).await,
        (5, &Method::GET) if seg[3] == "operations" => {
            let a = authenticate(state, req).await?;
            let op = state.services.operation_status(&a, &req.segments[4]).await?;
            let code = if op.status == dps_core::model::RegistrationStatus::Assigning {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let mut r = (code, Json(op.to_json())).into_response();
            if code == StatusCode::ACCEPTED {
                r.headers_mut().insert("retry-after", HeaderValue::from_static(RETRY_AFTER));
            }
            Ok(r)
        }
        (3, &Method::POST) => {
            let a = authenticate(state, req).await?;
            Ok(Json(state.services.device_registration(&a).await?).into_response())
        }
        _ => Err(ApiError::new(
            405,
            format!("{} /{} is not an operation of the device API", req.method, req.segments.join("/")),
        )),
    }
}

async fn register(state: &AppState, req: &Request) -> ApiResult<Response> {
    // Lenient body (dps-protocol.md §1.4): absent, `{}`, `payload: null`, no registrationId.
    let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    if let Some(id) = body.get("registrationId").and_then(Value::as_str) {
        if !id.eq_ignore_ascii_case(&req.segments[2]) {
            return Err(ApiError::bad_request(format!(
                "registrationId {id:?} in the body does not match {:?} in the path",
                req.segments[2]
            )));
        }
    }
    if body.get("tpm").is_some_and(|t| !t.is_null()) && req.header("authorization").is_none() {
        return Err(ApiError::unauthorized("TPM attestation is not available on this server yet"));
    }
    let a = authenticate(state, req).await?;
    let tls = req.conn.as_ref().map(|c| crate::tls_facts_json(&c.tls, &c.peer_certificates));
    let payload = body.get("payload").filter(|p| !p.is_null()).cloned();
    let op = state.services.register(&a, payload, tls, req.query("api-version")).await?;
    tracing::info!(
        registration_id = %a.registration_id,
        instance = %a.instance.name,
        attestation = a.kind.as_str(),
        status = ?op.status,
        hub = op.registration_state.as_ref().and_then(|s| s.assigned_hub.as_deref()).unwrap_or("-"),
        protocol = "https",
        "device registered"
    );
    // Always 202 `assigning` first (C# and iot-identity-service accept nothing else); the
    // result comes on the first poll.
    let mut r =
        (StatusCode::ACCEPTED, Json(serde_json::json!({ "operationId": op.operation_id, "status": "assigning" })))
            .into_response();
    r.headers_mut().insert("retry-after", HeaderValue::from_static(RETRY_AFTER));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in ["2019-03-31", "2021-06-01", "2021-11-01-preview", "2025-07-01-preview"] {
            assert!(plausible_api_version(ok), "{ok}");
        }
        for bad in ["", "2019", "2019-3-31", "latest", "2019-03-31-", "2019-03-31x"] {
            assert!(!plausible_api_version(bad), "{bad}");
        }
    }
}
