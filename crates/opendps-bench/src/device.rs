//! One simulated device: a new TLS connection, register, poll until assigned, close; over
//! HTTPS or MQTT, with a SAS token or a client certificate. Also the nginx ceiling's request
//! and the idle MQTT connection.
//!
//! The poll is sent at once, without waiting the Retry-After the server suggests: the bench
//! measures the server, not the SDKs' back-off (OpenDPS answers "assigned" on the first poll).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use dps_tls::client::ClientStream;
use mqttbytes::v4::{self, Connect, Disconnect, Login, Packet, PubAck, Publish, Subscribe};
use mqttbytes::QoS;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::tlsclient::{DeviceCert, TlsClient};

/// Why one device failed, without ids, so that failures group by cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure(pub String);

impl Failure {
    pub fn new(cause: impl Into<String>) -> Failure {
        Failure(cause.into())
    }
}

pub(crate) fn io_fail(what: &str, e: &std::io::Error) -> Failure {
    Failure::new(format!("{what}: {}", e.kind()))
}

/// How long one device took.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// TCP connect to the connection closed.
    pub total: Duration,
    /// TCP connect + TLS handshake.
    pub handshake: Duration,
    pub cipher: Option<&'static str>,
}

/// The server under load.
#[derive(Clone, Debug)]
pub struct Target {
    pub tls: TlsClient,
    pub https: SocketAddr,
    pub mqtt: SocketAddr,
    pub amqp: SocketAddr,
    pub amqp_client: crate::AmqpClient,
    pub scope: String,
}

/// A device's credential.
#[derive(Clone, Debug)]
pub enum Auth {
    /// A symmetric key (base64): the device signs a SAS token with it.
    Key(String),
    /// A client certificate.
    Cert(Arc<DeviceCert>),
}

impl Auth {
    fn cert(&self) -> Option<&DeviceCert> {
        match self {
            Auth::Cert(c) => Some(c),
            Auth::Key(_) => None,
        }
    }

    /// The SAS token for `scope`/`id` valid for an hour, or None for a certificate.
    fn token(&self, scope: &str, id: &str) -> Result<Option<String>, Failure> {
        match self {
            Auth::Cert(_) => Ok(None),
            Auth::Key(k) => {
                let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 3600;
                dps_attest::sas::make_token(&format!("{scope}/registrations/{id}"), k, expiry, Some("registration"))
                    .map(Some)
                    .ok_or_else(|| Failure::new("bad device key"))
            }
        }
    }
}

const API: &str = "api-version=2021-06-01";
/// Polls after which a device that is still "assigning" counts as failed.
pub(crate) const MAX_POLLS: usize = 20;

/// HTTPS: PUT register, GET operation status until assigned, on one new connection.
pub async fn https_register(t: &Target, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    let token = auth.token(&t.scope, id)?;
    let start = Instant::now();
    let mut s = t.tls.connect(t.https, id, auth.cert()).await?;
    let handshake = start.elapsed();
    let cipher = s.cipher();
    let host = t.https.ip().to_string();
    let mut headers = vec![("Content-Type", "application/json; charset=utf-8"), ("Accept", "application/json")];
    if let Some(tok) = &token {
        headers.push(("Authorization", tok));
    }
    let body = serde_json::json!({ "registrationId": id }).to_string();
    let path = format!("/{}/registrations/{id}/register?{API}", t.scope);
    let (status, resp) = http(&mut s, "PUT", &path, &host, &headers, body.as_bytes()).await?;
    if status != 202 && status != 200 {
        return Err(Failure::new(format!("register: HTTP {status}{}", error_code(&resp))));
    }
    let v: Value = serde_json::from_slice(&resp).map_err(|_| Failure::new("register: response is not JSON"))?;
    let mut state = v["status"].as_str().unwrap_or_default().to_owned();
    let op = v["operationId"].as_str().ok_or_else(|| Failure::new("register: no operationId"))?.to_owned();
    let mut polls = 0;
    while state != "assigned" {
        if polls == MAX_POLLS {
            return Err(Failure::new(format!("still {state:?} after {MAX_POLLS} polls")));
        }
        polls += 1;
        let path = format!("/{}/registrations/{id}/operations/{op}?{API}", t.scope);
        let (status, resp) = http(&mut s, "GET", &path, &host, &headers, b"").await?;
        if status != 200 && status != 202 {
            return Err(Failure::new(format!("poll: HTTP {status}{}", error_code(&resp))));
        }
        let v: Value = serde_json::from_slice(&resp).map_err(|_| Failure::new("poll: response is not JSON"))?;
        state = v["status"].as_str().unwrap_or_default().to_owned();
        if state != "assigned" && state != "assigning" {
            return Err(Failure::new(format!("poll: status {state:?}")));
        }
    }
    let _ = s.shutdown().await;
    Ok(Timing { total: start.elapsed(), handshake, cipher })
}

