//! The `DeviceCrypto` port: SAS checks and X.509 chain checks for device attestation.
//!
//! Chains are verified by OpenSSL's verifier (`X509_verify_cert`), never walked by hand; the
//! rules are those of `docs/x509.md` ("Device certificates"): the enrollment's CA is the only
//! trust anchor (it may be an intermediate: partial chains are allowed up to it), the device
//! presents every certificate below it, the time is the caller's, the leaf must be usable for TLS
//! client authentication, path lengths and name constraints hold, and no certificate below the
//! anchor is signed with MD5 or SHA-1.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_core::ports::{CertificateError, DeviceCrypto, LeafFacts, SasClaims, SasError};
use dps_core::tls::PeerCertificates;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509PurposeId, X509StoreContext, X509};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::sas::SasToken;
use crate::x509::{chain_issued_by, info_of, load};

/// Device tokens may come from clocks this far ahead or behind.
pub const SAS_SKEW: Duration = Duration::from_secs(300);

/// The most certificates a presented chain may hold (leaf, intermediates, anchor and above).
pub const MAX_CHAIN: usize = 10;

/// OpenSSL's security level for certificate chains (`X509_VERIFY_PARAM_set_auth_level`): at 1,
/// keys of at least 80 bits of security (RSA 1024, EC 160) and signatures of at least 80 bits,
/// which refuses MD5 and SHA-1 signatures (OpenSSL 3 rates them 39 and 63 bits) on every
/// certificate but the trust anchor.
const AUTH_LEVEL: i32 = 1;

/// Why a presented chain is not vouched for by an anchor ([`verify_chain`]). The messages are for
/// logs and operators; devices get one "unauthorized" for every reason (no enumeration of
/// enrollments).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("the device presented no certificate")]
    NoCertificate,
    #[error("the device presented {0} certificates, more than {MAX_CHAIN}")]
    TooLong(usize),
    #[error("certificate {0} of the presented chain is not valid DER X.509")]
    NotDer(usize),
    /// The leaf itself is refused (unreadable, or not for TLS client authentication).
    #[error(transparent)]
    Leaf(#[from] CertificateError),
    #[error("the enrollment's CA certificate cannot be read")]
    Anchor,
    #[error("the chain does not verify at certificate {depth} (0 = the device's): {reason}")]
    Verify { depth: u32, reason: &'static str },
    #[error("OpenSSL failed while verifying the chain")]
    OpenSsl,
}

impl From<openssl::error::ErrorStack> for ChainError {
    fn from(_: openssl::error::ErrorStack) -> Self {
        ChainError::OpenSsl
    }
}

/// OpenSSL-backed device crypto.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpensslDeviceCrypto;

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
}

/// A device (leaf) certificate must be usable for TLS client authentication: when it has an
/// extendedKeyUsage, that includes clientAuth; when it has a keyUsage, that includes
/// digitalSignature (the device signs the handshake). Absent extensions allow everything.
pub fn check_leaf_usage(leaf: &X509Certificate<'_>) -> Result<(), CertificateError> {
    let refuse = CertificateError::NotForClientAuth;
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if !eku.value.client_auth => {
            return Err(refuse("its extendedKeyUsage does not include clientAuth"))
        }
        Ok(_) => {}
        Err(_) => return Err(refuse("its extendedKeyUsage is malformed or repeated")),
    }
    match leaf.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => Err(refuse("its keyUsage does not include digitalSignature")),
        Ok(_) => Ok(()),
        Err(_) => Err(refuse("its keyUsage is malformed or repeated")),
    }
}

