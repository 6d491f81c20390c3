//! Device registration (dps-protocol.md §1, §4): authenticate the device against its
//! enrollment, allocate a hub, record the registration, answer operation polls.
//!
//! An unknown device and a wrong credential get the same answer, so enrollments cannot be
//! enumerated. The same registration id on two connections at once yields one record: writes
//! are conditional, and allocation is deterministic.

use serde_json::{json, Value};

use super::allocation::{allocate, Allocation};
use super::Services;
use crate::error::{Error, Result};
use crate::model::{
    AttestationType, DeviceRegistrationState, EnrollmentGroup, IdScope, IndividualEnrollment, Instance,
    ProvisioningStatus, RegistrationRecord, RegistrationStatus,
};
use crate::store::{Precondition, StoreError};
use crate::tls::TlsVersion;

/// What the device presented.
#[derive(Clone, Copy, Debug)]
pub enum Evidence<'a> {
    /// A SAS token (HTTP Authorization header, MQTT password).
    Sas(&'a str),
    /// The TLS client chain (leaf first, DER); possession proved by the handshake.
    X509(&'a [Vec<u8>]),
    None,
}

/// The enrollment a device authenticated against.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one per request; boxing buys nothing
pub enum EnrollmentSource {
    Individual(IndividualEnrollment),
    Group(EnrollmentGroup),
}

/// An authenticated device.
#[derive(Clone, Debug)]
pub struct Attested {
    pub instance: Instance,
    pub registration_id: String,
    pub source: EnrollmentSource,
    pub kind: AttestationType,
    /// For X.509 devices, the leaf's info (returned in `registrationState.x509`).
    pub certificate: Option<crate::model::X509CertificateInfo>,
}

/// A registration operation's status (`RegistrationOperationStatus`).
#[derive(Clone, Debug, PartialEq)]
pub struct OperationStatus {
    pub operation_id: String,
    pub status: RegistrationStatus,
    pub registration_state: Option<DeviceRegistrationState>,
}

const DENIED: &str = "the device could not be authenticated";

fn denied() -> Error {
    Error::Unauthorized(DENIED.into())
}

impl OperationStatus {
    /// The JSON body devices receive.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "operationId": self.operation_id, "status": self.status });
        if let Some(s) = &self.registration_state {
            v["registrationState"] = serde_json::to_value(s).unwrap_or(Value::Null);
        }
        v
    }
}

