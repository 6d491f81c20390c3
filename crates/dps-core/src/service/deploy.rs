//! Deployments: ARM resources (already evaluated by `dps-arm`) → instances, all or nothing.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Services;
use crate::error::{Error, Result};
use crate::model::{
    validate_instance_name, AccessPolicy, AccessRight, IdScope, Instance, IpFilterAction, IpFilterRule, IpFilterTarget,
    LinkedHub, ServiceAllocationPolicy, Sku,
};
use crate::store::InstanceWrite;
use crate::tls::MinTlsVersion;

/// The resource type a deployment may hold.
pub const DPS_RESOURCE_TYPE: &str = "Microsoft.Devices/provisioningServices";
/// The policy every new instance gets unless the template names its own.
pub const OWNER_POLICY: &str = "provisioningserviceowner";

/// What happened to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceChange {
    Created,
    Updated,
    Unchanged,
}

impl ResourceChange {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceChange::Created => "Created",
            ResourceChange::Updated => "Updated",
            ResourceChange::Unchanged => "Unchanged",
        }
    }
}

/// The result of a deployment.
#[derive(Clone, Debug)]
pub struct DeployOutcome {
    pub resources: Vec<(Instance, ResourceChange)>,
}

/// Values for instances created without a template (the default instance).
#[derive(Clone, Debug)]
pub struct InstanceDefaults {
    pub name: String,
    pub resource_group: String,
    pub location: String,
}

/// What a template says about one instance, validated.
#[derive(Debug)]
struct Spec {
    name: String,
    location: String,
    sku: Sku,
    tags: BTreeMap<String, String>,
    min_tls_version: Option<MinTlsVersion>,
    allocation_policy: ServiceAllocationPolicy,
    iot_hubs: Option<Vec<LinkedHub>>,
    policies: Option<Vec<PolicySpec>>,
    enable_data_residency: bool,
    public_network_access: String,
    /// `None`: the template does not say (an existing instance keeps its rules).
    ip_filter_rules: Option<Vec<IpFilterRule>>,
}

#[derive(Debug)]
struct PolicySpec {
    key_name: String,
    primary: Option<String>,
    secondary: Option<String>,
    rights: Vec<AccessRight>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}

/// Parses an IoT hub connection string into its host name (lower-cased), validating every part.
pub fn parse_hub_connection_string(cs: &str) -> std::result::Result<String, String> {
    crate::model::ConnectionString::parse(cs).map(|c| c.host_name.to_ascii_lowercase()).map_err(|e| e.to_string())
}

/// Resource keys a template may carry: what OpenDPS implements, plus ARM's bookkeeping and the
/// read-only values a GET returns (clients PUT back what they read).
const RESOURCE_KEYS: &[&str] = &[
    "type",
    "apiVersion",
    "name",
    "location",
    "sku",
    "tags",
    "properties",
    "dependsOn",
    "condition",
    "comments",
    "id",
    "etag",
    "resourceGroup",
    "subscriptionId",
    "systemData",
    "identity",
];
/// `properties` keys: implemented, or read-only (ignored as ARM ignores them).
const PROPERTY_KEYS: &[&str] = &[
    "minTlsVersion",
    "allocationPolicy",
    "iotHubs",
    "authorizationPolicies",
    "enableDataResidency",
    "publicNetworkAccess",
    "ipFilterRules",
    "privateEndpointConnections",
    "state",
    "provisioningState",
    "serviceOperationsHostName",
    "deviceProvisioningHostName",
    "portalOperationsHostName",
    "idScope",
];
const SKU_KEYS: &[&str] = &["name", "capacity", "tier"];
const HUB_KEYS: &[&str] = &["name", "connectionString", "location", "allocationWeight", "applyAllocationPolicy"];
const POLICY_KEYS: &[&str] = &["keyName", "primaryKey", "secondaryKey", "rights"];
const IP_RULE_KEYS: &[&str] = &["filterName", "action", "ipMask", "target"];
/// The most IP filter rules an instance may have.
pub const MAX_IP_FILTER_RULES: usize = 100;

/// Every key of `v` (an object) not in `known` is a problem: a setting OpenDPS does not
/// implement is refused, never stored and ignored.
fn refuse_unknown(v: &Value, known: &[&str], path: &str, p: &mut Problems) {
    for k in v.as_object().into_iter().flat_map(|o| o.keys()) {
        if !known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
            p.push(
                &format!("{path}.{}", crate::device::excerpt(k, 100)),
                "is not supported by OpenDPS (docs/operations.md, \"Template properties\"); remove it",
            );
        }
    }
}

