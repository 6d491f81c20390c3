//! The AMQP driver against hostile and well-behaved clients on 127.0.0.1:0, plain TCP, with the
//! TEST device API (`support/fake.rs`). Raw bytes for the header and SASL layers; fe2o3-amqp's
//! own client for the AMQP layer. Every test ends by registering a good device on the same
//! server: a bad connection costs only itself.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_amqp::sasl::frame;
use dps_amqp::{serve_connection, AmqpSettings, ConnectionContext, Transport};
use dps_core::tls::{HandshakeFacts, Negotiated, PeerCertificates, TlsVersion};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::frames::sasl::Frame as SaslFrame;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslResponse};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use support::fake::{FakeApi, FakeDevices};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SCOPE: &str = "0ne0000A0A0";
/// base64 of 32 bytes 0x01..0x20.
const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const WAIT: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    devices: Arc<FakeDevices>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn facts() -> Arc<HandshakeFacts> {
    Arc::new(HandshakeFacts {
        offered: None,
        negotiated: Negotiated {
            version: TlsVersion::Tls12,
            cipher_suite: 0xC02F,
            group: None,
            alpn: None,
            resumed: false,
            client_certificate: false,
        },
    })
}

async fn start(settings: AmqpSettings) -> Server {
    // RUST_LOG=dps_amqp=debug shows the server's side of a test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let mut devices = FakeDevices::new(SCOPE);
    for id in ["dev-1", "dev-2", "dev-3", "throttled-1"] {
        devices.symmetric_keys.insert(id.to_owned(), KEY.to_owned());
    }
    devices.throttle_once.insert("throttled-1".to_owned());
    devices.tpm.insert("tpm-1".to_owned());
    let devices = Arc::new(devices);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let api = Arc::new(FakeApi(devices.clone()));
    let settings = Arc::new(settings);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let _ = tcp.set_nodelay(true);
            let ctx = ConnectionContext {
                peer,
                tls: facts(),
                peer_certificates: Arc::new(PeerCertificates::default()),
                transport: Transport::Amqp,
                api: api.clone(),
                settings: settings.clone(),
            };
            tokio::spawn(serve_connection(tcp, ctx, stop.clone()));
        }
    });
    Server { addr, devices, shutdown }
}

fn token(registration_id: &str, key: &str) -> String {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
    dps_attest::sas::make_token(&format!("{SCOPE}/registrations/{registration_id}"), key, expiry, Some("registration"))
        .expect("token")
}

/// Reads until the server closes; fails the test if it does not within WAIT.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 4096];
        loop {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    all
}

/// Splits what the server sent after its SASL header into SASL frames.
fn sasl_frames(mut bytes: &[u8]) -> Vec<SaslFrame> {
    let mut out = Vec::new();
    while let Ok(Some((f, n))) = frame::decode(bytes, 1 << 16) {
        out.push(f);
        bytes = &bytes[n..];
    }
    out
}

fn outcome_code(frames: &[SaslFrame]) -> Option<SaslCode> {
    frames.iter().find_map(|f| match f {
        SaslFrame::Outcome(o) => Some(o.code.clone()),
        _ => None,
    })
}

async fn sasl_client(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"AMQP\x03\x01\x00\x00").await.expect("header");
    tcp
}

async fn read_sasl_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> SaslFrame {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Some((f, n))) = frame::decode(buf, 1 << 16) {
                buf.drain(..n);
                return f;
            }
            let mut b = [0u8; 4096];
            let n = tcp.read(&mut b).await.expect("read");
            assert!(n > 0, "closed while a SASL frame was expected");
            buf.extend_from_slice(&b[..n]);
        }
    })
    .await
    .expect("no SASL frame")
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

async fn amqp_client(addr: SocketAddr, registration_id: &str, key: &str) -> Result<ConnectionHandle<()>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    Connection::builder()
        .container_id("raw-client")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Plain {
            username: format!("{SCOPE}/registrations/{registration_id}"),
            password: token(registration_id, key),
        })
        .open_with_stream(tcp)
        .await
        .map_err(|e| e.to_string())
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
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(p),
        application_properties: Some(app.build()),
        body,
        footer: None,
    }
}