impl Services {
    /// Authenticates a device of the instance with ID scope `scope` (dps-protocol.md §4).
    /// `negotiated` is the connection's TLS version, checked against the instance's
    /// `minTlsVersion` as soon as the scope is known (tls-policy.md §3).
    pub async fn authenticate_device(
        &self,
        scope: &str,
        registration_id: &str,
        evidence: Evidence<'_>,
        negotiated: Option<TlsVersion>,
    ) -> Result<Attested> {
        let scope = IdScope::parse(scope).map_err(|_| denied())?;
        let instance = self.store.instance_by_scope(&scope).await?.ok_or_else(denied)?;
        if let (Some(min), Some(v)) = (instance.min_tls_version, negotiated) {
            if !min.admits(v) {
                return Err(Error::Forbidden(format!(
                    "this DPS instance requires TLS {} or newer (minTlsVersion); the connection uses {v}",
                    min.as_str()
                )));
            }
        }
        crate::model::validate_registration_id(registration_id).map_err(Error::Invalid)?;
        let now = self.clock.now();
        match evidence {
            Evidence::None => {
                Err(Error::Unauthorized("the device presented no credential (SAS token or X.509 certificate)".into()))
            }
            Evidence::Sas(token) => {
                let resource = format!("{}/registrations/{registration_id}", scope.as_str());
                let check = |keys: Vec<String>| self.crypto.verify_sas(token, &resource, &keys, now);
                // Token-level problems (expired, wrong resource) are said; which key failed is not.
                if let Some(e) = self.store.enrollment(&instance.name, registration_id).await? {
                    if let Some(k) = e
                        .attestation
                        .symmetric_key
                        .as_ref()
                        .filter(|_| e.attestation.kind == AttestationType::SymmetricKey)
                    {
                        let keys = [&k.primary_key, &k.secondary_key].into_iter().flatten().cloned().collect();
                        if check(keys).map_err(Error::Unauthorized)? {
                            return Ok(Attested {
                                instance,
                                registration_id: registration_id.to_owned(),
                                source: EnrollmentSource::Individual(e),
                                kind: AttestationType::SymmetricKey,
                                certificate: None,
                            });
                        }
                    }
                }
                let mut token_error = None;
                for g in self.all_groups(&instance).await? {
                    let Some(k) = g
                        .attestation
                        .symmetric_key
                        .as_ref()
                        .filter(|_| g.attestation.kind == AttestationType::SymmetricKey)
                    else {
                        continue;
                    };
                    let keys: Vec<String> = [&k.primary_key, &k.secondary_key]
                        .into_iter()
                        .flatten()
                        .filter_map(|gk| self.crypto.derive_key(gk, registration_id))
                        .collect();
                    match check(keys) {
                        Ok(true) => {
                            return Ok(Attested {
                                instance,
                                registration_id: registration_id.to_owned(),
                                source: EnrollmentSource::Group(g),
                                kind: AttestationType::SymmetricKey,
                                certificate: None,
                            })
                        }
                        Ok(false) => {}
                        Err(e) => token_error = Some(e),
                    }
                }
                if let Some(e) = token_error {
                    return Err(Error::Unauthorized(e));
                }
                // One more check so a malformed token is named even with no enrollments at all.
                check(Vec::new()).map_err(Error::Unauthorized)?;
                Err(denied())
            }
            Evidence::X509(chain) => {
                let leaf = chain.first().ok_or_else(denied)?;
                let facts = self.crypto.leaf(leaf, now).map_err(|_| denied())?;
                if !facts.common_name.eq_ignore_ascii_case(registration_id) {
                    return Err(Error::Unauthorized(format!(
                        "the certificate's subject CN {:?} is not the registration id {registration_id:?}",
                        facts.common_name
                    )));
                }
                if !facts.time_valid {
                    return Err(Error::Unauthorized("the device certificate is expired or not yet valid".into()));
                }
                let attested = |source, info| Attested {
                    instance: instance.clone(),
                    registration_id: registration_id.to_owned(),
                    source,
                    kind: AttestationType::X509,
                    certificate: Some(info),
                };
                if let Some(e) = self.store.enrollment(&instance.name, registration_id).await? {
                    let matches = e.attestation.kind == AttestationType::X509
                        && e.attestation.x509.as_ref().and_then(|x| x.client_certificates.as_ref()).is_some_and(
                            |set| {
                                set.slots().into_iter().flatten().any(|c| {
                                    c.info.as_ref().is_some_and(|i| {
                                        i.sha256_thumbprint.eq_ignore_ascii_case(&facts.sha256_thumbprint)
                                    })
                                })
                            },
                        );
                    if matches {
                        return Ok(attested(EnrollmentSource::Individual(e), facts.info));
                    }
                }
                for g in self.all_groups(&instance).await? {
                    if g.attestation.kind != AttestationType::X509 {
                        continue;
                    }
                    let Some(x) = &g.attestation.x509 else { continue };
                    let mut anchors: Vec<String> = Vec::new();
                    if let Some(set) = &x.signing_certificates {
                        anchors.extend(set.slots().into_iter().flatten().filter_map(|c| c.certificate.clone()));
                    }
                    if let Some(refs) = &x.ca_references {
                        for name in [&refs.primary, &refs.secondary].into_iter().flatten() {
                            // Only CAs verified by proof of possession count.
                            if let Some(ca) =
                                self.store.certificate(&instance.name, name).await?.filter(|c| c.is_verified)
                            {
                                anchors.push(ca.certificate);
                            }
                        }
                    }
                    if anchors.iter().any(|a| self.crypto.chains_to(chain, a, now)) {
                        return Ok(attested(EnrollmentSource::Group(g), facts.info));
                    }
                }
                Err(denied())
            }
        }
    }

