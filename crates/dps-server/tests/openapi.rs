//! The server answers exactly the operations of `dps_http::routes::ROUTES` (which
//! docs/openapi.yaml is checked against in dps-http): each is answered (whatever its outcome for
//! a request without a valid resource), and every other method on those paths, and paths outside
//! the table, get "not an operation". The document is served at GET /openapi.yaml.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};

use common::{start, Client, TestServer};
use dps_http::routes::{Api, ROUTES};

/// One request; (status, body text).
async fn send(s: &TestServer, method: &str, path: &str, headers: Vec<(String, String)>) -> (u16, String) {
    let mut d = Client::default().run(s.https()).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        d.stream.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(d.stream.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        if status == 101 {
            return (status, String::new());
        }
        let len: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        d.stream.read_exact(&mut buf).unwrap();
        (status, String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .unwrap()
}

/// A concrete path for a template: names that exist nowhere, so nothing is changed.
fn instantiate(template: &str) -> String {
    let mut out = template
        .replace("{idScope}", "0ne00000000")
        .replace("{registrationId}", "probe-device")
        .replace("{operationId}", "4.probe")
        .replace("{id}", "probe-id")
        .replace("{subscriptionId}", dps_server::SUBSCRIPTION_ID)
        .replace("{resourceGroupName}", "probe-rg")
        .replace("{provisioningServiceName}", "probe-dps")
        .replace("{deploymentName}", "probe-deployment")
        .replace("{certificateName}", "probe-cert")
        .replace("{hubName}", "probe-hub");
    let sep = if out.contains('?') { '&' } else { '?' };
    let version =
        if template.starts_with("/devices") || template.starts_with("/twins") { "2021-04-12" } else { "2021-10-01" };
    out.push_str(&format!("{sep}api-version={version}"));
    out
}

fn headers(s: &TestServer, path: &str, websocket: bool) -> Vec<(String, String)> {
    let mut h = Vec::new();
    if path.starts_with("/subscriptions") {
        h.push(("Authorization".into(), format!("Bearer {}", s.server.admin_token)));
    }
    if websocket {
        for (k, v) in [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "mqtt"),
        ] {
            h.push((k.into(), v.into()));
        }
    }
    h
}

/// Whether template `t` matches every concrete path of template `p` (a `{…}` in `t` matches any
/// segment; literals match case-insensitively).
fn covers(t: &str, p: &str) -> bool {
    let (ts, ps): (Vec<&str>, Vec<&str>) = (t.split('/').collect(), p.split('/').collect());
    ts.len() == ps.len() && ts.iter().zip(&ps).all(|(a, b)| a.starts_with('{') || a.eq_ignore_ascii_case(b))
}

/// "Not an operation": a 404 or 405 that says so (or axum's bare 405 for a method a fixed route
/// does not have).
fn not_an_operation(status: u16, body: &str) -> bool {
    (status == 404 || status == 405)
        && (body.is_empty() || body.contains("not an operation") || body.contains("not a DPS operation"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_answers_exactly_the_documented_operations() {
    let s = start("").await;
    let mut problems = Vec::new();
    for r in ROUTES {
        let websocket = r.operation_id.starts_with("MqttOverWebSocket");
        let path = instantiate(r.path);
        let (status, body) = send(&s, r.method, &path, headers(&s, r.path, websocket)).await;
        let answered = if websocket { status == 101 } else { !not_an_operation(status, &body) };
        if !answered {
            problems
                .push(format!("{} {} ({:?}) is documented but not answered: {status} {body}", r.method, r.path, r.api));
        }
    }
    // Every other method on the same paths is not an operation.
    let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
    paths.dedup();
    for path in paths {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            // Skip when another operation's template covers the same concrete path
            // (GET /enrollments/query is GET /enrollments/{id} with id "query").
            if ROUTES.iter().any(|r| r.method == method && covers(r.path, path)) {
                continue;
            }
            let (status, body) = send(&s, method, &instantiate(path), headers(&s, path, false)).await;
            if !not_an_operation(status, &body) {
                problems.push(format!("{method} {path} is answered ({status} {body}) but not documented"));
            }
        }
    }
    // Paths outside the table.
    for path in [
        "/nothing",
        "/enrollments/a/b/c",
        "/enrollmentGroups/a/attestationmechanism/x",
        "/registrations/a/b/c",
        "/0ne00000000/registrations/probe/other",
        "/subscriptions/x/other",
        "/devices/a/b",
        "/twins/a/b",
        "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Devices/provisioningServices/p/other",
    ] {
        let (status, body) = send(&s, "GET", &instantiate(path), headers(&s, path, false)).await;
        if !not_an_operation(status, &body) {
            problems.push(format!("GET {path} is answered ({status} {body}) but not documented"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The document itself.
    let (status, body) = send(&s, "GET", "/openapi.yaml", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(body, dps_http::openapi::DOCUMENT);
    assert!(ROUTES.iter().any(|r| r.api == Api::Management));
}
