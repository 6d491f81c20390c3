//! The one TLS client every load uses, against OpenDPS and against nginx alike: TLS 1.2, the
//! server verified against the OpenDPS root for its IP address, the ECDHE groups asked for, and
//! no session resumption (no session cache, no ticket extension), so every connection is a full
//! handshake.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslContext, SslMethod, SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::device::Failure;

/// A device's X.509 credential: its leaf (subject CN = registration id) and key.
#[derive(Debug)]
pub struct DeviceCert {
    pub cert: X509,
    pub key: PKey<Private>,
}

/// A full-handshake TLS 1.2 client.
#[derive(Clone, Debug)]
pub struct TlsClient {
    ctx: Arc<SslContext>,
    ip: IpAddr,
}

impl TlsClient {
    /// Trusts only `root_pem` and expects a certificate for `server_ip`; offers the ECDHE
    /// `groups` (OpenSSL list syntax, e.g. "P-256").
    pub fn new(root_pem: &Path, server_ip: IpAddr, groups: &str) -> anyhow::Result<TlsClient> {
        // A bare context, not `SslConnector::builder`: no system trust directories to search
        // on every handshake, only the OpenDPS root in the store.
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_max_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_groups_list(groups).with_context(|| format!("the client cannot offer the groups {groups:?}"))?;
        // Full handshakes only: nothing cached, and no ticket extension, so the server neither
        // issues a ticket nor resumes (the same messages against OpenDPS and nginx).
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        b.set_options(SslOptions::NO_TICKET);
        let pem = std::fs::read(root_pem).with_context(|| format!("reading {}", root_pem.display()))?;
        for cert in X509::stack_from_pem(&pem)? {
            b.cert_store_mut().add_cert(cert)?;
        }
        b.set_verify(SslVerifyMode::PEER);
        Ok(TlsClient { ctx: Arc::new(b.build()), ip: server_ip })
    }

    /// TCP connect and a full TLS handshake, presenting `cert` when given.
    pub async fn connect(&self, addr: SocketAddr, cert: Option<&DeviceCert>) -> Result<SslStream<TcpStream>, Failure> {
        let mut ssl = Ssl::new(&self.ctx).map_err(|e| Failure::new(format!("tls setup: {e}")))?;
        ssl.param_mut().set_ip(self.ip).map_err(|e| Failure::new(format!("tls setup: {e}")))?;
        if let Some(c) = cert {
            ssl.set_certificate(&c.cert).map_err(|e| Failure::new(format!("tls setup: {e}")))?;
            ssl.set_private_key(&c.key).map_err(|e| Failure::new(format!("tls setup: {e}")))?;
        }
        let tcp = TcpStream::connect(addr).await.map_err(|e| Failure::new(format!("tcp connect: {}", e.kind())))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| Failure::new(format!("tls setup: {e}")))?;
        Pin::new(&mut stream).connect().await.map_err(|e| Failure::new(handshake_cause(&e)))?;
        Ok(stream)
    }
}

/// A short, id-free cause for a failed handshake (so failures group by cause).
fn handshake_cause(e: &openssl::ssl::Error) -> String {
    if let Some(io) = e.io_error() {
        return format!("tls handshake: {}", io.kind());
    }
    if let Some(stack) = e.ssl_error() {
        if let Some(first) = stack.errors().first() {
            return format!("tls handshake: {}", first.reason().unwrap_or("openssl error"));
        }
    }
    format!("tls handshake: {:?}", e.code())
}
