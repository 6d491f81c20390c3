//! The bench's own AMQP device client: the frames the Node SDK sends for one registration, on
//! one task with one read buffer, framed by `dps_amqp::codec` and built from `fe2o3-amqp`'s
//! types (its client, with a task per connection, session and link and channels between them,
//! cost more CPU per device than the server it measured; `--amqp-client fe2o3` still runs it).
//!
//! Sequence (docs/amqp.md): TLS; with a key the SASL header, the server's mechanisms (PLAIN
//! must be offered), `sasl-init` PLAIN (username `{scope}/registrations/{id}`, password the SAS
//! token), outcome `ok`; with a certificate no SASL. Then in one write the AMQP header, Open,
//! Begin, the receiver link then the sender link on the device's address (with
//! `com.microsoft:api-version`, as the SDK attaches them) and the receiver's credit. A request
//! waits for the server's credit on the sender link; each response is accepted in the same write
//! as the next request; Detach, Detach, End and Close go in one write, and each is checked
//! answered. Every answer is checked: the attaches (no detach), the request's disposition
//! (`accepted`, else the rejection's condition and DPS error code), the response's correlation
//! id, its one data section of JSON, its status.

use std::time::Instant;

use bytes::BytesMut;
use dps_amqp::codec;
use dps_amqp::sasl::frame as sasl_frame;
use dps_tls::client::ClientStream;
use fe2o3_amqp::frames::amqp::FrameBody;
use fe2o3_amqp::frames::sasl::Frame as SaslFrame;
use fe2o3_amqp::types::definitions::{self, Fields, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::messaging::{
    Accepted, AmqpValue, ApplicationProperties, Body, Data, DeliveryState, Message, MessageId, Properties, Source,
    Target as AmqpTarget, TargetArchetype,
};
use fe2o3_amqp::types::performatives::{Attach, Begin, Close, Detach, Disposition, End, Flow, Open};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value as AmqpValueAny};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::device::{amqp_fail, amqp_tls, io_fail, AmqpTls, Auth, Failure, Target, Timing, MAX_POLLS};

const SASL_HEADER: &[u8; 8] = b"AMQP\x03\x01\x00\x00";
const AMQP_HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
/// Our max-frame-size; the server's frames must fit it.
const MAX_FRAME: u32 = 64 * 1024;
/// Our receiver link's handle (responses) and our sender link's (requests).
const RX: u32 = 0;
const TX: u32 = 1;
/// Credit for responses: more than one registration ever asks.
const RX_CREDIT: u32 = MAX_POLLS as u32 + 4;
const WINDOW: u32 = 256;
const API_VERSION: &str = "2019-03-31";

/// A device's AMQP connection with both links attached.
pub struct LeanAmqp {
    s: ClientStream,
    buf: BytesMut,
    /// Frames to go out with the next write.
    out: Vec<u8>,
    /// Our next transfer's delivery-id (and tag).
    next_delivery: u32,
    /// Credit the server gave our sender link, as the delivery count it counts from.
    tx_credit: u32,
}

/// A performative's AMQP name, for failures.
fn name(b: &FrameBody) -> &'static str {
    match b {
        FrameBody::Open(_) => "open",
        FrameBody::Begin(_) => "begin",
        FrameBody::Attach(_) => "attach",
        FrameBody::Flow(_) => "flow",
        FrameBody::Transfer { .. } => "transfer",
        FrameBody::Disposition(_) => "disposition",
        FrameBody::Detach(_) => "detach",
        FrameBody::End(_) => "end",
        FrameBody::Close(_) => "close",
        FrameBody::Empty => "empty frame",
    }
}

/// An error's condition and, when its description is the DPS error body, its error code.
fn describe(e: Option<&definitions::Error>) -> String {
    let Some(e) = e else { return "no error".into() };
    let code = e
        .description
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|v| v["errorCode"].as_u64())
        .map(|c| format!(", errorCode {c}"))
        .unwrap_or_default();
    format!("{:?}{code}", e.condition)
}

