//! Test support: a real server per test on 127.0.0.1 with ephemeral ports, and blocking
//! OpenSSL clients (the real library, not a mock) run on blocking threads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use dps_config::raw::Raw;
use dps_config::Config;
use dps_server::{bind, Server};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509Builder, X509NameBuilder, X509};

pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

/// Starts a server from TOML `extra` (on top of: 127.0.0.1, ports 0, a temp data dir).
pub async fn start(extra: &str) -> TestServer {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), extra);
    let listeners = bind(&config).await.expect("bind");
    let server = Server::start(config, listeners).await.expect("server starts");
    TestServer { server, dir }
}

/// [`start`] with an injected clock.
pub async fn start_with_clock(extra: &str, clock: std::sync::Arc<dyn dps_core::ports::Clock>) -> TestServer {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), extra);
    let listeners = bind(&config).await.expect("bind");
    let server = Server::start_with_clock(config, listeners, clock).await.expect("server starts");
    TestServer { server, dir }
}

pub fn config(dir: &Path, extra: &str) -> Config {
    // Listener tables in `extra` get port 0 added; the others are added here (the admin
    // listener included, so parallel tests never share its port).
    let mut extra = extra.to_owned();
    let mut base = format!("data_dir = {:?}\n[listen]\naddress = \"127.0.0.1\"\n", dir.to_str().expect("utf-8 path"));
    for table in ["[https]", "[mqtt]", "[amqp]", "[admin]"] {
        if extra.contains(table) {
            extra = extra.replace(table, &format!("{table}\nport = 0"));
        } else {
            base += &format!("{table}\nport = 0\n");
        }
    }
    // The linked hubs of these tests are names only: devices are not written into them
    // (tests/devices/test_hub.py covers the hub registry client against embedded hubs).
    if !extra.contains("[hub_registry]") {
        base += "[hub_registry]\nregister_devices = false\n";
    }
    let text = format!("{base}{extra}");
    Config::from_raw(Raw::parse(&text).expect("toml")).expect("valid config")
}

impl TestServer {
    pub fn https(&self) -> SocketAddr {
        self.server.https_addr.expect("https on")
    }
    pub fn mqtt(&self) -> SocketAddr {
        self.server.mqtt_addr.expect("mqtt on")
    }
    pub fn root_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("pki/root.pem")).expect("root")
    }
}

/// What a client offers.
#[derive(Clone, Default)]
pub struct Client {
    pub ciphers: Option<String>,
    pub tls13_suites: Option<String>,
    pub min: Option<SslVersion>,
    pub max: Option<SslVersion>,
    pub cert: Option<(X509, Vec<X509>, PKey<Private>)>,
    pub groups: Option<String>,
    pub sni: Option<String>,
    pub trust_root_pem: Option<Vec<u8>>,
    /// The client's own address (another loopback source); default: the system's choice.
    pub source: Option<std::net::IpAddr>,
}

/// The outcome of a client handshake.
pub struct Done {
    pub stream: SslStream<TcpStream>,
    pub version: String,
    pub cipher: String,
    pub leaf_sha256: Vec<u8>,
    pub reused: bool,
}

impl Client {
    pub fn tls12(ciphers: &str) -> Client {
        Client { ciphers: Some(ciphers.into()), max: Some(SslVersion::TLS1_2), ..Client::default() }
    }

