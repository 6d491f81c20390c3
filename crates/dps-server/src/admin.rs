//! The admin listener: plain HTTP for operators and their tools, on a loopback or management
//! address (docs/operations.md). `GET /metrics` (Prometheus text format), `GET /health/live`
//! (the process serves), `GET /health/ready` (the store answers; 503 otherwise).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// How long a readiness probe waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// An admin connection's whole life (requests are tiny; this bounds idle and slow clients).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Admin connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

#[derive(Clone, Debug)]
struct Admin {
    metrics: Arc<Metrics>,
    services: dps_core::service::Services,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

impl Admin {
    async fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n".into());
        }
        match path {
            "/metrics" => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/health/live" => text(StatusCode::OK, PLAIN, "live\n".into()),
            // A node whose database is not primary (standby, unreachable, fenced) is not ready.
            "/health/ready" if self.services.role() != dps_core::service::Role::Primary => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: the database is {}\n", self.services.role().as_str()),
            ),
            "/health/ready" => match tokio::time::timeout(READY_TIMEOUT, self.services.store_ready()).await {
                Ok(Ok(())) => text(StatusCode::OK, PLAIN, "ready\n".into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %dps_core::error::DisplayChain(&e), "readiness probe: the store failed");
                    text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready: the store failed\n".into())
                }
                Err(_) => {
                    tracing::warn!(timeout = ?READY_TIMEOUT, "readiness probe: the store did not answer in time");
                    text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready: the store did not answer in time\n".into())
                }
            },
            _ => text(StatusCode::NOT_FOUND, PLAIN, "not found: /metrics, /health/live, /health/ready\n".into()),
        }
    }
}

/// Serves the admin listener until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    services: dps_core::service::Services,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let admin = Admin { metrics, services };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(req.method(), req.uri().path()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}
