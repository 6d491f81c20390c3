//! The custom allocation webhook client (docs/allocation.md, "Custom allocation webhooks"): HTTPS POST of the allocation
//! request, trusting the system roots plus an optional configured CA, bounded by a timeout.
//! Every failure is described exactly (what the webhook did), never with the URL's query, which
//! usually carries a function key.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dps_core::ports::{AllocationWebhook, WebhookError};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Largest webhook answer read.
const MAX_ANSWER: usize = 1024 * 1024;

/// The webhook client.
#[derive(Debug, Clone)]
pub struct HttpsWebhook {
    pub timeout: Duration,
    /// PEM of extra trusted roots.
    pub extra_roots: Option<Vec<u8>>,
    pub allow_http_localhost: bool,
}

fn is_localhost(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl HttpsWebhook {
    async fn post(&self, url: &str, body: &Value) -> Result<Value, WebhookError> {
        let not_allowed = |m: &str| WebhookError::NotAllowed(m.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| not_allowed("it is not a valid URL"))?;
        let host = uri.host().ok_or_else(|| not_allowed("it has no host"))?.trim_matches(['[', ']']).to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_http_localhost && is_localhost(&host) => false,
            _ => return Err(not_allowed("it must be https://")),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let shown = format!("{}://{host}:{port}{}", if https { "https" } else { "http" }, uri.path());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let unreachable = |cause: String| WebhookError::Unreachable { target: shown.clone(), cause };
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| unreachable(format!("it does not resolve: {e}")))?
            .next()
            .ok_or_else(|| unreachable("it has no address".into()))?;
        let payload =
            Bytes::from(serde_json::to_vec(body).map_err(|e| unreachable(format!("cannot encode the request: {e}")))?);
        let request = http::Request::post(path)
            .header("host", &host)
            .header("content-type", "application/json; charset=utf-8")
            .header("accept", "application/json")
            .header("user-agent", concat!("opendps/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(payload))
            .map_err(|e| unreachable(format!("cannot build the request: {e}")))?;
        let response = if https {
            let tls = dps_tls::client::connect(addr, &host, self.extra_roots.as_deref())
                .await
                .map_err(|e| unreachable(format!("TLS failed: {}", dps_tls::DisplayChain(&e))))?;
            send(TokioIo::new(tls), request).await
        } else {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| unreachable(e.to_string()))?;
            send(TokioIo::new(tcp), request).await
        }
        .map_err(|e| unreachable(format!("the request failed: {e}")))?;
        let status = response.status().as_u16();
        let invalid = |cause: String, excerpt: String| WebhookError::InvalidAnswer {
            target: shown.clone(),
            status,
            cause,
            excerpt,
        };
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| invalid(format!("the body could not be read: {e}"), String::new()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let excerpt: String = text.chars().take(200).collect();
        if !(200..300).contains(&status) {
            return Err(WebhookError::Status { target: shown.clone(), status, excerpt });
        }
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("invalid JSON: {e}"), excerpt))
    }
}

async fn send<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await
}

#[async_trait]
impl AllocationWebhook for HttpsWebhook {
    async fn call(&self, url: &str, body: &Value) -> Result<Value, WebhookError> {
        match tokio::time::timeout(self.timeout, self.post(url, body)).await {
            Ok(r) => r,
            Err(_) => Err(WebhookError::TimedOut { after: self.timeout }),
        }
    }
}