/// Settings OpenDPS accepts only with the value that means "off".
fn refuse_unimplemented(body: &Value, props: &Value, path: &str, pp: &str, p: &mut Problems) {
    match str_at(body, "identity") {
        None | Some(Value::Null) => {}
        Some(id) if str_at(id, "type").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("none")) => {}
        Some(_) => p.push(&format!("{path}.identity"), "managed identities are not supported by OpenDPS; remove it"),
    }
    match str_at(props, "privateEndpointConnections") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => p.push(
            &format!("{pp}.privateEndpointConnections"),
            "private endpoints are not supported by OpenDPS; remove them",
        ),
    }
}

fn parse_ip_filter_rules(v: &Value, pp: &str, p: &mut Problems) -> Vec<IpFilterRule> {
    let path = format!("{pp}.ipFilterRules");
    let Some(list) = v.as_array() else {
        p.push(&path, "must be an array of {filterName, action, ipMask, target}");
        return Vec::new();
    };
    if list.len() > MAX_IP_FILTER_RULES {
        p.push(&path, format!("has {} rules; at most {MAX_IP_FILTER_RULES} are allowed", list.len()));
        return Vec::new();
    }
    let mut out: Vec<IpFilterRule> = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let rp = format!("{path}[{i}]");
        refuse_unknown(r, IP_RULE_KEYS, &rp, p);
        let text = |k: &str| str_at(r, k).and_then(Value::as_str);
        let name = match text("filterName") {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 128
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) =>
            {
                n
            }
            Some(n) => {
                p.push(
                    &format!("{rp}.filterName"),
                    format!("{:?} must be 1 to 128 letters, digits, - _ . :", crate::device::excerpt(n, 140)),
                );
                continue;
            }
            None => {
                p.push(&format!("{rp}.filterName"), "is required");
                continue;
            }
        };
        if out.iter().any(|o| o.filter_name.eq_ignore_ascii_case(name)) {
            p.push(
                &format!("{rp}.filterName"),
                format!("{name} is used by an earlier rule; names are unique (case-insensitive)"),
            );
        }
        let action = match text("action") {
            Some(a) if a.eq_ignore_ascii_case("accept") => IpFilterAction::Accept,
            Some(a) if a.eq_ignore_ascii_case("reject") => IpFilterAction::Reject,
            other => {
                p.push(&format!("{rp}.action"), format!("must be Accept or Reject, got {other:?}"));
                continue;
            }
        };
        let mask = match text("ipMask").map(|m| (m, IpFilterRule::parse_mask(m))) {
            Some((m, Ok(_))) => m.trim().to_owned(),
            Some((_, Err(e))) => {
                p.push(&format!("{rp}.ipMask"), e);
                continue;
            }
            None => {
                p.push(&format!("{rp}.ipMask"), "is required");
                continue;
            }
        };
        let target = match text("target") {
            None => IpFilterTarget::All,
            Some(t) if t.eq_ignore_ascii_case("all") => IpFilterTarget::All,
            Some(t) if t.eq_ignore_ascii_case("serviceApi") => IpFilterTarget::ServiceApi,
            Some(t) if t.eq_ignore_ascii_case("deviceApi") => IpFilterTarget::DeviceApi,
            Some(t) => {
                p.push(&format!("{rp}.target"), format!("{t:?} is not all, serviceApi or deviceApi"));
                continue;
            }
        };
        out.push(IpFilterRule { filter_name: name.to_owned(), action, ip_mask: mask, target });
    }
    out
}

