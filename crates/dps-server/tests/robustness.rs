//! Bad input costs one connection; limits hold; shutdown drains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{client_hello, health_ok, raw_exchange, start, Client};

#[tokio::test(flavor = "multi_thread")]
async fn garbage_truncated_and_oversized_hellos_cost_one_connection() {
    let s = start("").await;
    let addr = s.https();
    let hello = client_hello(&[0xC02F], 0x0303);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain HTTP", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("random bytes", (0..2048u32).map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap()).collect()),
        ("truncated ClientHello", hello[..hello.len() / 2].to_vec()),
        ("record header claiming 64 KiB", {
            let mut v = vec![0x16, 0x03, 0x01, 0xFF, 0xFF];
            v.extend(std::iter::repeat_n(0u8, 20_000));
            v
        }),
        ("handshake message claiming 16 MiB", {
            let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xFF, 0xFF, 0xFF];
            v.extend(std::iter::repeat_n(0u8, 100));
            v
        }),
    ];
    for (name, bytes) in cases {
        let reply = tokio::task::spawn_blocking(move || raw_exchange(addr, &bytes)).await.unwrap();
        assert!(
            reply.is_empty() || reply[0] == 0x15,
            "{name}: expected an alert or a close, got {:02x?}",
            &reply[..reply.len().min(16)]
        );
        assert!(health_ok(addr).await, "server keeps serving after {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_handshake_is_dropped_after_the_timeout() {
    let s = start("[tls]\nhandshake_timeout = \"500ms\"\n").await;
    let addr = s.https();
    let hello = client_hello(&[0xC02F], 0x0303);
    let (closed, elapsed) = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Half a ClientHello, then silence.
        tcp.write_all(&hello[..10]).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let closed = matches!(tcp.read(&mut buf), Ok(0) | Err(_));
        (closed, t.elapsed())
    })
    .await
    .unwrap();
    assert!(closed, "the server closes a stalled handshake");
    assert!(elapsed < Duration::from_secs(25), "closed by the handshake timeout, not the client's read timeout");
    assert!(health_ok(addr).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_closed_and_the_cap_frees_up() {
    let s = start("[tls]\nmax_connections = 2\n").await;
    let addr = s.https();
    let a = Client::default().run(addr).await.expect("first");
    let b = Client::default().run(addr).await.expect("second");
    assert!(Client::default().run(addr).await.is_err(), "third is over the cap");
    drop(a);
    drop(b);
    // The permits return when the server notices the closes; bounded retry.
    let mut ok = false;
    for _ in 0..50 {
        if health_ok(addr).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a new connection is accepted once others closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_connect_without_dps_credentials_is_refused_and_the_server_keeps_serving() {
    let s = start("").await;
    let mut done = Client::default().run(s.mqtt()).await.unwrap();
    let reply = tokio::task::spawn_blocking(move || {
        // CONNECT, protocol MQTT 3.1.1, clean session, keep-alive 60, client id "dev".
        let connect =
            [0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'd', b'e', b'v'];
        done.stream.write_all(&connect).unwrap();
        let mut buf = [0u8; 4];
        done.stream.read_exact(&mut buf).unwrap();
        buf
    })
    .await
    .unwrap();
    assert_eq!(reply, [0x20, 0x02, 0x00, 0x04], "CONNACK: bad user name or password (no DPS username)");
    // Garbage instead of CONNECT costs only that connection.
    let mut junk = Client::default().run(s.mqtt()).await.unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        junk.stream.write_all(&[0xF0, 0x00, 0x00]).unwrap();
        let mut b = [0u8; 1];
        matches!(junk.stream.read(&mut b), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(closed);
    assert!(health_ok(s.https()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_get_a_dps_error_body() {
    let s = start("").await;
    let mut done = Client::default().run(s.https()).await.unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || done.get("/nope")).await.unwrap();
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errorCode"], 404_000);
    assert!(v["trackingId"].is_string() && v["timestampUtc"].is_string() && v["message"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let s = start("[shutdown]\ngrace = \"5s\"\n").await;
    let addr = s.https();
    let idle = Client::default().run(addr).await.unwrap();
    let (status, mut idle) = tokio::task::spawn_blocking(move || {
        let mut idle = idle;
        let r = idle.get("/health");
        (r.0, idle)
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let common::TestServer { server, dir: _dir } = s;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await.expect("drains within the grace period");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
    let closed = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1];
        matches!(idle.stream.read(&mut buf), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(closed, "idle keep-alive connection closed by the drain");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_corrupt_certificate_files_fail_start_naming_the_file() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("chain.pem");
    let key = dir.path().join("key.pem");
    let extra = format!("[tls.files]\nchain = {:?}\nkey = {:?}\n", chain.to_str().unwrap(), key.to_str().unwrap());
    let config = common::config(dir.path(), &extra);
    let err = dps_server::Server::start(config.clone(), dps_server::bind(&config).await.unwrap())
        .await
        .expect_err("fails closed");
    assert!(format!("{:#}", ChainDisplay(&err)).contains("chain.pem"), "{}", ChainDisplay(&err));

    std::fs::write(&chain, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "").unwrap();
    let err = dps_server::Server::start(config.clone(), dps_server::bind(&config).await.unwrap())
        .await
        .expect_err("fails closed");
    assert!(ChainDisplay(&err).to_string().contains("chain.pem"), "{}", ChainDisplay(&err));
}

struct ChainDisplay<'a>(&'a dyn std::error::Error);
impl std::fmt::Display for ChainDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut s = self.0.source();
        while let Some(e) = s {
            write!(f, ": {e}")?;
            s = e.source();
        }
        Ok(())
    }
}
