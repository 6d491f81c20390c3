//! `dps-http`: the HTTPS adapter. It parses HTTP, calls the domain (`dps_core::service`), and
//! maps outcomes to status codes and DPS error bodies (dps-protocol.md §1.7) once, in `error.rs`;
//! it never sees OpenSSL.
//!
//! - `service_api`: the DPS service API (enrollments, groups, registration states), SAS auth.
//! - `management`: the ARM-shaped management API (instances, keys, CA certificates,
//!   deployments), admin auth. The `opendps` CLI speaks only this and the service API.
//! - `GET /health`.
//!
//! Paths are matched case-insensitively (the SDKs disagree on case) and percent-decoded per
//! segment; bodies are capped (413 beyond).

pub mod auth;
pub mod device_api;
pub mod error;
pub mod management;
pub mod openapi;
pub mod routes;
pub mod service_api;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
pub use axum::Router;
use dps_core::tls::{HandshakeFacts, PeerCertificates};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// What the connection knows about its client, attached to every request as an extension.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub tls: Arc<HandshakeFacts>,
    /// Possession proved by the handshake; trust is NOT decided (attestation decides).
    pub peer_certificates: Arc<PeerCertificates>,
}

/// The DPS error body (dps-protocol.md §1.7, §9 item 9).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error_code: u32,
    pub tracking_id: String,
    pub message: String,
    pub timestamp_utc: String,
}

/// A DPS error response: status, body, and `x-ms-request-id` = trackingId.
pub fn error_response(status: StatusCode, error_code: u32, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error_code,
        tracking_id: uuid::Uuid::new_v4().to_string(),
        message: message.into(),
        timestamp_utc: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let request_id = HeaderValue::from_str(&body.tracking_id).ok();
    let mut response = (status, Json(body)).into_response();
    if let Some(id) = request_id {
        response.headers_mut().insert("x-ms-request-id", id);
    }
    response
}

/// The TLS facts of a connection as JSON (see `dps_core::tls::facts_json`).
pub fn tls_facts_json(facts: &HandshakeFacts, peer_certificates: &PeerCertificates) -> serde_json::Value {
    dps_core::tls::facts_json(facts, peer_certificates)
}

/// `GET /health`: 200 while the server serves, with the caller's own TLS facts (useful when a
/// device's TLS stack is in doubt).
async fn health(Extension(conn): Extension<ConnectionInfo>) -> Response {
    Json(serde_json::json!({ "status": "ok", "tls": tls_facts_json(&conn.tls, &conn.peer_certificates) }))
        .into_response()
}

/// Everything the HTTP adapter needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    pub services: dps_core::service::Services,
    /// The management API's bearer credential.
    pub admin_token: String,
    /// The host name clients use for this server (connection strings, ARM view).
    pub public_host: String,
    pub subscription_id: String,
    /// Location for resource groups and instances that name none.
    pub default_location: String,
    /// Largest request body accepted (413 beyond).
    pub max_body: usize,
    /// Cancelled when the server shuts down (ends upgraded MQTT-over-WebSocket sessions).
    pub shutdown: CancellationToken,
}

/// One request, read whole (bodies are small and capped).
#[derive(Debug)]
pub struct Request {
    pub method: http::Method,
    /// Path segments, percent-decoded, empty ones dropped.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    pub conn: Option<ConnectionInfo>,
}

impl Request {
    /// A query parameter (name case-insensitive).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn decode(s: &str) -> String {
    dps_attest::sas::percent_decode(s).unwrap_or_else(|| s.to_owned())
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    conn: Option<Extension<ConnectionInfo>>,
    req: axum::http::Request<Body>,
) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let body = match axum::body::to_bytes(body, state.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return error::ApiError::new(413, format!("the request body is larger than {} bytes", state.max_body))
                .into_response_logged(&method, &path)
        }
    };
    let req = Request {
        method: parts.method,
        segments: path.split('/').filter(|s| !s.is_empty()).map(decode).collect(),
        query: parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect(),
        headers: parts.headers,
        body,
        conn: conn.map(|Extension(c)| c),
    };
    if let Some(r) = management::handle(&state, &req).await {
        return r.unwrap_or_else(|e| management::arm_error(e, &method, &path));
    }
    if let Some(r) = device_api::handle(&state, &req).await {
        return r.unwrap_or_else(|e| e.into_response_logged(&method, &path));
    }
    if let Some(r) = service_api::handle(&state, &req).await {
        return r.unwrap_or_else(|e| e.into_response_logged(&method, &path));
    }
    error::ApiError::new(404, format!("{method} {path} is not a DPS operation")).into_response_logged(&method, &path)
}

/// `GET /`: MQTT over WebSockets when it is an upgrade (C# uses `/`), else not found.
async fn root_get(
    state: State<Arc<AppState>>,
    conn: Option<Extension<ConnectionInfo>>,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => websocket::mqtt_over_websocket(state, conn, ws).await,
        Err(_) => error::ApiError::new(404, "GET / is not a DPS operation").into_response_logged("GET", "/"),
    }
}

/// The HTTPS routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.yaml", get(openapi::serve))
        .route("/$iothub/websocket", get(websocket::mqtt_over_websocket))
        .route("/", get(root_get))
        .fallback(dispatch)
        .with_state(state)
}

/// Serves HTTP/1.1 on one established (TLS) connection until the client closes it, or until
/// `shutdown`, when the request in flight is finished and the connection closed.
pub async fn serve_connection<S>(io: S, info: ConnectionInfo, router: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service = router.layer(Extension(info));
    let service = hyper_util::service::TowerToHyperService::new(service);
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "https connection ended with an error");
    }
}