/// Facts about a device certificate (DER): its subject CN, validity at `now`, and info. A
/// certificate that is not usable for TLS client authentication ([`check_leaf_usage`]) is refused.
///
/// Read with `x509-parser` alone: a device's leaf has already been decoded by OpenSSL in the
/// TLS handshake, and decoding it again with OpenSSL 3.0 costs about as much as a signature check
/// (docs/performance.md, "X.509 registrations").
pub fn leaf_facts(der: &[u8], now: SystemTime) -> Result<LeafFacts, CertificateError> {
    let (_, parsed) = X509Certificate::from_der(der).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    check_leaf_usage(&parsed)?;
    let info = info_of(der, &parsed);
    let common_name =
        parsed.subject().iter_common_name().next().and_then(|n| n.as_str().ok()).map(str::to_owned).unwrap_or_default();
    let now = unix(now);
    let validity = parsed.validity();
    Ok(LeafFacts {
        common_name,
        sha256_thumbprint: info.sha256_thumbprint.clone(),
        sha1_thumbprint: info.sha1_thumbprint.clone(),
        time_valid: validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp(),
        info,
    })
}

/// Trust anchors (group CAs, keyed by their text as the store keeps it), decoded by OpenSSL once
/// rather than on every registration. The key is the SHA-256 digest of that text, so an entry can
/// never stand for other content. Bounded: at most [`ANCHORS_MAX`] entries of at most
/// [`ANCHOR_MAX_BYTES`] each; when full, it starts again empty.
static ANCHORS: OnceLock<Mutex<HashMap<[u8; 32], X509>>> = OnceLock::new();
const ANCHORS_MAX: usize = 512;
const ANCHOR_MAX_BYTES: usize = 16 * 1024;

fn anchors() -> std::sync::MutexGuard<'static, HashMap<[u8; 32], X509>> {
    ANCHORS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The anchor `text` decoded, or the certificate decoded from the same text before.
fn anchor(text: &str) -> Result<X509, CertificateError> {
    if text.len() > ANCHOR_MAX_BYTES {
        return load(text);
    }
    let key = openssl::sha::sha256(text.as_bytes());
    if let Some(c) = anchors().get(&key) {
        return Ok(c.clone());
    }
    let cert = load(text)?;
    let mut m = anchors();
    if m.len() >= ANCHORS_MAX {
        m.clear();
    }
    m.insert(key, cert.clone());
    Ok(cert)
}

/// Verifies a presented chain (DER, leaf first) against one trust anchor (PEM or base64 DER) at
/// `now`, with OpenSSL's verifier. Returns the position in the presented chain of the
/// certificate the anchor issued (0 = the leaf itself; a self-signed leaf that is the anchor
/// also gives 0).
///
/// What is checked: every signature up to the anchor, which is the only trusted certificate
/// (certificates above it are ignored; missing intermediates are never fetched or assumed);
/// every validity window at `now`, the anchor's included; issuers are CAs within their
/// basicConstraints path length and name constraints; the leaf is usable for TLS client
/// authentication (purpose `sslclient` and [`check_leaf_usage`]); key sizes and signature
/// algorithms meet OpenSSL's security level 1 (no MD5 or SHA-1 signatures below the anchor).
pub fn verify_chain(chain: &[Vec<u8>], anchor_pem: &str, now: SystemTime) -> Result<usize, ChainError> {
    if chain.is_empty() {
        return Err(ChainError::NoCertificate);
    }
    if chain.len() > MAX_CHAIN {
        return Err(ChainError::TooLong(chain.len()));
    }
    let certs: Vec<X509> = chain
        .iter()
        .enumerate()
        .map(|(i, der)| X509::from_der(der).map_err(|_| ChainError::NotDer(i)))
        .collect::<Result<_, _>>()?;
    verify_decoded(&certs, &chain[0], anchor_pem, now)
}

