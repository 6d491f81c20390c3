//! A TEST device API: a few devices in memory, with real SAS verification (`dps-attest`) and
//! real X.509 parsing (OpenSSL), standing in for the core's device-API use case until the
//! adapter is wired to it. Shared by the integration tests and the `fake_dps` example.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use dps_amqp::{AuthOutcome, Credential, DeviceApi, DeviceError, DeviceReply, DeviceRequest, DeviceSession, Transport};
use dps_core::tls::{HandshakeFacts, PeerCertificates};

/// The devices the fake knows.
#[derive(Debug, Default)]
pub struct FakeDevices {
    pub id_scope: String,
    /// Registration id → base64 symmetric key.
    pub symmetric_keys: HashMap<String, String>,
    /// Registration id → SHA-256 (lower-case hex) of the device certificate (DER); the
    /// certificate's CN must be the registration id.
    pub x509: HashMap<String, String>,
    /// Registration ids attested by TPM (any EK): the challenge blob's first 32 bytes are the key.
    pub tpm: HashSet<String>,
    /// Registration ids whose first register is throttled (429, retry after 1 s).
    pub throttle_once: HashSet<String>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Operation id → (registration id, transport).
    operations: HashMap<String, (String, Transport)>,
    throttled: HashSet<String>,
    /// Registration id → how many registers were accepted.
    registrations: HashMap<String, u32>,
}

impl FakeDevices {
    pub fn new(id_scope: &str) -> FakeDevices {
        FakeDevices { id_scope: id_scope.to_owned(), ..FakeDevices::default() }
    }

    /// How many registers of `registration_id` were accepted.
    pub fn registrations(&self, registration_id: &str) -> u32 {
        self.state.lock().map(|s| s.registrations.get(registration_id).copied().unwrap_or(0)).unwrap_or(0)
    }
}

/// The fake as a [`DeviceApi`].
#[derive(Debug, Clone)]
pub struct FakeApi(pub Arc<FakeDevices>);

impl DeviceApi for FakeApi {
    fn device_session(
        &self,
        transport: Transport,
        _tls: Arc<HandshakeFacts>,
        peer_certificates: Arc<PeerCertificates>,
    ) -> Box<dyn DeviceSession> {
        Box::new(FakeSession { devices: self.0.clone(), transport, peer_certificates, attested: None, tpm_key: None })
    }
}

struct FakeSession {
    devices: Arc<FakeDevices>,
    transport: Transport,
    peer_certificates: Arc<PeerCertificates>,
    attested: Option<String>,
    tpm_key: Option<String>,
}

fn unauthorized() -> AuthOutcome {
    AuthOutcome::Refused(DeviceError::unauthorized("Unauthorized"))
}

fn leaf_matches(der: &[u8], registration_id: &str, sha256_hex: &str) -> bool {
    let Ok(cert) = openssl::x509::X509::from_der(der) else { return false };
    let cn = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    let digest = openssl::hash::hash(openssl::hash::MessageDigest::sha256(), der)
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_default();
    cn.as_deref() == Some(registration_id) && digest.eq_ignore_ascii_case(sha256_hex)
}

#[async_trait::async_trait]
impl DeviceSession for FakeSession {
    async fn authenticate(
        &mut self,
        id_scope: &str,
        registration_id: &str,
        _api_version: Option<&str>,
        credential: Credential,
    ) -> AuthOutcome {
        if !id_scope.eq_ignore_ascii_case(&self.devices.id_scope) {
            return unauthorized();
        }
        let ok = match credential {
            Credential::Sas(token) => {
                let key = match self.tpm_key.take() {
                    Some(k) => Some(k),
                    None => self.devices.symmetric_keys.get(registration_id).cloned(),
                };
                let resource = format!("{id_scope}/registrations/{registration_id}");
                match (key, dps_attest::sas::SasToken::parse(&token)) {
                    (Some(key), Ok(t)) => {
                        t.check_resource(&resource).is_ok()
                            && t.check_expiry(SystemTime::now(), Duration::from_secs(300)).is_ok()
                            && t.signed_with(&key)
                    }
                    _ => false,
                }
            }
            Credential::None => match (self.peer_certificates.leaf(), self.devices.x509.get(registration_id)) {
                (Some(der), Some(sha)) => leaf_matches(der, registration_id, sha),
                _ => false,
            },
            Credential::Tpm { .. } => {
                if !self.devices.tpm.contains(registration_id) {
                    return unauthorized();
                }
                let mut blob = vec![0u8; 700];
                openssl::rand::rand_bytes(&mut blob).ok();
                let b64 = base64::engine::general_purpose::STANDARD;
                self.tpm_key = Some(b64.encode(&blob[..32]));
                return AuthOutcome::Challenge { authentication_key: b64.encode(&blob) };
            }
        };
        if ok {
            self.attested = Some(registration_id.to_owned());
            AuthOutcome::Attested
        } else {
            unauthorized()
        }
    }

    async fn call(&mut self, request: DeviceRequest) -> DeviceReply {
        let Some(me) = self.attested.clone() else {
            return DeviceReply::Error(DeviceError::unauthorized("not authenticated"));
        };
        let mut state = match self.devices.state.lock() {
            Ok(s) => s,
            Err(_) => return DeviceReply::Error(DeviceError::internal()),
        };
        match request {
            DeviceRequest::Register { registration_id, body } => {
                if registration_id != me {
                    return DeviceReply::Error(DeviceError::unauthorized("another device"));
                }
                if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
                    return DeviceReply::Error(DeviceError::bad_request("the register body is not valid JSON"));
                }
                if self.devices.throttle_once.contains(&me) && state.throttled.insert(me.clone()) {
                    let mut e = DeviceError::new(429, 429_001, "too many registrations; retry after 1 s");
                    e.retry_after_secs = Some(1);
                    return DeviceReply::Error(e);
                }
                let operation_id = format!("4.{}.{}", uuid::Uuid::new_v4().simple(), me);
                state.operations.insert(operation_id.clone(), (me.clone(), self.transport));
                *state.registrations.entry(me).or_default() += 1;
                DeviceReply::Accepted { operation_id, retry_after_secs: 1 }
            }
            DeviceRequest::OperationStatus { registration_id, operation_id } => {
                match state.operations.get(&operation_id) {
                    Some((owner, _)) if *owner == registration_id => {
                        let now = dps_core::time::format_utc(SystemTime::now());
                        DeviceReply::Status {
                            http_status: 200,
                            body: serde_json::json!({
                                "operationId": operation_id,
                                "status": "assigned",
                                "registrationState": {
                                    "registrationId": registration_id,
                                    "createdDateTimeUtc": now,
                                    "assignedHub": "fake-hub.azure-devices.net",
                                    "deviceId": registration_id,
                                    "status": "assigned",
                                    "substatus": "initialAssignment",
                                    "lastUpdatedDateTimeUtc": now,
                                    "etag": "\"fake\""
                                }
                            }),
                            retry_after_secs: None,
                        }
                    }
                    _ => DeviceReply::Error(DeviceError::new(
                        404,
                        404_000,
                        format!("operation {operation_id:?} not found"),
                    )),
                }
            }
        }
    }
}
