//! TPM attestation over HTTPS against a real server (docs/tpm.md, "In the request path"): the 401 challenge in
//! the shape the clients read, a software TPM (dps-attest's, with the TPM's checks) that opens it,
//! the SAS signed with the issued key, 202, and the final result that hands the key over again;
//! refusals for keys OpenDPS cannot use, EKs it does not know, SAS tokens under other keys (another
//! device's issued key included), a body naming another registration id, a disabled enrollment;
//! TPM enrollments written through the service API (EK checked on write), reprovisioning to
//! another hub, and the TLS readiness report counting the TPM device.
//! (The official Node TPM client on swtpm is exercised in tests/devices/test_tpm.py.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{http, start, TestServer};
use dps_attest::tpm::testing::SoftwareTpm;
use dps_attest::tpm::ActivationBlobFields;
use dps_core::base64::{decode, encode};
use dps_core::model::{IndividualEnrollment, Instance};
use serde_json::{json, Value};

const API: &str = "api-version=2021-10-01";
const ECC_EK: &[u8] = include_bytes!("../../dps-attest/testdata/tpm/swtpm-ek-ecc.pub");
const RSA3072: &[u8] = include_bytes!("../../dps-attest/testdata/tpm/swtpm-rsa3072.pub");

async fn setup() -> (TestServer, Instance) {
    let s = start("").await;
    let inst = common::link_hub(&s, "hub-a.azure-devices.net").await;
    (s, inst)
}

async fn enroll(s: &TestServer, inst: &Instance, id: &str, ek: &[u8]) -> Result<(), dps_core::error::Error> {
    let e: IndividualEnrollment = serde_json::from_value(
        json!({ "registrationId": id, "attestation": { "type": "tpm", "tpm": { "endorsementKey": encode(ek) } } }),
    )
    .unwrap();
    s.server.state.services.put_enrollment(inst, id, e, None).await.map(drop)
}

fn body(id: &str, ek: &[u8], srk: &[u8]) -> String {
    json!({ "registrationId": id, "tpm": { "endorsementKey": encode(ek), "storageRootKey": encode(srk) } }).to_string()
}

fn sas(inst: &Instance, id: &str, key: &[u8]) -> String {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let resource = format!("{}/registrations/{id}", inst.id_scope.as_str());
    dps_attest::sas::make_token(&resource, &encode(key), expiry, Some("registration")).unwrap()
}

/// A register; (status, body).
async fn register(s: &TestServer, inst: &Instance, id: &str, auth: Option<String>, body: &str) -> (u16, Value) {
    let path = format!("/{}/registrations/{id}/register?{API}", inst.id_scope.as_str());
    let (status, _, v) = http(s, "PUT", &path, auth, body).await;
    (status, v)
}

