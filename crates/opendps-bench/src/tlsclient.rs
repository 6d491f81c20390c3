//! The one TLS client every load uses, against OpenDPS and against nginx alike: TLS 1.2, the
//! server verified against the OpenDPS root for its IP address, the ECDHE groups asked for, and
//! no session resumption (no session cache, no ticket extension), so every connection is a full
//! handshake. The TLS itself is `dps_tls::client` (only dps-tls uses `openssl::ssl`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use dps_tls::client::{Client, ClientOptions, ClientStream};

use crate::device::Failure;

/// A device's X.509 credential: its leaf (subject CN = registration id) and key.
pub type DeviceCert = dps_tls::client::ClientIdentity;

/// A full-handshake TLS 1.2 client.
#[derive(Clone, Debug)]
pub struct TlsClient {
    client: Client,
    server_name: String,
}

impl TlsClient {
    /// Trusts only `root_pem` and expects a certificate for `server_ip`; offers the ECDHE
    /// `groups` (OpenSSL list syntax, e.g. "P-256").
    pub fn new(root_pem: &Path, server_ip: IpAddr, groups: &str) -> anyhow::Result<TlsClient> {
        let pem = std::fs::read(root_pem).with_context(|| format!("reading {}", root_pem.display()))?;
        let options = ClientOptions { tls13: false, groups: Some(groups.to_owned()), resumption: false };
        let client =
            Client::new(&pem, &options).with_context(|| format!("a TLS client offering the groups {groups:?}"))?;
        Ok(TlsClient { client, server_name: server_ip.to_string() })
    }

    /// TCP connect and a full TLS handshake, presenting `cert` when given.
    pub async fn connect(&self, addr: SocketAddr, cert: Option<&DeviceCert>) -> Result<ClientStream, Failure> {
        self.client.connect(addr, &self.server_name, cert, None).await.map_err(|e| Failure::new(e.to_string()))
    }
}
