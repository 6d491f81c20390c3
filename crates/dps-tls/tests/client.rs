//! `dps_tls::client::Client` against a real listener of this crate: the server is verified,
//! sessions resume only when asked for and only on the client that made them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_tls::builtin_ca::{root_path, BuiltInCaSettings};
use dps_tls::client::{Client, ClientOptions, ClientStream, ConnectError};
use dps_tls::{CredentialSource, ListenerSpec, ServerTls, TicketKey, TicketKeyRing, TicketKeys, TlsPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener on 127.0.0.1 that answers every connection with "ok" and then waits for EOF.
async fn server(dir: &std::path::Path, tls13: bool) -> (SocketAddr, Vec<u8>) {
    server_with(dir, tls13, None).await
}

/// [`server`] with session-ticket keys from `tickets`.
async fn server_with(dir: &std::path::Path, tls13: bool, tickets: Option<Arc<TicketKeyRing>>) -> (SocketAddr, Vec<u8>) {
    let ca = BuiltInCaSettings {
        dir: dir.to_owned(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        leaf_lifetime: Duration::from_secs(30 * 86_400),
    };
    let spec = ListenerSpec {
        name: "test".into(),
        policy: TlsPolicy { tls13, ..TlsPolicy::default() },
        handshake_timeout: Duration::from_secs(10),
        max_handshakes: 8,
        failures_logged_per_second: 20,
    };
    let tls = ServerTls::start_with_ticket_keys(
        CredentialSource::BuiltIn(ca),
        &[spec],
        std::sync::Arc::new(dps_core::testing::ManualClock::new(std::time::SystemTime::now())),
        tickets,
    )
    .expect("server TLS");
    let acceptor: Arc<_> = tls.acceptor("test").expect("acceptor");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _keep = tls;
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut c) = acceptor.accept(tcp, peer, |_| {}).await {
                    let _ = c.stream.write_all(b"ok").await;
                    let mut rest = Vec::new();
                    let _ = c.stream.read_to_end(&mut rest).await;
                }
            });
        }
    });
    let root = std::fs::read(root_path(dir)).expect("root certificate");
    (addr, root)
}

async fn read_ok(s: &mut ClientStream) {
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ok");
}

fn options(tls13: bool, resumption: bool) -> ClientOptions {
    ClientOptions { tls13, resumption, ..ClientOptions::default() }
}

#[tokio::test]
async fn sessions_resume_when_kept_and_offered_again() {
    for tls13 in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (addr, root) = server(dir.path(), tls13).await;
        let client = Client::new(&root, &options(tls13, true)).expect("client");
        let mut first = client.connect(addr, "127.0.0.1", None, None).await.expect("first connection");
        read_ok(&mut first).await; // under TLS 1.3 the ticket comes after the handshake
        assert!(!first.resumed());
        assert_eq!(first.version(), if tls13 { "TLSv1.3" } else { "TLSv1.2" });
        let session = first.session().expect("a session to keep");
        let mut again = client.connect(addr, "127.0.0.1", None, Some(&session)).await.expect("second connection");
        read_ok(&mut again).await;
        assert!(again.resumed(), "the kept session was resumed (TLS 1.3: {tls13})");
        let mut fresh = client.connect(addr, "127.0.0.1", None, None).await.expect("third connection");
        read_ok(&mut fresh).await;
        assert!(!fresh.resumed(), "nothing offered, nothing resumed");

        // A session belongs to the client (the OpenSSL context) that made it.
        let other = Client::new(&root, &options(tls13, true)).expect("client");
        let e = other.connect(addr, "127.0.0.1", None, Some(&session)).await.expect_err("foreign session");
        assert!(matches!(e, ConnectError::ForeignSession), "{e}");
    }
}

#[tokio::test]
async fn without_resumption_every_connection_is_a_full_handshake() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, root) = server(dir.path(), false).await;
    let client = Client::new(&root, &options(false, false)).expect("client");
    let mut s = client.connect(addr, "127.0.0.1", None, None).await.expect("connection");
    read_ok(&mut s).await;
    assert!(s.session().is_none(), "nothing to keep");
    assert!(s.cipher().is_some_and(|c| c.starts_with("ECDHE-RSA-")), "{:?}", s.cipher());
    let mut again = client.connect(addr, "127.0.0.1", None, None).await.expect("connection");
    read_ok(&mut again).await;
    assert!(!again.resumed());
}

