//! Server certificates that roll: no established connection dropped, no handshake failed, the
//! new leaf served to new connections, a bad file never installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{start, start_with_clock, Client};
use dps_core::testing::ManualClock;
use dps_tls::builtin_ca::BuiltInCaSettings;
use openssl::hash::MessageDigest;

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Issues a leaf from a CA kept in `ca_dir` and writes chain + key where the server reads them
/// (each file atomically, chain first, as a careless operator script would). Returns the leaf's SHA-256.
fn issue_into(ca_dir: &Path, extra_ip: &str, chain: &Path, key: &Path) -> Vec<u8> {
    let settings = BuiltInCaSettings {
        dir: ca_dir.to_owned(),
        dns_names: vec![],
        ip_addresses: vec![extra_ip.parse().unwrap()],
        leaf_lifetime: Duration::from_secs(3600),
    };
    let (creds, _, _) = settings.ensure(now()).unwrap();
    let mut pem = creds.leaf.to_pem().unwrap();
    for c in &creds.chain {
        pem.extend(c.to_pem().unwrap());
    }
    let write = |path: &Path, bytes: &[u8]| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    write(chain, &pem);
    std::thread::sleep(Duration::from_millis(50));
    write(key, &creds.key.private_key_to_pem_pkcs8().unwrap());
    creds.leaf.digest(MessageDigest::sha256()).unwrap().to_vec()
}

async fn served_leaf(addr: SocketAddr) -> Vec<u8> {
    Client::default().run(addr).await.expect("handshake").leaf_sha256
}

