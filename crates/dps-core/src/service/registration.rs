//! Device registration (docs/protocol.md, "HTTPS device API"): allocate a hub for an attested device,
//! record the registration, answer operation polls.
//!
//! The same registration id on two connections at once yields one record: writes are
//! conditional, and allocation is deterministic.

use serde_json::{json, Value};

use super::allocation::{allocate, Allocation};
use super::attest::{Attested, Device, EnrollmentSource};
use super::hub_sync::{twin_of, TwinStep, HUB_REFUSED};
use super::Services;
use crate::error::{Error, Result};
use crate::model::ReprovisionPolicy;
use crate::model::{
    AttestationType, DeviceRegistrationState, ProvisioningStatus, RegistrationRecord, RegistrationStatus,
};
use crate::store::{Precondition, StoreError};

/// A registration operation's status (`RegistrationOperationStatus`).
#[derive(Clone, Debug, PartialEq)]
pub struct OperationStatus {
    pub operation_id: String,
    pub status: RegistrationStatus,
    pub registration_state: Option<DeviceRegistrationState>,
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
    fn operation_id(&self) -> String {
        let hex = crate::ports::random_hex(self.entropy.as_ref(), 8);
        let g = crate::ports::random_hex(self.entropy.as_ref(), 16);
        format!("4.{hex}.{}-{}-{}-{}-{}", &g[0..8], &g[8..12], &g[12..16], &g[16..20], &g[20..32])
    }

    fn registration_etag(&self) -> String {
        crate::base64::encode(crate::ports::new_etag(self.entropy.as_ref()).as_bytes())
    }

    /// Registers an authenticated device and returns its operation, already final (the result
    /// is delivered on the first poll).
    ///
    /// A first registration is allocated by the enrollment's (or the instance's) policy. A
    /// repeat registration follows the enrollment's `reprovisionPolicy` (docs/allocation.md, "Reprovisioning"):
    /// never re-provision keeps the current hub; otherwise the hub is re-evaluated, and the
    /// substatus says what happened (`reprovisionedToInitialAssignment` on the same hub,
    /// `deviceDataMigrated` or `deviceDataReset` on another). A device whose hub was unlinked
    /// is always allocated again.
    ///
    /// `legacy_substatus`: the device's api-version predates 2019-04-15, so a re-provision to
    /// the same hub reports `initialAssignment` rather than `reprovisionedToInitialAssignment`.
    pub(crate) async fn register(
        &self,
        a: &Attested,
        payload: Option<Value>,
        tls: Option<crate::tls::RecordFacts>,
        legacy_substatus: bool,
    ) -> Result<OperationStatus> {
        let e = EnrollmentView::of(a);
        self.throttle
            .take(&a.instance.name, self.clock.now())
            .await?
            .map_err(|retry_after| Error::Throttled { retry_after })?;
        if e.status == Some(ProvisioningStatus::Disabled) {
            return Err(Error::Unauthorized(format!("the enrollment of {} is disabled", a.registration_id)));
        }
        let inst = &a.instance.name;
        if let Some(offer) = tls.as_ref().and_then(|t| t.offer.as_ref()) {
            self.keep_offer(offer).await?;
        }
        let tls = tls.map(|t| t.facts);
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
            let mut hub_step = None;
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
                        hub_step = Some(match action {
                            "initial" | "reset" => TwinStep::Set(twin_of(initial_twin.as_ref())),
                            "migrated" => current
                                .and_then(|c| c.state.assigned_hub.clone())
                                .map_or(TwinStep::Set(twin_of(None)), TwinStep::MigrateFrom),
                            _ => TwinStep::Keep,
                        });
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
            if let (Some(step), Some(hub), Some(device_id)) = (hub_step, &state.assigned_hub, &state.device_id) {
                if let Err(why) = self.sync_hub(a, hub, device_id, step).await {
                    tracing::warn!(registration_id = %a.registration_id, error = %why, "registration failed at its IoT hub");
                    state.status = RegistrationStatus::Failed;
                    state.error_code = Some(HUB_REFUSED);
                    state.error_message = Some(why);
                    (state.assigned_hub, state.device_id, state.substatus, state.payload) = (None, None, None, None);
                    (initial_twin, twin_action) = (None, None);
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

    /// The `AllocationRequest` of docs/allocation.md, "Custom allocation webhooks" (enrollment without secrets).
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
    pub(crate) async fn operation_status(&self, a: Device<'_>, operation_id: &str) -> Result<OperationStatus> {
        let r = self.store.registration(a.instance, a.registration_id).await?;
        let mut status = match r {
            Some(r) if r.operation_id.as_deref() == Some(operation_id) => status_of(&r),
            _ => return Err(Error::RegistrationNotFound(format!("{} (operation {operation_id})", a.registration_id))),
        };
        // A TPM device gets its key handed over again in the final result (docs/tpm.md, "In the request path"):
        // the C, C# and Node clients require `tpm.authenticationKey` there.
        if let (Some(k), Some(state)) = (a.tpm, status.registration_state.as_mut()) {
            if state.status == RegistrationStatus::Assigned {
                let blob = self
                    .tpm
                    .wrap_key(&k.endorsement_key, &k.storage_root_key, &k.key)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                state.extra.insert("tpm".into(), json!({ "authenticationKey": blob }));
            }
        }
        Ok(status)
    }

    /// The registration status lookup (`POST /{scope}/registrations/{id}`).
    pub(crate) async fn device_registration(&self, a: Device<'_>) -> Result<DeviceRegistrationState> {
        self.store
            .registration(a.instance, a.registration_id)
            .await?
            .map(|r| r.state)
            .ok_or_else(|| Error::RegistrationNotFound(a.registration_id.to_owned()))
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
