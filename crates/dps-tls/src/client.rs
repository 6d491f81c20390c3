//! The client side of TLS, so that nothing outside this crate touches `openssl::ssl`.
//!
//! - [`connect`]: one verified connection (the `opendps` CLI to its own server, the custom
//!   allocation webhook): TLS 1.2+, the given root (or the system roots) as trust anchor, the
//!   address or name verified.
//! - [`Client`]: a reusable client context for many connections (the load generator): pinned
//!   versions and groups, an optional client certificate per connection ([`ClientIdentity`]),
//!   and either no resumption at all (every connection a full handshake, no ticket extension) or
//!   sessions that can be kept ([`ClientStream::session`]) and offered again
//!   ([`Client::connect`] with `resume`).
//! - [`library_connector`] + [`per_connection`]: the OpenSSL settings for a library that runs
//!   its handshakes itself (the PostgreSQL driver, through `postgres-openssl`): TLS 1.2+, the
//!   given roots only (or the system roots), and the server checked as [`ServerCheck`] says.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ConnectConfiguration, Ssl, SslConnector, SslContext, SslMethod, SslMode, SslOptions, SslSession,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::error::TlsError;

/// Connects to `addr` and verifies the server certificate against `root_pem` (or the system
/// roots when `None`) for `server_name` (a DNS name or an IP address).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    root_pem: Option<&[u8]>,
) -> Result<SslStream<TcpStream>, TlsError> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(TlsError::openssl("client context"))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(TlsError::openssl("client minimum version"))?;
    if let Some(pem) = root_pem {
        for cert in X509::stack_from_pem(pem).map_err(TlsError::openssl("reading the root certificate"))? {
            b.cert_store_mut().add_cert(cert).map_err(TlsError::openssl("trusting the root certificate"))?;
        }
    }
    b.set_verify(SslVerifyMode::PEER);
    let connector = b.build();
    let mut cfg = connector.configure().map_err(TlsError::openssl("client configuration"))?;
    let ssl = match server_name.parse::<IpAddr>() {
        Ok(ip) => {
            cfg.set_use_server_name_indication(false);
            cfg.set_verify_hostname(false);
            let mut ssl = cfg.into_ssl("localhost").map_err(TlsError::openssl("client session"))?;
            ssl.param_mut().set_ip(ip).map_err(TlsError::openssl("expected server address"))?;
            ssl
        }
        Err(_) => cfg.into_ssl(server_name).map_err(TlsError::openssl("client session"))?,
    };
    let tcp =
        TcpStream::connect(addr).await.map_err(|source| TlsError::Read { path: addr.to_string().into(), source })?;
    let mut stream = SslStream::new(ssl, tcp).map_err(TlsError::openssl("client stream"))?;
    std::pin::Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| TlsError::Invalid(format!("TLS handshake with {addr} failed: {e}")))?;
    Ok(stream)
}

/// How much of the server's certificate a client checks (PostgreSQL's `sslmode` `require`,
/// `verify-ca`, `verify-full`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// Encryption only: any certificate is accepted.
    Nothing,
    /// The chain must lead to a trusted root; the name is not checked.
    Chain,
    /// The chain and the name (or IP address) the client connected to.
    ChainAndName,
}

/// A connector for a library that drives the handshake itself: TLS 1.2 or later, trusting only
/// the certificates of `roots_pem` (or the system roots when `None`), verifying as `check` says
/// (together with [`per_connection`]).
pub fn library_connector(check: ServerCheck, roots_pem: Option<&[u8]>) -> Result<SslConnector, TlsError> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(TlsError::openssl("client context"))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(TlsError::openssl("client minimum version"))?;
    if let Some(pem) = roots_pem {
        let roots = X509::stack_from_pem(pem).map_err(TlsError::openssl("reading the root certificate"))?;
        if roots.is_empty() {
            return Err(TlsError::Invalid("the root certificate file holds no certificate".into()));
        }
        let mut store = X509StoreBuilder::new().map_err(TlsError::openssl("client trust store"))?;
        for cert in roots {
            store.add_cert(cert).map_err(TlsError::openssl("trusting the root certificate"))?;
        }
        b.set_cert_store(store.build());
    }
    b.set_verify(if check == ServerCheck::Nothing { SslVerifyMode::NONE } else { SslVerifyMode::PEER });
    Ok(b.build())
}

