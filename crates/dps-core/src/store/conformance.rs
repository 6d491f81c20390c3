//! The conformance suite every [`Store`] backend runs from its own tests:
//! `dps_core::store::conformance::run(&store).await` on a fresh, empty store.
//! Assertions panic with a message naming the rule that broke.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use super::{InstanceWrite, Precondition, Store, StoreError};
use crate::model::{
    AttestationMechanism, AttestationType, CaCertificate, DeviceRegistrationState, EnrollmentGroup, Hub, HubDevice,
    IdScope, IndividualEnrollment, Instance, IssuedTpmKey, RegistrationRecord, RegistrationStatus,
    ServiceAllocationPolicy, Sku, SymmetricKeyAttestation, TpmIssuedKeys, X509CertificateInfo,
};

pub(crate) fn instance(name: &str, scope: u8) -> Instance {
    Instance {
        name: name.into(),
        resource_group: "rg".into(),
        location: "westus".into(),
        sku: Sku { name: "S1".into(), capacity: 1 },
        tags: BTreeMap::new(),
        id_scope: IdScope::from_bytes([0, 0, 0, scope]),
        min_tls_version: None,
        allocation_policy: ServiceAllocationPolicy::Hashed,
        iot_hubs: vec![],
        authorization_policies: vec![],
        enable_data_residency: false,
        public_network_access: "Enabled".into(),
        ip_filter_rules: vec![],
        state: "Active".into(),
        created: "t0".into(),
        updated: "t0".into(),
        etag: format!("\"{name}-1\""),
    }
}

pub(crate) fn enrollment(id: &str, etag: &str) -> IndividualEnrollment {
    IndividualEnrollment {
        registration_id: id.into(),
        device_id: None,
        registration_state: None,
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            tpm: None,
            x509: None,
            symmetric_key: Some(SymmetricKeyAttestation { primary_key: Some("a2V5".into()), secondary_key: None }),
        },
        optional_device_information: None,
        capabilities: None,
        iot_hub_host_name: None,
        initial_twin: Some(serde_json::json!({"tags": {"k": "v"}})),
        etag: Some(etag.into()),
        provisioning_status: None,
        reprovision_policy: None,
        created_date_time_utc: None,
        last_updated_date_time_utc: None,
        allocation_policy: None,
        iot_hubs: None,
        custom_allocation_definition: None,
        extra: serde_json::Map::new(),
    }
}

fn group(id: &str, etag: &str) -> EnrollmentGroup {
    let e = enrollment(id, etag);
    EnrollmentGroup {
        enrollment_group_id: id.into(),
        attestation: e.attestation,
        capabilities: None,
        iot_hub_host_name: None,
        initial_twin: None,
        etag: Some(etag.into()),
        provisioning_status: None,
        reprovision_policy: None,
        created_date_time_utc: None,
        last_updated_date_time_utc: None,
        allocation_policy: None,
        iot_hubs: None,
        custom_allocation_definition: None,
        extra: serde_json::Map::new(),
    }
}

fn registration(id: &str, group: Option<&str>, etag: &str) -> RegistrationRecord {
    RegistrationRecord {
        state: DeviceRegistrationState {
            registration_id: id.into(),
            created_date_time_utc: None,
            assigned_hub: Some("hub.example".into()),
            device_id: Some(id.into()),
            status: RegistrationStatus::Assigned,
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: Some(etag.into()),
            payload: None,
            extra: serde_json::Map::new(),
        },
        enrollment_group_id: group.map(str::to_owned),
        tls: Some(crate::tls::StoredFacts::from_value(&serde_json::json!({"negotiated": {"version": "TLSv1.2"}}))),
        operation_id: Some("op".into()),
        initial_twin: None,
        twin_action: Some("initial".into()),
    }
}

/// Runs every rule against an empty store.
pub async fn run<S: Store + ?Sized>(s: &S) {
    instances(s).await;
    enrollments(s).await;
    groups(s).await;
    registrations(s).await;
    certificates(s).await;
    tpm_keys(s).await;
    cascade(s).await;
    hubs(s).await;
    shared(s).await;
    offers(s).await;
}