fn parse_spec(path: &str, body: &Value, default_location: &str, node_region: &str, p: &mut Problems) -> Option<Spec> {
    refuse_unknown(body, RESOURCE_KEYS, path, p);
    let name = match str_at(body, "name").and_then(Value::as_str) {
        Some(n) => {
            if let Err(e) = validate_instance_name(n) {
                p.push(&format!("{path}.name"), e);
            }
            n.to_owned()
        }
        None => {
            p.push(&format!("{path}.name"), "is required");
            return None;
        }
    };
    let location = match str_at(body, "location").and_then(Value::as_str) {
        Some(l) if !l.trim().is_empty() => l.to_owned(),
        Some(_) => {
            p.push(&format!("{path}.location"), "must not be empty");
            default_location.to_owned()
        }
        None => default_location.to_owned(),
    };
    let sku = match str_at(body, "sku") {
        None => {
            p.push(&format!("{path}.sku"), "is required ({\"name\": \"S1\", \"capacity\": 1})");
            Sku { name: "S1".into(), capacity: 1 }
        }
        Some(s) => {
            refuse_unknown(s, SKU_KEYS, &format!("{path}.sku"), p);
            let name = str_at(s, "name").and_then(Value::as_str).unwrap_or("");
            if !name.eq_ignore_ascii_case("S1") {
                p.push(&format!("{path}.sku.name"), format!("{name:?} is not a DPS SKU (only S1 exists)"));
            }
            let capacity = match str_at(s, "capacity") {
                None => 1,
                Some(c) => match c.as_i64().or_else(|| c.as_str().and_then(|s| s.parse().ok())) {
                    Some(n) if (1..=200).contains(&n) => n,
                    _ => {
                        p.push(&format!("{path}.sku.capacity"), format!("{c} is not a number of units from 1 to 200"));
                        1
                    }
                },
            };
            Sku { name: "S1".into(), capacity }
        }
    };
    let mut tags = BTreeMap::new();
    if let Some(t) = str_at(body, "tags") {
        match t.as_object() {
            Some(o) => {
                for (k, v) in o {
                    match v.as_str() {
                        Some(s) => {
                            tags.insert(k.clone(), s.to_owned());
                        }
                        None => p.push(&format!("{path}.tags.{k}"), "tag values must be strings"),
                    }
                }
            }
            None => p.push(&format!("{path}.tags"), "must be an object"),
        }
    }
    let empty = Value::Object(serde_json::Map::new());
    let props = str_at(body, "properties").unwrap_or(&empty);
    let pp = format!("{path}.properties");
    refuse_unknown(props, PROPERTY_KEYS, &pp, p);
    refuse_unimplemented(body, props, path, &pp, p);
    let min_tls_version = match str_at(props, "minTlsVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match MinTlsVersion::parse(s) {
            Ok(v) => Some(v),
            Err(e) => {
                p.push(&format!("{pp}.minTlsVersion"), e);
                None
            }
        },
        Some(other) => {
            p.push(&format!("{pp}.minTlsVersion"), format!("must be the string \"1.2\" or \"1.3\", got {other}"));
            None
        }
    };
    let allocation_policy = match str_at(props, "allocationPolicy").and_then(Value::as_str) {
        None => ServiceAllocationPolicy::Hashed,
        Some(s) => ServiceAllocationPolicy::parse(s).unwrap_or_else(|e| {
            p.push(&format!("{pp}.allocationPolicy"), e);
            ServiceAllocationPolicy::Hashed
        }),
    };
    let iot_hubs = str_at(props, "iotHubs").and_then(Value::as_array).map(|hubs| {
        let mut out: Vec<LinkedHub> = Vec::new();
        for (i, h) in hubs.iter().enumerate() {
            let hp = format!("{pp}.iotHubs[{i}]");
            refuse_unknown(h, HUB_KEYS, &hp, p);
            match parse_linked_hub(h, node_region) {
                Ok(hub) if out.iter().any(|o| o.name == hub.name) => {
                    p.push(&hp, format!("hub {} is linked twice", hub.name))
                }
                Ok(hub) => out.push(hub),
                Err(e) => p.push(&hp, e),
            }
        }
        out
    });
    let policies = str_at(props, "authorizationPolicies").and_then(Value::as_array).map(|list| {
        let mut out: Vec<PolicySpec> = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let ap = format!("{pp}.authorizationPolicies[{i}]");
            refuse_unknown(a, POLICY_KEYS, &ap, p);
            match parse_policy(a) {
                Ok(pol) if out.iter().any(|o| o.key_name.eq_ignore_ascii_case(&pol.key_name)) => {
                    p.push(&ap, format!("policy {} is listed twice", pol.key_name))
                }
                Ok(pol) => out.push(pol),
                Err(e) => p.push(&ap, e),
            }
        }
        out
    });
    let enable_data_residency = str_at(props, "enableDataResidency").and_then(Value::as_bool).unwrap_or(false);
    let public_network_access = match str_at(props, "publicNetworkAccess").and_then(Value::as_str) {
        None => "Enabled".to_owned(),
        Some(s) if s.eq_ignore_ascii_case("enabled") => "Enabled".to_owned(),
        Some(s) if s.eq_ignore_ascii_case("disabled") => "Disabled".to_owned(),
        Some(s) => {
            p.push(&format!("{pp}.publicNetworkAccess"), format!("{s:?} is not Enabled or Disabled"));
            "Enabled".to_owned()
        }
    };
    let ip_filter_rules = match str_at(props, "ipFilterRules") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ip_filter_rules(v, &pp, p)),
    };
    Some(Spec {
        ip_filter_rules,
        name,
        location,
        sku,
        tags,
        min_tls_version,
        allocation_policy,
        iot_hubs,
        policies,
        enable_data_residency,
        public_network_access,
    })
}

