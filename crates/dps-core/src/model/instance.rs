use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::IdScope;
use crate::tls::MinTlsVersion;

/// Service-level allocation policy (ARM, PascalCase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceAllocationPolicy {
    #[default]
    Hashed,
    GeoLatency,
    Static,
}

impl ServiceAllocationPolicy {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "hashed" => Ok(Self::Hashed),
            "geolatency" => Ok(Self::GeoLatency),
            "static" => Ok(Self::Static),
            _ => Err(format!("allocationPolicy {s:?} is not Hashed, GeoLatency or Static")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hashed => "Hashed",
            Self::GeoLatency => "GeoLatency",
            Self::Static => "Static",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sku {
    pub name: String,
    pub capacity: i64,
}

/// A right of a shared access policy (ARM `AccessRightsDescription`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccessRight {
    ServiceConfig,
    EnrollmentRead,
    EnrollmentWrite,
    DeviceConnect,
    RegistrationStatusRead,
    RegistrationStatusWrite,
}

impl AccessRight {
    pub const ALL: [AccessRight; 6] = [
        AccessRight::ServiceConfig,
        AccessRight::EnrollmentRead,
        AccessRight::EnrollmentWrite,
        AccessRight::DeviceConnect,
        AccessRight::RegistrationStatusRead,
        AccessRight::RegistrationStatusWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessRight::ServiceConfig => "ServiceConfig",
            AccessRight::EnrollmentRead => "EnrollmentRead",
            AccessRight::EnrollmentWrite => "EnrollmentWrite",
            AccessRight::DeviceConnect => "DeviceConnect",
            AccessRight::RegistrationStatusRead => "RegistrationStatusRead",
            AccessRight::RegistrationStatusWrite => "RegistrationStatusWrite",
        }
    }

    /// Parses `"ServiceConfig, EnrollmentRead"` (comma-separated, case-insensitive).
    pub fn parse_list(s: &str) -> Result<Vec<AccessRight>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let r = AccessRight::ALL
                .into_iter()
                .find(|r| r.as_str().eq_ignore_ascii_case(part))
                .ok_or_else(|| format!("unknown right {part:?} (expected {})", Self::names()))?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        if out.is_empty() {
            return Err(format!("rights must name at least one of {}", Self::names()));
        }
        out.sort();
        Ok(out)
    }

    fn names() -> String {
        AccessRight::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    }

    pub fn join(rights: &[AccessRight]) -> String {
        rights.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A shared access policy of an instance (`authorizationPolicies[]`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    pub key_name: String,
    pub primary_key: String,
    pub secondary_key: String,
    pub rights: Vec<AccessRight>,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("key_name", &self.key_name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

/// A linked IoT hub (`iotHubs[]`, docs/protocol.md, "Management API and deployments").
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkedHub {
    /// The hub's host name (`name` in ARM), from the connection string.
    pub name: String,
    pub connection_string: String,
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_allocation_policy: Option<bool>,
}

impl std::fmt::Debug for LinkedHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedHub")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("allocation_weight", &self.allocation_weight)
            .finish_non_exhaustive()
    }
}

impl LinkedHub {
    /// The connection string with the key masked, as ARM returns it.
    pub fn masked_connection_string(&self) -> String {
        super::ConnectionString::parse(&self.connection_string)
            .map_or_else(|_| "SharedAccessKey=****".to_owned(), |c| c.masked())
    }

    /// Whether this hub takes part in allocation (weight > 0 and applyAllocationPolicy not false).
    pub fn allocatable(&self) -> bool {
        self.apply_allocation_policy != Some(false)
    }

    pub fn weight(&self) -> i64 {
        self.allocation_weight.unwrap_or(1)
    }
}

/// A DPS instance (`Microsoft.Devices/provisioningServices`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub sku: Sku,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub id_scope: IdScope,
    /// Fixed at creation (docs/tls.md, "minTlsVersion per instance"); nothing may change it afterwards.
    #[serde(default, with = "min_tls_serde", skip_serializing_if = "Option::is_none")]
    pub min_tls_version: Option<MinTlsVersion>,
    #[serde(default)]
    pub allocation_policy: ServiceAllocationPolicy,
    #[serde(default)]
    pub iot_hubs: Vec<LinkedHub>,
    #[serde(default)]
    pub authorization_policies: Vec<AccessPolicy>,
    #[serde(default)]
    pub enable_data_residency: bool,
    #[serde(default = "enabled")]
    pub public_network_access: String,
    /// IP filter rules, in the order they are evaluated (docs/operations.md, "IP filter rules and public network access").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_filter_rules: Vec<IpFilterRule>,
    pub state: String,
    pub created: String,
    pub updated: String,
    pub etag: String,
}

