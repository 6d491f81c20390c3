//! The IoT hub registry client (docs/hub.md, "What DPS writes into the assigned hub"): HTTPS to the linked hub's host
//! (port 443 unless the host name carries one), trusting the system roots, this server's own root
//! (its embedded hubs) and an optional configured CA; a SAS token minted from the linked hub's
//! connection string per request; idle connections kept per host for reuse; every call bounded
//! by a timeout and tried twice when the hub cannot be reached or fails (5xx). Failures say what
//! the hub answered, never the key or the token.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dps_core::model::ConnectionString;
use dps_core::ports::{HubCallError, HubDeviceAuth, HubDeviceIdentity, HubRegistry};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The registry api-version spoken.
const API_VERSION: &str = "2021-04-12";
/// Largest answer read.
const MAX_ANSWER: usize = 1024 * 1024;
/// Idle connections kept per hub host.
const MAX_IDLE: usize = 4;
/// Lifetime of the SAS tokens minted per request.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

type Sender = SendRequest<Full<Bytes>>;

/// The HTTPS registry client.
#[derive(Debug)]
pub struct HttpsHubRegistry {
    timeout: Duration,
    /// PEM of trusted roots besides the system's.
    roots: Option<Vec<u8>>,
    idle: std::sync::Mutex<HashMap<String, Vec<Sender>>>,
}

/// One answer: status and JSON body (`Null` when empty or not JSON).
struct Answer {
    status: u16,
    body: Value,
    text: String,
}

fn split_host(host: &str) -> (String, u16) {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().unwrap_or(443)),
        _ => (host.trim_matches(['[', ']']).to_owned(), 443),
    }
}

