//! `dps-server`: the composition root. It binds the listeners, builds the TLS layer from the
//! validated [`Config`], runs one accept loop per listener, hands each finished handshake to the
//! protocol adapter of that port, and shuts everything down in order.
//!
//! Sockets are bound outside [`Server::start`] ([`bind`]), so tests can pass listeners of their
//! own and the binary can report a bind failure with what to do about it (craft.md L12).

mod listener;
mod mqtt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dps_config::{CertificateSource, Config, ListenerConfig};
use dps_tls::builtin_ca::BuiltInCaSettings;
use dps_tls::{CredentialFiles, CredentialSource, ListenerSpec, ServerTls, TlsPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use listener::Protocol;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot bind the {listener} listener to {addr}: {hint}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        hint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use data directory {path}; create it or pass --data-dir")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS")]
    Tls(#[source] dps_tls::TlsError),
}

/// Listeners bound before the server starts. `None` for a disabled listener.
#[derive(Debug)]
pub struct BoundListeners {
    pub https: Option<TcpListener>,
    pub mqtt: Option<TcpListener>,
}

/// Binds every enabled listener of `config`.
pub async fn bind(config: &Config) -> Result<BoundListeners, ServerError> {
    async fn one(name: &'static str, l: &ListenerConfig, flag: &str) -> Result<Option<TcpListener>, ServerError> {
        if !l.enabled {
            return Ok(None);
        }
        let addr = SocketAddr::new(l.address, l.port);
        TcpListener::bind(addr).await.map(Some).map_err(|source| {
            let hint = match source.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE. Run as root, or pick another port with {flag}"
                ),
                std::io::ErrorKind::AddrInUse => format!(
                    "the address is already in use; stop the other server, or pick another port with {flag} or another address with --listen-address"
                ),
                std::io::ErrorKind::AddrNotAvailable => {
                    "this machine has no such address; pick one of its own with --listen-address".to_owned()
                }
                _ => format!("{source}"),
            };
            ServerError::Bind { listener: name, addr, hint, source }
        })
    }
    Ok(BoundListeners {
        https: one("HTTPS", &config.https, "--https-port").await?,
        mqtt: one("MQTT", &config.mqtt, "--mqtt-port").await?,
    })
}

/// Where the built-in CA keeps its files.
pub fn pki_dir(config: &Config) -> PathBuf {
    config.data_dir.join("pki")
}

fn credential_source(config: &Config) -> (CredentialSource, Duration) {
    match &config.tls.certificate {
        CertificateSource::BuiltIn(b) => {
            let mut ips = b.ip_addresses.clone();
            for l in [&config.https, &config.mqtt] {
                if !l.address.is_unspecified() && !ips.contains(&l.address) {
                    ips.push(l.address);
                }
            }
            let settings = BuiltInCaSettings {
                dir: pki_dir(config),
                dns_names: b.dns_names.clone(),
                ip_addresses: ips,
                leaf_lifetime: b.leaf_lifetime,
            };
            // Check often enough that a short-lived leaf is renewed well before it expires.
            let check = b.check_interval.min(b.leaf_lifetime / 6).max(Duration::from_secs(1));
            (CredentialSource::BuiltIn(settings), check)
        }
        CertificateSource::Files(f) => (
            CredentialSource::Files(CredentialFiles {
                chain: f.chain.clone(),
                key: f.key.clone(),
                root: f.root.clone(),
            }),
            f.poll_interval,
        ),
    }
}

fn policy(config: &Config, l: &ListenerConfig) -> TlsPolicy {
    TlsPolicy {
        profile: l.tls.profile,
        tls13: l.tls.tls13,
        groups: config.tls.groups.clone(),
        request_client_cert: l.tls.request_client_cert,
        session_tickets: config.tls.session_tickets,
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub https_addr: Option<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
    pub tls: Arc<ServerTls>,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Server {
    /// Starts serving on already-bound listeners. Fails closed: no valid server credentials,
    /// no server. Blocking work (key generation on first start) runs off the async threads.
    pub async fn start(config: Config, listeners: BoundListeners) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
        let (source, check_interval) = credential_source(&config);
        let mut specs = Vec::new();
        for (name, l) in [("https", &config.https), ("mqtt", &config.mqtt)] {
            specs.push(ListenerSpec {
                name: name.to_owned(),
                policy: policy(&config, l),
                handshake_timeout: config.tls.handshake_timeout,
                max_handshakes: config.tls.max_handshakes,
            });
        }
        let tls = tokio::task::spawn_blocking(move || ServerTls::start(source, &specs))
            .await
            .map_err(|e| ServerError::Tls(dps_tls::TlsError::Invalid(format!("TLS start-up task failed: {e}"))))?
            .map_err(ServerError::Tls)?;

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(tls.clone().run(check_interval, config.tls.ticket_key_lifetime, shutdown.clone()));

        let mut addrs = (None, None);
        let router = dps_http::router();
        for (name, listener, protocol) in
            [("https", listeners.https, Protocol::Https(router)), ("mqtt", listeners.mqtt, Protocol::Mqtt)]
        {
            let Some(listener) = listener else { continue };
            let addr = listener.local_addr().ok();
            if name == "https" {
                addrs.0 = addr;
            } else {
                addrs.1 = addr;
            }
            let Some(acceptor) = tls.acceptor(name) else { continue };
            tracker.spawn(listener::accept_loop(listener::LoopArgs {
                listener,
                acceptor,
                protocol,
                max_connections: config.tls.max_connections,
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
            }));
        }
        let grace = config.shutdown_grace;
        let stop = shutdown.clone();
        let done = tokio::spawn(async move {
            stop.cancelled().await;
            tracker.close();
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(grace = ?grace, "connections still open after the shutdown grace period; closing them");
            }
        });
        Ok(Server { https_addr: addrs.0, mqtt_addr: addrs.1, tls, shutdown, done })
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets open connections finish within the grace period, then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the server has been shut down through its token.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}
