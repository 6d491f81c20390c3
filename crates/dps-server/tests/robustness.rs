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
    let ok = common::health_ok_soon(addr, 50).await;
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

/// Whether the server closed `s` (end of stream or reset), reading and discarding what it sends
/// first; `false` if the client's own read timeout ran out while the server kept it open.
fn closed_by_server<S: Read>(s: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

/// A TLS connection whose reads give up after 15 s (the server's bounds in these tests are 1 s).
async fn tls(addr: std::net::SocketAddr) -> common::Done {
    let d = Client::default().run(addr).await.expect("handshake");
    d.stream.get_ref().set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    d
}

const SHORT: &str = "[limits]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn idle_slowloris_and_kept_alive_connections_are_closed_by_the_header_timeout() {
    let s = start(SHORT).await;
    let addr = s.https();
    let (mut idle, mut slow, mut kept) = (tls(addr).await, tls(addr).await, tls(addr).await);
    let closed = tokio::task::spawn_blocking(move || {
        // Idle after the handshake: never a byte.
        let idle = closed_by_server(&mut idle.stream);
        // Slowloris: half a request head, then silence.
        slow.stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        let slow = closed_by_server(&mut slow.stream);
        // Keep-alive: one request answered, then idle.
        assert_eq!(kept.get("/health").0, 200);
        let kept = closed_by_server(&mut kept.stream);
        (idle, slow, kept)
    })
    .await
    .unwrap();
    assert_eq!(closed, (true, true, true), "(idle, slowloris, kept-alive) closed by the server");
    assert!(health_ok(addr).await);
}

