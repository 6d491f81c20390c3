use std::sync::{Arc, OnceLock};

use dps_core::tls::{Group, Offered, ProfileName, TlsVersion, TLS13_SUITES};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ClientHelloResponse, Ssl, SslAlert, SslContext, SslContextBuilder, SslMethod, SslOptions, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};

use crate::client_hello;
use crate::credentials::ServerCredentials;
use crate::error::TlsError;
use crate::ticket_keys::TicketKeyRing;

/// Everything that decides how one listener does TLS. Pure data: equal policies build
/// equivalent contexts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    pub profile: ProfileName,
    /// Offer TLS 1.3 as well as 1.2. TLS 1.0/1.1 and SSL can never be enabled.
    pub tls13: bool,
    /// ECDHE groups, in server preference.
    pub groups: Vec<Group>,
    /// Send a CertificateRequest (optional, empty CA list) so X.509 devices can authenticate.
    pub request_client_cert: bool,
    pub session_tickets: bool,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            profile: ProfileName::default(),
            tls13: false,
            groups: Group::DEFAULT.to_vec(),
            request_client_cert: true,
            session_tickets: true,
        }
    }
}

impl TlsPolicy {
    /// The OpenSSL TLS 1.3 suite string (server preference).
    fn tls13_suites() -> String {
        TLS13_SUITES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(":")
    }

    fn groups_list(&self) -> String {
        self.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(":")
    }
}

/// Where the ClientHello callback leaves the client's offer on each `Ssl`, for the accept path
/// to take out once the handshake is done (so that an idle connection does not keep a second
/// copy of it in OpenSSL for its whole life). Boxed: OpenSSL keeps the slot until the connection
/// ends, and an empty slot is then a few bytes, not the size of an offer.
pub(crate) type OfferSlot = std::sync::Mutex<Option<Box<Offered>>>;

pub(crate) fn offered_index() -> Index<Ssl, OfferSlot> {
    static INDEX: OnceLock<Index<Ssl, OfferSlot>> = OnceLock::new();
    *INDEX.get_or_init(|| {
        #[allow(clippy::expect_used)]
        Ssl::new_ex_index().expect("OpenSSL could not allocate an ex_data index")
    })
}

/// Where a context built with shared ticket keys keeps their ring (read by the ticket-key
/// callback, `ffi::install_ticket_key_callback`).
pub(crate) fn ticket_ring_index() -> Index<SslContext, Arc<TicketKeyRing>> {
    static INDEX: OnceLock<Index<SslContext, Arc<TicketKeyRing>>> = OnceLock::new();
    *INDEX.get_or_init(|| {
        #[allow(clippy::expect_used)]
        SslContext::new_ex_index().expect("OpenSSL could not allocate an ex_data index")
    })
}

/// Builds the OpenSSL server context for `policy` presenting `creds`. This is the only function
/// that sets OpenSSL options; a fresh context also means fresh session-ticket keys.
pub fn build_context(policy: &TlsPolicy, creds: &ServerCredentials) -> Result<SslContext, TlsError> {
    build_context_with(policy, creds, None)
}

