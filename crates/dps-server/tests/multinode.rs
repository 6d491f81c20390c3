//! Stateless nodes sharing PostgreSQL: what one node writes, another serves. A device registers
//! at node A and polls its operation at node B; an enrollment written through A is read at B; a
//! TPM device challenged at A answers at B.
//! The database is a throwaway cluster of the test's own (or `OPENDPS_TEST_POSTGRES_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::http;
use dps_core::base64::{decode, encode};
use dps_core::model::IndividualEnrollment;
use serde_json::json;

const KEY: &str = "bXVsdGktbm9kZS1rZXktbXVsdGktbm9kZS1rZXktMDEyMzQ1Njc4OQ==";

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_one_postgres_store() {
    let (base, _cluster) = dps_store_postgres::test_cluster::test_database().unwrap_or_else(|e| panic!("{e}"));
    let schema = format!("opendps_multi_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.expect("PostgreSQL is required");
    tokio::spawn(conn);
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("node.key");
    std::fs::write(&key_file, "multi-node test key, 32+ characters long\n").unwrap();
    let extra = format!("[store]\nurl = {url:?}\nnode_key_file = {key_file:?}\n");
    let a = common::start(&extra).await;
    let b = common::start(&extra).await;

    // One CA and one admin credential for the deployment; each node has its own leaf.
    assert_eq!(a.root_pem(), b.root_pem(), "node B adopted the CA node A created");
    assert_eq!(a.server.admin_token, b.server.admin_token);
    assert_eq!(std::fs::read_to_string(b.dir.path().join("admin.token")).unwrap(), a.server.admin_token);
    let leaf = |s: &common::TestServer| std::fs::read(s.dir.path().join("pki/server.pem")).unwrap();
    assert_ne!(leaf(&a), leaf(&b), "each node issues its own leaf");
    // A device that pinned node A's root verifies node B.
    dps_tls::client::connect(b.https(), "127.0.0.1", Some(&a.root_pem())).await.expect("B's chain leads to A's root");
    // The CA keys are sealed in the database, not stored in the clear.
    let row: String = admin
        .query_one(&format!("SELECT doc FROM {schema}.documents WHERE kind = 8 AND id_key = 'builtin-ca'"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(!row.contains("PRIVATE KEY") && row.contains("\"rootKey\":\"v1:"), "sealed: {row}");

    // A node without the key, or with another key, refuses to start and says why.
    for (what, key_line, want) in [
        ("no key", String::new(), "OPENDPS_NODE_KEY"),
        ("another key", format!("node_key_file = {:?}\n", keys.path().join("other.key")), "another node key"),
    ] {
        std::fs::write(keys.path().join("other.key"), "a different key of 32+ characters!!").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = common::config(dir.path(), &format!("[store]\nurl = {url:?}\n{key_line}"));
        let listeners = dps_server::bind(&config).await.unwrap();
        let e = dps_server::Server::start(config, listeners).await.err().unwrap_or_else(|| panic!("{what}: started"));
        let text = dps_tls::DisplayChain(&e).to_string();
        assert!(text.contains(want), "{what}: {text}");
        assert!(!dir.path().join("pki/root.key").exists(), "{what}: no CA of its own");
    }

    let svc_a = &a.server.state.services;
    let inst = common::link_hub(&a, "hub.example").await;
    let scope = inst.id_scope.to_string();
    assert_eq!(
        b.server.state.services.instance("opendps").await.unwrap().id_scope,
        inst.id_scope,
        "one instance, seen by both"
    );
    let e: IndividualEnrollment = serde_json::from_value(json!({ "registrationId": "roamer", "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": KEY, "secondaryKey": KEY } } })).unwrap();
    svc_a.put_enrollment(&inst, "roamer", e, None).await.unwrap();

    // Service API at B reads what A wrote.
    let owner = &inst.authorization_policies[0];
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let sas = dps_attest::sas::make_token("127.0.0.1", &owner.primary_key, expiry, Some(&owner.key_name)).unwrap();
    let (status, _, v) = http(&b, "GET", "/enrollments/roamer?api-version=2021-10-01", Some(sas), "").await;
    assert_eq!(status, 200, "{v}");

    // Register at A, poll at B.
    let tok = dps_attest::sas::make_token(&format!("{scope}/registrations/roamer"), KEY, expiry, None).unwrap();
    let (status, _, v) = http(
        &a,
        "PUT",
        &format!("/{scope}/registrations/roamer/register?api-version=2021-06-01"),
        Some(tok.clone()),
        "",
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let op = v["operationId"].as_str().unwrap().to_owned();
    let (status, _, v) = http(
        &b,
        "GET",
        &format!("/{scope}/registrations/roamer/operations/{op}?api-version=2021-06-01"),
        Some(tok),
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["registrationState"]["assignedHub"], "hub.example");

    // TPM: challenged at A, the SAS under the issued key accepted at B, the final key at A.
    let tpm = dps_attest::tpm::testing::SoftwareTpm::default();
    let (ek, srk) = (encode(&tpm.endorsement_key()), encode(&tpm.storage_root_key()));
    let e: IndividualEnrollment = serde_json::from_value(
        json!({ "registrationId": "tpm-roamer", "attestation": { "type": "tpm", "tpm": { "endorsementKey": ek } } }),
    )
    .unwrap();
    svc_a.put_enrollment(&inst, "tpm-roamer", e, None).await.unwrap();
    let body =
        json!({ "registrationId": "tpm-roamer", "tpm": { "endorsementKey": ek, "storageRootKey": srk } }).to_string();
    let register = format!("/{scope}/registrations/tpm-roamer/register?api-version=2021-06-01");
    let (status, _, v) = http(&a, "PUT", &register, None, &body).await;
    assert_eq!(status, 401, "{v}");
    let k = tpm.activate(&decode(v["authenticationKey"].as_str().unwrap()).unwrap()).unwrap();
    let tok =
        dps_attest::sas::make_token(&format!("{scope}/registrations/tpm-roamer"), &encode(&k), expiry, None).unwrap();
    let (status, _, v) = http(&b, "PUT", &register, Some(tok.clone()), &body).await;
    assert_eq!(status, 202, "{v}");
    let op = v["operationId"].as_str().unwrap().to_owned();
    let poll = format!("/{scope}/registrations/tpm-roamer/operations/{op}?api-version=2021-06-01");
    let (status, _, v) = http(&a, "GET", &poll, Some(tok), "").await;
    assert_eq!(status, 200, "{v}");
    let blob = decode(v["registrationState"]["tpm"]["authenticationKey"].as_str().unwrap()).unwrap();
    assert_eq!(tpm.activate(&blob).unwrap(), k);

    let (a, b) = (a, b);
    a.server.shutdown().await;
    b.server.shutdown().await;
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
