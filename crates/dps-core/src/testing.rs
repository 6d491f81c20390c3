//! Test doubles for the domain's ports, so the domain can be tested without sockets, files or
//! OpenSSL: a clock that moves only when told, deterministic entropy, and a stand-in for the
//! credential cryptography whose "signatures" and "certificates" are readable text. The real
//! implementations (`dps-attest`) are tested on their own and end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::device::{ConnectionFacts, Transport};
use crate::model::X509CertificateInfo;
use crate::ports::{
    CertificateError, Clock, DeviceCrypto, Entropy, LeafFacts, ParsedCertificate, SasClaims, SasError, TpmActivator,
    TpmChallenge, TpmKeyError, X509Inspector,
};
use crate::service::Services;
use crate::store::memory::MemoryStore;
use crate::tls::{HandshakeFacts, Negotiated, PeerCertificates, TlsVersion};

/// A clock that stands still until moved.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock(Mutex::new(start))
    }

    /// 2026-12-01T00:00:00Z.
    pub fn fixed() -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(1_796_083_200))
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

/// Entropy from a counter: different every call, the same in every run.
#[derive(Debug, Default)]
pub struct CountingEntropy(AtomicU64);

impl Entropy for CountingEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut n = self.0.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in buf.iter_mut() {
            n = n.rotate_left(8) ^ 0xA5;
            *b = (n & 0xFF) as u8;
        }
    }
}

