//! The one TLS client every load uses, against OpenDPS and against nginx alike: TLS 1.2, the
//! server verified against the OpenDPS root for its IP address, the ECDHE groups asked for. By
//! default no session resumption (no session cache, no ticket extension), so every connection
//! is a full handshake; [`TlsClient::resuming`] makes a client that keeps each device's session
//! (per server address) and offers it on the device's next connection (`register --resume`).
//! [`TlsClient::spread_over`] spreads a client's connections over several loopback source
//! addresses, as many devices would come from many addresses (`hostile`: the server's per-source
//! limits then see each device as its own source). The TLS itself is `dps_tls::client` (only
//! dps-tls uses `openssl::ssl`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use dps_tls::client::{Client, ClientOptions, ClientSession, ClientStream};
use tokio::net::{TcpSocket, TcpStream};

use crate::device::Failure;

/// A device's X.509 credential: its leaf (subject CN = registration id) and key.
pub type DeviceCert = dps_tls::client::ClientIdentity;

/// Sessions kept per (server address, device), and how many handshakes resumed one.
#[derive(Debug, Default)]
struct Sessions {
    kept: Mutex<HashMap<(SocketAddr, String), ClientSession>>,
    resumed: AtomicU64,
}

/// A TLS 1.2 client: full handshakes, or with [`TlsClient::resuming`] resumed ones.
#[derive(Clone, Debug)]
pub struct TlsClient {
    client: Client,
    server_name: String,
    sessions: Option<Arc<Sessions>>,
    sources: Option<Arc<Sources>>,
}

/// Source addresses taken in turn, one per connection.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    pub fn new(addrs: Vec<IpAddr>) -> Sources {
        Sources { addrs, next: AtomicUsize::new(0) }
    }

    /// The next address in turn (None when there are none: the kernel chooses).
    pub fn next(&self) -> Option<IpAddr> {
        if self.is_empty() {
            return None;
        }
        Some(self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()])
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// 127.0.`third`.1 ..= 127.0.`third`.n (at least one address).
pub fn loopback_range(third: u8, n: u8) -> Vec<IpAddr> {
    (1..=n.clamp(1, 254)).map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, third, i))).collect()
}

/// A TCP connection to `addr` from `source` (any port), or from the address the kernel
/// chooses.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, Failure> {
    let fail = |e: std::io::Error| Failure::new(format!("tcp connect: {}", e.kind()));
    let Some(src) = source else { return TcpStream::connect(addr).await.map_err(fail) };
    let socket = if src.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(SocketAddr::new(src, 0)).map_err(fail)?;
    socket.connect(addr).await.map_err(fail)
}

impl TlsClient {
    /// Trusts only `root_pem` and expects a certificate for `server_ip`; offers the ECDHE
    /// `groups` (OpenSSL list syntax, e.g. "P-256"). Every connection is a full handshake.
    pub fn new(root_pem: &Path, server_ip: IpAddr, groups: &str) -> anyhow::Result<TlsClient> {
        Self::build(root_pem, server_ip, groups, ClientOptions::default(), Vec::new())
    }

    /// As [`TlsClient::new`], but asking for tickets and keeping each device's session: a
    /// device's second connection to the same address offers the session of its first.
    pub fn resuming(root_pem: &Path, server_ip: IpAddr, groups: &str) -> anyhow::Result<TlsClient> {
        Self::build(root_pem, server_ip, groups, ClientOptions { resumption: true, ..Default::default() }, Vec::new())
    }

    /// A client for holding many idle connections: full handshakes as [`TlsClient::new`],
    /// OpenSSL's record buffers released while a connection is quiet, and each connection
    /// made from the next of `sources` in turn (none: the kernel's choice).
    pub fn holding(
        root_pem: &Path,
        server_ip: IpAddr,
        groups: &str,
        sources: Vec<IpAddr>,
    ) -> anyhow::Result<TlsClient> {
        Self::build(root_pem, server_ip, groups, ClientOptions { release_buffers: true, ..Default::default() }, sources)
    }

    fn build(
        root_pem: &Path,
        server_ip: IpAddr,
        groups: &str,
        options: ClientOptions,
        sources: Vec<IpAddr>,
    ) -> anyhow::Result<TlsClient> {
        let pem = std::fs::read(root_pem).with_context(|| format!("reading {}", root_pem.display()))?;
        let options = ClientOptions { tls13: false, groups: Some(groups.to_owned()), ..options };
        let client =
            Client::new(&pem, &options).with_context(|| format!("a TLS client offering the groups {groups:?}"))?;
        let sessions = options.resumption.then(|| Arc::new(Sessions::default()));
        let sources = (!sources.is_empty()).then(|| Arc::new(Sources::new(sources)));
        Ok(TlsClient { client, server_name: server_ip.to_string(), sessions, sources })
    }

    /// The same client, its connections spread over `sources` in turn.
    pub fn spread_over(&self, sources: Arc<Sources>) -> TlsClient {
        TlsClient { sources: Some(sources), ..self.clone() }
    }

    /// A TLS handshake over a TCP connection from `source`, without a client certificate or a
    /// kept session (a hostile client's connection).
    pub async fn connect_from(&self, addr: SocketAddr, source: Option<IpAddr>) -> Result<ClientStream, Failure> {
        let tcp = tcp_connect(addr, source).await?;
        self.client.handshake(tcp, &self.server_name, None, None).await.map_err(|e| Failure::new(e.to_string()))
    }

    /// TCP connect and a TLS handshake for `device`, presenting `cert` when given; resumed when
    /// this client keeps sessions and has one of `device` for `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        device: &str,
        cert: Option<&DeviceCert>,
    ) -> Result<ClientStream, Failure> {
        let tcp = tcp_connect(addr, self.sources.as_ref().and_then(|s| s.next())).await?;
        let Some(sessions) = &self.sessions else {
            return self
                .client
                .handshake(tcp, &self.server_name, cert, None)
                .await
                .map_err(|e| Failure::new(e.to_string()));
        };
        let key = (addr, device.to_owned());
        let kept = sessions.kept.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        let s = self
            .client
            .handshake(tcp, &self.server_name, cert, kept.as_ref())
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        if s.resumed() {
            sessions.resumed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(session) = s.session() {
            sessions.kept.lock().unwrap_or_else(|p| p.into_inner()).insert(key, session);
        }
        Ok(s)
    }

    /// Handshakes that resumed a kept session so far (0 for a full-handshake client).
    pub fn resumed(&self) -> u64 {
        self.sessions.as_ref().map_or(0, |s| s.resumed.load(Ordering::Relaxed))
    }
}