fn enabled() -> String {
    "Enabled".into()
}

/// What an IP filter rule does with a matching address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFilterAction {
    Accept,
    Reject,
}

/// Which traffic an IP filter rule applies to (ARM `target`, camelCase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IpFilterTarget {
    #[default]
    All,
    ServiceApi,
    DeviceApi,
}

impl IpFilterTarget {
    /// Whether a rule with this target applies to traffic of `api`.
    pub fn covers(self, api: crate::observe::Api) -> bool {
        use crate::observe::Api;
        match self {
            IpFilterTarget::All => matches!(api, Api::Device | Api::Service),
            IpFilterTarget::ServiceApi => api == Api::Service,
            IpFilterTarget::DeviceApi => api == Api::Device,
        }
    }
}

/// One `ipFilterRules[]` entry: `ipMask` is an address or a CIDR block, validated at deploy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpFilterRule {
    pub filter_name: String,
    pub action: IpFilterAction,
    pub ip_mask: String,
    #[serde(default)]
    pub target: IpFilterTarget,
}

impl IpFilterRule {
    /// Parses an `ipMask`: an IPv4 or IPv6 address (a /32 or /128) or a CIDR block.
    pub fn parse_mask(mask: &str) -> Result<ipnet::IpNet, String> {
        let mask = mask.trim();
        mask.parse::<ipnet::IpNet>()
            .or_else(|_| mask.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("ipMask {mask:?} is not an IP address or a CIDR block (e.g. 192.168.100.0/22)"))
    }

    /// Whether this rule's mask covers `ip`. An IPv4-mapped IPv6 address is compared as IPv4;
    /// `0.0.0.0/0` (DPS's "every address") covers IPv6 peers too.
    pub fn matches(&self, ip: std::net::IpAddr) -> bool {
        let Ok(net) = Self::parse_mask(&self.ip_mask) else { return false };
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        match (net, ip) {
            (ipnet::IpNet::V4(n), std::net::IpAddr::V6(_)) => n.prefix_len() == 0,
            (net, ip) => net.contains(&ip),
        }
    }
}

/// Why an instance's network rules refuse a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkRefusal {
    /// `publicNetworkAccess` is `Disabled`: OpenDPS has no private endpoints, so every device
    /// and service API request of the instance is refused.
    PublicNetworkAccessDisabled,
    /// The first IP filter rule that matches the address rejects it.
    IpFilter,
}

impl NetworkRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkRefusal::PublicNetworkAccessDisabled => "public_network_access_disabled",
            NetworkRefusal::IpFilter => "ip_filter",
        }
    }
}

impl Instance {
    /// Whether the instance's network rules admit a request of `api` from `peer`: with
    /// `publicNetworkAccess` disabled, none; otherwise the first IP filter rule whose target
    /// covers `api` and whose mask matches decides, and an address no rule matches is
    /// accepted (DPS's order semantics). The management API is never filtered.
    pub fn network_access(&self, peer: std::net::IpAddr, api: crate::observe::Api) -> Result<(), NetworkRefusal> {
        if !matches!(api, crate::observe::Api::Device | crate::observe::Api::Service) {
            return Ok(());
        }
        if self.public_network_access.eq_ignore_ascii_case("disabled") {
            return Err(NetworkRefusal::PublicNetworkAccessDisabled);
        }
        match self.ip_filter_rules.iter().find(|r| r.target.covers(api) && r.matches(peer)) {
            Some(r) if r.action == IpFilterAction::Reject => Err(NetworkRefusal::IpFilter),
            _ => Ok(()),
        }
    }
}

mod min_tls_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::tls::MinTlsVersion;

    pub(super) fn serialize<S: Serializer>(v: &Option<MinTlsVersion>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(v.as_str()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MinTlsVersion>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        v.map(|s| MinTlsVersion::parse(&s).map_err(serde::de::Error::custom)).transpose()
    }
}
