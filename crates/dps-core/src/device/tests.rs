//! The device API use case without sockets, files or OpenSSL: an in-memory store, a manual
//! clock and plain-text credential "crypto" (see `crate::testing`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::{AuthOutcome, Credential, DeviceReply, DeviceSession, Operation, Transport};
use crate::model::{EnrollmentGroup, IndividualEnrollment, Instance, LinkedHub, RegistrationStatus};
use crate::service::{InstanceDefaults, Services};
use crate::testing::{cert, connection, services, token, tpm_key, ManualClock, TextCrypto, TextTpm};
use crate::tls::TlsVersion;

const API: Option<&str> = Some("2021-10-01");
const K1: &str = "a2V5LW9uZS0wMTIzNDU2Nzg5YWJjZGVm";

struct World {
    s: Services,
    clock: std::sync::Arc<ManualClock>,
    crypto: std::sync::Arc<TextCrypto>,
    inst: Instance,
}

impl World {
    async fn new(hubs: &[&str]) -> World {
        let (s, clock, crypto) = services();
        s.ensure_default_instance(&InstanceDefaults {
            name: "dps".into(),
            resource_group: "rg".into(),
            location: "local".into(),
        })
        .await
        .unwrap();
        let hubs: Vec<LinkedHub> = hubs
            .iter()
            .map(|h| LinkedHub {
                name: (*h).into(),
                connection_string: format!("HostName={h};SharedAccessKeyName=o;SharedAccessKey=aGVsbG8="),
                location: "local".into(),
                allocation_weight: None,
                apply_allocation_policy: None,
            })
            .collect();
        let inst = s
            .update_instance("dps", move |i| {
                i.iot_hubs = hubs;
                Ok(())
            })
            .await
            .unwrap();
        World { s, clock, crypto, inst }
    }

    /// Another node sharing this one's store.
    fn another_node(&self) -> Services {
        Services::new(
            self.s.store.clone(),
            self.clock.clone(),
            std::sync::Arc::new(crate::testing::CountingEntropy::default()),
            self.crypto.clone(),
            self.crypto.clone(),
        )
    }

    fn scope(&self) -> String {
        self.inst.id_scope.to_string()
    }

    async fn enroll(&self, e: Value) {
        let e: IndividualEnrollment = serde_json::from_value(e).unwrap();
        let id = e.registration_id.clone();
        self.s.put_enrollment(&self.inst, &id, e, None).await.unwrap();
    }

    async fn group(&self, g: Value) {
        let g: EnrollmentGroup = serde_json::from_value(g).unwrap();
        let id = g.enrollment_group_id.clone();
        self.s.put_group(&self.inst, &id, g, None).await.unwrap();
    }

    fn sas(&self, id: &str, key: &str) -> String {
        let expiry = crate::ports::Clock::now(self.clock.as_ref()) + Duration::from_secs(3600);
        token(&format!("{}/registrations/{id}", self.scope()), key, expiry)
    }

    fn https(&self, chain: Vec<Vec<u8>>) -> DeviceSession {
        self.s.device_session(connection(Transport::Https, TlsVersion::Tls12, chain))
    }

    /// Register then poll over one HTTPS session; the final reply.
    async fn provision(&self, id: &str, auth: Option<&str>, chain: Vec<Vec<u8>>, body: &str) -> DeviceReply {
        let mut d = self.https(chain);
        let scope = self.scope();
        let reply = d.request(&scope, id, API, auth, Operation::Register { body: body.as_bytes() }).await;
        let DeviceReply::Accepted { operation_id } = reply else { return reply };
        d.request(&scope, id, API, auth, Operation::OperationStatus { operation_id: &operation_id }).await
    }
}

fn symmetric(id: &str, key: &str) -> Value {
    json!({ "registrationId": id, "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": key, "secondaryKey": "c2Vjb25kLTAxMjM0NTY3ODlhYmNkZWYh" } } })
}

fn assigned(reply: &DeviceReply) -> (String, String, String) {
    let DeviceReply::Operation(op) = reply else { panic!("not an operation status: {reply:?}") };
    assert_eq!(op.status, RegistrationStatus::Assigned, "{reply:?}");
    assert_eq!(reply.status(), 200);
    let st = op.registration_state.as_ref().expect("state");
    (
        st.assigned_hub.clone().unwrap_or_default(),
        st.device_id.clone().unwrap_or_default(),
        st.substatus.clone().unwrap_or_default(),
    )
}

fn refused(reply: &DeviceReply) -> (u16, u32, String) {
    let DeviceReply::Error(e) = reply else { panic!("not refused: {reply:?}") };
    assert_eq!(e.error_code / 1000, u32::from(e.status), "errorCode / 1000 is the status");
    assert!(!e.tracking_id.is_empty() && e.timestamp_utc.ends_with('Z'));
    (e.status, e.error_code, e.message.clone())
}

#[tokio::test]
async fn symmetric_key_device_registers_then_polls_to_assigned() {
    let w = World::new(&["hub-a.example.net"]).await;
    w.enroll(symmetric("dev-1", K1)).await;
    let sas = w.sas("dev-1", K1);
    let mut d = w.https(vec![]);
    let r = d.request(&w.scope(), "dev-1", API, Some(&sas), Operation::Register { body: b"" }).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.retry_after(), Some(1));
    let DeviceReply::Accepted { operation_id } = &r else { panic!("{r:?}") };
    assert_eq!(r.body()["status"], "assigning");
    let poll = d.request(&w.scope(), "dev-1", API, Some(&sas), Operation::OperationStatus { operation_id }).await;
    assert_eq!(assigned(&poll), ("hub-a.example.net".into(), "dev-1".into(), "initialAssignment".into()));
    let lookup = d.request(&w.scope(), "DEV-1", API, Some(&sas), Operation::StatusLookup).await;
    assert_eq!(lookup.status(), 200, "{lookup:?}");
    assert_eq!(lookup.body()["assignedHub"], "hub-a.example.net");
}

