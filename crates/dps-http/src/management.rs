//! The management API, shaped like Azure Resource Manager so the nouns match `az`: instances
//! (`Microsoft.Devices/provisioningServices`), their keys and CA certificates, and template
//! deployments (`Microsoft.Resources/deployments`). Authenticated with the admin credential.
//! Errors use ARM's `{"error": {"code", "message"}}` shape.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dps_core::model::{AccessRight, CaCertificate, Hub, HubRight, Instance};
use dps_core::service::{ResourceChange, DPS_RESOURCE_TYPE};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::{AppState, Request};

fn instance_id(state: &AppState, i: &Instance) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{}/providers/{DPS_RESOURCE_TYPE}/{}",
        state.subscription_id, i.resource_group, i.name
    )
}

/// The ARM view of an instance. Policy keys are never shown here (use listKeys); hub
/// connection strings are masked.
pub fn instance_view(state: &AppState, i: &Instance) -> Value {
    let hubs: Vec<Value> = i
        .iot_hubs
        .iter()
        .map(|h| {
            let mut v =
                json!({ "name": h.name, "connectionString": h.masked_connection_string(), "location": h.location });
            if let Some(w) = h.allocation_weight {
                v["allocationWeight"] = json!(w);
            }
            if let Some(a) = h.apply_allocation_policy {
                v["applyAllocationPolicy"] = json!(a);
            }
            v
        })
        .collect();
    let policies: Vec<Value> = i
        .authorization_policies
        .iter()
        .map(|p| json!({ "keyName": p.key_name, "rights": AccessRight::join(&p.rights) }))
        .collect();
    let mut props = json!({
        "state": i.state,
        "provisioningState": "Succeeded",
        "publicNetworkAccess": i.public_network_access,
        "iotHubs": hubs,
        "allocationPolicy": i.allocation_policy.as_str(),
        "serviceOperationsHostName": state.public_host,
        "deviceProvisioningHostName": state.public_host,
        "idScope": i.id_scope.as_str(),
        "authorizationPolicies": policies,
        "enableDataResidency": i.enable_data_residency,
    });
    if let Some(v) = i.min_tls_version {
        props["minTlsVersion"] = json!(v.as_str());
    }
    if !i.ip_filter_rules.is_empty() {
        props["ipFilterRules"] = json!(i.ip_filter_rules);
    }
    json!({
        "id": instance_id(state, i),
        "name": i.name,
        "type": DPS_RESOURCE_TYPE,
        "location": i.location,
        "tags": i.tags,
        "etag": i.etag,
        "resourcegroup": i.resource_group,
        "subscriptionid": state.subscription_id,
        "sku": { "name": i.sku.name, "tier": "Standard", "capacity": i.sku.capacity },
        "properties": props,
    })
}

/// The ARM-like view of an embedded hub (keys only through listkeys).
pub fn hub_view(state: &AppState, h: &Hub) -> Value {
    let policies: Vec<Value> =
        h.policies.iter().map(|p| json!({ "keyName": p.key_name, "rights": HubRight::join(&p.rights) })).collect();
    json!({
        "id": format!("/subscriptions/{}/providers/{HUB_RESOURCE_TYPE}/{}", state.subscription_id, h.name),
        "name": h.name,
        "type": HUB_RESOURCE_TYPE,
        "location": h.location,
        "etag": h.etag,
        "properties": {
            "state": "Active",
            "provisioningState": "Succeeded",
            "hostName": h.host_name,
            "embedded": true,
            "created": h.created,
            "authorizationPolicies": policies,
        },
    })
}

/// The resource type of embedded hubs.
pub const HUB_RESOURCE_TYPE: &str = "Microsoft.Devices/IotHubs";

fn certificate_view(state: &AppState, i: &Instance, c: &CaCertificate) -> Value {
    let mut props = json!({
        "subject": c.info.subject_name,
        "expiry": c.info.not_after_utc,
        "thumbprint": c.info.sha1_thumbprint,
        "sha256Thumbprint": c.info.sha256_thumbprint,
        "isVerified": c.is_verified,
        "created": c.created,
        "updated": c.updated,
        "certificate": c.certificate,
    });
    if let Some(code) = &c.verification_code {
        props["verificationCode"] = json!(code);
    }
    json!({
        "id": format!("{}/certificates/{}", instance_id(state, i), c.name),
        "name": c.name,
        "type": "Microsoft.Devices/provisioningServices/Certificates",
        "etag": c.etag,
        "properties": props,
    })
}

fn body_json(req: &Request) -> ApiResult<Value> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    let text = std::str::from_utf8(&req.body).map_err(|e| {
        ApiError::bad_request(format!("the body is not UTF-8 text (invalid byte at offset {})", e.valid_up_to()))
    })?;
    serde_json::from_str(&dps_arm::relax_json(text))
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn ok(v: Value) -> Response {
    Json(v).into_response()
}

