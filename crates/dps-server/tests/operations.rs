//! Operating the server (docs/operations.md): the admin listener's Prometheus metrics, scraped
//! and parsed after real registrations over HTTPS and MQTT; health probes; and an instance's
//! network rules (`ipFilterRules`, `publicNetworkAccess`) enforced on the device and service
//! APIs, with unsupported template properties refused at deploy time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::{admin_get, http, scrape, start, value, Client, TestServer};
use dps_core::model::{AttestationMechanism, AttestationType, EnrollmentGroup, Instance, SymmetricKeyAttestation};
use mqttbytes::v4::{self, Connect, Login, Packet, Publish};
use mqttbytes::QoS;
use serde_json::{json, Value};

const GROUP_KEY: &str = "c2VjcmV0LWdyb3VwLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OWFiY2RlZg==";
const HUB: &str = "hub-ops.azure-devices.net";

fn later() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

fn device_token(scope: &str, id: &str, key: &str) -> String {
    dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), key, later(), Some("registration")).unwrap()
}

fn device_key(id: &str) -> String {
    dps_attest::derive_device_key(GROUP_KEY, id).unwrap()
}

/// A server with a linked hub and a symmetric-key group; returns it and the ID scope.
async fn setup() -> (TestServer, Instance) {
    let s = start("").await;
    let inst = common::link_hub(&s, HUB).await;
    let group: EnrollmentGroup = serde_json::from_value(json!({
        "enrollmentGroupId": "ops-group",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": GROUP_KEY}},
    }))
    .unwrap();
    assert_eq!(group.attestation.kind, AttestationType::SymmetricKey);
    let _: Option<AttestationMechanism> = None;
    let _: Option<SymmetricKeyAttestation> = None;
    s.server.state.services.put_group(&inst, "ops-group", group, None).await.unwrap();
    (s, inst)
}

/// HTTPS register with the device's own key (or `key`); returns the status and body.
async fn register_https(s: &TestServer, scope: &str, id: &str, key: Option<&str>) -> (u16, Value) {
    let key = key.map_or_else(|| device_key(id), str::to_owned);
    let path = format!("/{scope}/registrations/{id}/register?api-version=2021-06-01");
    let body = json!({ "registrationId": id }).to_string();
    let (status, _, v) = http(s, "PUT", &path, Some(device_token(scope, id, &key)), &body).await;
    (status, v)
}

async fn poll_https(s: &TestServer, scope: &str, id: &str, op: &str) -> (u16, Value) {
    let path = format!("/{scope}/registrations/{id}/operations/{op}?api-version=2021-06-01");
    let (status, _, v) = http(s, "GET", &path, Some(device_token(scope, id, &device_key(id))), "").await;
    (status, v)
}

