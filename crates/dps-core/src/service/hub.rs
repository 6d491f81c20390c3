//! The embedded IoT hub registry (docs/hub.md): hubs (management API), and the IoT Hub registry
//! REST API each hub serves (device identities with etags, twins, the devices query), with SAS
//! authentication by the hub's own shared access policies.
//!
//! A hub is found by the host name the client addressed; its SAS token must name that host and
//! be signed by one of the hub's policies, with the right the operation needs.

use serde_json::{json, Map, Value};

use super::enrollments::{validate_device_id, validate_key};
use super::Services;
use crate::error::{Error, Result};
use crate::model::{validate_instance_name, Hub, HubDevice, HubPolicy, HubRight, HUB_POLICIES};
use crate::store::{etag_matches, Precondition, StoreError};

/// The time IoT Hub reports for what never happened.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// Largest page of the device listing and of the query.
const MAX_PAGE: usize = 1000;

/// What a registry operation needs of the caller's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubAccess {
    /// Read identities (`RegistryRead`).
    Read,
    /// Create, update, delete identities (`RegistryWrite`).
    Write,
    /// Read twins, run queries (`RegistryRead` or `ServiceConnect`).
    TwinRead,
    /// Update twins (`RegistryWrite` or `ServiceConnect`).
    TwinWrite,
}

impl HubAccess {
    fn allowed(self, rights: &[HubRight]) -> bool {
        let has = |r| rights.contains(&r);
        match self {
            HubAccess::Read => has(HubRight::RegistryRead),
            HubAccess::Write => has(HubRight::RegistryWrite),
            HubAccess::TwinRead => has(HubRight::RegistryRead) || has(HubRight::ServiceConnect),
            HubAccess::TwinWrite => has(HubRight::RegistryWrite) || has(HubRight::ServiceConnect),
        }
    }

    fn needs(self) -> &'static str {
        match self {
            HubAccess::Read => "RegistryRead",
            HubAccess::Write => "RegistryWrite",
            HubAccess::TwinRead => "RegistryRead or ServiceConnect",
            HubAccess::TwinWrite => "RegistryWrite or ServiceConnect",
        }
    }
}

/// A registry refusal, in IoT Hub's terms (`ErrorCode:{code};{message}`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    ApiVersion(String),
    #[error("Device {0} not found")]
    DeviceNotFound(String),
    #[error("A device with ID '{0}' is already registered.")]
    DeviceExists(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    HubNotFound(String),
    #[error("{0}")]
    NoOperation(String),
    #[error("the registry is being changed concurrently; retry")]
    Conflict,
    #[error(transparent)]
    Domain(#[from] Error),
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Domain(Error::Store(e))
    }
}

impl HubError {
    pub fn status(&self) -> u16 {
        match self {
            HubError::Unauthorized(_) => 401,
            HubError::Invalid(_) | HubError::ApiVersion(_) => 400,
            HubError::DeviceNotFound(_) | HubError::HubNotFound(_) | HubError::NoOperation(_) => 404,
            HubError::DeviceExists(_) | HubError::Conflict => 409,
            HubError::PreconditionFailed(_) => 412,
            HubError::Domain(e) => e.kind().status(),
        }
    }

    /// IoT Hub's error code name.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::Unauthorized(_) => "IotHubUnauthorizedAccess",
            HubError::Invalid(_) => "ArgumentInvalid",
            HubError::ApiVersion(_) => "InvalidProtocolVersion",
            HubError::DeviceNotFound(_) => "DeviceNotFound",
            HubError::HubNotFound(_) => "IotHubNotFound",
            HubError::NoOperation(_) => "NotFound",
            HubError::DeviceExists(_) => "DeviceAlreadyExists",
            HubError::PreconditionFailed(_) => "PreconditionFailed",
            HubError::Conflict => "DeviceAlreadyExists",
            HubError::Domain(e) if e.kind().status() >= 500 => "ServerError",
            HubError::Domain(_) => "ArgumentInvalid",
        }
    }
}

type HubResult<T> = std::result::Result<T, HubError>;

