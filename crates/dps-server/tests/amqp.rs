//! The AMQP device API of a real server (TLS on the AMQP port), from raw clients: the header
//! sniff, the SASL layer and the AMQP layer each get hostile input and answer it in AMQP's own
//! terms (our protocol header, a sasl-outcome, a detach or rejected disposition carrying the DPS
//! error, a close); every test ends by provisioning a good device on the same server, so a bad
//! connection costs only itself. Raw bytes for the header and SASL; fe2o3-amqp's client for the
//! AMQP layer. (The official Node SDK runs in tests/devices.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{start, TestServer};
use dps_amqp::sasl::frame;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::frames::sasl::Frame as SaslFrame;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslResponse};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

const GROUP_KEY: &str = "c2VjcmV0LWdyb3VwLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OWFiY2RlZg==";
const WAIT: Duration = Duration::from_secs(20);

type Tls = SslStream<TcpStream>;

struct Fixture {
    s: TestServer,
    instance: dps_core::model::Instance,
    scope: String,
}

async fn setup(extra: &str) -> Fixture {
    let s = start(extra).await;
    let inst = common::link_hub(&s, "hub-a.azure-devices.net").await;
    let group = common::symmetric_group("group-1", GROUP_KEY);
    s.server.state.services.put_group(&inst, "group-1", group, None).await.unwrap();
    Fixture { s, scope: inst.id_scope.to_string(), instance: inst }
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.s.server.amqp_addr.expect("amqp on")
    }

    fn address(&self, id: &str) -> String {
        format!("{}/registrations/{id}", self.scope)
    }

    fn token(&self, id: &str, key: &str) -> String {
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        dps_attest::sas::make_token(&self.address(id), key, expiry, Some("registration")).unwrap()
    }

    fn plain(&self, id: &str, key: &str) -> Vec<u8> {
        let mut b = format!("\x00{}\x00", self.address(id)).into_bytes();
        b.extend_from_slice(self.token(id, key).as_bytes());
        b
    }

    async fn connect(&self, id: &str, key: &str) -> Result<ConnectionHandle<()>, String> {
        let tls = tls(self.addr()).await;
        Connection::builder()
            .container_id("raw-client")
            .hostname("localhost")
            .sasl_profile(SaslProfile::Plain { username: self.address(id), password: self.token(id, key) })
            .open_with_stream(tls)
            .await
            .map_err(|e| e.to_string())
    }

    /// A device with both links attached, as the Node SDK attaches them (receiver first).
    async fn device(&self, id: &str) -> Device {
        let mut connection = self.connect(id, &device_key(id)).await.expect("connection");
        let mut session = Session::begin(&mut connection).await.expect("session");
        let receiver = Receiver::attach(&mut session, "rheaReceiver_1", self.address(id)).await.expect("receiver");
        let sender = Sender::attach(&mut session, "rheaSender_1", self.address(id)).await.expect("sender");
        Device { connection, session, sender, receiver }
    }

    /// Register and poll one good device to the end, and find its record.
    async fn provisions(&self, id: &str) {
        let mut d = self.device(id).await;
        let op = d.register(&format!(r#"{{"registrationId":"{id}"}}"#)).await.expect("register");
        assert_eq!(op["status"], "assigning");
        let done = d.poll(op["operationId"].as_str().expect("operationId")).await.expect("poll");
        assert_eq!(done["status"], "assigned", "{done}");
        assert_eq!(done["registrationState"]["deviceId"], id);
        assert_eq!(done["registrationState"]["assignedHub"], "hub-a.azure-devices.net");
        d.close().await;
        let svc = &self.s.server.state.services;
        let record = svc.registration(&self.instance, id).await.expect("record");
        assert_eq!(record.enrollment_group_id.as_deref(), Some("group-1"));
        assert!(record.tls.is_some(), "the TLS facts of the AMQP connection are recorded");
    }
}

fn device_key(id: &str) -> String {
    dps_attest::derive_device_key(GROUP_KEY, id).unwrap()
}

async fn tls(addr: SocketAddr) -> Tls {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let ssl = b.build().configure().unwrap().into_ssl("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut s = SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut s).connect().await.expect("TLS handshake");
    s
}

/// Reads until the server closes; fails the test if it does not within WAIT.
async fn read_until_closed(io: &mut Tls) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 4096];
        loop {
            match io.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    all
}

/// The sasl-outcome code among what the server sent after its SASL header.
fn outcome_code(bytes: &[u8]) -> Option<SaslCode> {
    let mut rest = bytes.get(8..)?;
    while let Ok(Some((f, n))) = frame::decode(rest, 1 << 16) {
        if let SaslFrame::Outcome(o) = f {
            return Some(o.code);
        }
        rest = &rest[n..];
    }
    None
}

async fn sasl_client(addr: SocketAddr) -> Tls {
    let mut io = tls(addr).await;
    io.write_all(b"AMQP\x03\x01\x00\x00").await.expect("header");
    io
}

async fn read_sasl_frame(io: &mut Tls, buf: &mut Vec<u8>) -> SaslFrame {
    read_next(io, buf, |buf| {
        let (f, n) = frame::decode(buf, 1 << 16).ok().flatten()?;
        buf.drain(..n);
        Some(f)
    })
    .await
}

/// Reads until `take` finds what it wants at the front of `buf` (within WAIT).
async fn read_next<T>(io: &mut Tls, buf: &mut Vec<u8>, mut take: impl FnMut(&mut Vec<u8>) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = take(buf) {
                return t;
            }
            let mut b = [0u8; 4096];
            let n = io.read(&mut b).await.expect("read");
            assert!(n > 0, "closed while a frame was expected");
            buf.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("no frame")
}

fn init(mechanism: &str, response: &[u8]) -> Vec<u8> {
    frame::encode(&SaslFrame::Init(SaslInit {
        mechanism: Symbol::from(mechanism),
        initial_response: Some(Binary::from(response.to_vec())),
        hostname: Some("localhost".into()),
    }))
    .expect("encode")
}

fn response(bytes: &[u8]) -> Vec<u8> {
    frame::encode(&SaslFrame::Response(SaslResponse { response: Binary::from(bytes.to_vec()) })).expect("encode")
}

fn request(
    operation: &str,
    operation_id: Option<&str>,
    body: Body<Value>,
    correlation: MessageId,
) -> Message<Body<Value>> {
    let mut app = ApplicationProperties::builder().insert("iotdps-operation-type", operation);
    if let Some(id) = operation_id {
        app = app.insert("iotdps-operation-id", id);
    }
    let p = Properties { correlation_id: Some(correlation), ..Properties::default() };
    Message::builder().properties(p).application_properties(app.build()).body(body).build()
}

fn data(bytes: Vec<u8>) -> Body<Value> {
    Body::Data(vec![Data(Binary::from(bytes))].into())
}

fn correlation() -> MessageId {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    MessageId::String(format!("corr-{n}"))
}

struct Device {
    connection: ConnectionHandle<()>,
    session: fe2o3_amqp::session::SessionHandle<()>,
    sender: Sender,
    receiver: Receiver,
}

impl Device {
    /// Sends a request; an accepted one is answered on the response link (one data section of
    /// JSON, the correlation id echoed with its type, retry-after under both spellings).
    async fn ask(
        &mut self,
        msg: Message<Body<Value>>,
    ) -> Result<serde_json::Value, fe2o3_amqp::types::definitions::Error> {
        let correlation = msg.properties.as_ref().and_then(|p| p.correlation_id.clone());
        let outcome = tokio::time::timeout(WAIT, self.sender.send(msg)).await.expect("no disposition").expect("send");
        match outcome {
            Outcome::Accepted(_) => {}
            Outcome::Rejected(r) => return Err(r.error.expect("a rejection carries an error")),
            other => panic!("request settled as {other:?}; only accepted or rejected are allowed"),
        }
        let delivery =
            tokio::time::timeout(WAIT, self.receiver.recv::<Body<Value>>()).await.expect("no response").expect("recv");
        self.receiver.accept(&delivery).await.expect("accept");
        let msg = delivery.into_message();
        assert_eq!(msg.properties.as_ref().and_then(|p| p.correlation_id.clone()), correlation, "echoed as is");
        let Body::Data(sections) = msg.body else { panic!("response body is not a data section") };
        assert_eq!(sections.len(), 1, "exactly one data section");
        if let Some(app) = msg.application_properties.as_ref() {
            assert_eq!(app.0.get("retry-after"), app.0.get("Retry-After"));
        }
        Ok(serde_json::from_slice(&sections[0].0).expect("response JSON"))
    }

    async fn register(&mut self, body: &str) -> Result<serde_json::Value, fe2o3_amqp::types::definitions::Error> {
        self.ask(request("iotdps-register", None, data(body.as_bytes().to_vec()), correlation())).await
    }

    async fn poll(&mut self, operation_id: &str) -> Result<serde_json::Value, fe2o3_amqp::types::definitions::Error> {
        let body = Body::Value(AmqpValue(Value::String(String::new())));
        self.ask(request("iotdps-get-operationstatus", Some(operation_id), body, correlation())).await
    }

    async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.receiver.close().await;
        let _ = self.session.end().await;
        tokio::time::timeout(WAIT, self.connection.close()).await.expect("close answered").expect("close");
    }
}