/// Connects over MQTT as `id` and sends one register request; returns the response's status.
fn register_mqtt(addr: SocketAddr, scope: &str, id: &str) -> u16 {
    let mut done = Client::default().connect(addr).unwrap();
    let mut c = Connect::new(id);
    c.keep_alive = 30;
    c.login = Some(Login::new(
        format!("{scope}/registrations/{id}/api-version=2019-03-31"),
        device_token(scope, id, &device_key(id)),
    ));
    let send = |stream: &mut openssl::ssl::SslStream<std::net::TcpStream>, p: &dyn Fn(&mut BytesMut)| {
        let mut out = BytesMut::new();
        p(&mut out);
        stream.write_all(&out).unwrap();
    };
    let mut buf = BytesMut::new();
    let mut recv = |stream: &mut openssl::ssl::SslStream<std::net::TcpStream>| loop {
        match v4::read(&mut buf, 1 << 20) {
            Ok(p) => return p,
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet: {e:?}"),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    send(&mut done.stream, &|b| {
        c.write(b).unwrap();
    });
    assert!(matches!(recv(&mut done.stream), Packet::ConnAck(a) if a.code as u8 == 0));
    let p = Publish::new("$dps/registrations/PUT/iotdps-register/?$rid=1", QoS::AtMostOnce, "");
    send(&mut done.stream, &|b| {
        p.write(b).unwrap();
    });
    let Packet::Publish(r) = recv(&mut done.stream) else { panic!("no response") };
    let status = r.topic.strip_prefix("$dps/registrations/res/").unwrap().split('/').next().unwrap();
    status.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_devices_did_and_health_probes_answer() {
    let (s, inst) = setup().await;
    let scope = inst.id_scope.to_string();
    let admin = s.server.admin_addr.expect("admin listener on");
    let (live, _) = tokio::task::spawn_blocking(move || admin_get(admin, "/health/live")).await.unwrap();
    let (ready, _) = tokio::task::spawn_blocking(move || admin_get(admin, "/health/ready")).await.unwrap();
    assert_eq!((live, ready), (200, 200));

    // Two devices register and poll over HTTPS (a fresh connection per request), one presents a
    // wrong key, one registers over MQTT.
    for id in ["ops-1", "ops-2"] {
        let (status, v) = register_https(&s, &scope, id, None).await;
        assert_eq!(status, 202, "{v}");
        let (status, v) = poll_https(&s, &scope, id, v["operationId"].as_str().unwrap()).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("assigned")), "{v}");
    }
    let (status, _) = register_https(&s, &scope, "ops-3", Some("d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")).await;
    assert_eq!(status, 401);
    let (mqtt, sc) = (s.mqtt(), scope.clone());
    assert_eq!(tokio::task::spawn_blocking(move || register_mqtt(mqtt, &sc, "ops-4")).await.unwrap(), 202);
    // A TLS handshake that fails: plain text to the HTTPS port.
    let https = s.https();
    tokio::task::spawn_blocking(move || common::raw_exchange(https, b"GET / HTTP/1.1\r\n\r\n")).await.unwrap();

    let m = scrape(&s).await;
    let i = ("instance", "opendps");
    let reg = "opendps_registration_attempts_total";
    assert_eq!(value(&m, reg, &[i, ("protocol", "https"), ("result", "assigned")]), 2.0);
    assert_eq!(value(&m, reg, &[i, ("protocol", "https"), ("result", "refused")]), 1.0);
    assert_eq!(value(&m, reg, &[i, ("protocol", "mqtt"), ("result", "assigned")]), 1.0);
    let assigned = "opendps_device_assignments_total";
    assert_eq!(value(&m, assigned, &[i, ("protocol", "https"), ("hub", HUB)]), 2.0);
    assert_eq!(value(&m, assigned, &[i, ("protocol", "mqtt"), ("hub", HUB)]), 1.0);
    let att = "opendps_attestation_attempts_total";
    // Register and poll each authenticate on their own connection: 2 devices × 2.
    assert_eq!(value(&m, att, &[i, ("protocol", "https"), ("result", "success")]), 4.0);
    assert_eq!(value(&m, att, &[i, ("protocol", "https"), ("result", "failure")]), 1.0);
    assert_eq!(value(&m, att, &[i, ("protocol", "mqtt"), ("result", "success")]), 1.0);
    // Every HTTPS connection above was one full handshake; the plain-text one failed.
    let handshakes = value(&m, "opendps_tls_handshakes_total", &[("listener", "https")]);
    assert!(handshakes >= 5.0, "{handshakes}");
    assert!(value(&m, "opendps_tls_handshake_failures_total", &[("listener", "https")]) >= 1.0);
    assert!(value(&m, "opendps_tls_handshakes_total", &[("listener", "mqtt"), ("version", "TLSv1.2")]) >= 1.0);
    let latency = "opendps_request_duration_seconds_count";
    assert_eq!(value(&m, latency, &[("protocol", "https"), ("api", "device"), ("status", "202")]), 2.0);
    assert_eq!(value(&m, latency, &[("protocol", "https"), ("api", "device"), ("status", "401")]), 1.0);
    assert_eq!(value(&m, latency, &[("protocol", "mqtt"), ("api", "device"), ("status", "202")]), 1.0);
    assert!(
        value(&m, "opendps_store_operation_duration_seconds_count", &[("operation", "put"), ("result", "ok")]) >= 4.0
    );
    assert!(m.samples.iter().any(|s| s.metric == "opendps_connections_open"), "the gauge is exported");

    // Unknown admin paths are 404; the admin listener is plain HTTP, not the device API.
    let (status, _) = tokio::task::spawn_blocking(move || admin_get(admin, "/nope")).await.unwrap();
    assert_eq!(status, 404);
    s.server.shutdown().await;
}

