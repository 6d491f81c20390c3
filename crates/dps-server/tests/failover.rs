//! Geo-paired failover on PostgreSQL's own streaming replication, with clusters this test starts
//! itself: region A's primary on 127.0.0.161, region B's synchronous hot standby on 127.0.0.162;
//! node A on the primary, node B on the standby, sharing one CA, admin credential and node key.
//!
//! B refuses devices while its database is a standby (503 + Retry-After, readiness 503); its
//! service API serves reads marked `x-opendps-stale` and refuses writes (503); a TLS session
//! a real OpenSSL client made on A resumes on B (session-ticket keys shared through the
//! database). A
//! bounded registration loop against A records every acknowledged (202) registration; then
//! region A disappears (its database killed with `pg_ctl stop -m immediate`, node A stopped) and
//! the standby is promoted. B sees the promotion by its role poll and serves: every acknowledged
//! registration is there with the same hub and device id (0 lost: synchronous replication), the
//! one in doubt re-registers to the same answer, no duplicates; the 1.3-only instance still
//! refuses TLS 1.2 on B, which runs the loosest TLS profile, because the floor is replicated
//! data; its `minTlsVersion` still cannot change. Then the old primary is restarted without a
//! rewind (split brain): a node on it that watches region B (`peer_url`) is fenced and serves
//! nothing. The promotion-to-ready time is printed (not judged).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{http_with, Client, TestServer};
use dps_core::model::EnrollmentGroup;
use dps_core::service::Role;
use dps_store_postgres::test_cluster::{Options, TestCluster};
use serde_json::json;

const GROUP_KEY: &str = "ZmFpbG92ZXItZ3JvdXAta2V5LWZvci10ZXN0cy0wMTIzNDU2Nzg5YWJjZGVm";
const HUB: &str = "hub-geo.azure-devices.net";
const API: &str = "api-version=2021-06-01";
/// Registrations acknowledged before region A is lost, and the loop's bound.
const BEFORE_KILL: usize = 12;
const MAX_LOOP: usize = 400;

fn token(scope: &str, id: &str) -> Option<String> {
    let key = dps_attest::derive_device_key(GROUP_KEY, id).unwrap();
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), &key, expiry, Some("registration"))
}

async fn register(client: &Client, node: &TestServer, scope: &str, id: &str) -> (u16, String, serde_json::Value) {
    let path = format!("/{scope}/registrations/{id}/register?{API}");
    http_with(client, node.https(), "PUT", &path, token(scope, id), &format!(r#"{{"registrationId":"{id}"}}"#)).await
}

/// The CONNACK return code a device gets for an MQTT CONNECT with its SAS token.
async fn mqtt_connack(addr: std::net::SocketAddr, scope: &str, id: &str) -> u8 {
    use mqttbytes::v4::{self, Connect, Login, Packet};
    use std::io::{Read, Write};
    let (user, pass) = (format!("{scope}/registrations/{id}/{API}"), token(scope, id).unwrap());
    let mut d = Client::default().run(addr).await.unwrap();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut c = Connect::new(id);
        c.keep_alive = 30;
        c.login = Some(Login::new(user, pass));
        let mut out = bytes::BytesMut::new();
        c.write(&mut out).unwrap();
        d.stream.write_all(&out).unwrap();
        let mut buf = bytes::BytesMut::new();
        for _ in 0..100 {
            match v4::read(&mut buf, 1 << 16) {
                Ok(Packet::ConnAck(a)) => return a.code as u8,
                Ok(other) => panic!("expected CONNACK, got {other:?}"),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet: {e:?}"),
            }
            let mut chunk = [0u8; 1024];
            let n = d.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before CONNACK");
            buf.extend_from_slice(&chunk[..n]);
        }
        panic!("no CONNACK")
    })
    .await
    .unwrap()
}