    async fn all_groups(&self, instance: &Instance) -> Result<Vec<EnrollmentGroup>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.store.groups(&instance.name, token.as_deref(), 1000).await?;
            out.extend(page.items);
            match page.continuation {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    fn operation_id(&self) -> String {
        let hex = crate::ports::random_hex(self.entropy.as_ref(), 8);
        let g = crate::ports::random_hex(self.entropy.as_ref(), 16);
        format!("4.{hex}.{}-{}-{}-{}-{}", &g[0..8], &g[8..12], &g[12..16], &g[16..20], &g[20..32])
    }

    fn registration_etag(&self) -> String {
        crate::base64::encode(crate::ports::new_etag(self.entropy.as_ref()).as_bytes())
    }

    /// Registers an authenticated device: returns its operation (already final: the result is
    /// delivered on the first poll). Re-registration returns the existing assignment.
    /// The device `payload` is for custom allocation webhooks, which this server does not call
    /// yet; it is accepted and not stored.
    pub async fn register(&self, a: &Attested, _payload: Option<Value>, tls: Option<Value>) -> Result<OperationStatus> {
        let (status, policy, hubs, legacy, device_id, group_id) = match &a.source {
            EnrollmentSource::Individual(e) => (
                e.provisioning_status,
                e.allocation_policy,
                e.iot_hubs.clone(),
                e.iot_hub_host_name.clone(),
                e.device_id.clone().unwrap_or_else(|| a.registration_id.clone()),
                None,
            ),
            EnrollmentSource::Group(g) => (
                g.provisioning_status,
                g.allocation_policy,
                g.iot_hubs.clone(),
                g.iot_hub_host_name.clone(),
                a.registration_id.clone(),
                Some(g.enrollment_group_id.clone()),
            ),
        };
        self.throttle
            .take(&a.instance.name, self.clock.now())
            .map_err(|retry_after| Error::Throttled { retry_after })?;
        if status == Some(ProvisioningStatus::Disabled) {
            return Err(Error::Unauthorized(format!("the enrollment of {} is disabled", a.registration_id)));
        }
        let inst = &a.instance.name;
        for _attempt in 0..3 {
            let existing = self.store.registration(inst, &a.registration_id).await?;
            if let Some(r) = &existing {
                let same_source = r.enrollment_group_id.as_deref().map(str::to_ascii_lowercase)
                    == group_id.as_deref().map(str::to_ascii_lowercase);
                let hub_still_linked = r
                    .state
                    .assigned_hub
                    .as_ref()
                    .is_some_and(|h| a.instance.iot_hubs.iter().any(|l| l.name.eq_ignore_ascii_case(h)));
                if r.state.status == RegistrationStatus::Assigned && same_source && hub_still_linked {
                    // Re-registration: same assignment, a new operation, the latest TLS facts.
                    let mut next = r.clone();
                    next.operation_id = Some(self.operation_id());
                    next.state.last_updated_date_time_utc = Some(self.now());
                    next.state.etag = Some(self.registration_etag());
                    if tls.is_some() {
                        next.tls.clone_from(&tls);
                    }
                    let old = r.state.etag.clone().unwrap_or_default();
                    match self.store.put_registration(inst, &next, Precondition::IfMatch(&old)).await {
                        Ok(()) => return Ok(status_of(&next)),
                        Err(StoreError::PreconditionFailed | StoreError::NotFound) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let now = self.now();
            let mut state = DeviceRegistrationState {
                registration_id: a.registration_id.clone(),
                created_date_time_utc: Some(
                    existing
                        .as_ref()
                        .and_then(|r| r.state.created_date_time_utc.clone())
                        .unwrap_or_else(|| now.clone()),
                ),
                assigned_hub: None,
                device_id: None,
                status: RegistrationStatus::Assigned,
                substatus: None,
                error_code: None,
                error_message: None,
                last_updated_date_time_utc: Some(now),
                etag: Some(self.registration_etag()),
                payload: None,
                extra: serde_json::Map::new(),
            };
            match (a.kind, &group_id) {
                (AttestationType::SymmetricKey, Some(g)) => {
                    state.extra.insert("symmetricKey".into(), json!({ "enrollmentGroupId": g }));
                }
                (AttestationType::X509, g) => {
                    let mut x = json!({ "certificateInfo": a.certificate });
                    if let Some(g) = g {
                        x["enrollmentGroupId"] = json!(g);
                    }
                    state.extra.insert("x509".into(), x);
                }
                _ => {}
            }
            match allocate(&a.instance, &a.registration_id, policy, hubs.as_deref(), legacy.as_deref()) {
                Allocation::Hub(h) => {
                    state.assigned_hub = Some(h);
                    state.device_id = Some(device_id.clone());
                    state.substatus = Some("initialAssignment".into());
                }
                Allocation::NoHub(why) => {
                    state.status = RegistrationStatus::Failed;
                    state.error_code = Some(400_208);
                    state.error_message = Some(why);
                }
                Allocation::Unsupported(why) => {
                    state.status = RegistrationStatus::Failed;
                    state.error_code = Some(400_209);
                    state.error_message = Some(why);
                }
            }
            let record = RegistrationRecord {
                state,
                enrollment_group_id: group_id.clone(),
                tls: tls.clone(),
                operation_id: Some(self.operation_id()),
            };
            let pre = match &existing {
                Some(r) => Precondition::IfMatch(r.state.etag.as_deref().unwrap_or("")),
                None => Precondition::MustNotExist,
            };
            match self.store.put_registration(inst, &record, pre).await {
                Ok(()) => return Ok(status_of(&record)),
                // Another connection registered the same id meanwhile: go round and reuse it.
                Err(StoreError::AlreadyExists | StoreError::PreconditionFailed | StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!("registration {} is being changed concurrently; retry", a.registration_id)))
    }

    /// The status of operation `operation_id` of an authenticated device.
    pub async fn operation_status(&self, a: &Attested, operation_id: &str) -> Result<OperationStatus> {
        let r = self.store.registration(&a.instance.name, &a.registration_id).await?;
        match r {
            Some(r) if r.operation_id.as_deref() == Some(operation_id) => Ok(status_of(&r)),
            _ => Err(Error::RegistrationNotFound(format!("{} (operation {operation_id})", a.registration_id))),
        }
    }

    /// The registration status lookup (`POST /{scope}/registrations/{id}`).
    pub async fn device_registration(&self, a: &Attested) -> Result<DeviceRegistrationState> {
        self.store
            .registration(&a.instance.name, &a.registration_id)
            .await?
            .map(|r| r.state)
            .ok_or_else(|| Error::RegistrationNotFound(a.registration_id.clone()))
    }
}

fn status_of(r: &RegistrationRecord) -> OperationStatus {
    OperationStatus {
        operation_id: r.operation_id.clone().unwrap_or_default(),
        status: r.state.status,
        registration_state: Some(r.state.clone()),
    }
}
