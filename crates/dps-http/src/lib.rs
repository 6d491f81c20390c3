//! `dps-http`: the HTTPS adapter. It parses HTTP, calls the domain (`dps_core`), and turns
//! outcomes into status codes and DPS error bodies (docs/protocol.md, "Error bodies and codes") in one
//! place, `error.rs`; it never sees OpenSSL.
//!
//! - `device_api`: the device API's HTTPS binding: bytes to `dps_core::device` requests and
//!   replies back to bytes.
//! - `service_api`: the DPS service API (enrollments, groups, registration states), SAS auth.
//! - `management`: the ARM-shaped management API (instances, keys, CA certificates,
//!   deployments), admin auth. The `opendps` CLI speaks only this and the service API.
//! - `websocket`: `GET /$iothub/websocket` and `GET /` upgrades, handed by sub-protocol to the
//!   drivers the composition root registers (MQTT, AMQP); dps-http knows none of them.
//! - `hub_api`: the IoT hub registry REST API of embedded hubs (docs/hub.md), chosen by `Host`.
//! - `GET /health`.
//!
//! Paths are matched case-insensitively (the SDKs disagree on case) and percent-decoded per
//! segment; bodies are capped (413 beyond).

pub mod device_api;
pub mod error;
pub mod hub_api;
pub mod management;
pub mod openapi;
pub mod routes;
pub mod service_api;
pub mod websocket;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
pub use axum::Router;
use dps_core::device::{ConnectionFacts, DeviceSession};
use dps_core::error::WireError;
use dps_core::observe::Api;
use error::ApiError;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The largest request head (request line and headers) read before a request is refused with
/// 431. A DPS request's head is well under 2 KiB (its SAS token is the longest part).
const MAX_HEAD: usize = 16 * 1024;

pub use websocket::{ByteStream, WsHandler, WsRoute};

/// What the connection knows about its client, attached to every request as an extension.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub facts: ConnectionFacts,
    /// The device API of this connection: requests on one keep-alive connection share it, so
    /// a device's credential (its client chain above all) is checked once per connection.
    pub device: Arc<Mutex<DeviceSession>>,
}

/// A DPS error response: status, body, `x-ms-request-id` = trackingId, `x-ms-error-code`, and
/// `Retry-After` where the error says so.
pub fn error_response(e: &WireError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(e.body())).into_response();
    let h = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&e.tracking_id) {
        h.insert("x-ms-request-id", id);
    }
    if let Ok(code) = HeaderValue::from_str(&e.error_code.to_string()) {
        h.insert("x-ms-error-code", code);
    }
    if let Some(v) = e.retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        h.insert("retry-after", v);
    }
    response
}

/// `GET /health`: 200 while the server serves, with the caller's own TLS facts (useful when a
/// device's TLS stack is in doubt).
async fn health(Extension(conn): Extension<ConnectionInfo>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "tls": dps_core::tls::facts_json(&conn.facts.tls, &conn.facts.peer_certificates)
    }))
    .into_response()
}

/// `GET /health/ready`: 200 while this node serves devices (its database is primary), else 503
/// with the role (`standby`, `unreachable`) and `Retry-After`; `/health` stays 200 (liveness).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let role = state.services.role();
    let body = Json(serde_json::json!({ "role": role.as_str() }));
    if role == dps_core::service::Role::Primary {
        body.into_response()
    } else {
        let secs = dps_core::service::ROLE_RETRY_AFTER.as_secs().to_string();
        (http::StatusCode::SERVICE_UNAVAILABLE, [(http::header::RETRY_AFTER, secs)], body).into_response()
    }
}

/// Everything the HTTP adapter needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    pub services: dps_core::service::Services,
    /// The host name clients use for this server (connection strings, ARM view).
    pub public_host: String,
    pub subscription_id: String,
    /// Location for resource groups and instances that name none.
    pub default_location: String,
    /// Largest request body accepted on the service and management APIs (413 beyond); the
    /// device API accepts at most `dps_core::device::MAX_MESSAGE`.
    pub max_body: usize,
    /// A request head must be complete within this after the handshake or the previous
    /// response (it is also the keep-alive idle timeout).
    pub header_timeout: std::time::Duration,
    /// A request body must be complete within this after its head (408 beyond).
    pub body_timeout: std::time::Duration,
    /// Cancelled when the server shuts down (ends upgraded WebSocket sessions).
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
    percent_encoding::percent_decode_str(s).decode_utf8().map_or_else(|_| s.to_owned(), |d| d.into_owned())
}

/// A request target's path and query, decoded: the path's non-empty segments and the query's
/// `name=value` pairs, each percent-decoded (kept as sent when that is not UTF-8). Pure;
/// fuzzed with the device API's routing (`http_device_route`, docs/fuzzing.md).
pub fn request_target(path: &str, query: Option<&str>) -> (Vec<String>, Vec<(String, String)>) {
    let segments = path.split('/').filter(|s| !s.is_empty()).map(decode).collect();
    let query = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    (segments, query)
}

/// Whether decoded path `segments` address the device API (`/{scope}/registrations/{id}…`).
pub fn is_device_path(segments: &[String]) -> bool {
    segments.len() >= 3 && segments[1].eq_ignore_ascii_case("registrations")
}