/// Handshakes in a loop (bounded) until stopped; returns (succeeded, failed).
fn hammer(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        for _ in 0..5_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match Client::default().connect(addr) {
                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (ok.into_inner(), failed.into_inner())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn file_credentials_roll_without_dropping_anyone() {
    let ca = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (chain, key) = (files.path().join("chain.pem"), files.path().join("key.pem"));
    let first = issue_into(ca.path(), "127.0.0.1", &chain, &key);
    let root = ca.path().join("root.pem");
    let s = start(&format!(
        "[tls.files]\nchain = {:?}\nkey = {:?}\nroot = {:?}\npoll_interval = \"200ms\"\n",
        chain.to_str().unwrap(),
        key.to_str().unwrap(),
        root.to_str().unwrap()
    ))
    .await;
    let addr = s.https();
    assert_eq!(served_leaf(addr).await, first);

    // An established keep-alive connection, and a stream of new handshakes during the roll.
    let mut open = Client::default().run(addr).await.unwrap();
    let (open_status, open) = tokio::task::spawn_blocking(move || (open.get("/health").0, open)).await.unwrap();
    assert_eq!(open_status, 200);
    let mut open = open;
    let stop = Arc::new(AtomicBool::new(false));
    let load = hammer(addr, stop.clone());

    let second = tokio::task::spawn_blocking({
        let (ca, chain, key) = (ca.path().to_owned(), chain.clone(), key.clone());
        move || issue_into(&ca, "127.0.0.2", &chain, &key)
    })
    .await
    .unwrap();
    assert_ne!(first, second);
    let mut rolled = false;
    for _ in 0..100 {
        if served_leaf(addr).await == second {
            rolled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = tokio::task::spawn_blocking(move || load.join().unwrap()).await.unwrap();
    assert!(rolled, "new connections get the new leaf");
    assert_eq!(failed, 0, "no handshake failed during the roll ({ok} succeeded)");
    assert!(ok > 0);
    let status = tokio::task::spawn_blocking(move || open.get("/health").0).await.unwrap();
    assert_eq!(status, 200, "the connection opened before the roll still works");
    assert_eq!(hex(&s.server.tls.current().fingerprint()), hex_bytes(&second));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_is_reported_and_the_old_certificate_stays() {
    let ca = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (chain, key) = (files.path().join("chain.pem"), files.path().join("key.pem"));
    let first = issue_into(ca.path(), "127.0.0.1", &chain, &key);
    let s = start(&format!(
        "[tls.files]\nchain = {:?}\nkey = {:?}\npoll_interval = \"200ms\"\n",
        chain.to_str().unwrap(),
        key.to_str().unwrap()
    ))
    .await;
    let addr = s.https();

    // A key that does not match the chain.
    let other = tempfile::tempdir().unwrap();
    let stray_chain = other.path().join("c.pem");
    issue_into(ca.path(), "127.0.0.3", &stray_chain, &key);
    let err = s.server.tls.reload().expect_err("mismatched key refused");
    assert!(err.to_string().contains("does not match"), "{err}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(served_leaf(addr).await, first, "old credentials stay");

    // Garbage.
    std::fs::write(&chain, b"garbage").unwrap();
    let err = s.server.tls.reload().expect_err("garbage refused");
    assert!(err.to_string().contains("chain.pem"), "the error names the file: {err}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(served_leaf(addr).await, first, "old credentials stay");
    assert!(common::health_ok(addr).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn builtin_leaf_renews_itself_before_expiry() {
    // The server's clock starts 41 minutes in the past; moving it to now puts the one-hour
    // leaf a third of its lifetime before expiry, which is when it renews. Nobody waits.
    let clock = Arc::new(ManualClock::new(SystemTime::now() - Duration::from_secs(41 * 60)));
    let s = start_with_clock("[tls.builtin]\nleaf_lifetime = \"1h\"\ncheck_interval = \"1h\"\n", clock.clone()).await;
    let addr = s.https();
    let first = served_leaf(addr).await;
    let root = s.root_pem();
    let mut open = Client { trust_root_pem: Some(root.clone()), ..Client::default() }.run(addr).await.unwrap();
    let tls = s.server.tls.clone();
    let unchanged = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || tls.reload()
    })
    .await
    .unwrap()
    .expect("reload");
    assert!(!unchanged, "not due yet: nothing renewed");
    clock.advance(Duration::from_secs(41 * 60));
    let renewed = tokio::task::spawn_blocking(move || tls.reload()).await.unwrap().expect("reload");
    assert!(renewed, "due: the leaf renewed itself");
    assert_ne!(served_leaf(addr).await, first, "the new leaf is served");
    // Devices pin the root only: the new leaf verifies against the same root.
    Client { trust_root_pem: Some(root), ..Client::default() }
        .run(addr)
        .await
        .expect("new leaf chains to the same root");
    let status = tokio::task::spawn_blocking(move || open.get("/health").0).await.unwrap();
    assert_eq!(status, 200, "connection from before the renewal still works");
}

/// One `openssl s_client` handshake resuming `session` (if it exists) and saving the session
/// it ends with there; whether the handshake was a resumption.
fn s_client_session(addr: SocketAddr, session: &std::path::Path) -> bool {
    let mut args = vec!["s_client".to_owned(), "-connect".into(), addr.to_string(), "-tls1_2".into()];
    if session.exists() {
        args.extend(["-sess_in".into(), session.display().to_string()]);
    }
    args.extend(["-sess_out".into(), session.display().to_string()]);
    let out = std::process::Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Cipher is ECDHE-RSA"), "handshake completed: {text}");
    text.contains("Reused, TLSv1.2")
}

#[tokio::test(flavor = "multi_thread")]
async fn ticket_key_rotation_falls_back_to_a_full_handshake() {
    let s = start("").await;
    let addr = s.https();
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.pem");
    let first = session.clone();
    assert!(!tokio::task::spawn_blocking(move || s_client_session(addr, &first)).await.unwrap(), "first: full");
    let again = session.clone();
    assert!(tokio::task::spawn_blocking(move || s_client_session(addr, &again)).await.unwrap(), "resumed");
    s.server.tls.rotate_ticket_keys().expect("rotation");
    // The session from before the rotation no longer resumes: a full handshake, not a failure.
    let after = session.clone();
    assert!(!tokio::task::spawn_blocking(move || s_client_session(addr, &after)).await.unwrap(), "full after rotation");
    assert!(
        tokio::task::spawn_blocking(move || s_client_session(addr, &session)).await.unwrap(),
        "new session resumes"
    );
    assert!(common::health_ok(addr).await);
}

fn hex(s: &str) -> String {
    s.to_owned()
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
