//! Memory under hostile load (docs/limits.md, "Memory under hostile load"): for each load of the
//! hostile-client suite (slowloris, idle TLS, stalled uploads, half-open TCP, MQTT without
//! CONNECT, MQTT with a wrong password, oversized fields), `LOAD` connections are held open
//! while a good device registers over HTTPS, and the resident memory of this process (the
//! server runs in it, so the figure also includes the test's own clients) must stay under
//! `BASE_SLACK + LOAD × PER_CONNECTION` above what it was before the load. Loads run one after
//! another against one server, bounded in count and time, on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{http, start, TestServer};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

/// Connections held by each load.
const LOAD: usize = 100;
/// What one hostile connection may cost, server and test client together: a TLS connection
/// (about 50 KB on the server), plus at most one 96 KB device body, with room to spare.
const PER_CONNECTION_KB: u64 = 256;
/// Allocator and runtime noise (thread stacks, arenas, caches warmed by the first load).
const BASE_SLACK_KB: u64 = 32 * 1024;

const GROUP_KEY: &str = "c2VjcmV0LWdyb3VwLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OWFiY2RlZg==";

/// This process's resident memory (VmRSS), in KB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A good device registers over HTTPS meanwhile (a new id each time).
async fn good_device_registers(s: &TestServer, scope: &str, n: usize) {
    let id = format!("good-{n}");
    let key = dps_attest::derive_device_key(GROUP_KEY, &id).unwrap();
    let later = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let token =
        dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), &key, later, Some("registration")).unwrap();
    let path = format!("/{scope}/registrations/{id}/register?api-version=2021-06-01");
    let body = serde_json::json!({ "registrationId": id }).to_string();
    let (status, _, v) = http(s, "PUT", &path, Some(token), &body).await;
    assert!(status == 200 || status == 202, "good device {id}: {status} {v}");
    assert!(v.get("operationId").is_some() || v.get("status").is_some(), "{v}");
}

/// One client context for every hostile connection, so the test's own memory per connection
/// stays small beside the server's.
fn connector() -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.build()
}

/// `LOAD` TLS connections to `addr`, the `i`th sent `first(i)` after its handshake.
async fn tls_load(addr: SocketAddr, first: impl Fn(usize) -> Vec<u8> + Send + 'static) -> Vec<SslStream<TcpStream>> {
    tokio::task::spawn_blocking(move || {
        let c = connector();
        (0..LOAD)
            .map(|i| {
                let ssl = c.configure().unwrap().verify_hostname(false).use_server_name_indication(false);
                let mut stream = ssl.connect("x", TcpStream::connect(addr).unwrap()).unwrap();
                // The server may refuse before it has read everything (an oversized head gets
                // 431 at 16 KiB, then the connection is closed): the write then fails.
                if let Err(e) = stream.write_all(&first(i)) {
                    assert!(
                        matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
                        "write: {e}"
                    );
                }
                stream
            })
            .collect()
    })
    .await
    .unwrap()
}

fn mqtt_wrong_password(scope: &str, n: usize) -> Vec<u8> {
    let mut connect = mqttbytes::v4::Connect::new(format!("dev-{n}"));
    connect.keep_alive = 0;
    connect.set_login(format!("{scope}/registrations/dev-{n}/api-version=2019-03-31"), "wrong".to_owned());
    let mut buf = bytes::BytesMut::new();
    connect.write(&mut buf).unwrap();
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_and_good_devices_register_under_each_hostile_load() {
    let s = start(
        "[limits]\nhello_timeout = \"30s\"\nheader_timeout = \"30s\"\nbody_timeout = \"30s\"\n\
         mqtt_connect_timeout = \"30s\"\nmqtt_refused_lifetime = \"30s\"\n\
         max_connections_per_source = 0\nhandshakes_per_second_per_source = 0\n",
    )
    .await;
    let inst = common::link_hub(&s, "hub-mem.azure-devices.net").await;
    s.server
        .state
        .services
        .put_group(&inst, "mem-group", common::symmetric_group("mem-group", GROUP_KEY), None)
        .await
        .unwrap();
    let scope = inst.id_scope.to_string();
    let (https, mqtt) = (s.https(), s.mqtt());
    // Warm up: the first registration and handshakes size the allocator's arenas.
    good_device_registers(&s, &scope, 0).await;
    drop(tls_load(https, |_| Vec::new()).await);

    let device_head = |len: usize| {
        format!(
            "PUT /{scope}/registrations/dev/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
        .into_bytes()
    };
    let mut stalled = device_head(98_000);
    stalled.extend(std::iter::repeat_n(b' ', 90_000));
    let oversized = format!(
        "GET /{}/registrations/{}/register HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
        "a".repeat(30_000),
        "b".repeat(20_000),
        "c".repeat(8_000)
    )
    .into_bytes();
    let mut report = Vec::new();
    for (n, load) in [
        "slowloris",
        "idle TLS",
        "stalled uploads",
        "half-open TCP",
        "MQTT without CONNECT",
        "MQTT wrong password",
        "oversized fields",
    ]
    .into_iter()
    .enumerate()
    {
        let before = rss_kb();
        let mut tls_held = Vec::new();
        let mut tcp_held: Vec<TcpStream> = Vec::new();
        match load {
            "slowloris" => {
                tls_held = tls_load(https, |_| b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec()).await
            }
            "idle TLS" => tls_held = tls_load(https, |_| Vec::new()).await,
            "stalled uploads" => {
                let stalled = stalled.clone();
                tls_held = tls_load(https, move |_| stalled.clone()).await;
            }
            "half-open TCP" => tcp_held = (0..LOAD).map(|_| TcpStream::connect(https).unwrap()).collect(),
            "MQTT without CONNECT" => tls_held = tls_load(mqtt, |_| Vec::new()).await,
            "MQTT wrong password" => {
                let sc = scope.clone();
                tls_held = tls_load(mqtt, move |i| mqtt_wrong_password(&sc, i)).await;
            }
            "oversized fields" => {
                let oversized = oversized.clone();
                tls_held = tls_load(https, move |_| oversized.clone()).await;
            }
            _ => unreachable!(),
        }
        good_device_registers(&s, &scope, n + 1).await;
        // Let the server read what the load sent before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = rss_kb();
        let bound = BASE_SLACK_KB + LOAD as u64 * PER_CONNECTION_KB;
        let grew = during.saturating_sub(before);
        report.push(format!("{load}: +{grew} KB for {LOAD} connections (bound {bound} KB)"));
        assert!(grew <= bound, "{load}: resident memory grew {grew} KB under {LOAD} connections, over {bound} KB");
        drop(tls_held);
        drop(tcp_held);
    }
    eprintln!("memory under hostile load:\n  {}", report.join("\n  "));
}
