//! The `opendps` binary as an operator runs it: start, banner, SIGHUP reload, SIGTERM, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::{leaf_sha256, serve, signal, wait_for, BIN};

#[test]
fn builtin_ca_root_is_exported_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut s = serve(&["--data-dir", data, "--listen-address", "127.0.0.1", "--https-port", "0", "--mqtt-port", "0"]);
    let exported = Command::new(BIN).args(["ca", "export-root", "--data-dir", data]).output().unwrap();
    assert!(exported.status.success());
    let on_disk = std::fs::read(dir.path().join("pki/root.pem")).unwrap();
    assert_eq!(exported.stdout, on_disk);
    assert!(String::from_utf8_lossy(&exported.stdout).starts_with("-----BEGIN CERTIFICATE-----"));
    // The served chain verifies against the exported root.
    let root = dir.path().join("root-copy.pem");
    std::fs::write(&root, &exported.stdout).unwrap();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &s.https.to_string(),
            "-tls1_2",
            "-verify_return_error",
            "-CAfile",
            root.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verify return code: 0 (ok)"));

    signal(&s.child, "-TERM");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
    assert!(wait_for(&s.lines, "stopped"));
}

#[test]
fn sighup_reloads_file_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = dir.path().join("ca-a");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    // Two CAs made by the server's own built-in CA code, run once each.
    for (ca, port_dir) in [(&ca_a, "a"), (&dir.path().join("ca-b"), "b")] {
        let mut s = serve(&[
            "--data-dir",
            ca.to_str().unwrap(),
            "--listen-address",
            "127.0.0.1",
            "--https-port",
            "0",
            "--mqtt-port",
            "0",
        ]);
        signal(&s.child, "-TERM");
        s.child.wait().unwrap();
        let _ = port_dir;
    }
    let install = |ca: &std::path::Path| {
        let mut chain = std::fs::read(ca.join("pki/server.pem")).unwrap();
        chain.extend(std::fs::read(ca.join("pki/intermediate.pem")).unwrap());
        std::fs::write(files.join("chain.pem"), chain).unwrap();
        std::fs::copy(ca.join("pki/server.key"), files.join("key.pem")).unwrap();
    };
    install(&ca_a);
    let chain = files.join("chain.pem");
    let key = files.join("key.pem");
    let config = dir.path().join("opendps.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[listen]\naddress = \"127.0.0.1\"\n[https]\nport = 0\n[mqtt]\nport = 0\n[amqp]\nport = 0\n[tls.files]\nchain = {:?}\nkey = {:?}\npoll_interval = \"1h\"\n",
            dir.path().join("data").to_str().unwrap(),
            chain.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    let s = serve(&["--config", config.to_str().unwrap()]);
    let before = leaf_sha256(s.https);
    install(&dir.path().join("ca-b"));
    assert_eq!(leaf_sha256(s.https), before, "no reload until asked (poll interval is an hour)");
    signal(&s.child, "-HUP");
    assert!(wait_for(&s.lines, "server certificate rolled"), "SIGHUP reloads");
    assert_ne!(leaf_sha256(s.https), before);
}

#[test]
fn bind_failure_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen-address",
            "127.0.0.1",
            "--https-port",
            &port,
            "--mqtt-port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use") && err.contains("--https-port"), "{err}");
}

#[test]
fn invalid_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[tls]\nprofile = \"modern\"\nhandshake_timeout = \"soon\"\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.profile") && err.contains("tls.handshake_timeout"), "{err}");
}

#[test]
fn serve_help_documents_the_settings() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--data-dir",
        "--listen-address",
        "--https-port",
        "--mqtt-port",
        "--amqp-port",
        "--tls-profile",
        "--tls13",
        "--cert-chain",
        "--leaf-lifetime",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn tls_profiles_lists_the_twelve_suites() {
    let out = Command::new(BIN).args(["tls", "profiles", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["name"], "dps-legacy-security");
    assert_eq!(v[1]["tls12Suites"].as_array().unwrap().len(), 12);
    assert_eq!(v[0]["tls12Suites"].as_array().unwrap().len(), 4);
}
