//! `dps-http`: the HTTPS adapter. It parses HTTP, calls the domain, and maps outcomes to
//! status codes and DPS error bodies (dps-protocol.md §1.7); it never sees OpenSSL.
//!
//! Today it serves `GET /health`; every other path gets a DPS-shaped 404. The device API and
//! the service API move in here as routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::Extension;
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

/// The TLS facts of a connection as JSON (camelCase, IANA names): what `/health` shows a
/// client about its own connection, and later what a registration record keeps.
pub fn tls_facts_json(facts: &HandshakeFacts, peer_certificates: &PeerCertificates) -> serde_json::Value {
    let n = &facts.negotiated;
    let offered = facts.offered.as_ref().map(|o| {
        serde_json::json!({
            "versions": o.version_names(),
            "cipherSuites": o.cipher_suite_names(),
            "groups": o.group_names(),
            "signatureAlgorithms": o.signature_algorithm_names(),
            "sni": o.sni,
            "alpn": o.alpn,
        })
    });
    serde_json::json!({
        "negotiated": {
            "version": n.version.name(),
            "cipherSuite": n.cipher_suite_name(),
            "group": n.group,
            "alpn": n.alpn,
            "resumed": n.resumed,
            "clientCertificate": n.client_certificate,
            "clientCertificateChainLength": peer_certificates.0.len(),
        },
        "offered": offered,
    })
}

/// `GET /health`: 200 while the server serves, with the caller's own TLS facts (useful when a
/// device's TLS stack is in doubt).
async fn health(Extension(conn): Extension<ConnectionInfo>) -> Response {
    Json(serde_json::json!({ "status": "ok", "tls": tls_facts_json(&conn.tls, &conn.peer_certificates) }))
        .into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, 404_000, "no such resource")
}

/// The HTTPS routes.
pub fn router() -> Router {
    Router::new().route("/health", get(health)).fallback(not_found)
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