/// The api-versions the registry answers: 2018-06-30 and every later date.
pub fn check_hub_api_version(v: Option<&str>) -> HubResult<()> {
    let v = v.ok_or_else(|| HubError::ApiVersion("the api-version query parameter is required".into()))?;
    let well_formed = v.len() >= 10 && v.is_char_boundary(10) && {
        let d = &v[..10];
        d.chars().enumerate().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() })
    };
    if !well_formed || &v[..10] < "2018-06-30" {
        return Err(HubError::ApiVersion(format!(
            "api-version {:?} is not supported; use 2018-06-30 or later (2021-04-12 is current)",
            crate::device::excerpt(v, 40)
        )));
    }
    Ok(())
}

/// `*` or `"*"`: any current etag (the SDKs quote it or not).
fn any_etag(tag: &str) -> bool {
    tag.trim().trim_matches('"') == "*"
}

fn twin_etag(version: i64) -> String {
    crate::base64::encode(&version.to_be_bytes())
}

fn obj(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// JSON merge patch (RFC 7386) of `patch` into `target`: `null` removes a member.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let slot = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// Twin properties without IoT Hub's own `$` members (`$metadata`, `$version`), which clients
/// send back but never set.
fn without_meta(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter().filter(|(k, _)| !k.starts_with('$')).collect()
}

/// The device identity JSON (`Device` of the registry API).
pub fn device_json(d: &HubDevice) -> Value {
    json!({
        "deviceId": d.device_id,
        "moduleId": null,
        "generationId": d.generation_id,
        "etag": d.etag,
        "status": d.status,
        "statusReason": d.status_reason,
        "statusUpdatedTime": d.status_updated_time,
        "connectionState": "Disconnected",
        "connectionStateUpdatedTime": NEVER,
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authentication": {
            "type": d.auth_type,
            "symmetricKey": { "primaryKey": d.primary_key, "secondaryKey": d.secondary_key },
            "x509Thumbprint": { "primaryThumbprint": d.primary_thumbprint, "secondaryThumbprint": d.secondary_thumbprint },
        },
        "capabilities": { "iotEdge": d.iot_edge },
    })
}

/// The twin JSON (`Twin` of the registry API).
pub fn twin_json(d: &HubDevice) -> Value {
    let props = |m: &Map<String, Value>, version: i64| {
        let mut m = m.clone();
        m.insert("$metadata".into(), json!({ "$lastUpdated": d.status_updated_time }));
        m.insert("$version".into(), json!(version));
        Value::Object(m)
    };
    json!({
        "deviceId": d.device_id,
        "etag": d.twin_etag,
        "deviceEtag": d.etag,
        "status": d.status,
        "statusUpdateTime": d.status_updated_time,
        "connectionState": "Disconnected",
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authenticationType": d.auth_type,
        "x509Thumbprint": { "primaryThumbprint": d.primary_thumbprint, "secondaryThumbprint": d.secondary_thumbprint },
        "modelId": "",
        "version": d.twin_version,
        "tags": d.tags,
        "properties": { "desired": props(&d.desired, d.desired_version), "reported": props(&d.reported, d.reported_version) },
        "capabilities": { "iotEdge": d.iot_edge },
    })
}

fn validate_thumbprint(which: &str, t: &str) -> HubResult<String> {
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if (hex.len() == 40 || hex.len() == 64) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_uppercase())
    } else {
        Err(HubError::Invalid(format!("{which} must be a SHA-1 or SHA-256 thumbprint (40 or 64 hex digits)")))
    }
}

impl Services {
    // -- hubs (management API) ----------------------------------------------------------------