/// Devices that offered the same ClientHello share one stored offer; their records name it, and
/// every reader gets the facts whole, on this node and on one that never saw the offer
/// (docs/performance.md, "Offers stored once").
#[tokio::test]
async fn devices_with_the_same_offer_share_one_stored_offer() {
    use crate::tls::{facts_record, HandshakeFacts, Offered, ProfileName};
    let w = World::new(&["hub-a.example.net"]).await;
    let offered = Offered {
        legacy_version: 0x0303,
        supported_versions: None,
        cipher_suites: vec![0xC030, 0xC02F, 0x002F],
        groups: vec![0x0017],
        signature_algorithms: vec![0x0804, 0x0401],
        sni: Some("dps.example".into()),
        alpn: Vec::new(),
    };
    let mut ids = Vec::new();
    for (i, suites) in
        [vec![0xC030, 0xC02F, 0x002F], vec![0xC030, 0xC02F, 0x002F], vec![0x002F]].into_iter().enumerate()
    {
        let id = format!("dev-{i}");
        let key = format!("{K1}{i}A==");
        w.enroll(symmetric(&id, &key)).await;
        let mut c = connection(Transport::Https, TlsVersion::Tls12, vec![]);
        let offered = Offered { cipher_suites: suites, ..offered.clone() };
        c.tls = std::sync::Arc::new(HandshakeFacts { offered: Some(offered), negotiated: c.tls.negotiated.clone() });
        let whole = facts_record(&c.tls, &c.peer_certificates);
        let mut d = w.s.device_session(c);
        let r = d.request(&w.scope(), &id, API, Some(&w.sas(&id, &key)), Operation::Register { body: b"" }).await;
        assert_eq!(r.status(), 202, "{r:?}");
        ids.push((id, whole));
    }
    // As stored: the records name their offer, two of them the same one.
    let mut named = Vec::new();
    for (id, whole) in &ids {
        let stored = w.s.store.registration("dps", id).await.unwrap().unwrap().tls.unwrap();
        assert!(stored.to_value().get("offered").is_none(), "{id}: the record holds no offer");
        let offer = stored.offer_ref().expect("names its offer");
        let text = w.s.store.offer(&offer).await.unwrap().expect("the offer is stored");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), whole.to_value()["offered"]);
        named.push(offer);
    }
    assert_eq!(named[0], named[1], "one offer for the same ClientHello");
    assert_ne!(named[0], named[2]);
    // As read, on this node (offers cached) and another (read from the store): whole.
    let policy = crate::tls::readiness::Policy {
        profile: ProfileName::Recommended.profile(),
        tls13: false,
        groups: vec![0x0017],
        min_tls_version: None,
    };
    for node in [w.s.clone(), w.another_node()] {
        for (id, whole) in &ids {
            let rec = node.registration(&w.inst, id).await.unwrap();
            assert_eq!(rec.tls.as_ref().map(crate::tls::StoredFacts::get), Some(whole.get()), "{id}");
        }
        let page = node.registrations(&w.inst, None, None, 10).await.unwrap();
        assert!(page.items.iter().all(|r| r.tls.as_ref().is_some_and(|t| t.offer_ref().is_none())));
        let report = node.tls_readiness(&w.inst, &policy).await.unwrap();
        assert_eq!(report.evaluated, 3, "{report:?}");
        assert_eq!(report.refused.iter().map(|r| r.registration_id.as_str()).collect::<Vec<_>>(), ["dev-2"]);
    }
    // A record written whole (before offers were stored once) reads as it was written.
    let mut old = w.s.store.registration("dps", "dev-0").await.unwrap().unwrap();
    old.state.registration_id = "dev-old".into();
    old.tls = Some(ids[0].1.clone());
    w.s.store.put_registration("dps", &old, crate::store::Precondition::MustNotExist).await.unwrap();
    let back = w.another_node().registration(&w.inst, "dev-old").await.unwrap();
    assert_eq!(back.tls.as_ref().map(crate::tls::StoredFacts::get), Some(ids[0].1.get()));
    // A record naming an offer the store lost (restored from an older backup) reads as one
    // without an offer, never with the id showing.
    old.state.registration_id = "dev-lost".into();
    let negotiated = ids[0].1.to_value()["negotiated"].clone();
    old.tls = Some(crate::tls::StoredFacts::from_value(
        &json!({ "negotiated": negotiated, "offeredRef": "00000000000000000000000000000000" }),
    ));
    w.s.store.put_registration("dps", &old, crate::store::Precondition::MustNotExist).await.unwrap();
    let lost = w.s.registration(&w.inst, "dev-lost").await.unwrap().tls.unwrap().to_value();
    assert_eq!(lost, json!({ "negotiated": negotiated, "offered": null }));
    let report = w.s.tls_readiness(&w.inst, &policy).await.unwrap();
    assert_eq!(report.without_tls_facts, ["dev-lost"]);
    assert_eq!(report.evaluated, 4);
    // An offer stored under an id that is not its text's (a damaged store) is not put in either,
    // also when the node looks again after its recheck time.
    let text = w.s.store.offer(&named[0]).await.unwrap().unwrap();
    let damaged = crate::tls::StoredOffer { id: "00000000000000000000000000000000".into(), json: text };
    w.s.store.put_offer(&damaged).await.unwrap();
    w.clock.advance(Duration::from_secs(11 * 60));
    for node in [w.s.clone(), w.another_node()] {
        let lost = node.registration(&w.inst, "dev-lost").await.unwrap().tls.unwrap().to_value();
        assert_eq!(lost, json!({ "negotiated": negotiated, "offered": null }));
    }
}

#[tokio::test]
async fn unknown_device_wrong_key_and_unknown_scope_get_the_same_refusal() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("dev-1", K1)).await;
    let wrong = w.provision("dev-1", Some(&w.sas("dev-1", "bm9wZS1ub3BlLW5vcGUtbm9wZS1ub3Bl")), vec![], "").await;
    let unknown = w.provision("ghost", Some(&w.sas("ghost", K1)), vec![], "").await;
    let mut d = w.https(vec![]);
    let scope =
        d.request("0ne00000000", "dev-1", API, Some(&w.sas("dev-1", K1)), Operation::Register { body: b"" }).await;
    for r in [&wrong, &unknown, &scope] {
        assert_eq!(refused(r), (401, 401_002, "the device could not be authenticated".into()));
    }
}

#[tokio::test]
async fn token_problems_are_named_without_echoing_the_token() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("dev-1", K1)).await;
    let other = w.sas("dev-2", K1);
    let (status, _, message) = refused(&w.provision("dev-1", Some(&other), vec![], "").await);
    assert_eq!(status, 401);
    assert!(message.contains("not") && !message.contains("sig="), "{message}");
}

#[tokio::test]
async fn group_devices_sign_with_the_derived_key() {
    let w = World::new(&["hub-a"]).await;
    w.group(json!({ "enrollmentGroupId": "g1", "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": "Z3JvdXAta2V5LTAxMjM0NTY3ODlhYmNkZWY=", "secondaryKey": "Z3JvdXAta2V5LTIxMjM0NTY3ODlhYmNkZWY=" } } })).await;
    let r = w
        .provision("member-7", Some(&w.sas("member-7", "Z3JvdXAta2V5LTAxMjM0NTY3ODlhYmNkZWY=/member-7")), vec![], "")
        .await;
    assert_eq!(assigned(&r).1, "member-7");
    let DeviceReply::Operation(op) = &r else { unreachable!() };
    assert_eq!(op.registration_state.as_ref().unwrap().extra["symmetricKey"]["enrollmentGroupId"], "g1");
    let wrong = w
        .provision("member-8", Some(&w.sas("member-8", "Z3JvdXAta2V5LTAxMjM0NTY3ODlhYmNkZWY=/member-7")), vec![], "")
        .await;
    assert_eq!(refused(&wrong).0, 401);
}

