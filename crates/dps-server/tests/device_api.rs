//! The device API over HTTPS and MQTT with real TLS, from raw clients: every bad input gets the
//! DPS error in that protocol's form, nothing is recorded that should not be, the server keeps
//! serving. (The official SDKs are exercised in tests/devices.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::{health_ok, http, start, Client, TestServer};
use mqttbytes::v4::{self, Connect, Login, Packet, Publish, Subscribe};
use mqttbytes::QoS;
use serde_json::Value;

const GROUP_KEY: &str = "c2VjcmV0LWdyb3VwLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OWFiY2RlZg==";

async fn setup(extra: &str) -> (TestServer, String) {
    let s = start(extra).await;
    let svc = &s.server.state.services;
    let inst = common::link_hub(&s, "hub-a.azure-devices.net").await;
    let group = common::symmetric_group("group-1", GROUP_KEY);
    svc.put_group(&inst, "group-1", group, None).await.unwrap();
    (s, inst.id_scope.to_string())
}

fn token(scope: &str, id: &str, key: &str, expiry: u64) -> String {
    dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), key, expiry, Some("registration")).unwrap()
}

fn device_key(id: &str) -> String {
    dps_attest::derive_device_key(GROUP_KEY, id).unwrap()
}

fn in_an_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

fn is_dps_error(v: &Value, code: u64) {
    assert_eq!(v["errorCode"], code, "{v}");
    assert!(v["trackingId"].is_string() && v["message"].is_string() && v["timestampUtc"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_register_then_poll_and_every_bad_request_is_a_dps_error() {
    let (s, scope) = setup("").await;
    let reg = |id: &str| format!("/{scope}/registrations/{id}/register?api-version=2021-06-01");
    let tok = |id: &str| Some(token(&scope, id, &device_key(id), in_an_hour()));

    let (status, head, v) = http(&s, "PUT", &reg("dev-a"), tok("dev-a"), r#"{"registrationId":"dev-a"}"#).await;
    assert_eq!(status, 202, "register is always 202 first: {v}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"));
    assert_eq!(v["status"], "assigning");
    let op = v["operationId"].as_str().unwrap().to_owned();
    assert!(
        op.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
        "opaque id safe in topics and paths: {op}"
    );
    let (status, _, v) = http(
        &s,
        "GET",
        &format!("/{scope}/registrations/dev-a/operations/{op}?api-version=2021-06-01"),
        tok("dev-a"),
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "assigned");
    assert_eq!(v["registrationState"]["assignedHub"], "hub-a.azure-devices.net");
    assert_eq!(v["registrationState"]["deviceId"], "dev-a");
    assert_eq!(v["registrationState"]["substatus"], "initialAssignment");
    assert_eq!(v["registrationState"]["symmetricKey"]["enrollmentGroupId"], "group-1");

    // Unknown operation id.
    let (status, _, v) = http(
        &s,
        "GET",
        &format!("/{scope}/registrations/dev-a/operations/4.nope?api-version=2021-06-01"),
        tok("dev-a"),
        "",
    )
    .await;
    assert_eq!(status, 404);
    is_dps_error(&v, 404_202);
    // Wrong key and unknown device: the same 401.
    let forged = Some(token(&scope, "dev-b", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=", in_an_hour()));
    let (s1, _, v1) = http(&s, "PUT", &reg("dev-b"), forged, "").await;
    let (s2, _, v2) =
        http(&s, "PUT", "/0ne00000000/registrations/dev-b/register?api-version=2021-06-01", tok("dev-b"), "").await;
    assert_eq!((s1, s2), (401, 401));
    is_dps_error(&v1, 401_002);
    assert_eq!(v1["message"], v2["message"], "no enumeration of enrollments or scopes");
    // Expired token.
    let expired = Some(token(&scope, "dev-c", &device_key("dev-c"), 1_000_000));
    let (status, _, v) = http(&s, "PUT", &reg("dev-c"), expired, "").await;
    assert_eq!(status, 401);
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    // A token for another registration id.
    let (status, _, _) = http(&s, "PUT", &reg("dev-d"), tok("dev-c"), "").await;
    assert_eq!(status, 401);
    // Bad JSON, mismatched ids, missing api-version, oversized body.
    let (status, _, v) = http(&s, "PUT", &reg("dev-e"), tok("dev-e"), "{not json").await;
    assert_eq!(status, 400);
    is_dps_error(&v, 400_000);
    let (status, _, v) = http(&s, "PUT", &reg("dev-e"), tok("dev-e"), r#"{"registrationId":"someone-else"}"#).await;
    assert_eq!(status, 400, "{v}");
    let (status, _, _) = http(&s, "PUT", &format!("/{scope}/registrations/dev-e/register"), tok("dev-e"), "").await;
    assert_eq!(status, 400);
    let big = format!(r#"{{"registrationId":"dev-e","payload":"{}"}}"#, "x".repeat(100 * 1024));
    let (status, _, v) = http(&s, "PUT", &reg("dev-e"), tok("dev-e"), &big).await;
    assert_eq!(status, 413, "{v}");
    // None of the refused requests left a record.
    let inst = s.server.state.services.instance("opendps").await.unwrap();
    for id in ["dev-b", "dev-c", "dev-d", "dev-e"] {
        assert!(s.server.state.services.registration(&inst, id).await.is_err(), "{id} must not be recorded");
    }
    // The record of dev-a carries the TLS facts of its connection.
    let rec = s.server.state.services.registration(&inst, "dev-a").await.unwrap();
    assert_eq!(rec.tls.as_ref().unwrap().to_value()["negotiated"]["version"], "TLSv1.2");
    assert!(health_ok(s.https()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_registrations_of_one_id_yield_one_record() {
    let (s, scope) = setup("").await;
    let path = format!("/{scope}/registrations/twin-dev/register?api-version=2021-06-01");
    let tok = token(&scope, "twin-dev", &device_key("twin-dev"), in_an_hour());
    let (a, b) =
        tokio::join!(http(&s, "PUT", &path, Some(tok.clone()), ""), http(&s, "PUT", &path, Some(tok.clone()), ""));
    assert_eq!((a.0, b.0), (202, 202));
    let inst = s.server.state.services.instance("opendps").await.unwrap();
    let page = s.server.state.services.registrations(&inst, None, None, 100).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].state.assigned_hub.as_deref(), Some("hub-a.azure-devices.net"));
    // Re-registration keeps the assignment.
    let again = http(&s, "PUT", &path, Some(tok), "").await;
    assert_eq!(again.0, 202);
    let rec = s.server.state.services.registration(&inst, "twin-dev").await.unwrap();
    assert_eq!(rec.state.created_date_time_utc, page.items[0].state.created_date_time_utc);
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_quota_answers_429_with_retry_after() {
    let (s, scope) = setup("[service]\nregistrations_per_minute = 2\n").await;
    let mut statuses = Vec::new();
    let mut last_head = String::new();
    for n in 0..3 {
        let id = format!("quota-{n}");
        let (status, head, _) = http(
            &s,
            "PUT",
            &format!("/{scope}/registrations/{id}/register?api-version=2021-06-01"),
            Some(token(&scope, &id, &device_key(&id), in_an_hour())),
            "",
        )
        .await;
        statuses.push(status);
        last_head = head;
    }
    assert_eq!(statuses, [202, 202, 429]);
    assert!(last_head.to_ascii_lowercase().contains("retry-after: 30"), "{last_head}");
}

/// A raw MQTT session over TLS.
struct Mqtt {
    done: common::Done,
    buf: BytesMut,
}

impl Mqtt {
    fn send(&mut self, write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) {
        let mut out = BytesMut::new();
        write(&mut out).unwrap();
        self.done.stream.write_all(&out).unwrap();
    }

    /// Sends, tolerating a server that closes mid-write (it may refuse what it reads first).
    fn send_lossy(&mut self, write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) {
        let mut out = BytesMut::new();
        write(&mut out).unwrap();
        let _ = self.done.stream.write_all(&out);
    }

    fn recv(&mut self) -> Option<Packet> {
        loop {
            match v4::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from server: {e:?}"),
            }
            let mut chunk = [0u8; 4096];
            match self.done.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn mqtt_connect(addr: std::net::SocketAddr, client_id: &str, username: &str, password: &str) -> (Mqtt, u8) {
    let done = Client::default().connect(addr).unwrap();
    let mut m = Mqtt { done, buf: BytesMut::new() };
    let mut c = Connect::new(client_id);
    c.keep_alive = 30;
    c.login = Some(Login::new(username, password));
    m.send(|b| c.write(b));
    match m.recv() {
        Some(Packet::ConnAck(a)) => {
            let code = a.code as u8;
            (m, code)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_register_poll_and_bad_input() {
    let (s, scope) = setup("").await;
    let addr = s.mqtt();
    let scope2 = scope.clone();
    tokio::task::spawn_blocking(move || {
        let scope = scope2;
        let user = |id: &str| format!("{scope}/registrations/{id}/api-version=2019-03-31&ClientVersion=test");
        // Wrong key: CONNECT is accepted (session-present 0) and the register request is answered
        // with the DPS 401 on its response topic (docs/protocol.md, "MQTT connection").
        let (mut bad, code) = mqtt_connect(
            addr,
            "m-1",
            &user("m-1"),
            &token(&scope, "m-1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=", in_an_hour()),
        );
        assert_eq!(code, 0);
        let p = Publish::new("$dps/registrations/PUT/iotdps-register/?$rid=41", QoS::AtMostOnce, "");
        bad.send(|b| p.write(b));
        let Some(Packet::Publish(r)) = bad.recv() else { panic!("no response to a refused device") };
        assert_eq!(r.topic, "$dps/registrations/res/401/?$rid=41");
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["errorCode"], 401_002, "{v}");
        // Mismatched client id → CONNACK 2; garbage username → CONNACK 4.
        let (_, code) =
            mqtt_connect(addr, "other", &user("m-1"), &token(&scope, "m-1", &device_key("m-1"), in_an_hour()));
        assert_eq!(code, 2);
        let (_, code) = mqtt_connect(addr, "m-1", "garbage", "x");
        assert_eq!(code, 4);

        let (mut m, code) =
            mqtt_connect(addr, "m-1", &user("m-1"), &token(&scope, "m-1", &device_key("m-1"), in_an_hour()));
        assert_eq!(code, 0);
        let sub = Subscribe::new("$dps/registrations/res/#", QoS::AtLeastOnce);
        m.send(|b| sub.write(b));
        assert!(matches!(m.recv(), Some(Packet::SubAck(_))));
        // QoS 1 register: PUBACK first, then the 202 response.
        let mut p = Publish::new(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            QoS::AtLeastOnce,
            r#"{"payload":null,"registrationId":"m-1"}"#,
        );
        p.pkid = 7;
        m.send(|b| p.write(b));
        assert!(matches!(m.recv(), Some(Packet::PubAck(a)) if a.pkid == 7), "PUBACK before the response");
        let Some(Packet::Publish(r)) = m.recv() else { panic!("no response") };
        assert!(r.topic.starts_with("$dps/registrations/res/202/?$rid=1&retry-after="), "{}", r.topic);
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        let op = v["operationId"].as_str().unwrap().to_owned();
        // Poll (QoS 0, empty payload as C# sends).
        let p = Publish::new(
            format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}"),
            QoS::AtMostOnce,
            "",
        );
        m.send(|b| p.write(b));
        let Some(Packet::Publish(r)) = m.recv() else { panic!("no poll response") };
        assert_eq!(r.topic, "$dps/registrations/res/200/?$rid=2");
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["status"], "assigned");
        assert_eq!(v["registrationState"]["deviceId"], "m-1");
        // Unknown operation, bad JSON, mismatched id, unknown topic: DPS errors on the response topic.
        for (topic, payload, status) in [
            ("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=3&operationId=4.nope", "", 404),
            ("$dps/registrations/PUT/iotdps-register/?$rid=4", "{oops", 400),
            ("$dps/registrations/PUT/iotdps-register/?$rid=5", r#"{"registrationId":"not-me"}"#, 400),
            ("$dps/registrations/DELETE/whatever/?$rid=6", "", 400),
        ] {
            let p = Publish::new(topic, QoS::AtMostOnce, payload);
            m.send(|b| p.write(b));
            let Some(Packet::Publish(r)) = m.recv() else { panic!("no response to {topic}") };
            assert!(r.topic.starts_with(&format!("$dps/registrations/res/{status}/")), "{topic}: {}", r.topic);
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(v["errorCode"].as_u64().unwrap() / 1000, u64::from(status as u16), "{v}");
        }
        m.send(|b| mqttbytes::v4::PingReq.write(b));
        assert!(matches!(m.recv(), Some(Packet::PingResp)));
        // Idle past `DeviceSession::REST_AFTER` the connection keeps only the device's names:
        // a poll is still answered, a register reads the device again and is accepted, and a
        // packet that arrives in two halves around the rest loses nothing.
        std::thread::sleep(dps_core::device::DeviceSession::REST_AFTER + std::time::Duration::from_millis(500));
        let p = Publish::new(
            format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=10&operationId={op}"),
            QoS::AtMostOnce,
            "",
        );
        m.send(|b| p.write(b));
        let Some(Packet::Publish(r)) = m.recv() else { panic!("no poll response after resting") };
        assert_eq!(r.topic, "$dps/registrations/res/200/?$rid=10");
        std::thread::sleep(dps_core::device::DeviceSession::REST_AFTER + std::time::Duration::from_millis(500));
        let p = Publish::new(
            "$dps/registrations/PUT/iotdps-register/?$rid=11",
            QoS::AtMostOnce,
            r#"{"registrationId":"m-1"}"#,
        );
        let mut bytes = BytesMut::new();
        p.write(&mut bytes).unwrap();
        let half = bytes.len() / 2;
        m.done.stream.write_all(&bytes[..half]).unwrap();
        std::thread::sleep(dps_core::device::DeviceSession::REST_AFTER + std::time::Duration::from_millis(500));
        m.done.stream.write_all(&bytes[half..]).unwrap();
        let Some(Packet::Publish(r)) = m.recv() else { panic!("no register response after resting") };
        assert!(r.topic.starts_with("$dps/registrations/res/202/?$rid=11"), "{}", r.topic);
        // An oversized publish (over 96 KB) closes the connection; the server keeps serving.
        let big =
            Publish::new("$dps/registrations/PUT/iotdps-register/?$rid=9", QoS::AtMostOnce, vec![b'x'; 120 * 1024]);
        m.send_lossy(|b| big.write(b));
        assert!(m.recv().is_none(), "connection closed");
        // A malformed packet also costs only that connection.
        let (mut m2, code) =
            mqtt_connect(addr, "m-2", &user("m-2"), &token(&scope, "m-2", &device_key("m-2"), in_an_hour()));
        assert_eq!(code, 0);
        m2.done.stream.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap();
        assert!(m2.recv().is_none());
    })
    .await
    .unwrap();
    assert!(health_ok(s.https()).await);
    let inst = s.server.state.services.instance("opendps").await.unwrap();
    assert!(s.server.state.services.registration(&inst, "m-2").await.is_err(), "nothing recorded for m-2");
    let rec = s.server.state.services.registration(&inst, "m-1").await.unwrap();
    assert!(rec.tls.is_some(), "MQTT registrations keep TLS facts too");
}