/// The challenge of a 401: checks its shape, returns the blob.
fn challenge(status: u16, v: &Value) -> Vec<u8> {
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["keyName"], "registration", "{v}");
    assert!(v["message"].is_string(), "{v}");
    let blob = decode(v["authenticationKey"].as_str().expect("authenticationKey")).expect("base64");
    let f = ActivationBlobFields::parse(&blob).expect("six TPM2B fields, nothing after");
    assert_eq!(f.uri_data, [0, 0], "field 6 present and empty");
    blob
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tpm_device_is_challenged_registers_and_gets_its_key_again() {
    let (s, inst) = setup().await;
    let tpm = SoftwareTpm::default();
    let (ek, srk) = (tpm.endorsement_key(), tpm.storage_root_key());
    enroll(&s, &inst, "tpm-dev-1", &ek).await.unwrap();

    let (status, v) = register(&s, &inst, "tpm-dev-1", None, &body("tpm-dev-1", &ek, &srk)).await;
    let k = tpm.activate(&challenge(status, &v)).expect("our TPM opens the challenge");
    assert_eq!(k.len(), 32);
    assert!(SoftwareTpm::default().activate(&challenge(status, &v)).is_err(), "another TPM cannot");

    // A SAS under another key, with the tpm block: challenged again (C# takes any 401 so).
    let (status, v) =
        register(&s, &inst, "tpm-dev-1", Some(sas(&inst, "tpm-dev-1", b"wrong")), &body("tpm-dev-1", &ek, &srk)).await;
    let k2 = tpm.activate(&challenge(status, &v)).expect("a fresh challenge");
    assert_ne!(k, k2);

    let auth = sas(&inst, "tpm-dev-1", &k2);
    let (status, v) = register(&s, &inst, "tpm-dev-1", Some(auth.clone()), &body("tpm-dev-1", &ek, &srk)).await;
    assert_eq!(status, 202, "{v}");
    let op = v["operationId"].as_str().expect("operationId").to_owned();
    let path = format!("/{}/registrations/tpm-dev-1/operations/{op}?{API}", inst.id_scope.as_str());
    let (status, _, v) = http(&s, "GET", &path, Some(auth), "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "assigned", "{v}");
    assert_eq!(v["registrationState"]["assignedHub"], "hub-a.azure-devices.net");
    let blob =
        decode(v["registrationState"]["tpm"]["authenticationKey"].as_str().expect("tpm.authenticationKey")).unwrap();
    assert_eq!(tpm.activate(&blob).expect("the final blob opens"), k2, "the key the device signs with");

    // The service API's record shows neither the key nor the blob.
    let rec = s.server.state.services.registration(&inst, "tpm-dev-1").await.unwrap();
    let text = serde_json::to_string(&rec).unwrap();
    assert!(!text.contains(&encode(&k2)) && !text.contains("authenticationKey"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_and_unknown_endorsement_keys_are_refused() {
    let (s, inst) = setup().await;
    let tpm = SoftwareTpm::default();
    let (ek, srk) = (tpm.endorsement_key(), tpm.storage_root_key());
    enroll(&s, &inst, "tpm-dev-1", &ek).await.unwrap();

    // ECC and RSA-3072: 400 that says so, whether or not the id is enrolled.
    for (id, ek, srk, says) in [
        ("tpm-dev-1", ECC_EK, srk.as_slice(), "ECC"),
        ("nobody", ECC_EK, srk.as_slice(), "ECC"),
        ("tpm-dev-1", RSA3072, srk.as_slice(), "RSA-3072"),
        ("tpm-dev-1", ek.as_slice(), RSA3072, "storage root key is RSA-3072"),
    ] {
        let (status, v) = register(&s, &inst, id, None, &body(id, ek, srk)).await;
        assert_eq!((status, v["errorCode"].as_u64()), (400, Some(400_000)), "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(says) && msg.contains("RSA-2048"), "{msg}");
        assert!(v.get("authenticationKey").is_none());
    }
    // An id the server does not know, another TPM's EK for an enrolled id: the one 404 (as DPS
    // answers an unknown TPM device; a 401 would be taken for a challenge by the C# client).
    let other = SoftwareTpm::default();
    for (id, ek) in [("nobody", ek.clone()), ("tpm-dev-1", other.endorsement_key())] {
        let (status, v) = register(&s, &inst, id, None, &body(id, &ek, &srk)).await;
        assert_eq!((status, v["errorCode"].as_u64()), (404, Some(404_201)), "{v}");
        assert!(v.get("authenticationKey").is_none(), "no challenge: {v}");
    }
    // Enrollments with keys no device could attest with are refused when written.
    let err = enroll(&s, &inst, "tpm-ecc", ECC_EK).await.expect_err("ECC EK");
    assert_eq!(err.kind().status(), 400);
    assert!(err.to_string().contains("ECC"), "{err}");
    assert!(s.server.state.services.registration(&inst, "tpm-dev-1").await.is_err(), "nothing registered");
}

/// Registers `tpm` as `id` (challenge → SAS → poll); returns the final operation and the key.
async fn full_registration(s: &TestServer, inst: &Instance, tpm: &SoftwareTpm, id: &str) -> (Value, Vec<u8>) {
    let (ek, srk) = (tpm.endorsement_key(), tpm.storage_root_key());
    let (status, v) = register(s, inst, id, None, &body(id, &ek, &srk)).await;
    let k = tpm.activate(&challenge(status, &v)).expect("activates");
    let auth = sas(inst, id, &k);
    let (status, v) = register(s, inst, id, Some(auth.clone()), &body(id, &ek, &srk)).await;
    assert_eq!(status, 202, "{v}");
    let op = v["operationId"].as_str().expect("operationId").to_owned();
    let path = format!("/{}/registrations/{id}/operations/{op}?{API}", inst.id_scope.as_str());
    let (status, _, v) = http(s, "GET", &path, Some(auth), "").await;
    assert_eq!(status, 200, "{v}");
    (v, k)
}

#[tokio::test(flavor = "multi_thread")]
async fn enrolled_tpm_devices_are_refused_what_is_not_theirs() {
    let (s, inst) = setup().await;
    let (one, two) = (SoftwareTpm::default(), SoftwareTpm::default());
    enroll(&s, &inst, "tpm-one", &one.endorsement_key()).await.unwrap();
    enroll(&s, &inst, "tpm-two", &two.endorsement_key()).await.unwrap();
    let (ek1, srk1) = (one.endorsement_key(), one.storage_root_key());

    // A body naming another registration id than the request's: 400, no challenge for either.
    let (status, v) = register(&s, &inst, "tpm-one", None, &body("tpm-two", &ek1, &srk1)).await;
    assert_eq!((status, v["errorCode"].as_u64()), (400, Some(400_000)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("registrationId"), "{v}");
    assert!(v.get("authenticationKey").is_none(), "{v}");
    // tpm-one's TPM asking as tpm-two (its own body consistent): not tpm-two's EK, 404.
    let (status, v) = register(&s, &inst, "tpm-two", None, &body("tpm-two", &ek1, &srk1)).await;
    assert_eq!((status, v["errorCode"].as_u64()), (404, Some(404_201)), "{v}");

    // tpm-two is issued a key; tpm-one signing with it gets nowhere.
    let (ek2, srk2) = (two.endorsement_key(), two.storage_root_key());
    let (status, v) = register(&s, &inst, "tpm-two", None, &body("tpm-two", &ek2, &srk2)).await;
    let k2 = two.activate(&challenge(status, &v)).unwrap();
    let (status, v) = register(&s, &inst, "tpm-one", None, &body("tpm-one", &ek1, &srk1)).await;
    let k1 = one.activate(&challenge(status, &v)).unwrap();
    // Without the tpm block a SAS under another key is a plain 401 (nothing to challenge).
    for wrong in [k2.as_slice(), b"a key nobody issued".as_slice()] {
        let (status, v) = register(&s, &inst, "tpm-one", Some(sas(&inst, "tpm-one", wrong)), "{}").await;
        assert_eq!((status, v["errorCode"].as_u64()), (401, Some(401_002)), "{v}");
        assert!(v.get("authenticationKey").is_none(), "{v}");
        // The operation-status and status-lookup paths refuse it too.
        let path = format!("/{}/registrations/tpm-one/operations/x?{API}", inst.id_scope.as_str());
        let (status, _, v) = http(&s, "GET", &path, Some(sas(&inst, "tpm-one", wrong)), "").await;
        assert_eq!(status, 401, "{v}");
    }
    // An expired SAS under the right key, with the tpm block: challenged again, fresh key.
    let resource = format!("{}/registrations/tpm-one", inst.id_scope.as_str());
    let expired = dps_attest::sas::make_token(&resource, &encode(&k1), 1000, Some("registration")).unwrap();
    let (status, v) = register(&s, &inst, "tpm-one", Some(expired), &body("tpm-one", &ek1, &srk1)).await;
    assert_ne!(one.activate(&challenge(status, &v)).expect("a fresh challenge"), k1);
    // A key issued to tpm-one signs for tpm-one only.
    let (status, v) = register(&s, &inst, "tpm-two", Some(sas(&inst, "tpm-two", &k1)), "{}").await;
    assert_eq!(status, 401, "{v}");
    assert!(s.server.state.services.registration(&inst, "tpm-one").await.is_err(), "nothing registered");
    assert!(s.server.state.services.registration(&inst, "tpm-two").await.is_err(), "nothing registered");

    // A disabled enrollment: the device is challenged (as DPS does), its register is refused.
    let three = SoftwareTpm::default();
    let e: IndividualEnrollment =
        serde_json::from_value(json!({ "registrationId": "tpm-off", "provisioningStatus": "disabled",
        "attestation": { "type": "tpm", "tpm": { "endorsementKey": encode(&three.endorsement_key()) } } }))
        .unwrap();
    s.server.state.services.put_enrollment(&inst, "tpm-off", e, None).await.unwrap();
    let (ek3, srk3) = (three.endorsement_key(), three.storage_root_key());
    let (status, v) = register(&s, &inst, "tpm-off", None, &body("tpm-off", &ek3, &srk3)).await;
    let k3 = three.activate(&challenge(status, &v)).unwrap();
    let (status, v) =
        register(&s, &inst, "tpm-off", Some(sas(&inst, "tpm-off", &k3)), &body("tpm-off", &ek3, &srk3)).await;
    assert!(status == 401 || status == 403, "{status} {v}");
    assert!(v.get("authenticationKey").is_none(), "not challenged again: {v}");
    assert!(v["message"].as_str().unwrap().contains("disabled"), "{v}");
    assert!(s.server.state.services.registration(&inst, "tpm-off").await.is_err(), "nothing registered");
}

#[tokio::test(flavor = "multi_thread")]
async fn tpm_enrollments_through_the_service_api_reprovisioning_and_the_readiness_report() {
    let (s, inst) = setup().await;
    let _ = inst;
    let inst = common::link_hub(&s, "hub-b.azure-devices.net").await;
    let owner = &inst.authorization_policies[0];
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let auth =
        Some(dps_attest::sas::make_token("127.0.0.1", &owner.primary_key, expiry, Some(&owner.key_name)).unwrap());
    let put = |id: &str, ek: &[u8], hub: &str| {
        json!({ "registrationId": id, "iotHubs": [hub],
            "reprovisionPolicy": { "updateHubAssignment": true, "migrateDeviceData": true },
            "attestation": { "type": "tpm", "tpm": { "endorsementKey": encode(ek) } } })
        .to_string()
    };
    let path = |id: &str| format!("/enrollments/{id}?{API}");

    // The EK is checked on write: ECC, RSA-3072, garbage → 400 that says why; nothing stored.
    for (ek, says) in [(ECC_EK, "ECC"), (RSA3072, "RSA-3072"), (b"\x00\x01garbage".as_slice(), "")] {
        let (status, _, v) =
            http(&s, "PUT", &path("tpm-bad"), auth.clone(), &put("tpm-bad", ek, "hub-a.azure-devices.net")).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let (status, _, v) = http(&s, "GET", &path("tpm-bad"), auth.clone(), "").await;
    assert_eq!(status, 404, "{v}");

    // A good one, as the service SDKs write it; read back with its EK.
    let tpm = SoftwareTpm::default();
    let ek = tpm.endorsement_key();
    let (status, _, v) =
        http(&s, "PUT", &path("tpm-svc"), auth.clone(), &put("tpm-svc", &ek, "hub-a.azure-devices.net")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["attestation"]["type"], "tpm", "{v}");
    assert_eq!(v["attestation"]["tpm"]["endorsementKey"], encode(&ek), "{v}");

    let (v, k) = full_registration(&s, &inst, &tpm, "tpm-svc").await;
    assert_eq!(v["registrationState"]["assignedHub"], "hub-a.azure-devices.net", "{v}");
    let device_id = v["registrationState"]["deviceId"].clone();

    // Reprovisioning: the enrollment moves to hub-b; the same TPM registers again and lands there,
    // with a fresh key that its TPM opens.
    let body = put("tpm-svc", &ek, "hub-b.azure-devices.net");
    let (status, _, v) = http(&s, "PUT", &path("tpm-svc"), auth.clone(), &body).await;
    assert_eq!(status, 200, "{v}");
    let (v, k2) = full_registration(&s, &inst, &tpm, "tpm-svc").await;
    assert_eq!(v["registrationState"]["assignedHub"], "hub-b.azure-devices.net", "{v}");
    assert_eq!(v["registrationState"]["deviceId"], device_id);
    assert_ne!(k, k2);

    // The readiness report evaluates the TPM device's recorded TLS offer like any other.
    let admin = Some(format!("Bearer {}", s.server.admin_token));
    let report = "/subscriptions/x/resourceGroups/opendps/providers/Microsoft.Devices/provisioningServices/opendps/tlsReadiness?api-version=2022-02-05";
    let (status, _, v) = http(&s, "POST", report, admin, "{}").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["evaluated"].as_u64(), v["wouldBeRefused"].as_u64()), (Some(1), Some(0)), "{v}");
    // Its offer was recorded at registration (not "without TLS facts") and is counted.
    assert_eq!(v["withoutTlsFacts"], json!([]), "{v}");
    let accepted: u64 = v["acceptedAs"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(accepted, 1, "{v}");
}