fn enc(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl HttpsHubRegistry {
    pub fn new(timeout: Duration, roots: Option<Vec<u8>>) -> Self {
        HttpsHubRegistry { timeout, roots, idle: std::sync::Mutex::new(HashMap::new()) }
    }

    fn take_idle(&self, key: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.get_mut(key)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, key: String, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(s);
        }
    }

    async fn sender(&self, host: &str, port: u16, key: &str) -> Result<Sender, HubCallError> {
        if let Some(mut s) = self.take_idle(key) {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let unreachable = |cause: String| HubCallError::Unreachable { host: key.to_owned(), cause };
        let addrs: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| unreachable(format!("it does not resolve: {e}")))?
            .collect();
        // Every address in turn (`localhost` may resolve to ::1 first on a server bound to IPv4).
        let mut failure = unreachable("it has no address".into());
        let mut stream = None;
        for addr in addrs {
            match dps_tls::client::connect(addr, host, self.roots.as_deref()).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => failure = unreachable(format!("TLS failed: {}", dps_tls::DisplayChain(&e))),
            }
        }
        let tls = stream.ok_or(failure)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(format!("HTTP failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn once(
        &self,
        hub: &ConnectionString,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, HubCallError> {
        let (host, port) = split_host(&hub.host_name);
        let key = format!("{host}:{port}");
        let unreachable = |cause: String| HubCallError::Unreachable { host: key.clone(), cause };
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + TOKEN_LIFETIME;
        let token = dps_attest::sas::make_token(
            &hub.host_name.to_ascii_lowercase(),
            &hub.key,
            expiry.as_secs(),
            Some(&hub.key_name),
        )
        .ok_or_else(|| unreachable("the linked hub's key is not base64".into()))?;
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{path}?api-version={API_VERSION}"))
            .header("host", &hub.host_name)
            .header("authorization", token)
            .header("accept", "application/json")
            .header("user-agent", concat!("opendps/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            request = request.header("content-type", "application/json; charset=utf-8");
        }
        if let Some(m) = if_match {
            request = request.header("if-match", m);
        }
        let request = request.body(Full::new(payload)).map_err(|e| unreachable(format!("bad request: {e}")))?;
        let mut sender = self.sender(&host, port, &key).await?;
        let response =
            sender.send_request(request).await.map_err(|e| unreachable(format!("the request failed: {e}")))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unreachable(format!("the answer could not be read: {e}")))?
            .to_bytes();
        self.put_idle(key.clone(), sender);
        let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        Ok(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text })
    }

    /// One call under the timeout, tried a second time when the hub is unreachable or fails.
    async fn call(
        &self,
        hub: &ConnectionString,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, HubCallError> {
        let mut last = None;
        for _attempt in 0..2 {
            match tokio::time::timeout(self.timeout, self.once(hub, method, path, if_match, body)).await {
                Ok(Ok(a)) if a.status < 500 => return Ok(a),
                Ok(Ok(a)) => last = Some(Err(refusal(hub, &a))),
                Ok(Err(e)) => last = Some(Err(e)),
                Err(_) => last = Some(Err(HubCallError::TimedOut { host: hub.host_name.clone(), after: self.timeout })),
            }
        }
        last.unwrap_or_else(|| Err(HubCallError::TimedOut { host: hub.host_name.clone(), after: self.timeout }))
    }
}

/// What the hub said: IoT Hub's `Message`, else an excerpt of the body.
fn refusal(hub: &ConnectionString, a: &Answer) -> HubCallError {
    let message = a.body.get("Message").and_then(Value::as_str).map_or_else(|| a.text.clone(), str::to_owned);
    let message: String = message.chars().take(300).collect();
    HubCallError::Status { host: hub.host_name.clone(), status: a.status, message }
}

fn ok(hub: &ConnectionString, a: Answer) -> Result<Answer, HubCallError> {
    if (200..300).contains(&a.status) {
        Ok(a)
    } else {
        Err(refusal(hub, &a))
    }
}

fn authentication(auth: &HubDeviceAuth) -> Value {
    match auth {
        HubDeviceAuth::Sas { primary_key, secondary_key } => json!({
            "type": "sas",
            "symmetricKey": { "primaryKey": primary_key, "secondaryKey": secondary_key },
        }),
        HubDeviceAuth::SelfSigned { primary_thumbprint, secondary_thumbprint } => json!({
            "type": "selfSigned",
            "x509Thumbprint": { "primaryThumbprint": primary_thumbprint, "secondaryThumbprint": secondary_thumbprint },
        }),
        HubDeviceAuth::Generated => {
            json!({ "type": "sas", "symmetricKey": { "primaryKey": null, "secondaryKey": null } })
        }
    }
}

#[async_trait]
impl HubRegistry for HttpsHubRegistry {
    async fn put_device(&self, hub: &ConnectionString, identity: &HubDeviceIdentity) -> Result<(), HubCallError> {
        let path = format!("/devices/{}", enc(&identity.device_id));
        let existing = self.call(hub, "GET", &path, None, None).await?;
        let mut device = match existing.status {
            404 => json!({ "deviceId": identity.device_id, "status": "enabled" }),
            _ => ok(hub, existing)?.body,
        };
        let exists = device.get("etag").is_some();
        device["authentication"] = authentication(&identity.auth);
        device["capabilities"] = json!({ "iotEdge": identity.iot_edge });
        let answer = self.call(hub, "PUT", &path, exists.then_some("*"), Some(&device)).await?;
        if answer.status == 409 && !exists {
            // Created meanwhile (a concurrent registration of the same device): update it.
            ok(hub, self.call(hub, "PUT", &path, Some("*"), Some(&device)).await?)?;
            return Ok(());
        }
        ok(hub, answer).map(|_| ())
    }

    async fn twin(&self, hub: &ConnectionString, device_id: &str) -> Result<Option<Value>, HubCallError> {
        let a = self.call(hub, "GET", &format!("/twins/{}", enc(device_id)), None, None).await?;
        if a.status == 404 {
            return Ok(None);
        }
        ok(hub, a).map(|a| Some(a.body))
    }

    async fn replace_twin(&self, hub: &ConnectionString, device_id: &str, twin: &Value) -> Result<(), HubCallError> {
        let path = format!("/twins/{}", enc(device_id));
        ok(hub, self.call(hub, "PUT", &path, Some("*"), Some(twin)).await?).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(split_host("hub.example.com"), ("hub.example.com".into(), 443));
        assert_eq!(split_host("127.0.0.1:8443"), ("127.0.0.1".into(), 8443));
        assert_eq!(split_host("[::1]"), ("::1".into(), 443));
        assert_eq!(enc("a b?%"), "a%20b%3F%25");
    }
}