/// The ceiling's request: a new connection, `GET /`, the static 202, close.
pub async fn https_static(t: &Target, addr: SocketAddr, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    let start = Instant::now();
    let mut s = t.tls.connect(addr, id, auth.cert()).await?;
    let handshake = start.elapsed();
    let cipher = s.cipher();
    let (status, _) = http(&mut s, "GET", "/", &addr.ip().to_string(), &[], b"").await?;
    if status != 202 {
        return Err(Failure::new(format!("static: HTTP {status}")));
    }
    let _ = s.shutdown().await;
    Ok(Timing { total: start.elapsed(), handshake, cipher })
}

/// A TLS handshake alone, then close: gives a resuming client the device's session for `addr`
/// (`register --resume` runs this before the measured load).
pub async fn tls_only(t: &Target, addr: SocketAddr, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    let start = Instant::now();
    let mut s = t.tls.connect(addr, id, auth.cert()).await?;
    let handshake = start.elapsed();
    let cipher = s.cipher();
    let _ = s.shutdown().await;
    Ok(Timing { total: start.elapsed(), handshake, cipher })
}

/// `, errorCode N` from a DPS error body, if it has one.
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["errorCode"].as_u64())
        .map(|c| format!(", errorCode {c}"))
        .unwrap_or_default()
}

/// One HTTP/1.1 request and its response (status, body) on a kept-alive connection.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), Failure> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out).await.map_err(|e| io_fail("http write", &e))?;
    read_response(s).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize, Failure> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await.map_err(|e| io_fail("http read", &e))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads one response: Content-Length, chunked, or until close.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Result<(u16, Vec<u8>), Failure> {
    let mut buf = Vec::with_capacity(2048);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(Failure::new("http: response head too large"));
        }
        if fill(s, &mut buf).await? == 0 {
            return Err(Failure::new("http: connection closed before a response"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| Failure::new("http: bad status line"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = buf.split_off(head_end);
    if chunked {
        return Ok((status, read_chunked(s, body).await?));
    }
    match length {
        Some(n) => {
            while body.len() < n {
                if fill(s, &mut body).await? == 0 {
                    return Err(Failure::new("http: connection closed inside the body"));
                }
            }
            body.truncate(n);
        }
        None => while fill(s, &mut body).await? != 0 {},
    }
    Ok((status, body))
}

/// The largest chunk of a chunked response accepted (the server's answers are a few KB): a
/// larger size is a bad response, not an allocation or an overflow of `line_end + size`.
const MAX_CHUNK: usize = 16 << 20;

async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, mut raw: Vec<u8>) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&raw, b"\r\n") {
                break i;
            }
            if fill(s, &mut raw).await? == 0 {
                return Err(Failure::new("http: connection closed inside a chunk"));
            }
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .ok()
            .filter(|&n| n <= MAX_CHUNK)
            .ok_or_else(|| Failure::new("http: bad chunk size"))?;
        while raw.len() < line_end + 2 + size + 2 {
            if fill(s, &mut raw).await? == 0 {
                return Err(Failure::new("http: connection closed inside a chunk"));
            }
        }
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw.drain(..line_end + 2 + size + 2);
    }
}

/// An MQTT connection: the stream and what has been read but not parsed.
struct Mqtt {
    s: ClientStream,
    buf: BytesMut,
}

impl Mqtt {
    async fn send(
        &mut self,
        write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>,
    ) -> Result<(), Failure> {
        let mut out = BytesMut::new();
        write(&mut out).map_err(|e| Failure::new(format!("mqtt encode: {e:?}")))?;
        self.s.write_all(&out).await.map_err(|e| io_fail("mqtt write", &e))
    }

