use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dps_core::ports::Clock;
use openssl::hash::{hash, MessageDigest};
use openssl::x509::X509;
use tokio_util::sync::CancellationToken;

use crate::accept::ListenerAcceptor;
use crate::builtin_ca::{BuiltInCaSettings, Renewal};
use crate::context::TlsPolicy;
use crate::credentials::{read, CredentialFiles, ServerCredentials};
use crate::error::TlsError;
use crate::ticket_keys::TicketKeyRing;

/// Where server credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// The built-in CA under the data directory, renewing itself.
    BuiltIn(BuiltInCaSettings),
    /// Operator PEM files, reloaded on change and on SIGHUP.
    Files(CredentialFiles),
}

/// The server's TLS: the current credentials and every listener's acceptor.
///
/// A roll is always load → validate → build every listener's context → swap them all. If any
/// step fails the old credentials stay in place on every listener and the failure is logged
/// once. Connections already open are never touched: they own the context they started with.
#[derive(Debug)]
pub struct ServerTls {
    source: CredentialSource,
    current: ArcSwap<ServerCredentials>,
    root: ArcSwap<Option<X509>>,
    listeners: Vec<Arc<ListenerAcceptor>>,
    /// Serializes rolls; the digest of the file contents last looked at.
    roll: Mutex<RollState>,
    /// Decides renewal and validity (injected, so tests need not wait).
    clock: Arc<dyn Clock>,
    /// Session-ticket keys shared with other nodes, rotated by their owner; `None`: each
    /// context has OpenSSL's own key, replaced by rebuilding the contexts.
    tickets: Option<Arc<TicketKeyRing>>,
}

#[derive(Debug, Default)]
struct RollState {
    seen: Option<Vec<u8>>,
}

/// Per-listener settings for [`ServerTls::start`].
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub policy: TlsPolicy,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
    /// Failed handshakes logged per second on this listener; the rest are counted.
    pub failures_logged_per_second: u32,
}

