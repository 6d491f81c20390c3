//! The service API as DPS behaves (docs/service-api.md): every query form the official clients
//! send, WHERE on documented fields, paging of filtered queries, keys in PUT responses,
//! certificates as base64 of PEM text, X.509 GET-modify-PUT round trips with reformatted
//! timestamps, a secondary certificate alone, deleting an enrollment deletes its registration,
//! and the api-versions accepted and refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{make_cert, start, Client, TestServer};
use serde_json::{json, Value};

fn later() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
}

/// One request with extra headers; (status, head, JSON body).
async fn call(
    s: &TestServer,
    method: &str,
    path: &str,
    auth: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut d = Client::default().run(s.https()).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        d.stream.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(d.stream.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        d.stream.read_exact(&mut buf).unwrap();
        (status, head, serde_json::from_slice(&buf).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

struct Api<'a> {
    s: &'a TestServer,
    auth: String,
}

impl Api<'_> {
    async fn req(&self, method: &str, path: &str, body: &Value) -> (u16, String, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}api-version=2021-10-01");
        let body = if body.is_null() { String::new() } else { body.to_string() };
        call(self.s, method, &path, &self.auth, &[], &body).await
    }

    /// Every page of a query; (ids, pages).
    async fn query_all(&self, collection: &str, query: &str, page: usize, id: &str) -> (Vec<String>, usize) {
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        let max = page.to_string();
        for pages in 1..=100 {
            let mut h = vec![("x-ms-max-item-count", max.as_str())];
            if let Some(t) = &token {
                h.push(("x-ms-continuation", t.as_str()));
            }
            let path = format!("/{collection}/query?api-version=2021-10-01");
            let body = json!({ "query": query }).to_string();
            let (status, head, v) = call(self.s, "POST", &path, &self.auth, &h, &body).await;
            assert_eq!(status, 200, "{query}: {v}");
            let items = v.as_array().unwrap();
            assert!(items.len() <= page, "a page holds at most x-ms-max-item-count items");
            ids.extend(items.iter().map(|i| i[id].as_str().unwrap().to_owned()));
            token = header(&head, "x-ms-continuation");
            if token.is_none() {
                return (ids, pages);
            }
        }
        panic!("query {query} does not end")
    }
}