    /// The next packet; QoS 1 publishes from the server are acknowledged.
    async fn recv(&mut self) -> Result<Packet, Failure> {
        loop {
            match v4::read(&mut self.buf, 1 << 20) {
                Ok(p) => {
                    if let Packet::Publish(p) = &p {
                        if p.qos != QoS::AtMostOnce {
                            let ack = PubAck::new(p.pkid);
                            self.send(|b| ack.write(b)).await?;
                        }
                    }
                    return Ok(p);
                }
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(Failure::new(format!("mqtt decode: {e:?}"))),
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).await.map_err(|e| io_fail("mqtt read", &e))?;
            if n == 0 {
                return Err(Failure::new("mqtt: connection closed by the server"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next response publish, skipping acknowledgements.
    async fn response(&mut self, what: &str) -> Result<Publish, Failure> {
        loop {
            match self.recv().await? {
                Packet::Publish(p) => return Ok(p),
                Packet::PubAck(_) | Packet::SubAck(_) | Packet::PingResp => {}
                other => return Err(Failure::new(format!("{what}: unexpected {:?}", packet_name(&other)))),
            }
        }
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::SubAck(_) => "SUBACK",
        Packet::Disconnect => "DISCONNECT",
        _ => "packet",
    }
}

/// `$dps/registrations/res/{status}/?...` → status.
fn topic_status(topic: &str) -> Option<u16> {
    topic.strip_prefix("$dps/registrations/res/")?.split('/').next()?.parse().ok()
}

/// TLS handshake, CONNECT → CONNACK 0 and (unless `subscribe` is false) SUBSCRIBE → SUBACK.
async fn mqtt_connect(
    t: &Target,
    id: &str,
    auth: &Auth,
    subscribe: bool,
    keep_alive: u16,
) -> Result<(Mqtt, Duration), Failure> {
    let token = auth.token(&t.scope, id)?;
    let start = Instant::now();
    let s = t.tls.connect(t.mqtt, id, auth.cert()).await?;
    let handshake = start.elapsed();
    let mut m = Mqtt { s, buf: BytesMut::with_capacity(1024) };
    let mut c = Connect::new(id);
    c.keep_alive = keep_alive;
    c.clean_session = true;
    let user = format!("{}/registrations/{id}/api-version=2019-03-31&ClientVersion=opendps-bench", t.scope);
    c.login = Some(Login::new(user, token.unwrap_or_default()));
    m.send(|b| c.write(b)).await?;
    match m.recv().await? {
        Packet::ConnAck(a) if a.code as u8 == 0 => {}
        Packet::ConnAck(a) => return Err(Failure::new(format!("mqtt: CONNACK {}", a.code as u8))),
        other => return Err(Failure::new(format!("mqtt: {} instead of CONNACK", packet_name(&other)))),
    }
    if subscribe {
        let mut sub = Subscribe::new("$dps/registrations/res/#", QoS::AtLeastOnce);
        sub.pkid = 1;
        m.send(|b| sub.write(b)).await?;
        match m.recv().await? {
            Packet::SubAck(_) => {}
            other => return Err(Failure::new(format!("mqtt: {} instead of SUBACK", packet_name(&other)))),
        }
    }
    Ok((m, handshake))
}

/// MQTT: CONNECT, SUBSCRIBE, register (QoS 1), poll until assigned, DISCONNECT.
pub async fn mqtt_register(t: &Target, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    let start = Instant::now();
    let (mut m, handshake) = mqtt_connect(t, id, auth, true, 60).await?;
    let cipher = m.s.cipher();
    let payload = serde_json::json!({ "registrationId": id, "payload": null }).to_string();
    let mut p = Publish::new("$dps/registrations/PUT/iotdps-register/?$rid=1", QoS::AtLeastOnce, payload);
    p.pkid = 2;
    m.send(|b| p.write(b)).await?;
    let r = m.response("register").await?;
    let status = topic_status(&r.topic).ok_or_else(|| Failure::new("register: unexpected topic"))?;
    if status != 202 && status != 200 {
        return Err(Failure::new(format!("register: status {status}{}", error_code(&r.payload))));
    }
    let v: Value = serde_json::from_slice(&r.payload).map_err(|_| Failure::new("register: response is not JSON"))?;
    let mut state = v["status"].as_str().unwrap_or_default().to_owned();
    let op = v["operationId"].as_str().ok_or_else(|| Failure::new("register: no operationId"))?.to_owned();
    let mut rid = 2;
    while state != "assigned" {
        if rid - 2 == MAX_POLLS {
            return Err(Failure::new(format!("still {state:?} after {MAX_POLLS} polls")));
        }
        let topic = format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}");
        rid += 1;
        let p = Publish::new(topic, QoS::AtMostOnce, Vec::new());
        m.send(|b| p.write(b)).await?;
        let r = m.response("poll").await?;
        let status = topic_status(&r.topic).ok_or_else(|| Failure::new("poll: unexpected topic"))?;
        if status != 200 && status != 202 {
            return Err(Failure::new(format!("poll: status {status}{}", error_code(&r.payload))));
        }
        let v: Value = serde_json::from_slice(&r.payload).map_err(|_| Failure::new("poll: response is not JSON"))?;
        state = v["status"].as_str().unwrap_or_default().to_owned();
        if state != "assigned" && state != "assigning" {
            return Err(Failure::new(format!("poll: status {state:?}")));
        }
    }
    let _ = m.send(|b| Disconnect.write(b)).await;
    let _ = m.s.shutdown().await;
    Ok(Timing { total: start.elapsed(), handshake, cipher })
}

/// An idle connection: MQTT connected (and subscribed), or AMQP with both links attached.
/// Dropping it closes the connection (for AMQP: the connection, its session and both links).
pub struct IdleConnection {
    _held: Box<dyn std::any::Any + Send>,
}

pub struct AmqpIdle {
    sender: fe2o3_amqp::Sender,
    receiver: fe2o3_amqp::Receiver,
    session: fe2o3_amqp::session::SessionHandle<()>,
    connection: fe2o3_amqp::connection::ConnectionHandle<()>,
}

pub(crate) fn amqp_fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(format!("amqp {what}: {e}"))
}

/// A device's TLS connection to the AMQP port, before any AMQP: what SASL PLAIN needs (no
/// token for a certificate) and the timing so far.
pub(crate) struct AmqpTls {
    pub s: ClientStream,
    pub token: Option<String>,
    /// `{scope}/registrations/{id}`: the SASL username and both links' address.
    pub address: String,
    pub start: Instant,
    pub handshake: Duration,
    pub cipher: Option<&'static str>,
}

pub(crate) async fn amqp_tls(t: &Target, id: &str, auth: &Auth) -> Result<AmqpTls, Failure> {
    let token = auth.token(&t.scope, id)?;
    let address = format!("{}/registrations/{id}", t.scope);
    let start = Instant::now();
    let s = t.tls.connect(t.amqp, id, auth.cert()).await?;
    let handshake = start.elapsed();
    let cipher = s.cipher();
    Ok(AmqpTls { s, token, address, start, handshake, cipher })
}

/// An AMQP-over-TLS connection as the Node SDK leaves it before its first request: TLS, then
/// with a key SASL PLAIN (username `{scope}/registrations/{id}`, password the SAS token), with a
/// certificate no SASL (the TLS chain is the credential); Open, Begin, the receiver link then the
/// sender link on the device's address.
async fn amqp_open(t: &Target, id: &str, auth: &Auth) -> Result<(AmqpIdle, Timing), Failure> {
    use fe2o3_amqp::sasl_profile::SaslProfile;
    let AmqpTls { s, token, address, start, handshake, cipher } = amqp_tls(t, id, auth).await?;
    let mut builder = fe2o3_amqp::Connection::builder().container_id(id.to_owned()).hostname("localhost");
    if let Some(password) = token {
        builder = builder.sasl_profile(SaslProfile::Plain { username: address.clone(), password });
    }
    let mut connection = builder.open_with_stream(s).await.map_err(|e| amqp_fail("open", e))?;
    let mut session = fe2o3_amqp::Session::begin(&mut connection).await.map_err(|e| amqp_fail("begin", e))?;
    let receiver = fe2o3_amqp::Receiver::attach(&mut session, "rheaReceiver_1", address.clone())
        .await
        .map_err(|e| amqp_fail("receiver attach", e))?;
    let sender = fe2o3_amqp::Sender::attach(&mut session, "rheaSender_1", address)
        .await
        .map_err(|e| amqp_fail("sender attach", e))?;
    Ok((AmqpIdle { sender, receiver, session, connection }, Timing { total: start.elapsed(), handshake, cipher }))
}

/// An idle AMQP connection with both links attached, by the client `t` names. The lean client
/// announces no idle-time-out, so the server sends no heartbeats; it closes a connection silent
/// for its own idle-time-out (240 s), longer than an idle run holds.
pub async fn amqp_idle(t: &Target, id: &str, auth: &Auth) -> Result<(IdleConnection, Timing), Failure> {
    match t.amqp_client {
        crate::AmqpClient::Lean => {
            let (conn, timing) = crate::amqp::open(t, id, auth).await?;
            Ok((IdleConnection { _held: Box::new(conn) }, timing))
        }
        crate::AmqpClient::Fe2o3 => {
            let (conn, timing) = amqp_open(t, id, auth).await?;
            Ok((IdleConnection { _held: Box::new(conn) }, timing))
        }
    }
}

impl AmqpIdle {
    /// One request: accepted, then one response of JSON on the receiver link.
    async fn ask(
        &mut self,
        operation: &str,
        operation_id: Option<&str>,
        body: fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>,
        rid: u64,
    ) -> Result<Value, Failure> {
        use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Message, MessageId, Outcome, Properties};
        let mut app = ApplicationProperties::builder().insert("iotdps-operation-type", operation);
        if let Some(id) = operation_id {
            app = app.insert("iotdps-operation-id", id);
        }
        let p = Properties { correlation_id: Some(MessageId::Ulong(rid)), ..Properties::default() };
        let msg = Message::builder().properties(p).application_properties(app.build()).body(body).build();
        match self.sender.send(msg).await.map_err(|e| amqp_fail("send", e))? {
            Outcome::Accepted(_) => {}
            Outcome::Rejected(r) => {
                let e = r.error.map(|e| format!("{:?}", e.condition)).unwrap_or_default();
                return Err(Failure::new(format!("amqp: request rejected {e}")));
            }
            _ => return Err(Failure::new("amqp: request neither accepted nor rejected")),
        }
        let delivery = self
            .receiver
            .recv::<Body<fe2o3_amqp::types::primitives::Value>>()
            .await
            .map_err(|e| amqp_fail("recv", e))?;
        self.receiver.accept(&delivery).await.map_err(|e| amqp_fail("accept", e))?;
        let Body::Data(sections) = delivery.into_message().body else {
            return Err(Failure::new("amqp: response is not a data section"));
        };
        let first = sections.first().ok_or_else(|| Failure::new("amqp: empty response"))?;
        serde_json::from_slice(&first.0).map_err(|_| Failure::new("amqp: response is not JSON"))
    }
}

/// One device over AMQP by the client `t` names: open, register, poll at once until assigned,
/// close.
pub async fn amqp_register(t: &Target, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    match t.amqp_client {
        crate::AmqpClient::Lean => crate::amqp::register(t, id, auth).await,
        crate::AmqpClient::Fe2o3 => fe2o3_register(t, id, auth).await,
    }
}

/// As [`amqp_register`], with fe2o3-amqp's client.
async fn fe2o3_register(t: &Target, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    use fe2o3_amqp::types::messaging::{AmqpValue, Body, Data};
    use fe2o3_amqp::types::primitives::{Binary, Value as AmqpV};
    let start = Instant::now();
    let (mut d, timing) = amqp_open(t, id, auth).await?;
    let body = serde_json::json!({ "registrationId": id }).to_string().into_bytes();
    let op = d.ask("iotdps-register", None, Body::Data(vec![Data(Binary::from(body))].into()), 1).await?;
    let mut status = op;
    for rid in 2..12u64 {
        if status["status"] == "assigned" {
            break;
        }
        let op_id = status["operationId"].as_str().ok_or_else(|| Failure::new("amqp: no operationId"))?.to_owned();
        let body = Body::Value(AmqpValue(AmqpV::String(String::new())));
        status = d.ask("iotdps-get-operationstatus", Some(&op_id), body, rid).await?;
    }
    if status["status"] != "assigned" {
        return Err(Failure::new(format!("amqp: status {}", status["status"])));
    }
    let _ = d.sender.close().await;
    let _ = d.receiver.close().await;
    let _ = d.session.end().await;
    d.connection.close().await.map_err(|e| amqp_fail("close", e))?;
    Ok(Timing { total: start.elapsed(), ..timing })
}

pub async fn mqtt_idle(
    t: &Target,
    id: &str,
    auth: &Auth,
    subscribe: bool,
    keep_alive: u16,
) -> Result<(IdleConnection, Timing), Failure> {
    let start = Instant::now();
    let (m, handshake) = mqtt_connect(t, id, auth, subscribe, keep_alive).await?;
    let cipher = m.s.cipher();
    Ok((IdleConnection { _held: Box::new(m.s) }, Timing { total: start.elapsed(), handshake, cipher }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_length_chunked_and_close_delimited_responses() {
        let mut r: &[u8] = b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\nabcdEXTRA";
        assert_eq!(read_response(&mut r).await, Ok((202, b"abcd".to_vec())));
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut r).await, Ok((200, b"abcde".to_vec())));
        let mut r: &[u8] = b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n\r\nbody";
        assert_eq!(read_response(&mut r).await, Ok((202, b"body".to_vec())));
        let mut r: &[u8] = b"HTTP/1.1 202";
        assert!(read_response(&mut r).await.is_err());
    }

    #[test]
    fn statuses_from_topics_and_error_codes_from_bodies() {
        assert_eq!(topic_status("$dps/registrations/res/202/?$rid=1&retry-after=3"), Some(202));
        assert_eq!(topic_status("$dps/registrations/res/401/?$rid=1"), Some(401));
        assert_eq!(topic_status("elsewhere"), None);
        assert_eq!(error_code(br#"{"errorCode":401002}"#), ", errorCode 401002");
        assert_eq!(error_code(b"x"), "");
    }
}