/// [`build_context`], with the session-ticket keys taken from `tickets` when given (nodes that
/// share a store share them, so each resumes the others' sessions) instead of OpenSSL's own
/// per-context random key.
pub(crate) fn build_context_with(
    policy: &TlsPolicy,
    creds: &ServerCredentials,
    tickets: Option<&Arc<TicketKeyRing>>,
) -> Result<SslContext, TlsError> {
    let _ = offered_index();
    let mut b = SslContextBuilder::new(SslMethod::tls_server()).map_err(TlsError::openssl("creating a context"))?;

    // Versions: the floor is TLS 1.2, always; SSLv3/TLS 1.0/1.1 get a protocol_version alert.
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(TlsError::openssl("minimum version"))?;
    let max = if policy.tls13 { SslVersion::TLS1_3 } else { SslVersion::TLS1_2 };
    b.set_max_proto_version(Some(max)).map_err(TlsError::openssl("maximum version"))?;

    // Suites: exactly the profile's, in its order, server preference. The cipher string pins
    // @SECLEVEL so the distribution's openssl.cnf cannot drop a legacy suite.
    b.set_security_level(1);
    b.set_cipher_list(&policy.profile.profile().openssl_cipher_list()).map_err(TlsError::openssl("cipher list"))?;
    b.set_ciphersuites(&TlsPolicy::tls13_suites()).map_err(TlsError::openssl("TLS 1.3 suites"))?;
    b.set_groups_list(&policy.groups_list()).map_err(TlsError::openssl("groups"))?;

    let mut options = SslOptions::CIPHER_SERVER_PREFERENCE
        | SslOptions::NO_COMPRESSION
        | SslOptions::NO_RENEGOTIATION
        | SslOptions::NO_SSLV2
        | SslOptions::NO_SSLV3
        | SslOptions::NO_TLSV1
        | SslOptions::NO_TLSV1_1;
    if !policy.tls13 {
        options |= SslOptions::NO_TLSV1_3;
    }
    if !policy.session_tickets {
        options |= SslOptions::NO_TICKET;
    }
    b.clear_options(SslOptions::all());
    b.set_options(options);
    // Idle connections (MQTT devices waiting) keep no 16 KiB read/write buffers: OpenSSL frees
    // them between records. Measured: 44.6 → 30.0 KiB per idle MQTT-TLS connection, no throughput
    // cost (bench/results/2026-11-29-idle.md).
    b.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
    // One read takes every record the socket holds (the client's Finished flight is three), not
    // a header and then a body per record.
    b.set_read_ahead(true);
    // No server-side session cache, tickets or not: a ticket carries its session itself, and
    // OpenSSL's internal cache would keep every TLS 1.2 full handshake's session (client
    // certificate included) up to 20 480 of them, so the server's memory climbed with every
    // registration (bench/results/2026-12-01-session-cache.md). Session-ID resumption is
    // therefore not offered; ticket resumption is.
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    if !policy.session_tickets {
        b.set_num_tickets(0).map_err(TlsError::openssl("ticket count"))?;
    } else if let Some(ring) = tickets {
        b.set_ex_data(ticket_ring_index(), ring.clone());
        crate::ffi::install_ticket_key_callback(&mut b).map_err(TlsError::openssl("ticket key callback"))?;
    }
    // Required by OpenSSL to resume sessions when client certificates may be requested.
    b.set_session_id_context(b"opendps").map_err(TlsError::openssl("session id context"))?;

    if policy.request_client_cert {
        accept_any_chain(&mut b);
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }

    b.set_client_hello_callback(|ssl, alert| {
        let offered = client_hello::capture(ssl);
        // A client whose best version is below TLS 1.2 (SSLv3, TLS 1.0/1.1) gets the
        // protocol_version alert the policy names; left alone, OpenSSL answers an SSLv3 hello
        // with handshake_failure.
        let modern = offered.offers_version(TlsVersion::Tls12) || offered.offers_version(TlsVersion::Tls13);
        ssl.set_ex_data(offered_index(), std::sync::Mutex::new(Some(Box::new(offered))));
        if modern {
            Ok(ClientHelloResponse::SUCCESS)
        } else {
            *alert = SslAlert::PROTOCOL_VERSION;
            Err(ErrorStack::get())
        }
    });

    b.set_certificate(&creds.leaf).map_err(TlsError::openssl("server certificate"))?;
    for cert in &creds.chain {
        b.add_extra_chain_cert(cert.clone()).map_err(TlsError::openssl("certificate chain"))?;
    }
    b.set_private_key(&creds.key).map_err(TlsError::openssl("server key"))?;
    b.check_private_key().map_err(TlsError::openssl("server key does not match the certificate"))?;
    Ok(b.build())
}

/// SECURITY-CRITICAL (docs/tls.md, "Mutual TLS"). The server *requests* a client certificate and does not
/// require one (no FAIL_IF_NO_PEER_CERT): symmetric-key and TPM devices send none. The
/// CertificateRequest carries an empty CA list (no client CA list is ever set), because trust
/// anchors are per enrollment, not per server.
///
/// OpenSSL's chain verification is replaced by a callback that accepts every chain as sent:
/// self-signed, unknown issuer, expired (`ffi::accept_client_chain_unverified`). That does NOT
/// skip authentication of possession: OpenSSL still checks the client's CertificateVerify
/// signature with the leaf's public key, and fails the handshake if it does not verify. What is
/// deliberately skipped is *trust*, which only the application can decide against an enrollment
/// (individual: the enrolled certificate; group: a chain to the group's verified CA), and which
/// checks each signature of the chain itself; OpenSSL checking them too would only double the
/// work (docs/performance.md, "Which OpenSSL"). Nothing downstream may treat "the handshake
/// succeeded with a client certificate" as "this device is trusted". Tests:
/// `dps-server/tests/tls_matrix.rs` (`untrusted_client_chain_is_accepted_and_handed_over`).
fn accept_any_chain(b: &mut SslContextBuilder) {
    b.set_verify(SslVerifyMode::PEER);
    crate::ffi::accept_client_chain_unverified(b);
}
