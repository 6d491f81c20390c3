//! Secrets at rest (docs/secrets.md): the SQLite file holds no enrollment key, policy key or
//! linked hub's key in the clear, and a restart on the same data directory still opens them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use dps_server::{bind, Server};

/// Every byte of the store's files (the database and its WAL), not the key file beside them.
fn store_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_file() && name.contains(".db") {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    assert!(!all.is_empty(), "no store file in {}", dir.display());
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_database_file_reveals_no_secret_and_restarts_serve_them() {
    let s = common::start("").await;
    let hub_key = "bGlua2VkLWh1Yi1rZXktc2VjcmV0LXZhbHVl";
    let group_key = "Z3JvdXAta2V5LXNlY3JldC12YWx1ZS0xMjM0NQ==";
    let svc = &s.server.state.services;
    common::link_hub(&s, "hub.example").await;
    let inst = svc
        .update_instance("opendps", move |i| {
            i.iot_hubs[0].connection_string =
                format!("HostName=hub.example;SharedAccessKeyName=o;SharedAccessKey={hub_key}");
            Ok(())
        })
        .await
        .unwrap();
    svc.put_group(&inst, "g1", common::symmetric_group("g1", group_key), None).await.unwrap();
    let policy_key = inst.authorization_policies[0].primary_key.clone();
    assert!(!policy_key.is_empty());

    let dir = s.dir;
    s.server.shutdown().await;
    let bytes = store_bytes(dir.path());
    for (what, secret) in [("linked hub key", hub_key), ("group key", group_key), ("policy key", policy_key.as_str())] {
        assert!(!contains(&bytes, secret), "the {what} is in the database file in the clear");
    }
    assert!(contains(&bytes, dps_core::store::SEALED_PREFIX), "nothing sealed in the database file");
    let key_file = dir.path().join("node.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

    // Same data directory, same key file: the secrets read back as they were written.
    let config = common::config(dir.path(), "");
    let listeners = bind(&config).await.unwrap();
    let server = Server::start(config, listeners).await.expect("restarts");
    let svc = &server.state.services;
    let inst = svc.instance("opendps").await.unwrap();
    assert_eq!(inst.authorization_policies[0].primary_key, policy_key);
    assert!(inst.iot_hubs[0].connection_string.ends_with(hub_key));
    let g = svc.group(&inst, "g1").await.unwrap();
    assert_eq!(g.attestation.symmetric_key.unwrap().primary_key.as_deref(), Some(group_key));
    server.shutdown().await;
}
