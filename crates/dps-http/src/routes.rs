//! Every operation the HTTPS listener answers, in one table: the source of truth that
//! `docs/openapi.yaml` is checked against (both ways), and that the server's own answers are
//! checked against in `crates/dps-server/tests/openapi.rs` (every route here is answered, the
//! other methods on these paths and paths outside the table are not).
//!
//! Paths use the OpenAPI template syntax; matching in the server is case-insensitive.

/// Which API an operation belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Devices: SAS token or X.509 client certificate (docs/protocol.md).
    Device,
    /// DPS service API: SAS token of a shared access policy.
    Service,
    /// ARM-shaped management API: the admin bearer token.
    Management,
    /// The registry API of an embedded IoT hub (docs/hub.md): SAS token of a hub policy,
    /// answered for the hub whose host name the request's `Host` names.
    Hub,
    /// No credential: health, the OpenAPI document.
    Public,
}

/// One operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub api: Api,
    /// The `operationId` in docs/openapi.yaml.
    pub operation_id: &'static str,
}

const fn r(method: &'static str, path: &'static str, api: Api, operation_id: &'static str) -> Route {
    Route { method, path, api, operation_id }
}

/// A path under one DPS instance of the management API.
macro_rules! arm {
    ($tail:literal) => {
        concat!(
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Devices/provisioningServices/{provisioningServiceName}",
            $tail
        )
    };
}

/// The instance path of the management API.
pub const INSTANCE_PATH: &str = arm!("");