/// Groups are read a page of 100 at a time: a device of the 120th group still finds it.
#[tokio::test]
async fn a_group_device_is_found_past_the_first_page_of_groups() {
    let w = World::new(&["hub-a"]).await;
    for i in 0..120 {
        let key = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("group-key-{i:03}-0123456789abcdef"),
        );
        w.group(json!({ "enrollmentGroupId": format!("g{i:03}"), "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": key, "secondaryKey": key } } })).await;
    }
    let last = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "group-key-119-0123456789abcdef");
    let r = w.provision("late-member", Some(&w.sas("late-member", &format!("{last}/late-member"))), vec![], "").await;
    let DeviceReply::Operation(op) = &r else { panic!("{r:?}") };
    assert_eq!(op.registration_state.as_ref().unwrap().extra["symmetricKey"]["enrollmentGroupId"], "g119");
}

/// Devices' groups are cached (docs/performance.md, "Group cache"), yet a group changed by
/// another node sharing the store (a second `Services` here) is seen by the next device.
#[tokio::test]
async fn group_changes_by_another_node_are_seen_by_the_next_device() {
    let w = World::new(&["hub-a"]).await;
    let other = w.another_node();
    let (k1, k2) = ("Z3JvdXAta2V5LTAxMjM0NTY3ODlhYmNkZWY=", "Z3JvdXAta2V5LTIxMjM0NTY3ODlhYmNkZWY=");
    let group = |key: &str, status: &str| -> EnrollmentGroup {
        serde_json::from_value(json!({ "enrollmentGroupId": "g1", "provisioningStatus": status, "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": key, "secondaryKey": key } } })).unwrap()
    };
    let provision = |id: &'static str, key: &'static str| {
        let w = &w;
        async move { w.provision(id, Some(&w.sas(id, &format!("{key}/{id}"))), vec![], "").await }
    };
    w.group(serde_json::to_value(group(k1, "enabled")).unwrap()).await;
    assert_eq!(assigned(&provision("m-1", k1).await).1, "m-1", "read, then cached");
    assert_eq!(assigned(&provision("m-2", k1).await).1, "m-2", "from the cache");
    // Another node rotates the group's key: the old key stops working at once.
    other.put_group(&w.inst, "g1", group(k2, "enabled"), None).await.unwrap();
    assert_eq!(refused(&provision("m-3", k1).await).0, 401, "the rotated-out key is refused");
    assert_eq!(assigned(&provision("m-4", k2).await).1, "m-4", "the new key works");
    // ... disables it ...
    other.put_group(&w.inst, "g1", group(k2, "disabled"), None).await.unwrap();
    assert_eq!(refused(&provision("m-5", k2).await).0, 401, "a disabled group registers no one");
    // ... deletes it, and creates another.
    other.delete_group(&w.inst, "g1", None).await.unwrap();
    assert_eq!(refused(&provision("m-6", k2).await).0, 401, "a deleted group registers no one");
    let mut g2 = group(k1, "enabled");
    g2.enrollment_group_id = "g2".into();
    other.put_group(&w.inst, "g2", g2, None).await.unwrap();
    let r = provision("m-7", k1).await;
    assert_eq!(assigned(&r).1, "m-7", "a new group is found at once");
    let DeviceReply::Operation(op) = &r else { unreachable!() };
    assert_eq!(op.registration_state.as_ref().unwrap().extra["symmetricKey"]["enrollmentGroupId"], "g2");
}