fn data(bytes: Vec<u8>) -> Body<Value> {
    Body::Data(vec![fe2o3_amqp::types::messaging::Data(Binary::from(bytes))].into())
}

/// A device with both links attached, as the Node SDK attaches them (receiver first).
struct Device {
    connection: ConnectionHandle<()>,
    session: fe2o3_amqp::session::SessionHandle<()>,
    sender: Sender,
    receiver: Receiver,
}

async fn device(addr: SocketAddr, registration_id: &str) -> Device {
    let mut connection = amqp_client(addr, registration_id, KEY).await.expect("connection");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let address = format!("{SCOPE}/registrations/{registration_id}");
    let receiver = Receiver::attach(&mut session, "rheaReceiver_1", address.clone()).await.expect("receiver");
    let sender = Sender::attach(&mut session, "rheaSender_1", address).await.expect("sender");
    Device { connection, session, sender, receiver }
}

impl Device {
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
        assert_eq!(
            msg.properties.as_ref().and_then(|p| p.correlation_id.clone()),
            correlation,
            "correlation id echoed as is"
        );
        let Body::Data(sections) = msg.body else { panic!("response body is not a data section") };
        assert_eq!(sections.len(), 1, "exactly one data section");
        let json: serde_json::Value = serde_json::from_slice(&sections[0].0).expect("response JSON");
        if let Some(app) = msg.application_properties.as_ref() {
            assert_eq!(app.0.get("retry-after"), app.0.get("Retry-After"));
        }
        Ok(json)
    }

    async fn register(&mut self, body: &str) -> Result<serde_json::Value, fe2o3_amqp::types::definitions::Error> {
        let id = MessageId::String(uuid::Uuid::new_v4().to_string());
        self.ask(request("iotdps-register", None, data(body.as_bytes().to_vec()), id)).await
    }

    async fn poll(&mut self, operation_id: &str) -> Result<serde_json::Value, fe2o3_amqp::types::definitions::Error> {
        let id = MessageId::String(uuid::Uuid::new_v4().to_string());
        let body = Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(String::new())));
        self.ask(request("iotdps-get-operationstatus", Some(operation_id), body, id)).await
    }

    async fn close(mut self) {
        let _ = self.sender.close().await;
        let _ = self.receiver.close().await;
        let _ = self.session.end().await;
        tokio::time::timeout(WAIT, self.connection.close()).await.expect("close answered").expect("close");
    }
}