async fn offers<S: Store + ?Sized>(s: &S) {
    let offer = crate::tls::StoredOffer::of(r#"{"cipherSuites":["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]}"#.into());
    assert!(s.offer(&offer.id).await.unwrap().is_none());
    s.put_offer(&offer).await.unwrap();
    s.put_offer(&offer).await.expect("storing an offer again is not an error");
    assert_eq!(s.offer(&offer.id).await.unwrap().as_deref(), Some(offer.json.as_str()));
    assert_eq!(s.offer(&offer.id.to_ascii_uppercase()).await.unwrap().as_deref(), Some(offer.json.as_str()));
    assert!(s.instances().await.unwrap().iter().all(|i| !i.name.starts_with('$')), "offers are no instance");
}

async fn shared<S: Store + ?Sized>(s: &S) {
    use super::SharedDoc;
    assert!(s.shared("builtin-ca").await.unwrap().is_none());
    let doc = SharedDoc { name: "builtin-ca".into(), etag: "1".into(), body: serde_json::json!({"k": "first"}) };
    s.put_shared(&doc, Precondition::MustNotExist).await.unwrap();
    let second = SharedDoc { etag: "2".into(), body: serde_json::json!({"k": "second"}), ..doc.clone() };
    assert!(
        matches!(s.put_shared(&second, Precondition::MustNotExist).await, Err(StoreError::AlreadyExists)),
        "the first writer wins"
    );
    assert_eq!(s.shared("BUILTIN-CA").await.unwrap(), Some(doc.clone()));
    assert!(matches!(s.put_shared(&second, Precondition::IfMatch("7")).await, Err(StoreError::PreconditionFailed)));
    s.put_shared(&second, Precondition::IfMatch("1")).await.unwrap();
    assert_eq!(s.shared("builtin-ca").await.unwrap(), Some(second));
    assert!(s.instances().await.unwrap().iter().all(|i| !i.name.is_empty()), "shared documents are no instance");
}

async fn instances<S: Store + ?Sized>(s: &S) {
    assert!(s.instances().await.unwrap().is_empty(), "a new store is empty");
    let v0 = s.instances_version().await.unwrap();
    let a = instance("dps-a", 1);
    s.write_instances(&[InstanceWrite::Create(a.clone())]).await.unwrap();
    let v1 = s.instances_version().await.unwrap();
    assert_ne!(v0, v1, "creating an instance changes the instances version");
    assert_eq!(s.instance("dps-a").await.unwrap().as_ref(), Some(&a), "an instance reads back as written");
    assert_eq!(s.instance("DPS-A").await.unwrap().as_ref(), Some(&a), "instance names are case-insensitive");
    assert_eq!(s.instance_by_scope(&a.id_scope).await.unwrap().as_ref(), Some(&a), "lookup by ID scope");
    assert!(matches!(s.write_instances(&[InstanceWrite::Create(a.clone())]).await, Err(StoreError::AlreadyExists)));
    // All or nothing: the second write fails (ID scope taken), so the first must not land.
    let b = instance("dps-b", 2);
    let clash = Instance { name: "dps-c".into(), ..instance("dps-c", 1) };
    let r = s.write_instances(&[InstanceWrite::Create(b.clone()), InstanceWrite::Create(clash)]).await;
    assert!(matches!(r, Err(StoreError::Conflict(_)) | Err(StoreError::AlreadyExists)), "ID scopes are unique: {r:?}");
    assert!(s.instance("dps-b").await.unwrap().is_none(), "a failed deployment writes nothing");
    assert_eq!(s.instances_version().await.unwrap(), v1, "nor changes the instances version");
    // Updates are conditional on the etag.
    let mut a2 = a.clone();
    a2.sku.capacity = 2;
    a2.etag = "\"dps-a-2\"".into();
    let stale =
        s.write_instances(&[InstanceWrite::Update { instance: a2.clone(), expected_etag: "\"old\"".into() }]).await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed)), "stale etag refused: {stale:?}");
    s.write_instances(&[InstanceWrite::Update { instance: a2.clone(), expected_etag: a.etag.clone() }]).await.unwrap();
    assert_eq!(s.instance("dps-a").await.unwrap().unwrap().sku.capacity, 2);
    let v2 = s.instances_version().await.unwrap();
    assert!(![v0, v1].contains(&v2), "updating an instance changes the instances version");
    s.write_instances(&[InstanceWrite::Create(b)]).await.unwrap();
    assert_eq!(s.instances().await.unwrap().len(), 2);
    // Deleting changes it too; documents do not.
    let v3 = s.instances_version().await.unwrap();
    s.write_instances(&[InstanceWrite::Create(instance("dps-z", 9))]).await.unwrap();
    s.put_enrollment("dps-z", &enrollment("dev-z", "\"z\""), Precondition::Any).await.unwrap();
    let v4 = s.instances_version().await.unwrap();
    assert!(![v0, v1, v2, v3].contains(&v4), "another instance created");
    s.delete_instance("dps-z").await.unwrap();
    let v5 = s.instances_version().await.unwrap();
    assert!(![v0, v1, v2, v3, v4].contains(&v5), "deleting an instance changes the instances version");
    s.put_enrollment("dps-a", &enrollment("dev-v", "\"v\""), Precondition::Any).await.unwrap();
    s.delete_enrollment("dps-a", "dev-v", Precondition::Any).await.unwrap();
    assert_eq!(s.instances_version().await.unwrap(), v5, "documents leave the instances version alone");
}

