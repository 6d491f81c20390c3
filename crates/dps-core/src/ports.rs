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

/// Why certificate text could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    #[error("the certificate is neither PEM nor base64 (of DER or of the PEM text)")]
    NotEncoded,
    #[error("the PEM does not hold a valid X.509 certificate")]
    BadPem,
    #[error("the base64 data is neither a DER X.509 certificate nor PEM text")]
    BadDer,
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    /// A device certificate whose extendedKeyUsage or keyUsage excludes TLS client
    /// authentication (`docs/x509.md`, "Device certificates"); the text says which.
    #[error("the device certificate is not for TLS client authentication: {0}")]
    NotForClientAuth(&'static str),
}

/// X.509 parsing and signature checks (implemented with OpenSSL's crypto in `dps-attest`).
pub trait X509Inspector: Send + Sync + std::fmt::Debug {
    /// Parses a PEM certificate, base64 DER without armour, or base64 of the PEM text.
    fn parse(&self, pem_or_base64: &str) -> Result<ParsedCertificate, CertificateError>;
    /// Whether `leaf` carries a valid signature by `issuer`'s key.
    fn is_signed_by(&self, leaf_pem: &str, issuer_pem: &str) -> bool;
}

/// Random helpers over an [`Entropy`].
pub(crate) fn random_hex(e: &dyn Entropy, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    e.fill(&mut buf);
    crate::hex::lower(&buf)
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

/// Why a SAS token was refused. The message never contains the token or a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SasError {
    #[error("the Authorization header is not a SharedAccessSignature")]
    NotSas,
    #[error("the SAS token has no {0} field")]
    Missing(&'static str),
    #[error("the SAS token's {0} field is malformed")]
    Malformed(&'static str),
    #[error("the SAS token expired {0} s ago")]
    Expired(u64),
    #[error("the SAS token is for {actual}, not {expected}")]
    WrongResource { expected: String, actual: String },
    #[error("a device SAS token's skn must be \"registration\" or absent, not {0:?}")]
    WrongKeyName(String),
    #[error("the SAS signature does not match")]
    BadSignature,
}

/// A SAS token's fields, for the service API (which resolves the policy by `skn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SasClaims {
    /// The decoded resource (`sr`).
    pub resource: String,
    /// `skn`, if present.
    pub key_name: Option<String>,
    /// When the token expires.
    pub expires: SystemTime,
}

/// Device-credential cryptography (implemented in `dps-attest`).
pub trait DeviceCrypto: Send + Sync + std::fmt::Debug {
    /// Checks a device SAS token's shape, expiry (with tolerated skew) and resource
    /// (`{scope}/registrations/{id}`, case-insensitive); then whether any of `keys` signed it.
    /// `Ok(Some(expiry))` when one did, `Ok(None)` when none did (every key is tried).
    fn verify_sas(
        &self,
        token: &str,
        resource: &str,
        keys: &[String],
        now: SystemTime,
    ) -> Result<Option<SystemTime>, SasError>;
    /// Parses a service SAS token and checks its expiry (with tolerated skew) at `now`.
    fn sas_claims(&self, token: &str, now: SystemTime) -> Result<SasClaims, SasError>;
    /// Whether `token` was signed with base64 key `key` (constant time).
    fn sas_signed_with(&self, token: &str, key: &str) -> bool;
    /// The device key of `registration_id` in a group with key `group_key` (docs/protocol.md,
    /// "Symmetric keys").
    fn derive_key(&self, group_key: &str, registration_id: &str) -> Option<String>;
    /// Facts about the leaf of a presented chain (DER): subject CN, validity at `now`, info.
    /// `Err` for a certificate that cannot be parsed or is not usable for TLS client
    /// authentication (`docs/x509.md`, "Device certificates").
    fn leaf(&self, der: &[u8], now: SystemTime) -> Result<LeafFacts, CertificateError>;
    /// If the presented chain (leaf first, DER) verifies up to `anchor_pem` as the only trust
    /// anchor, at `now` and by the rules of `docs/x509.md` ("Chains for enrollment groups"): the
    /// position in the chain of the certificate the anchor issued (0 = the leaf itself).
    /// The chain comes as the TLS layer handed it over: an adapter may use the certificates the
    /// handshake already decoded ([`crate::tls::PeerCertificates`]).
    fn chain_depth(&self, chain: &crate::tls::PeerCertificates, anchor_pem: &str, now: SystemTime) -> Option<usize>;
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

/// What a custom allocation webhook did instead of answering. `target` is the URL without its
/// query (which may hold a function key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    #[error("custom allocation webhooks are not enabled on this server")]
    Disabled,
    #[error("the webhook URL is not allowed: {0}")]
    NotAllowed(String),
    #[error("{target} is not reachable: {cause}")]
    Unreachable { target: String, cause: String },
    #[error("the webhook did not answer within {}", short_duration(*.after))]
    TimedOut { after: std::time::Duration },
    #[error("{target} answered HTTP {status}: {excerpt}")]
    Status { target: String, status: u16, excerpt: String },
    #[error("{target} answered HTTP {status} with an unusable body ({cause}): {excerpt}")]
    InvalidAnswer { target: String, status: u16, cause: String, excerpt: String },
}

/// `1s`, `1500ms`: a duration as operators write it.
fn short_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Calls a custom allocation webhook (docs/allocation.md): POST `body` as JSON to `url`,
/// return the JSON answer of a 2xx.
#[async_trait::async_trait]
pub trait AllocationWebhook: Send + Sync + std::fmt::Debug {
    async fn call(&self, url: &str, body: &serde_json::Value) -> Result<serde_json::Value, WebhookError>;
}

/// The webhook client of a server with none configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoWebhook;

#[async_trait::async_trait]
impl AllocationWebhook for NoWebhook {
    async fn call(&self, _url: &str, _body: &serde_json::Value) -> Result<serde_json::Value, WebhookError> {
        Err(WebhookError::Disabled)
    }
}

/// Why sealing or opening a secret failed. Never holds secret material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("the node key is too short ({0} characters; at least 32, e.g. `openssl rand -base64 32`)")]
    ShortKey(usize),
    #[error("sealed with another node key (key id {found}, this node's is {ours}): give every node the same key")]
    OtherKey { found: String, ours: String },
    #[error("the sealed value is damaged")]
    Damaged,
    #[error("the cipher failed while {0}")]
    Crypto(&'static str),
}

/// Secrets at rest under the operator's node key: `seal` turns a secret into text safe to
/// store; `open` gives it back. `slot` names where the secret belongs (e.g. `builtin-ca/root`),
/// so a sealed value cannot be presented for another slot. What the open returns is the
/// caller's to keep short-lived.
pub trait SecretSealer: Send + Sync + std::fmt::Debug {
    fn seal(&self, slot: &str, plain: &[u8]) -> Result<String, SealError>;
    fn open(&self, slot: &str, sealed: &str) -> Result<Vec<u8>, SealError>;
}

/// Why a TPM device's keys were refused, or a challenge could not be made. The text is safe to
/// return to the device: it names the problem, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmKeyError {
    /// A key OpenDPS does not accept (ECC, not RSA-2048, malformed); the text says which.
    #[error("{0}")]
    Unsupported(String),
    /// The server could not build the activation blob.
    #[error("the TPM activation could not be built: {0}")]
    Failed(String),
    /// This server has no TPM attestation.
    #[error("TPM attestation is not enabled on this server")]
    Disabled,
}