/// Devices' instances are cached by ID scope (docs/performance.md, "Instance cache"), yet an
/// instance changed or deleted by another node sharing the store is seen by the next device.
#[tokio::test]
async fn instance_changes_by_another_node_are_seen_by_the_next_device() {
    let w = World::new(&["hub-a"]).await;
    let other = w.another_node();
    for id in ["i-1", "i-2", "i-3", "i-4"] {
        w.enroll(symmetric(id, K1)).await;
    }
    let provision = |id: &'static str| {
        let w = &w;
        async move { w.provision(id, Some(&w.sas(id, K1)), vec![], "").await }
    };
    assert_eq!(assigned(&provision("i-1").await).0, "hub-a", "read, then cached");
    assert_eq!(assigned(&provision("i-2").await).0, "hub-a", "from the cache");
    // Another node links a different hub instead: the next device goes there.
    other
        .update_instance("dps", |i| {
            i.iot_hubs[0].name = "hub-b".into();
            i.iot_hubs[0].connection_string = "HostName=hub-b;SharedAccessKeyName=o;SharedAccessKey=aGVsbG8=".into();
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(assigned(&provision("i-3").await).0, "hub-b", "the changed instance is read again");
    // ... and deletes the instance: its scope is unknown at once.
    other.delete_instance("dps").await.unwrap();
    assert_eq!(refused(&provision("i-4").await).0, 401, "a deleted instance's scope registers no one");
}

#[tokio::test]
async fn x509_individual_and_group_and_the_chain_is_checked_once_per_connection() {
    let w = World::new(&["hub-a"]).await;
    let leaf = cert("dev-x", "LEAF1", Some("INT1"));
    let pem = String::from_utf8(leaf.clone()).unwrap();
    w.enroll(json!({ "registrationId": "dev-x", "attestation": { "type": "x509", "x509": { "clientCertificates": { "primary": { "certificate": pem } } } } })).await;
    let r = w.provision("dev-x", None, vec![leaf.clone()], "").await;
    assert_eq!(assigned(&r).1, "dev-x");
    assert_eq!(w.crypto.leaf_calls.load(Ordering::Relaxed), 1, "register and poll parsed the chain once");
    // CN must be the registration id.
    let r = w.provision("dev-y", None, vec![leaf], "").await;
    assert!(refused(&r).2.contains("subject CN"), "{r:?}");
    // A group whose CA issued the intermediate.
    w.group(json!({ "enrollmentGroupId": "xg", "attestation": { "type": "x509", "x509": { "signingCertificates": { "primary": { "certificate": "cn=root;id=ROOT;ca" } } } } })).await;
    let chain = vec![cert("member", "L2", Some("INT2")), cert("int", "INT2", Some("ROOT"))];
    let r = w.provision("member", None, chain, "").await;
    assert_eq!(assigned(&r).1, "member");
    // A chain to a foreign CA.
    let foreign = vec![cert("stranger", "L3", Some("INT3")), cert("int", "INT3", Some("OTHER"))];
    assert_eq!(refused(&w.provision("stranger", None, foreign, "").await).0, 401);
    // No certificate and no token.
    let none = w.provision("member", None, vec![], "").await;
    assert!(refused(&none).2.contains("no credential"));
}

#[tokio::test]
async fn requests_are_checked_before_anything_is_recorded() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("dev-1", K1)).await;
    let sas = w.sas("dev-1", K1);
    let mut d = w.https(vec![]);
    let scope = w.scope();
    let reg = |b: &'static [u8]| Operation::Register { body: b };
    assert_eq!(refused(&d.request(&scope, "dev-1", None, Some(&sas), reg(b"")).await).0, 400);
    for bad in ["2019", "2019-03-31-é", "é"] {
        assert_eq!(refused(&d.request(&scope, "dev-1", Some(bad), Some(&sas), reg(b"")).await).0, 400, "{bad}");
    }
    let mismatch = d.request(&scope, "dev-1", API, Some(&sas), reg(br#"{"registrationId":"dev-2"}"#)).await;
    assert_eq!(refused(&mismatch).0, 400);
    assert_eq!(refused(&d.request(&scope, "dev-1", API, Some(&sas), reg(b"{nope")).await).0, 400);
    let big = vec![b' '; super::MAX_MESSAGE + 1];
    let too_big = d.request(&scope, "dev-1", API, Some(&sas), Operation::Register { body: &big }).await;
    assert_eq!(refused(&too_big).0, 413);
    let bad_id = d.request(&scope, "-dev", API, Some(&w.sas("-dev", K1)), reg(b"")).await;
    assert_eq!(refused(&bad_id).0, 400);
    let unknown_op =
        d.request(&scope, "dev-1", API, Some(&sas), Operation::OperationStatus { operation_id: "4.x.y" }).await;
    assert_eq!(refused(&unknown_op).0, 404);
    assert!(w.s.registration(&w.inst, "dev-1").await.is_err(), "nothing recorded");
}

#[tokio::test]
async fn min_tls_version_is_enforced_as_soon_as_the_scope_is_known() {
    let (s, clock, _) = services();
    let body = json!({ "name": "strict", "location": "local", "sku": {"name": "S1", "capacity": 1}, "properties": { "minTlsVersion": "1.3" } });
    let out = s.deploy("rg", "local", &[(crate::service::DPS_RESOURCE_TYPE.to_owned(), body)]).await.unwrap();
    let inst = out.resources[0].0.clone();
    let sas = token(
        &format!("{}/registrations/d", inst.id_scope),
        K1,
        crate::ports::Clock::now(clock.as_ref()) + Duration::from_secs(60),
    );
    let mut d = s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let out = d.authenticate(inst.id_scope.as_str(), "d", None, Credential::Sas(&sas)).await;
    let AuthOutcome::Refused(e) = out else { panic!("{out:?}") };
    assert_eq!(e.status, 403);
    assert!(e.message.contains("TLS 1.3"));
    // The refusal stays with the connection: every request gets it.
    let r = d.handle(Operation::Register { body: b"" }).await;
    assert_eq!(refused(&r).0, 403);
}

#[tokio::test]
async fn a_connection_authenticated_at_connect_registers_and_polls() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("m-1", K1)).await;
    let mut d = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let sas = w.sas("m-1", K1);
    assert_eq!(
        d.authenticate(&w.scope(), "m-1", Some("2019-03-31"), Credential::Sas(&sas)).await,
        AuthOutcome::Attested
    );
    assert_eq!(d.registration_id(), Some("m-1"));
    let r = d.handle(Operation::Register { body: br#"{"payload":{"a":1}}"# }).await;
    let DeviceReply::Accepted { operation_id } = r else { panic!("{r:?}") };
    let poll = d.handle(Operation::OperationStatus { operation_id: &operation_id }).await;
    assert_eq!(assigned(&poll).0, "hub-a");
    let other = d.handle(Operation::Register { body: br#"{"registrationId":"m-2"}"# }).await;
    assert_eq!(refused(&other).0, 400);
}

#[tokio::test]
async fn a_long_lived_connection_does_not_register_through_a_disabled_enrollment() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("m-1", K1)).await;
    let mut d = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let sas = w.sas("m-1", K1);
    assert_eq!(d.authenticate(&w.scope(), "m-1", None, Credential::Sas(&sas)).await, AuthOutcome::Attested);
    let mut e = w.s.enrollment(&w.inst, "m-1").await.unwrap();
    e.provisioning_status = Some(crate::model::ProvisioningStatus::Disabled);
    w.s.put_enrollment(&w.inst, "m-1", e, None).await.unwrap();
    w.clock.advance(Duration::from_secs(60));
    let r = d.handle(Operation::Register { body: b"" }).await;
    assert_eq!(refused(&r).0, 401, "{r:?}");
}

/// An idle connection keeps only the device's names and an attestation digest
/// (`DeviceSession::rest`): polls are answered from that; a registration reads the instance and
/// enrollment again and goes through only if the attestation is still the one checked.
#[tokio::test]
async fn a_resting_connection_answers_polls_and_registers_after_reading_the_device_again() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("r-1", K1)).await;
    let mut d = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let sas = w.sas("r-1", K1);
    assert_eq!(d.authenticate(&w.scope(), "r-1", API, Credential::Sas(&sas)).await, AuthOutcome::Attested);
    d.rest();
    d.rest();
    assert_eq!(d.registration_id(), Some("r-1"));
    let r = d.handle(Operation::Register { body: br#"{"payload":{"a":1}}"# }).await;
    let DeviceReply::Accepted { operation_id } = r else { panic!("{r:?}") };
    d.rest();
    let poll = d.handle(Operation::OperationStatus { operation_id: &operation_id }).await;
    assert_eq!(assigned(&poll).0, "hub-a");
    d.rest();
    let DeviceReply::Registration(state) = d.handle(Operation::StatusLookup).await else { panic!("no registration") };
    assert_eq!(state.assigned_hub.as_deref(), Some("hub-a"));
    let unknown = d.handle(Operation::OperationStatus { operation_id: "not-an-operation" }).await;
    assert_eq!(refused(&unknown).0, 404, "{unknown:?}");

    // A group device rests and registers the same way.
    w.group(json!({ "enrollmentGroupId": "g1", "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": "Z3JvdXAta2V5LTAxMjM0NTY3ODlhYmNkZWY=", "secondaryKey": "Z3JvdXAta2V5LTIxMjM0NTY3ODlhYmNkZWY=" } } })).await;
    let mut g = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let member = w.sas("member-1", "Z3JvdXAta2V5LTAxMjM0NTY3ODlhYmNkZWY=/member-1");
    assert_eq!(g.authenticate(&w.scope(), "member-1", API, Credential::Sas(&member)).await, AuthOutcome::Attested);
    g.rest();
    let r = g.handle(Operation::Register { body: b"" }).await;
    assert!(matches!(r, DeviceReply::Accepted { .. }), "{r:?}");
}

#[tokio::test]
async fn a_resting_connection_does_not_register_through_changed_keys_or_a_disabled_enrollment() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("r-2", K1)).await;
    w.enroll(symmetric("r-3", K1)).await;
    let sas2 = w.sas("r-2", K1);
    let sas3 = w.sas("r-3", K1);
    let mut rekeyed = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let mut disabled = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    assert_eq!(rekeyed.authenticate(&w.scope(), "r-2", API, Credential::Sas(&sas2)).await, AuthOutcome::Attested);
    assert_eq!(disabled.authenticate(&w.scope(), "r-3", API, Credential::Sas(&sas3)).await, AuthOutcome::Attested);
    rekeyed.rest();
    disabled.rest();
    w.enroll(symmetric("r-2", "bmV3LWtleS0wMTIzNDU2Nzg5YWJjZGVmIQ==")).await;
    let mut e = w.s.enrollment(&w.inst, "r-3").await.unwrap();
    e.provisioning_status = Some(crate::model::ProvisioningStatus::Disabled);
    w.s.put_enrollment(&w.inst, "r-3", e, None).await.unwrap();

    let r = rekeyed.handle(Operation::Register { body: b"" }).await;
    let (status, _, message) = refused(&r);
    assert_eq!(status, 401, "{r:?}");
    assert!(message.contains("enrollment changed"), "{message}");
    let r = disabled.handle(Operation::Register { body: b"" }).await;
    assert_eq!(refused(&r).0, 401, "{r:?}");
    assert!(w.s.registration(&w.inst, "r-2").await.is_err(), "nothing was recorded for the re-keyed device");
}