/// [`verify_chain`] of a chain already decoded (`certs`, leaf first; `leaf_der` is `certs[0]`'s
/// DER), as the TLS handshake leaves it.
fn verify_decoded(certs: &[X509], leaf_der: &[u8], anchor_pem: &str, now: SystemTime) -> Result<usize, ChainError> {
    let (leaf, rest) = certs.split_first().ok_or(ChainError::NoCertificate)?;
    if certs.len() > MAX_CHAIN {
        return Err(ChainError::TooLong(certs.len()));
    }
    let (_, parsed) = X509Certificate::from_der(leaf_der).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    check_leaf_usage(&parsed)?;
    let anchor = anchor(anchor_pem).map_err(|_| ChainError::Anchor)?;

    let mut param = X509VerifyParam::new()?;
    param.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
    param.set_time(unix(now) as _);
    param.set_purpose(X509PurposeId::SSL_CLIENT)?;
    param.set_auth_level(AUTH_LEVEL);
    param.set_depth(i32::try_from(MAX_CHAIN).unwrap_or(i32::MAX));
    let mut store = X509StoreBuilder::new()?;
    store.set_param(&param)?;
    store.add_cert(anchor)?;
    let store = store.build();

    let mut untrusted = Stack::new()?;
    for cert in rest {
        untrusted.push(cert.clone())?;
    }
    let mut context = X509StoreContext::new()?;
    let (verified, error, depth, built) = context.init(&store, leaf, &untrusted, |c| {
        let verified = c.verify_cert()?;
        let built = c.chain().map_or(0, |s| s.len());
        Ok((verified, c.error(), c.error_depth(), built))
    })?;
    if !verified {
        return Err(ChainError::Verify { depth, reason: error.error_string() });
    }
    // The verified chain is leaf .. anchor; the certificate the anchor issued is just below it.
    // A chain of one is the leaf trusted as the anchor itself: only a self-signed leaf counts
    // (it issued itself).
    if built < 2 && !chain_issued_by(leaf, leaf) {
        return Err(ChainError::Verify { depth: 0, reason: "the device certificate is the CA itself" });
    }
    Ok(built.saturating_sub(2))
}

impl DeviceCrypto for OpensslDeviceCrypto {
    fn verify_sas(
        &self,
        token: &str,
        resource: &str,
        keys: &[String],
        now: SystemTime,
    ) -> Result<Option<SystemTime>, SasError> {
        let t = SasToken::parse(token)?;
        t.check_expiry(now, SAS_SKEW)?;
        t.check_resource(resource)?;
        // `skn` may be absent, empty or "registration" for devices (docs/protocol.md, "Device SAS tokens").
        if let Some(skn) = t.skn.as_deref().filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("registration")) {
            let shown: String = skn.chars().take(64).collect();
            return Err(SasError::WrongKeyName(shown));
        }
        // Every key is tried, so timing does not tell which one (or whether any) matched.
        let mut ok = false;
        for k in keys {
            ok |= t.signed_with(k);
        }
        Ok(ok.then(|| t.expires().checked_add(SAS_SKEW).unwrap_or(t.expires())))
    }

    fn sas_claims(&self, token: &str, now: SystemTime) -> Result<SasClaims, SasError> {
        let t = SasToken::parse(token)?;
        t.check_expiry(now, SAS_SKEW)?;
        Ok(SasClaims {
            resource: t.resource().ok_or(SasError::Malformed("sr"))?,
            key_name: t.skn.clone(),
            expires: t.expires(),
        })
    }

    fn sas_signed_with(&self, token: &str, key: &str) -> bool {
        SasToken::parse(token).is_ok_and(|t| t.signed_with(key))
    }

    fn derive_key(&self, group_key: &str, registration_id: &str) -> Option<String> {
        crate::derive_device_key(group_key, registration_id)
    }

    fn leaf(&self, der: &[u8], now: SystemTime) -> Result<LeafFacts, CertificateError> {
        leaf_facts(der, now)
    }

    /// Uses the certificates the handshake decoded (`dps-tls` leaves a `Vec<X509>` there) when
    /// they are the same chain, one for one; otherwise decodes the DER.
    fn chain_depth(&self, chain: &PeerCertificates, anchor_pem: &str, now: SystemTime) -> Option<usize> {
        let decoded = chain.1 .0.as_ref().and_then(|d| d.downcast_ref::<Vec<X509>>());
        match (decoded, chain.0.first()) {
            (Some(certs), Some(leaf)) if certs.len() == chain.0.len() => {
                verify_decoded(certs, leaf, anchor_pem, now).ok()
            }
            _ => verify_chain(&chain.0, anchor_pem, now).ok(),
        }
    }
}