/// The ARM error shape, logged once.
pub fn arm_error(state: &AppState, e: ApiError, method: &str, path: &str) -> Response {
    let wire = e.wire(state);
    crate::error::log_refusal(&wire, method, path);
    let code = match wire.status {
        400 => "InvalidRequest",
        401 => "AuthenticationFailed",
        404 => "ResourceNotFound",
        409 => "Conflict",
        412 => "PreconditionFailed",
        413 => "RequestTooLarge",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let status = StatusCode::from_u16(wire.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": {
        "code": code,
        "message": wire.message,
        "httpStatusCode": wire.status.to_string(),
        "errorCode": wire.error_code,
        "trackingId": wire.tracking_id,
    } });
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&wire.tracking_id) {
        r.headers_mut().insert("x-ms-request-id", v);
    }
    r
}

/// Routes `/subscriptions/…`; `None` if the path is not a management path.
pub async fn handle(state: &AppState, req: &Request) -> Option<ApiResult<Response>> {
    let seg: Vec<String> = req.segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    if seg.first().map(String::as_str) != Some("subscriptions") {
        return None;
    }
    Some(
        async {
            state.services.check_admin(req.header("authorization"))?;
            route(state, req, &seg).await
        }
        .await,
    )
}

async fn route(state: &AppState, req: &Request, seg: &[String]) -> ApiResult<Response> {
    let s = &state.services;
    let m = &req.method;
    let raw = &req.segments;
    let tail: Vec<&str> = seg.iter().skip(2).map(String::as_str).collect();
    match (tail.as_slice(), m) {
        (["providers", "microsoft.devices", "provisioningservices"], &Method::GET) => {
            let all: Vec<Value> = s.instances().await?.iter().map(|i| instance_view(state, i)).collect();
            Ok(ok(json!({ "value": all })))
        }
        (["providers", "microsoft.devices", "iothubs"], &Method::GET) => {
            let all: Vec<Value> = s.hubs().await?.iter().map(|h| hub_view(state, h)).collect();
            Ok(ok(json!({ "value": all })))
        }
        (["providers", "microsoft.devices", "iothubs", _], &Method::GET) => {
            Ok(ok(hub_view(state, &s.hub(&raw[5]).await?)))
        }
        (["providers", "microsoft.devices", "iothubs", _], &Method::PUT) => {
            let body = body_json(req)?;
            let props = body.get("properties").unwrap_or(&body);
            let host = props.get("hostName").and_then(Value::as_str).unwrap_or(&state.public_host);
            let location = body.get("location").and_then(Value::as_str);
            let hub = s.create_hub(&raw[5], host, location).await?;
            Ok((StatusCode::CREATED, Json(hub_view(state, &hub))).into_response())
        }
        (["providers", "microsoft.devices", "iothubs", _], &Method::DELETE) => {
            s.delete_hub(&raw[5]).await?;
            Ok(StatusCode::OK.into_response())
        }
        (["providers", "microsoft.devices", "iothubs", _, "listkeys"], &Method::POST) => {
            let hub = s.hub(&raw[5]).await?;
            let keys: Vec<Value> = hub
                .policies
                .iter()
                .map(|p| json!({ "keyName": p.key_name, "primaryKey": p.primary_key, "secondaryKey": p.secondary_key, "rights": HubRight::join(&p.rights) }))
                .collect();
            Ok(ok(json!({ "value": keys })))
        }
        (["resourcegroups", _, "providers", "microsoft.devices", "provisioningservices"], &Method::GET) => {
            let rg = &raw[3];
            let all: Vec<Value> = s
                .instances()
                .await?
                .iter()
                .filter(|i| i.resource_group.eq_ignore_ascii_case(rg))
                .map(|i| instance_view(state, i))
                .collect();
            Ok(ok(json!({ "value": all })))
        }
        (["resourcegroups", _, "providers", "microsoft.resources", "deployments", _], &Method::PUT) => {
            deploy(state, req, &raw[3], &raw[7]).await
        }
        (["resourcegroups", _, "providers", "microsoft.devices", "provisioningservices", _, rest @ ..], _) => {
            let (rg, name) = (&raw[3], &raw[7]);
            instance_route(state, req, rg, name, rest).await
        }
        _ => Err(ApiError::new(
            404,
            format!("{} /{} is not an operation of the management API", req.method, raw.join("/")),
        )),
    }
}

async fn in_group(state: &AppState, rg: &str, name: &str) -> ApiResult<Instance> {
    let i = state.services.instance(name).await?;
    if !i.resource_group.eq_ignore_ascii_case(rg) {
        return Err(dps_core::error::Error::InstanceNotFound(format!("{rg}/{name}")).into());
    }
    Ok(i)
}