/// The per-connection half of [`library_connector`]: whether the name the library connects to
/// (`domain`, a DNS name or an IP address) must be in the certificate.
pub fn per_connection(
    check: ServerCheck,
) -> impl Fn(&mut ConnectConfiguration, &str) -> Result<(), ErrorStack> + Send + Sync + 'static {
    move |cfg, _domain| {
        cfg.set_verify_hostname(check == ServerCheck::ChainAndName);
        Ok(())
    }
}

/// What a [`Client`] offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Offer TLS 1.3 as well; otherwise exactly TLS 1.2 (never below 1.2).
    pub tls13: bool,
    /// ECDHE groups to offer, in OpenSSL list syntax (`"P-256:P-384"`); `None`: OpenSSL's.
    pub groups: Option<String>,
    /// Session resumption. Off: no session cache and no ticket extension, so every connection
    /// is a full handshake and the server neither issues a ticket nor resumes. On: the client
    /// asks for tickets, and [`ClientStream::session`] can be offered again later.
    pub resumption: bool,
    /// Let OpenSSL free a connection's record buffers (about 33 KiB) whenever nothing is in
    /// flight (`SSL_MODE_RELEASE_BUFFERS`): for a client that holds many idle connections.
    pub release_buffers: bool,
}

/// A client certificate and its key, presented when the server asks for one.
#[derive(Clone)]
pub struct ClientIdentity {
    cert: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl ClientIdentity {
    /// `cert` (the leaf), the certificates above it to send along (may be empty), and its key.
    pub fn new(cert: X509, chain: Vec<X509>, key: PKey<Private>) -> ClientIdentity {
        ClientIdentity { cert, chain, key }
    }

    pub fn certificate(&self) -> &X509 {
        &self.cert
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("subject", &self.cert.subject_name())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Why a [`Client`] connection failed. Short and free of ids, so that failures of many
/// connections group by cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("tls setup")]
    Setup(#[source] ErrorStack),
    #[error("tcp connect: {0}")]
    Tcp(io::ErrorKind),
    #[error("tls handshake: {0}")]
    Handshake(String),
    #[error("the session to resume was negotiated by another client")]
    ForeignSession,
}

/// A session kept from an earlier connection of the same [`Client`].
#[derive(Clone)]
pub struct ClientSession {
    session: SslSession,
    client: u64,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session holds the master secret: never printed.
        f.debug_struct("ClientSession").field("client", &self.client).finish_non_exhaustive()
    }
}

/// A reusable client context: trusts only the given roots, verifies the server's address or
/// name, offers what [`ClientOptions`] says. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    ctx: Arc<SslContext>,
    id: u64,
    resumption: bool,
}

fn next_client_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Client {
    /// A client that trusts only the certificates in `root_pem`.
    pub fn new(root_pem: &[u8], options: &ClientOptions) -> Result<Client, TlsError> {
        // A bare context, not `SslConnector::builder`: no system trust directories searched on
        // every handshake, only the given roots in the store.
        let mut b = SslContext::builder(SslMethod::tls_client()).map_err(TlsError::openssl("client context"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(TlsError::openssl("client minimum version"))?;
        let max = if options.tls13 { SslVersion::TLS1_3 } else { SslVersion::TLS1_2 };
        b.set_max_proto_version(Some(max)).map_err(TlsError::openssl("client maximum version"))?;
        if let Some(groups) = &options.groups {
            b.set_groups_list(groups).map_err(TlsError::openssl("client groups"))?;
        }
        if options.resumption {
            // The caller keeps the sessions it wants (`ClientStream::session`), so the context
            // stores none. Its internal cache would hold every session until 20 480 of them, then
            // evict the oldest and mark it not resumable: a client keeping more devices' sessions
            // than that resumed none of them (every full handshake evicted the next one due).
            b.set_session_cache_mode(SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL_STORE);
        } else {
            b.set_session_cache_mode(SslSessionCacheMode::OFF);
            b.set_options(SslOptions::NO_TICKET);
        }
        let roots = X509::stack_from_pem(root_pem).map_err(TlsError::openssl("reading the root certificate"))?;
        if roots.is_empty() {
            return Err(TlsError::Invalid("the client's root file holds no certificate".into()));
        }
        for cert in roots {
            b.cert_store_mut().add_cert(cert).map_err(TlsError::openssl("trusting the root certificate"))?;
        }
        if options.release_buffers {
            b.set_mode(SslMode::RELEASE_BUFFERS);
        }
        b.set_verify(SslVerifyMode::PEER);
        Ok(Client { ctx: Arc::new(b.build()), id: next_client_id(), resumption: options.resumption })
    }

    /// TCP connect to `addr` and a TLS handshake. The server's certificate must be valid for
    /// `server_name` (an IP address, checked against the certificate's addresses, or a DNS
    /// name, also sent as SNI). `identity` is presented if the server asks for a certificate;
    /// `resume` offers a session kept from an earlier connection of this client.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        identity: Option<&ClientIdentity>,
        resume: Option<&ClientSession>,
    ) -> Result<ClientStream, ConnectError> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| ConnectError::Tcp(e.kind()))?;
        self.handshake(tcp, server_name, identity, resume).await
    }

