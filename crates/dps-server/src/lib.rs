//! `dps-server`: the composition root. It binds the listeners, builds the TLS layer from the
//! validated [`Config`], runs one accept loop per listener, hands each finished handshake to the
//! protocol adapter of that port, and shuts everything down in order.
//!
//! Sockets are bound outside [`Server::start`] ([`bind`]), so tests can pass listeners of their
//! own and the binary can report a bind failure with what to do about it.

mod admin;
mod hub_client;
mod listener;
pub mod metrics;
mod roles;
mod shared;
mod sources;
mod webhook;

pub use hub_client::HttpsHubRegistry;
pub use webhook::HttpsWebhook;

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
    #[error("cannot open the store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: dps_core::store::StoreError,
    },
    #[error("node key: {0}")]
    NodeKey(String),
    #[error("shared store: {what}")]
    Shared {
        what: &'static str,
        #[source]
        source: dps_core::store::StoreError,
    },
    #[error("cannot create the default DPS instance")]
    DefaultInstance(#[source] dps_core::error::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The admin credential of the management API: `data_dir/admin.token`, created 0600 on first
/// start. The CLI reads it from there.
pub fn admin_token_path(config: &Config) -> PathBuf {
    config.data_dir.join("admin.token")
}

/// Where the server records the address of its HTTPS listener, for the CLI.
pub fn endpoint_path(config: &Config) -> PathBuf {
    config.data_dir.join("endpoint")
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |source| ServerError::Write { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(werr)?;
    f.write_all(text.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Creates the data directory 0700 (it holds the store, the CA keys and the admin token), or
/// narrows an existing one that others could read or enter.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
        tracing::info!(dir = %dir.display(), "data directory narrowed to owner-only access (0700)");
    }
    Ok(())
}

fn admin_token(config: &Config) -> Result<String, ServerError> {
    let path = admin_token_path(config);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 32 {
            return Ok(t.trim().to_owned());
        }
    }
    let mut b = [0u8; 32];
    dps_core::ports::Entropy::fill(&dps_attest::OpensslEntropy, &mut b);
    let token = dps_core::hex::lower(&b);
    write_private(&path, &token)?;
    Ok(token)
}

/// The subscription id every resource id carries (one server = one subscription).
pub const SUBSCRIPTION_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The service connection string of `instance` (its owner policy, or the first policy).
pub fn connection_string(state: &dps_http::AppState, instance: &dps_core::model::Instance) -> Option<String> {
    let p = instance
        .authorization_policies
        .iter()
        .find(|p| p.key_name == "provisioningserviceowner")
        .or_else(|| instance.authorization_policies.first())?;
    let cs = dps_core::model::ConnectionString {
        host_name: state.public_host.clone(),
        key_name: p.key_name.clone(),
        key: p.primary_key.clone(),
    };
    Some(cs.to_string())
}

/// The transports this server can run, one entry each: its name, its settings, the flag that
/// moves its port, and the protocol behind its TLS. Adding a transport is adding a line here
/// (and its driver in `listener.rs`).
fn transports(config: &Config) -> [(&'static str, &ListenerConfig, &'static str, Protocol); 3] {
    [
        ("https", &config.https, "--https-port", Protocol::Https),
        ("mqtt", &config.mqtt, "--mqtt-port", Protocol::Mqtt),
        ("amqp", &config.amqp, "--amqp-port", Protocol::Amqp),
    ]
}

/// Listeners bound before the server starts, one per enabled transport.
#[derive(Debug, Default)]
pub struct BoundListeners {
    pub listeners: Vec<(&'static str, TcpListener)>,
    /// The plain-HTTP admin listener (metrics, health), unless disabled.
    pub admin: Option<TcpListener>,
}

impl BoundListeners {
    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        if name == "admin" {
            return self.admin.as_ref().and_then(|l| l.local_addr().ok());
        }
        self.listeners.iter().find(|(n, _)| *n == name).and_then(|(_, l)| l.local_addr().ok())
    }
}

fn bind_error(listener: &'static str, addr: SocketAddr, flag: &str, source: std::io::Error) -> ServerError {
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
    ServerError::Bind { listener, addr, hint, source }
}

/// The listen backlog of every listener: connections the kernel has completed that the accept
/// loop has not taken yet (docs/limits.md, "Before and during TLS"). tokio's default, 1 024,
/// overflowed under 1 000 half-open connections a second on a starved machine, and a good
/// client whose SYN is dropped waits 1 s, then 3 s. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind`).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds every enabled listener of `config`.
pub async fn bind(config: &Config) -> Result<BoundListeners, ServerError> {
    let mut bound = BoundListeners::default();
    for (name, l, flag, _) in transports(config) {
        if !l.enabled {
            continue;
        }
        let addr = SocketAddr::new(l.address, l.port);
        let listener = listen(addr).map_err(|source| bind_error(name, addr, flag, source))?;
        bound.listeners.push((name, listener));
    }
    if config.admin.enabled {
        let addr = SocketAddr::new(config.admin.address, config.admin.port);
        let flag = "--admin-port (or [admin] enabled = false)";
        bound.admin = Some(TcpListener::bind(addr).await.map_err(|source| bind_error("admin", addr, flag, source))?);
    }
    Ok(bound)
}

/// The host names clients may address this server by: the public host name, the names and
/// addresses its certificate is issued for, and the listen addresses. A service SAS token must
/// name one of them (or `{instance}.…`).
fn host_names(config: &Config) -> Vec<String> {
    let mut names = vec![config.service.public_host.clone(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let CertificateSource::BuiltIn(b) = &config.tls.certificate {
        names.extend(b.dns_names.iter().cloned());
        names.extend(b.ip_addresses.iter().map(ToString::to_string));
    }
    for (_, l, _, _) in transports(config) {
        if !l.address.is_unspecified() {
            names.push(l.address.to_string());
        }
    }
    if let Ok(h) = gethostname::gethostname().into_string() {
        names.push(h);
    }
    names.sort();
    names.dedup();
    names
}

fn mqtt_limits(config: &Config) -> dps_mqtt::Limits {
    let l = &config.limits;
    dps_mqtt::Limits {
        connect_timeout: l.mqtt_connect_timeout,
        max_keep_alive: l.mqtt_max_keep_alive,
        refused_lifetime: l.mqtt_refused_lifetime,
    }
}

fn amqp_settings(config: &Config) -> Arc<dps_amqp::AmqpSettings> {
    let _ = config;
    Arc::new(dps_amqp::AmqpSettings::default())
}

/// Where the built-in CA keeps its files.
pub fn pki_dir(config: &Config) -> PathBuf {
    config.data_dir.join("pki")
}

fn credential_source(config: &Config) -> (CredentialSource, Duration) {
    match &config.tls.certificate {
        CertificateSource::BuiltIn(b) => {
            let mut ips = b.ip_addresses.clone();
            for (_, l, _, _) in transports(config) {
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

/// File descriptors the server needs besides its connections: store, certificate files, log,
/// listeners, runtime.
const OPEN_FILES_MARGIN: u64 = 256;

/// The open files `config` may need: every enabled listener's connection cap plus a margin.
pub fn open_files_needed(config: &Config) -> u64 {
    let listeners = transports(config).iter().filter(|t| t.1.enabled).count() as u64;
    listeners.saturating_mul(config.tls.max_connections as u64).saturating_add(OPEN_FILES_MARGIN)
}

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit, and warns when even
/// that is below what the connection caps need (accepts would then fail under load, costing
/// good clients). Returns the soft limit now in force.
pub fn raise_open_file_limit(config: &Config) -> u64 {
    let needed = open_files_needed(config);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => {
            tracing::warn!(
                open_files = limit,
                needed,
                "the open-file limit is below the connection caps ({} per listener) plus {OPEN_FILES_MARGIN}; raise the hard limit (ulimit -Hn, LimitNOFILE= in the systemd unit) or lower tls.max_connections",
                config.tls.max_connections
            );
            limit
        }
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, needed, "cannot read or raise the open-file limit");
            0
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub https_addr: Option<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
    pub amqp_addr: Option<SocketAddr>,
    /// The admin listener (metrics, health), if enabled.
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<metrics::Metrics>,
    pub tls: Arc<ServerTls>,
    pub state: Arc<dps_http::AppState>,
    /// The management API's bearer credential (also in `data_dir/admin.token`).
    pub admin_token: String,
    /// The instance created on this first start, if it was the first.
    pub created_default: Option<dps_core::model::Instance>,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Server {
    /// Starts serving on already-bound listeners. Fails closed: no valid server credentials,
    /// no server. Blocking work (key generation on first start) runs off the async threads.
    pub async fn start(config: Config, listeners: BoundListeners) -> Result<Server, ServerError> {
        Self::start_with_clock(config, listeners, Arc::new(dps_attest::SystemClock)).await
    }

    /// [`Server::start`] with the clock injected (tests move time instead of waiting for it).
    pub async fn start_with_clock(
        config: Config,
        listeners: BoundListeners,
        clock: Arc<dyn dps_core::ports::Clock>,
    ) -> Result<Server, ServerError> {
        private_dir(&config.data_dir)
            .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
        // Which OpenSSL serves TLS: the system's, or the one built in (docs/tls.md, "Which OpenSSL").
        tracing::info!(openssl = dps_tls::openssl_version(), "TLS library");
        raise_open_file_limit(&config);
        let metrics = Arc::new(metrics::Metrics::new());
        let timed = |s| metrics::TimedStore::new(s, metrics.clone());
        let mut quota: Option<Arc<dyn dps_core::service::RegistrationQuota>> = None;
        let mut shared_db: Option<dps_store_postgres::PgStore> = None;
        // Secrets at rest are sealed with the node key (docs/secrets.md). A shared store requires
        // the operator's key (every node shares it, and the built-in CA and admin credential);
        // an embedded store without one gets its own key file beside the database.
        let key = match &config.store.url {
            Some(_) => Arc::new(shared::require_node_key(&config)?),
            None => Arc::new(match shared::node_key(&config)? {
                Some(k) => k,
                None => shared::local_node_key(&config.data_dir)?,
            }),
        };
        let sealer: Arc<dyn dps_core::ports::SecretSealer> = key.clone();
        let node_key = config.store.url.as_ref().map(|_| key.clone());
        let store: Arc<dyn dps_core::store::Store> = match &config.store.url {
            Some(url) => {
                let pg = dps_store_postgres::PgStore::connect(&url.0, 16)
                    .await
                    .map_err(|source| ServerError::Store { path: PathBuf::from("postgres://<redacted>"), source })?;
                quota = Some(Arc::new(pg.quota(config.service.registrations_per_minute)));
                shared_db = Some(pg.clone());
                Arc::new(timed(dps_core::store::SealedStore::new(pg, sealer)))
            }
            None => {
                let store_path = config.store.path.clone();
                let durability = if config.store.durable_fsync {
                    dps_store_sqlite::Durability::Full
                } else {
                    dps_store_sqlite::Durability::Normal
                };
                Arc::new(metrics::TimedStore::new(
                    dps_core::store::SealedStore::new(
                        tokio::task::spawn_blocking(move || {
                            dps_store_sqlite::SqliteStore::open(&store_path, durability)
                        })
                        .await
                        .map_err(|e| ServerError::Tls(dps_tls::TlsError::Invalid(format!("store task failed: {e}"))))?
                        .map_err(|source| ServerError::Store { path: config.store.path.clone(), source })?,
                        sealer,
                    ),
                    metrics.clone(),
                ))
            }
        };
        let (source, check_interval) = credential_source(&config);
        if let (Some(b), CredentialSource::BuiltIn(settings)) = (&node_key, &source) {
            shared::share_builtin_ca(store.as_ref(), b, settings, dps_tls::unix(clock.as_ref())).await?;
        }
        let mut specs = Vec::new();
        for (name, l, _, _) in transports(&config) {
            specs.push(ListenerSpec {
                name: name.to_owned(),
                policy: policy(&config, l),
                handshake_timeout: config.tls.handshake_timeout,
                max_handshakes: config.tls.max_handshakes,
                failures_logged_per_second: config.limits.log_failed_handshakes_per_second,
            });
        }
        // Nodes of a shared store share their session-ticket keys, so each resumes the others'
        // sessions; an embedded store keeps OpenSSL's own per-context keys.
        let tickets = match (&node_key, config.tls.session_tickets) {
            (Some(b), true) => Some(shared::share_ticket_keys(store.as_ref(), b, dps_tls::unix(clock.as_ref())).await?),
            _ => None,
        };
        let tls_clock = clock.clone();
        let ring = tickets.clone();
        let tls =
            tokio::task::spawn_blocking(move || ServerTls::start_with_ticket_keys(source, &specs, tls_clock, ring))
                .await
                .map_err(|e| ServerError::Tls(dps_tls::TlsError::Invalid(format!("TLS start-up task failed: {e}"))))?
                .map_err(ServerError::Tls)?;

        let mut admin_token = admin_token(&config)?;
        if let Some(b) = &node_key {
            let shared = shared::share_admin_token(store.as_ref(), b, admin_token.clone()).await?;
            if shared != admin_token {
                write_private(&admin_token_path(&config), &shared)?;
                admin_token = shared;
            }
        }
        let shared_store = store.clone();
        let mut services = dps_core::service::Services::new(
            store,
            clock.clone(),
            Arc::new(dps_attest::OpensslEntropy),
            Arc::new(dps_attest::OpensslX509),
            Arc::new(dps_attest::OpensslDeviceCrypto),
        )
        .with_observer(metrics.clone())
        .with_registration_quota(config.service.registrations_per_minute)
        .with_host_names(host_names(&config))
        .with_admin_token(admin_token.clone())
        .with_region(&config.service.region)
        .with_tpm(Arc::new(dps_attest::tpm::OpensslTpm))
        .with_http_localhost_webhooks(config.allocation.allow_http_localhost)
        .with_webhook(Arc::new(HttpsWebhook {
            timeout: config.allocation.webhook_timeout,
            extra_roots: match &config.allocation.webhook_ca_file {
                Some(p) => Some(std::fs::read(p).map_err(|source| ServerError::Read { path: p.clone(), source })?),
                None => None,
            },
            allow_http_localhost: config.allocation.allow_http_localhost,
        }));
        if let Some(q) = quota {
            services = services.with_quota(q);
        }
        let services = if config.hub_registry.register_devices {
            // Trusted for hubs: the system roots, this server's own root (its embedded hubs),
            // and the configured CA.
            let mut roots = tls.root_pem().unwrap_or_default();
            if let Some(p) = &config.hub_registry.ca_file {
                roots.extend(std::fs::read(p).map_err(|source| ServerError::Read { path: p.clone(), source })?);
            }
            let roots = (!roots.is_empty()).then_some(roots);
            services.with_hub_registry(Arc::new(HttpsHubRegistry::new(config.hub_registry.timeout, roots)))
        } else {
            services
        };
        let peer_db = match &config.store.peer_url {
            Some(url) => {
                Some(dps_store_postgres::PgStore::observer(&url.0, dps_store_postgres::Timeouts::default()).map_err(
                    |source| ServerError::Store { path: PathBuf::from("postgres://<redacted> (peer)"), source },
                )?)
            }
            None => None,
        };
        if let Some(db) = &shared_db {
            let role = roles::observe(db, peer_db.as_ref()).await;
            services.set_role(role);
            if role == dps_core::service::Role::Fenced {
                tracing::error!(
                    "split brain: the peer database is primary on a higher timeline; this node serves nothing"
                );
            }
            tracing::info!(role = role.as_str(), "database role");
        }
        let created_default = match services.role() {
            // A standby serves what the primary's nodes created; it writes nothing.
            dps_core::service::Role::Primary => services
                .ensure_default_instance(&dps_core::service::InstanceDefaults {
                    name: config.service.default_instance.clone(),
                    resource_group: "opendps".into(),
                    location: config.service.region.clone(),
                })
                .await
                .map_err(ServerError::DefaultInstance)?,
            _ => None,
        };
        let shutdown = CancellationToken::new();
        let state = Arc::new(dps_http::AppState {
            services,
            public_host: config.service.public_host.clone(),
            subscription_id: SUBSCRIPTION_ID.into(),
            default_location: config.service.region.clone(),
            max_body: config.service.max_body,
            header_timeout: config.limits.header_timeout,
            body_timeout: config.limits.body_timeout,
            shutdown: shutdown.clone(),
        });

        let tracker = TaskTracker::new();
        tracker.spawn(tls.clone().run(check_interval, config.tls.ticket_key_lifetime, shutdown.clone()));
        if let (Some(ring), Some(b)) = (tickets, &node_key) {
            tracker.spawn(shared::ticket_key_loop(
                shared_store,
                b.clone(),
                ring,
                config.tls.ticket_key_lifetime,
                state.services.clone(),
                clock,
                shutdown.clone(),
            ));
        }
        if let Some(db) = shared_db {
            let poll = roles::poll(db, peer_db, state.services.clone(), config.store.role_poll, shutdown.clone());
            tracker.spawn(poll);
        }

        let drivers = listener::Drivers::new(state.clone(), mqtt_limits(&config), amqp_settings(&config));
        let mut addrs = (None, None, None);
        let sources = sources::SourceLimits::new(sources::SourceSettings {
            max_connections: config.limits.max_connections_per_source,
            per_second: config.limits.handshakes_per_second_per_source,
            burst: config.limits.handshake_burst_per_source,
            log_interval: config.limits.log_refusals_interval,
        });
        for (name, listener) in listeners.listeners {
            let Some((_, _, _, protocol)) = transports(&config).into_iter().find(|t| t.0 == name) else { continue };
            let addr = listener.local_addr().ok();
            match protocol {
                Protocol::Https => addrs.0 = addr,
                Protocol::Mqtt => addrs.1 = addr,
                Protocol::Amqp => addrs.2 = addr,
            }
            let Some(acceptor) = tls.acceptor(name) else { continue };
            tracker.spawn(listener::accept_loop(listener::LoopArgs {
                listener,
                acceptor,
                protocol,
                drivers: drivers.clone(),
                max_connections: config.tls.max_connections,
                hello_timeout: config.limits.hello_timeout,
                metrics: metrics.clone(),
                sources: sources.clone(),
                log_interval: config.limits.log_refusals_interval,
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
            }));
        }
        let admin_addr = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(l) = listeners.admin {
            let services = state.services.clone();
            tracker.spawn(admin::serve(l, metrics.clone(), services, tracker.clone(), shutdown.clone()));
        }
        if let Some(addr) = addrs.0 {
            write_private(&endpoint_path(&config), &format!("{addr}\n"))?;
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
        Ok(Server {
            https_addr: addrs.0,
            mqtt_addr: addrs.1,
            amqp_addr: addrs.2,
            admin_addr,
            metrics,
            tls,
            state,
            admin_token,
            created_default,
            shutdown,
            done,
        })
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        let (_, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        let low = hard.min(256);
        rlimit::Resource::NOFILE.set(low, hard).expect("lower the soft limit");
        let config = dps_config::Config::from_raw(dps_config::raw::Raw::default()).expect("defaults");
        assert_eq!(super::raise_open_file_limit(&config), hard);
        assert_eq!(rlimit::Resource::NOFILE.get().expect("getrlimit"), (hard, hard));
        assert_eq!(super::open_files_needed(&config), 3 * 10_000 + 256, "three listeners");
    }
}
