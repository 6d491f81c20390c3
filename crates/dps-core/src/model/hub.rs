//! The embedded IoT hub registry (docs/hub.md): a hub, its shared access policies, and the device
//! identities and twins it holds. The device and twin JSON are the IoT Hub registry's wire
//! shapes (camelCase), built from these types by `service::hub`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A right of an IoT hub shared access policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HubRight {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

impl HubRight {
    pub fn as_str(self) -> &'static str {
        match self {
            HubRight::RegistryRead => "RegistryRead",
            HubRight::RegistryWrite => "RegistryWrite",
            HubRight::ServiceConnect => "ServiceConnect",
            HubRight::DeviceConnect => "DeviceConnect",
        }
    }

    pub fn join(rights: &[HubRight]) -> String {
        rights.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A shared access policy of a hub (`iothubowner`, `registryReadWrite`, …).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubPolicy {
    pub key_name: String,
    pub primary_key: String,
    pub secondary_key: String,
    pub rights: Vec<HubRight>,
}

impl std::fmt::Debug for HubPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubPolicy")
            .field("key_name", &self.key_name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

/// The policies every new hub gets, as an Azure IoT hub has them.
pub const HUB_POLICIES: &[(&str, &[HubRight])] = &[
    (
        "iothubowner",
        &[HubRight::RegistryRead, HubRight::RegistryWrite, HubRight::ServiceConnect, HubRight::DeviceConnect],
    ),
    ("service", &[HubRight::ServiceConnect]),
    ("device", &[HubRight::DeviceConnect]),
    ("registryRead", &[HubRight::RegistryRead]),
    ("registryReadWrite", &[HubRight::RegistryRead, HubRight::RegistryWrite]),
];

/// An embedded IoT hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hub {
    pub name: String,
    /// The host name clients reach the hub by (this server's address or public host name);
    /// requests are routed to the hub by it. Unique among hubs.
    pub host_name: String,
    pub location: String,
    pub policies: Vec<HubPolicy>,
    pub created: String,
    pub etag: String,
}

impl Hub {
    /// The connection string of policy `key_name` (primary key); it holds a secret.
    pub fn connection_string(&self, key_name: &str) -> Option<super::ConnectionString> {
        self.policies.iter().find(|p| p.key_name.eq_ignore_ascii_case(key_name)).map(|p| super::ConnectionString {
            host_name: self.host_name.clone(),
            key_name: p.key_name.clone(),
            key: p.primary_key.clone(),
        })
    }
}

/// A device identity in an embedded hub, with its twin. Keys are secrets: `Debug` hides them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubDevice {
    pub device_id: String,
    pub generation_id: String,
    /// The device's etag (`etag` of the device JSON).
    pub etag: String,
    /// `enabled` or `disabled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub status_updated_time: String,
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_thumbprint: Option<String>,
    pub iot_edge: bool,
    /// The twin's etag and version.
    pub twin_etag: String,
    pub twin_version: i64,
    pub tags: Map<String, Value>,
    pub desired: Map<String, Value>,
    pub desired_version: i64,
    pub reported: Map<String, Value>,
    pub reported_version: i64,
    /// The store's own concurrency token (every write changes it).
    pub doc_etag: String,
}

impl std::fmt::Debug for HubDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubDevice")
            .field("device_id", &self.device_id)
            .field("auth_type", &self.auth_type)
            .field("iot_edge", &self.iot_edge)
            .finish_non_exhaustive()
    }
}