/// The table.
pub const ROUTES: &[Route] = &[
    r("GET", "/health", Api::Public, "Health"),
    r("GET", "/health/ready", Api::Public, "Readiness"),
    r("GET", "/openapi.yaml", Api::Public, "OpenApiDocument"),
    // Device API.
    r("PUT", "/{idScope}/registrations/{registrationId}/register", Api::Device, "RuntimeRegistration_RegisterDevice"),
    r(
        "GET",
        "/{idScope}/registrations/{registrationId}/operations/{operationId}",
        Api::Device,
        "RuntimeRegistration_OperationStatusLookup",
    ),
    r("POST", "/{idScope}/registrations/{registrationId}", Api::Device, "RuntimeRegistration_DeviceRegistrationStatusLookup"),
    r("GET", "/$iothub/websocket", Api::Device, "MqttOverWebSocket"),
    r("GET", "/", Api::Device, "MqttOverWebSocketRoot"),
    // Service API.
    r("POST", "/enrollments", Api::Service, "IndividualEnrollment_RunBulkOperation"),
    r("POST", "/enrollments/query", Api::Service, "IndividualEnrollment_Query"),
    r("GET", "/enrollments/{id}", Api::Service, "IndividualEnrollment_Get"),
    r("PUT", "/enrollments/{id}", Api::Service, "IndividualEnrollment_CreateOrUpdate"),
    r("DELETE", "/enrollments/{id}", Api::Service, "IndividualEnrollment_Delete"),
    r("POST", "/enrollments/{id}/attestationmechanism", Api::Service, "IndividualEnrollment_GetAttestationMechanism"),
    r("POST", "/enrollmentGroups", Api::Service, "EnrollmentGroup_RunBulkOperation"),
    r("POST", "/enrollmentGroups/query", Api::Service, "EnrollmentGroup_Query"),
    r("GET", "/enrollmentGroups/{id}", Api::Service, "EnrollmentGroup_Get"),
    r("PUT", "/enrollmentGroups/{id}", Api::Service, "EnrollmentGroup_CreateOrUpdate"),
    r("DELETE", "/enrollmentGroups/{id}", Api::Service, "EnrollmentGroup_Delete"),
    r("POST", "/enrollmentGroups/{id}/attestationmechanism", Api::Service, "EnrollmentGroup_GetAttestationMechanism"),
    r("POST", "/registrations/query", Api::Service, "DeviceRegistrationState_QueryAll"),
    r("GET", "/registrations/{id}", Api::Service, "DeviceRegistrationState_Get"),
    r("DELETE", "/registrations/{id}", Api::Service, "DeviceRegistrationState_Delete"),
    r("POST", "/registrations/{id}/query", Api::Service, "DeviceRegistrationState_Query"),
    // Registry API of embedded IoT hubs.
    r("GET", "/devices", Api::Hub, "Devices_GetDevices"),
    r("POST", "/devices/query", Api::Hub, "Query_GetTwins"),
    r("GET", "/devices/{id}", Api::Hub, "Devices_GetIdentity"),
    r("PUT", "/devices/{id}", Api::Hub, "Devices_CreateOrUpdateIdentity"),
    r("DELETE", "/devices/{id}", Api::Hub, "Devices_DeleteIdentity"),
    r("GET", "/twins/{id}", Api::Hub, "Devices_GetTwin"),
    r("PATCH", "/twins/{id}", Api::Hub, "Devices_UpdateTwin"),
    r("PUT", "/twins/{id}", Api::Hub, "Devices_ReplaceTwin"),
    // Management API.
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Devices/IotHubs", Api::Management, "EmbeddedHub_List"),
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Devices/IotHubs/{hubName}", Api::Management, "EmbeddedHub_Get"),
    r("PUT", "/subscriptions/{subscriptionId}/providers/Microsoft.Devices/IotHubs/{hubName}", Api::Management, "EmbeddedHub_Create"),
    r("DELETE", "/subscriptions/{subscriptionId}/providers/Microsoft.Devices/IotHubs/{hubName}", Api::Management, "EmbeddedHub_Delete"),
    r(
        "POST",
        "/subscriptions/{subscriptionId}/providers/Microsoft.Devices/IotHubs/{hubName}/listkeys",
        Api::Management,
        "EmbeddedHub_ListKeys",
    ),
    r("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.Devices/provisioningServices", Api::Management, "IotDpsResource_ListBySubscription"),
    r(
        "GET",
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Devices/provisioningServices",
        Api::Management,
        "IotDpsResource_ListByResourceGroup",
    ),
    r(
        "PUT",
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Resources/deployments/{deploymentName}",
        Api::Management,
        "Deployments_CreateOrUpdate",
    ),
    r("GET", arm!(""), Api::Management, "IotDpsResource_Get"),
    r("PUT", arm!(""), Api::Management, "IotDpsResource_CreateOrUpdate"),
    r("DELETE", arm!(""), Api::Management, "IotDpsResource_Delete"),
    r("POST", arm!("/listKeys"), Api::Management, "IotDpsResource_ListKeys"),
    r("POST", arm!("/tlsReadiness"), Api::Management, "IotDpsResource_TlsReadiness"),
    r("GET", arm!("/certificates"), Api::Management, "DpsCertificate_List"),
    r("GET", arm!("/certificates/{certificateName}"), Api::Management, "DpsCertificate_Get"),
    r("PUT", arm!("/certificates/{certificateName}"), Api::Management, "DpsCertificate_CreateOrUpdate"),
    r("DELETE", arm!("/certificates/{certificateName}"), Api::Management, "DpsCertificate_Delete"),
    r(
        "POST",
        arm!("/certificates/{certificateName}/generateVerificationCode"),
        Api::Management,
        "DpsCertificate_GenerateVerificationCode",
    ),
    r("POST", arm!("/certificates/{certificateName}/verify"), Api::Management, "DpsCertificate_VerifyCertificate"),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_norway::from_str(crate::openapi::DOCUMENT).expect("docs/openapi.yaml is YAML")
    }

    #[test]
    fn table_and_document_list_the_same_operations() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                documented.insert((method.to_ascii_uppercase(), path.clone(), id.to_owned()));
            }
        }
        let table: BTreeSet<(String, String, String)> =
            ROUTES.iter().map(|r| (r.method.to_owned(), r.path.to_owned(), r.operation_id.to_owned())).collect();
        let missing: Vec<_> = table.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&table).collect();
        assert!(missing.is_empty(), "served but not in docs/openapi.yaml: {missing:#?}");
        assert!(extra.is_empty(), "in docs/openapi.yaml but not served: {extra:#?}");
        assert_eq!(table.len(), ROUTES.len(), "no route is listed twice");
    }

    /// Every `$ref` points at a schema, parameter or response the document defines; every
    /// operation has responses and declares its path parameters.
    #[test]
    fn document_is_self_consistent() {
        let doc = document();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r.clone());
                    }
                    o.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not local"));
            assert!(doc.pointer(pointer).is_some(), "$ref {r} points nowhere");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            let names: Vec<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: responses");
                let mut declared = Vec::new();
                for p in item["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(op["parameters"].as_array().into_iter().flatten())
                {
                    let p = match p.get("$ref").and_then(Value::as_str) {
                        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
                        None => p,
                    };
                    if p["in"] == "path" {
                        declared.push(p["name"].as_str().unwrap().to_owned());
                    }
                }
                for n in &names {
                    assert!(declared.iter().any(|d| d == n), "{method} {path}: path parameter {n} not declared");
                }
            }
        }
    }
}