async fn instance_route(state: &AppState, req: &Request, rg: &str, name: &str, rest: &[&str]) -> ApiResult<Response> {
    let s = &state.services;
    let if_match = req.header("if-match");
    match (rest, &req.method) {
        ([], &Method::GET) => Ok(ok(instance_view(state, &in_group(state, rg, name).await?))),
        ([], &Method::PUT) => {
            let mut body = body_json(req)?;
            if let Some(obj) = body.as_object_mut() {
                obj.insert("name".into(), json!(name));
            }
            let body = unmask_hubs(s.instance(name).await.ok().as_ref(), body);
            let out = s.put_instance(rg, &state.default_location, body, if_match).await?;
            let (inst, change) =
                out.resources.into_iter().next().ok_or_else(|| ApiError::new(500, "deployment returned nothing"))?;
            let status = if change == ResourceChange::Created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(instance_view(state, &inst))).into_response())
        }
        ([], &Method::DELETE) => {
            in_group(state, rg, name).await?;
            s.delete_instance(name).await?;
            Ok(StatusCode::OK.into_response())
        }
        (["listkeys"], &Method::POST) => {
            let i = in_group(state, rg, name).await?;
            let keys: Vec<Value> = i
                .authorization_policies
                .iter()
                .map(|p| json!({ "keyName": p.key_name, "primaryKey": p.primary_key, "secondaryKey": p.secondary_key, "rights": AccessRight::join(&p.rights) }))
                .collect();
            Ok(ok(json!({ "value": keys })))
        }
        (["tlsreadiness"], &Method::POST) => {
            let i = in_group(state, rg, name).await?;
            let body = body_json(req)?;
            let policy = readiness_policy(&i, &body)?;
            let report = s.tls_readiness(&i, &policy).await?;
            let refused: Vec<Value> = report
                .refused
                .iter()
                .map(|r| json!({ "registrationId": r.registration_id, "reason": r.reason }))
                .collect();
            Ok(ok(json!({
                "policy": {
                    "profile": policy.profile.name.as_str(),
                    "tls13": policy.tls13,
                    "minTlsVersion": policy.min_tls_version.map(|v| v.as_str()),
                    "groups": policy.groups.iter().map(|g| dps_core::tls::group_name(*g)).collect::<Vec<_>>(),
                },
                "evaluated": report.evaluated,
                "wouldBeRefused": refused.len(),
                "refused": refused,
                "acceptedAs": report.accepted,
                "withoutTlsFacts": report.without_tls_facts,
            })))
        }
        (["certificates"], &Method::GET) => {
            let i = in_group(state, rg, name).await?;
            let list: Vec<Value> = s.certificates(&i).await?.iter().map(|c| certificate_view(state, &i, c)).collect();
            Ok(ok(json!({ "value": list })))
        }
        (["certificates", _], &Method::GET) => {
            let i = in_group(state, rg, name).await?;
            Ok(ok(certificate_view(state, &i, &s.certificate(&i, &req.segments[9]).await?)))
        }
        (["certificates", _], &Method::PUT) => {
            let i = in_group(state, rg, name).await?;
            let body = body_json(req)?;
            let props = body.get("properties").unwrap_or(&body);
            let cert = props
                .get("certificate")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("properties.certificate is required (PEM or base64)"))?;
            let verified = props.get("isVerified").and_then(Value::as_bool).unwrap_or(false);
            let c = s.put_certificate(&i, &req.segments[9], cert, verified, if_match).await?;
            Ok(ok(certificate_view(state, &i, &c)))
        }
        (["certificates", _], &Method::DELETE) => {
            let i = in_group(state, rg, name).await?;
            s.delete_certificate(&i, &req.segments[9], if_match).await?;
            Ok(StatusCode::OK.into_response())
        }
        (["certificates", _, "generateverificationcode"], &Method::POST) => {
            let i = in_group(state, rg, name).await?;
            let c = s.generate_verification_code(&i, &req.segments[9], if_match).await?;
            Ok(ok(certificate_view(state, &i, &c)))
        }
        (["certificates", _, "verify"], &Method::POST) => {
            let i = in_group(state, rg, name).await?;
            let body = body_json(req)?;
            let proof = body
                .get("certificate")
                .or_else(|| body.get("properties").and_then(|p| p.get("certificate")))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad_request("certificate (the verification certificate, PEM or base64) is required")
                })?;
            let c = s.verify_certificate(&i, &req.segments[9], proof, if_match).await?;
            Ok(ok(certificate_view(state, &i, &c)))
        }
        _ => Err(ApiError::new(
            404,
            format!("{} /{} is not an operation of the management API", req.method, req.segments.join("/")),
        )),
    }
}