async fn owner(s: &TestServer) -> String {
    let inst = s.server.state.services.instance("opendps").await.unwrap();
    let p = &inst.authorization_policies[0];
    dps_attest::sas::make_token("127.0.0.1", &p.primary_key, later(), Some(&p.key_name)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_in_every_client_form_with_where_and_paging() {
    let s = start("").await;
    let api = Api { s: &s, auth: owner(&s).await };
    // 12 enrollments: every third disabled, even ones x509-free symmetric keys, odd ones static.
    for n in 0..12 {
        let mut e = json!({ "registrationId": format!("dev-{n:02}"), "attestation": { "type": "symmetricKey" } });
        if n % 3 == 0 {
            e["provisioningStatus"] = json!("disabled");
        }
        if n % 2 == 1 {
            e["allocationPolicy"] = json!("static");
        }
        let (status, _, v) = api.req("PUT", &format!("/enrollments/dev-{n:02}"), &e).await;
        assert_eq!(status, 200, "{v}");
    }
    for g in ["g-a", "g-b", "g-c"] {
        let body = json!({ "enrollmentGroupId": g, "attestation": { "type": "symmetricKey" }, "provisioningStatus": if g == "g-b" { "disabled" } else { "enabled" } });
        assert_eq!(api.req("PUT", &format!("/enrollmentGroups/{g}"), &body).await.0, 200);
    }
    let all: Vec<String> = (0..12).map(|n| format!("dev-{n:02}")).collect();
    for q in [
        "*",
        "SELECT *",
        "SELECT * FROM enrollments",
        "select * from ENROLLMENTS",
        "{'additional_properties': {}, 'query': 'SELECT *'}",
    ] {
        let (ids, pages) = api.query_all("enrollments", q, 5, "registrationId").await;
        assert_eq!(ids, all, "{q}");
        assert_eq!(pages, 3, "{q}: 12 items in pages of 5");
    }
    let disabled = "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'";
    let (ids, pages) = api.query_all("enrollments", disabled, 2, "registrationId").await;
    assert_eq!(ids, ["dev-00", "dev-03", "dev-06", "dev-09"], "WHERE, paged");
    // Two full pages; a third (empty) one when the second filled up before the collection ended.
    assert!((2..=3).contains(&pages), "{pages} pages");
    let q = "SELECT * FROM enrollments c WHERE c.provisioningStatus = 'enabled' AND allocationPolicy = 'static'";
    let (ids, _) = api.query_all("enrollments", q, 100, "registrationId").await;
    assert_eq!(ids, ["dev-01", "dev-05", "dev-07", "dev-11"]);
    let (ids, _) = api.query_all("enrollments", "SELECT * WHERE attestation.type = 'x509'", 3, "registrationId").await;
    assert!(ids.is_empty());
    let (ids, _) = api.query_all("enrollmentGroups", "SELECT * FROM enrollmentGroups", 2, "enrollmentGroupId").await;
    assert_eq!(ids, ["g-a", "g-b", "g-c"]);
    let q = "SELECT * FROM enrollmentGroups WHERE provisioningStatus != 'disabled'";
    let (ids, _) = api.query_all("enrollmentGroups", q, 1, "enrollmentGroupId").await;
    assert_eq!(ids, ["g-a", "g-c"]);
    // No body at all: every item.
    let (status, _, v) = api.req("POST", "/enrollmentGroups/query", &Value::Null).await;
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(3)));

    // What is not supported is a DPS 400 that says what is.
    for (collection, q, needle) in [
        ("enrollments", "SELECT * FROM enrollmentGroups", "FROM enrollments"),
        ("enrollments", "SELECT registrationId FROM enrollments", "only SELECT *"),
        ("enrollments", "SELECT * WHERE attestation.symmetricKey.primaryKey = 'x'", "cannot be queried"),
        ("enrollmentGroups", "SELECT * WHERE provisioningStatus LIKE 'e%'", "comparison"),
    ] {
        let (status, _, v) = api.req("POST", &format!("/{collection}/query"), &json!({ "query": q })).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert_eq!(v["errorCode"].as_u64().map(|c| c / 1000), Some(400), "{v}");
        assert!(v["message"].as_str().unwrap().contains(needle), "{q}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_responses_carry_keys_and_certificates_round_trip() {
    let s = start("").await;
    let api = Api { s: &s, auth: owner(&s).await };
    // Create and update responses carry the generated keys, as DPS returns them; GET does not.
    let (status, _, v) = api
        .req(
            "PUT",
            "/enrollments/keys-1",
            &json!({ "registrationId": "keys-1", "attestation": { "type": "symmetricKey" } }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let pk = v["attestation"]["symmetricKey"]["primaryKey"].as_str().expect("primary key in the create response");
    assert!(v["attestation"]["symmetricKey"]["secondaryKey"].is_string());
    let (_, _, got) = api.req("GET", "/enrollments/keys-1", &Value::Null).await;
    assert!(got["attestation"]["symmetricKey"].get("primaryKey").is_none(), "GET shows no keys: {got}");
    let mut changed = got.clone();
    changed["provisioningStatus"] = json!("disabled");
    let (status, _, v) = api.req("PUT", "/enrollments/keys-1", &changed).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["attestation"]["symmetricKey"]["primaryKey"], pk, "update keeps and shows the key");
    let (_, _, g) = api
        .req(
            "PUT",
            "/enrollmentGroups/grp-1",
            &json!({ "enrollmentGroupId": "grp-1", "attestation": { "type": "symmetricKey" } }),
        )
        .await;
    assert!(g["attestation"]["symmetricKey"]["primaryKey"].is_string(), "group create response has keys: {g}");

    // Certificates as PEM, base64 DER, and base64 of the PEM text are one and the same.
    let (cert, _) = make_cert("device-x", false, None);
    let pem = String::from_utf8(cert.to_pem().unwrap()).unwrap();
    let b64_der = dps_core::base64::encode(&cert.to_der().unwrap());
    let b64_pem = dps_core::base64::encode(pem.as_bytes());
    let mut thumbs = Vec::new();
    for (id, text) in [("x-pem", &pem), ("x-der", &b64_der), ("x-b64pem", &b64_pem)] {
        let body = json!({ "registrationId": id, "attestation": { "type": "x509", "x509": { "clientCertificates": { "primary": { "certificate": text } } } } });
        let (status, _, v) = api.req("PUT", &format!("/enrollments/{id}"), &body).await;
        assert_eq!(status, 200, "{id}: {v}");
        thumbs.push(v["attestation"]["x509"]["clientCertificates"]["primary"]["info"]["sha256Thumbprint"].clone());
        assert!(v["attestation"]["x509"]["clientCertificates"]["primary"].get("certificate").is_none());
    }
    assert!(thumbs[0].is_string() && thumbs.iter().all(|t| *t == thumbs[0]), "{thumbs:?}");
    let garbage =
        dps_core::base64::encode(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    let body = json!({ "registrationId": "x-bad", "attestation": { "type": "x509", "x509": { "clientCertificates": { "primary": { "certificate": garbage } } } } });
    let (status, _, v) = api.req("PUT", "/enrollments/x-bad", &body).await;
    assert_eq!(status, 400, "{v}");

    // GET-modify-PUT with only `info`, its timestamps reformatted as clients do: certificates kept.
    let (_, _, mut e) = api.req("GET", "/enrollments/x-pem", &Value::Null).await;
    let info = &mut e["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    let nb = info["notBeforeUtc"].as_str().unwrap().replace('Z', ".000Z");
    info["notBeforeUtc"] = json!(nb);
    info["subjectName"] = json!(info["subjectName"].as_str().unwrap().to_lowercase());
    e["provisioningStatus"] = json!("disabled");
    let (status, _, v) = api.req("PUT", "/enrollments/x-pem", &e).await;
    assert_eq!(status, 200, "round trip with reformatted info is accepted: {v}");
    let (_, _, a) = api.req("POST", "/enrollments/x-pem/attestationmechanism", &Value::Null).await;
    assert!(a["x509"]["clientCertificates"]["primary"]["certificate"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    // A secondary certificate alone is a valid X.509 attestation.
    let (ca, _) = make_cert("signing-ca", true, None);
    let ca_pem = String::from_utf8(ca.to_pem().unwrap()).unwrap();
    let body = json!({ "registrationId": "x-second", "attestation": { "type": "x509", "x509": { "clientCertificates": { "secondary": { "certificate": pem } } } } });
    let (status, _, v) = api.req("PUT", "/enrollments/x-second", &body).await;
    assert_eq!(status, 200, "{v}");
    let body = json!({ "enrollmentGroupId": "x-group", "attestation": { "type": "x509", "x509": { "signingCertificates": { "secondary": { "certificate": ca_pem } } } } });
    let (status, _, v) = api.req("PUT", "/enrollmentGroups/x-group", &body).await;
    assert_eq!(status, 200, "{v}");
    let (_, _, mut g) = api.req("GET", "/enrollmentGroups/x-group", &Value::Null).await;
    g["provisioningStatus"] = json!("disabled");
    let (status, _, v) = api.req("PUT", "/enrollmentGroups/x-group", &g).await;
    assert_eq!(status, 200, "group round trip keeps the secondary: {v}");
    let body =
        json!({ "registrationId": "x-none", "attestation": { "type": "x509", "x509": { "clientCertificates": {} } } });
    let (status, _, v) = api.req("PUT", "/enrollments/x-none", &body).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("primary or a secondary"), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_enrollment_deletes_its_registration() {
    let s = start("").await;
    let inst = common::link_hub(&s, "hub-a.azure-devices.net").await;
    let api = Api { s: &s, auth: owner(&s).await };
    let key = "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OWFiY2RlZg==";
    let body = json!({ "registrationId": "dev-z", "deviceId": "special-id", "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": key, "secondaryKey": key } } });
    assert_eq!(api.req("PUT", "/enrollments/dev-z", &body).await.0, 200);
    let scope = inst.id_scope.to_string();
    let token =
        dps_attest::sas::make_token(&format!("{scope}/registrations/dev-z"), key, later(), Some("registration"))
            .unwrap();
    let reg = format!("/{scope}/registrations/dev-z/register?api-version=2021-06-01");
    let (status, _, v) = call(&s, "PUT", &reg, &token, &[], r#"{"registrationId":"dev-z"}"#).await;
    assert_eq!(status, 202, "{v}");
    let op = v["operationId"].as_str().unwrap().to_owned();
    let poll = format!("/{scope}/registrations/dev-z/operations/{op}?api-version=2021-06-01");
    let (status, _, v) = call(&s, "GET", &poll, &token, &[], "").await;
    assert_eq!((status, v["registrationState"]["deviceId"].as_str()), (200, Some("special-id")), "{v}");
    assert_eq!(api.req("GET", "/registrations/dev-z", &Value::Null).await.0, 200);
    let (status, _, v) = api.req("DELETE", "/enrollments/dev-z", &Value::Null).await;
    assert_eq!(status, 204, "{v}");
    let (status, _, v) = api.req("GET", "/registrations/dev-z", &Value::Null).await;
    assert_eq!(status, 404, "the registration went with its enrollment: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_versions_accepted_and_refused() {
    let s = start("").await;
    let auth = owner(&s).await;
    for v in ["2018-09-01-preview", "2019-03-31", "2021-10-01", "2025-07-01-preview", "2026-11-01"] {
        let (status, head, body) =
            call(&s, "POST", &format!("/enrollments/query?api-version={v}"), &auth, &[], r#"{"query":"*"}"#).await;
        assert_eq!(status, 200, "{v}: {body}");
        assert_eq!(header(&head, "x-ms-item-type").as_deref(), Some("enrollment"));
    }
    for (v, needle) in [
        ("2099-01-01", "not supported"),
        ("2021-10-1", "not a valid"),
        ("yesterday", "not a valid"),
        ("2021-10-0%C3%A9", "not a valid"),
    ] {
        let (status, _, body) =
            call(&s, "POST", &format!("/enrollments/query?api-version={v}"), &auth, &[], r#"{"query":"*"}"#).await;
        assert_eq!(status, 400, "{v}: {body}");
        assert_eq!(body["errorCode"].as_u64().map(|c| c / 1000), Some(400), "{body}");
        assert!(body["message"].as_str().unwrap().contains(needle), "{v}: {body}");
    }
    assert!(common::health_ok(s.https()).await);
}
