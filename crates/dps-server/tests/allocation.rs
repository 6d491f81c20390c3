//! Allocation beyond hashing: geolatency, custom allocation webhooks (with a real HTTPS webhook
//! server started by the test), reprovisioning policies and the linked hub lifecycle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{http, start, TestServer};
use dps_core::model::{IndividualEnrollment, LinkedHub, ServiceAllocationPolicy};
use openssl::ssl::{SslAcceptor, SslMethod};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "ZGV2aWNlLWtleS1mb3ItYWxsb2NhdGlvbi10ZXN0cy0wMTIzNDU2Nzg5YWI=";

fn hub(name: &str, location: &str) -> LinkedHub {
    LinkedHub {
        name: name.into(),
        connection_string: format!("HostName={name};SharedAccessKeyName=o;SharedAccessKey=aGVsbG8="),
        location: location.into(),
        allocation_weight: None,
        apply_allocation_policy: None,
    }
}

async fn set_hubs(s: &TestServer, hubs: Vec<LinkedHub>, policy: Option<ServiceAllocationPolicy>) {
    s.server
        .state
        .services
        .update_instance("opendps", move |i| {
            i.iot_hubs = hubs;
            if let Some(p) = policy {
                i.allocation_policy = p;
            }
            Ok(())
        })
        .await
        .unwrap();
}

async fn enroll(s: &TestServer, id: &str, extra: Value) {
    let mut body = json!({ "registrationId": id, "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": KEY, "secondaryKey": KEY } } });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
    let svc = &s.server.state.services;
    let inst = svc.instance("opendps").await.unwrap();
    svc.put_enrollment(&inst, id, e, None).await.unwrap();
}