/// A GET-modify-PUT round trip sends masked hub keys back: restore them from the stored hub.
fn unmask_hubs(current: Option<&Instance>, mut body: Value) -> Value {
    let Some(cur) = current else { return body };
    if let Some(hubs) = body.pointer_mut("/properties/iotHubs").and_then(Value::as_array_mut) {
        for h in hubs {
            let Some(cs) = h.get("connectionString").and_then(Value::as_str) else { continue };
            if !cs.contains("SharedAccessKey=****") {
                continue;
            }
            let host = cs.split(';').find_map(|p| {
                // The masked key is not base64, so the string is read part by part here.
                p.split_once('=')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("HostName"))
                    .map(|(_, v)| v.to_ascii_lowercase())
            });
            if let Some(old) = cur.iot_hubs.iter().find(|o| Some(&o.name) == host.as_ref()) {
                h["connectionString"] = json!(old.connection_string);
            }
        }
    }
    body
}

async fn deploy(state: &AppState, req: &Request, rg: &str, deployment: &str) -> ApiResult<Response> {
    let body = body_json(req)?;
    let props = body.get("properties").cloned().unwrap_or_default();
    let template = props.get("template").ok_or_else(|| ApiError::bad_request("properties.template is required"))?;
    let template_text = serde_json::to_string(template).unwrap_or_default();
    let parameters_text = props.get("parameters").map(|p| json!({ "parameters": p }).to_string());
    let pairs: Vec<(String, String)> = props
        .get("parameterValues")
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect())
        .unwrap_or_default();
    let location =
        props.get("resourceGroupLocation").and_then(Value::as_str).unwrap_or(&state.default_location).to_owned();
    let input = dps_arm::DeploymentInput {
        template_text: &template_text,
        parameters: &pairs,
        parameters_file_text: parameters_text.as_deref(),
        resource_group: dps_arm::ResourceGroup {
            name: rg,
            location: &location,
            subscription_id: &state.subscription_id,
        },
    };
    let evaluated = dps_arm::evaluate(&input).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut resources = Vec::new();
    for r in &evaluated.resources {
        let current = state.services.instance(&r.name).await.ok();
        resources.push((r.resource_type.clone(), unmask_hubs(current.as_ref(), r.body.clone())));
    }
    let out = state.services.deploy(rg, &location, &resources).await?;
    let now = dps_core::time::format_utc(state.services.now_time());
    let changes: Vec<Value> = out
        .resources
        .iter()
        .map(|(i, c)| json!({ "id": instance_id(state, i), "name": i.name, "change": c.as_str() }))
        .collect();
    let output_resources: Vec<Value> =
        out.resources.iter().map(|(i, _)| json!({ "id": instance_id(state, i), "resourceGroup": rg })).collect();
    let mut r = Json(json!({
        "id": format!("/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Resources/deployments/{deployment}", state.subscription_id),
        "name": deployment,
        "type": "Microsoft.Resources/deployments",
        "resourceGroup": rg,
        "properties": {
            "provisioningState": "Succeeded",
            "mode": props.get("mode").and_then(Value::as_str).unwrap_or("Incremental"),
            "timestamp": now,
            "parameters": evaluated.parameters,
            "outputs": evaluated.outputs,
            "outputResources": output_resources,
            "changes": changes,
        }
    }))
    .into_response();
    r.headers_mut().insert("x-ms-deployment", HeaderValue::from_static("opendps"));
    Ok(r)
}

/// The policy to evaluate: the body's `profile`, `tls13`, `minTlsVersion`, `groups`, defaulting
/// to the default profile, TLS 1.2 only, the instance's own floor, and P-256 + P-384.
fn readiness_policy(i: &Instance, body: &Value) -> ApiResult<dps_core::tls::readiness::Policy> {
    use dps_core::tls::{Group, MinTlsVersion, ProfileName};
    let profile = match body.get("profile").and_then(Value::as_str) {
        None => ProfileName::default(),
        Some(p) => p.parse::<ProfileName>().map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let min_tls_version = match body.get("minTlsVersion").and_then(Value::as_str) {
        None => i.min_tls_version,
        Some(v) => Some(MinTlsVersion::parse(v).map_err(|e| ApiError::bad_request(e.to_string()))?),
    };
    let groups = match body.get("groups").and_then(Value::as_array) {
        None => Group::DEFAULT.iter().map(|g| g.code()).collect(),
        Some(list) => list
            .iter()
            .map(|g| {
                g.as_str()
                    .unwrap_or("")
                    .parse::<Group>()
                    .map(Group::code)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            })
            .collect::<ApiResult<Vec<u16>>>()?,
    };
    Ok(dps_core::tls::readiness::Policy {
        profile: profile.profile(),
        tls13: body.get("tls13").and_then(Value::as_bool).unwrap_or(false),
        groups,
        min_tls_version,
    })
}