async fn enrollments<S: Store + ?Sized>(s: &S) {
    let i = "dps-a";
    s.put_enrollment(i, &enrollment("Dev-1", "\"e1\""), Precondition::MustNotExist).await.unwrap();
    let got = s.enrollment(i, "dev-1").await.unwrap().expect("case-insensitive lookup");
    assert_eq!(got.registration_id, "Dev-1", "the id keeps the case it was written with");
    assert_eq!(got, enrollment("Dev-1", "\"e1\""), "every field round-trips");
    assert!(s.enrollment("dps-b", "dev-1").await.unwrap().is_none(), "instances are isolated");
    assert!(matches!(
        s.put_enrollment(i, &enrollment("dev-1", "\"x\""), Precondition::MustNotExist).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        s.put_enrollment(i, &enrollment("dev-1", "\"e2\""), Precondition::IfMatch("\"nope\"")).await,
        Err(StoreError::PreconditionFailed)
    ));
    s.put_enrollment(i, &enrollment("dev-1", "\"e2\""), Precondition::IfMatch("\"e1\"")).await.unwrap();
    s.put_enrollment(i, &enrollment("dev-1", "\"e3\""), Precondition::IfMatch("*")).await.unwrap();
    assert!(matches!(
        s.put_enrollment(i, &enrollment("ghost", "\"g\""), Precondition::IfMatch("*")).await,
        Err(StoreError::NotFound)
    ));
    s.put_enrollment(i, &enrollment("dev-1", "\"e4\""), Precondition::Any).await.unwrap();
    assert_eq!(s.enrollment(i, "dev-1").await.unwrap().unwrap().etag.as_deref(), Some("\"e4\""));
    assert!(matches!(
        s.delete_enrollment(i, "dev-1", Precondition::IfMatch("\"e3\"")).await,
        Err(StoreError::PreconditionFailed)
    ));
    s.delete_enrollment(i, "DEV-1", Precondition::IfMatch("\"e4\"")).await.unwrap();
    assert!(matches!(s.delete_enrollment(i, "dev-1", Precondition::Any).await, Err(StoreError::NotFound)));

    // Paging: every item exactly once, in id order, pages no larger than asked.
    for n in 0..25 {
        s.put_enrollment(i, &enrollment(&format!("page-{n:02}"), "\"p\""), Precondition::Any).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let page = s.enrollments(i, token.as_deref(), 10).await.unwrap();
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|e| e.registration_id));
        token = page.continuation;
        if token.is_none() {
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|n| format!("page-{n:02}")).collect();
    assert_eq!(seen, want, "paging returns every enrollment once, in order");
}

async fn groups<S: Store + ?Sized>(s: &S) {
    let i = "dps-a";
    let v0 = s.groups_version().await.unwrap();
    s.put_group(i, &group("Group-1", "\"g1\""), Precondition::MustNotExist).await.unwrap();
    let v1 = s.groups_version().await.unwrap();
    assert_ne!(v0, v1, "creating a group changes the groups version");
    assert_eq!(s.group(i, "group-1").await.unwrap().unwrap(), group("Group-1", "\"g1\""));
    assert!(matches!(
        s.put_group(i, &group("group-1", "\"g2\""), Precondition::IfMatch("\"x\"")).await,
        Err(StoreError::PreconditionFailed)
    ));
    assert_eq!(s.groups_version().await.unwrap(), v1, "a refused write leaves the groups version alone");
    s.put_group(i, &group("group-2", "\"g\""), Precondition::Any).await.unwrap();
    let page = s.groups(i, None, 1).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = s.groups(i, page.continuation.as_deref(), 10).await.unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.continuation.is_none());
    let v2 = s.groups_version().await.unwrap();
    assert!(![v0, v1].contains(&v2), "another group changes the groups version");
    s.put_enrollment(i, &enrollment("dev-g", "\"dg\""), Precondition::Any).await.unwrap();
    s.delete_enrollment(i, "dev-g", Precondition::Any).await.unwrap();
    assert_eq!(s.groups_version().await.unwrap(), v2, "other documents leave the groups version alone");
    s.delete_group(i, "group-2", Precondition::Any).await.unwrap();
    assert!(s.group(i, "group-2").await.unwrap().is_none());
    let v3 = s.groups_version().await.unwrap();
    assert!(![v0, v1, v2].contains(&v3), "deleting a group changes the groups version");
    // An instance's deletion takes its groups, and changes the version too.
    s.write_instances(&[InstanceWrite::Create(instance("dps-g", 77))]).await.unwrap();
    s.put_group("dps-g", &group("group-g", "\"gg\""), Precondition::Any).await.unwrap();
    let v4 = s.groups_version().await.unwrap();
    s.delete_instance("dps-g").await.unwrap();
    let v5 = s.groups_version().await.unwrap();
    assert!(![v0, v1, v2, v3, v4].contains(&v5), "deleting an instance with groups changes the groups version");
}

