//! Logging a client can cause is bounded: lines are short whatever the client sends, and a
//! flood of refused connections is summarized, not logged one line each. This test binary
//! installs its own subscriber and reads what the server logged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::Client;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .try_init()
            .expect("this test binary's subscriber");
        log
    })
}

fn lines() -> Vec<String> {
    String::from_utf8_lossy(&captured().0.lock().unwrap()).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_logs_short_lines_and_a_refusal_flood_logs_one_line() {
    captured();
    let s = common::start("[tls]\nmax_connections = 1\n").await;
    let addr = s.https();
    // Hold the only connection slot, then knock 50 times.
    let held = Client::default().run(addr).await.unwrap();
    tokio::task::spawn_blocking(move || {
        for _ in 0..50 {
            let mut t = TcpStream::connect(addr).unwrap();
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = t.read(&mut [0u8; 1]);
        }
    })
    .await
    .unwrap();
    drop(held);
    let refusals = lines().iter().filter(|l| l.contains("connection limit reached")).count();
    assert_eq!(refusals, 1, "50 refusals, one line");

    // Long client-chosen text: a 60 KB path, a 30 KB registration id, a 30 KB MQTT client id.
    let ok = common::health_ok_soon(addr, 50).await;
    assert!(ok);
    let long = "a".repeat(60_000);
    common::http(&s, "GET", &format!("/{long}"), None, "").await;
    let id = "b".repeat(30_000);
    common::http(&s, "PUT", &format!("/0ne00000001/registrations/{id}/register?api-version=2021-06-01"), None, "{}")
        .await;
    let s2 = common::start("").await;
    let mut m = Client::default().run(s2.mqtt()).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let client_id = "c".repeat(30_000);
        let mut connect = mqttbytes::v4::Connect::new(client_id);
        connect.set_login(
            format!("0ne00000001/registrations/{}/api-version=2019-03-31", "d".repeat(20_000)),
            "x".to_owned(),
        );
        let mut buf = bytes::BytesMut::new();
        connect.write(&mut buf).unwrap();
        m.stream.write_all(&buf).unwrap();
        let _ = m.stream.read(&mut [0u8; 16]);
    })
    .await
    .unwrap();
    let longest = lines().iter().map(String::len).max().unwrap_or(0);
    let all = lines();
    let worst = all.iter().max_by_key(|l| l.len()).cloned().unwrap_or_default();
    assert!(longest < 8_000, "longest log line {longest} bytes: {}", dps_core::device::excerpt(&worst, 400));
}

/// Opens an MQTT connection for a device whose scope does not exist (CONNECT is accepted, its
/// requests are refused) and returns it with its local address.
async fn mqtt_device(s: &common::TestServer) -> (common::Done, std::net::SocketAddr) {
    let mut m = Client::default().run(s.mqtt()).await.unwrap();
    let local = m.stream.get_ref().local_addr().unwrap();
    let m = tokio::task::spawn_blocking(move || {
        let mut connect = mqttbytes::v4::Connect::new("log-dev");
        connect.set_login("0ne0000FFFF/registrations/log-dev/api-version=2019-03-31", "SharedAccessSignature sr=x");
        mqtt_send(&mut m, |b| connect.write(b));
        let mut ack = [0u8; 4];
        m.stream.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
        m
    })
    .await
    .unwrap();
    (m, local)
}

fn mqtt_send(m: &mut common::Done, write: impl FnOnce(&mut bytes::BytesMut) -> Result<usize, mqttbytes::Error>) {
    let mut buf = bytes::BytesMut::new();
    write(&mut buf).unwrap();
    m.stream.write_all(&buf).unwrap();
}

/// The MQTT driver opens its connection span only while there is work (docs/performance.md,
/// "Idle connections"), yet every line it logs still names the connection: inside a request,
/// while handling another packet, and while waiting for the next one.
#[tokio::test(flavor = "multi_thread")]
async fn mqtt_lines_name_their_connection_inside_and_between_requests() {
    captured();
    let s = common::start("").await;
    let (mut m, first) = mqtt_device(&s).await;
    let (mut bad, second) = mqtt_device(&s).await;
    tokio::task::spawn_blocking(move || {
        // Inside a request: one on an unknown topic, refused on its response topic.
        let p =
            mqttbytes::v4::Publish::new("$dps/registrations/DELETE/whatever/?$rid=1", mqttbytes::QoS::AtMostOnce, "");
        mqtt_send(&mut m, |b| p.write(b));
        let mut reply = [0u8; 64];
        assert!(m.stream.read(&mut reply).unwrap() > 0, "the refusal");
        // Handling another packet: a second CONNECT closes the connection.
        let mut connect = mqttbytes::v4::Connect::new("log-dev");
        connect.set_login("0ne0000FFFF/registrations/log-dev/api-version=2019-03-31", "x");
        mqtt_send(&mut m, |b| connect.write(b));
        let _ = m.stream.read(&mut reply);
        // Waiting for the next packet: bytes that are no MQTT packet (type 15 is reserved in 3.1.1).
        bad.stream.write_all(&[0xF0, 0x00]).unwrap();
        let _ = bad.stream.read(&mut reply);
    })
    .await
    .unwrap();
    let name = |peer: std::net::SocketAddr| format!("mqtt_connection{{transport=\"mqtt\" peer={peer}}}");
    let expected = [
        (name(first), "device request refused"),
        (name(first), "second CONNECT on one connection"),
        (name(second), "mqtt: closing connection"),
    ];
    let mut missing = Vec::new();
    for _ in 0..50 {
        let all = lines();
        missing = expected
            .iter()
            .filter(|(name, what)| !all.iter().any(|l| l.contains(name.as_str()) && l.contains(what)))
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "no line for {missing:?}; MQTT lines: {:?}",
        lines().iter().filter(|l| l.contains("mqtt")).collect::<Vec<_>>()
    );
}