/// A fresh key issued to one TPM and the activation blob that hands it over.
#[derive(Clone, PartialEq, Eq)]
pub struct TpmChallenge {
    /// The activation blob, base64 (`authenticationKey`; only that TPM can open it).
    pub authentication_key: String,
    /// The issued HMAC key, base64: the device's SAS tokens are signed with it. Secret.
    pub issued_key: String,
}

impl std::fmt::Debug for TpmChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmChallenge").field("issued_key", &"<redacted>").finish_non_exhaustive()
    }
}

/// TPM 2.0 activation, the server's half (docs/tpm.md; implemented with OpenSSL's crypto in
/// `dps-attest`). Keys are base64 `TPM2B_PUBLIC`s as devices and enrollments carry them.
pub trait TpmActivator: Send + Sync + std::fmt::Debug {
    /// Checks an endorsement key: RSA-2048 restricted decryption key, SHA-256, AES-CFB.
    fn check_endorsement_key(&self, ek: &str) -> Result<(), TpmKeyError>;
    /// Checks a storage root key the same way (without the fixedTPM/fixedParent rule).
    fn check_storage_root_key(&self, srk: &str) -> Result<(), TpmKeyError>;
    /// Whether two EKs are the same RSA key (SDK templates differ in their `unique` bytes).
    fn same_endorsement_key(&self, enrolled: &str, presented: &str) -> bool;
    /// Issues a fresh key to the TPM owning `ek`, to be imported under `srk`.
    fn challenge(&self, ek: &str, srk: &str) -> Result<TpmChallenge, TpmKeyError>;
    /// The activation blob (base64) handing `key` (base64) to that TPM: the final registration
    /// result's `tpm.authenticationKey`.
    fn wrap_key(&self, ek: &str, srk: &str, key: &str) -> Result<String, TpmKeyError>;
}