    /// As [`Client::connect`], over a TCP connection the caller made (e.g. from a chosen source
    /// address).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        server_name: &str,
        identity: Option<&ClientIdentity>,
        resume: Option<&ClientSession>,
    ) -> Result<ClientStream, ConnectError> {
        let mut ssl = Ssl::new(&self.ctx).map_err(ConnectError::Setup)?;
        match server_name.parse::<IpAddr>() {
            Ok(ip) => ssl.param_mut().set_ip(ip).map_err(ConnectError::Setup)?,
            Err(_) => {
                ssl.set_hostname(server_name).map_err(ConnectError::Setup)?;
                ssl.param_mut().set_host(server_name).map_err(ConnectError::Setup)?;
            }
        }
        if let Some(id) = identity {
            ssl.set_certificate(&id.cert).map_err(ConnectError::Setup)?;
            for c in &id.chain {
                ssl.add_chain_cert(c.clone()).map_err(ConnectError::Setup)?;
            }
            ssl.set_private_key(&id.key).map_err(ConnectError::Setup)?;
        }
        if let Some(s) = resume {
            // OpenSSL's precondition for SSL_set_session: the session comes from this context.
            if s.client != self.id {
                return Err(ConnectError::ForeignSession);
            }
            crate::ffi::resume_session(&mut ssl, &s.session).map_err(ConnectError::Setup)?;
        }
        let _ = tcp.set_nodelay(true);
        let mut inner = SslStream::new(ssl, tcp).map_err(ConnectError::Setup)?;
        Pin::new(&mut inner).connect().await.map_err(|e| ConnectError::Handshake(handshake_cause(&e)))?;
        Ok(ClientStream { inner, client: self.id, resumption: self.resumption })
    }
}

/// A short cause for a failed handshake: the first OpenSSL reason, or the I/O error kind.
fn handshake_cause(e: &openssl::ssl::Error) -> String {
    if let Some(first) = e.ssl_error().and_then(|stack| stack.errors().first()) {
        return first.reason().unwrap_or("openssl error").to_owned();
    }
    match e.io_error() {
        Some(io) => io.kind().to_string(),
        None => format!("{:?}", e.code()),
    }
}

/// An established client connection: read and write it like any stream.
#[derive(Debug)]
pub struct ClientStream {
    inner: SslStream<TcpStream>,
    client: u64,
    resumption: bool,
}

impl ClientStream {
    /// The negotiated suite's OpenSSL name (e.g. `ECDHE-RSA-AES256-GCM-SHA384`).
    pub fn cipher(&self) -> Option<&'static str> {
        self.inner.ssl().current_cipher().map(|c| c.name())
    }

    /// The negotiated version (`TLSv1.2`, `TLSv1.3`).
    pub fn version(&self) -> &'static str {
        self.inner.ssl().version_str()
    }

    /// The local address of the connection (the source the server sees).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    /// Whether this connection resumed a session instead of a full handshake.
    pub fn resumed(&self) -> bool {
        self.inner.ssl().session_reused()
    }

    /// The session to offer on a later connection of the same [`Client`]; `None` when the
    /// client was made without resumption or the server gave nothing resumable. (Under TLS 1.3
    /// the server sends its ticket after the handshake: read some data first.)
    pub fn session(&self) -> Option<ClientSession> {
        if !self.resumption {
            return None;
        }
        let session = self.inner.ssl().session()?.to_owned();
        Some(ClientSession { session, client: self.client })
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