#[tokio::test]
async fn throttled_registrations_say_when_to_retry() {
    let w = World::new(&["hub-a"]).await;
    let w = World { s: w.s.clone().with_registration_quota(1), ..w };
    w.enroll(symmetric("t-1", K1)).await;
    assert_eq!(w.provision("t-1", Some(&w.sas("t-1", K1)), vec![], "").await.status(), 200);
    let again = w.provision("t-1", Some(&w.sas("t-1", K1)), vec![], "").await;
    let (status, code, _) = refused(&again);
    assert_eq!((status, code), (429, 429_001));
    assert!(again.retry_after().is_some_and(|s| s >= 1));
}

#[tokio::test]
async fn reprovisioning_follows_the_enrollment_policy() {
    let w = World::new(&["hub-a", "hub-b"]).await;
    let mut e = symmetric("r-1", K1);
    e["iotHubs"] = json!(["hub-a"]);
    e["allocationPolicy"] = json!("hashed");
    e["initialTwin"] = json!({ "tags": { "t": 1 } });
    w.enroll(e.clone()).await;
    let sas = w.sas("r-1", K1);
    assert_eq!(assigned(&w.provision("r-1", Some(&sas), vec![], "").await).2, "initialAssignment");
    // Same hub again: reprovisionedToInitialAssignment, or initialAssignment for old api-versions.
    assert_eq!(assigned(&w.provision("r-1", Some(&sas), vec![], "").await).2, "reprovisionedToInitialAssignment");
    let mut d = w.https(vec![]);
    let old = Some("2018-11-01");
    let r = d.request(&w.scope(), "r-1", old, Some(&sas), Operation::Register { body: b"" }).await;
    let DeviceReply::Accepted { operation_id } = r else { panic!("{r:?}") };
    let r =
        d.request(&w.scope(), "r-1", old, Some(&sas), Operation::OperationStatus { operation_id: &operation_id }).await;
    assert_eq!(assigned(&r).2, "initialAssignment");
    // Moved to hub-b, resetting data: deviceDataReset with the initial twin.
    e["iotHubs"] = json!(["hub-b"]);
    e["reprovisionPolicy"] = json!({ "updateHubAssignment": true, "migrateDeviceData": false });
    let cur = w.s.enrollment(&w.inst, "r-1").await.unwrap();
    let mut next: IndividualEnrollment = serde_json::from_value(e.clone()).unwrap();
    next.etag = cur.etag;
    w.s.put_enrollment(&w.inst, "r-1", next, None).await.unwrap();
    assert_eq!(
        assigned(&w.provision("r-1", Some(&sas), vec![], "").await),
        ("hub-b".into(), "r-1".into(), "deviceDataReset".into())
    );
    let rec = w.s.registration(&w.inst, "r-1").await.unwrap();
    assert_eq!(rec.initial_twin, Some(json!({ "tags": { "t": 1 } })));
    // Never re-provision: stays on hub-b whatever the enrollment now says.
    e["iotHubs"] = json!(["hub-a"]);
    e["reprovisionPolicy"] = json!({ "updateHubAssignment": false, "migrateDeviceData": true });
    let cur = w.s.enrollment(&w.inst, "r-1").await.unwrap();
    let mut next: IndividualEnrollment = serde_json::from_value(e).unwrap();
    next.etag = cur.etag;
    w.s.put_enrollment(&w.inst, "r-1", next, None).await.unwrap();
    assert_eq!(assigned(&w.provision("r-1", Some(&sas), vec![], "").await).0, "hub-b");
    assert_eq!(w.s.registration(&w.inst, "r-1").await.unwrap().twin_action.as_deref(), Some("kept"));
}

// -- TPM (docs/tpm.md, "In the request path") --------------------------------------------------------------------

fn tpm_body(id: &str, ek: &str, srk: &str) -> String {
    json!({ "registrationId": id, "tpm": { "endorsementKey": ek, "storageRootKey": srk } }).to_string()
}

impl World {
    async fn enroll_tpm(&self, id: &str, ek: &str) {
        self.enroll(json!({ "registrationId": id, "attestation": { "type": "tpm", "tpm": { "endorsementKey": ek } } }))
            .await;
    }

    /// One register without a token on a fresh connection.
    async fn register_once(&self, id: &str, body: &str) -> DeviceReply {
        let mut d = self.https(vec![]);
        d.request(&self.scope(), id, API, None, Operation::Register { body: body.as_bytes() }).await
    }

    /// Whether a register with a SAS under `key` (no tpm block) is accepted.
    async fn signs_in(&self, id: &str, key: &str) -> bool {
        let sas = self.sas(id, key);
        let mut d = self.https(vec![]);
        let r = d.request(&self.scope(), id, API, Some(&sas), Operation::Register { body: b"" }).await;
        matches!(r, DeviceReply::Accepted { .. })
    }

    /// Asks for a challenge; the key the TPM with `ek`/`srk` finds in it.
    async fn challenged(&self, d: &mut DeviceSession, id: &str, ek: &str, srk: &str, auth: Option<&str>) -> String {
        let body = tpm_body(id, ek, srk);
        let r = d.request(&self.scope(), id, API, auth, Operation::Register { body: body.as_bytes() }).await;
        assert_eq!(r.status(), 401);
        let DeviceReply::Challenge { authentication_key, key_name } = &r else { panic!("not a challenge: {r:?}") };
        assert_eq!(key_name, "registration");
        assert_eq!(r.body()["authenticationKey"], json!(authentication_key), "the 401 body carries the blob");
        TextTpm::open(authentication_key, ek, srk).expect("the blob is for this TPM")
    }
}