async fn registrations<S: Store + ?Sized>(s: &S) {
    let i = "dps-a";
    s.put_registration(i, &registration("r-1", Some("group-1"), "\"r1\""), Precondition::MustNotExist).await.unwrap();
    s.put_registration(i, &registration("r-2", Some("group-1"), "\"r2\""), Precondition::MustNotExist).await.unwrap();
    s.put_registration(i, &registration("r-3", None, "\"r3\""), Precondition::MustNotExist).await.unwrap();
    assert_eq!(s.registration(i, "R-1").await.unwrap().unwrap(), registration("r-1", Some("group-1"), "\"r1\""));
    let of_group = s.registrations(i, Some("GROUP-1"), None, 100).await.unwrap();
    assert_eq!(of_group.items.len(), 2, "query by group (case-insensitive)");
    assert_eq!(s.registrations(i, None, None, 100).await.unwrap().items.len(), 3);
    assert!(matches!(
        s.put_registration(i, &registration("r-1", None, "\"x\""), Precondition::MustNotExist).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        s.delete_registration(i, "r-1", Precondition::IfMatch("\"no\"")).await,
        Err(StoreError::PreconditionFailed)
    ));
    s.delete_registration(i, "r-1", Precondition::IfMatch("\"r1\"")).await.unwrap();
    assert!(s.registration(i, "r-1").await.unwrap().is_none());
}

async fn certificates<S: Store + ?Sized>(s: &S) {
    let i = "dps-a";
    let info = X509CertificateInfo {
        subject_name: "CN=ca".into(),
        sha1_thumbprint: "AA".into(),
        sha256_thumbprint: "BB".into(),
        issuer_name: "CN=ca".into(),
        not_before_utc: "t".into(),
        not_after_utc: "t".into(),
        serial_number: "01".into(),
        version: 3,
    };
    let c = CaCertificate {
        name: "Root-CA".into(),
        certificate: "PEM".into(),
        info,
        is_verified: false,
        verification_code: Some("CODE".into()),
        created: "t".into(),
        updated: "t".into(),
        etag: "\"c1\"".into(),
    };
    s.put_certificate(i, &c, Precondition::MustNotExist).await.unwrap();
    assert_eq!(s.certificate(i, "root-ca").await.unwrap().as_ref(), Some(&c));
    let v = CaCertificate { is_verified: true, etag: "\"c2\"".into(), ..c.clone() };
    assert!(matches!(
        s.put_certificate(i, &v, Precondition::IfMatch("\"zz\"")).await,
        Err(StoreError::PreconditionFailed)
    ));
    s.put_certificate(i, &v, Precondition::IfMatch("\"c1\"")).await.unwrap();
    assert_eq!(s.certificates(i).await.unwrap(), vec![v]);
    s.delete_certificate(i, "ROOT-CA", Precondition::Any).await.unwrap();
    assert!(s.certificates(i).await.unwrap().is_empty());
}

async fn tpm_keys<S: Store + ?Sized>(s: &S) {
    let i = "dps-a";
    let key = |k: &str| IssuedTpmKey {
        endorsement_key: "EK".into(),
        storage_root_key: "SRK".into(),
        key: k.into(),
        issued_date_time_utc: "t".into(),
    };
    let v1 = TpmIssuedKeys { registration_id: "Tpm-1".into(), etag: "\"t1\"".into(), keys: vec![key("k1")] };
    s.put_tpm_keys(i, &v1, Precondition::MustNotExist).await.unwrap();
    assert_eq!(s.tpm_keys(i, "tpm-1").await.unwrap().as_ref(), Some(&v1), "TPM keys by id (case-insensitive)");
    let v2 = TpmIssuedKeys { etag: "\"t2\"".into(), keys: vec![key("k2"), key("k1")], ..v1.clone() };
    assert!(matches!(s.put_tpm_keys(i, &v2, Precondition::MustNotExist).await, Err(StoreError::AlreadyExists)));
    assert!(matches!(
        s.put_tpm_keys(i, &v2, Precondition::IfMatch("\"zz\"")).await,
        Err(StoreError::PreconditionFailed)
    ));
    s.put_tpm_keys(i, &v2, Precondition::IfMatch("\"t1\"")).await.unwrap();
    assert_eq!(s.tpm_keys(i, "TPM-1").await.unwrap(), Some(v2));
    assert!(s.enrollment(i, "tpm-1").await.unwrap().is_none(), "TPM keys are not an enrollment");
    s.delete_tpm_keys(i, "tpm-1", Precondition::Any).await.unwrap();
    assert!(s.tpm_keys(i, "tpm-1").await.unwrap().is_none());
    s.put_tpm_keys(i, &v1, Precondition::MustNotExist).await.unwrap(); // for the cascade
}