/// Validates one `iotHubs[]` entry. The location must be a region of the distance table
/// (geoLatency needs it) or this node's own region.
pub fn parse_linked_hub(h: &Value, node_region: &str) -> std::result::Result<LinkedHub, String> {
    let cs = str_at(h, "connectionString").and_then(Value::as_str).ok_or("connectionString is required")?;
    let name = parse_hub_connection_string(cs)?;
    let location =
        str_at(h, "location").and_then(Value::as_str).filter(|l| !l.is_empty()).ok_or("location is required")?;
    if !(super::regions::is_known(location) || location.eq_ignore_ascii_case(node_region)) {
        return Err(format!(
            "location {location:?} is not a known region (e.g. westus, westeurope; see docs/allocation.md) nor this node's region {node_region:?}"
        ));
    }
    let allocation_weight = match str_at(h, "allocationWeight") {
        None | Some(Value::Null) => None,
        Some(w) => match w.as_i64() {
            Some(n) if (1..=1000).contains(&n) => Some(n),
            _ => return Err(format!("allocationWeight must be a whole number from 1 to 1000, got {w}")),
        },
    };
    let apply_allocation_policy = match str_at(h, "applyAllocationPolicy") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(format!("applyAllocationPolicy must be true or false, got {other}")),
    };
    Ok(LinkedHub {
        name,
        connection_string: cs.to_owned(),
        location: location.to_owned(),
        allocation_weight,
        apply_allocation_policy,
    })
}

fn parse_policy(a: &Value) -> std::result::Result<PolicySpec, String> {
    let key_name = str_at(a, "keyName").and_then(Value::as_str).ok_or("keyName is required")?;
    if key_name.is_empty()
        || key_name.len() > 64
        || !key_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("keyName {key_name:?} must be 1 to 64 letters, digits, - _ ."));
    }
    let rights = AccessRight::parse_list(str_at(a, "rights").and_then(Value::as_str).ok_or("rights is required")?)?;
    let key = |k: &str| -> std::result::Result<Option<String>, String> {
        match str_at(a, k).and_then(Value::as_str) {
            None | Some("") => Ok(None),
            Some(v) => match crate::base64::decode(v) {
                Some(bytes) if (16..=64).contains(&bytes.len()) => Ok(Some(v.to_owned())),
                _ => Err(format!("{k} must be base64 of 16 to 64 bytes")),
            },
        }
    };
    Ok(PolicySpec {
        key_name: key_name.to_owned(),
        primary: key("primaryKey")?,
        secondary: key("secondaryKey")?,
        rights,
    })
}

impl Services {
    fn new_policy_key(&self) -> String {
        crate::ports::new_key(self.entropy.as_ref(), 32)
    }

    fn policies_from(&self, specs: Option<Vec<PolicySpec>>, existing: &[AccessPolicy]) -> Vec<AccessPolicy> {
        match specs {
            None if !existing.is_empty() => existing.to_vec(),
            None => vec![AccessPolicy {
                key_name: OWNER_POLICY.into(),
                primary_key: self.new_policy_key(),
                secondary_key: self.new_policy_key(),
                rights: AccessRight::ALL.to_vec(),
            }],
            Some(specs) => specs
                .into_iter()
                .map(|s| {
                    let old = existing.iter().find(|p| p.key_name.eq_ignore_ascii_case(&s.key_name));
                    AccessPolicy {
                        primary_key: s
                            .primary
                            .or_else(|| old.map(|o| o.primary_key.clone()))
                            .unwrap_or_else(|| self.new_policy_key()),
                        secondary_key: s
                            .secondary
                            .or_else(|| old.map(|o| o.secondary_key.clone()))
                            .unwrap_or_else(|| self.new_policy_key()),
                        key_name: s.key_name,
                        rights: s.rights,
                    }
                })
                .collect(),
        }
    }

