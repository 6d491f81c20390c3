//! What the domain needs from the outside world, as traits: time, randomness, X.509 parsing.
//! The server plugs in real implementations; tests plug in fixed ones.

use std::time::SystemTime;

use crate::model::X509CertificateInfo;

/// The current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// Cryptographically secure random bytes (keys, ID scopes, etags, operation ids).
pub trait Entropy: Send + Sync + std::fmt::Debug {
    fn fill(&self, buf: &mut [u8]);
}

/// A parsed certificate, for validation and for the `info` the service API returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedCertificate {
    pub info: X509CertificateInfo,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// The certificate as PEM (normalized from PEM or base64 DER input).
    pub pem: String,
}

/// X.509 parsing and signature checks (implemented with OpenSSL's crypto in `dps-attest`).
pub trait X509Inspector: Send + Sync + std::fmt::Debug {
    /// Parses a PEM certificate, or base64 DER without armour.
    fn parse(&self, pem_or_base64: &str) -> Result<ParsedCertificate, String>;
    /// Whether `leaf` carries a valid signature by `issuer`'s key.
    fn is_signed_by(&self, leaf_pem: &str, issuer_pem: &str) -> bool;
}

/// Random helpers over an [`Entropy`].
pub(crate) fn random_hex(e: &dyn Entropy, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    e.fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new etag: a quoted opaque string, as DPS sends them.
pub(crate) fn new_etag(e: &dyn Entropy) -> String {
    format!("\"{}\"", random_hex(e, 16))
}

/// A new base64 key of `bytes` random bytes (DPS symmetric keys are 64 bytes).
pub(crate) fn new_key(e: &dyn Entropy, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    e.fill(&mut buf);
    crate::base64::encode(&buf)
}

/// Device-credential cryptography (implemented in `dps-attest`).
pub trait DeviceCrypto: Send + Sync + std::fmt::Debug {
    /// Checks a device SAS token's shape, expiry (with tolerated skew) and resource
    /// (`{scope}/registrations/{id}`, case-insensitive); then whether any of `keys` signed it.
    /// `Err` names what is wrong with the token itself (never the token or a key).
    fn verify_sas(&self, token: &str, resource: &str, keys: &[String], now: SystemTime) -> Result<bool, String>;
    /// The device key of `registration_id` in a group with key `group_key` (§4.2).
    fn derive_key(&self, group_key: &str, registration_id: &str) -> Option<String>;
    /// Facts about the leaf of a presented chain (DER): subject CN, validity at `now`, info.
    /// `Err` for a certificate that cannot be parsed or is not usable for TLS client
    /// authentication (`docs/x509.md`, "Device certificates").
    fn leaf(&self, der: &[u8], now: SystemTime) -> Result<LeafFacts, String>;
    /// If the presented chain (leaf first, DER) verifies up to `anchor_pem` as the only trust
    /// anchor, at `now` and by the rules of `docs/x509.md` ("Chains for enrollment groups"): the
    /// position in the chain of the certificate the anchor issued (0 = the leaf itself).
    fn chain_depth(&self, chain: &[Vec<u8>], anchor_pem: &str, now: SystemTime) -> Option<usize>;
}

/// What attestation needs to know about a device certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafFacts {
    pub common_name: String,
    pub sha256_thumbprint: String,
    pub sha1_thumbprint: String,
    pub info: X509CertificateInfo,
    /// Within notBefore..notAfter at the time asked.
    pub time_valid: bool,
}

/// Calls a custom allocation webhook (dps-protocol.md §6.3): POST `body` as JSON to `url`,
/// return the JSON answer of a 2xx. `Err` says exactly what the webhook did ("timed out after
/// 10 s", "answered HTTP 500: …", "is not reachable: connection refused", "answered invalid
/// JSON: …") and never contains the URL's query (it may hold a function key).
#[async_trait::async_trait]
pub trait AllocationWebhook: Send + Sync + std::fmt::Debug {
    async fn call(&self, url: &str, body: &serde_json::Value) -> Result<serde_json::Value, String>;
}

/// The webhook client of a server with none configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoWebhook;

#[async_trait::async_trait]
impl AllocationWebhook for NoWebhook {
    async fn call(&self, _url: &str, _body: &serde_json::Value) -> Result<serde_json::Value, String> {
        Err("custom allocation webhooks are not enabled on this server".into())
    }
}
