use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `status` of a registration / operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    Unassigned,
    Assigning,
    Assigned,
    Failed,
    Disabled,
}

/// `DeviceRegistrationState` as the service API shows it (docs/protocol.md, "Service API"), which is also
/// the device's `registrationState` (docs/protocol.md, "Registration operations").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub status: RegistrationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What the store keeps for a registration: the state plus what the service needs internally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    pub state: DeviceRegistrationState,
    /// The group the device registered through, if any (for "query registrations of a group").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// The TLS facts of the connection that registered (docs/tls.md, "Handshake facts"), as
    /// JSON text (docs/performance.md, "Registration records").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::StoredFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The twin the device starts with in its hub on this assignment (the enrollment's or the
    /// webhook's `initialTwin`); `None` when the device's data was migrated or kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    /// What happened to the device's twin: `initial`, `migrated`, `reset` or `kept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_action: Option<String>,
}