    async fn new_id_scope(&self) -> Result<IdScope> {
        for _ in 0..16 {
            let mut b = [0u8; 4];
            self.entropy.fill(&mut b);
            let scope = IdScope::from_bytes(b);
            if self.store.instance_by_scope(&scope).await?.is_none() {
                return Ok(scope);
            }
        }
        Err(Error::Conflict("could not find a free ID scope".into()))
    }

    /// Applies a deployment: every resource valid and applicable, or nothing written.
    /// Redeploying the same template changes nothing; `minTlsVersion` and `location` are fixed
    /// at creation.
    pub async fn deploy(
        &self,
        resource_group: &str,
        resource_group_location: &str,
        resources: &[(String, Value)],
    ) -> Result<DeployOutcome> {
        self.deploy_if(resource_group, resource_group_location, resources, None).await
    }

    /// Creates or replaces one instance (the management API's PUT), if its etag still matches
    /// `if_match` (`*`: any existing instance): the etag is part of the write's precondition.
    pub async fn put_instance(
        &self,
        resource_group: &str,
        resource_group_location: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> Result<DeployOutcome> {
        self.deploy_if(resource_group, resource_group_location, &[(DPS_RESOURCE_TYPE.to_owned(), body)], if_match).await
    }

    async fn deploy_if(
        &self,
        resource_group: &str,
        resource_group_location: &str,
        resources: &[(String, Value)],
        if_match: Option<&str>,
    ) -> Result<DeployOutcome> {
        let mut problems = Problems(Vec::new());
        let mut specs = Vec::new();
        for (i, (ty, body)) in resources.iter().enumerate() {
            let path = format!("resources[{i}]");
            if !ty.eq_ignore_ascii_case(DPS_RESOURCE_TYPE) {
                problems.push(&format!("{path}.type"), format!("{ty:?} is not supported (only {DPS_RESOURCE_TYPE})"));
                continue;
            }
            if let Some(s) = parse_spec(&path, body, resource_group_location, &self.region, &mut problems) {
                if specs.iter().any(|o: &Spec| o.name.eq_ignore_ascii_case(&s.name)) {
                    problems.push(&format!("{path}.name"), format!("{} is deployed twice", s.name));
                }
                specs.push(s);
            }
        }
        if !problems.0.is_empty() {
            return Err(Error::Invalid(format!("the template is not valid:\n  {}", problems.0.join("\n  "))));
        }
        let now = self.now();
        let mut writes = Vec::new();
        let mut outcome = Vec::new();
        for spec in specs {
            let current = self.store.instance(&spec.name).await?;
            if let Some(tag) = if_match.map(str::trim).filter(|t| *t != "*") {
                if !current.as_ref().is_some_and(|c| crate::store::etag_matches(&c.etag, tag)) {
                    return Err(Error::PreconditionFailed(format!("DPS instance {}", spec.name)));
                }
            } else if if_match.is_some() && current.is_none() {
                return Err(Error::PreconditionFailed(format!("DPS instance {}", spec.name)));
            }
            match current {
                Some(cur) => {
                    if !cur.resource_group.eq_ignore_ascii_case(resource_group) {
                        return Err(Error::Conflict(format!(
                            "the DPS name {} is taken by resource group {}",
                            spec.name, cur.resource_group
                        )));
                    }
                    if spec.min_tls_version != cur.min_tls_version {
                        let show = |v: Option<MinTlsVersion>| {
                            v.map_or("not set".to_owned(), |v| format!("\"{}\"", v.as_str()))
                        };
                        return Err(Error::Immutable {
                            property: "properties.minTlsVersion",
                            current: show(cur.min_tls_version),
                            attempt: format!("the template sets {}; nothing was changed", show(spec.min_tls_version)),
                        });
                    }
                    if !spec.location.eq_ignore_ascii_case(&cur.location) {
                        return Err(Error::Immutable {
                            property: "location",
                            current: cur.location.clone(),
                            attempt: format!("the template sets {}; nothing was changed", spec.location),
                        });
                    }
                    let mut next = cur.clone();
                    next.sku = spec.sku;
                    next.tags = spec.tags;
                    next.allocation_policy = spec.allocation_policy;
                    if let Some(h) = spec.iot_hubs {
                        next.iot_hubs = h;
                    }
                    next.authorization_policies = self.policies_from(spec.policies, &cur.authorization_policies);
                    next.enable_data_residency = spec.enable_data_residency;
                    next.public_network_access = spec.public_network_access;
                    if let Some(rules) = spec.ip_filter_rules {
                        next.ip_filter_rules = rules;
                    }
                    if next == cur {
                        outcome.push((cur, ResourceChange::Unchanged));
                    } else {
                        next.updated = now.clone();
                        next.etag = self.etag();
                        writes.push(InstanceWrite::Update { instance: next.clone(), expected_etag: cur.etag.clone() });
                        outcome.push((next, ResourceChange::Updated));
                    }
                }
                None => {
                    let inst = Instance {
                        name: spec.name,
                        resource_group: resource_group.to_owned(),
                        location: spec.location,
                        sku: spec.sku,
                        tags: spec.tags,
                        id_scope: self.new_id_scope().await?,
                        min_tls_version: spec.min_tls_version,
                        allocation_policy: spec.allocation_policy,
                        iot_hubs: spec.iot_hubs.unwrap_or_default(),
                        authorization_policies: self.policies_from(spec.policies, &[]),
                        enable_data_residency: spec.enable_data_residency,
                        public_network_access: spec.public_network_access,
                        ip_filter_rules: spec.ip_filter_rules.unwrap_or_default(),
                        state: "Active".into(),
                        created: now.clone(),
                        updated: now.clone(),
                        etag: self.etag(),
                    };
                    writes.push(InstanceWrite::Create(inst.clone()));
                    outcome.push((inst, ResourceChange::Created));
                }
            }
        }
        if !writes.is_empty() {
            self.store.write_instances(&writes).await.map_err(|e| match e {
                crate::store::StoreError::PreconditionFailed | crate::store::StoreError::AlreadyExists => {
                    Error::Conflict(
                        "an instance changed while the deployment ran; nothing was changed, deploy again".into(),
                    )
                }
                other => Error::Store(other),
            })?;
        }
        Ok(DeployOutcome { resources: outcome })
    }

    /// Creates the default instance if the server has no instance at all (first start).
    pub async fn ensure_default_instance(&self, d: &InstanceDefaults) -> Result<Option<Instance>> {
        if !self.store.instances().await?.is_empty() {
            return Ok(None);
        }
        let body = serde_json::json!({ "name": d.name, "location": d.location, "sku": {"name": "S1", "capacity": 1}, "properties": {} });
        match self.deploy(&d.resource_group, &d.location, &[(DPS_RESOURCE_TYPE.to_owned(), body)]).await {
            Ok(out) => Ok(out.resources.into_iter().next().map(|(i, _)| i)),
            // Another node sharing the store created it first.
            Err(Error::Conflict(_)) if !self.store.instances().await?.is_empty() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn instance(&self, name: &str) -> Result<Instance> {
        self.store.instance(name).await?.ok_or_else(|| Error::InstanceNotFound(name.to_owned()))
    }

    pub async fn delete_instance(&self, name: &str) -> Result<()> {
        match self.store.delete_instance(name).await {
            Err(crate::store::StoreError::NotFound) => Err(Error::InstanceNotFound(name.to_owned())),
            other => Ok(other?),
        }
    }

    /// Replaces an instance's mutable parts (linked hubs, policies), keeping the rest.
    pub async fn update_instance(
        &self,
        name: &str,
        change: impl FnOnce(&mut Instance) -> Result<()>,
    ) -> Result<Instance> {
        let cur = self.instance(name).await?;
        let mut next = cur.clone();
        change(&mut next)?;
        next.min_tls_version = cur.min_tls_version;
        next.id_scope = cur.id_scope.clone();
        if next == cur {
            return Ok(cur);
        }
        next.updated = self.now();
        next.etag = self.etag();
        self.store
            .write_instances(&[InstanceWrite::Update { instance: next.clone(), expected_etag: cur.etag.clone() }])
            .await
            .map_err(|e| match e {
                crate::store::StoreError::PreconditionFailed => {
                    Error::Conflict(format!("instance {name} changed meanwhile; try again"))
                }
                other => Error::Store(other),
            })?;
        Ok(next)
    }

    /// A fresh policy key (for `opendps dps policy renew-key` and new policies).
    pub fn generate_policy_key(&self) -> String {
        self.new_policy_key()
    }
}