fn link(name: &str, handle: u32, role: Role, address: &str) -> Attach {
    let mut properties = Fields::new();
    properties.insert(Symbol::from("com.microsoft:api-version"), AmqpValueAny::String(API_VERSION.into()));
    Attach {
        initial_delivery_count: matches!(role, Role::Sender).then_some(0),
        name: name.into(),
        handle: handle.into(),
        role,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source { address: Some(address.to_owned()), ..Source::default() })),
        target: Some(Box::new(TargetArchetype::Target(AmqpTarget {
            address: Some(address.to_owned()),
            ..AmqpTarget::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: Some(properties),
    }
}

/// The request message: the operation type (and id) as application properties, the
/// correlation id, the body.
fn request(
    operation: &str,
    operation_id: Option<&str>,
    body: Body<AmqpValueAny>,
    rid: u64,
) -> Result<Vec<u8>, Failure> {
    let mut app = ApplicationProperties::builder().insert("iotdps-operation-type", operation);
    if let Some(id) = operation_id {
        app = app.insert("iotdps-operation-id", id);
    }
    let p = Properties { correlation_id: Some(MessageId::Ulong(rid)), ..Properties::default() };
    let msg = Message::builder().properties(p).application_properties(app.build()).body(body).build();
    serde_amqp::to_vec(&fe2o3_amqp::types::messaging::message::__private::Serializable(msg))
        .map_err(|e| amqp_fail("encode", e))
}

impl LeanAmqp {
    fn put<P: serde::Serialize>(&mut self, performative: &P, payload: &[u8]) -> Result<(), Failure> {
        codec::encode(&mut self.out, 0, performative, payload).map_err(|e| amqp_fail("encode", e))
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        let r = self.s.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|e| io_fail("amqp write", &e))
    }

    /// Reads at least once more into the buffer.
    async fn fill(&mut self) -> Result<(), Failure> {
        self.buf.reserve(4096);
        match self.s.read_buf(&mut self.buf).await {
            Ok(0) => Err(Failure::new("amqp: connection closed by the server")),
            Ok(_) => Ok(()),
            Err(e) => Err(io_fail("amqp read", &e)),
        }
    }

    /// The next frame; a Close from the server is a failure with its error.
    async fn frame(&mut self) -> Result<FrameBody, Failure> {
        loop {
            match codec::next_frame(&mut self.buf, MAX_FRAME) {
                Ok(Some(f)) => {
                    if let FrameBody::Close(c) = &f.body {
                        return Err(Failure::new(format!(
                            "amqp: closed by the server: {}",
                            describe(c.error.as_ref())
                        )));
                    }
                    return Ok(f.body);
                }
                Ok(None) => self.fill().await?,
                Err(e) => return Err(amqp_fail("frame", e)),
            }
        }
    }

    async fn header(&mut self, want: &[u8; 8]) -> Result<(), Failure> {
        while self.buf.len() < 8 {
            self.fill().await?;
        }
        if &self.buf.split_to(8)[..] != want {
            return Err(Failure::new("amqp: unexpected protocol header from the server"));
        }
        Ok(())
    }

    async fn sasl_frame(&mut self) -> Result<SaslFrame, Failure> {
        loop {
            match sasl_frame::decode(&self.buf, 64 * 1024) {
                Ok(Some((f, n))) => {
                    let _ = self.buf.split_to(n);
                    return Ok(f);
                }
                Ok(None) => self.fill().await?,
                Err(e) => return Err(amqp_fail("sasl frame", e)),
            }
        }
    }

    /// SASL PLAIN: header, mechanisms (PLAIN offered), init, outcome ok.
    async fn sasl_plain(&mut self, username: &str, password: &str) -> Result<(), Failure> {
        self.s.write_all(SASL_HEADER).await.map_err(|e| io_fail("amqp write", &e))?;
        self.header(SASL_HEADER).await?;
        match self.sasl_frame().await? {
            SaslFrame::Mechanisms(m) if m.sasl_server_mechanisms.0.iter().any(|s| s.as_str() == "PLAIN") => {}
            SaslFrame::Mechanisms(_) => return Err(Failure::new("amqp: PLAIN not offered")),
            _ => return Err(Failure::new("amqp: no sasl-mechanisms")),
        }
        let mut response = Vec::with_capacity(2 + username.len() + password.len());
        response.push(0);
        response.extend_from_slice(username.as_bytes());
        response.push(0);
        response.extend_from_slice(password.as_bytes());
        let init = SaslFrame::Init(SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(response)),
            hostname: Some("localhost".into()),
        });
        let init = sasl_frame::encode(&init).map_err(|e| amqp_fail("encode", e))?;
        self.s.write_all(&init).await.map_err(|e| io_fail("amqp write", &e))?;
        match self.sasl_frame().await? {
            SaslFrame::Outcome(o) if o.code == SaslCode::Ok => Ok(()),
            SaslFrame::Outcome(o) => Err(Failure::new(format!("amqp: sasl-outcome {:?}", o.code))),
            _ => Err(Failure::new("amqp: no sasl-outcome")),
        }
    }

    /// Takes a Flow for our sender link into account.
    fn on_flow(&mut self, f: &Flow) {
        if f.handle.as_ref().map(|h| u32::from(h.clone())) == Some(TX) {
            let count = f.delivery_count.unwrap_or(self.next_delivery);
            self.tx_credit = count.wrapping_add(f.link_credit.unwrap_or(0)).wrapping_sub(self.next_delivery);
        }
    }

    /// Open, Begin, both links and the receiver's credit in one write, then their answers and
    /// the server's credit for our sender.
    async fn attach(&mut self, id: &str, address: &str) -> Result<(), Failure> {
        self.out.extend_from_slice(AMQP_HEADER);
        let open = Open {
            container_id: id.to_owned(),
            hostname: Some("localhost".into()),
            max_frame_size: MAX_FRAME.into(),
            channel_max: 0u16.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.put(&open, &[])?;
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: 0,
            incoming_window: WINDOW,
            outgoing_window: WINDOW,
            handle_max: 7u32.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.put(&begin, &[])?;
        self.put(&link("rheaReceiver_1", RX, Role::Receiver, address), &[])?;
        self.put(&link("rheaSender_1", TX, Role::Sender, address), &[])?;
        let flow = Flow {
            next_incoming_id: Some(0),
            incoming_window: WINDOW,
            next_outgoing_id: 0,
            outgoing_window: WINDOW,
            handle: Some(RX.into()),
            delivery_count: Some(0),
            link_credit: Some(RX_CREDIT),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        self.put(&flow, &[])?;
        self.flush().await?;
        self.header(AMQP_HEADER).await?;
        match self.frame().await? {
            FrameBody::Open(_) => {}
            other => return Err(Failure::new(format!("amqp: {} instead of open", name(&other)))),
        }
        match self.frame().await? {
            FrameBody::Begin(b) if b.remote_channel == Some(0) => {}
            other => return Err(Failure::new(format!("amqp: {} instead of begin", name(&other)))),
        }
        let (mut rx, mut tx) = (false, false);
        while !(rx && tx && self.tx_credit > 0) {
            match self.frame().await? {
                FrameBody::Attach(a) => match (u32::from(a.handle), a.role) {
                    (RX, Role::Sender) if !rx => rx = true,
                    (TX, Role::Receiver) if !tx => tx = true,
                    _ => return Err(Failure::new("amqp: unexpected attach")),
                },
                FrameBody::Flow(f) => self.on_flow(&f),
                FrameBody::Detach(d) => {
                    return Err(Failure::new(format!("amqp: link refused: {}", describe(d.error.as_ref()))))
                }
                FrameBody::Empty => {}
                other => return Err(Failure::new(format!("amqp: {} while attaching", name(&other)))),
            }
        }
        Ok(())
    }

    /// One request: sent with what `out` holds, accepted, answered on the receiver link with
    /// the same correlation id and one data section of JSON. The response is accepted with the
    /// next write.
    async fn ask(
        &mut self,
        operation: &str,
        operation_id: Option<&str>,
        body: Body<AmqpValueAny>,
        rid: u64,
    ) -> Result<Value, Failure> {
        while self.tx_credit == 0 {
            match self.frame().await? {
                FrameBody::Flow(f) => self.on_flow(&f),
                FrameBody::Empty => {}
                other => return Err(Failure::new(format!("amqp: {} while waiting for credit", name(&other)))),
            }
        }
        let payload = request(operation, operation_id, body, rid)?;
        let delivery_id = self.next_delivery;
        self.put(&codec::transfer(TX, delivery_id, false), &payload)?;
        self.next_delivery = self.next_delivery.wrapping_add(1);
        self.tx_credit -= 1;
        self.flush().await?;
        let mut accepted = false;
        let mut response: Option<(u32, Vec<u8>)> = None;
        let mut whole = false;
        while !(accepted && whole) {
            match self.frame().await? {
                FrameBody::Disposition(d) if matches!(d.role, Role::Receiver) && d.first == delivery_id => {
                    match d.state {
                        Some(DeliveryState::Accepted(_)) if d.settled => accepted = true,
                        Some(DeliveryState::Rejected(r)) => {
                            return Err(Failure::new(format!("amqp: request rejected: {}", describe(r.error.as_ref()))))
                        }
                        _ => return Err(Failure::new("amqp: request neither accepted nor rejected")),
                    }
                }
                FrameBody::Transfer { performative: t, payload } if u32::from(t.handle.clone()) == RX && !whole => {
                    match (&mut response, t.delivery_id) {
                        (None, Some(id)) => response = Some((id, payload.to_vec())),
                        (Some((_, bytes)), _) => bytes.extend_from_slice(&payload),
                        (None, None) => return Err(Failure::new("amqp: response without a delivery-id")),
                    }
                    whole = !t.more;
                    if t.settled == Some(true) {
                        return Err(Failure::new("amqp: response settled by the server; the device settles it"));
                    }
                }
                FrameBody::Flow(f) => self.on_flow(&f),
                FrameBody::Empty => {}
                other => return Err(Failure::new(format!("amqp: {} while waiting for a response", name(&other)))),
            }
        }
        let Some((response_id, bytes)) = response else { return Err(Failure::new("amqp: no response")) };
        let d = Disposition {
            role: Role::Receiver,
            first: response_id,
            last: None,
            settled: true,
            state: Some(DeliveryState::Accepted(Accepted {})),
            batchable: false,
        };
        self.put(&d, &[])?;
        let reader = serde_amqp::read::SliceReader::new(&bytes);
        let msg =
            Body::<AmqpValueAny>::decode_message_from_reader(reader).map_err(|e| amqp_fail("response message", e))?;
        if msg.properties.as_ref().and_then(|p| p.correlation_id.as_ref()) != Some(&MessageId::Ulong(rid)) {
            return Err(Failure::new("amqp: response with another correlation-id"));
        }
        let Body::Data(sections) = msg.body else {
            return Err(Failure::new("amqp: response is not a data section"));
        };
        if sections.len() != 1 {
            return Err(Failure::new("amqp: response is not exactly one data section"));
        }
        serde_json::from_slice(&sections[0].0).map_err(|_| Failure::new("amqp: response is not JSON"))
    }

    /// Detach both links, End, Close in one write (with the last response's acceptance); each
    /// must be answered.
    async fn close(mut self) -> Result<(), Failure> {
        self.put(&Detach { handle: TX.into(), closed: true, error: None }, &[])?;
        self.put(&Detach { handle: RX.into(), closed: true, error: None }, &[])?;
        self.put(&End { error: None }, &[])?;
        self.put(&Close { error: None }, &[])?;
        self.flush().await?;
        let (mut detached, mut ended) = (0u8, false);
        loop {
            match codec::next_frame(&mut self.buf, MAX_FRAME) {
                Ok(Some(f)) => match f.body {
                    FrameBody::Detach(d) if d.error.is_none() => detached |= 1 << u32::from(d.handle).min(7),
                    FrameBody::End(_) => ended = true,
                    FrameBody::Close(c) if c.error.is_none() && ended && detached == 0b11 => break,
                    FrameBody::Close(c) => {
                        return Err(Failure::new(format!(
                            "amqp: close before detach and end were answered: {}",
                            describe(c.error.as_ref())
                        )))
                    }
                    FrameBody::Flow(_) | FrameBody::Empty | FrameBody::Disposition(_) => {}
                    other => return Err(Failure::new(format!("amqp: {} while closing", name(&other)))),
                },
                Ok(None) => self.fill().await?,
                Err(e) => return Err(amqp_fail("frame", e)),
            }
        }
        let _ = self.s.shutdown().await;
        Ok(())
    }
}

/// TLS, SASL PLAIN with a key (none with a certificate), Open, Begin, both links attached.
pub async fn open(t: &Target, id: &str, auth: &Auth) -> Result<(LeanAmqp, Timing), Failure> {
    let AmqpTls { s, token, address, start, handshake, cipher } = amqp_tls(t, id, auth).await?;
    let mut c = LeanAmqp {
        s,
        buf: BytesMut::with_capacity(4096),
        out: Vec::with_capacity(1024),
        next_delivery: 0,
        tx_credit: 0,
    };
    if let Some(password) = token {
        c.sasl_plain(&address, &password).await?;
    }
    c.attach(id, &address).await?;
    Ok((c, Timing { total: start.elapsed(), handshake, cipher }))
}

/// One device: open, register, poll at once until assigned, close.
pub async fn register(t: &Target, id: &str, auth: &Auth) -> Result<Timing, Failure> {
    let start = Instant::now();
    let (mut c, timing) = open(t, id, auth).await?;
    let body = serde_json::json!({ "registrationId": id }).to_string().into_bytes();
    let mut status = c.ask("iotdps-register", None, Body::Data(vec![Data(Binary::from(body))].into()), 1).await?;
    if status["status"] != "assigning" && status["status"] != "assigned" {
        return Err(Failure::new(format!("amqp: register status {}", status["status"])));
    }
    let op_id = status["operationId"].as_str().ok_or_else(|| Failure::new("amqp: no operationId"))?.to_owned();
    let mut rid = 1;
    while status["status"] != "assigned" {
        if rid > MAX_POLLS as u64 {
            return Err(Failure::new(format!("still {} after {MAX_POLLS} polls", status["status"])));
        }
        rid += 1;
        let body = Body::Value(AmqpValue(AmqpValueAny::String(String::new())));
        status = c.ask("iotdps-get-operationstatus", Some(&op_id), body, rid).await?;
        if status["status"] != "assigning" && status["status"] != "assigned" {
            return Err(Failure::new(format!("amqp: poll status {}", status["status"])));
        }
    }
    c.close().await?;
    Ok(Timing { total: start.elapsed(), ..timing })
}
