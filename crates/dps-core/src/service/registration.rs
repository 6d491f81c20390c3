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
use crate::model::ReprovisionPolicy;
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
                // Groups: the one whose CA vouches for the certificate closest to the leaf wins
                // (the first intermediate, then the next one up; dps-protocol.md §4.3).
                let mut best: Option<(usize, EnrollmentGroup)> = None;
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
                    let depth = anchors.iter().filter_map(|a| self.crypto.chain_depth(chain, a, now)).min();
                    if let Some(d) = depth {
                        if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
                            best = Some((d, g));
                        }
                    }
                }
                if let Some((_, g)) = best {
                    return Ok(attested(EnrollmentSource::Group(g), facts.info));
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
    /// Registers an authenticated device and returns its operation, already final (the result
    /// is delivered on the first poll).
    ///
    /// A first registration is allocated by the enrollment's (or the instance's) policy. A
    /// repeat registration follows the enrollment's `reprovisionPolicy` (dps-protocol.md §6.4):
    /// never re-provision keeps the current hub; otherwise the hub is re-evaluated, and the
    /// substatus says what happened (`reprovisionedToInitialAssignment` on the same hub,
    /// `deviceDataMigrated` or `deviceDataReset` on another). A device whose hub was unlinked
    /// is always allocated again.
    ///
    /// `api_version` is the device's: before 2019-04-15 a re-provision to the same hub reports
    /// `initialAssignment`, from then on `reprovisionedToInitialAssignment` (dps-protocol.md §1.3).
    pub async fn register(
        &self,
        a: &Attested,
        payload: Option<Value>,
        tls: Option<Value>,
        api_version: Option<&str>,
    ) -> Result<OperationStatus> {
        let legacy_substatus = api_version.is_some_and(|v| v < "2019-04-15");
        let e = EnrollmentView::of(a);
        self.throttle
            .take(&a.instance.name, self.clock.now())
            .map_err(|retry_after| Error::Throttled { retry_after })?;
        if e.status == Some(ProvisioningStatus::Disabled) {
            return Err(Error::Unauthorized(format!("the enrollment of {} is disabled", a.registration_id)));
        }
        let inst = &a.instance.name;
        for _attempt in 0..3 {
            let existing = self.store.registration(inst, &a.registration_id).await?;
            let current = existing.as_ref().filter(|r| {
                r.state.status == RegistrationStatus::Assigned
                    && r.state
                        .assigned_hub
                        .as_ref()
                        .is_some_and(|h| a.instance.iot_hubs.iter().any(|l| l.name.eq_ignore_ascii_case(h)))
            });
            let policy =
                e.reprovision.unwrap_or(ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: true });
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
            match (a.kind, &e.group_id) {
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
            let mut initial_twin = None;
            let mut twin_action = None;
            if let (Some(cur), false) = (current, policy.update_hub_assignment) {
                // Never re-provision: the device stays where it is, with its data.
                state.assigned_hub.clone_from(&cur.state.assigned_hub);
                state.device_id.clone_from(&cur.state.device_id);
                state.substatus.clone_from(&cur.state.substatus);
                state.payload.clone_from(&cur.state.payload);
                twin_action = Some("kept".to_owned());
            } else {
                match self.allocate_for(a, &e, current, payload.as_ref()).await {
                    Ok(choice) => {
                        let same_hub = current
                            .and_then(|c| c.state.assigned_hub.as_deref())
                            .is_some_and(|h| h.eq_ignore_ascii_case(&choice.hub));
                        let (substatus, action) = match (current.is_some(), same_hub, policy.migrate_device_data) {
                            (false, _, _) => ("initialAssignment", "initial"),
                            (true, true, true) if legacy_substatus => ("initialAssignment", "kept"),
                            (true, true, true) => ("reprovisionedToInitialAssignment", "kept"),
                            (true, _, false) => ("deviceDataReset", "reset"),
                            (true, false, true) => ("deviceDataMigrated", "migrated"),
                        };
                        if matches!(action, "initial" | "reset") {
                            initial_twin = choice.initial_twin.or_else(|| e.initial_twin.clone());
                        }
                        state.assigned_hub = Some(choice.hub);
                        state.device_id = Some(
                            current.and_then(|c| c.state.device_id.clone()).unwrap_or_else(|| e.device_id.clone()),
                        );
                        state.substatus = Some(substatus.to_owned());
                        state.payload = choice.payload;
                        twin_action = Some(action.to_owned());
                    }
                    Err((code, why)) => {
                        state.status = RegistrationStatus::Failed;
                        state.error_code = Some(code);
                        state.error_message = Some(why);
                    }
                }
            }
            let record = RegistrationRecord {
                state,
                enrollment_group_id: e.group_id.clone(),
                tls: tls.clone().or_else(|| existing.as_ref().and_then(|r| r.tls.clone())),
                operation_id: Some(self.operation_id()),
                initial_twin,
                twin_action,
            };
            let pre = match &existing {
                Some(r) => Precondition::IfMatch(r.state.etag.as_deref().unwrap_or("")),
                None => Precondition::MustNotExist,
            };
            match self.store.put_registration(inst, &record, pre).await {
                Ok(()) => return Ok(status_of(&record)),
                // Another connection registered the same id meanwhile: go round and decide again.
                Err(StoreError::AlreadyExists | StoreError::PreconditionFailed | StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!("registration {} is being changed concurrently; retry", a.registration_id)))
    }

    /// Picks the hub by the enrollment's policy, calling the custom webhook where it says so.
    /// `Err((errorCode, message))` when no hub can be assigned.
    async fn allocate_for(
        &self,
        a: &Attested,
        e: &EnrollmentView,
        current: Option<&RegistrationRecord>,
        payload: Option<&Value>,
    ) -> std::result::Result<Choice, (i64, String)> {
        match allocate(
            &a.instance,
            &a.registration_id,
            e.policy,
            e.hubs.as_deref(),
            e.legacy_hub.as_deref(),
            &self.region,
        ) {
            Allocation::Hub(hub) => Ok(Choice { hub, initial_twin: None, payload: None }),
            Allocation::NoHub(why) => Err((400_208, why)),
            Allocation::Custom(hubs) => {
                let Some(def) = &e.custom else {
                    return Err((
                        400_209,
                        "custom allocation needs customAllocationDefinition on the enrollment".into(),
                    ));
                };
                let request = self.webhook_request(a, current, payload, &hubs);
                let answer = self
                    .webhook
                    .call(&def.webhook_url, &request)
                    .await
                    .map_err(|why| (400_209, format!("Custom allocation failed: {why}")))?;
                let hub = answer.get("iotHubHostName").and_then(Value::as_str).ok_or_else(|| {
                    (
                        400_209,
                        format!(
                            "Custom allocation failed: the webhook's answer has no iotHubHostName (it answered {})",
                            excerpt(&answer)
                        ),
                    )
                })?;
                let hub = hubs.iter().find(|h| h.eq_ignore_ascii_case(hub)).cloned().ok_or_else(|| {
                    (400_209, format!("Custom allocation failed: the webhook chose {hub:?}, which is not one of the linked hubs offered ({})", hubs.join(", ")))
                })?;
                Ok(Choice {
                    hub,
                    initial_twin: answer.get("initialTwin").filter(|t| t.is_object()).cloned(),
                    payload: answer.get("payload").filter(|p| !p.is_null()).cloned(),
                })
            }
        }
    }

    /// The `AllocationRequest` of dps-protocol.md §6.3 (enrollment without secrets).
    fn webhook_request(
        &self,
        a: &Attested,
        current: Option<&RegistrationRecord>,
        payload: Option<&Value>,
        hubs: &[String],
    ) -> Value {
        let mut ctx = json!({ "registrationId": a.registration_id });
        if let Some(c) = current {
            ctx["currentIotHubHostName"] = json!(c.state.assigned_hub);
            ctx["currentDeviceId"] = json!(c.state.device_id);
        }
        match a.kind {
            AttestationType::X509 => ctx["x509"] = json!({ "certificateInfo": a.certificate }),
            AttestationType::SymmetricKey => ctx["symmetricKey"] = json!({}),
            _ => {}
        }
        if let Some(p) = payload {
            ctx["payload"] = p.clone();
        }
        let mut body = json!({ "deviceRuntimeContext": ctx, "linkedHubs": hubs });
        match &a.source {
            EnrollmentSource::Individual(e) => {
                body["individualEnrollment"] = serde_json::to_value(e.redacted()).unwrap_or(Value::Null)
            }
            EnrollmentSource::Group(g) => {
                body["enrollmentGroup"] = serde_json::to_value(g.redacted()).unwrap_or(Value::Null)
            }
        }
        body
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

/// A short, safe excerpt of a JSON value for messages.
fn excerpt(v: &Value) -> String {
    let t = v.to_string();
    if t.len() > 200 {
        format!("{}…", &t[..t.char_indices().nth(200).map_or(t.len(), |(i, _)| i)])
    } else {
        t
    }
}

/// A hub choice with what the webhook added.
struct Choice {
    hub: String,
    initial_twin: Option<Value>,
    payload: Option<Value>,
}

/// The parts of an individual enrollment or group that registration uses.
struct EnrollmentView {
    status: Option<ProvisioningStatus>,
    policy: Option<crate::model::AllocationPolicy>,
    hubs: Option<Vec<String>>,
    legacy_hub: Option<String>,
    device_id: String,
    group_id: Option<String>,
    reprovision: Option<ReprovisionPolicy>,
    initial_twin: Option<Value>,
    custom: Option<crate::model::CustomAllocationDefinition>,
}

impl EnrollmentView {
    fn of(a: &Attested) -> Self {
        match &a.source {
            EnrollmentSource::Individual(e) => EnrollmentView {
                status: e.provisioning_status,
                policy: e.allocation_policy,
                hubs: e.iot_hubs.clone(),
                legacy_hub: e.iot_hub_host_name.clone(),
                device_id: e.device_id.clone().unwrap_or_else(|| a.registration_id.clone()),
                group_id: None,
                reprovision: e.reprovision_policy,
                initial_twin: e.initial_twin.clone(),
                custom: e.custom_allocation_definition.clone(),
            },
            EnrollmentSource::Group(g) => EnrollmentView {
                status: g.provisioning_status,
                policy: g.allocation_policy,
                hubs: g.iot_hubs.clone(),
                legacy_hub: g.iot_hub_host_name.clone(),
                device_id: a.registration_id.clone(),
                group_id: Some(g.enrollment_group_id.clone()),
                reprovision: g.reprovision_policy,
                initial_twin: g.initial_twin.clone(),
                custom: g.custom_allocation_definition.clone(),
            },
        }
    }
}

fn status_of(r: &RegistrationRecord) -> OperationStatus {
    OperationStatus {
        operation_id: r.operation_id.clone().unwrap_or_default(),
        status: r.state.status,
        registration_state: Some(r.state.clone()),
    }
}