/// The largest body this request may send. Device API requests and unauthenticated callers get
/// the DPS message limit (96 KB); only a caller the management or service API accepts may send
/// up to `max_body` (bulk enrollment operations, deployments), so an anonymous client can make
/// the server buffer at most 96 KB per connection.
async fn body_limit(state: &AppState, segments: &[String], headers: &http::HeaderMap) -> usize {
    let small = dps_core::device::MAX_MESSAGE.min(state.max_body);
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // No length and no chunked encoding: no body (a GET, say); no need to know the caller.
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    if (!chunked && declared.unwrap_or(0) <= small as u64) || is_device_path(segments) {
        return small;
    }
    let auth = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let first = segments.first().map(|s| s.to_ascii_lowercase());
    let known = match first.as_deref() {
        Some("subscriptions") => state.services.check_admin(auth).is_ok(),
        Some("enrollments" | "enrollmentgroups" | "registrations") => state
            .services
            .service_caller(auth, &request_host(headers), dps_core::model::AccessRight::EnrollmentWrite)
            .await
            .is_ok(),
        _ => false,
    };
    if known {
        state.max_body
    } else {
        small
    }
}

/// Reads the body within `limit` bytes and the body timeout. Refusals: 413 when the declared
/// length or the bytes sent exceed the limit (before anything is read when the length is
/// declared, so `Expect: 100-continue` gets no `100 Continue`), 408 when the body is not
/// complete in time, 400 when its framing is malformed (bad chunked encoding, early close).
async fn read_body(
    state: &AppState,
    headers: &http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || ApiError::new(413, format!("the request body is larger than {limit} bytes"));
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            408,
            format!("the request body was not received within {}s", state.body_timeout.as_secs_f64()),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(format!(
                    "the request body could not be read: {}",
                    dps_core::device::excerpt(&inner.to_string(), 200)
                )))
            }
        }
    }
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    conn: Option<Extension<ConnectionInfo>>,
    req: axum::http::Request<Body>,
) -> Response {
    let started = std::time::Instant::now();
    let transport = conn.as_ref().map_or(dps_core::device::Transport::Https, |c| c.facts.transport);
    let (api, response) = route(&state, conn, req).await;
    state.services.observer().request(transport, api, response.status().as_u16(), started.elapsed());
    response
}

/// Reads the request and hands it to the API that answers its path.
async fn route(
    state: &Arc<AppState>,
    conn: Option<Extension<ConnectionInfo>>,
    req: axum::http::Request<Body>,
) -> (Api, Response) {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let (segments, query) = request_target(&path, parts.uri.query());
    let limit = body_limit(state, &segments, &parts.headers).await;
    let body = match read_body(state, &parts.headers, body, limit).await {
        Ok(b) => b,
        Err(e) => {
            // The rest of the body is not read: the connection cannot carry another request.
            let mut r = e.into_response(state, &method, &path);
            r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return (Api::Other, r);
        }
    };
    let req = Request {
        method: parts.method,
        segments,
        query,
        headers: parts.headers,
        body,
        conn: conn.map(|Extension(c)| c),
    };
    if let Some(r) = hub_api::handle(state, &req).await {
        return (Api::Hub, r);
    }
    if let Some(r) = management::handle(state, &req).await {
        return (Api::Management, r.unwrap_or_else(|e| management::arm_error(state, e, &method, &path)));
    }
    if let Some(r) = device_api::handle(state, &req).await {
        return (Api::Device, r);
    }
    if let Some(r) = service_api::handle(state, &req).await {
        return (Api::Service, r.unwrap_or_else(|e| e.into_response(state, &method, &path)));
    }
    let e = ApiError::new(
        404,
        format!(
            "{} {} is not a DPS operation",
            dps_core::device::excerpt(&method, 20),
            dps_core::device::excerpt(&path, 200)
        ),
    );
    (Api::Other, e.into_response(state, &method, &path))
}

/// The HTTPS side of the server: routes, and the WebSocket sub-protocols the composition root
/// hands to other drivers (MQTT, AMQP).
#[derive(Clone, Debug)]
pub struct HttpService {
    state: Arc<AppState>,
    router: Router,
}

impl HttpService {
    pub fn new(state: Arc<AppState>, ws_routes: Vec<WsRoute>) -> Self {
        let ws = Arc::new(websocket::WsRoutes::new(ws_routes));
        let router = Router::new()
            .route("/health", get(health))
            .route("/health/ready", get(ready))
            .route("/openapi.yaml", get(openapi::serve))
            .route("/$iothub/websocket", get(websocket::upgrade))
            .route("/", get(websocket::upgrade))
            .fallback(dispatch)
            .layer(Extension(ws))
            .with_state(state.clone());
        HttpService { state, router }
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves HTTP/1.1 on one established (TLS) connection until the client closes it, or
    /// until `shutdown`, when the request in flight is finished and the connection closed.
    pub async fn serve_connection<S>(&self, io: S, facts: ConnectionFacts, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = facts.peer;
        let device = Arc::new(Mutex::new(self.state.services.device_session(facts.clone())));
        // The connection's facts ride on every request as an extension, added by a thin wrapper
        // around the shared router: `Router::layer` would rebuild the router's route table for
        // each connection.
        let service = tower_layer::Layer::layer(&Extension(ConnectionInfo { facts, device }), self.router.clone());
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.state.header_timeout)
            // A request head larger than this is refused with 431 once this much has arrived,
            // not read to its end (docs/limits.md, "HTTPS").
            .max_buf_size(MAX_HEAD)
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
}

/// The host the client addressed (the `Host` header), without port, lower-cased.
pub fn request_host(h: &http::HeaderMap) -> String {
    let host = h.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    host.to_ascii_lowercase()
}