    pub fn connect(&self, addr: SocketAddr) -> Result<Done, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        // Old versions and legacy suites need security level 0 on the *client* under OpenSSL 3.
        b.set_security_level(0);
        b.set_min_proto_version(self.min.or(Some(SslVersion::TLS1))).map_err(|e| e.to_string())?;
        b.set_max_proto_version(self.max).map_err(|e| e.to_string())?;
        if let Some(c) = &self.ciphers {
            b.set_cipher_list(&format!("{c}:@SECLEVEL=0")).map_err(|e| format!("client cannot offer {c}: {e}"))?;
        }
        if let Some(s) = &self.tls13_suites {
            b.set_ciphersuites(s).map_err(|e| e.to_string())?;
        }
        if let Some(g) = &self.groups {
            b.set_groups_list(g).map_err(|e| e.to_string())?;
        }
        if let Some((leaf, chain, key)) = &self.cert {
            b.set_certificate(leaf).map_err(|e| e.to_string())?;
            for c in chain {
                b.add_extra_chain_cert(c.clone()).map_err(|e| e.to_string())?;
            }
            b.set_private_key(key).map_err(|e| e.to_string())?;
        }
        match &self.trust_root_pem {
            Some(pem) => {
                b.cert_store_mut().add_cert(X509::from_pem(pem).expect("root pem")).map_err(|e| e.to_string())?;
                b.set_verify(SslVerifyMode::PEER);
            }
            None => b.set_verify(SslVerifyMode::NONE),
        }
        let connector = b.build();
        let mut cfg = connector.configure().map_err(|e| e.to_string())?;
        cfg.set_verify_hostname(self.trust_root_pem.is_some());
        cfg.set_use_server_name_indication(self.sni.is_some());
        let mut ssl = cfg.into_ssl(self.sni.as_deref().unwrap_or("127.0.0.1")).map_err(|e| e.to_string())?;
        if self.trust_root_pem.is_some() && self.sni.is_none() {
            ssl.param_mut().set_ip(addr.ip()).map_err(|e| e.to_string())?;
        }
        let tcp = match self.source {
            None => TcpStream::connect(addr).map_err(|e| e.to_string())?,
            Some(ip) => connect_from(ip, addr).map_err(|e| e.to_string())?,
        };
        tcp.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let stream = ssl.connect(tcp).map_err(|e| format!("{e}"))?;
        let ssl = stream.ssl();
        Ok(Done {
            version: ssl.version_str().to_owned(),
            cipher: ssl.current_cipher().map(|c| c.name().to_owned()).unwrap_or_default(),
            leaf_sha256: ssl
                .peer_certificate()
                .map(|c| c.digest(MessageDigest::sha256()).unwrap().to_vec())
                .unwrap_or_default(),
            reused: ssl.session_reused(),
            stream,
        })
    }

    /// Handshake on a blocking thread.
    pub async fn run(&self, addr: SocketAddr) -> Result<Done, String> {
        let c = self.clone();
        tokio::task::spawn_blocking(move || c.connect(addr)).await.expect("client thread")
    }
}

/// A TCP connection to `addr` from the local address `ip` (port chosen by the system).
pub fn connect_from(ip: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

impl Done {
    /// One HTTP/1.1 request on this (kept-alive) connection; returns status and body.
    pub fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
        self.stream.write_all(req.as_bytes()).expect("write request");
        read_http_response(&mut self.stream)
    }
}

pub fn read_http_response<R: Read>(r: &mut R) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = r.read(&mut byte).expect("read head");
        assert_eq!(n, 1, "connection closed before the response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = head.split(' ').nth(1).expect("status").parse().expect("numeric status");
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("len")))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).expect("read body");
    (status, String::from_utf8_lossy(&body).to_string())
}

/// A CA (self-signed) or a certificate issued by `issuer`, RSA-2048.
pub fn make_cert(cn: &str, ca: bool, issuer: Option<(&X509, &PKey<Private>)>) -> (X509, PKey<Private>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name())).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    }
    b.sign(issuer.map_or(&key, |(_, k)| k), MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

/// Sends raw bytes, then reads what the server answers until it closes (bounded).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let _ = tcp.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.len() > 65_536 {
            break;
        }
    }
    out
}

/// A minimal TLS 1.2 ClientHello offering exactly `suites` (wire codes), with the groups and
/// signature algorithms a normal client sends. For suites this machine's OpenSSL cannot offer
/// (3DES is compiled out), so the refusal is still tested on the wire.
pub fn client_hello(suites: &[u16], version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x18]); // groups
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x01, 0x08, 0x04]); // sigalgs
    body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Whether `bytes` is a TLS alert record carrying `description`.
