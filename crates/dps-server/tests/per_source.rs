//! Per-source limits at accept, before TLS, on every TLS listener together (docs/limits.md,
//! "Per source"): a source over its open connections or its rate of new connections has its new
//! connection closed at once, counted in /metrics, while other sources are served. Clients of
//! "other sources" bind their own loopback address (127.0.0.241-243).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use common::{health_ok_soon, scrape, start, value, Client};

fn from(ip: &str) -> Client {
    Client { source: Some(ip.parse::<IpAddr>().unwrap()), ..Client::default() }
}

/// Whether the server closes a fresh TCP connection from `ip` without a byte of TLS.
fn closed_before_tls(ip: &str, addr: std::net::SocketAddr) -> bool {
    let mut tcp = common::connect_from(ip.parse().unwrap(), addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    matches!(tcp.read(&mut [0u8; 1]), Ok(0))
        || matches!(tcp.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_over_its_open_connections_is_refused_on_every_listener_and_others_are_served() {
    let s = start("[limits]\nmax_connections_per_source = 2\nhandshakes_per_second_per_source = 0\n").await;
    let (https, mqtt) = (s.https(), s.mqtt());
    let a = from("127.0.0.241").run(https).await.expect("first");
    let b = from("127.0.0.241").run(mqtt).await.expect("second, on another listener");
    assert!(from("127.0.0.241").run(https).await.is_err(), "third from the source is refused");
    assert!(tokio::task::spawn_blocking(move || closed_before_tls("127.0.0.241", mqtt)).await.unwrap());
    from("127.0.0.242").run(https).await.expect("another source is served");
    let m = scrape(&s).await;
    assert_eq!(value(&m, "opendps_connections_refused_total", &[("reason", "max_connections_per_source")]), 2.0);
    drop((a, b));
    // The source's count falls when the server notices the closes; bounded retry.
    let mut ok = false;
    for _ in 0..50 {
        if from("127.0.0.241").run(https).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the source is served again once its connections closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_opening_connections_faster_than_its_rate_is_refused_beyond_its_burst() {
    let s = start(
        "[limits]\nmax_connections_per_source = 0\nhandshakes_per_second_per_source = 1\nhandshake_burst_per_source = 3\n",
    )
    .await;
    let addr = s.https();
    for n in 0..3 {
        from("127.0.0.243").run(addr).await.unwrap_or_else(|e| panic!("connection {n} of the burst: {e}"));
    }
    let refused =
        tokio::task::spawn_blocking(move || (0..5).filter(|_| closed_before_tls("127.0.0.243", addr)).count())
            .await
            .unwrap();
    assert!(refused >= 4, "beyond the burst, new connections are closed before TLS ({refused} of 5)");
    assert!(health_ok_soon(addr, 5).await, "127.0.0.1 has its own budget");
    let m = scrape(&s).await;
    assert!(value(&m, "opendps_connections_refused_total", &[("reason", "handshakes_per_second_per_source")]) >= 4.0);
}