/// Replaces the default instance's network settings through the management API's PUT path
/// (the same validation as a template deployment).
async fn set_network(s: &TestServer, inst: &Instance, properties: Value) -> Result<Instance, String> {
    let mut props =
        json!({ "iotHubs": [{ "connectionString": inst.iot_hubs[0].connection_string, "location": "local" }] });
    props.as_object_mut().unwrap().extend(properties.as_object().unwrap().clone());
    let body = json!({ "name": inst.name, "location": inst.location, "sku": {"name": "S1", "capacity": 1}, "properties": props });
    s.server
        .state
        .services
        .put_instance(&inst.resource_group, "local", body, None)
        .await
        .map(|o| o.resources.into_iter().next().unwrap().0)
        .map_err(|e| e.to_string())
}

async fn service_query(s: &TestServer, inst: &Instance) -> u16 {
    let owner = &inst.authorization_policies[0];
    let auth = dps_attest::sas::make_token("127.0.0.1", &owner.primary_key, later(), Some(&owner.key_name)).unwrap();
    http(s, "POST", "/enrollments/query?api-version=2021-10-01", Some(auth), r#"{"query":"*"}"#).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn ip_filter_rules_and_public_network_access_are_enforced() {
    let (s, inst) = setup().await;
    let scope = inst.id_scope.to_string();
    let mqtt = s.mqtt();
    let mqtt_status = |id: &'static str| {
        let sc = scope.clone();
        tokio::task::spawn_blocking(move || register_mqtt(mqtt, &sc, id))
    };
    assert_eq!(register_https(&s, &scope, "f-1", None).await.0, 202);
    assert_eq!(service_query(&s, &inst).await, 200);

    // A rule rejecting the test client's address for the device API only.
    let reject_local = |target: &str| json!({ "ipFilterRules": [{ "filterName": "nolocal", "action": "Reject", "ipMask": "127.0.0.0/8", "target": target }] });
    let inst = set_network(&s, &inst, reject_local("deviceApi")).await.unwrap();
    assert_eq!(inst.ip_filter_rules.len(), 1);
    let (status, v) = register_https(&s, &scope, "f-1", None).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["errorCode"], 401_002, "the DPS 401, which names no rule: {v}");
    assert!(!v["message"].as_str().unwrap().contains("nolocal"), "{v}");
    assert_eq!(mqtt_status("f-2").await.unwrap(), 401);
    assert_eq!(service_query(&s, &inst).await, 200, "the service API is not a target of this rule");

    // Target all: the service API is refused too; the management API never is.
    let inst = set_network(&s, &inst, reject_local("all")).await.unwrap();
    assert_eq!(service_query(&s, &inst).await, 401);
    assert_eq!(register_https(&s, &scope, "f-1", None).await.0, 401);
    let (status, _, _) =
        http(&s, "GET", "/subscriptions/x/resourceGroups/opendps/providers/Microsoft.Devices/provisioningServices/opendps?api-version=2022-02-05",
            Some(format!("Bearer {}", s.server.admin_token)), "").await;
    assert_eq!(status, 200);

    // Order: the first matching rule decides.
    let accept_first = json!({ "ipFilterRules": [
        { "filterName": "me", "action": "Accept", "ipMask": "127.0.0.1", "target": "all" },
        { "filterName": "rest", "action": "Reject", "ipMask": "0.0.0.0/0", "target": "all" },
    ]});
    let inst = set_network(&s, &inst, accept_first).await.unwrap();
    assert_eq!(register_https(&s, &scope, "f-1", None).await.0, 202);
    assert_eq!(mqtt_status("f-3").await.unwrap(), 202);
    assert_eq!(service_query(&s, &inst).await, 200);

    // publicNetworkAccess Disabled: device and service traffic refused (no private endpoints).
    let inst = set_network(&s, &inst, json!({ "publicNetworkAccess": "Disabled" })).await.unwrap();
    assert_eq!(register_https(&s, &scope, "f-1", None).await.0, 401);
    assert_eq!(mqtt_status("f-4").await.unwrap(), 401);
    assert_eq!(service_query(&s, &inst).await, 401);
    let inst = set_network(&s, &inst, json!({ "publicNetworkAccess": "Enabled", "ipFilterRules": [] })).await.unwrap();
    assert_eq!(register_https(&s, &scope, "f-1", None).await.0, 202);
    assert_eq!(service_query(&s, &inst).await, 200);

    let m = scrape(&s).await;
    let refused = "opendps_network_refusals_total";
    assert_eq!(value(&m, refused, &[("api", "device"), ("reason", "ip_filter")]), 3.0);
    assert_eq!(value(&m, refused, &[("api", "service"), ("reason", "ip_filter")]), 1.0);
    assert_eq!(value(&m, refused, &[("api", "device"), ("reason", "public_network_access_disabled")]), 2.0);

    // Bad rules and settings OpenDPS does not implement are refused, each with its path.
    for (props, words) in [
        (
            json!({ "ipFilterRules": [{ "filterName": "x", "action": "Deny", "ipMask": "10.0.0.0/8" }] }),
            "ipFilterRules[0].action",
        ),
        (
            json!({ "ipFilterRules": [{ "filterName": "x", "action": "Reject", "ipMask": "10.0.0.0/33" }] }),
            "ipFilterRules[0].ipMask",
        ),
        (
            json!({ "ipFilterRules": [{ "filterName": "x", "action": "Reject", "ipMask": "10.0.0.1", "target": "hub" }] }),
            "ipFilterRules[0].target",
        ),
        (
            json!({ "ipFilterRules": [{ "filterName": "x", "action": "Reject", "ipMask": "10.0.0.1", "colour": "red" }] }),
            "ipFilterRules[0].colour",
        ),
        (json!({ "privateEndpointConnections": [{ "name": "pe" }] }), "properties.privateEndpointConnections"),
        (json!({ "deviceSettings": true }), "resources[0].properties.deviceSettings"),
    ] {
        let e = set_network(&s, &inst, props.clone()).await.expect_err(&props.to_string());
        assert!(e.contains(words), "{props}: {e}");
    }
    let body = json!({ "name": "opendps", "location": "local", "sku": {"name": "S1", "capacity": 1}, "identity": {"type": "SystemAssigned"}, "properties": {} });
    let e = s.server.state.services.put_instance("opendps", "local", body, None).await.unwrap_err().to_string();
    assert!(e.contains("resources[0].identity"), "{e}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_fails_when_the_store_is_gone() {
    let mut cluster = dps_store_postgres::test_cluster::TestCluster::start().unwrap_or_else(|e| panic!("{e}"));
    // A shared store needs the operator's node key (docs/failover.md).
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("node.key");
    std::fs::write(&key, "operations test node key, 32+ characters").unwrap();
    let s = start(&format!("[store]\nurl = {:?}\nnode_key_file = {key:?}\n", cluster.url("postgres"))).await;
    let admin = s.server.admin_addr.expect("admin listener on");
    let ready = || tokio::task::spawn_blocking(move || admin_get(admin, "/health/ready"));
    assert_eq!(ready().await.unwrap().0, 200);
    cluster.kill().unwrap();
    let (status, body) = ready().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    // Liveness is the process, not the store.
    let (live, _) = tokio::task::spawn_blocking(move || admin_get(admin, "/health/live")).await.unwrap();
    assert_eq!(live, 200);
    s.server.shutdown().await;
}