#[tokio::test]
async fn connections_come_from_the_source_asked_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, root) = server(dir.path(), false).await;
    let holding = ClientOptions { release_buffers: true, ..options(false, false) };
    let client = Client::new(&root, &holding).expect("client");
    for last in [1u8, 2] {
        let source = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 2, last));
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(std::net::SocketAddr::new(source, 0)).expect("bind the source");
        let tcp = socket.connect(addr).await.expect("tcp");
        let mut s = client.handshake(tcp, "127.0.0.1", None, None).await.expect("connection");
        read_ok(&mut s).await;
        assert_eq!(s.local_addr().expect("local address").ip(), source);
        // With the record buffers released between records, the connection still works.
        s.write_all(b"more").await.expect("write after a quiet spell");
    }
}

#[tokio::test]
async fn the_server_is_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, root) = server(dir.path(), false).await;
    let client = Client::new(&root, &options(false, false)).expect("client");
    // The certificate names localhost (DNS, sent as SNI) and 127.0.0.1, not 127.0.0.2.
    let mut s = client.connect(addr, "localhost", None, None).await.expect("by name");
    read_ok(&mut s).await;
    let e = client.connect(addr, "127.0.0.2", None, None).await.expect_err("wrong address");
    assert!(matches!(e, ConnectError::Handshake(_)), "{e}");
    // A root that did not issue the server's chain.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let (_, other_root) = server(other_dir.path(), false).await;
    let stranger = Client::new(&other_root, &options(false, false)).expect("client");
    let e = stranger.connect(addr, "127.0.0.1", None, None).await.expect_err("untrusted");
    assert!(e.to_string().starts_with("tls handshake: "), "{e}");
    assert!(Client::new(b"not a certificate", &options(false, false)).is_err());
}

/// Two servers given the same ticket keys (as the nodes of a shared store are) resume each
/// other's sessions; after one rotation a ticket under the previous key still resumes, after a
/// second it is a full handshake (never a failure); a server with its own keys resumes nothing.
#[tokio::test]
async fn shared_ticket_keys_resume_across_servers_and_survive_one_rotation() {
    for tls13 in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let k1 = TicketKey::generate().expect("key");
        let keys = TicketKeys { current: k1.clone(), previous: None };
        let ring_b = TicketKeyRing::new(keys.clone());
        let (a, root) = server_with(dir.path(), tls13, Some(TicketKeyRing::new(keys))).await;
        let (b, _) = server_with(dir.path(), tls13, Some(ring_b.clone())).await;
        let (own, _) = server(dir.path(), tls13).await;
        let client = Client::new(&root, &options(tls13, true)).expect("client");
        // Tickets from A under k1, one per check below. Every connection stays open to the end:
        // OpenSSL's client spends a session whose connection is freed without a shutdown.
        let mut open = Vec::new();
        let mut tickets = Vec::new();
        for _ in 0..4 {
            let mut s = client.connect(a, "127.0.0.1", None, None).await.expect("to A");
            read_ok(&mut s).await;
            assert!(!s.resumed());
            tickets.push(s.session().expect("a ticket from A"));
            open.push(s);
        }
        let resumes = |addr, session: dps_tls::client::ClientSession| {
            let client = client.clone();
            async move {
                let mut s = client.connect(addr, "127.0.0.1", None, Some(&session)).await.expect("connection");
                read_ok(&mut s).await;
                (s.resumed(), s)
            }
        };
        let (resumed, s) = resumes(b, tickets.remove(0)).await;
        open.push(s);
        assert!(resumed, "B resumes A's session (TLS 1.3: {tls13})");
        let (resumed, s) = resumes(own, tickets.remove(0)).await;
        open.push(s);
        assert!(!resumed, "a server with its own ticket key does not");

        let k2 = TicketKey::generate().expect("key");
        assert!(ring_b.set(TicketKeys { current: k2.clone(), previous: Some(k1) }));
        let (resumed, s) = resumes(b, tickets.remove(0)).await;
        open.push(s);
        assert!(resumed, "the previous key still decrypts (TLS 1.3: {tls13})");
        assert!(ring_b.set(TicketKeys { current: TicketKey::generate().expect("key"), previous: Some(k2) }));
        let (resumed, s) = resumes(b, tickets.remove(0)).await;
        open.push(s);
        assert!(!resumed, "two rotations later: a full handshake (TLS 1.3: {tls13})");
    }
}
