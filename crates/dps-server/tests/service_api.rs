//! The service API's refusals, each a DPS error body: auth, rights, api-version, size, grammar.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{health_ok, http, start};
use dps_core::model::{AccessPolicy, AccessRight};

fn sas(host: &str, key: &str, policy: &str, expiry: u64) -> String {
    dps_attest::sas::make_token(host, key, expiry, Some(policy)).unwrap()
}

fn later() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

/// Adds a policy "reader" with only EnrollmentRead to the default instance; returns the
/// instance and the reader's primary key.
async fn add_reader(s: &common::TestServer) -> (dps_core::model::Instance, String) {
    let svc = &s.server.state.services;
    let reader_key = svc.generate_policy_key();
    let inst = svc
        .update_instance("opendps", |i| {
            i.authorization_policies.push(AccessPolicy {
                key_name: "reader".into(),
                primary_key: reader_key.clone(),
                secondary_key: svc.generate_policy_key(),
                rights: vec![AccessRight::EnrollmentRead],
            });
            Ok(())
        })
        .await
        .unwrap();
    (inst, reader_key)
}

#[tokio::test(flavor = "multi_thread")]
async fn service_api_refusals_are_dps_errors() {
    let s = start("").await;
    let (inst, reader_key) = add_reader(&s).await;
    let owner = &inst.authorization_policies[0];
    let host = "127.0.0.1";
    let auth = Some(sas(host, &owner.primary_key, &owner.key_name, later()));
    let put = |id: &str| format!("/enrollments/{id}?api-version=2021-10-01");
    let sym = |id: &str| format!(r#"{{"registrationId":"{id}","attestation":{{"type":"symmetricKey"}}}}"#);

    let (status, _, v) = http(&s, "PUT", &put("ok-1"), auth.clone(), &sym("ok-1")).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["attestation"]["symmetricKey"]["primaryKey"].is_string(), "the create response carries the keys: {v}");

    // (name, path, authorization, body, expected status, words the message must contain)
    type Case<'a> = (&'a str, String, Option<String>, String, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("no auth", put("a"), None, sym("a"), 401, "Authorization"),
        ("expired", put("a"), Some(sas(host, &owner.primary_key, &owner.key_name, 1000)), sym("a"), 401, "expired"),
        ("wrong key", put("a"), Some(sas(host, &reader_key, &owner.key_name, later())), sym("a"), 401, "not signed"),
        ("missing right", put("a"), Some(sas(host, &reader_key, "reader", later())), sym("a"), 401, "EnrollmentWrite"),
        ("unknown api-version", "/enrollments/a?api-version=1999-01-01".into(), auth.clone(), sym("a"), 400, "api-version"),
        ("bad JSON", put("a"), auth.clone(), "{nope".into(), 400, "not a valid"),
        ("bad id", put("-bad"), auth.clone(), sym("-bad"), 400, "must start"),
        ("ids differ", put("a"), auth.clone(), sym("b"), 400, "does not match"),
        ("bad key", put("a"), auth.clone(), r#"{"registrationId":"a","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"not base64!"}}}"#.into(), 400, "base64"),
        ("short key", put("a"), auth.clone(), r#"{"registrationId":"a","attestation":{"type":"symmetricKey","symmetricKey":{"primaryKey":"YWJj"}}}"#.into(), 400, "16 to 64 bytes"),
        ("bad PEM", put("a"), auth.clone(), r#"{"registrationId":"a","attestation":{"type":"x509","x509":{"clientCertificates":{"primary":{"certificate":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}}}}}"#.into(), 400, "certificate"),
        ("tpm group", "/enrollmentGroups/g?api-version=2021-10-01".into(), auth.clone(), r#"{"enrollmentGroupId":"g","attestation":{"type":"tpm","tpm":{"endorsementKey":"AAAA"}}}"#.into(), 400, "not tpm"),
        ("unlinked hub", put("a"), auth.clone(), r#"{"registrationId":"a","attestation":{"type":"symmetricKey"},"iotHubs":["nowhere.example"]}"#.into(), 400, "not linked"),
        ("stale etag", put("ok-1"), auth.clone(), sym("ok-1"), 412, "etag"),
        ("too large", put("a"), auth.clone(), format!(r#"{{"registrationId":"a","x":"{}"}}"#, "y".repeat(2 * 1024 * 1024)), 413, "larger"),
    ];
    for (name, path, a, body, want, needle) in cases {
        let (status, _, v) = if name == "stale etag" {
            let mut d = common::Client::default().run(s.https()).await.unwrap();
            let req = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nIf-Match: \"stale\"\r\nContent-Length: {}\r\n\r\n{body}", a.unwrap(), body.len());
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                d.stream.write_all(req.as_bytes()).unwrap();
                let (st, b) = common::read_http_response(&mut d.stream);
                (st, String::new(), serde_json::from_str(&b).unwrap())
            })
            .await
            .unwrap()
        } else {
            http(&s, "PUT", &path, a, &body).await
        };
        assert_eq!(status, want, "{name}: {v}");
        assert_eq!(v["errorCode"].as_u64().map(|c| c / 1000), Some(u64::from(want)), "{name}: {v}");
        assert!(v["message"].as_str().unwrap_or("").contains(needle), "{name}: {v}");
        assert!(v["trackingId"].is_string(), "{name}");
    }
    // Reader may read, and nothing refused above was written.
    let reader = Some(sas(host, &reader_key, "reader", later()));
    let (status, _, v) = http(&s, "GET", "/ENROLLMENTS/ok-1?api-version=2021-10-01", reader.clone(), "").await;
    assert_eq!(status, 200, "routes are case-insensitive: {v}");
    let (status, _, v) = http(&s, "GET", "/enrollments/a?api-version=2021-10-01", reader, "").await;
    assert_eq!((status, v["errorCode"].as_u64()), (404, Some(404_201)));
    assert!(health_ok(s.https()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_policy_reads_attestation_mechanisms_without_keys() {
    let s = start("").await;
    let (inst, reader_key) = add_reader(&s).await;
    let owner = &inst.authorization_policies[0];
    let host = "127.0.0.1";
    let owner_auth = Some(sas(host, &owner.primary_key, &owner.key_name, later()));
    let reader_auth = Some(sas(host, &reader_key, "reader", later()));
    for (put, body, mech) in [
        (
            "/enrollments/dev-1?api-version=2021-10-01",
            r#"{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}"#,
            "/enrollments/dev-1/attestationmechanism?api-version=2021-10-01",
        ),
        (
            "/enrollmentGroups/grp-1?api-version=2021-10-01",
            r#"{"enrollmentGroupId":"grp-1","attestation":{"type":"symmetricKey"}}"#,
            "/enrollmentGroups/grp-1/attestationmechanism?api-version=2021-10-01",
        ),
    ] {
        let (status, _, v) = http(&s, "PUT", put, owner_auth.clone(), body).await;
        assert_eq!(status, 200, "{v}");
        let (status, _, v) = http(&s, "POST", mech, owner_auth.clone(), "").await;
        assert_eq!(status, 200, "{v}");
        assert!(v["symmetricKey"]["primaryKey"].is_string(), "a writer reads the keys: {v}");
        let (status, _, v) = http(&s, "POST", mech, reader_auth.clone(), "").await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["type"], "symmetricKey", "{v}");
        assert!(v["symmetricKey"]["primaryKey"].is_null(), "a reader gets no keys: {v}");
        assert!(v["symmetricKey"]["secondaryKey"].is_null(), "a reader gets no keys: {v}");
    }
}