    /// Creates hub `name`, reached at `host_name` (a name of this server: its public host unless
    /// the operator chose another), with the usual shared access policies and fresh keys.
    pub async fn create_hub(&self, name: &str, host_name: &str, location: Option<&str>) -> Result<Hub> {
        validate_instance_name(name).map_err(|m| Error::Invalid(m.replace("DPS name", "hub name")))?;
        let host = host_name.trim().to_ascii_lowercase();
        let parsed = crate::model::ConnectionString::parse(&format!(
            "HostName={host};SharedAccessKeyName=x;SharedAccessKey=AA=="
        ));
        if parsed.is_err() || host.is_empty() {
            return Err(Error::Invalid(format!(
                "host name {:?} is not a host name",
                crate::device::excerpt(&host, 100)
            )));
        }
        let hubs = self.store.hubs().await?;
        if let Some(other) = hubs.iter().find(|h| h.host_name.eq_ignore_ascii_case(&host)) {
            return Err(Error::Conflict(format!(
                "host name {host} is already the host of hub {}; hubs are told apart by host name, so give this one \
                 another name that reaches this server (--host-name)",
                other.name
            )));
        }
        let now = self.now();
        let policies = HUB_POLICIES
            .iter()
            .map(|(key_name, rights)| HubPolicy {
                key_name: (*key_name).to_owned(),
                primary_key: crate::ports::new_key(self.entropy.as_ref(), 32),
                secondary_key: crate::ports::new_key(self.entropy.as_ref(), 32),
                rights: rights.to_vec(),
            })
            .collect();
        let hub = Hub {
            name: name.to_owned(),
            host_name: host,
            location: location.unwrap_or(&self.region).to_owned(),
            policies,
            created: now,
            etag: self.etag(),
        };
        match self.store.put_hub(&hub, Precondition::MustNotExist).await {
            Ok(()) => Ok(hub),
            Err(StoreError::AlreadyExists) => Err(Error::Conflict(format!("hub {name} already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn hubs(&self) -> Result<Vec<Hub>> {
        Ok(self.store.hubs().await?)
    }

    pub async fn hub(&self, name: &str) -> Result<Hub> {
        self.store.hub(name).await?.ok_or_else(|| Error::HubNotFound(name.to_owned()))
    }

    /// Deletes hub `name` and every device identity in it.
    pub async fn delete_hub(&self, name: &str) -> Result<()> {
        let hub = self.hub(name).await?;
        loop {
            let page = self.store.hub_devices(&hub.name, None, MAX_PAGE).await?;
            if page.items.is_empty() {
                break;
            }
            for d in &page.items {
                match self.store.delete_hub_device(&hub.name, &d.device_id, Precondition::Any).await {
                    Ok(()) | Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match self.store.delete_hub(&hub.name, Precondition::Any).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    // -- the registry API ---------------------------------------------------------------------

    /// The hub served at `host` (the request's host, without port), if any.
    pub async fn hub_at(&self, host: &str) -> Result<Option<Hub>> {
        Ok(self.store.hubs().await?.into_iter().find(|h| h.host_name.eq_ignore_ascii_case(host)))
    }

    /// Authenticates a registry call to `hub` for `access`: a SAS token for the hub's host,
    /// signed by one of its policies (both keys tried, constant time) that has the right.
    pub fn hub_caller(&self, hub: &Hub, authorization: Option<&str>, access: HubAccess) -> HubResult<()> {
        let unauthorized = |m: String| HubError::Unauthorized(m);
        let token = authorization
            .ok_or_else(|| unauthorized("the request has no Authorization header (SharedAccessSignature)".into()))?;
        let claims = self.crypto.sas_claims(token, self.clock.now()).map_err(|e| unauthorized(e.to_string()))?;
        let resource = claims.resource.to_ascii_lowercase();
        let resource_host = resource.split('/').next().unwrap_or("");
        let skn = claims.key_name.unwrap_or_default();
        let policy = hub.policies.iter().find(|p| p.key_name.eq_ignore_ascii_case(&skn));
        let signed = policy.is_some_and(|p| {
            let primary = self.crypto.sas_signed_with(token, &p.primary_key);
            let secondary = self.crypto.sas_signed_with(token, &p.secondary_key);
            primary | secondary
        });
        let Some(policy) = policy.filter(|_| signed) else {
            return Err(unauthorized(format!(
                "the SAS token was not signed by a shared access policy of hub {}",
                hub.name
            )));
        };
        if !resource_host.eq_ignore_ascii_case(&hub.host_name) {
            return Err(unauthorized(format!(
                "the SAS token is for {:?}, not for this hub's host {}",
                crate::device::excerpt(resource_host, 100),
                hub.host_name
            )));
        }
        if !access.allowed(&policy.rights) {
            return Err(unauthorized(format!(
                "shared access policy {} ({}) does not have the {} right",
                policy.key_name,
                HubRight::join(&policy.rights),
                access.needs()
            )));
        }
        Ok(())
    }

    async fn hub_device_or_404(&self, hub: &Hub, id: &str) -> HubResult<HubDevice> {
        self.store.hub_device(&hub.name, id).await?.ok_or_else(|| HubError::DeviceNotFound(id.to_owned()))
    }

    pub async fn hub_get_device(&self, hub: &Hub, id: &str) -> HubResult<Value> {
        Ok(device_json(&self.hub_device_or_404(hub, id).await?))
    }

    /// `PUT /devices/{id}`: creates the device (no `If-Match`) or replaces it (`If-Match`: its
    /// etag or `*`). Keys left empty are generated; the twin is kept on update.
    pub async fn hub_put_device(&self, hub: &Hub, id: &str, body: &Value, if_match: Option<&str>) -> HubResult<Value> {
        validate_device_id(id).map_err(|e| HubError::Invalid(e.to_string()))?;
        let body = body.as_object().ok_or_else(|| HubError::Invalid("the body must be a Device JSON object".into()))?;
        if let Some(b) = body.get("deviceId").and_then(Value::as_str) {
            if b != id {
                return Err(HubError::Invalid(format!(
                    "deviceId {:?} in the body is not the device id of the path ({id})",
                    crate::device::excerpt(b, 128)
                )));
            }
        }
        let existing = self.store.hub_device(&hub.name, id).await?;
        let pre = match (&existing, if_match) {
            (Some(_), None) => return Err(HubError::DeviceExists(id.to_owned())),
            (None, Some(_)) => return Err(HubError::DeviceNotFound(id.to_owned())),
            (Some(d), Some(tag)) if !any_etag(tag) && !etag_matches(&d.etag, tag) => {
                return Err(HubError::PreconditionFailed(format!(
                    "the etag in If-Match does not match the current etag of device {id}"
                )))
            }
            (Some(d), Some(_)) => Precondition::IfMatch(&d.doc_etag),
            (None, None) => Precondition::MustNotExist,
        };
        let auth = obj(body.get("authentication"));
        let auth_type = auth.get("type").and_then(Value::as_str).unwrap_or("sas");
        let text = |m: &Map<String, Value>, k: &str| {
            m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
        };
        let now = self.now();
        let mut d = existing.clone().unwrap_or_else(|| HubDevice {
            device_id: id.to_owned(),
            generation_id: format!(
                "{:018}",
                u64::from_str_radix(&crate::ports::random_hex(self.entropy.as_ref(), 8), 16).unwrap_or(0)
                    % 1_000_000_000_000_000_000
            ),
            etag: String::new(),
            status: "enabled".into(),
            status_reason: None,
            status_updated_time: now.clone(),
            auth_type: String::new(),
            primary_key: None,
            secondary_key: None,
            primary_thumbprint: None,
            secondary_thumbprint: None,
            iot_edge: false,
            twin_etag: twin_etag(1),
            twin_version: 1,
            tags: Map::new(),
            desired: Map::new(),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
            doc_etag: String::new(),
        });
        match auth_type.to_ascii_lowercase().as_str() {
            "sas" => {
                let keys = obj(auth.get("symmetricKey"));
                let kept = |given: Option<String>, old: &Option<String>| {
                    given.or_else(|| old.clone()).unwrap_or_else(|| crate::ports::new_key(self.entropy.as_ref(), 32))
                };
                let primary = kept(text(&keys, "primaryKey"), &d.primary_key);
                let secondary = kept(text(&keys, "secondaryKey"), &d.secondary_key);
                validate_key("authentication.symmetricKey.primaryKey", &primary)
                    .map_err(|e| HubError::Invalid(e.to_string()))?;
                validate_key("authentication.symmetricKey.secondaryKey", &secondary)
                    .map_err(|e| HubError::Invalid(e.to_string()))?;
                (d.auth_type, d.primary_key, d.secondary_key) = ("sas".into(), Some(primary), Some(secondary));
                (d.primary_thumbprint, d.secondary_thumbprint) = (None, None);
            }
            "selfsigned" => {
                let t = obj(auth.get("x509Thumbprint"));
                let primary = text(&t, "primaryThumbprint").ok_or_else(|| {
                    HubError::Invalid(
                        "a selfSigned device needs authentication.x509Thumbprint.primaryThumbprint".into(),
                    )
                })?;
                d.primary_thumbprint = Some(validate_thumbprint("primaryThumbprint", &primary)?);
                d.secondary_thumbprint = text(&t, "secondaryThumbprint")
                    .map(|s| validate_thumbprint("secondaryThumbprint", &s))
                    .transpose()?;
                (d.auth_type, d.primary_key, d.secondary_key) = ("selfSigned".into(), None, None);
            }
            "certificateauthority" | "none" => {
                d.auth_type =
                    if auth_type.eq_ignore_ascii_case("none") { "none" } else { "certificateAuthority" }.into();
                (d.primary_key, d.secondary_key, d.primary_thumbprint, d.secondary_thumbprint) =
                    (None, None, None, None);
            }
            other => {
                return Err(HubError::Invalid(format!(
                    "authentication.type {:?} is not sas, selfSigned, certificateAuthority or none",
                    crate::device::excerpt(other, 40)
                )))
            }
        }
        let status = body.get("status").and_then(Value::as_str).unwrap_or("enabled").to_ascii_lowercase();
        if status != "enabled" && status != "disabled" {
            return Err(HubError::Invalid("status must be enabled or disabled".into()));
        }
        if status != d.status {
            d.status_updated_time = now;
        }
        d.status = status;
        d.status_reason = text(body, "statusReason");
        d.iot_edge = obj(body.get("capabilities")).get("iotEdge").and_then(Value::as_bool).unwrap_or(false);
        d.etag = crate::base64::encode(crate::ports::random_hex(self.entropy.as_ref(), 8).as_bytes());
        d.doc_etag = self.etag();
        match self.store.put_hub_device(&hub.name, &d, pre).await {
            Ok(()) => Ok(device_json(&d)),
            Err(StoreError::AlreadyExists) => Err(HubError::DeviceExists(id.to_owned())),
            Err(StoreError::PreconditionFailed | StoreError::NotFound) => Err(HubError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// `DELETE /devices/{id}` (`If-Match`: its etag or `*`; none means any).
    pub async fn hub_delete_device(&self, hub: &Hub, id: &str, if_match: Option<&str>) -> HubResult<()> {
        let d = self.hub_device_or_404(hub, id).await?;
        if let Some(tag) = if_match.filter(|t| !any_etag(t)) {
            if !etag_matches(&d.etag, tag) {
                return Err(HubError::PreconditionFailed(format!(
                    "the etag in If-Match does not match the current etag of device {id}"
                )));
            }
        }
        match self.store.delete_hub_device(&hub.name, id, Precondition::IfMatch(&d.doc_etag)).await {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound) => Err(HubError::DeviceNotFound(id.to_owned())),
            Err(StoreError::PreconditionFailed) => Err(HubError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// `GET /devices/?top=n`: the first `top` identities (1000 at most).
    pub async fn hub_list_devices(&self, hub: &Hub, top: Option<usize>) -> HubResult<Vec<Value>> {
        let top = top.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
        let page = self.store.hub_devices(&hub.name, None, top).await?;
        Ok(page.items.iter().map(device_json).collect())
    }

    pub async fn hub_get_twin(&self, hub: &Hub, id: &str) -> HubResult<Value> {
        Ok(twin_json(&self.hub_device_or_404(hub, id).await?))
    }

    /// `PATCH /twins/{id}` (merge tags and desired properties) or `PUT` (`replace`: tags and
    /// desired properties become the body's), under the twin's etag in `If-Match`.
    pub async fn hub_update_twin(
        &self,
        hub: &Hub,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        replace: bool,
    ) -> HubResult<Value> {
        let body = body.as_object().ok_or_else(|| HubError::Invalid("the body must be a Twin JSON object".into()))?;
        for (k, v) in [("tags", body.get("tags")), ("properties", body.get("properties"))] {
            if v.is_some_and(|v| !v.is_object() && !v.is_null()) {
                return Err(HubError::Invalid(format!("{k} must be a JSON object")));
            }
        }
        let props = obj(body.get("properties"));
        if props.get("reported").is_some_and(|r| !r.is_null()) {
            return Err(HubError::Invalid("reported properties are set by the device, not by the service".into()));
        }
        let mut d = self.hub_device_or_404(hub, id).await?;
        if let Some(tag) = if_match.filter(|t| !any_etag(t)) {
            if !etag_matches(&d.twin_etag, tag) {
                return Err(HubError::PreconditionFailed(format!(
                    "the etag in If-Match does not match the current etag of the twin of {id}"
                )));
            }
        }
        let tags = without_meta(obj(body.get("tags")));
        let desired = without_meta(obj(props.get("desired")));
        if replace {
            d.tags = tags;
            if d.desired != desired {
                d.desired = desired;
                d.desired_version += 1;
            }
        } else {
            merge(&mut d.tags, &tags);
            let before = d.desired.clone();
            merge(&mut d.desired, &desired);
            if before != d.desired {
                d.desired_version += 1;
            }
        }
        d.twin_version += 1;
        d.twin_etag = twin_etag(d.twin_version);
        let doc_etag = std::mem::replace(&mut d.doc_etag, self.etag());
        match self.store.put_hub_device(&hub.name, &d, Precondition::IfMatch(&doc_etag)).await {
            Ok(()) => Ok(twin_json(&d)),
            Err(StoreError::NotFound) => Err(HubError::DeviceNotFound(id.to_owned())),
            Err(StoreError::PreconditionFailed) => Err(HubError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /devices/query`: `SELECT * FROM devices` (the only form), paged by
    /// `x-ms-max-item-count` and `x-ms-continuation`. The twins, and the next continuation.
    pub async fn hub_query(
        &self,
        hub: &Hub,
        body: &Value,
        continuation: Option<&str>,
        max: Option<usize>,
    ) -> HubResult<(Vec<Value>, Option<String>)> {
        let query = body
            .get("query")
            .and_then(Value::as_str)
            .ok_or_else(|| HubError::Invalid("the body must be {\"query\": \"SELECT * FROM devices\"}".into()))?;
        let words: Vec<String> = query.split_whitespace().map(str::to_ascii_lowercase).collect();
        if words != ["select", "*", "from", "devices"] {
            return Err(HubError::Invalid(format!(
                "the query {:?} is not supported; this registry answers SELECT * FROM devices",
                crate::device::excerpt(query, 100)
            )));
        }
        let max = max.unwrap_or(100).clamp(1, MAX_PAGE);
        let page = self.store.hub_devices(&hub.name, continuation.filter(|c| !c.is_empty()), max).await?;
        Ok((page.items.iter().map(twin_json).collect(), page.continuation))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn api_versions() {
        for ok in ["2018-06-30", "2021-04-12", "2024-03-31", "2020-05-31-preview"] {
            assert!(check_hub_api_version(Some(ok)).is_ok(), "{ok}");
        }
        for bad in ["2018-04-01", "", "x", "2018-06-3", "héhéhéhéhé"] {
            assert!(check_hub_api_version(Some(bad)).is_err(), "{bad}");
        }
        assert!(check_hub_api_version(None).is_err());
    }

    #[test]
    fn merge_patch_removes_and_nests() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}}).as_object().cloned().unwrap();
        let p = json!({"a": null, "b": {"c": 5}, "e": "x"}).as_object().cloned().unwrap();
        merge(&mut t, &p);
        assert_eq!(Value::Object(t), json!({"b": {"c": 5, "d": 3}, "e": "x"}));
    }

    #[test]
    fn rights() {
        assert!(!HubAccess::Write.allowed(&[HubRight::RegistryRead]));
        assert!(HubAccess::Write.allowed(&[HubRight::RegistryRead, HubRight::RegistryWrite]));
        assert!(!HubAccess::TwinWrite.allowed(&[HubRight::RegistryRead]));
        assert!(HubAccess::TwinRead.allowed(&[HubRight::ServiceConnect]));
    }
}