/// Sends `head` (and `body`) on a fresh TLS connection; returns the first response (status,
/// body) and whether the server then closed the connection.
async fn exchange(addr: std::net::SocketAddr, head: String, body: Vec<u8>) -> (u16, String, bool) {
    let mut d = tls(addr).await;
    tokio::task::spawn_blocking(move || {
        d.stream.write_all(head.as_bytes()).unwrap();
        let _ = d.stream.write_all(&body);
        let (status, text) = common::read_http_response(&mut d.stream);
        (status, text, closed_by_server(&mut d.stream))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_gets_408_within_the_body_timeout() {
    let s = start(SHORT).await;
    let head = "PUT /0ne00000001/registrations/dev/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        .to_owned();
    let (status, body, closed) = exchange(s.https(), head, b"{\"regist".to_vec()).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("not received within"), "{body}");
    assert!(closed, "the connection is closed after a 408");
    assert!(health_ok(s.https()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_bodies_over_96_kb_are_refused_by_their_declared_length_before_reading() {
    let s = start("").await;
    // Nothing of the body is sent: the answer comes from the declared length alone.
    let head = "PUT /0ne00000001/registrations/dev/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 98305\r\n\r\n"
        .to_owned();
    let (status, body, closed) = exchange(s.https(), head, Vec::new()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("98304"), "{body}");
    assert!(closed);
    // The same body sent chunked (no declared length) is cut at the limit.
    let head = "PUT /0ne00000001/registrations/dev/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_owned();
    let mut chunked = Vec::new();
    for _ in 0..7 {
        chunked.extend_from_slice(b"4000\r\n");
        chunked.extend(std::iter::repeat_n(b' ', 0x4000));
        chunked.extend_from_slice(b"\r\n");
    }
    let (status, body, _) = exchange(s.https(), head, chunked).await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_with_an_oversized_length_gets_413_and_no_100() {
    let s = start("").await;
    let head = "PUT /enrollments/dev?api-version=2021-10-01 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
                Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
        .to_owned();
    let (status, body, _) = exchange(s.https(), head, Vec::new()).await;
    assert_eq!(status, 413, "the first answer is the refusal, not 100 Continue: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_caller_cannot_send_more_than_96_kb_to_the_service_or_management_api() {
    let s = start("").await;
    for path in ["/enrollments/dev?api-version=2021-10-01", "/subscriptions/x/resourceGroups/y"] {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n"
        );
        let (status, body, _) = exchange(s.https(), head, Vec::new()).await;
        assert_eq!(status, 413, "{path}: {body}");
    }
    // The admin may (bulk operations and deployments are larger): the body is read and judged.
    let token = s.server.admin_token.clone();
    let big = format!("{{\"location\":\"local\",\"tags\":{{\"pad\":\"{}\"}}}}", "x".repeat(200_000));
    let head = format!(
        "PUT /subscriptions/x/resourceGroups/big?api-version=2021-04-01 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let (status, body, _) = exchange(s.https(), head, big.into_bytes()).await;
    assert_ne!(status, 413, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_over_16_kib_gets_431_before_it_is_read_to_the_end() {
    let s = start("").await;
    let addr = s.https();
    // 58 KB of head (as the hostile benchmark sends): the answer comes once 16 KiB has arrived.
    let head = format!(
        "PUT /{}/registrations/{}/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(30_000),
        "b".repeat(20_000),
        "c".repeat(8_000)
    );
    let mut d = tls(addr).await;
    let (status, closed) = tokio::task::spawn_blocking(move || {
        // The server may close before the whole head is written: a failed write is expected.
        let _ = d.stream.write_all(&head.as_bytes()[..17 * 1024]);
        let (status, _) = common::read_http_response(&mut d.stream);
        (status, closed_by_server(&mut d.stream))
    })
    .await
    .unwrap();
    assert_eq!(status, 431);
    assert!(closed, "the connection is closed after a 431");
    // A head just under the bound is read and judged as usual.
    let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(15 * 1024));
    let (status, body, _) = exchange(addr, head, Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    assert!(health_ok(addr).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunked_body_is_a_400() {
    let s = start("").await;
    let head = "PUT /0ne00000001/registrations/dev/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_owned();
    let (status, body, _) = exchange(s.https(), head, b"zz\r\nnot hex\r\n0\r\n\r\n".to_vec()).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_stalled_connections_at_the_cap_do_not_lock_out_good_clients() {
    let s = start(&format!("{SHORT}[tls]\nmax_connections = 10\n")).await;
    let addr = s.https();
    let mut hostile = Vec::new();
    for i in 0..10 {
        let mut d = tls(addr).await;
        if i % 2 == 0 {
            // A stalled upload.
            d.stream
                .write_all(
                    b"PUT /enrollments/x?api-version=2021-10-01 HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n{",
                )
                .unwrap();
        }
        hostile.push(d);
    }
    // Bounded: the hostile connections hold the cap for about a second.
    let ok = common::health_ok_soon(addr, 200).await;
    assert!(ok, "a good client gets in once the idle and stalled connections timed out");
    drop(hostile);
}

/// MQTT over WebSockets: a CONNECT without DPS credentials, sent by a raw WebSocket client;
/// returns the bytes of every binary message the server sent before it closed.
fn mqtt_ws_refused_connect(done: common::Done) -> Vec<u8> {
    use tungstenite::client::IntoClientRequest;
    done.stream.get_ref().set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = "wss://127.0.0.1/$iothub/websocket".into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tungstenite::client(req, done.stream).expect("websocket upgrade");
    let connect =
        [0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'd', b'e', b'v'];
    ws.send(tungstenite::Message::binary(connect.to_vec())).unwrap();
    // A PINGREQ right behind it, as a pipelining client would: still unread when the server
    // refuses the CONNECT.
    let _ = ws.send(tungstenite::Message::binary(vec![0xC0, 0x00]));
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => got.extend_from_slice(&b),
            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_over_websockets_delivers_the_connack_of_a_refused_connect_before_closing() {
    let s = start("").await;
    for i in 0..10 {
        let done = Client::default().run(s.https()).await.unwrap();
        let got = tokio::task::spawn_blocking(move || mqtt_ws_refused_connect(done)).await.unwrap();
        assert_eq!(got, [0x20, 0x02, 0x00, 0x04], "attempt {i}: CONNACK 4 (bad user name or password) arrives");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_open_connections_hold_no_handshake_slot_and_are_closed_by_the_hello_timeout() {
    // One handshake slot, a long handshake timeout: if silent connections took the slot, the
    // good client would wait for them far beyond its own 20 s read timeout.
    let s = start("[tls]\nmax_handshakes = 1\nhandshake_timeout = \"60s\"\n[limits]\nhello_timeout = \"1s\"\n").await;
    let addr = s.https();
    let silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let good = Client::default().run(addr).await;
    assert!(good.is_ok(), "a good client completes its handshake beside 5 silent connections: {:?}", good.err());
    let closed = tokio::task::spawn_blocking(move || {
        silent
            .into_iter()
            .map(|mut t| {
                t.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                closed_by_server(&mut t)
            })
            .collect::<Vec<bool>>()
    })
    .await
    .unwrap();
    assert_eq!(closed, [true; 5], "silent connections are closed by the hello timeout");
    assert!(health_ok(addr).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_is_0700_and_the_store_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    common::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = common::config(&data, "");
    let server = dps_server::Server::start(config.clone(), dps_server::bind(&config).await.unwrap()).await.unwrap();
    // A write, so the WAL and its index exist.
    common::link_hub(&common::TestServer { server, dir: tempfile::tempdir().unwrap() }, "hub.example").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    for f in ["opendps.db", "opendps.db-wal", "opendps.db-shm", "admin.token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_without_connect_and_a_refused_device_with_keep_alive_0_are_closed_by_the_limits() {
    let s = start("[limits]\nmqtt_connect_timeout = \"1s\"\nmqtt_refused_lifetime = \"1s\"\n").await;
    let scope = s.server.state.services.instance("opendps").await.unwrap().id_scope.to_string();
    let (mut silent, mut refused) = (tls(s.mqtt()).await, tls(s.mqtt()).await);
    let (silent_closed, connack, refused_closed) = tokio::task::spawn_blocking(move || {
        let silent_closed = closed_by_server(&mut silent.stream);
        // A wrong password and keep-alive 0 ("never time me out").
        let mut connect = mqttbytes::v4::Connect::new("dev-1");
        connect.keep_alive = 0;
        connect.set_login(format!("{scope}/registrations/dev-1/api-version=2019-03-31"), "wrong".to_owned());
        let mut buf = bytes::BytesMut::new();
        connect.write(&mut buf).unwrap();
        refused.stream.write_all(&buf).unwrap();
        let mut connack = [0u8; 4];
        refused.stream.read_exact(&mut connack).unwrap();
        (silent_closed, connack, closed_by_server(&mut refused.stream))
    })
    .await
    .unwrap();
    assert!(silent_closed, "no CONNECT: closed by mqtt_connect_timeout");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "a refused device gets CONNACK 0, as DPS does");
    assert!(refused_closed, "the refused device is closed by mqtt_refused_lifetime despite keep-alive 0");
    assert!(health_ok(s.https()).await);
}
