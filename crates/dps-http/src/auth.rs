//! Who is calling: the service API's SAS policies (dps-protocol.md §4.5) and the management
//! API's admin credential.

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use dps_attest::sas::SasToken;
use dps_core::model::{AccessRight, Instance};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Clock skew tolerated on token expiry.
pub const SKEW: Duration = Duration::from_secs(300);

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The host the client addressed, without port.
pub fn request_host(h: &HeaderMap) -> String {
    let host = header(h, "host").unwrap_or("");
    let host = if host.starts_with('[') {
        host.split(']').next().map(|s| &s[1..]).unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    host.to_ascii_lowercase()
}

/// Authenticates a service API call and resolves the instance it addresses.
///
/// The instance is the one whose name prefixes the host (`mydps.example.com`), or else the one
/// whose policy key signed the token: connection strings printed by opendps carry the server's
/// address, shared by every instance, so the key is what tells instances apart.
pub async fn service_caller(state: &AppState, h: &HeaderMap, right: AccessRight) -> ApiResult<Instance> {
    let auth = header(h, "authorization")
        .ok_or_else(|| ApiError::unauthorized("the request has no Authorization header (SharedAccessSignature)"))?;
    let token = SasToken::parse(auth).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    token.check_expiry(SystemTime::now(), SKEW).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let host = request_host(h);
    let instances =
        state.services.store.instances().await.map_err(|e| ApiError::from(dps_core::error::Error::Store(e)))?;
    let by_host: Vec<&Instance> = instances
        .iter()
        .filter(|i| host.strip_prefix(&i.name.to_ascii_lowercase()).is_some_and(|r| r.starts_with('.')))
        .collect();
    let candidates: Vec<&Instance> = if by_host.is_empty() { instances.iter().collect() } else { by_host };
    let skn = token.skn.clone().unwrap_or_default();
    for inst in candidates {
        let Some(policy) = inst.authorization_policies.iter().find(|p| p.key_name.eq_ignore_ascii_case(&skn)) else {
            continue;
        };
        if !(token.signed_with(&policy.primary_key) || token.signed_with(&policy.secondary_key)) {
            continue;
        }
        let resource = token.resource().unwrap_or_default().to_ascii_lowercase();
        let resource_host = resource.split('/').next().unwrap_or("");
        let ok_resource = resource_host == host
            || resource_host.starts_with(&format!("{}.", inst.name.to_ascii_lowercase()))
            || resource_host == state.public_host.to_ascii_lowercase();
        if !ok_resource {
            return Err(ApiError::unauthorized(format!("the SAS token is for {resource_host}, not this service")));
        }
        if !policy.rights.contains(&right) {
            return Err(ApiError::unauthorized(format!(
                "shared access policy {} does not have the {} right",
                policy.key_name,
                right.as_str()
            )));
        }
        return Ok(inst.clone());
    }
    Err(ApiError::unauthorized("the SAS token was not signed by a shared access policy of this service"))
}

/// Checks the management API's bearer credential (created at first start, 0600 in the data dir).
pub fn admin(state: &AppState, h: &HeaderMap) -> ApiResult<()> {
    let given = header(h, "authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| ApiError::unauthorized("the management API needs Authorization: Bearer <admin token> (opendps reads it from the data directory)"))?;
    if dps_attest::ct_eq(given.trim().as_bytes(), state.admin_token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("the admin token is not valid"))
    }
}