/// The TPM activation of a server without it.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTpm;

impl TpmActivator for NoTpm {
    fn check_endorsement_key(&self, _ek: &str) -> Result<(), TpmKeyError> {
        Err(TpmKeyError::Disabled)
    }
    fn check_storage_root_key(&self, _srk: &str) -> Result<(), TpmKeyError> {
        Err(TpmKeyError::Disabled)
    }
    fn same_endorsement_key(&self, _enrolled: &str, _presented: &str) -> bool {
        false
    }
    fn challenge(&self, _ek: &str, _srk: &str) -> Result<TpmChallenge, TpmKeyError> {
        Err(TpmKeyError::Disabled)
    }
    fn wrap_key(&self, _ek: &str, _srk: &str, _key: &str) -> Result<String, TpmKeyError> {
        Err(TpmKeyError::Disabled)
    }
}

/// The credential a device identity carries in its hub (docs/hub.md, "What DPS writes into the assigned hub").
#[derive(Clone, PartialEq, Eq)]
pub enum HubDeviceAuth {
    /// `sas`: the device's own symmetric keys (group-derived for group enrollments).
    Sas { primary_key: String, secondary_key: String },
    /// `selfSigned`: thumbprints of the certificate the device presented.
    SelfSigned { primary_thumbprint: String, secondary_thumbprint: Option<String> },
    /// `sas` with keys the hub generates (a device whose key DPS does not hold).
    Generated,
}

impl std::fmt::Debug for HubDeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubDeviceAuth::Sas { .. } => f.write_str("Sas { .. }"),
            HubDeviceAuth::SelfSigned { primary_thumbprint, .. } => {
                f.debug_struct("SelfSigned").field("primary_thumbprint", primary_thumbprint).finish_non_exhaustive()
            }
            HubDeviceAuth::Generated => f.write_str("Generated"),
        }
    }
}

/// A device identity as DPS writes it into the assigned hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubDeviceIdentity {
    pub device_id: String,
    pub auth: HubDeviceAuth,
    pub iot_edge: bool,
}

/// What a hub's registry did instead of doing what was asked. Never carries a key or token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubCallError {
    #[error("{host} is not reachable: {cause}")]
    Unreachable { host: String, cause: String },
    #[error("{host} did not answer within {}", short_duration(*.after))]
    TimedOut { host: String, after: std::time::Duration },
    #[error("{host} answered HTTP {status}: {message}")]
    Status { host: String, status: u16, message: String },
}

/// The IoT hub registry client (docs/hub.md): what registration writes into the assigned hub,
/// authenticated with the linked hub's connection string. Implemented over HTTPS in
/// `dps-server` (`hub_client.rs`).
#[async_trait::async_trait]
pub trait HubRegistry: Send + Sync + std::fmt::Debug {
    /// Whether registration writes devices into hubs at all (`false`: it only records the
    /// assignment, the server's `[hub_registry] register_devices = false`).
    fn enabled(&self) -> bool {
        true
    }
    /// Creates the identity, or updates it (keeping its twin) when it exists.
    async fn put_device(
        &self,
        hub: &crate::model::ConnectionString,
        identity: &HubDeviceIdentity,
    ) -> Result<(), HubCallError>;
    /// The device's twin, `None` if the hub has no such device.
    async fn twin(
        &self,
        hub: &crate::model::ConnectionString,
        device_id: &str,
    ) -> Result<Option<serde_json::Value>, HubCallError>;
    /// Replaces the twin's tags and desired properties with `twin`'s.
    async fn replace_twin(
        &self,
        hub: &crate::model::ConnectionString,
        device_id: &str,
        twin: &serde_json::Value,
    ) -> Result<(), HubCallError>;
}

/// The registry client of a server that does not write devices into hubs.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHubRegistry;

#[async_trait::async_trait]
impl HubRegistry for NoHubRegistry {
    fn enabled(&self) -> bool {
        false
    }
    async fn put_device(
        &self,
        _hub: &crate::model::ConnectionString,
        _identity: &HubDeviceIdentity,
    ) -> Result<(), HubCallError> {
        Ok(())
    }
    async fn twin(
        &self,
        _hub: &crate::model::ConnectionString,
        _device_id: &str,
    ) -> Result<Option<serde_json::Value>, HubCallError> {
        Ok(None)
    }
    async fn replace_twin(
        &self,
        _hub: &crate::model::ConnectionString,
        _device_id: &str,
        _twin: &serde_json::Value,
    ) -> Result<(), HubCallError> {
        Ok(())
    }
}