#[tokio::test]
async fn a_tpm_device_is_challenged_then_registers_with_the_issued_key() {
    let w = World::new(&["hub-a"]).await;
    let (ek, srk) = (tpm_key("rsa2048", "ek-1"), tpm_key("rsa2048", "srk-1"));
    w.enroll_tpm("t-1", &ek).await;
    let mut d = w.https(vec![]);
    let k = w.challenged(&mut d, "t-1", &ek, &srk, None).await;
    let sas = w.sas("t-1", &k);
    // Node and C# send the tpm block again with the SAS; AZIOT sends none.
    let body = tpm_body("t-1", &ek, &srk);
    for body in [body.as_str(), ""] {
        // A fresh connection (another node): the issued key comes from the store.
        let mut d = w.https(vec![]);
        let r = d.request(&w.scope(), "t-1", API, Some(&sas), Operation::Register { body: body.as_bytes() }).await;
        let DeviceReply::Accepted { operation_id } = r else { panic!("not accepted: {r:?}") };
        let r = d
            .request(&w.scope(), "t-1", API, Some(&sas), Operation::OperationStatus { operation_id: &operation_id })
            .await;
        assert_eq!(assigned(&r).0, "hub-a");
        // The final result hands the same key over again, for the same TPM.
        let blob = r.body()["registrationState"]["tpm"]["authenticationKey"]
            .as_str()
            .expect("tpm.authenticationKey")
            .to_owned();
        assert_eq!(TextTpm::open(&blob, &ek, &srk).as_deref(), Some(k.as_str()));
        assert_eq!(TextTpm::open(&blob, &ek, &tpm_key("rsa2048", "srk-other")), None);
    }
    // Kept as a secret: the record the service API shows has no trace of it.
    let rec = w.s.registration(&w.inst, "t-1").await.unwrap();
    assert!(!serde_json::to_string(&rec).unwrap().contains(&k));
}

#[tokio::test]
async fn tpm_refusals_unknown_wrong_ek_and_unusable_keys() {
    let w = World::new(&["hub-a"]).await;
    let (ek, srk) = (tpm_key("rsa2048", "ek-1"), tpm_key("rsa2048", "srk-1"));
    w.enroll_tpm("t-1", &ek).await;
    w.enroll(symmetric("sym-1", K1)).await;
    let mut d = w.https(vec![]);
    // Unknown id, another TPM's EK, a symmetric-key enrollment: the one 404 (as DPS answers an
    // unknown TPM device), no challenge.
    for (id, key) in [("nobody", &ek), ("t-1", &tpm_key("rsa2048", "ek-2")), ("sym-1", &ek)] {
        let r = w.register_once(id, &tpm_body(id, key, &srk)).await;
        assert_eq!(refused(&r), (404, 404_201, format!("individual enrollment {id:?} not found")), "{id}");
    }
    // Keys OpenDPS cannot use: 400 that says why, whoever is asked for.
    for (id, key, srk, says) in [
        ("t-1", tpm_key("ecc", "ek-1"), srk.clone(), "ECC"),
        ("nobody", tpm_key("ecc", "x"), srk.clone(), "ECC"),
        ("t-1", tpm_key("rsa3072", "ek-1"), srk.clone(), "RSA-2048"),
        ("t-1", ek.clone(), tpm_key("ecc", "srk"), "storage root key is an ECC key"),
        ("t-1", ek.clone(), String::new(), "storageRootKey is required"),
    ] {
        let (status, code, msg) = refused(&w.register_once(id, &tpm_body(id, &key, &srk)).await);
        assert_eq!((status, code), (400, 400_000), "{msg}");
        assert!(msg.contains(says), "{msg}");
    }
    // A register with the tpm block but a SAS under another key: challenged again.
    let k1 = w.challenged(&mut d, "t-1", &ek, &srk, None).await;
    let forged = w.sas("t-1", "not-the-issued-key");
    let k2 = w.challenged(&mut d, "t-1", &ek, &srk, Some(&forged)).await;
    assert_ne!(k1, k2, "a fresh key each challenge");
    // An expired SAS under the issued key: challenged again too.
    let expired = token(
        &format!("{}/registrations/t-1", w.scope()),
        &k2,
        crate::ports::Clock::now(w.clock.as_ref()) - Duration::from_secs(10),
    );
    w.challenged(&mut d, "t-1", &ek, &srk, Some(&expired)).await;
    // Without the tpm block (a poll, an AZIOT register) a bad SAS is the plain 401 error.
    let r = d.request(&w.scope(), "t-1", API, Some(&forged), Operation::Register { body: b"" }).await;
    assert_eq!(refused(&r).0, 401);
    let r =
        d.request(&w.scope(), "t-1", API, Some(&forged), Operation::OperationStatus { operation_id: "4.x.y" }).await;
    assert_eq!(refused(&r).0, 401);
    assert!(w.s.registration(&w.inst, "t-1").await.is_err(), "nothing was registered");
}

#[tokio::test]
async fn earlier_keys_stay_valid_until_the_ek_changes_or_the_enrollment_goes() {
    let w = World::new(&["hub-a"]).await;
    let (ek, srk) = (tpm_key("rsa2048", "ek-1"), tpm_key("rsa2048", "srk-1"));
    w.enroll_tpm("t-1", &ek).await;
    let mut d = w.https(vec![]);
    let first = w.challenged(&mut d, "t-1", &ek, &srk, None).await;
    // Someone else asks with the same (public) EK and their own SRK: the device's key still works.
    w.challenged(&mut d, "t-1", &ek, &tpm_key("rsa2048", "srk-mallory"), None).await;
    assert!(w.signs_in("t-1", &first).await);
    // Only the newest few are kept.
    for _ in 0..crate::model::MAX_ISSUED_TPM_KEYS {
        w.challenged(&mut d, "t-1", &ek, &srk, None).await;
    }
    assert!(!w.signs_in("t-1", &first).await, "pushed out by newer challenges");
    let latest = w.challenged(&mut d, "t-1", &ek, &srk, None).await;
    assert!(w.signs_in("t-1", &latest).await);
    // The enrollment's EK is replaced: keys issued to the old TPM no longer count.
    w.enroll_tpm("t-1", &tpm_key("rsa2048", "ek-new")).await;
    assert!(!w.signs_in("t-1", &latest).await);
    // Deleting the enrollment deletes the issued keys.
    w.enroll_tpm("t-1", &ek).await;
    w.s.delete_enrollment(&w.inst, "t-1", None).await.unwrap();
    w.enroll_tpm("t-1", &ek).await;
    assert!(!w.signs_in("t-1", &latest).await);
}

#[tokio::test]
async fn a_disabled_tpm_enrollment_is_refused_after_the_challenge() {
    let w = World::new(&["hub-a"]).await;
    let (ek, srk) = (tpm_key("rsa2048", "ek-1"), tpm_key("rsa2048", "srk-1"));
    w.enroll(json!({ "registrationId": "t-1", "provisioningStatus": "disabled", "attestation": { "type": "tpm", "tpm": { "endorsementKey": ek } } }))
        .await;
    let mut d = w.https(vec![]);
    let k = w.challenged(&mut d, "t-1", &ek, &srk, None).await;
    let r = w.provision("t-1", Some(&w.sas("t-1", &k)), vec![], "").await;
    let (status, _, msg) = refused(&r);
    assert_eq!(status, 401);
    assert!(msg.contains("disabled"), "{msg}");
}

