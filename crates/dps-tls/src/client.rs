//! The client side, for the `opendps` CLI talking to its own server: TLS 1.2+ with the
//! server's root as the only trust anchor, and the address or name verified.

use std::net::{IpAddr, SocketAddr};

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
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