/// Register and poll one good device to the end.
async fn provisions(server: &Server, registration_id: &str) {
    let mut d = device(server.addr, registration_id).await;
    let op = d.register(&format!(r#"{{"registrationId":"{registration_id}"}}"#)).await.expect("register");
    assert_eq!(op["status"], "assigning");
    let done = d.poll(op["operationId"].as_str().expect("operationId")).await.expect("poll");
    assert_eq!(done["status"], "assigned");
    assert_eq!(done["registrationState"]["deviceId"], registration_id);
    d.close().await;
}

fn assert_condition(e: &fe2o3_amqp::types::definitions::Error, condition: ErrorCondition, error_code: u64) {
    assert_eq!(e.condition, condition, "{e:?}");
    let body: serde_json::Value =
        serde_json::from_str(e.description.as_deref().unwrap_or("")).expect("JSON description");
    assert_eq!(body["errorCode"], error_code, "{body}");
    assert!(body["trackingId"].is_string() && body["timestampUtc"].is_string() && body["message"].is_string());
}

#[tokio::test]
async fn registers_and_polls_with_sasl_plain() {
    let server = start(AmqpSettings::default()).await;
    provisions(&server, "dev-1").await;
    assert_eq!(server.devices.registrations("dev-1"), 1);
}

#[tokio::test]
async fn echoes_correlation_ids_of_every_type_and_sends_retry_after() {
    let server = start(AmqpSettings::default()).await;
    let mut d = device(server.addr, "dev-1").await;
    for id in
        [MessageId::Uuid(uuid::Uuid::new_v4().into_bytes().into()), MessageId::Ulong(42), MessageId::String("x".into())]
    {
        let op = d.ask(request("iotdps-register", None, data(b"{}".to_vec()), id)).await.expect("register");
        assert_eq!(op["status"], "assigning");
    }
    d.close().await;
}

#[tokio::test]
async fn garbage_instead_of_a_header_gets_our_header_and_a_close() {
    let server = start(AmqpSettings::default()).await;
    for garbage in
        [&b"GET / HTTP/1.1\r\n\r\n"[..], b"\x16\x03\x01\x02\x00", b"AMQP\x02\x01\x00\x00", b"AMQP\x00\x00\x09\x01"]
    {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(garbage).await.expect("write");
        let answer = read_until_closed(&mut tcp).await;
        assert!(answer == b"AMQP\x03\x01\x00\x00" || answer == b"AMQP\x00\x01\x00\x00", "{garbage:?} → {answer:?}");
    }
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn a_silent_client_is_closed() {
    let server = start(AmqpSettings { header_timeout: Duration::from_millis(200), ..AmqpSettings::default() }).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"AMQ").await.expect("write");
    assert!(read_until_closed(&mut tcp).await.is_empty());
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn truncated_and_oversized_sasl_frames_end_with_an_outcome_or_a_close() {
    let mut settings = AmqpSettings::default();
    settings.sasl.timeout = Duration::from_millis(300);
    let server = start(settings).await;
    // Truncated: the frame never completes; the SASL time limit ends it with an outcome.
    let mut tcp = sasl_client(server.addr).await;
    let full = init("PLAIN", b"\x00s/registrations/d\x00pw");
    tcp.write_all(&full[..full.len() - 3]).await.expect("write");
    let got = read_until_closed(&mut tcp).await;
    assert_eq!(got.get(..8), Some(&b"AMQP\x03\x01\x00\x00"[..]));
    assert_eq!(outcome_code(&sasl_frames(&got[8..])), Some(SaslCode::SysTemp));
    // Truncated then closed by the client: the server lets go.
    let mut tcp = sasl_client(server.addr).await;
    tcp.write_all(&full[..10]).await.expect("write");
    tcp.shutdown().await.expect("shutdown");
    read_until_closed(&mut tcp).await;
    // Oversized: refused from its size alone.
    let mut tcp = sasl_client(server.addr).await;
    tcp.write_all(&[0x00, 0x10, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00]).await.expect("write");
    let got = read_until_closed(&mut tcp).await;
    assert_eq!(outcome_code(&sasl_frames(&got[8..])), Some(SaslCode::SysPerm));
    // Too small to be a frame, and an AMQP frame where SASL is due.
    for bad in
        [&[0x00, 0x00, 0x00, 0x04][..], &[0x00, 0x00, 0x00, 0x0C, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x10, 0x45]]
    {
        let mut tcp = sasl_client(server.addr).await;
        tcp.write_all(bad).await.expect("write");
        let got = read_until_closed(&mut tcp).await;
        assert_eq!(outcome_code(&sasl_frames(&got[8..])), Some(SaslCode::SysPerm), "{bad:?}");
    }
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn sasl_frames_larger_than_512_bytes_are_accepted() {
    let server = start(AmqpSettings::default()).await;
    let mut tcp = sasl_client(server.addr).await;
    let mut buf = Vec::new();
    let mut header = [0u8; 8];
    tcp.read_exact(&mut header).await.expect("header");
    assert!(matches!(read_sasl_frame(&mut tcp, &mut buf).await, SaslFrame::Mechanisms(_)));
    let mut tpm = b"\x000ne0000A0A0\x00tpm-1\x00".to_vec();
    tpm.extend(std::iter::repeat_n(0xEE, 600));
    let frame = init("TPM", &tpm);
    assert!(frame.len() > 512);
    tcp.write_all(&frame).await.expect("write");
    match read_sasl_frame(&mut tcp, &mut buf).await {
        SaslFrame::Challenge(c) => assert_eq!(c.challenge.as_slice(), &[0u8]),
        other => panic!("expected the first TPM challenge, got {other:?}"),
    }
}

#[tokio::test]
async fn tpm_sasl_runs_to_the_end_and_the_device_registers() {
    let server = start(AmqpSettings::default()).await;
    let mut tcp = sasl_client(server.addr).await;
    let mut buf = Vec::new();
    let mut header = [0u8; 8];
    tcp.read_exact(&mut header).await.expect("header");
    match read_sasl_frame(&mut tcp, &mut buf).await {
        SaslFrame::Mechanisms(m) => {
            let names: Vec<&str> = m.sasl_server_mechanisms.iter().map(|s| s.as_str()).collect();
            assert_eq!(names, ["PLAIN", "TPM"]);
        }
        other => panic!("{other:?}"),
    }
    let mut tpm = b"\x000ne0000A0A0\x00tpm-1\x00".to_vec();
    tpm.extend(std::iter::repeat_n(0xEE, 316));
    tcp.write_all(&init("TPM", &tpm)).await.expect("init");
    assert!(
        matches!(read_sasl_frame(&mut tcp, &mut buf).await, SaslFrame::Challenge(c) if c.challenge.as_slice() == [0])
    );
    let mut srk = vec![0u8];
    srk.extend(std::iter::repeat_n(0x55, 280));
    tcp.write_all(&response(&srk)).await.expect("srk");
    let mut blob = Vec::new();
    let mut segments = 0;
    loop {
        let SaslFrame::Challenge(c) = read_sasl_frame(&mut tcp, &mut buf).await else { panic!("expected a segment") };
        let c = c.challenge.into_vec();
        assert_eq!(c[0] & 0x80, 0x80);
        assert_eq!(usize::from(c[0] & 0x03), segments);
        blob.extend_from_slice(&c[1..]);
        segments += 1;
        if c[0] & 0x40 != 0 {
            break;
        }
        tcp.write_all(&response(&[0])).await.expect("ack");
    }
    assert!(segments <= 4);
    // The fake's "imported" key is the blob's first 32 bytes.
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(&blob[..32]);
    let mut last = vec![0u8];
    last.extend_from_slice(token("tpm-1", &key).as_bytes());
    tcp.write_all(&response(&last)).await.expect("sas");
    match read_sasl_frame(&mut tcp, &mut buf).await {
        SaslFrame::Outcome(o) => assert_eq!(o.code, SaslCode::Ok),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sasl_out_of_order_and_wrong_mechanism_get_failed_outcomes() {
    let server = start(AmqpSettings::default()).await;
    for (first, want) in [
        (response(b"\x00"), SaslCode::SysPerm),
        (init("EXTERNAL", b""), SaslCode::Auth),
        (init("ANONYMOUS", b""), SaslCode::Auth),
        (init("PLAIN", b"\x000ne0000A0A0/devices/dev-1\x00pw"), SaslCode::Auth),
        (
            init("PLAIN", format!("\x00{SCOPE}/registrations/dev-1\x00{}", token("dev-1", "d3Jvbmc=")).as_bytes()),
            SaslCode::Auth,
        ),
        (
            init("PLAIN", format!("\x00{SCOPE}/registrations/nobody\x00{}", token("nobody", KEY)).as_bytes()),
            SaslCode::Auth,
        ),
    ] {
        let mut tcp = sasl_client(server.addr).await;
        tcp.write_all(&first).await.expect("write");
        let got = read_until_closed(&mut tcp).await;
        assert_eq!(outcome_code(&sasl_frames(&got[8..])), Some(want));
    }
    // A second init after a good one.
    let mut tcp = sasl_client(server.addr).await;
    tcp.write_all(&init("TPM", b"\x000ne0000A0A0\x00tpm-1\x00ek")).await.expect("write");
    tcp.write_all(&init("PLAIN", b"\x00a/registrations/b\x00pw")).await.expect("write");
    let got = read_until_closed(&mut tcp).await;
    assert_eq!(outcome_code(&sasl_frames(&got[8..])), Some(SaslCode::SysPerm));
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_at_sasl() {
    let server = start(AmqpSettings::default()).await;
    let Err(err) = amqp_client(server.addr, "dev-1", "d3Jvbmcga2V5IHdyb25nIGtleQ==").await else {
        panic!("a wrong key was accepted")
    };
    assert!(err.to_lowercase().contains("sasl") || err.to_lowercase().contains("auth"), "{err}");
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn garbage_frames_after_sasl_close_the_connection() {
    // A frame fe2o3 cannot decode before Open leaves it waiting for our Close to be answered;
    // the time limit up to authentication ends that.
    let server = start(AmqpSettings { authenticate_timeout: Duration::from_secs(2), ..AmqpSettings::default() }).await;
    for bad in [
        &[0x00, 0x00, 0x00, 0x05, 0x02][..],               // shorter than a frame header
        &[0x00, 0x00, 0x00, 0x08, 0x07, 0x00, 0x00, 0x00], // data offset 7
        &[0x00, 0x00, 0x00, 0x08, 0x02, 0x01, 0x00, 0x00], // a SASL frame after SASL
        &[0x7F, 0xFF, 0xFF, 0xFF, 0x02, 0x00, 0x00, 0x00], // 2 GiB
        &[0x00, 0x00, 0x00, 0x0C, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x99, 0x45], // unknown performative
    ] {
        let mut tcp = sasl_client(server.addr).await;
        let mut first = [0u8; 8];
        tcp.read_exact(&mut first).await.expect("header");
        let mut plain = format!("\x00{SCOPE}/registrations/dev-1\x00").into_bytes();
        plain.extend_from_slice(token("dev-1", KEY).as_bytes());
        tcp.write_all(&init("PLAIN", &plain)).await.expect("init");
        tcp.write_all(b"AMQP\x00\x01\x00\x00").await.expect("amqp header");
        tcp.write_all(bad).await.expect("garbage");
        let got = read_until_closed(&mut tcp).await;
        assert!(!got.is_empty(), "{bad:?}");
    }
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn a_link_to_another_device_is_refused() {
    let server = start(AmqpSettings::default()).await;
    let mut connection = amqp_client(server.addr, "dev-1", KEY).await.expect("connection");
    let mut session = Session::begin(&mut connection).await.expect("session");
    for address in [
        format!("{SCOPE}/registrations/dev-2"),
        "0ne99999999/registrations/dev-1".to_owned(),
        "$iothub/whatever".to_owned(),
    ] {
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
    let address = format!("amqps://localhost/{SCOPE}/registrations/dev-1");
    let receiver = Receiver::attach(&mut session, "rx", address.clone()).await.expect("receiver");
    let sender = Sender::attach(&mut session, "tx", address).await.expect("sender");
    let mut d = Device { connection, session, sender, receiver };
    let op = d.register("{}").await.expect("register");
    assert_eq!(op["status"], "assigning");
    // A body naming another registration id is refused.
    let e = d.register(r#"{"registrationId":"dev-2"}"#).await.expect_err("refused");
    assert_condition(&e, ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), 401_002);
    d.close().await;
    provisions(&server, "dev-2").await;
}

#[tokio::test]
async fn unknown_operations_and_operation_ids_are_rejected() {
    let server = start(AmqpSettings::default()).await;
    let mut d = device(server.addr, "dev-1").await;
    let e = d.poll("4.no-such-operation").await.expect_err("unknown id");
    assert_condition(&e, ErrorCondition::AmqpError(AmqpError::NotFound), 404_000);
    let id = MessageId::String("c".into());
    let e = d
        .ask(request("iotdps-get-registration", None, data(b"{}".to_vec()), id.clone()))
        .await
        .expect_err("unknown type");
    assert_condition(&e, ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")), 400_000);
    let e = d.ask(request("iotdps-get-operationstatus", None, data(Vec::new()), id.clone())).await.expect_err("no id");
    assert_condition(&e, ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")), 400_000);
    let e = d.register("{not json").await.expect_err("bad JSON");
    assert_eq!(e.condition, ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")));
    // Another device's operation is not found either.
    let mut other = device(server.addr, "dev-2").await;
    let op = other.register("{}").await.expect("register");
    let e = d.poll(op["operationId"].as_str().expect("id")).await.expect_err("not mine");
    assert_condition(&e, ErrorCondition::AmqpError(AmqpError::NotFound), 404_000);
    other.close().await;
    // The connection still serves.
    let op = d.register("{}").await.expect("register");
    assert_eq!(d.poll(op["operationId"].as_str().expect("id")).await.expect("poll")["status"], "assigned");
    d.close().await;
}

#[tokio::test]
async fn bodies_over_96_kb_are_refused_cleanly() {
    let server = start(AmqpSettings::default()).await;
    let mut d = device(server.addr, "dev-1").await;
    // Over DPS's limit, within the link's: a DPS 413 error.
    let mut big = br#"{"registrationId":"dev-1","payload":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 97 * 1024));
    big.extend_from_slice(b"\"}");
    let e = d.register(std::str::from_utf8(&big).expect("utf8")).await.expect_err("too large");
    assert_condition(
        &e,
        ErrorCondition::LinkError(fe2o3_amqp::types::definitions::LinkError::MessageSizeExceeded),
        413_000,
    );
    // The connection goes on.
    assert_eq!(d.register("{}").await.expect("register")["status"], "assigning");
    // Over the link's max-message-size: the sender refuses locally (it was told the limit in
    // the attach), so nothing oversized reaches the server.
    let huge = vec![b' '; 200 * 1024];
    let id = MessageId::String("h".into());
    let sent = d.sender.send(request("iotdps-register", None, data(huge), id)).await;
    assert!(sent.is_err(), "{sent:?}");
    d.close().await;
    provisions(&server, "dev-2").await;
}

#[tokio::test]
async fn throttling_is_a_retryable_rejection_with_retry_after() {
    let server = start(AmqpSettings::default()).await;
    let mut d = device(server.addr, "throttled-1").await;
    let e = d.register("{}").await.expect_err("throttled");
    assert_condition(&e, ErrorCondition::Custom(Symbol::from("com.microsoft:device-container-throttled")), 429_001);
    let info = e.info.expect("info");
    assert_eq!(info.get(&Symbol::from("retry-after")), Some(&Value::String("1".into())));
    assert_eq!(info.get(&Symbol::from("Retry-After")), Some(&Value::String("1".into())));
    assert_eq!(d.register("{}").await.expect("second try")["status"], "assigning");
    d.close().await;
}

#[tokio::test]
async fn without_sasl_and_without_a_certificate_requests_are_unauthorized() {
    let server = start(AmqpSettings::default()).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut connection =
        Connection::builder().container_id("x509").hostname("localhost").open_with_stream(tcp).await.expect("open");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let address = format!("{SCOPE}/registrations/dev-1");
    let receiver = Receiver::attach(&mut session, "rx", address.clone()).await.expect("receiver");
    let sender = Sender::attach(&mut session, "tx", address).await.expect("sender");
    let mut d = Device { connection, session, sender, receiver };
    let e = d.register("{}").await.expect_err("no certificate");
    assert_condition(&e, ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), 401_002);
    d.close().await;
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn without_sasl_a_connection_that_names_no_device_is_closed() {
    let server =
        start(AmqpSettings { authenticate_timeout: Duration::from_millis(300), ..AmqpSettings::default() }).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut connection =
        Connection::builder().container_id("idle").hostname("localhost").open_with_stream(tcp).await.expect("open");
    let closed = tokio::time::timeout(WAIT, connection.on_close()).await.expect("closed by the server");
    let text = format!("{closed:?}");
    assert!(text.contains("UnauthorizedAccess"), "{text}");
    provisions(&server, "dev-1").await;
}

#[tokio::test]
async fn a_second_request_link_is_refused_and_the_first_keeps_working() {
    let server = start(AmqpSettings::default()).await;
    let mut d = device(server.addr, "dev-1").await;
    let address = format!("{SCOPE}/registrations/dev-1");
    let refused = match Sender::attach(&mut d.session, "tx-2", address).await {
        Err(e) => format!("{e:?}"),
        Ok(mut s) => {
            let sent = s.send(request("iotdps-register", None, data(b"{}".to_vec()), MessageId::Ulong(1))).await;
            format!("{sent:?}")
        }
    };
    assert!(
        refused.contains("ResourceLimitExceeded") || refused.contains("Detached") || refused.contains("Closed"),
        "{refused}"
    );
    assert_eq!(d.register("{}").await.expect("register")["status"], "assigning");
    d.close().await;
}

#[tokio::test]
async fn shutdown_closes_open_connections() {
    let server = start(AmqpSettings::default()).await;
    let mut d = device(server.addr, "dev-1").await;
    server.shutdown.cancel();
    let closed = tokio::time::timeout(WAIT, d.connection.on_close()).await.expect("closed by the server");
    assert!(format!("{closed:?}").contains("ConnectionForced"), "{closed:?}");
}