/// Credential "cryptography" in plain text:
/// - a SAS token is `SharedAccessSignature sr={resource}&sig={key}&se={unix}[&skn={name}]`, and
///   is "signed with" the key its `sig` names;
/// - a group-derived key is `{group key}/{registration id}`;
/// - a certificate is the text `cn={cn};id={thumbprint}[;issuer={thumbprint}][;ca][;expired]`,
///   and a chain leads to an anchor when each certificate's `issuer` is the next one's `id`.
#[derive(Debug, Default)]
pub struct TextCrypto {
    /// How many certificates `leaf` parsed (to see that a connection parses its chain once).
    pub leaf_calls: AtomicUsize,
    /// How many times a SAS token was checked against a key.
    pub sas_checks: AtomicUsize,
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split(';').find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

fn flag(text: &str, name: &str) -> bool {
    text.split(';').any(|kv| kv == name)
}

struct TextToken {
    sr: String,
    sig: String,
    se: u64,
    skn: Option<String>,
}

fn parse_token(token: &str) -> Result<TextToken, SasError> {
    let body = token.strip_prefix("SharedAccessSignature ").ok_or(SasError::NotSas)?;
    let get = |k: &str| body.split('&').find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')));
    Ok(TextToken {
        sr: get("sr").ok_or(SasError::Missing("sr"))?.to_owned(),
        sig: get("sig").ok_or(SasError::Missing("sig"))?.to_owned(),
        se: get("se").ok_or(SasError::Missing("se"))?.parse().map_err(|_| SasError::Malformed("se"))?,
        skn: get("skn").map(str::to_owned),
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A device SAS token in `TextCrypto`'s form.
pub fn token(resource: &str, key: &str, expiry: SystemTime) -> String {
    format!("SharedAccessSignature sr={resource}&sig={key}&se={}&skn=registration", unix(expiry))
}

/// A certificate in `TextCrypto`'s form, as DER bytes.
pub fn cert(cn: &str, id: &str, issuer: Option<&str>) -> Vec<u8> {
    let mut t = format!("cn={cn};id={id}");
    if let Some(i) = issuer {
        t.push_str(&format!(";issuer={i}"));
    }
    t.into_bytes()
}

impl DeviceCrypto for TextCrypto {
    fn verify_sas(
        &self,
        token: &str,
        resource: &str,
        keys: &[String],
        now: SystemTime,
    ) -> Result<Option<SystemTime>, SasError> {
        let t = parse_token(token)?;
        if t.se < unix(now) {
            return Err(SasError::Expired(unix(now) - t.se));
        }
        if !t.sr.eq_ignore_ascii_case(resource) {
            return Err(SasError::WrongResource { expected: resource.into(), actual: t.sr });
        }
        Ok(keys.contains(&t.sig).then(|| UNIX_EPOCH + Duration::from_secs(t.se)))
    }

    fn sas_claims(&self, token: &str, now: SystemTime) -> Result<SasClaims, SasError> {
        let t = parse_token(token)?;
        if t.se < unix(now) {
            return Err(SasError::Expired(unix(now) - t.se));
        }
        Ok(SasClaims { resource: t.sr, key_name: t.skn, expires: UNIX_EPOCH + Duration::from_secs(t.se) })
    }

    fn sas_signed_with(&self, token: &str, key: &str) -> bool {
        self.sas_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        parse_token(token).is_ok_and(|t| t.sig == key)
    }

    fn derive_key(&self, group_key: &str, registration_id: &str) -> Option<String> {
        Some(format!("{group_key}/{registration_id}"))
    }

    fn leaf(&self, der: &[u8], _now: SystemTime) -> Result<LeafFacts, CertificateError> {
        self.leaf_calls.fetch_add(1, Ordering::Relaxed);
        let text = std::str::from_utf8(der).map_err(|_| CertificateError::BadDer)?;
        let id = field(text, "id").ok_or(CertificateError::BadDer)?;
        Ok(LeafFacts {
            common_name: field(text, "cn").unwrap_or_default().to_owned(),
            sha256_thumbprint: id.to_owned(),
            sha1_thumbprint: id.to_owned(),
            info: info(text),
            time_valid: !flag(text, "expired"),
        })
    }

    fn chain_depth(&self, chain: &PeerCertificates, anchor_pem: &str, _now: SystemTime) -> Option<usize> {
        let anchor = field(anchor_pem, "id")?;
        let texts: Vec<&str> = chain.0.iter().map(|d| std::str::from_utf8(d).ok()).collect::<Option<_>>()?;
        for (i, t) in texts.iter().enumerate() {
            if field(t, "issuer") == Some(anchor) {
                // Every certificate below must be issued by the next one up.
                let linked = (0..i).all(|k| field(texts[k], "issuer") == field(texts[k + 1], "id"));
                return linked.then_some(i);
            }
        }
        None
    }
}

fn info(text: &str) -> X509CertificateInfo {
    let id = field(text, "id").unwrap_or_default();
    X509CertificateInfo {
        subject_name: format!("CN={}", field(text, "cn").unwrap_or_default()),
        sha1_thumbprint: id.into(),
        sha256_thumbprint: id.into(),
        issuer_name: format!("CN={}", field(text, "issuer").unwrap_or(id)),
        not_before_utc: "2026-01-01T00:00:00.0000000Z".into(),
        not_after_utc: "2027-01-01T00:00:00.0000000Z".into(),
        serial_number: id.into(),
        version: 3,
    }
}

impl X509Inspector for TextCrypto {
    fn parse(&self, text: &str) -> Result<ParsedCertificate, CertificateError> {
        field(text, "id").ok_or(CertificateError::NotEncoded)?;
        Ok(ParsedCertificate { info: info(text), is_ca: flag(text, "ca"), pem: text.to_owned() })
    }

    fn is_signed_by(&self, leaf: &str, issuer: &str) -> bool {
        field(leaf, "issuer").is_some_and(|i| Some(i) == field(issuer, "id"))
    }
}

/// TPM activation in plain text. A key is base64 of `rsa2048:{id}` (`ecc:{id}` and `rsa3072:{id}`
/// are refused as the real checks refuse them); two EKs are the same key when their ids are. The
/// blob is base64 of `ek={ek id};srk={srk id};key={key}`, and "activating" it ([`TextTpm::open`])
/// needs the same EK and SRK. Issued keys count up: `tpm-key-1`, `tpm-key-2`, …
#[derive(Debug, Default)]
pub struct TextTpm {
    issued: AtomicUsize,
}

/// A TPM key in `TextTpm`'s form.
pub fn tpm_key(kind: &str, id: &str) -> String {
    crate::base64::encode(format!("{kind}:{id}").as_bytes())
}

fn tpm_id(b64: &str, role: &str) -> Result<String, TpmKeyError> {
    let text = crate::base64::decode(b64)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| TpmKeyError::Unsupported(format!("the {role} is not valid base64")))?;
    match text.split_once(':') {
        Some(("rsa2048", id)) => Ok(id.to_owned()),
        Some(("ecc", _)) => Err(TpmKeyError::Unsupported(format!(
            "the {role} is an ECC key; OpenDPS accepts only RSA-2048 endorsement and storage root keys"
        ))),
        Some((kind, _)) => {
            Err(TpmKeyError::Unsupported(format!("the {role} is {kind}; OpenDPS accepts only RSA-2048")))
        }
        None => Err(TpmKeyError::Unsupported(format!("the {role} is truncated"))),
    }
}

impl TextTpm {
    /// What the TPM with keys `ek`/`srk` finds in `blob`: the key, or `None` if it is not theirs.
    pub fn open(blob: &str, ek: &str, srk: &str) -> Option<String> {
        let text = String::from_utf8(crate::base64::decode(blob)?).ok()?;
        let (ek, srk) = (tpm_id(ek, "ek").ok()?, tpm_id(srk, "srk").ok()?);
        (field(&text, "ek") == Some(ek.as_str()) && field(&text, "srk") == Some(srk.as_str()))
            .then(|| field(&text, "key").map(str::to_owned))
            .flatten()
    }

    /// How many keys were issued.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }
}

impl TpmActivator for TextTpm {
    fn check_endorsement_key(&self, ek: &str) -> Result<(), TpmKeyError> {
        tpm_id(ek, "endorsement key").map(drop)
    }
    fn check_storage_root_key(&self, srk: &str) -> Result<(), TpmKeyError> {
        tpm_id(srk, "storage root key").map(drop)
    }
    fn same_endorsement_key(&self, enrolled: &str, presented: &str) -> bool {
        matches!((tpm_id(enrolled, "ek"), tpm_id(presented, "ek")), (Ok(a), Ok(b)) if a == b)
    }
    fn challenge(&self, ek: &str, srk: &str) -> Result<TpmChallenge, TpmKeyError> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let key = format!("tpm-key-{n}");
        Ok(TpmChallenge { authentication_key: self.wrap_key(ek, srk, &key)?, issued_key: key })
    }
    fn wrap_key(&self, ek: &str, srk: &str, key: &str) -> Result<String, TpmKeyError> {
        let (ek, srk) = (tpm_id(ek, "endorsement key")?, tpm_id(srk, "storage root key")?);
        Ok(crate::base64::encode(format!("ek={ek};srk={srk};key={key}").as_bytes()))
    }
}

/// Services on an in-memory store with the doubles above; returns the clock and crypto too.
pub fn services() -> (Services, Arc<ManualClock>, Arc<TextCrypto>) {
    let clock = Arc::new(ManualClock::fixed());
    let crypto = Arc::new(TextCrypto::default());
    let s = Services::new(
        Arc::new(MemoryStore::new()),
        clock.clone(),
        Arc::new(CountingEntropy::default()),
        crypto.clone(),
        crypto.clone(),
    )
    .with_tpm(Arc::new(TextTpm::default()));
    (s, clock, crypto)
}

/// The facts of a TLS 1.2 connection from loopback, with `chain` as the client's certificates.
pub fn connection(transport: Transport, version: TlsVersion, chain: Vec<Vec<u8>>) -> ConnectionFacts {
    ConnectionFacts {
        transport,
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: Arc::new(HandshakeFacts {
            offered: None,
            negotiated: Negotiated {
                version,
                cipher_suite: 0xC030,
                group: Some("secp256r1".into()),
                alpn: None,
                resumed: false,
                client_certificate: !chain.is_empty(),
            },
        }),
        peer_certificates: Arc::new(PeerCertificates::from(chain)),
    }
}

/// An IoT hub registry that records what registration writes, and refuses while told to.
#[derive(Debug, Default)]
pub struct RecordingHub {
    /// `(hub host, call)`: `put <device id> <identity debug>`, `twin <device id> <json>`.
    pub calls: Mutex<Vec<(String, String)>>,
    /// Answer every call with HTTP 401 while set.
    pub refuse: std::sync::atomic::AtomicBool,
}

impl RecordingHub {
    fn check(&self, hub: &crate::model::ConnectionString) -> Result<(), crate::ports::HubCallError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(crate::ports::HubCallError::Status {
                host: hub.host_name.clone(),
                status: 401,
                message: "ErrorCode:IotHubUnauthorizedAccess;Unauthorized".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::ports::HubRegistry for RecordingHub {
    async fn put_device(
        &self,
        hub: &crate::model::ConnectionString,
        identity: &crate::ports::HubDeviceIdentity,
    ) -> Result<(), crate::ports::HubCallError> {
        self.check(hub)?;
        let auth = match &identity.auth {
            crate::ports::HubDeviceAuth::Sas { primary_key, secondary_key } => {
                format!("sas {primary_key} {secondary_key}")
            }
            crate::ports::HubDeviceAuth::SelfSigned { primary_thumbprint, .. } => {
                format!("selfSigned {primary_thumbprint}")
            }
            crate::ports::HubDeviceAuth::Generated => "generated".into(),
        };
        let call = format!("put {} {auth} edge={}", identity.device_id, identity.iot_edge);
        self.calls.lock().unwrap().push((hub.host_name.clone(), call));
        Ok(())
    }
    async fn twin(
        &self,
        hub: &crate::model::ConnectionString,
        _device_id: &str,
    ) -> Result<Option<serde_json::Value>, crate::ports::HubCallError> {
        self.check(hub)?;
        Ok(Some(
            serde_json::json!({"tags": {"from": hub.host_name}, "properties": {"desired": {"$version": 3, "x": 1}}}),
        ))
    }
    async fn replace_twin(
        &self,
        hub: &crate::model::ConnectionString,
        device_id: &str,
        twin: &serde_json::Value,
    ) -> Result<(), crate::ports::HubCallError> {
        self.check(hub)?;
        self.calls.lock().unwrap().push((hub.host_name.clone(), format!("twin {device_id} {twin}")));
        Ok(())
    }
}
