//! The TLS readiness report: devices register with different TLS stacks; the report says which
//! a stricter policy would lock out, without changing anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{read_http_response, start, Client};
use dps_core::model::IndividualEnrollment;
use serde_json::{json, Value};

const KEY: &str = "cmVhZGluZXNzLWtleS1yZWFkaW5lc3Mta2V5LTAxMjM0NTY3ODk=";

#[tokio::test(flavor = "multi_thread")]
async fn readiness_report_names_the_devices_a_stricter_policy_would_refuse() {
    let s = start("").await;
    let svc = &s.server.state.services;
    let inst = common::link_hub(&s, "hub.example").await;
    let scope = inst.id_scope.to_string();
    // Three devices: a modern stack, a legacy RSA-kx/SHA-1 one, a CBC-SHA ECDHE one.
    for (id, ciphers) in [
        ("modern", "ECDHE-RSA-AES128-GCM-SHA256"),
        ("legacy-rsa", "AES128-SHA:AES256-SHA"),
        ("legacy-sha1", "ECDHE-RSA-AES128-SHA"),
    ] {
        let e: IndividualEnrollment = serde_json::from_value(json!({ "registrationId": id, "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": KEY, "secondaryKey": KEY } } })).unwrap();
        svc.put_enrollment(&inst, id, e, None).await.unwrap();
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let tok = dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), KEY, expiry, None).unwrap();
        let mut d = Client::tls12(ciphers).run(s.https()).await.unwrap();
        let path = format!("/{scope}/registrations/{id}/register?api-version=2019-03-31");
        let status = tokio::task::spawn_blocking(move || {
            let req = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {tok}\r\nContent-Length: 0\r\n\r\n");
            d.stream.write_all(req.as_bytes()).unwrap();
            read_http_response(&mut d.stream).0
        })
        .await
        .unwrap();
        assert_eq!(status, 202, "{id}");
    }
    let post = |body: Value| {
        let token = s.server.admin_token.clone();
        let addr = s.https();
        async move {
            let mut d = Client::default().run(addr).await.unwrap();
            tokio::task::spawn_blocking(move || {
                let body = body.to_string();
                let req = format!(
                    "POST /subscriptions/x/resourceGroups/opendps/providers/Microsoft.Devices/provisioningServices/opendps/tlsReadiness?api-version=2022-02-05 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                d.stream.write_all(req.as_bytes()).unwrap();
                let (status, body) = read_http_response(&mut d.stream);
                assert_eq!(status, 200, "{body}");
                serde_json::from_str::<Value>(&body).unwrap()
            })
            .await
            .unwrap()
        }
    };
    // Today's policy refuses nobody.
    let now = post(json!({})).await;
    assert_eq!(now["evaluated"], 3);
    assert_eq!(now["wouldBeRefused"], 0, "{now}");
    // dps-recommended locks out both legacy devices, with the reason.
    let rec = post(json!({ "profile": "dps-recommended" })).await;
    let mut refused: Vec<&str> =
        rec["refused"].as_array().unwrap().iter().map(|r| r["registrationId"].as_str().unwrap()).collect();
    refused.sort_unstable();
    assert_eq!(refused, ["legacy-rsa", "legacy-sha1"], "{rec}");
    assert!(rec["refused"][0]["reason"].as_str().unwrap().contains("cipher suites"), "{rec}");
    // minTlsVersion 1.3 with TLS 1.3 on: every device here offered TLS 1.2 only, so all would be refused.
    let v13 = post(json!({ "minTlsVersion": "1.3", "tls13": true })).await;
    assert_eq!(v13["wouldBeRefused"], 3, "{v13}");
    assert!(v13["refused"][0]["reason"].as_str().unwrap().contains("minTlsVersion"), "{v13}");
    // Nothing changed.
    assert_eq!(svc.instance("opendps").await.unwrap().min_tls_version, None);
}