#[tokio::test]
async fn tpm_enrollments_with_unusable_endorsement_keys_are_refused_on_write() {
    let w = World::new(&["hub-a"]).await;
    for (ek, says) in [(tpm_key("ecc", "e"), "ECC"), (tpm_key("rsa4096", "e"), "RSA-2048")] {
        let e: IndividualEnrollment = serde_json::from_value(
            json!({ "registrationId": "t-1", "attestation": { "type": "tpm", "tpm": { "endorsementKey": ek } } }),
        )
        .unwrap();
        let err = w.s.put_enrollment(&w.inst, "t-1", e, None).await.expect_err("refused");
        assert_eq!(err.kind().status(), 400);
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[tokio::test]
async fn a_tpm_enrollment_reached_over_mqtt_is_told_to_use_https_or_amqp() {
    let w = World::new(&["hub-a"]).await;
    let (ek, srk) = (tpm_key("rsa2048", "ek-1"), tpm_key("rsa2048", "srk-1"));
    w.enroll_tpm("t-1", &ek).await;
    // Even a device that holds an issued key cannot use it over MQTT.
    let k = w.challenged(&mut w.https(vec![]), "t-1", &ek, &srk, None).await;
    for transport in [Transport::Mqtt, Transport::MqttWs] {
        for sas in [w.sas("t-1", &k), w.sas("t-1", "anything")] {
            let mut d = w.s.device_session(connection(transport, TlsVersion::Tls12, vec![]));
            let AuthOutcome::Refused(e) = d.authenticate(&w.scope(), "t-1", API, Credential::Sas(&sas)).await else {
                panic!("not refused")
            };
            assert_eq!((e.status, e.error_code), (401, 401_002));
            assert!(e.message.contains("TPM attestation is not available over MQTT"), "{}", e.message);
            let r = d.handle(Operation::Register { body: b"" }).await;
            assert!(refused(&r).2.contains("over MQTT"));
        }
    }
    // Other ids over MQTT keep the one refusal.
    let mut d = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    let AuthOutcome::Refused(e) =
        d.authenticate(&w.scope(), "nobody", API, Credential::Sas(&w.sas("nobody", "k"))).await
    else {
        panic!("not refused")
    };
    assert_eq!(e.message, "the device could not be authenticated");
}

#[tokio::test]
async fn a_tpm_device_authenticates_at_connect_as_amqp_sasl_does() {
    // The AMQP SASL `TPM` exchange in core terms: the keys ask for the challenge, the SAS answers
    // it, and the connection then registers and polls with no credential; the final result
    // still hands the key over (the C# register body over AMQP is empty).
    let w = World::new(&["hub-a"]).await;
    let (ek, srk) = (tpm_key("rsa2048", "ek-1"), tpm_key("rsa2048", "srk-1"));
    w.enroll_tpm("t-1", &ek).await;
    let keys = super::TpmKeys { endorsement_key: ek.clone(), storage_root_key: Some(srk.clone()) };
    let mut d = w.s.device_session(connection(Transport::Amqp, TlsVersion::Tls12, vec![]));
    let AuthOutcome::Challenge { authentication_key } =
        d.authenticate(&w.scope(), "t-1", API, Credential::Tpm(&keys)).await
    else {
        panic!("no challenge")
    };
    let k = TextTpm::open(&authentication_key, &ek, &srk).expect("for this TPM");
    let wrong = w.sas("t-1", "wrong");
    assert!(matches!(d.authenticate(&w.scope(), "t-1", API, Credential::Sas(&wrong)).await, AuthOutcome::Refused(_)));
    let sas = w.sas("t-1", &k);
    assert_eq!(d.authenticate(&w.scope(), "t-1", API, Credential::Sas(&sas)).await, AuthOutcome::Attested);
    w.clock.advance(Duration::from_secs(10)); // the register re-reads the enrollment
    let DeviceReply::Accepted { operation_id } = d.handle(Operation::Register { body: b"" }).await else {
        panic!("not accepted")
    };
    let r = d.handle(Operation::OperationStatus { operation_id: &operation_id }).await;
    assert_eq!(assigned(&r).0, "hub-a");
    let blob = r.body()["registrationState"]["tpm"]["authenticationKey"].as_str().expect("key blob").to_owned();
    assert_eq!(TextTpm::open(&blob, &ek, &srk), Some(k));
}

#[tokio::test]
async fn an_api_version_learnt_after_authentication_applies_to_later_requests() {
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("v-1", K1)).await;
    let sas = w.sas("v-1", K1);
    let register_twice = |api: Option<&'static str>| {
        let w = &w;
        let sas = sas.clone();
        async move {
            let mut last = String::new();
            for _ in 0..2 {
                let mut d = w.s.device_session(connection(Transport::Amqp, TlsVersion::Tls12, vec![]));
                assert_eq!(d.authenticate(&w.scope(), "v-1", None, Credential::Sas(&sas)).await, AuthOutcome::Attested);
                if let Some(v) = api {
                    d.set_api_version(v).expect("a valid api-version");
                }
                let r = d.handle(Operation::Register { body: b"" }).await;
                let DeviceReply::Accepted { operation_id } = r else { panic!("{r:?}") };
                last = assigned(&d.handle(Operation::OperationStatus { operation_id: &operation_id }).await).2;
            }
            last
        }
    };
    assert_eq!(register_twice(None).await, "reprovisionedToInitialAssignment");
    assert_eq!(register_twice(Some("2019-03-31")).await, "initialAssignment");
    let mut d = w.s.device_session(connection(Transport::Amqp, TlsVersion::Tls12, vec![]));
    let e = d.set_api_version("yesterday").expect_err("malformed");
    assert_eq!((e.status, e.error_code), (400, 400_000));
}

/// Records what the session reports, as `kind instance protocol result`.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl crate::observe::Observer for Recorder {
    fn attestation_attempt(&self, i: &str, t: Transport, r: crate::observe::AttestationResult) {
        self.0.lock().unwrap().push(format!("attest {i} {} {}", t.as_str(), r.as_str()));
    }
    fn registration_attempt(&self, i: &str, t: Transport, r: &str) {
        self.0.lock().unwrap().push(format!("register {i} {} {r}", t.as_str()));
    }
    fn device_assignment(&self, i: &str, t: Transport, hub: &str) {
        self.0.lock().unwrap().push(format!("assign {i} {} {hub}", t.as_str()));
    }
    fn network_refusal(&self, i: &str, api: crate::observe::Api, reason: &str) {
        self.0.lock().unwrap().push(format!("refuse {i} {} {reason}", api.as_str()));
    }
}