pub fn is_alert(bytes: &[u8], description: u8) -> bool {
    bytes.len() >= 7 && bytes[0] == 0x15 && bytes[5] == 2 && bytes[6] == description
}

pub async fn health_ok(addr: SocketAddr) -> bool {
    match Client::default().run(addr).await {
        Ok(mut d) => tokio::task::spawn_blocking(move || d.get("/health").0 == 200).await.unwrap_or(false),
        Err(_) => false,
    }
}

/// [`health_ok`], retried up to `tries` times 100 ms apart (for a server that frees a slot
/// once it notices a close or a timeout).
pub async fn health_ok_soon(addr: SocketAddr, tries: u32) -> bool {
    for _ in 0..tries {
        if health_ok(addr).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// One HTTP request on a fresh TLS connection; (status, headers, JSON body).
pub async fn http(
    s: &TestServer,
    method: &str,
    path: &str,
    auth: Option<String>,
    body: &str,
) -> (u16, String, serde_json::Value) {
    http_with(&Client::default(), s.https(), method, path, auth, body).await
}

/// [`http`] with a given client, to any address.
pub async fn http_with(
    client: &Client,
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<String>,
    body: &str,
) -> (u16, String, serde_json::Value) {
    let mut d = client.run(addr).await.unwrap();
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || {
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A server that refuses the body by its declared length answers and closes without
        // reading it: the rest of the write may fail, the answer is still there to read.
        let _ = d.stream.write_all(req.as_bytes());
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(d.stream.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut buf = vec![0u8; len];
        d.stream.read_exact(&mut buf).unwrap();
        (status, head, serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null))
    })
    .await
    .unwrap()
}

/// Links an IoT hub (host `name`, location `local`) to the default instance; returns the instance.
pub async fn link_hub(s: &TestServer, name: &str) -> dps_core::model::Instance {
    let hub = dps_core::model::LinkedHub {
        name: name.into(),
        connection_string: format!("HostName={name};SharedAccessKeyName=o;SharedAccessKey=aGVsbG8="),
        location: "local".into(),
        allocation_weight: None,
        apply_allocation_policy: None,
    };
    s.server
        .state
        .services
        .update_instance("opendps", move |i| {
            i.iot_hubs.push(hub);
            Ok(())
        })
        .await
        .expect("link hub")
}

/// A symmetric-key enrollment group with `key` as its primary key and nothing else set.
pub fn symmetric_group(id: &str, key: &str) -> dps_core::model::EnrollmentGroup {
    use dps_core::model::{AttestationMechanism, AttestationType, EnrollmentGroup, SymmetricKeyAttestation};
    EnrollmentGroup {
        enrollment_group_id: id.into(),
        attestation: AttestationMechanism {
            kind: AttestationType::SymmetricKey,
            tpm: None,
            x509: None,
            symmetric_key: Some(SymmetricKeyAttestation { primary_key: Some(key.into()), secondary_key: None }),
        },
        capabilities: None,
        iot_hub_host_name: None,
        initial_twin: None,
        etag: None,
        provisioning_status: None,
        reprovision_policy: None,
        created_date_time_utc: None,
        last_updated_date_time_utc: None,
        allocation_policy: None,
        iot_hubs: None,
        custom_allocation_definition: None,
        extra: serde_json::Map::new(),
    }
}

/// A plain-HTTP GET to the admin listener: (status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_owned())
}

/// Scrapes `/metrics` and parses it with a Prometheus text-format parser.
pub async fn scrape(s: &TestServer) -> prometheus_parse::Scrape {
    let addr = s.server.admin_addr.expect("admin listener on");
    let (status, body) = tokio::task::spawn_blocking(move || admin_get(addr, "/metrics")).await.unwrap();
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none).
pub fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