async fn cascade<S: Store + ?Sized>(s: &S) {
    s.delete_instance("dps-a").await.unwrap();
    assert!(s.instance("dps-a").await.unwrap().is_none());
    assert!(s.enrollment("dps-a", "page-00").await.unwrap().is_none(), "deleting an instance deletes its enrollments");
    assert!(s.registration("dps-a", "r-2").await.unwrap().is_none(), "and its registrations");
    assert!(s.tpm_keys("dps-a", "tpm-1").await.unwrap().is_none(), "and the keys issued to its TPMs");
    assert!(matches!(s.delete_instance("dps-a").await, Err(StoreError::NotFound)));
    // A new instance of the same name starts empty.
    s.write_instances(&[InstanceWrite::Create(instance("dps-a", 9))]).await.unwrap();
    assert!(s.enrollments("dps-a", None, 100).await.unwrap().items.is_empty());
}

fn hub_device(id: &str, doc_etag: &str) -> HubDevice {
    HubDevice {
        device_id: id.into(),
        generation_id: "1".into(),
        etag: "e".into(),
        status: "enabled".into(),
        status_reason: None,
        status_updated_time: "t0".into(),
        auth_type: "sas".into(),
        primary_key: Some("a2V5".into()),
        secondary_key: Some("a2V5".into()),
        primary_thumbprint: None,
        secondary_thumbprint: None,
        iot_edge: true,
        twin_etag: "AAAAAAAAAAE=".into(),
        twin_version: 1,
        tags: serde_json::Map::new(),
        desired: serde_json::Map::new(),
        desired_version: 1,
        reported: serde_json::Map::new(),
        reported_version: 1,
        doc_etag: doc_etag.into(),
    }
}

/// Embedded hubs live outside every instance; their devices under each hub, case-insensitively.
async fn hubs<S: Store + ?Sized>(s: &S) {
    let hub = Hub {
        name: "Hub-A".into(),
        host_name: "dps.example.com".into(),
        location: "local".into(),
        policies: vec![],
        created: "t0".into(),
        etag: "\"h1\"".into(),
    };
    s.put_hub(&hub, Precondition::MustNotExist).await.unwrap();
    assert_eq!(s.hub("hub-a").await.unwrap().as_ref(), Some(&hub), "hub names are case-insensitive");
    assert!(matches!(s.put_hub(&hub, Precondition::MustNotExist).await, Err(StoreError::AlreadyExists)));
    assert_eq!(s.hubs().await.unwrap(), vec![hub.clone()]);
    let d = hub_device("Dev-1", "\"d1\"");
    s.put_hub_device("hub-a", &d, Precondition::MustNotExist).await.unwrap();
    s.put_hub_device("hub-a", &hub_device("dev-2", "\"d2\""), Precondition::MustNotExist).await.unwrap();
    assert_eq!(s.hub_device("HUB-A", "dev-1").await.unwrap().as_ref(), Some(&d), "device ids are case-insensitive");
    assert!(s.hub_device("other-hub", "dev-1").await.unwrap().is_none(), "devices belong to their hub");
    let stale = s.put_hub_device("hub-a", &hub_device("dev-1", "\"d3\""), Precondition::IfMatch("\"old\"")).await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed)), "a stale etag is refused: {stale:?}");
    let page = s.hub_devices("hub-a", None, 1).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = s.hub_devices("hub-a", page.continuation.as_deref(), 10).await.unwrap();
    assert_eq!(rest.items.len(), 1, "paging reaches every device");
    s.delete_hub_device("hub-a", "dev-1", Precondition::IfMatch("\"d1\"")).await.unwrap();
    assert!(s.hub_device("hub-a", "dev-1").await.unwrap().is_none());
    s.delete_hub("hub-a", Precondition::Any).await.unwrap();
    assert!(s.hubs().await.unwrap().is_empty());
}