/// `clock`'s time in Unix seconds (what certificate checks take).
pub fn unix(clock: &dyn Clock) -> i64 {
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl CredentialSource {
    fn load(&self, now: i64) -> Result<(ServerCredentials, Option<X509>, bool), TlsError> {
        match self {
            CredentialSource::BuiltIn(ca) => {
                let (creds, root, renewal) = ca.ensure(now)?;
                Ok((creds, Some(root), renewal != Renewal::Unchanged))
            }
            CredentialSource::Files(files) => {
                let (creds, root) = files.load()?;
                Ok((creds, root, true))
            }
        }
    }

    /// A digest of the operator files (none for the built-in CA).
    fn digest(&self) -> Option<Vec<u8>> {
        let CredentialSource::Files(f) = self else { return None };
        let mut all = Vec::new();
        for p in std::iter::once(&f.chain).chain(std::iter::once(&f.key)).chain(f.root.iter()) {
            all.extend(read(p).unwrap_or_default());
            all.push(0);
        }
        hash(MessageDigest::sha256(), &all).ok().map(|d| d.to_vec())
    }
}

impl ServerTls {
    /// Loads and validates the credentials and builds every listener's context. Fails closed:
    /// without valid credentials the server does not start, and the error names the file.
    pub fn start(
        source: CredentialSource,
        listeners: &[ListenerSpec],
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        Self::start_with_ticket_keys(source, listeners, clock, None)
    }

    /// [`Self::start`] with session-ticket keys from `tickets` on every listener: whoever holds
    /// the ring rotates them ([`TicketKeyRing::set`]), and [`Self::run`] no longer does.
    pub fn start_with_ticket_keys(
        source: CredentialSource,
        listeners: &[ListenerSpec],
        clock: Arc<dyn Clock>,
        tickets: Option<Arc<TicketKeyRing>>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let now = unix(clock.as_ref());
        let (creds, root, _) = source.load(now)?;
        creds.validate(root.as_ref(), now)?;
        let acceptors = listeners
            .iter()
            .map(|l| {
                ListenerAcceptor::new(
                    &l.name,
                    l.policy.clone(),
                    &creds,
                    l.handshake_timeout,
                    l.max_handshakes,
                    l.failures_logged_per_second,
                    tickets.clone(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            sha256 = %creds.fingerprint(),
            not_after = %rfc3339(creds.not_after_unix()),
            source = source.kind(),
            "server certificate loaded"
        );
        let seen = source.digest();
        Ok(Arc::new(ServerTls {
            source,
            current: ArcSwap::from_pointee(creds),
            root: ArcSwap::from_pointee(root),
            listeners: acceptors,
            roll: Mutex::new(RollState { seen }),
            clock,
            tickets,
        }))
    }

    /// The acceptor of the listener called `name`.
    pub fn acceptor(&self, name: &str) -> Option<Arc<ListenerAcceptor>> {
        self.listeners.iter().find(|l| l.name() == name).cloned()
    }

    /// The credentials being served now.
    pub fn current(&self) -> Arc<ServerCredentials> {
        self.current.load_full()
    }

    /// The root the chain verifies to, where known (always, for the built-in CA).
    pub fn root(&self) -> Option<X509> {
        self.root.load().as_ref().clone()
    }

    /// [`Self::root`] as PEM (for clients of this server's own endpoints, e.g. its embedded hubs).
    pub fn root_pem(&self) -> Option<Vec<u8>> {
        self.root().and_then(|r| r.to_pem().ok())
    }

    /// Loads the credentials again (renewing built-in ones that are due) and installs them if
    /// they changed and pass validation. Blocking (key generation, file reads): call it from a
    /// blocking thread. `Ok(true)` when new credentials were installed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let mut state = self.roll.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.seen = self.source.digest();
        let now = unix(self.clock.as_ref());
        let (creds, root, maybe_new) = self.source.load(now)?;
        if !maybe_new {
            return Ok(false);
        }
        creds.validate(root.as_ref(), now)?;
        let current = self.current();
        let same_chain = creds.chain.len() == current.chain.len()
            && creds.chain.iter().zip(&current.chain).all(|(a, b)| a.to_der().ok() == b.to_der().ok());
        if creds.fingerprint() == current.fingerprint() && same_chain && creds.key.public_eq(&current.key) {
            return Ok(false);
        }
        self.install(creds, root)?;
        Ok(true)
    }

    /// The shared session-ticket keys, if the server was started with them.
    pub fn ticket_keys(&self) -> Option<Arc<TicketKeyRing>> {
        self.tickets.clone()
    }

    /// Rebuilds every listener's context with the same credentials: new session-ticket keys
    /// (unless they are shared: then only their ring's owner replaces them). Tickets issued
    /// under the old key fall back to a full handshake, never to a failure.
    pub fn rotate_ticket_keys(&self) -> Result<(), TlsError> {
        if self.tickets.is_some() {
            return Ok(());
        }
        let _guard = self.roll.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let creds = self.current();
        let contexts = self.listeners.iter().map(|l| l.prepare(&creds)).collect::<Result<Vec<_>, _>>()?;
        for (l, ctx) in self.listeners.iter().zip(contexts) {
            l.install(ctx);
        }
        tracing::debug!("session ticket keys rotated");
        Ok(())
    }

    /// Installs credentials that passed [`ServerCredentials::validate`].
    fn install(&self, creds: ServerCredentials, root: Option<X509>) -> Result<(), TlsError> {
        // Build every context before installing any, so listeners never disagree.
        let contexts = self.listeners.iter().map(|l| l.prepare(&creds)).collect::<Result<Vec<_>, _>>()?;
        for (l, ctx) in self.listeners.iter().zip(contexts) {
            l.install(ctx);
        }
        tracing::info!(
            sha256 = %creds.fingerprint(),
            not_after = %rfc3339(creds.not_after_unix()),
            source = self.source.kind(),
            "server certificate rolled"
        );
        self.current.store(Arc::new(creds));
        self.root.store(Arc::new(root));
        Ok(())
    }

    /// Whether the operator files changed since they were last looked at, and have stayed the
    /// same for one more poll (so a chain and key written one after the other are read together).
    fn files_settled(&self, last_poll: &mut Option<Vec<u8>>) -> bool {
        let digest = self.source.digest();
        let seen = self.roll.lock().unwrap_or_else(std::sync::PoisonError::into_inner).seen.clone();
        let settled = digest != seen && digest == *last_poll;
        *last_poll = digest;
        settled
    }

    /// Background duties until `shutdown`: renewal checks (built-in CA) or file polling (files),
    /// and ticket-key rotation. Failures are logged once and the old credentials stay.
    pub async fn run(
        self: Arc<Self>,
        check_interval: Duration,
        ticket_key_lifetime: Duration,
        shutdown: CancellationToken,
    ) {
        let mut check = tokio::time::interval(check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tickets = tokio::time::interval(ticket_key_lifetime);
        tickets.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        tickets.tick().await;
        let mut last_poll = self.source.digest();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = check.tick() => {
                    if matches!(self.source, CredentialSource::Files(_)) && !self.files_settled(&mut last_poll) {
                        continue;
                    }
                    self.clone().reload_logged("scheduled check").await;
                }
                _ = tickets.tick() => {
                    let me = self.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.rotate_ticket_keys()).await {
                        tracing::error!(error = %e, "session ticket key rotation failed; keeping the current key");
                    }
                }
            }
        }
    }

    /// [`reload`](Self::reload) on a blocking thread, with the outcome logged once.
    pub async fn reload_logged(self: Arc<Self>, why: &'static str) {
        match tokio::task::spawn_blocking(move || self.reload()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(trigger = why, error = %DisplayChain(&e), "server certificate reload failed; keeping the current certificate")
            }
            Err(e) => tracing::error!(trigger = why, error = %e, "server certificate reload task failed"),
        }
    }
}

impl CredentialSource {
    fn kind(&self) -> &'static str {
        match self {
            CredentialSource::BuiltIn(_) => "builtin-ca",
            CredentialSource::Files(_) => "files",
        }
    }
}

pub use dps_core::error::DisplayChain;

/// A Unix time as an RFC 3339 UTC timestamp, for log lines.
fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    dps_core::time::format_utc(t)
}
