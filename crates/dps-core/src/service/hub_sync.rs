//! Registration's last step before `assigned` (docs/hub.md, "What DPS writes into the assigned hub"): the device's
//! identity in its assigned hub, with the credential it attested with, its `iotEdge`
//! capability, and the twin its reprovisioning policy asks for, through the
//! [`HubRegistry`](crate::ports::HubRegistry) port.
//!
//! Every step is idempotent (create-or-update, twin replace), so a registration that failed
//! here succeeds on a retry once the hub is fixed.

use serde_json::{json, Value};

use super::attest::{Attested, EnrollmentSource};
use super::Services;
use crate::model::{AttestationType, ConnectionString, Instance};
use crate::ports::{HubCallError, HubDeviceAuth, HubDeviceIdentity};

/// The error code of a registration its hub refused (`502` + the hub's part).
pub const HUB_REFUSED: i64 = 502_001;

/// What the hub gets besides the identity.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TwinStep {
    /// Leave the twin as it is (a re-provision to the same hub).
    Keep,
    /// Replace tags and desired properties with these (initial assignment, reset).
    Set(Value),
    /// Copy tags and desired properties from the device's twin in hub `from` (migration).
    MigrateFrom(String),
}

/// The `{tags, properties: {desired}}` of an initial twin (absent parts empty).
pub(crate) fn twin_of(initial: Option<&Value>) -> Value {
    let part = |v: Option<&Value>| Value::Object(v.and_then(Value::as_object).cloned().unwrap_or_default());
    let tags = part(initial.and_then(|t| t.get("tags")));
    let desired = part(initial.and_then(|t| t.pointer("/properties/desired")));
    json!({ "tags": tags, "properties": { "desired": desired } })
}

/// Tags and desired properties of a twin the hub returned, without IoT Hub's `$` members.
fn carried(twin: &Value) -> Value {
    let strip = |v: Option<&Value>| -> Value {
        Value::Object(
            v.and_then(Value::as_object)
                .map(|m| m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        )
    };
    json!({ "tags": strip(twin.get("tags")), "properties": { "desired": strip(twin.pointer("/properties/desired")) } })
}

fn linked<'a>(instance: &'a Instance, hub: &str) -> Result<(&'a str, ConnectionString), String> {
    let l = instance
        .iot_hubs
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(hub))
        .ok_or_else(|| format!("hub {hub} is not linked to this DPS instance"))?;
    let cs = ConnectionString::parse(&l.connection_string)
        .map_err(|e| format!("the connection string of linked hub {} is not usable: {e}", l.name))?;
    Ok((&l.name, cs))
}

impl Services {
    /// The identity `a` gets in its hub under `device_id`.
    fn hub_identity(&self, a: &Attested, device_id: &str) -> HubDeviceIdentity {
        let (keys, edge) = match &a.source {
            EnrollmentSource::Individual(e) => (
                e.attestation.symmetric_key.as_ref().map(|k| (k.primary_key.clone(), k.secondary_key.clone())),
                e.capabilities.as_ref().is_some_and(|c| c.iot_edge),
            ),
            EnrollmentSource::Group(g) => (
                g.attestation.symmetric_key.as_ref().map(|k| {
                    let derive = |gk: &Option<String>| {
                        gk.as_deref().and_then(|gk| self.crypto.derive_key(gk, &a.registration_id))
                    };
                    (derive(&k.primary_key), derive(&k.secondary_key))
                }),
                g.capabilities.as_ref().is_some_and(|c| c.iot_edge),
            ),
        };
        let auth = match (a.kind, keys, &a.certificate, &a.tpm) {
            (AttestationType::SymmetricKey, Some((Some(p), s)), _, _) => {
                HubDeviceAuth::Sas { secondary_key: s.unwrap_or_else(|| p.clone()), primary_key: p }
            }
            (AttestationType::X509, _, Some(c), _) => HubDeviceAuth::SelfSigned {
                primary_thumbprint: c.sha1_thumbprint.to_ascii_uppercase(),
                secondary_thumbprint: Some(c.sha256_thumbprint.to_ascii_uppercase()).filter(|t| !t.is_empty()),
            },
            // The key the TPM exchange issued: the device signs its hub SAS tokens with it.
            (AttestationType::Tpm, _, _, Some(t)) => {
                HubDeviceAuth::Sas { primary_key: t.key.clone(), secondary_key: t.key.clone() }
            }
            _ => HubDeviceAuth::Generated,
        };
        HubDeviceIdentity { device_id: device_id.to_owned(), auth, iot_edge: edge }
    }

    /// Writes device `device_id` of `a` into `hub` with `twin`. `Err(message)` says what the hub
    /// answered (never a key).
    pub(crate) async fn sync_hub(
        &self,
        a: &Attested,
        hub: &str,
        device_id: &str,
        twin: TwinStep,
    ) -> Result<(), String> {
        if !self.hubs.enabled() {
            return Ok(());
        }
        let (name, cs) = linked(&a.instance, hub)?;
        let refused = |what: &str, e: HubCallError| format!("the IoT hub {name} refused to {what} {device_id}: {e}");
        let twin = match twin {
            TwinStep::Keep => None,
            TwinStep::Set(t) => Some(t),
            TwinStep::MigrateFrom(old) => {
                let (old_name, old_cs) = linked(&a.instance, &old)?;
                let found = self.hubs.twin(&old_cs, device_id).await.map_err(|e| {
                    format!("the IoT hub {old_name} did not give the twin of {device_id} to migrate: {e}")
                })?;
                Some(found.as_ref().map_or_else(|| twin_of(None), carried))
            }
        };
        let identity = self.hub_identity(a, device_id);
        self.hubs.put_device(&cs, &identity).await.map_err(|e| refused("register device", e))?;
        if let Some(t) = twin {
            self.hubs.replace_twin(&cs, device_id, &t).await.map_err(|e| refused("set the twin of", e))?;
        }
        tracing::info!(hub = name, device_id, registration_id = %a.registration_id, "device written to its IoT hub");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_twin_parts() {
        let t = json!({"tags": {"a": 1}, "properties": {"desired": {"b": 2}}});
        assert_eq!(twin_of(Some(&t)), t);
        assert_eq!(twin_of(None), json!({"tags": {}, "properties": {"desired": {}}}));
        let hub_twin = json!({"tags": {"a": 1}, "properties": {"desired": {"b": 2, "$version": 4, "$metadata": {}}}});
        assert_eq!(carried(&hub_twin), t);
    }
}
