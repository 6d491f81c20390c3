use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dps_core::log_limit::LogLimit;
use dps_core::tls::{Decoded, HandshakeFacts, Negotiated, Offered, PeerCertificates, TlsVersion};
use openssl::nid::Nid;
use openssl::ssl::{Ssl, SslContext, SslRef, SslVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_openssl::SslStream;

use crate::context::{build_context_with, offered_index, TlsPolicy};
use crate::credentials::ServerCredentials;
use crate::error::TlsError;
use crate::ticket_keys::TicketKeyRing;

/// The TLS side of one listener: its policy, its current OpenSSL context (swapped atomically on
/// a credential roll or ticket-key rotation) and its handshake limits.
#[derive(Debug)]
pub struct ListenerAcceptor {
    name: String,
    policy: TlsPolicy,
    context: ArcSwap<SslContext>,
    /// Shared session-ticket keys, when the server has them (else OpenSSL's own, per context).
    tickets: Option<Arc<TicketKeyRing>>,
    handshake_timeout: Duration,
    handshakes: Semaphore,
    /// Failed handshakes are logged at most `failures_logged_per_second` (`[limits]
    /// log_failed_handshakes_per_second`); the rest are counted.
    failures: std::sync::Mutex<LogLimit>,
    /// The handshake facts connections keep, one copy per distinct value ([`Interned`]).
    facts: Interned,
}

/// The handshake facts of this listener's connections, kept once per distinct value: the
/// devices of a fleet send the same ClientHello and settle on the same suite, so their
/// connections share one `Arc` instead of holding a copy each for their whole life (about
/// 0.4 KiB per idle connection, docs/performance.md "Idle connections"). The set keeps what it
/// holds after the connections close, so it is bounded twice: only facts of at most
/// [`Interned::MAX_WEIGHT`] bytes are kept (a client's offer is its own to pad; a larger one
/// gets an `Arc` of its own, freed with its connection), and at [`Interned::MAX`] values the set
/// starts over (connections keep what they hold). At most 256 × 2 KiB per listener.
#[derive(Debug, Default)]
struct Interned(std::sync::Mutex<std::collections::HashSet<Arc<HandshakeFacts>>>);

impl Interned {
    const MAX: usize = 256;
    const MAX_WEIGHT: usize = 2048;

    fn share(&self, facts: HandshakeFacts) -> Arc<HandshakeFacts> {
        if weight(&facts) > Self::MAX_WEIGHT {
            return Arc::new(facts);
        }
        let mut set = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(kept) = set.get(&facts) {
            return kept.clone();
        }
        if set.len() >= Self::MAX {
            set.clear();
        }
        let facts = Arc::new(facts);
        set.insert(facts.clone());
        facts
    }
}

/// About how many bytes `facts` hold on the heap (its lists and strings, with each string's
/// own slot), for [`Interned`]'s bound.
fn weight(facts: &HandshakeFacts) -> usize {
    let strings = |v: &[String]| v.iter().map(|s| s.len() + std::mem::size_of::<String>()).sum::<usize>();
    let offered = facts.offered.as_ref().map_or(0, |o| {
        2 * (o.cipher_suites.len()
            + o.groups.len()
            + o.signature_algorithms.len()
            + o.supported_versions.as_ref().map_or(0, Vec::len))
            + o.sni.as_ref().map_or(0, String::len)
            + strings(&o.alpn)
    });
    let n = &facts.negotiated;
    offered + n.group.as_ref().map_or(0, String::len) + n.alpn.as_ref().map_or(0, String::len)
}

/// A finished handshake.
#[derive(Debug)]
pub struct TlsConnection<S> {
    pub stream: SslStream<S>,
    /// Shared with the listener's other connections that had the same (see `Interned`).
    pub facts: Arc<HandshakeFacts>,
    /// Empty when the client sent no certificate. Possession proved, trust NOT decided.
    pub peer_certificates: PeerCertificates,
}

/// Why a handshake did not finish. Costs only this connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("handshake failed: {0}")]
    Tls(String),
    #[error("cannot set up the connection")]
    Setup(#[source] openssl::error::ErrorStack),
}

impl ListenerAcceptor {
    pub(crate) fn new(
        name: &str,
        policy: TlsPolicy,
        creds: &ServerCredentials,
        handshake_timeout: Duration,
        max_handshakes: usize,
        failures_logged_per_second: u32,
        tickets: Option<Arc<TicketKeyRing>>,
    ) -> Result<Self, TlsError> {
        let context = build_context_with(&policy, creds, tickets.as_ref())?;
        Ok(ListenerAcceptor {
            name: name.to_owned(),
            policy,
            context: ArcSwap::from_pointee(context),
            tickets,
            handshake_timeout,
            handshakes: Semaphore::new(max_handshakes.max(1)),
            failures: std::sync::Mutex::new(LogLimit::new(failures_logged_per_second, Duration::from_secs(1))),
            facts: Interned::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> &TlsPolicy {
        &self.policy
    }

    /// Builds a context for new credentials without installing it.
    pub(crate) fn prepare(&self, creds: &ServerCredentials) -> Result<SslContext, TlsError> {
        build_context_with(&self.policy, creds, self.tickets.as_ref())
    }

    /// Installs a prepared context. Handshakes already started keep the context they began with.
    pub(crate) fn install(&self, context: SslContext) {
        self.context.store(Arc::new(context));
    }

    /// Runs the server handshake on `io` within the handshake timeout, and logs one structured
    /// line with the outcome and the client's offer. Waiting for a handshake slot is bounded by
    /// the same duration but does not count against the handshake itself, so a queue of slow
    /// clients does not eat a good client's time. A failure costs only this connection, and
    /// `on_failure` sees it before the connection is closed (so a peer that sees the close finds
    /// the failure already counted).
    pub async fn accept<S>(
        &self,
        io: S,
        peer: SocketAddr,
        on_failure: impl FnOnce(&HandshakeFailure),
    ) -> Result<TlsConnection<S>, HandshakeFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let context = self.context.load_full();
        let mut stream = match Ssl::new(&context).and_then(|ssl| SslStream::new(ssl, io)) {
            Ok(stream) => stream,
            Err(e) => {
                let e = HandshakeFailure::Setup(e);
                on_failure(&e);
                return Err(e);
            }
        };
        // `None`: no slot, or no handshake, within the timeout.
        let outcome = match tokio::time::timeout(self.handshake_timeout, self.handshakes.acquire()).await {
            Err(_) => None,
            Ok(_slot) => tokio::time::timeout(self.handshake_timeout, Pin::new(&mut stream).accept()).await.ok(),
        };
        let offered = stream
            .ssl()
            .ex_data(offered_index())
            .and_then(|slot| slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take())
            .map(|offered| *offered);
        let result = match outcome {
            None => Err(HandshakeFailure::Timeout(self.handshake_timeout)),
            Some(Err(e)) => Err(HandshakeFailure::Tls(reason(&e))),
            Some(Ok(())) => Ok(()),
        };
        match result {
            Ok(()) => {
                let negotiated = negotiated(stream.ssl());
                let peer_certificates = peer_certificates(stream.ssl());
                let facts = HandshakeFacts { offered, negotiated };
                log_success(&self.name, peer, &facts);
                Ok(TlsConnection { stream, facts: self.facts.share(facts), peer_certificates })
            }
            Err(e) => {
                let budget = self.failures.lock().map(|mut l| l.event(std::time::Instant::now()));
                if let Ok(Some(unlogged)) = budget {
                    log_failure(&self.name, peer, offered.as_ref(), &e, unlogged);
                }
                on_failure(&e);
                drop(stream);
                Err(e)
            }
        }
    }
}

fn reason(e: &openssl::ssl::Error) -> String {
    if let Some(stack) = e.ssl_error() {
        if let Some(first) = stack.errors().first() {
            return first.reason().unwrap_or("unknown TLS error").to_owned();
        }
    }
    match e.io_error() {
        Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "connection closed during handshake".into(),
        Some(io) => io.to_string(),
        None if e.code() == openssl::ssl::ErrorCode::SYSCALL || e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => {
            "connection closed during handshake".into()
        }
        None => format!("TLS error {:?}", e.code()),
    }
}

fn version(v: Option<SslVersion>) -> TlsVersion {
    match v {
        Some(SslVersion::TLS1_3) => TlsVersion::Tls13,
        Some(SslVersion::TLS1_1) => TlsVersion::Tls11,
        Some(SslVersion::TLS1) => TlsVersion::Tls10,
        Some(SslVersion::SSL3) => TlsVersion::Ssl3,
        _ => TlsVersion::Tls12,
    }
}

fn negotiated(ssl: &SslRef) -> Negotiated {
    let cipher_suite = ssl.current_cipher().map(|c| u16::from_be_bytes(c.protocol_id())).unwrap_or(0);
    let group = crate::ffi::negotiated_group_nid(ssl).map(|nid| match Nid::from_raw(nid) {
        Nid::X9_62_PRIME256V1 => "secp256r1".to_owned(),
        Nid::SECP384R1 => "secp384r1".to_owned(),
        n if n.as_raw() == 1034 => "x25519".to_owned(), // NID_X25519
        other => other.short_name().unwrap_or("unknown").to_owned(),
    });
    Negotiated {
        version: version(ssl.version2()),
        cipher_suite,
        group,
        alpn: ssl.selected_alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        resumed: ssl.session_reused(),
        client_certificate: ssl.peer_certificate().is_some(),
    }
}

/// The client's chain, DER, with the decoded certificates beside it (`Vec<X509>`, the same order),
/// so that attestation need not decode them again (docs/performance.md, "X.509 registrations").
fn peer_certificates(ssl: &SslRef) -> PeerCertificates {
    let Some(leaf) = ssl.peer_certificate() else { return PeerCertificates::default() };
    let (mut ders, mut decoded) = (Vec::new(), Vec::new());
    if let Ok(der) = leaf.to_der() {
        ders.push(der);
        decoded.push(leaf);
    }
    if let Some(chain) = ssl.peer_cert_chain() {
        // On the server side OpenSSL's chain excludes the leaf; skip it anyway if a build includes it.
        for c in chain.iter() {
            if let Ok(der) = c.to_der() {
                if ders.first() != Some(&der) {
                    ders.push(der);
                    decoded.push(c.to_owned());
                }
            }
        }
    }
    PeerCertificates(ders, Decoded(Some(std::sync::Arc::new(decoded))))
}

fn log_success(listener: &str, peer: SocketAddr, f: &HandshakeFacts) {
    let n = &f.negotiated;
    let none = Offered::default();
    let o = f.offered.as_ref().unwrap_or(&none);
    tracing::info!(
        target: "opendps::tls::handshake",
        listener,
        %peer,
        outcome = "ok",
        version = %n.version,
        cipher = %n.cipher_suite_name(),
        group = n.group.as_deref().unwrap_or("-"),
        resumed = n.resumed,
        client_cert = n.client_certificate,
        sni = %bounded(o.sni.as_deref().unwrap_or("-"), 300),
        offered_versions = %Joined(o.version_names().iter(), 300),
        offered_ciphers = %Joined(o.cipher_suite_names(), 3000),
        offered_groups = %Joined(o.group_names(), 1000),
        offered_sigalgs = %Joined(o.signature_algorithm_names(), 1000),
        offered_alpn = %Joined(o.alpn.iter(), 300),
        "tls handshake"
    );
}

fn log_failure(listener: &str, peer: SocketAddr, offered: Option<&Offered>, e: &HandshakeFailure, unlogged: u64) {
    let none = Offered::default();
    let o = offered.unwrap_or(&none);
    tracing::info!(
        target: "opendps::tls::handshake",
        listener,
        %peer,
        outcome = "failed",
        reason = %e,
        failures_not_logged = unlogged,
        client_hello = offered.is_some(),
        sni = %bounded(o.sni.as_deref().unwrap_or("-"), 300),
        offered_versions = %Joined(o.version_names().iter(), 300),
        offered_ciphers = %Joined(o.cipher_suite_names(), 3000),
        offered_groups = %Joined(o.group_names(), 1000),
        offered_sigalgs = %Joined(o.signature_algorithm_names(), 1000),
        "tls handshake"
    );
}

/// Names of what a client offered, joined by commas and bounded to `max` characters (then `…`):
/// the text `bounded(&names.join(","), max)` gives, written straight into the line instead of
/// built first (one handshake line per connection; docs/performance.md, "Registration records").
struct Joined<I>(I, usize);

impl<I> std::fmt::Display for Joined<I>
where
    I: Iterator + Clone,
    I::Item: AsRef<str>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut left = self.1;
        for (i, name) in self.0.clone().enumerate() {
            for piece in [if i == 0 { "" } else { "," }, name.as_ref()] {
                match piece.char_indices().nth(left) {
                    // More than fits: what fits, then the ellipsis, and nothing after.
                    Some((at, _)) => return write!(f, "{}…", piece.get(..at).unwrap_or_default()),
                    None => {
                        f.write_str(piece)?;
                        left -= piece.chars().count();
                    }
                }
            }
        }
        Ok(())
    }
}

/// Client-chosen text in a handshake line, bounded to `max` characters (a ClientHello may list
/// thousands of suites, and an SNI may be 64 KB).
fn bounded(s: &str, max: usize) -> String {
    dps_core::device::excerpt(s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(suite: u16) -> HandshakeFacts {
        HandshakeFacts {
            offered: Some(Offered { legacy_version: 0x0303, cipher_suites: vec![0xC02F, suite], ..Offered::default() }),
            negotiated: Negotiated {
                version: TlsVersion::Tls12,
                cipher_suite: 0xC02F,
                group: Some("secp256r1".into()),
                alpn: None,
                resumed: false,
                client_certificate: false,
            },
        }
    }

    /// Equal facts are one value; different ones are kept apart; and past the bound the set
    /// starts over without changing what anyone holds.
    #[test]
    fn equal_handshake_facts_are_kept_once() {
        let interned = Interned::default();
        let a = interned.share(facts(1));
        let b = interned.share(facts(1));
        assert!(Arc::ptr_eq(&a, &b));
        let c = interned.share(facts(2));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, facts(2));
        for suite in 3..3 + Interned::MAX as u16 {
            assert_eq!(*interned.share(facts(suite)), facts(suite));
        }
        assert!(interned.0.lock().expect("lock").len() <= Interned::MAX);
        let again = interned.share(facts(1));
        assert_eq!(again, a, "the same value, whether or not still the same allocation");
        assert_eq!(*a, facts(1));
    }

    /// A client's offer is its own to pad: a heavy one is never kept by the set, so it is
    /// freed with its connection.
    #[test]
    fn heavy_handshake_facts_are_not_kept() {
        let interned = Interned::default();
        let mut heavy = facts(1);
        if let Some(o) = heavy.offered.as_mut() {
            o.alpn = vec!["x".into(); 200];
        }
        assert!(weight(&heavy) > Interned::MAX_WEIGHT);
        let a = interned.share(heavy.clone());
        let b = interned.share(heavy.clone());
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(*a, heavy);
        assert!(interned.0.lock().expect("lock").is_empty());
        assert!(weight(&facts(1)) <= Interned::MAX_WEIGHT);
    }

    /// The joined names are exactly the text joining them first and bounding that gave.
    #[test]
    fn joined_names_read_as_the_bounded_join() {
        let offered = Offered { cipher_suites: vec![0xC02F, 0xC030, 0x1301, 0xFFFF, 0x002F], ..Offered::default() };
        let names: Vec<String> = offered.cipher_suite_names().map(|n| n.into_owned()).collect();
        let odd: Vec<String> = vec!["".into(), "mqtt".into(), "ünïcödé".into(), "".into(), "h2".into()];
        let total = names.join(",").chars().count();
        for max in (0..=total + 2).chain([3000]) {
            let joined = Joined(offered.cipher_suite_names(), max).to_string();
            assert_eq!(joined, bounded(&names.join(","), max), "max {max}");
            let joined = Joined(odd.iter(), max).to_string();
            assert_eq!(joined, bounded(&odd.join(","), max), "max {max}");
        }
        assert_eq!(Joined(Offered::default().cipher_suite_names(), 10).to_string(), "");
    }
}
