//! The handshake matrix of docs/tls.md, driven by real OpenSSL clients against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client_hello, is_alert, raw_exchange, start, Client};
use dps_core::tls::{ProfileName, DPS_SUITES};
use openssl::ssl::SslVersion;

const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_PROTOCOL_VERSION: u8 = 70;

#[tokio::test(flavor = "multi_thread")]
async fn each_of_the_twelve_suites_is_accepted_alone_on_both_listeners() {
    let s = start("").await;
    for addr in [s.https(), s.mqtt()] {
        for suite in DPS_SUITES {
            let done = Client::tls12(suite.openssl)
                .run(addr)
                .await
                .unwrap_or_else(|e| panic!("{} refused: {e}", suite.openssl));
            assert_eq!(done.cipher, suite.openssl);
            assert_eq!(done.version, "TLSv1.2");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_suites_are_refused() {
    let s = start("").await;
    for foreign in [
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-SHA",
    ] {
        let r = Client::tls12(foreign).run(s.https()).await;
        assert!(r.is_err(), "{foreign} must be refused");
    }
    // 3DES (and RC4, NULL) cannot be offered by this OpenSSL build, so send the ClientHello by hand.
    for (name, code) in
        [("3DES", 0x000Au16), ("ECDHE-3DES", 0xC012), ("RC4", 0x0005), ("NULL", 0x003B), ("CHACHA20", 0xCCA8)]
    {
        let s2 = s.https();
        let reply =
            tokio::task::spawn_blocking(move || raw_exchange(s2, &client_hello(&[code], 0x0303))).await.unwrap();
        assert!(
            is_alert(&reply, ALERT_HANDSHAKE_FAILURE),
            "{name}: expected a handshake_failure alert, got {reply:02x?}"
        );
    }
    assert!(common::health_ok(s.https()).await, "the server keeps serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls10_and_tls11_are_refused_with_a_protocol_version_alert() {
    let s = start("[tls]\ntls13 = true\n").await;
    for v in [SslVersion::TLS1, SslVersion::TLS1_1] {
        let c = Client {
            min: Some(v),
            max: Some(v),
            ciphers: Some("ECDHE-RSA-AES128-SHA:AES128-SHA".into()),
            ..Client::default()
        };
        let err = c.run(s.https()).await.err().expect("old version refused");
        assert!(err.contains("protocol version"), "expected a protocol_version alert, got: {err}");
    }
    for version in [0x0301u16, 0x0302, 0x0300] {
        let addr = s.https();
        let reply = tokio::task::spawn_blocking(move || raw_exchange(addr, &client_hello(&[0xC013, 0x002F], version)))
            .await
            .unwrap();
        assert!(is_alert(&reply, ALERT_PROTOCOL_VERSION), "version {version:#06x}: got {reply:02x?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_order_wins_in_every_profile() {
    let offer = "AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA";
    let security = start("").await;
    assert_eq!(Client::tls12(offer).run(security.https()).await.unwrap().cipher, "ECDHE-RSA-AES256-SHA");
    assert_eq!(Client::tls12("AES128-SHA:AES256-SHA").run(security.https()).await.unwrap().cipher, "AES256-SHA");
    let full = "AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384";
    assert_eq!(Client::tls12(full).run(security.https()).await.unwrap().cipher, "ECDHE-RSA-AES256-GCM-SHA384");

    let performance = start("[tls]\nprofile = \"dps-legacy-performance\"\n").await;
    assert_eq!(Client::tls12(offer).run(performance.https()).await.unwrap().cipher, "ECDHE-RSA-AES128-SHA");
    assert_eq!(Client::tls12("AES256-SHA:AES128-SHA").run(performance.https()).await.unwrap().cipher, "AES128-SHA");
    assert_eq!(
        Client::tls12("AES256-GCM-SHA384:AES128-GCM-SHA256").run(performance.https()).await.unwrap().cipher,
        "AES128-GCM-SHA256"
    );

    let recommended = start("[tls]\nprofile = \"dps-recommended\"\n").await;
    assert!(Client::tls12(offer).run(recommended.https()).await.is_err(), "no legacy suite under dps-recommended");
    assert_eq!(
        Client::tls12("ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384").run(recommended.https()).await.unwrap().cipher,
        "ECDHE-RSA-AES256-SHA384"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_listener_profile_applies_only_to_that_listener() {
    let s = start("[mqtt]\nprofile = \"dps-recommended\"\n").await;
    assert!(Client::tls12("AES128-SHA").run(s.https()).await.is_ok());
    assert!(Client::tls12("AES128-SHA").run(s.mqtt()).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls13_only_when_enabled() {
    let tls13_only = Client { min: Some(SslVersion::TLS1_3), max: Some(SslVersion::TLS1_3), ..Client::default() };
    let off = start("").await;
    let err = tls13_only.run(off.https()).await.err().expect("TLS 1.3 is off by default");
    assert!(err.contains("protocol version") || err.contains("unsupported"), "{err}");
    // A client that offers 1.2 and 1.3 gets 1.2 by default.
    assert_eq!(Client::default().run(off.https()).await.unwrap().version, "TLSv1.2");

    let on = start("[tls]\ntls13 = true\n").await;
    let done = tls13_only.run(on.https()).await.unwrap();
    assert_eq!(done.version, "TLSv1.3");
    assert_eq!(done.cipher, "TLS_AES_256_GCM_SHA384", "server preference among the TLS 1.3 suites");
    let chacha_only = Client { tls13_suites: Some("TLS_CHACHA20_POLY1305_SHA256".into()), ..tls13_only.clone() };
    assert!(chacha_only.run(on.https()).await.is_err(), "only the two AES-GCM TLS 1.3 suites");
    // TLS 1.2 still works with TLS 1.3 on.
    assert_eq!(Client::tls12("ECDHE-RSA-AES128-GCM-SHA256").run(on.https()).await.unwrap().version, "TLSv1.2");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_are_p256_then_p384_and_nothing_else_by_default() {
    let s = start("").await;
    let ecdhe = "ECDHE-RSA-AES128-GCM-SHA256";
    for (groups, ok) in [("P-256", true), ("P-384", true), ("X25519", false), ("P-521", false)] {
        let c = Client { groups: Some(groups.into()), ..Client::tls12(ecdhe) };
        assert_eq!(c.run(s.https()).await.is_ok(), ok, "group {groups}");
    }
    // Offered both, the server picks P-256 (its preference).
    let c = Client { groups: Some("P-384:P-256".into()), ..Client::tls12(ecdhe) };
    let mut done = c.run(s.https()).await.unwrap();
    let body = tokio::task::spawn_blocking(move || done.get("/health").1).await.unwrap();
    assert!(body.contains("\"group\":\"secp256r1\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn served_chain_verifies_to_the_exported_root_for_ip_and_localhost() {
    let s = start("").await;
    let root = s.root_pem();
    let by_ip = Client { trust_root_pem: Some(root.clone()), ..Client::default() };
    by_ip.run(s.https()).await.expect("leaf covers 127.0.0.1 and chains to the root");
    let by_name = Client { trust_root_pem: Some(root), sni: Some("localhost".into()), ..Client::default() };
    by_name.run(s.mqtt()).await.expect("leaf covers localhost");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_without_a_client_certificate_is_accepted() {
    let s = start("").await;
    let mut done = Client::default().run(s.https()).await.unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || done.get("/health")).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"clientCertificate\":false"), "{body}");
}

/// The authentication boundary (docs/tls.md, "Mutual TLS"): a chain from a CA nobody configured is
/// accepted by the TLS layer, and handed to the application whole, leaf first.
#[tokio::test(flavor = "multi_thread")]
async fn untrusted_client_chain_is_accepted_and_handed_over() {
    let s = start("").await;
    let (ca, ca_key) = common::make_cert("Foreign CA", true, None);
    let (leaf, leaf_key) = common::make_cert("device-1", false, Some((&ca, &ca_key)));
    let c = Client { cert: Some((leaf, vec![ca], leaf_key)), ..Client::default() };
    let mut done = c.run(s.https()).await.expect("any chain passes the TLS layer");
    let body = tokio::task::spawn_blocking(move || done.get("/health").1).await.unwrap();
    assert!(body.contains("\"clientCertificate\":true"), "{body}");
    assert!(body.contains("\"clientCertificateChainLength\":2"), "{body}");

    let (selfsigned, key) = common::make_cert("device-2", false, None);
    let c = Client { cert: Some((selfsigned, vec![], key)), ..Client::default() };
    let mut done = c.run(s.mqtt()).await.expect("a self-signed device certificate passes the TLS layer");
    assert_eq!(done.version, "TLSv1.2");
    drop(done.stream.shutdown());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_request_can_be_turned_off() {
    let s = start("[tls]\nrequest_client_cert = false\n").await;
    let (leaf, key) = common::make_cert("device-3", false, None);
    let c = Client { cert: Some((leaf, vec![], key)), ..Client::default() };
    let mut done = c.run(s.https()).await.unwrap();
    let body = tokio::task::spawn_blocking(move || done.get("/health").1).await.unwrap();
    assert!(body.contains("\"clientCertificate\":false"), "not requested, so not sent: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_facts_capture_what_the_client_offered() {
    let s = start("").await;
    let c = Client {
        sni: Some("global.azure-devices-provisioning.net".into()),
        groups: Some("X25519:P-256".into()),
        ..Client::tls12("ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA")
    };
    let mut done = c.run(s.https()).await.unwrap();
    let body = tokio::task::spawn_blocking(move || done.get("/health").1).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let offered = &v["tls"]["offered"];
    assert_eq!(offered["sni"], "global.azure-devices-provisioning.net");
    assert_eq!(offered["groups"], serde_json::json!(["x25519", "secp256r1"]));
    let suites: Vec<&str> = offered["cipherSuites"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(&suites[..2], ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA"]);
    assert!(offered["versions"].as_array().unwrap().iter().any(|v| v == "TLSv1.2"));
    assert!(!offered["signatureAlgorithms"].as_array().unwrap().is_empty());
    assert_eq!(v["tls"]["negotiated"]["cipherSuite"], "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
    assert_eq!(v["tls"]["negotiated"]["version"], "TLSv1.2");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_resumption_works_and_renegotiation_is_refused() {
    let s = start("").await;
    let addr = s.https();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-tls1_2", "-reconnect"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("Reused, TLSv1.2").count() >= 1, "resumption: {text}");

    // Client-initiated renegotiation: s_client's "R" command. The server must refuse it.
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-tls1_2", "-no_ticket"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(stdin);
        child.wait_with_output().expect("output")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("RENEGOTIATING"), "{text}");
    assert!(text.contains("no renegotiation") || text.contains("alert"), "renegotiation must be refused: {text}");
    assert!(common::health_ok(s.https()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_names_in_config_match_the_core_table() {
    for p in ProfileName::ALL {
        let s = start(&format!("[tls]\nprofile = \"{p}\"\n")).await;
        for suite in DPS_SUITES {
            let accepted = Client::tls12(suite.openssl).run(s.https()).await.is_ok();
            assert_eq!(accepted, p.profile().accepts(suite.code), "{p}: {}", suite.openssl);
        }
    }
}
