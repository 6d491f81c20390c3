//! A write acknowledged to a client survives `kill -9` of the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{opendps, serve, signal};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

fn connect(addr: SocketAddr) -> Option<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).ok()?;
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    b.build().connect("localhost", tcp).ok()
}

/// PUT one enrollment on a kept-alive connection; true when the server answered 200.
fn put(s: &mut SslStream<TcpStream>, token: &str, id: &str) -> bool {
    let body = format!(r#"{{"registrationId":"{id}","attestation":{{"type":"symmetricKey"}}}}"#);
    let req = format!(
        "PUT /enrollments/{id}?api-version=2021-10-01 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut rest = vec![0u8; len];
    if s.read_exact(&mut rest).is_err() {
        return false;
    }
    head.starts_with("http/1.1 200")
}

#[test]
fn acknowledged_enrollment_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let args = ["--data-dir", data.as_str(), "--listen-address", "127.0.0.1", "--https-port", "0", "--mqtt-port", "0"];
    let mut server = serve(&args);
    let cs = common::connection_string(&data);
    let key = cs.split("SharedAccessKey=").nth(1).unwrap().to_owned();
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let token = dps_attest::sas::make_token("127.0.0.1", &key, expiry, Some("provisioningserviceowner")).unwrap();
    let addr = server.https;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, token) = (acked.clone(), stop.clone(), token.clone());
            std::thread::spawn(move || {
                let Some(mut conn) = connect(addr) else { return };
                // Bounded: at most 2,000 writes per writer.
                for n in 0..2_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let id = format!("burst-{w}-{n:04}");
                    if !put(&mut conn, &token, &id) {
                        return;
                    }
                    acked.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    // Kill the server in the middle of the burst.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&server.child, "-KILL");
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "the burst was under way when the server was killed ({} acked)", acked.len());

    let _again = serve(&args);
    let (ok, out, err) = opendps(&["enrollment", "list", "--data-dir", &data]);
    assert!(ok, "{err}");
    let stored: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let stored: std::collections::HashSet<String> =
        stored.iter().map(|e| e["registrationId"].as_str().unwrap().to_owned()).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes were lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
}