fn assert_condition(e: &fe2o3_amqp::types::definitions::Error, condition: ErrorCondition, error_code: u64) {
    assert_eq!(e.condition, condition, "{e:?}");
    let body: serde_json::Value =
        serde_json::from_str(e.description.as_deref().unwrap_or("")).expect("JSON description");
    assert_eq!(body["errorCode"], error_code, "{body}");
    assert!(body["trackingId"].is_string() && body["timestampUtc"].is_string() && body["message"].is_string());
}

fn argument_error() -> ErrorCondition {
    ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error"))
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_polls_and_answers_bad_requests_as_rejections() {
    let f = setup("").await;
    f.provisions("dev-1").await;

    let mut d = f.device("dev-2").await;
    // Correlation ids of every type come back with their type.
    for id in
        [MessageId::Uuid(uuid::Uuid::new_v4().into_bytes().into()), MessageId::Ulong(42), MessageId::String("x".into())]
    {
        let op = d.ask(request("iotdps-register", None, data(b"{}".to_vec()), id)).await.expect("register");
        assert_eq!(op["status"], "assigning");
    }
    let e = d.poll("4.no-such-operation").await.expect_err("unknown id");
    assert_condition(&e, ErrorCondition::AmqpError(AmqpError::NotFound), 404_202);
    let e = d
        .ask(request("iotdps-get-registration", None, data(b"{}".to_vec()), correlation()))
        .await
        .expect_err("unknown type");
    assert_condition(&e, argument_error(), 400_000);
    let e =
        d.ask(request("iotdps-get-operationstatus", None, data(Vec::new()), correlation())).await.expect_err("no id");
    assert_condition(&e, argument_error(), 400_000);
    let e = d.register("{not json").await.expect_err("bad JSON");
    assert_condition(&e, argument_error(), 400_000);
    let e = d.register(r#"{"registrationId":"dev-1"}"#).await.expect_err("another device in the body");
    assert_condition(&e, argument_error(), 400_000);
    // Over DPS's 96 KB, within the link's limit: the DPS 413.
    let mut big = br#"{"registrationId":"dev-2","payload":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 97 * 1024));
    big.extend_from_slice(b"\"}");
    let e = d.register(std::str::from_utf8(&big).unwrap()).await.expect_err("too large");
    assert_condition(&e, ErrorCondition::LinkError(LinkError::MessageSizeExceeded), 413_000);
    // Over the link's max-message-size: the client refuses locally (it was told the limit).
    let sent = d.sender.send(request("iotdps-register", None, data(vec![b' '; 200 * 1024]), correlation())).await;
    assert!(sent.is_err(), "{sent:?}");
    // Another device's operation is not found either.
    let mut other = f.device("dev-3").await;
    let op = other.register("{}").await.expect("register");
    let e = d.poll(op["operationId"].as_str().unwrap()).await.expect_err("not mine");
    assert_eq!(e.condition, ErrorCondition::AmqpError(AmqpError::NotFound));
    other.close().await;
    // The connection still serves.
    let op = d.register("{}").await.expect("register");
    let operation = op["operationId"].as_str().unwrap().to_owned();
    assert_eq!(d.poll(&operation).await.expect("poll")["status"], "assigned");
    // Idle past `DeviceSession::REST_AFTER` the session keeps only the device's names: a poll
    // is answered from them, a register reads the device again.
    tokio::time::sleep(dps_core::device::DeviceSession::REST_AFTER + std::time::Duration::from_millis(500)).await;
    assert_eq!(d.poll(&operation).await.expect("poll after resting")["status"], "assigned");
    tokio::time::sleep(dps_core::device::DeviceSession::REST_AFTER + std::time::Duration::from_millis(500)).await;
    let op = d.register("{}").await.expect("register after resting");
    assert_eq!(op["status"], "assigning");
    d.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_headers_and_bad_sasl_get_amqp_answers() {
    let f = setup("").await;
    // Not an AMQP 1.0 header we serve: our header, then close.
    for garbage in
        [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x16\x03\x01\x02\x00", b"AMQP\x02\x01\x00\x00", b"AMQP\x00\x00\x09\x01"]
    {
        let mut io = tls(f.addr()).await;
        io.write_all(garbage).await.expect("write");
        let answer = read_until_closed(&mut io).await;
        assert!(answer == b"AMQP\x03\x01\x00\x00" || answer == b"AMQP\x00\x01\x00\x00", "{garbage:?} → {answer:?}");
    }
    // Out of order, unknown mechanisms, malformed usernames, a wrong key, an unknown device.
    for (first, want) in [
        (response(b"\x00"), SaslCode::SysPerm),
        (init("EXTERNAL", b""), SaslCode::Auth),
        (init("ANONYMOUS", b""), SaslCode::Auth),
        (init("PLAIN", format!("\x00{}/devices/dev-1\x00pw", f.scope).as_bytes()), SaslCode::Auth),
        (init("PLAIN", &f.plain("dev-1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")), SaslCode::Auth),
        (init("PLAIN", &f.plain("nobody", GROUP_KEY)), SaslCode::Auth),
    ] {
        let mut io = sasl_client(f.addr()).await;
        io.write_all(&first).await.expect("write");
        let got = read_until_closed(&mut io).await;
        assert_eq!(got.get(..8), Some(&b"AMQP\x03\x01\x00\x00"[..]));
        assert_eq!(outcome_code(&got), Some(want));
    }
    // Oversized (refused from its size alone), too small to be a frame, an AMQP frame where
    // SASL is due.
    for bad in [
        &[0x00, 0x10, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00][..],
        &[0x00, 0x00, 0x00, 0x04],
        &[0x00, 0x00, 0x00, 0x0C, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x10, 0x45],
    ] {
        let mut io = sasl_client(f.addr()).await;
        io.write_all(bad).await.expect("write");
        let got = read_until_closed(&mut io).await;
        assert_eq!(outcome_code(&got), Some(SaslCode::SysPerm), "{bad:?}");
    }
    // A SASL frame over 512 bytes is read (TPM inits are that large): the TPM exchange starts.
    let mut io = sasl_client(f.addr()).await;
    let mut buf = Vec::new();
    let mut header = [0u8; 8];
    io.read_exact(&mut header).await.expect("header");
    match read_sasl_frame(&mut io, &mut buf).await {
        SaslFrame::Mechanisms(m) => {
            let names: Vec<&str> = m.sasl_server_mechanisms.iter().map(|s| s.as_str()).collect();
            assert_eq!(names, ["PLAIN", "TPM"]);
        }
        other => panic!("{other:?}"),
    }
    let mut tpm = format!("\x00{}\x00tpm-1\x00", f.scope).into_bytes();
    tpm.extend(std::iter::repeat_n(0xEE, 600));
    let frame = init("TPM", &tpm);
    assert!(frame.len() > 512);
    io.write_all(&frame).await.expect("write");
    match read_sasl_frame(&mut io, &mut buf).await {
        SaslFrame::Challenge(c) => assert_eq!(c.challenge.as_slice(), &[0u8]),
        other => panic!("expected the first TPM challenge, got {other:?}"),
    }
    drop(io);
    // A wrong key through a real client: refused at SASL.
    let err = f.connect("dev-1", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=").await.expect_err("wrong key");
    assert!(err.to_lowercase().contains("sasl") || err.to_lowercase().contains("auth"), "{err}");
    f.provisions("dev-1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_amqp_frames_close_the_connection() {
    let f = setup("").await;
    for bad in [
        &[0x00, 0x00, 0x00, 0x05, 0x02][..],               // shorter than a frame header
        &[0x00, 0x00, 0x00, 0x08, 0x07, 0x00, 0x00, 0x00], // data offset 7
        &[0x00, 0x00, 0x00, 0x08, 0x02, 0x01, 0x00, 0x00], // a SASL frame after SASL
        &[0x7F, 0xFF, 0xFF, 0xFF, 0x02, 0x00, 0x00, 0x00], // 2 GiB
        &[0x00, 0x01, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00], // 64 KiB, over max-frame-size
        &[0x00, 0x00, 0x00, 0x0C, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x99, 0x45], // unknown performative
    ] {
        let mut io = sasl_client(f.addr()).await;
        let mut first = [0u8; 8];
        io.read_exact(&mut first).await.expect("header");
        io.write_all(&init("PLAIN", &f.plain("dev-1", &device_key("dev-1")))).await.expect("init");
        io.write_all(b"AMQP\x00\x01\x00\x00").await.expect("amqp header");
        io.write_all(bad).await.expect("garbage");
        let got = read_until_closed(&mut io).await;
        assert!(!got.is_empty(), "{bad:?}");
    }
    f.provisions("dev-1").await;
}

/// Without SASL the Open is decoded before anyone is authenticated: one whose properties nest
/// 3,000 lists deep (27 KB, within max-frame-size) overflowed the decoder's stack and aborted the
/// whole server before docs/amqp.md, "Encoded values". Now it is a framing error.
#[tokio::test(flavor = "multi_thread")]
async fn a_deeply_nested_open_before_authentication_is_a_framing_error() {
    let f = setup("").await;
    let stream = include_bytes!("../../../fuzz/corpus/amqp_header/plain-open-with-deeply-nested-properties");
    let mut io = tls(f.addr()).await;
    io.write_all(stream).await.expect("header and open");
    let got = read_until_closed(&mut io).await;
    assert!(got.starts_with(b"AMQP\x00\x01\x00\x00"), "{:?}", &got[..got.len().min(16)]);
    f.provisions("dev-1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn links_must_name_the_authenticated_device() {
    let f = setup("").await;
    let mut connection = f.connect("dev-1", &device_key("dev-1")).await.expect("connection");
    let mut session = Session::begin(&mut connection).await.expect("session");
    for address in [f.address("dev-2"), "0ne99999999/registrations/dev-1".to_owned(), "$iothub/whatever".to_owned()] {
        let refused = match Receiver::attach(&mut session, format!("rx-{address}"), address.clone()).await {
            Err(e) => format!("{e:?}"),
            Ok(mut r) => match tokio::time::timeout(WAIT, r.recv::<Body<Value>>()).await.expect("detach") {
                Err(e) => format!("{e:?}"),
                Ok(_) => panic!("a message on another device's link"),
            },
        };
        assert!(refused.contains("UnauthorizedAccess"), "{address}: {refused}");
        assert!(refused.contains("401002"), "the DPS error is in the description: {refused}");
    }
    // The connection's own links still work, with the amqps:// form of the address.
    let address = format!("amqps://localhost/{}", f.address("dev-1"));
    let receiver = Receiver::attach(&mut session, "rx", address.clone()).await.expect("receiver");
    let sender = Sender::attach(&mut session, "tx", address.clone()).await.expect("sender");
    let mut d = Device { connection, session, sender, receiver };
    // A second request link is refused; the first keeps working.
    let refused = match Sender::attach(&mut d.session, "tx-2", address).await {
        Err(e) => format!("{e:?}"),
        Ok(mut s) => {
            format!("{:?}", s.send(request("iotdps-register", None, data(b"{}".to_vec()), correlation())).await)
        }
    };
    assert!(
        refused.contains("ResourceLimitExceeded") || refused.contains("Detached") || refused.contains("Closed"),
        "{refused}"
    );
    assert_eq!(d.register("{}").await.expect("register")["status"], "assigning");
    d.close().await;
    f.provisions("dev-2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_sasl_and_without_a_certificate_requests_are_unauthorized() {
    let f = setup("").await;
    let io = tls(f.addr()).await;
    let mut connection =
        Connection::builder().container_id("x509").hostname("localhost").open_with_stream(io).await.expect("open");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let receiver = Receiver::attach(&mut session, "rx", f.address("dev-1")).await.expect("receiver");
    let sender = Sender::attach(&mut session, "tx", f.address("dev-1")).await.expect("sender");
    let mut d = Device { connection, session, sender, receiver };
    let e = d.register("{}").await.expect_err("no certificate");
    assert_condition(&e, ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), 401_002);
    let e = d.poll("4.whatever").await.expect_err("still refused");
    assert_eq!(e.condition, ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess));
    d.close().await;
    f.provisions("dev-1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_a_retryable_rejection_with_retry_after() {
    let f = setup("[service]\nregistrations_per_minute = 1\n").await;
    let mut d = f.device("dev-1").await;
    assert_eq!(d.register("{}").await.expect("first")["status"], "assigning");
    let e = d.register("{}").await.expect_err("throttled");
    assert_condition(&e, ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled")), 429_001);
    let info = e.info.expect("info");
    let retry = info.get(&Symbol::from("retry-after")).cloned();
    assert!(matches!(&retry, Some(Value::String(s)) if s.parse::<u32>().is_ok_and(|n| n >= 1)), "{retry:?}");
    assert_eq!(info.get(&Symbol::from("Retry-After")), retry.as_ref());
    d.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_open_connections() {
    let f = setup("").await;
    let mut d = f.device("dev-1").await;
    f.s.server.shutdown_token().cancel();
    let closed = tokio::time::timeout(WAIT, d.connection.on_close()).await.expect("closed by the server");
    assert!(format!("{closed:?}").contains("ConnectionForced"), "{closed:?}");
}

/// The instance's network rules reach AMQP through the device session, and so do the metrics
/// (docs/operations.md).
#[tokio::test(flavor = "multi_thread")]
async fn ip_filter_rules_refuse_amqp_devices_at_sasl_and_metrics_count_amqp() {
    let f = setup("").await;
    f.provisions("dev-1").await;
    let svc = &f.s.server.state.services;
    svc.update_instance("opendps", |i| {
        i.ip_filter_rules = vec![dps_core::model::IpFilterRule {
            filter_name: "nolocal".into(),
            action: dps_core::model::IpFilterAction::Reject,
            ip_mask: "127.0.0.0/8".into(),
            target: dps_core::model::IpFilterTarget::DeviceApi,
        }];
        Ok(())
    })
    .await
    .unwrap();
    f.connect("dev-2", &device_key("dev-2")).await.expect_err("refused by the IP filter");
    let text = f.s.server.metrics.encode();
    for line in [
        r#"opendps_registration_attempts_total{instance="opendps",protocol="amqp",result="assigned"} 1"#,
        r#"opendps_device_assignments_total{instance="opendps",protocol="amqp",hub="hub-a.azure-devices.net"} 1"#,
        r#"opendps_attestation_attempts_total{instance="opendps",protocol="amqp",result="success"} 1"#,
        r#"opendps_network_refusals_total{instance="opendps",api="device",reason="ip_filter"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    svc.update_instance("opendps", |i| {
        i.ip_filter_rules.clear();
        Ok(())
    })
    .await
    .unwrap();
    f.provisions("dev-2").await;
}

/// The SASL `TPM` mechanism byte by byte, as the Node and C# clients run it (docs/tpm.md): the
/// first challenge is `0x00`, the blob comes in at most four segments numbered `0x80|seq` with
/// `0xC0|seq` on the last, it opens in the device's TPM, and the SAS signed with the key it
/// carries ends the exchange with `ok`; a SAS under another key gets an `auth` outcome.
#[tokio::test(flavor = "multi_thread")]
async fn the_tpm_sasl_exchange_is_what_the_clients_parse() {
    use dps_attest::tpm::testing::SoftwareTpm;
    use dps_core::base64::encode;
    let f = setup("").await;
    let tpm = SoftwareTpm::default();
    let (ek, srk) = (tpm.endorsement_key(), tpm.storage_root_key());
    let e: dps_core::model::IndividualEnrollment =
        serde_json::from_value(serde_json::json!({ "registrationId": "tpm-amqp",
        "attestation": { "type": "tpm", "tpm": { "endorsementKey": encode(&ek) } } }))
        .unwrap();
    f.s.server.state.services.put_enrollment(&f.instance, "tpm-amqp", e, None).await.unwrap();

    for good in [false, true] {
        let mut io = sasl_client(f.addr()).await;
        let (mut buf, mut header) = (Vec::new(), [0u8; 8]);
        io.read_exact(&mut header).await.expect("header");
        assert!(matches!(read_sasl_frame(&mut io, &mut buf).await, SaslFrame::Mechanisms(_)));
        let mut first = format!("\x00{}\x00tpm-amqp\x00", f.scope).into_bytes();
        first.extend_from_slice(&ek);
        io.write_all(&init("TPM", &first)).await.expect("init");
        match read_sasl_frame(&mut io, &mut buf).await {
            SaslFrame::Challenge(c) => assert_eq!(c.challenge.as_slice(), &[0u8]),
            other => panic!("expected the first TPM challenge, got {other:?}"),
        }
        let mut srk_response = vec![0u8];
        srk_response.extend_from_slice(&srk);
        io.write_all(&response(&srk_response)).await.expect("srk");
        let mut blob = Vec::new();
        for seq in 0u8.. {
            assert!(seq < 4, "more than four SASL segments: the clients cannot take them");
            let SaslFrame::Challenge(c) = read_sasl_frame(&mut io, &mut buf).await else { panic!("segment {seq}") };
            let (control, part) = c.challenge.as_slice().split_first().expect("control byte");
            blob.extend_from_slice(part);
            if *control == 0xC0 | seq {
                break;
            }
            assert_eq!(*control, 0x80 | seq, "segment {seq}");
            io.write_all(&response(&[0])).await.expect("ack");
        }
        let fields = dps_attest::tpm::ActivationBlobFields::parse(&blob).expect("six fields");
        assert_eq!(fields.uri_data, [0, 0], "field 6 present and empty");
        let k = tpm.activate(&blob).expect("the TPM opens the blob");
        let key = if good { encode(&k) } else { encode(b"some other key") };
        let mut last = vec![0u8];
        last.extend_from_slice(f.token("tpm-amqp", &key).as_bytes());
        io.write_all(&response(&last)).await.expect("sas");
        match read_sasl_frame(&mut io, &mut buf).await {
            SaslFrame::Outcome(o) => assert_eq!(o.code, if good { SaslCode::Ok } else { SaslCode::Auth }),
            other => panic!("expected the outcome, got {other:?}"),
        }
    }
}

/// Reads the next AMQP frame the server sends (every one must fit the 512-byte max-frame-size
/// the raw client announced: `next_frame` refuses a larger one).
async fn read_frame(io: &mut Tls, buf: &mut Vec<u8>) -> fe2o3_amqp::frames::amqp::FrameBody {
    read_next(io, buf, |buf| {
        let mut b = bytes::BytesMut::from(&buf[..]);
        match dps_amqp::codec::next_frame(&mut b, 512) {
            Ok(Some(f)) => {
                let used = buf.len() - b.len();
                buf.drain(..used);
                Some(f.body)
            }
            Ok(None) => None,
            Err(e) => panic!("the server sent a frame the client refuses: {e}"),
        }
    })
    .await
}

/// Appends one frame on channel 0.
fn put<P: serde::Serialize>(out: &mut Vec<u8>, performative: &P, payload: &[u8]) {
    dps_amqp::codec::encode(out, 0, performative, payload).unwrap();
}

/// A raw device through SASL PLAIN, then (in one write, as a pipelining client sends it) the
/// AMQP header, an Open with a 512-byte max-frame-size and a 1 s idle-time-out for the server to
/// honour, a Begin, the receiver link (handle 0, 5 credits) and the sender link (handle 1) on the
/// device's address, and `then`. Returns after the server's header, Open and Begin.
async fn raw_device(f: &Fixture, id: &str, key: &str, then: &[u8], buf: &mut Vec<u8>) -> Tls {
    use fe2o3_amqp::frames::amqp::FrameBody;
    use fe2o3_amqp::types::definitions::{ReceiverSettleMode, Role, SenderSettleMode};
    use fe2o3_amqp::types::messaging::{Source, Target, TargetArchetype};
    use fe2o3_amqp::types::performatives::{Attach, Begin, Flow, Open};

    let mut io = sasl_client(f.addr()).await;
    let mut header = [0u8; 8];
    io.read_exact(&mut header).await.expect("sasl header");
    io.write_all(&init("PLAIN", &f.plain(id, key))).await.expect("init");
    let mut sasl = Vec::new();
    loop {
        match read_sasl_frame(&mut io, &mut sasl).await {
            SaslFrame::Outcome(o) => {
                assert_eq!(o.code, SaslCode::Ok);
                break;
            }
            _ => continue,
        }
    }
    assert!(sasl.is_empty(), "nothing after the outcome before our AMQP header");
    let address = f.address(id);
    let mut out = b"AMQP\x00\x01\x00\x00".to_vec();
    let open = Open {
        container_id: "raw".into(),
        hostname: Some("localhost".into()),
        max_frame_size: 512u32.into(),
        channel_max: 0u16.into(),
        idle_time_out: Some(1000),
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    put(&mut out, &open, &[]);
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: 7u32.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    put(&mut out, &begin, &[]);
    let attach = |name: &str, handle: u32, role: Role| Attach {
        initial_delivery_count: matches!(&role, Role::Sender).then_some(0),
        name: name.into(),
        handle: handle.into(),
        role,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source { address: Some(address.clone()), ..Source::default() })),
        target: Some(Box::new(TargetArchetype::Target(Target { address: Some(address.clone()), ..Target::default() }))),
        unsettled: None,
        incomplete_unsettled: false,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    put(&mut out, &attach("rx", 0, Role::Receiver), &[]);
    put(&mut out, &attach("tx", 1, Role::Sender), &[]);
    let flow = Flow {
        next_incoming_id: Some(0),
        incoming_window: 100,
        next_outgoing_id: 0,
        outgoing_window: 100,
        handle: Some(0u32.into()),
        delivery_count: Some(0),
        link_credit: Some(5),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    };
    put(&mut out, &flow, &[]);
    out.extend_from_slice(then);
    io.write_all(&out).await.expect("pipelined frames");

    let mut got = [0u8; 8];
    io.read_exact(&mut got).await.expect("amqp header");
    assert_eq!(&got, b"AMQP\x00\x01\x00\x00");
    let FrameBody::Open(theirs) = read_frame(&mut io, buf).await else { panic!("not an open") };
    assert!(theirs.idle_time_out.is_some_and(|ms| ms > 0), "our idle-time-out is announced");
    assert!(matches!(read_frame(&mut io, buf).await, FrameBody::Begin(b) if b.remote_channel == Some(0)));
    io
}

/// A register request of `id` as a transfer on the raw device's sender link (handle 1), whole
/// or split in two frames.
fn register_transfer(out: &mut Vec<u8>, id: &str, delivery_id: u32, split: bool) {
    use fe2o3_amqp::types::performatives::Transfer;
    let properties = Properties { correlation_id: Some(MessageId::Ulong(9)), ..Properties::default() };
    let app = ApplicationProperties::builder().insert("iotdps-operation-type", "iotdps-register").build();
    let msg = Message::builder()
        .properties(properties)
        .application_properties(app)
        .data(Binary::from(format!(r#"{{"registrationId":"{id}"}}"#).into_bytes()))
        .build();
    let payload = dps_amqp::codec::encode_message(msg).unwrap();
    let transfer = |more: bool| Transfer { more, ..dps_amqp::codec::transfer(1, delivery_id, false) };
    if split {
        let (first, second) = payload.split_at(payload.len() / 2);
        put(out, &transfer(true), first);
        put(out, &transfer(false), second);
    } else {
        put(out, &transfer(false), &payload);
    }
}

/// Sends a detach of the raw device's sender link (handle 1) and then a close; both must be
/// answered. `skip` says which other frames may come in between.
async fn raw_detach_and_close(
    io: &mut Tls,
    buf: &mut Vec<u8>,
    skip: impl Fn(&fe2o3_amqp::frames::amqp::FrameBody) -> bool,
) {
    use fe2o3_amqp::frames::amqp::FrameBody;
    use fe2o3_amqp::types::performatives::{Close, Detach};
    let mut out = Vec::new();
    put(&mut out, &Detach { handle: 1u32.into(), closed: true, error: None }, &[]);
    io.write_all(&out).await.unwrap();
    loop {
        match read_frame(io, buf).await {
            FrameBody::Detach(d) => {
                assert_eq!(u32::from(d.handle), 1);
                assert!(d.closed);
                break;
            }
            other if skip(&other) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut out = Vec::new();
    put(&mut out, &Close { error: None }, &[]);
    io.write_all(&out).await.unwrap();
    loop {
        match read_frame(io, buf).await {
            FrameBody::Close(c) => {
                assert!(c.error.is_none());
                break;
            }
            other if skip(&other) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_answers_pipelined_frames_sends_heartbeats_and_answers_detach_and_close() {
    use fe2o3_amqp::frames::amqp::FrameBody;
    use fe2o3_amqp::types::definitions::Role;
    use fe2o3_amqp::types::messaging::DeliveryState;

    let f = setup("").await;
    // Everything up to the request in one write; the request in two transfer frames.
    let mut request = Vec::new();
    register_transfer(&mut request, "dev-1", 0, true);
    let mut buf = Vec::new();
    let mut io = raw_device(&f, "dev-1", &device_key("dev-1"), &request, &mut buf).await;
    let mut accepted = false;
    let mut response = Vec::new();
    let mut attaches = 0;
    while !accepted || response.is_empty() {
        match read_frame(&mut io, &mut buf).await {
            FrameBody::Attach(a) => {
                attaches += 1;
                if matches!(a.role, Role::Receiver) {
                    assert!(a.max_message_size.is_some(), "the request link announces its limit");
                }
            }
            FrameBody::Flow(_) | FrameBody::Empty => {}
            FrameBody::Disposition(d) => {
                assert!(d.settled && d.first == 0);
                assert!(matches!(d.state, Some(DeliveryState::Accepted(_))), "{d:?}");
                accepted = true;
            }
            FrameBody::Transfer { performative, payload } => {
                assert_eq!(u32::from(performative.handle), 0, "the response goes on the device's receiver");
                response.extend_from_slice(&payload);
                assert!(!performative.more, "a response this small fits one frame");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(attaches, 2);
    let response = dps_amqp::mapping::decode_request(&response);
    // The response is not a request (no operation type), but it decodes as an AMQP message.
    assert!(matches!(response, Err(dps_amqp::mapping::RequestError::MissingOperationType)), "{response:?}");
    // Silent now: the server keeps the connection alive with empty frames within the 1 s asked.
    let mut heartbeat = false;
    for _ in 0..20 {
        if matches!(read_frame(&mut io, &mut buf).await, FrameBody::Empty) {
            heartbeat = true;
            break;
        }
    }
    assert!(heartbeat, "no empty frame while the client asked for a 1 s idle-time-out");
    // Detach and close are answered.
    raw_detach_and_close(&mut io, &mut buf, |b| matches!(b, FrameBody::Empty | FrameBody::Transfer { .. })).await;
    f.provisions("dev-2").await;
}

/// A device-API call runs beside the frame loop: while a custom-allocation webhook holds a
/// register, the connection sends heartbeats, refuses requests over its limit at once, and
/// answers detach and close (docs/amqp.md, "The engine").
#[tokio::test(flavor = "multi_thread")]
async fn a_held_call_leaves_heartbeats_detach_and_close_served_and_calls_are_bounded() {
    use fe2o3_amqp::frames::amqp::FrameBody;
    use fe2o3_amqp::types::messaging::DeliveryState;

    // The webhook takes the connection and never answers: the register is held for as long as
    // the webhook timeout (20 s), far longer than this test.
    let hook = tokio::net::TcpListener::bind("127.0.0.100:0").await.expect("webhook listener");
    let hook_addr = hook.local_addr().unwrap();
    let (reached, mut held) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = hook.accept().await {
            let _ = reached.send(tcp).await;
        }
    });
    let f = setup("[allocation]\nwebhook_timeout = \"20s\"\nallow_http_localhost = true\n").await;
    let enrollment = serde_json::json!({
        "registrationId": "held-1",
        "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": GROUP_KEY, "secondaryKey": GROUP_KEY } },
        "allocationPolicy": "custom",
        "customAllocationDefinition": { "webhookUrl": format!("http://{hook_addr}/hook"), "apiVersion": "2021-10-01" },
    });
    let enrollment = serde_json::from_value(enrollment).unwrap();
    f.s.server.state.services.put_enrollment(&f.instance, "held-1", enrollment, None).await.unwrap();

    // Five requests at once: the first is held by the webhook, three wait behind it, the fifth
    // is over the connection's limit.
    let mut requests = Vec::new();
    for delivery_id in 0..5 {
        register_transfer(&mut requests, "held-1", delivery_id, false);
    }
    let mut buf = Vec::new();
    let mut io = raw_device(&f, "held-1", GROUP_KEY, &requests, &mut buf).await;
    let mut heartbeats = 0;
    let mut throttled = false;
    while heartbeats < 3 || !throttled {
        match read_frame(&mut io, &mut buf).await {
            FrameBody::Empty => heartbeats += 1,
            FrameBody::Attach(_) | FrameBody::Flow(_) => {}
            FrameBody::Disposition(d) => {
                assert_eq!(d.first, 4, "only the request over the limit is settled while the call is held");
                let Some(DeliveryState::Rejected(r)) = d.state else { panic!("{d:?}") };
                let e = r.error.expect("error");
                assert_condition(
                    &e,
                    ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled")),
                    429_001,
                );
                throttled = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _webhook_call = tokio::time::timeout(WAIT, held.recv()).await.expect("the webhook was called").expect("call");
    // The call is still held: detach and close are answered at once, with heartbeats between.
    raw_detach_and_close(&mut io, &mut buf, |b| matches!(b, FrameBody::Empty | FrameBody::Flow(_))).await;
    f.provisions("dev-2").await;
}
