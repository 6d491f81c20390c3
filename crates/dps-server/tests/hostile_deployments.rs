//! Hostile deployment bodies against a running server: each gets an ARM-shaped 400 naming what is
//! wrong, and the server keeps serving (the process neither aborts nor runs out of memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::{read_http_response, start, Client, TestServer};
use serde_json::{json, Value};

/// PUTs `body` (raw bytes) as the deployment `name` in resource group `rg-hostile`.
async fn put_deployment(s: &TestServer, name: &str, body: Vec<u8>) -> (u16, Value) {
    let token = s.server.admin_token.clone();
    let mut d = Client::default().run(s.https()).await.unwrap();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let head = format!(
            "PUT /subscriptions/x/resourceGroups/rg-hostile/providers/Microsoft.Resources/deployments/{name}?api-version=2021-04-01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        d.stream.write_all(head.as_bytes()).unwrap();
        d.stream.write_all(&body).unwrap();
        let (status, text) = read_http_response(&mut d.stream);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

fn deployment(resources: Value, variables: Value) -> Vec<u8> {
    json!({
        "properties": {
            "mode": "Incremental",
            "template": {
                "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                "contentVersion": "1.0.0.0",
                "variables": variables,
                "resources": resources
            }
        }
    })
    .to_string()
    .into_bytes()
}

fn dps(name: &str) -> Value {
    json!([{
        "type": "Microsoft.Devices/provisioningServices",
        "apiVersion": "2022-02-05",
        "name": name,
        "location": "westus",
        "sku": {"name": "S1", "capacity": 1},
        "properties": {}
    }])
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_templates_get_an_arm_error_and_the_server_keeps_serving() {
    let s = start("").await;

    // The expression that aborted the process (allocation failure).
    let body = deployment(dps("[variables('name')]"), json!({"name": "[padLeft('a',1000000000000,'x')]"}));
    let (status, body) = put_deployment(&s, "pad", body).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "InvalidRequest", "{body}");
    assert!(
        message(&body).starts_with("variables.name: cannot evaluate \"[padLeft('a',1000000000000,'x')]\": padLeft() would build a string of 1000000000000 bytes"),
        "{body}"
    );

    // 18 doubling variables from a 2 KB seed (256 MB at the end, unbounded).
    let mut vars = serde_json::Map::new();
    vars.insert("v00".into(), json!("x".repeat(2048)));
    for i in 1..=18 {
        vars.insert(format!("v{i:02}"), json!(format!("[concat(variables('v{0:02}'), variables('v{0:02}'))]", i - 1)));
    }
    let (status, body) = put_deployment(&s, "doubling", deployment(dps("doubled"), Value::Object(vars))).await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).starts_with("variables.v10: cannot evaluate"), "{body}");
    assert!(message(&body).contains("concat() would build a string of 2097152 bytes"), "{body}");

    // A body that is not UTF-8 is refused, not repaired with replacement characters.
    let mut body = deployment(dps("latin1-\u{e9}"), json!({}));
    let at = body.windows(2).position(|w| w == "é".as_bytes()).unwrap();
    body.splice(at..at + 2, [0xE9]);
    let (status, body) = put_deployment(&s, "latin1", body).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(message(&body), format!("the body is not UTF-8 text (invalid byte at offset {at})"), "{body}");

    // Nothing of the refused deployments was created, and a good one still deploys.
    let names: Vec<String> = s.server.state.services.instances().await.unwrap().into_iter().map(|i| i.name).collect();
    assert!(!names.iter().any(|n| n == "doubled" || n.starts_with("latin1")), "{names:?}");
    let (status, body) = put_deployment(&s, "good", deployment(dps("after-hostile"), json!({}))).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    assert_eq!(body["properties"]["provisioningState"], "Succeeded", "{body}");
}
