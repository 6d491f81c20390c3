//! PostgreSQL over TLS (libpq's `sslmode`, through OpenSSL) and the bounds that turn an
//! unreachable database into a prompt `Unavailable` instead of a hang. The server is a throwaway
//! cluster with `ssl = on` and a certificate made here with the `openssl` command for the name
//! `db.example` only; plain TCP is refused by its `pg_hba.conf`, so a store that connects at all
//! speaks TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dps_core::error::DisplayChain;
use dps_core::store::{Store, StoreError};
use dps_store_postgres::test_cluster::{Options, TestCluster};
use dps_store_postgres::{PgStore, Timeouts};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate it signed for `db.example` (no IP address).
fn make_ca(dir: &Path, name: &str) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
}

fn make_server_cert(dir: &Path) {
    make_ca(dir, "right");
    make_ca(dir, "wrong");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=db.example",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName = DNS:db.example\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "right-ca.pem",
            "-CAkey",
            "right-ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
}

fn tls_cluster(dir: &Path) -> TestCluster {
    make_server_cert(dir);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    TestCluster::start_with(&Options {
        conf: vec!["ssl = on".into(), "ssl_cert_file = 'server.crt'".into(), "ssl_key_file = 'server.key'".into()],
        hba: vec!["hostnossl all all 0.0.0.0/0 reject".into()],
        files: vec![("server.crt".into(), read("server.crt")), ("server.key".into(), read("server.key"))],
        ..Options::default()
    })
    .expect("TLS cluster")
}

async fn connect(url: &str) -> Result<PgStore, String> {
    PgStore::connect(url, 1).await.map_err(|e| DisplayChain(&e).to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_is_honoured_through_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let c = tls_cluster(dir.path());
    let (port, ca) = (c.port(), |n: &str| dir.path().join(format!("{n}-ca.pem")).to_string_lossy().into_owned());
    let by_ip = |q: &str| format!("postgres://postgres@127.0.0.1:{port}/postgres?{q}");
    let by_name = |q: &str| format!("postgres://postgres@db.example:{port}/postgres?hostaddr=127.0.0.1&{q}");

    // Plain TCP: refused by the server, and the server's reason is said once.
    let e = connect(&by_ip("sslmode=disable")).await.err().unwrap_or_else(|| panic!("plain TCP is refused"));
    assert!(e.contains("no encryption"), "{e}");
    assert_eq!(e.matches("pg_hba.conf").count(), 1, "the reason once: {e}");

    // Encryption only: any certificate.
    connect(&by_ip("sslmode=require")).await.expect("require");
    connect(&by_ip("sslmode=prefer")).await.expect("prefer");

    // The chain: the right CA passes, another CA does not (also for `require` with a root file).
    connect(&by_ip(&format!("sslmode=verify-ca&sslrootcert={}", ca("right")))).await.expect("verify-ca, right CA");
    for mode in ["verify-ca", "require", "verify-full"] {
        let e = connect(&by_name(&format!("sslmode={mode}&sslrootcert={}", ca("wrong")))).await.err();
        let e = e.unwrap_or_else(|| panic!("{mode} with a foreign CA must fail"));
        assert!(e.contains("certificate verify failed"), "{mode}: {e}");
    }

    // The name: db.example passes; the bare address is not in the certificate.
    connect(&by_name(&format!("sslmode=verify-full&sslrootcert={}", ca("right")))).await.expect("verify-full by name");
    let e = connect(&by_ip(&format!("sslmode=verify-full&sslrootcert={}", ca("right")))).await.err();
    assert!(e.expect("verify-full by address must fail").contains("certificate verify failed"));

    // A root file that is missing is named.
    let e = connect(&by_ip("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")).await.err().unwrap();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    let e = connect(&by_ip("sslmode=allow")).await.err().unwrap();
    assert!(e.contains("sslmode=allow is not supported"), "{e}");
}

fn is_unavailable(r: &Result<impl Sized, StoreError>) -> bool {
    matches!(r, Err(StoreError::Unavailable(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswering_database_is_unavailable_not_a_hang() {
    let c = TestCluster::start().expect("cluster");
    let t = Timeouts { connect: Duration::from_secs(1), operation: Duration::from_secs(2) };
    let store = PgStore::connect_with(&c.url("postgres"), 2, t).await.expect("connect");
    assert!(store.instances().await.is_ok());

    // Black hole: every server process stopped, connections stay open, nothing answers.
    c.signal("STOP").unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), store.instances()).await.expect("bounded by the store");
    assert!(is_unavailable(&r), "{:?}", r.err());
    let text = DisplayChain(&r.err().unwrap()).to_string();
    assert!(text.contains("did not answer within 2000 ms"), "{text}");
    // A new node cannot connect either, and says so.
    let r = tokio::time::timeout(Duration::from_secs(60), PgStore::connect_with(&c.url("postgres"), 1, t))
        .await
        .expect("bounded by the store");
    assert!(is_unavailable(&r));

    // Back: the same store works again.
    c.signal("CONT").unwrap();
    let mut ok = false;
    for _ in 0..20 {
        if store.instances().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "the store recovers once the database answers");
}