/// Registers over HTTPS with a SAS token and polls once; returns the final operation status.
async fn register(s: &TestServer, id: &str, payload: Value) -> Value {
    let inst = s.server.state.services.instance("opendps").await.unwrap();
    let scope = inst.id_scope.to_string();
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let tok =
        dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), KEY, expiry, Some("registration")).unwrap();
    let body = json!({ "registrationId": id, "payload": payload }).to_string();
    let (status, _, v) = http(
        s,
        "PUT",
        &format!("/{scope}/registrations/{id}/register?api-version=2021-06-01"),
        Some(tok.clone()),
        &body,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let op = v["operationId"].as_str().unwrap().to_owned();
    let (status, _, v) =
        http(s, "GET", &format!("/{scope}/registrations/{id}/operations/{op}?api-version=2021-06-01"), Some(tok), "")
            .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn geolatency_picks_the_local_hub_then_the_nearest() {
    let s = start("[service]\nregion = \"westeurope\"\n").await;
    set_hubs(
        &s,
        vec![
            hub("hub-us.example", "eastus"),
            hub("hub-eu.example", "westeurope"),
            hub("hub-asia.example", "japaneast"),
        ],
        Some(ServiceAllocationPolicy::GeoLatency),
    )
    .await;
    for n in 0..5 {
        let id = format!("geo-{n}");
        enroll(&s, &id, json!({})).await;
        assert_eq!(register(&s, &id, Value::Null).await["registrationState"]["assignedHub"], "hub-eu.example");
    }
    // Without a hub in this region: the nearest by distance (North Europe before East US).
    set_hubs(
        &s,
        vec![
            hub("hub-us.example", "eastus"),
            hub("hub-ne.example", "northeurope"),
            hub("hub-asia.example", "japaneast"),
        ],
        None,
    )
    .await;
    enroll(&s, "geo-far", json!({})).await;
    assert_eq!(register(&s, "geo-far", Value::Null).await["registrationState"]["assignedHub"], "hub-ne.example");
    // Ties (two hubs in the nearest region) are hashed, deterministically.
    set_hubs(
        &s,
        vec![
            hub("hub-ne1.example", "northeurope"),
            hub("hub-ne2.example", "northeurope"),
            hub("hub-us.example", "eastus"),
        ],
        None,
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..12 {
        let id = format!("geo-tie-{n}");
        enroll(&s, &id, json!({})).await;
        seen.insert(
            register(&s, &id, Value::Null).await["registrationState"]["assignedHub"].as_str().unwrap().to_owned(),
        );
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["hub-ne1.example", "hub-ne2.example"]);
    // An unknown location is refused when the hub is linked.
    let err = s.server.state.services.deploy("opendps", "westeurope", &[(
        "Microsoft.Devices/provisioningServices".into(),
        json!({"name": "opendps", "location": "local", "sku": {"name": "S1", "capacity": 1}, "properties": {"iotHubs": [{"connectionString": "HostName=h.example;SharedAccessKeyName=o;SharedAccessKey=aGVsbG8=", "location": "atlantis"}]}}),
    )]).await.expect_err("unknown location");
    assert!(err.to_string().contains("atlantis"), "{err}");
}

/// A real HTTPS webhook: answers by path, records what it was sent.
async fn webhook_server(dir: &std::path::Path) -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>, std::path::PathBuf) {
    let ca = dps_tls::builtin_ca::BuiltInCaSettings {
        dir: dir.to_owned(),
        dns_names: vec![],
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        leaf_lifetime: Duration::from_secs(3600),
    };
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    let (creds, _, _) = ca.ensure(now).unwrap();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_certificate(&creds.leaf).unwrap();
    for c in &creds.chain {
        b.add_extra_chain_cert(c.clone()).unwrap();
    }
    b.set_private_key(&creds.key).unwrap();
    let acceptor = Arc::new(b.build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                        let len: usize = head
                            .to_ascii_lowercase()
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                            .unwrap_or(0);
                        while buf.len() < pos + 4 + len {
                            let n = tls.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break (head, buf[pos + 4..pos + 4 + len].to_vec());
                    }
                };
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                seen.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let (status, answer) = if path.starts_with("/ok") {
                    ("200 OK", json!({ "iotHubHostName": "hub-b.example", "payload": { "hello": "device" }, "initialTwin": { "tags": { "from": "webhook" } } }).to_string())
                } else if path.starts_with("/slow") {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    ("200 OK", "{}".to_owned())
                } else if path.starts_with("/fail") {
                    ("500 Internal Server Error", "boom: database down".to_owned())
                } else if path.starts_with("/garbage") {
                    ("200 OK", "<html>not json</html>".to_owned())
                } else {
                    ("200 OK", json!({ "iotHubHostName": "nowhere.example" }).to_string())
                };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len());
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, seen, dir.join("root.pem"))
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_allocation_webhook_success_and_every_failure_mode() {
    let hook_dir = tempfile::tempdir().unwrap();
    let (addr, seen, root) = webhook_server(hook_dir.path()).await;
    let s = start(&format!("[allocation]\nwebhook_timeout = \"1s\"\nwebhook_ca_file = {:?}\n", root.to_str().unwrap()))
        .await;
    set_hubs(&s, vec![hub("hub-a.example", "local"), hub("hub-b.example", "local")], None).await;
    let custom = |path: &str| json!({ "allocationPolicy": "custom", "customAllocationDefinition": { "webhookUrl": format!("https://127.0.0.1:{}{path}?code=secret-function-key", addr.port()), "apiVersion": "2021-10-01" } });

    enroll(&s, "hook-ok", custom("/ok")).await;
    let v = register(&s, "hook-ok", json!({ "model": "thermostat-1" })).await;
    assert_eq!(v["status"], "assigned", "{v}");
    assert_eq!(v["registrationState"]["assignedHub"], "hub-b.example");
    assert_eq!(
        v["registrationState"]["payload"],
        json!({ "hello": "device" }),
        "the webhook's payload reaches the device"
    );
    let sent = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["deviceRuntimeContext"]["registrationId"], "hook-ok");
    assert_eq!(sent["deviceRuntimeContext"]["payload"], json!({ "model": "thermostat-1" }));
    assert_eq!(sent["linkedHubs"], json!(["hub-a.example", "hub-b.example"]));
    assert_eq!(sent["individualEnrollment"]["registrationId"], "hook-ok");
    assert!(
        sent["individualEnrollment"]["attestation"]["symmetricKey"].get("primaryKey").is_none(),
        "keys never leave: {sent}"
    );
    let inst = s.server.state.services.instance("opendps").await.unwrap();
    let rec = s.server.state.services.registration(&inst, "hook-ok").await.unwrap();
    assert_eq!(
        rec.initial_twin,
        Some(json!({ "tags": { "from": "webhook" } })),
        "the webhook's initialTwin is applied"
    );
    // Re-registration tells the webhook where the device is now.
    register(&s, "hook-ok", Value::Null).await;
    let sent = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["deviceRuntimeContext"]["currentIotHubHostName"], "hub-b.example");
    assert_eq!(sent["deviceRuntimeContext"]["currentDeviceId"], "hook-ok");

    for (id, path, needle) in [
        ("hook-slow", "/slow", "did not answer within 1s"),
        ("hook-fail", "/fail", "answered HTTP 500: boom: database down"),
        ("hook-garbage", "/garbage", "invalid JSON"),
        ("hook-unlinked", "/unlinked", "\"nowhere.example\", which is not one of the linked hubs"),
    ] {
        enroll(&s, id, custom(path)).await;
        let v = register(&s, id, Value::Null).await;
        assert_eq!(v["status"], "failed", "{id}: {v}");
        assert_eq!(v["registrationState"]["errorCode"], 400_209, "{id}");
        let msg = v["registrationState"]["errorMessage"].as_str().unwrap();
        assert!(msg.starts_with("Custom allocation failed: ") && msg.contains(needle), "{id}: {msg}");
        assert!(!msg.contains("secret-function-key"), "the function key never appears: {msg}");
    }
    // Unreachable.
    enroll(&s, "hook-down", json!({ "allocationPolicy": "custom", "customAllocationDefinition": { "webhookUrl": "https://127.0.0.1:1/nothing", "apiVersion": "2021-10-01" } })).await;
    let v = register(&s, "hook-down", Value::Null).await;
    assert!(v["registrationState"]["errorMessage"].as_str().unwrap().contains("not reachable"), "{v}");
    // Plain http is refused at configuration time.
    let e: IndividualEnrollment = serde_json::from_value(json!({ "registrationId": "hook-http", "attestation": { "type": "symmetricKey" }, "allocationPolicy": "custom", "customAllocationDefinition": { "webhookUrl": "http://example.com/x", "apiVersion": "2021-10-01" } })).unwrap();
    let err = s.server.state.services.put_enrollment(&inst, "hook-http", e, None).await.expect_err("http refused");
    assert!(err.to_string().contains("https://"), "{err}");
    assert!(common::health_ok(s.https()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn reprovision_policies_set_dps_substatus_and_twin_behaviour() {
    let s = start("").await;
    set_hubs(&s, vec![hub("hub-a.example", "local"), hub("hub-b.example", "local")], None).await;
    let twin = json!({ "tags": { "site": "factory" }, "properties": { "desired": { "rate": 5 } } });
    let cases = [
        (
            "re-migrate",
            json!({ "updateHubAssignment": true, "migrateDeviceData": true }),
            "deviceDataMigrated",
            "hub-b.example",
            "migrated",
        ),
        (
            "re-reset",
            json!({ "updateHubAssignment": true, "migrateDeviceData": false }),
            "deviceDataReset",
            "hub-b.example",
            "reset",
        ),
        (
            "re-never",
            json!({ "updateHubAssignment": false, "migrateDeviceData": false }),
            "initialAssignment",
            "hub-a.example",
            "kept",
        ),
    ];
    let svc = &s.server.state.services;
    let inst = svc.instance("opendps").await.unwrap();
    for (id, policy, substatus, hub_after, action) in cases {
        enroll(&s, id, json!({ "iotHubs": ["hub-a.example"], "reprovisionPolicy": policy, "initialTwin": twin })).await;
        let first = register(&s, id, Value::Null).await;
        assert_eq!(first["registrationState"]["substatus"], "initialAssignment");
        assert_eq!(first["registrationState"]["assignedHub"], "hub-a.example");
        assert_eq!(
            svc.registration(&inst, id).await.unwrap().initial_twin,
            Some(twin.clone()),
            "first assignment gets the initial twin"
        );
        // Same hub again: reprovisioned to the initial assignment (or kept, under never).
        let again = register(&s, id, Value::Null).await;
        let same = if id == "re-never" {
            "initialAssignment"
        } else if id == "re-reset" {
            "deviceDataReset"
        } else {
            "reprovisionedToInitialAssignment"
        };
        assert_eq!(again["registrationState"]["substatus"], same, "{id}");
        // Move the enrollment to hub-b and register again.
        enroll(&s, id, json!({ "iotHubs": ["hub-b.example"], "reprovisionPolicy": policy, "initialTwin": twin })).await;
        let moved = register(&s, id, Value::Null).await;
        assert_eq!(moved["registrationState"]["substatus"], substatus, "{id}: {moved}");
        assert_eq!(moved["registrationState"]["assignedHub"], hub_after, "{id}");
        let rec = svc.registration(&inst, id).await.unwrap();
        assert_eq!(rec.twin_action.as_deref(), Some(action), "{id}");
        let expect_twin = if action == "reset" { Some(twin.clone()) } else { None };
        assert_eq!(
            rec.initial_twin, expect_twin,
            "{id}: reset re-applies the enrollment's twin; migrate carries the device's"
        );
        assert_eq!(
            rec.state.created_date_time_utc,
            first["registrationState"]["createdDateTimeUtc"].as_str().map(str::to_owned)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_changes_affect_only_future_allocations_and_removed_hubs_reallocate() {
    let s = start("").await;
    set_hubs(&s, vec![hub("hub-a.example", "local")], None).await;
    enroll(&s, "life-1", json!({ "reprovisionPolicy": { "updateHubAssignment": false, "migrateDeviceData": false } }))
        .await;
    assert_eq!(register(&s, "life-1", Value::Null).await["registrationState"]["assignedHub"], "hub-a.example");
    // Adding a hub changes nothing for a device that never reprovisions.
    set_hubs(&s, vec![hub("hub-a.example", "local"), hub("hub-b.example", "local")], None).await;
    assert_eq!(register(&s, "life-1", Value::Null).await["registrationState"]["assignedHub"], "hub-a.example");
    // A hub excluded from allocation gets no new devices but keeps its own.
    let mut a = hub("hub-a.example", "local");
    a.apply_allocation_policy = Some(false);
    set_hubs(&s, vec![a, hub("hub-b.example", "local")], None).await;
    for n in 0..6 {
        let id = format!("life-new-{n}");
        enroll(&s, &id, json!({})).await;
        assert_eq!(register(&s, &id, Value::Null).await["registrationState"]["assignedHub"], "hub-b.example");
    }
    assert_eq!(register(&s, "life-1", Value::Null).await["registrationState"]["assignedHub"], "hub-a.example");
    // Removing the hub: the device is allocated again on its next registration.
    set_hubs(&s, vec![hub("hub-b.example", "local")], None).await;
    let v = register(&s, "life-1", Value::Null).await;
    assert_eq!(v["registrationState"]["assignedHub"], "hub-b.example");
    // Weight 0 is refused at configuration time.
    let err = s.server.state.services.deploy("opendps", "local", &[(
        "Microsoft.Devices/provisioningServices".into(),
        json!({"name": "opendps", "location": "local", "sku": {"name": "S1", "capacity": 1}, "properties": {"iotHubs": [{"connectionString": "HostName=h.example;SharedAccessKeyName=o;SharedAccessKey=aGVsbG8=", "location": "local", "allocationWeight": 0}]}}),
    )]).await.expect_err("weight 0");
    assert!(err.to_string().contains("allocationWeight"), "{err}");
}