fn group() -> EnrollmentGroup {
    serde_json::from_value(json!({
        "enrollmentGroupId": "geo",
        "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": GROUP_KEY, "secondaryKey": GROUP_KEY } }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_standby_keeps_every_acknowledged_registration_and_min_tls_version() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let mut primary = TestCluster::start_with(&Options {
        host: ip("127.0.0.161"),
        // Commits wait until the standby has applied them: an acknowledged write is readable on B.
        conf: vec!["synchronous_commit = remote_apply".into()],
        ..Options::default()
    })
    .expect("primary");
    let standby = TestCluster::standby_of(&primary, ip("127.0.0.162"), "region_b", true).expect("synchronous standby");
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("node.key");
    std::fs::write(&key_file, "geo pair test node key, 32+ characters").unwrap();
    let node = |url: String, tls: &str| format!("{tls}[store]\nurl = {url:?}\nnode_key_file = {key_file:?}\n");

    // Region A: node A on the primary; the default instance with a hub and a group, and a
    // 1.3-only instance from a deployment.
    let a = common::start(&node(primary.url("postgres"), "")).await;
    let svc_a = &a.server.state.services;
    let inst = common::link_hub(&a, HUB).await;
    let scope = inst.id_scope.to_string();
    svc_a.put_group(&inst, "geo", group(), None).await.unwrap();
    let strict = json!({ "name": "strict13", "location": "local", "sku": {"name": "S1", "capacity": 1},
        "properties": { "minTlsVersion": "1.3" } });
    let out = svc_a.deploy("rg", "local", &[(dps_core::service::DPS_RESOURCE_TYPE.to_owned(), strict)]).await.unwrap();
    let strict_scope = out.resources[0].0.id_scope.to_string();
    let tls12 = Client { max: Some(openssl::ssl::SslVersion::TLS1_2), ..Client::default() };
    let (status, _, v) = register(&tls12, &a, &strict_scope, "early").await;
    assert_eq!(status, 403, "TLS 1.2 refused for the 1.3 instance on A: {v}");

    // Region B: node B on the standby, with the loosest TLS profile its flags allow.
    let b = common::start(&node(standby.url("postgres"), "[tls]\nprofile = \"dps-legacy-security\"\n")).await;
    let svc_b = &b.server.state.services;
    assert_eq!(svc_b.role(), Role::Standby);
    assert_eq!(a.root_pem(), b.root_pem(), "one CA for both regions");
    let (status, head, v) = http_with(&Client::default(), b.https(), "GET", "/health/ready", None, "").await;
    assert_eq!((status, v["role"].as_str()), (503, Some("standby")), "{v}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let (status, _, _) = http_with(&Client::default(), b.https(), "GET", "/health", None, "").await;
    assert_eq!(status, 200, "liveness stays up on a standby");
    let (status, head, v) = register(&Client::default(), &b, &scope, "to-standby").await;
    assert_eq!(status, 503, "a standby serves no device: {v}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert!(v["errorCode"].is_number() && v["message"].as_str().unwrap().contains("standby"), "{v}");
    assert_eq!(mqtt_connack(b.mqtt(), &scope, "to-standby").await, 3, "MQTT: CONNACK server unavailable");

    // The service API on the standby: reads are served, marked stale; writes are 503. On A
    // (primary) the same read is not marked.
    let owner = &inst.authorization_policies[0];
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let sas = dps_attest::sas::make_token("127.0.0.1", &owner.primary_key, expiry, Some(&owner.key_name)).unwrap();
    let group_path = "/enrollmentGroups/geo?api-version=2021-10-01";
    let (status, head, v) = http_with(&Client::default(), b.https(), "GET", group_path, Some(sas.clone()), "").await;
    assert_eq!((status, v["enrollmentGroupId"].as_str()), (200, Some("geo")), "{v}");
    assert!(head.to_ascii_lowercase().contains("x-opendps-stale: true"), "a standby's read is marked: {head}");
    let query = "/enrollmentGroups/query?api-version=2021-10-01";
    let (status, head, v) =
        http_with(&Client::default(), b.https(), "POST", query, Some(sas.clone()), "{\"query\":\"*\"}").await;
    assert_eq!(status, 200, "{v}");
    assert!(head.to_ascii_lowercase().contains("x-opendps-stale: true"), "{head}");
    let body = serde_json::to_string(&group()).unwrap();
    let (status, head, v) = http_with(&Client::default(), b.https(), "PUT", group_path, Some(sas.clone()), &body).await;
    assert_eq!(status, 503, "a standby refuses service-API writes: {v}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let (status, head, _) = http_with(&Client::default(), a.https(), "GET", group_path, Some(sas.clone()), "").await;
    assert_eq!(status, 200);
    assert!(!head.to_ascii_lowercase().contains("x-opendps-stale"), "a primary's read is not marked: {head}");

    // Session tickets are shared through the database: a real OpenSSL client's session made on
    // A resumes on B (SSL_session_reused), so a device moving between regions skips the full
    // handshake. (The first connection stays open: OpenSSL's client spends a session whose
    // connection is dropped without a shutdown.)
    let resuming = dps_tls::client::Client::new(
        &a.root_pem(),
        &dps_tls::client::ClientOptions { resumption: true, ..Default::default() },
    )
    .unwrap();
    let on_a = resuming.connect(a.https(), "127.0.0.1", None, None).await.unwrap();
    assert!(!on_a.resumed());
    let session = on_a.session().expect("a session ticket from A");
    let on_b = resuming.connect(b.https(), "127.0.0.1", None, Some(&session)).await.unwrap();
    assert!(on_b.resumed(), "B resumes the session A issued");
    drop((on_a, on_b));

    // The registration loop against A: each id acknowledged (202) is recorded.
    let (tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let loop_scope = scope.clone();
    let a_addr = a.https();
    let looper = tokio::spawn(async move {
        let client = Client::default();
        for i in 0..MAX_LOOP {
            let id = format!("dev-{i:04}");
            let path = format!("/{loop_scope}/registrations/{id}/register?{API}");
            let body = format!(r#"{{"registrationId":"{id}"}}"#);
            let (status, _, _) = http_with(&client, a_addr, "PUT", &path, token(&loop_scope, &id), &body).await;
            if status != 202 {
                return Some(id); // in doubt: sent, not acknowledged
            }
            if tx.send(id).is_err() {
                return None;
            }
        }
        None
    });
    let mut acked = Vec::new();
    while acked.len() < BEFORE_KILL {
        acked.push(tokio::time::timeout(Duration::from_secs(60), acked_rx.recv()).await.unwrap().unwrap());
    }

    // Disaster: region A's database dies mid-loop; node A goes too. Region B is promoted.
    primary.kill().unwrap();
    let in_doubt = tokio::time::timeout(Duration::from_secs(60), looper).await.unwrap().unwrap();
    while let Ok(id) = acked_rx.try_recv() {
        acked.push(id);
    }
    let a_root = a.root_pem();
    a.server.shutdown().await;
    let promote_at = Instant::now();
    standby.promote().unwrap();
    for _ in 0..400 {
        if svc_b.role() == Role::Primary {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let ready_ms = promote_at.elapsed().as_millis();
    assert_eq!(svc_b.role(), Role::Primary, "B saw the promotion");
    let (status, _, v) = http_with(&Client::default(), b.https(), "GET", "/health/ready", None, "").await;
    assert_eq!((status, v["role"].as_str()), (200, Some("primary")), "{v}");

    // Every acknowledged registration is on B, same hub and device id; nothing lost.
    let mut lost = Vec::new();
    for id in &acked {
        match svc_b.registration(&inst, id).await {
            Ok(r) => {
                assert_eq!(r.state.assigned_hub.as_deref(), Some(HUB), "{id}");
                assert_eq!(r.state.device_id.as_deref(), Some(id.as_str()), "{id}");
            }
            Err(_) => lost.push(id.clone()),
        }
    }
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    // The one in doubt (if the loop was cut mid-request) re-registers through B to the same
    // answer; so does an acknowledged one (idempotent), without a second record.
    let mut retried = vec![acked[0].clone()];
    retried.extend(in_doubt.clone());
    for id in &retried {
        let (status, _, v) = register(&Client::default(), &b, &scope, id).await;
        assert_eq!(status, 202, "{id}: {v}");
        let r = svc_b.registration(&inst, id).await.unwrap();
        assert_eq!((r.state.assigned_hub.as_deref(), r.state.device_id.as_deref()), (Some(HUB), Some(id.as_str())));
    }
    let page = svc_b.registrations(&inst, Some("geo"), None, 1000).await.unwrap();
    let expected = acked.len() + usize::from(in_doubt.is_some());
    assert_eq!(page.items.len(), expected, "one record per registration id, no duplicates");
    // A new device that pinned node A's root provisions through B.
    let pinned = Client { trust_root_pem: Some(a_root), ..Client::default() };
    let (status, _, v) = register(&pinned, &b, &scope, "after-failover").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(mqtt_connack(b.mqtt(), &scope, "mqtt-after").await, 0, "MQTT accepted again");

    // TLS 1.0 and 1.1 are refused on B whatever its profile.
    for v in [openssl::ssl::SslVersion::TLS1, openssl::ssl::SslVersion::TLS1_1] {
        let old = Client { min: Some(v), max: Some(v), ..Client::default() };
        assert!(old.run(b.https()).await.is_err(), "{v:?} refused on B");
    }
    // The 1.3-only instance keeps its floor on B (loosest local profile), and it cannot change.
    let (status, _, v) = register(&tls12, &b, &strict_scope, "late").await;
    assert_eq!(status, 403, "TLS 1.2 refused for the 1.3 instance on B: {v}");
    let loosen = json!({ "name": "strict13", "location": "local", "sku": {"name": "S1", "capacity": 1},
        "properties": { "minTlsVersion": "1.2" } });
    let e = svc_b.deploy("rg", "local", &[(dps_core::service::DPS_RESOURCE_TYPE.to_owned(), loosen)]).await;
    assert!(e.is_err_and(|e| e.to_string().contains("minTlsVersion")), "minTlsVersion is immutable on B too");

    // Split brain: region A's old primary comes back without a rewind (still a primary, on the
    // old timeline). A node there that watches region B's database refuses to serve.
    primary.restart().unwrap();
    let fenced_cfg = format!(
        "[store]\nurl = {:?}\npeer_url = {:?}\nnode_key_file = {key_file:?}\n",
        primary.url("postgres"),
        standby.url("postgres")
    );
    let a2 = common::start(&fenced_cfg).await;
    assert_eq!(a2.server.state.services.role(), Role::Fenced);
    let (status, _, v) = http_with(&Client::default(), a2.https(), "GET", "/health/ready", None, "").await;
    assert_eq!((status, v["role"].as_str()), (503, Some("fenced")), "{v}");
    let (status, _, v) = register(&Client::default(), &a2, &scope, "split-brain").await;
    assert_eq!(status, 503, "{v}");
    a2.server.shutdown().await;

    eprintln!(
        "failover: promote-to-ready {ready_ms} ms, acknowledged {}, lost {}, in doubt {}",
        acked.len(),
        lost.len(),
        usize::from(in_doubt.is_some())
    );
    b.server.shutdown().await;
}
