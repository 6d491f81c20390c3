//! How the CLI reaches the server: HTTPS to the server's own address, trusting only the
//! server's root CA, with the admin token (management API) or a SAS token (service API).
//! It never opens the store.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Connection settings shared by every command.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: String,
    pub root_pem: Option<Vec<u8>>,
    pub admin_token: Option<String>,
}

impl Target {
    /// Resolves the target from flags, falling back to what the server wrote in the data dir.
    pub fn resolve(
        data_dir: &Path,
        server: Option<&str>,
        ca_file: Option<&Path>,
        token: Option<&str>,
    ) -> anyhow::Result<Target> {
        let server = match server {
            Some(s) => s.to_owned(),
            None => {
                std::fs::read_to_string(data_dir.join("endpoint")).map(|s| s.trim().to_owned()).with_context(|| {
                    format!(
                        "no --server given and no {}; is the server running (opendps serve)?",
                        data_dir.join("endpoint").display()
                    )
                })?
            }
        };
        let server = server.trim_start_matches("https://").trim_end_matches('/').to_owned();
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
                (h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().unwrap_or(443))
            }
            _ => (server.trim_matches(['[', ']']).to_owned(), 443),
        };
        let (ip, host) = match host.parse::<std::net::IpAddr>() {
            // A server listening on every address (0.0.0.0 or ::) is reached through loopback,
            // and its certificate is checked for that loopback address (the built-in CA always
            // puts 127.0.0.1 and ::1 on the server certificate).
            Ok(ip) if ip.is_unspecified() => {
                let lo = loopback_for(ip);
                (lo, lo.to_string())
            }
            Ok(ip) => (ip, host),
            Err(_) => (
                std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                    .with_context(|| format!("cannot resolve {host}"))?
                    .next()
                    .ok_or_else(|| anyhow!("{host} has no address"))?
                    .ip(),
                host,
            ),
        };
        let ca: PathBuf = ca_file.map(Path::to_owned).unwrap_or_else(|| data_dir.join("pki/root.pem"));
        let root_pem = std::fs::read(&ca).ok();
        let admin_token = match token {
            Some(t) => Some(t.to_owned()),
            None => std::fs::read_to_string(data_dir.join("admin.token")).ok().map(|t| t.trim().to_owned()),
        };
        Ok(Target { addr: SocketAddr::new(ip, port), server_name: host, root_pem, admin_token })
    }
}

/// The loopback address of the same family as an unspecified listen address.
pub fn loopback_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// A response: status and JSON body (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: http::HeaderMap,
}

/// Sends one request and reads the whole reply.
pub async fn request(
    t: &Target,
    method: &str,
    path: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> anyhow::Result<Reply> {
    let stream = dps_tls::client::connect(t.addr, &t.server_name, t.root_pem.as_deref())
        .await
        .with_context(|| {
            format!(
                "cannot reach the server at {} (certificate name {}); if it serves a certificate of your own, pass --server with a name on it",
                t.addr, t.server_name
            )
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let payload = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &t.server_name)
        .header("accept", "application/json")
        .header("user-agent", concat!("opendps-cli/", env!("CARGO_PKG_VERSION")));
    if body.is_some() {
        req = req.header("content-type", "application/json; charset=utf-8");
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(payload)))?;
    let resp = sender.send_request(req).await.context("sending the request")?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.context("reading the reply")?.to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok(Reply { status, body, headers })
}

/// Turns an error reply into an error with the server's message.
pub fn check(r: Reply) -> anyhow::Result<Reply> {
    if r.status < 300 {
        return Ok(r);
    }
    let msg = r
        .body
        .pointer("/error/message")
        .or_else(|| r.body.get("message"))
        .or_else(|| r.body.get("Message"))
        .and_then(Value::as_str)
        .map_or_else(|| r.body.to_string(), str::to_owned);
    bail!("{msg} (HTTP {})", r.status)
}

/// Management API call with the admin token.
pub async fn manage(
    t: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let token = t
        .admin_token
        .as_deref()
        .ok_or_else(|| anyhow!("no admin token: pass --admin-token or --data-dir of the server"))?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{sep}api-version=2022-02-05");
    Ok(check(request(t, method, &path, Some(&format!("Bearer {token}")), headers, body).await?)?.body)
}

/// A service API client for one instance, from its connection string.
#[derive(Debug, Clone)]
pub struct Service {
    pub target: Target,
    pub host: String,
    pub key_name: String,
    pub key: String,
}

impl Service {
    pub fn from_connection_string(target: &Target, cs: &str) -> anyhow::Result<Service> {
        let cs = dps_core::model::ConnectionString::parse(cs)?;
        Ok(Service { target: target.clone(), host: cs.host_name, key_name: cs.key_name, key: cs.key })
    }

    fn token(&self) -> anyhow::Result<String> {
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + Duration::from_secs(3600).as_secs();
        dps_attest::sas::make_token(&self.host.to_ascii_lowercase(), &self.key, expiry, Some(&self.key_name))
            .ok_or_else(|| anyhow!("the connection string's key is not base64"))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}api-version=2021-10-01");
        check(request(&self.target, method, &path, Some(&self.token()?), headers, body).await?)
    }
}

/// Percent-encodes a path segment.
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