#[tokio::test]
async fn the_session_reports_attestations_registrations_assignments_and_refusals() {
    let mut w = World::new(&["hub-a"]).await;
    let rec = std::sync::Arc::new(Recorder::default());
    w.s = w.s.clone().with_observer(rec.clone());
    w.enroll(json!({ "registrationId": "dev-1", "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": K1, "secondaryKey": K1 } } })).await;
    let scope = w.scope();
    let auth = w.sas("dev-1", K1);
    let mut d = w.https(vec![]);
    let register = Operation::Register { body: b"" };
    // Twice on one keep-alive session (the second reuses the authentication), then an unknown
    // scope on the same session: its refusal is not counted against the earlier instance.
    assert!(matches!(d.request(&scope, "dev-1", API, Some(&auth), register).await, DeviceReply::Accepted { .. }));
    assert!(matches!(d.request(&scope, "dev-1", API, Some(&auth), register).await, DeviceReply::Accepted { .. }));
    assert!(matches!(d.request("0ne00000000", "dev-1", API, Some(&auth), register).await, DeviceReply::Error(_)));
    // A connection that authenticated before the rule below.
    let mut early = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    assert_eq!(early.authenticate(&scope, "dev-1", API, Credential::Sas(&auth)).await, AuthOutcome::Attested);
    // The instance rejects this address: refused before the credential is looked at.
    w.s.update_instance("dps", |i| {
        i.ip_filter_rules = vec![crate::model::IpFilterRule {
            filter_name: "all".into(),
            action: crate::model::IpFilterAction::Reject,
            ip_mask: "0.0.0.0/0".into(),
            target: crate::model::IpFilterTarget::DeviceApi,
        }];
        Ok(())
    })
    .await
    .unwrap();
    let mut m = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
    assert!(
        matches!(m.authenticate(&scope, "dev-1", API, Credential::Sas(&auth)).await, AuthOutcome::Refused(w) if w.status == 401)
    );
    assert!(matches!(m.handle(register).await, DeviceReply::Error(e) if e.status == 401));
    // The early connection's next registration (its authentication now older than 5 s) sees it.
    w.clock.advance(Duration::from_secs(6));
    assert!(matches!(early.handle(register).await, DeviceReply::Error(e) if e.status == 401));
    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "attest dps https success",
            "register dps https assigned",
            "assign dps https hub-a",
            "register dps https assigned",
            "assign dps https hub-a",
            "attest  https failure",
            "register  https refused",
            "attest dps mqtt success",
            "refuse dps device ip_filter",
            "register dps mqtt refused",
            "refuse dps device ip_filter",
            "register dps mqtt refused",
        ]
    );
}

#[tokio::test]
async fn an_assigned_device_is_written_into_its_hub_and_a_refusing_hub_fails_it() {
    use crate::testing::RecordingHub;
    let mut w = World::new(&["hub-a", "hub-b"]).await;
    let hub = std::sync::Arc::new(RecordingHub::default());
    w.s = w.s.clone().with_hub_registry(hub.clone());
    let mut e = symmetric("dev-1", K1);
    e["capabilities"] = json!({ "iotEdge": true });
    e["iotHubs"] = json!(["hub-a"]);
    e["initialTwin"] = json!({ "tags": { "t": 1 }, "properties": { "desired": { "d": 2 } } });
    w.enroll(e.clone()).await;
    let sas = w.sas("dev-1", K1);
    assert_eq!(assigned(&w.provision("dev-1", Some(&sas), vec![], "").await).0, "hub-a");
    let calls = std::mem::take(&mut *hub.calls.lock().unwrap());
    assert_eq!(
        calls,
        vec![
            ("hub-a".into(), format!("put dev-1 sas {K1} c2Vjb25kLTAxMjM0NTY3ODlhYmNkZWYh edge=true")),
            ("hub-a".into(), r#"twin dev-1 {"properties":{"desired":{"d":2}},"tags":{"t":1}}"#.into()),
        ]
    );
    // Migration to hub-b copies the old hub's twin, without IoT Hub's own `$` members.
    e["iotHubs"] = json!(["hub-b"]);
    w.enroll(e.clone()).await;
    assert_eq!(assigned(&w.provision("dev-1", Some(&sas), vec![], "").await).2, "deviceDataMigrated");
    let calls = std::mem::take(&mut *hub.calls.lock().unwrap());
    assert_eq!(
        calls[1],
        ("hub-b".into(), r#"twin dev-1 {"properties":{"desired":{"x":1}},"tags":{"from":"hub-a"}}"#.into())
    );
    // A refusing hub fails the registration with its answer; a retry once it is fixed succeeds.
    hub.refuse.store(true, Ordering::Relaxed);
    w.enroll(symmetric("dev-2", K1)).await;
    let sas2 = w.sas("dev-2", K1);
    let r = w.provision("dev-2", Some(&sas2), vec![], "").await;
    let DeviceReply::Operation(op) = &r else { panic!("{r:?}") };
    assert_eq!(op.status, RegistrationStatus::Failed);
    let st = op.registration_state.as_ref().unwrap();
    assert_eq!(st.error_code, Some(crate::service::HUB_REFUSED));
    let msg = st.error_message.clone().unwrap();
    assert!(msg.contains("401") && msg.contains("IotHubUnauthorizedAccess") && !msg.contains("aGVsbG8="), "{msg}");
    assert!(st.assigned_hub.is_none());
    hub.refuse.store(false, Ordering::Relaxed);
    assert_eq!(assigned(&w.provision("dev-2", Some(&sas2), vec![], "").await).2, "initialAssignment");
    // Never re-provision: the hub is not touched again.
    let mut n = symmetric("dev-3", K1);
    n["reprovisionPolicy"] = json!({ "updateHubAssignment": false, "migrateDeviceData": false });
    w.enroll(n).await;
    let sas3 = w.sas("dev-3", K1);
    assigned(&w.provision("dev-3", Some(&sas3), vec![], "").await);
    hub.calls.lock().unwrap().clear();
    assigned(&w.provision("dev-3", Some(&sas3), vec![], "").await);
    assert!(hub.calls.lock().unwrap().is_empty(), "never: the hub is left alone");
}

#[tokio::test]
async fn a_node_whose_database_is_not_primary_serves_no_device_and_records_nothing() {
    use crate::service::Role;
    let w = World::new(&["hub-a"]).await;
    w.enroll(symmetric("sb-1", K1)).await;
    let sas = w.sas("sb-1", K1);
    // An HTTPS session that authenticated while primary keeps no pass once the role changes.
    let mut d = w.https(vec![]);
    let first = d.request(&w.scope(), "sb-1", API, Some(&sas), Operation::StatusLookup).await;
    assert_ne!(first.status(), 503);
    for role in [Role::Standby, Role::Unreachable] {
        w.s.set_role(role);
        let r = d.request(&w.scope(), "sb-1", API, Some(&sas), Operation::Register { body: b"" }).await;
        let (status, code, message) = refused(&r);
        assert_eq!((status, code), (503, 503_000));
        assert!(message.contains(role.as_str()), "{message}");
        assert_eq!(r.retry_after(), Some(2));
        let mut m = w.s.device_session(connection(Transport::Mqtt, TlsVersion::Tls12, vec![]));
        let AuthOutcome::Refused(e) = m.authenticate(&w.scope(), "sb-1", None, Credential::Sas(&sas)).await else {
            panic!("authenticated on a {role:?} database")
        };
        assert_eq!(e.status, 503);
    }
    assert!(w.s.registration(&w.inst, "sb-1").await.is_err(), "nothing recorded");
    // Promoted: served again.
    assert_eq!(w.s.set_role(Role::Primary), Role::Unreachable);
    assert_eq!(w.provision("sb-1", Some(&sas), vec![], "").await.status(), 200);
}
