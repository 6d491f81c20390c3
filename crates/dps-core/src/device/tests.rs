//! The device API use case without sockets, files or OpenSSL: an in-memory store, a manual
//! clock and plain-text credential "crypto" (see `crate::testing`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::{AuthOutcome, Credential, DeviceReply, DeviceSession, Operation, Transport};
use crate::model::{EnrollmentGroup, IndividualEnrollment, Instance, LinkedHub, RegistrationStatus};
use crate::service::{InstanceDefaults, Services};
use crate::testing::{cert, connection, services, token, ManualClock, TextCrypto};
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

#[tokio::test]
async fn a_tpm_register_without_a_token_is_refused_until_tpm_attestation_exists() {
    let w = World::new(&["hub-a"]).await;
    let mut d = w.https(vec![]);
    let body = br#"{"registrationId":"t","tpm":{"endorsementKey":"AAE=","storageRootKey":"AAI="}}"#;
    let r = d.request(&w.scope(), "t", API, None, Operation::Register { body }).await;
    assert_eq!(refused(&r).0, 401);
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
