//! The connection driver: header sniff → SASL (ours) or no SASL → fe2o3's no-SASL acceptor on a
//! stream that replays what we read → one session at a time → the two links → requests to the
//! device API. Every step before authentication is bounded in time; every bad input is answered
//! in AMQP's own terms (header, sasl-outcome, detach, rejected disposition, close), logged once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dps_core::device::{AuthOutcome, ConnectionFacts, Credential, DeviceReply, DeviceSession};
use dps_core::error::{Error, WireError};
use dps_core::service::Services;
use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle, ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::types::definitions::{self, AmqpError, ConnectionError, ErrorCondition, Role};
use fe2o3_amqp::types::messaging::{Body, Data, Message, TargetArchetype};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Delivery, Receiver, Sendable, Sender};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::address::{parse_link_address, same_device};
use crate::header::{self, Sniff};
use crate::mapping::{self, Answer, Operation};
use crate::replay::Replay;
use crate::sasl::driver::{self, SaslEnd};
use crate::sasl::{Identity, SaslLimits};

/// Limits and timeouts of the AMQP listener. `Default` is what DPS clients need.
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    /// For the 8-byte protocol header after TLS.
    pub header_timeout: Duration,
    /// The SASL phase (frame cap above 512 bytes, 10 s, 60 s for TPM).
    pub sasl: SaslLimits,
    /// From the header until the connection is authenticated: the AMQP Open, and without SASL
    /// the first link attach (which names the device).
    pub authenticate_timeout: Duration,
    /// `idle-time-out` we send in Open: a peer silent this long is closed.
    pub idle_timeout: Duration,
    /// `max-frame-size` we send in Open (and accept).
    pub max_frame_size: u32,
    /// `max-message-size` of the request link: a little above DPS's 96 KB so an oversized body
    /// gets a DPS 413 error; above this the link is detached with message-size-exceeded.
    pub max_message_size: u64,
    /// How long the device API may take for one call.
    pub call_timeout: Duration,
    /// How long a response may wait for the device's credit and disposition.
    pub response_timeout: Duration,
    /// How long our Close may wait for the device's.
    pub close_timeout: Duration,
    /// `container-id` in Open.
    pub container_id: String,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            header_timeout: Duration::from_secs(10),
            sasl: SaslLimits {
                max_frame: 8 * 1024,
                timeout: Duration::from_secs(10),
                tpm_timeout: Duration::from_secs(60),
            },
            authenticate_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(240),
            max_frame_size: 32 * 1024,
            max_message_size: (mapping::MAX_BODY + 8 * 1024) as u64,
            call_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            container_id: "opendps".to_owned(),
        }
    }
}

/// What the connection knows from below (TCP, TLS with the client chain that is the X.509
/// credential, and the transport: `Amqp` on 5671, `AmqpWs` over WebSockets) and the domain.
#[derive(Clone, Debug)]
pub struct ConnectionContext {
    pub facts: ConnectionFacts,
    pub services: Services,
    pub settings: Arc<AmqpSettings>,
}

/// Serves the DPS device API on one AMQP connection (already through TLS, or a WebSocket byte
/// stream). Returns when the connection is over; it never panics on peer input.
pub async fn serve_connection<S>(io: S, ctx: ConnectionContext, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut io = io;
    let peer = ctx.facts.peer;
    let settings = ctx.settings.clone();
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(512);
    let sniffed = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(settings.header_timeout, read_header(&mut io, &mut buf)) => r,
    };
    let sasl = match sniffed {
        Ok(Some(Sniff::Sasl)) => true,
        Ok(Some(Sniff::Amqp)) => false,
        Ok(Some(Sniff::Unsupported { reply })) => {
            let shown: String =
                buf.iter().take(8).map(|b| if b.is_ascii_graphic() { *b as char } else { '.' }).collect();
            tracing::info!(%peer, received = %shown, "amqp: not an AMQP 1.0 protocol header we serve; answered with ours and closed");
            let _ = io.write_all(&reply).await;
            close_after_refusal(io).await;
            return;
        }
        Ok(Some(Sniff::NeedMore) | None) => return,
        Err(_) => {
            tracing::info!(%peer, "amqp: no protocol header within {:?}; closing", settings.header_timeout);
            return;
        }
    };
    let _ = buf.split_to(8);
    let mut session = ctx.services.device_session(ctx.facts.clone());
    let (auth, prefix) = if sasl {
        let run = driver::run(&mut io, &mut buf, &mut session, None, settings.sasl, peer);
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = run => r,
        };
        match result {
            Ok(identity) => (Auth::Named(identity), buf.freeze()),
            Err(SaslEnd::Closed) => return,
            Err(SaslEnd::Failed { code, reason }) => {
                tracing::info!(%peer, code = ?code, reason = %reason, "amqp: SASL authentication failed");
                close_after_refusal(io).await;
                return;
            }
            Err(SaslEnd::Refused { code }) => {
                tracing::debug!(%peer, code = ?code, "amqp: SASL outcome for a refused device");
                close_after_refusal(io).await;
                return;
            }
        }
    } else {
        let mut prefix = BytesMut::with_capacity(8 + buf.len());
        prefix.extend_from_slice(&header::AMQP_HEADER);
        prefix.extend_from_slice(&buf);
        (Auth::Pending, prefix.freeze())
    };
    // The connection's lifetime ends here at the latest: a peer that never answers our Close
    // does not keep fe2o3's engine (and the socket) alive.
    let kill = CancellationToken::new();
    let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = Replay::new(prefix, io, settings.max_frame_size, peer, kill.clone(), reported.clone());
    let acceptor = ConnectionAcceptor::builder()
        .container_id(settings.container_id.clone())
        .max_frame_size(settings.max_frame_size)
        .channel_max(0u16)
        .idle_time_out(u32::try_from(settings.idle_timeout.as_millis()).unwrap_or(u32::MAX))
        .build();
    let auth_deadline = started + settings.authenticate_timeout;
    let opened = tokio::select! {
        () = shutdown.cancelled() => { kill.cancel(); return; }
        r = tokio::time::timeout_at(auth_deadline, acceptor.accept(stream)) => r,
    };
    let connection = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if !reported.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(%peer, error = %e, "amqp: connection not opened");
            }
            kill.cancel();
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "amqp: connection not opened within {:?}; closing", settings.authenticate_timeout);
            kill.cancel();
            return;
        }
    };
    let mut conn = Conn { ctx: &ctx, session: &mut session, auth, api_version: None, auth_deadline };
    conn.run(connection, &shutdown).await;
    kill.cancel();
}

/// Reads until the first 8 bytes are known (or are known not to be a header we serve).
async fn read_header<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> Option<Sniff> {
    loop {
        match header::sniff(buf) {
            Sniff::NeedMore => {}
            other => return Some(other),
        }
        buf.reserve(64);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// After refusing (a header or a failed SASL outcome): close our side, then give the client a
/// moment to read the answer and close its own (dropping at once makes some clients report a
/// write-after-end instead of the refusal).
async fn close_after_refusal<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let _ = io.flush().await;
    let _ = io.shutdown().await;
    let mut sink = [0u8; 1024];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while drained < 64 * 1024 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Who the connection is.
#[derive(Debug)]
enum Auth {
    /// The device the connection authenticated as: by SASL, or (without SASL) by its TLS chain
    /// when the first attach named it. If that failed, links may still attach, and the device
    /// session answers every request with the refusal (as on the other transports).
    Named(Identity),
    /// No SASL, and no link has named the device yet.
    Pending,
}

struct Conn<'a> {
    ctx: &'a ConnectionContext,
    session: &'a mut DeviceSession,
    auth: Auth,
    api_version: Option<String>,
    auth_deadline: Instant,
}

enum SessionEnd {
    /// The peer ended the session; the connection goes on.
    Ended,
    /// Stop serving this connection.
    Stop,
}

enum Event {
    Shutdown,
    AuthTimeout,
    Attach(Option<Box<Attach>>),
    Delivery(Box<Result<Delivery<Body<Value>>, RecvError>>),
    SenderDetached,
}

/// Links of one session: at most one of each direction.
#[derive(Default)]
struct Links {
    /// Ours, the device's receiver: responses go here.
    sender: Option<Sender>,
    /// Ours, the device's sender: requests come from here.
    receiver: Option<Receiver>,
    /// Responses waiting for a sender link (a client may attach its receiver second).
    waiting: VecDeque<Message<Data>>,
}

/// Responses held for a sender link that is not there yet.
const MAX_WAITING: usize = 4;

async fn next_delivery(receiver: &mut Option<Receiver>) -> Result<Delivery<Body<Value>>, RecvError> {
    match receiver {
        Some(r) => r.recv::<Body<Value>>().await,
        None => std::future::pending().await,
    }
}

async fn sender_detached(sender: &mut Option<Sender>) {
    match sender {
        Some(s) => {
            let _ = s.on_detach().await;
        }
        None => std::future::pending().await,
    }
}

fn condition_error(condition: ErrorCondition, e: &WireError) -> definitions::Error {
    definitions::Error { condition, description: Some(e.body().to_string()), info: None }
}

fn attach_address(attach: &Attach) -> Option<String> {
    match attach.role {
        // The device sends requests: the address is its target.
        Role::Sender => attach.target.as_deref().and_then(|t| {
            #[allow(unreachable_patterns)]
            match t {
                TargetArchetype::Target(t) => t.address.clone(),
                _ => None,
            }
        }),
        // The device receives responses: the address is its source.
        Role::Receiver => attach.source.as_deref().and_then(|s| s.address.clone()),
    }
}

fn attach_api_version(attach: &Attach) -> Option<String> {
    match attach.properties.as_ref()?.get(&Symbol::from("com.microsoft:api-version"))? {
        Value::String(s) => Some(s.chars().take(64).collect()),
        _ => None,
    }
}

impl Conn<'_> {
    fn peer(&self) -> SocketAddr {
        self.ctx.facts.peer
    }

    /// The DPS error body of an error this adapter decides (not logged: the caller logs once).
    fn wire(&self, e: &Error) -> WireError {
        self.ctx.services.wire_error(e)
    }

    async fn run(&mut self, mut connection: ListenerConnectionHandle, shutdown: &CancellationToken) {
        let settings = self.ctx.settings.clone();
        loop {
            let pending = matches!(self.auth, Auth::Pending);
            let incoming = tokio::select! {
                () = shutdown.cancelled() => {
                    let e = definitions::Error::new(ConnectionError::ConnectionForced, Some("the server is shutting down".to_owned()), None);
                    let _ = tokio::time::timeout(settings.close_timeout, connection.close_with_error(e)).await;
                    return;
                }
                () = tokio::time::sleep_until(self.auth_deadline), if pending => {
                    self.refuse_unauthenticated(&mut connection).await;
                    return;
                }
                s = connection.next_incoming_session() => s,
            };
            let Some(incoming) = incoming else {
                // The peer closed; fe2o3 has answered.
                let _ = tokio::time::timeout(settings.close_timeout, connection.on_close()).await;
                return;
            };
            let acceptor = SessionAcceptor::builder().handle_max(7u32).build();
            let mut session = match acceptor.accept_incoming_session(incoming, &mut connection).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(peer = %self.peer(), error = %e, "amqp: session not begun");
                    let _ = tokio::time::timeout(settings.close_timeout, connection.close()).await;
                    return;
                }
            };
            match self.run_session(&mut session, shutdown).await {
                SessionEnd::Ended => {
                    let _ = tokio::time::timeout(settings.close_timeout, session.end()).await;
                }
                SessionEnd::Stop => {
                    drop(session);
                    if matches!(self.auth, Auth::Pending) {
                        self.refuse_unauthenticated(&mut connection).await;
                    } else if shutdown.is_cancelled() {
                        let e = definitions::Error::new(
                            ConnectionError::ConnectionForced,
                            Some("the server is shutting down".to_owned()),
                            None,
                        );
                        let _ = tokio::time::timeout(settings.close_timeout, connection.close_with_error(e)).await;
                    } else {
                        let _ = tokio::time::timeout(settings.close_timeout, connection.close()).await;
                    }
                    return;
                }
            }
        }
    }

    async fn refuse_unauthenticated(&mut self, connection: &mut ListenerConnectionHandle) {
        let settings = &self.ctx.settings;
        tracing::info!(peer = %self.peer(), "amqp: no link named the device within {:?}; closing", settings.authenticate_timeout);
        let e =
            self.wire(&Error::Unauthorized("no link named {idScope}/registrations/{registrationId} in time".into()));
        let err = condition_error(ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), &e);
        let _ = tokio::time::timeout(settings.close_timeout, connection.close_with_error(err)).await;
    }

    async fn run_session(&mut self, session: &mut ListenerSessionHandle, shutdown: &CancellationToken) -> SessionEnd {
        let mut links = Links::default();
        loop {
            let pending = matches!(self.auth, Auth::Pending);
            let event = tokio::select! {
                () = shutdown.cancelled() => Event::Shutdown,
                () = tokio::time::sleep_until(self.auth_deadline), if pending => Event::AuthTimeout,
                a = session.next_incoming_attach() => Event::Attach(a.map(Box::new)),
                d = next_delivery(&mut links.receiver) => Event::Delivery(Box::new(d)),
                () = sender_detached(&mut links.sender) => Event::SenderDetached,
            };
            match event {
                Event::Delivery(d) => self.on_delivery_result(*d, &mut links).await,
                Event::Shutdown | Event::AuthTimeout => return SessionEnd::Stop,
                Event::Attach(None) => return SessionEnd::Ended,
                Event::Attach(Some(attach)) => self.on_attach(*attach, session, &mut links).await,
                Event::SenderDetached => links.sender = None,
            }
        }
    }

    async fn on_delivery_result(&mut self, d: Result<Delivery<Body<Value>>, RecvError>, links: &mut Links) {
        match d {
            Ok(delivery) => self.on_delivery(delivery, links).await,
            Err(RecvError::MessageDecode(e)) => {
                tracing::info!(peer = %self.peer(), error = %e.source, "amqp: request message does not decode");
                let err = mapping::rejection(
                    &self.wire(&Error::Invalid(format!("the message does not decode: {}", e.source))),
                );
                if let Some(r) = &links.receiver {
                    let _ = r.reject(e.info, err).await;
                }
            }
            Err(RecvError::MessageSizeExceeded(e)) => {
                tracing::info!(peer = %self.peer(), error = %e, "amqp: request larger than the link's max-message-size; link detached");
                links.receiver = None;
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer(), error = %e, "amqp: request link ended");
                links.receiver = None;
            }
        }
    }

    /// Checks an attach against the connection's identity (authenticating it first when there
    /// was no SASL), then accepts it, or accepts and at once closes it with the reason.
    async fn on_attach(&mut self, attach: Attach, session: &mut ListenerSessionHandle, links: &mut Links) {
        let address = attach_address(&attach);
        let api_version = attach_api_version(&attach);
        let fresh_api_version = api_version.is_some() && api_version != self.api_version;
        if api_version.is_some() {
            self.api_version.clone_from(&api_version);
        }
        let named = address.as_deref().and_then(parse_link_address);
        let unauthorized = |this: &Self, e: Error| {
            condition_error(ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), &this.wire(&e))
        };
        let verdict = match (&self.auth, named) {
            (_, None) => Err(unauthorized(
                self,
                Error::Unauthorized(format!(
                    "link address {:?} is not {{idScope}}/registrations/{{registrationId}}",
                    address.as_deref().unwrap_or("").chars().take(300).collect::<String>()
                )),
            )),
            (Auth::Pending, Some(identity)) => {
                self.authenticate_x509(identity).await;
                Ok(())
            }
            (Auth::Named(me), Some(named)) => {
                if !same_device(me, &named) {
                    Err(unauthorized(self, Error::Unauthorized(format!(
                        "the link names registration {:?} in ID scope {:?}; this connection is registration {:?} in ID scope {:?}",
                        named.registration_id, named.id_scope, me.registration_id, me.id_scope
                    ))))
                } else if let (true, Some(v)) = (fresh_api_version, api_version.as_deref()) {
                    // After SASL the links are the first place the api-version appears.
                    self.session.set_api_version(v).map_err(|e| mapping::rejection(&e))
                } else {
                    Ok(())
                }
            }
        };
        let link_name = attach.name.clone();
        let acceptor = LinkAcceptor::builder().max_message_size(self.ctx.settings.max_message_size).build();
        let endpoint = match acceptor.accept_incoming_attach(attach, session).await {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(peer = %self.peer(), link = %link_name, error = %e, "amqp: link not attached");
                return;
            }
        };
        let refusal = match (&verdict, &endpoint) {
            (Err(e), _) => Some(e.clone()),
            (Ok(()), LinkEndpoint::Sender(_)) if links.sender.is_some() => {
                Some(limit_error("a response link is already attached"))
            }
            (Ok(()), LinkEndpoint::Receiver(_)) if links.receiver.is_some() => {
                Some(limit_error("a request link is already attached"))
            }
            _ => None,
        };
        if let Some(err) = refusal {
            tracing::info!(
                peer = %self.peer(),
                link = %link_name,
                reason = %err.description.as_deref().unwrap_or(""),
                "amqp: link refused"
            );
            let closed = match endpoint {
                LinkEndpoint::Sender(s) => s.close_with_error(err).await.map_err(|e| e.to_string()),
                LinkEndpoint::Receiver(r) => r.close_with_error(err).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = closed {
                tracing::debug!(peer = %self.peer(), error = %e, "amqp: refused link did not close cleanly");
            }
            return;
        }
        match endpoint {
            LinkEndpoint::Sender(s) => {
                links.sender = Some(s);
                while let Some(msg) = links.waiting.pop_front() {
                    send_response(&self.ctx.settings, self.ctx.facts.peer, links, msg).await;
                }
            }
            LinkEndpoint::Receiver(r) => links.receiver = Some(r),
        }
    }

    /// No SASL: the device is the one the link names, proved by its TLS client chain.
    async fn authenticate_x509(&mut self, identity: Identity) {
        let asked = self.session.authenticate(
            &identity.id_scope,
            &identity.registration_id,
            self.api_version.as_deref(),
            Credential::ClientCertificate,
        );
        match tokio::time::timeout(self.ctx.settings.call_timeout, asked).await {
            // A refusal is logged by the session, which answers every request with it.
            Ok(AuthOutcome::Attested | AuthOutcome::Refused(_)) => {}
            Ok(AuthOutcome::Challenge { .. }) => {
                tracing::info!(peer = %self.peer(), registration_id = %identity.registration_id, "amqp: a TPM challenge without SASL; requests will be refused");
            }
            Err(_) => {
                tracing::warn!(peer = %self.peer(), registration_id = %identity.registration_id, "amqp: authentication by the TLS client certificate timed out; requests will be refused");
            }
        }
        self.auth = Auth::Named(identity);
    }

    async fn on_delivery(&mut self, delivery: Delivery<Body<Value>>, links: &mut Links) {
        let info = DeliveryInfo::from(&delivery);
        let parsed = mapping::parse_request(delivery.message());
        drop(delivery);
        let answer = match (parsed, &self.auth) {
            (Err(e), _) => {
                tracing::info!(peer = %self.peer(), reason = %e, "amqp: request refused");
                Answer::Reject(mapping::rejection(&self.wire(&e.error())))
            }
            (Ok(_), Auth::Pending) => {
                tracing::info!(peer = %self.peer(), "amqp: request before any link named the device; refused");
                Answer::Reject(mapping::rejection(
                    &self.wire(&Error::Unauthorized("the connection is not authenticated".into())),
                ))
            }
            (Ok(request), Auth::Named(_)) => {
                let op = match &request.operation {
                    Operation::Register { body } => dps_core::device::Operation::Register { body },
                    Operation::OperationStatus { operation_id } => {
                        dps_core::device::Operation::OperationStatus { operation_id }
                    }
                };
                let reply = match tokio::time::timeout(self.ctx.settings.call_timeout, self.session.handle(op)).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(peer = %self.peer(), "amqp: device API call timed out");
                        DeviceReply::Error(self.ctx.services.wire(
                            500,
                            500_000,
                            "the service failed to complete the request; try again".into(),
                        ))
                    }
                };
                mapping::answer(&reply, request.correlation_id)
            }
        };
        let Some(receiver) = &links.receiver else { return };
        match answer {
            Answer::Reject(err) => {
                let _ = receiver.reject(info, err).await;
            }
            Answer::Respond(msg) => {
                // Settle the request first (the device's send completes on it), then answer.
                let _ = receiver.accept(info).await;
                if links.sender.is_some() {
                    send_response(&self.ctx.settings, self.ctx.facts.peer, links, *msg).await;
                } else if links.waiting.len() < MAX_WAITING {
                    links.waiting.push_back(*msg);
                } else {
                    tracing::info!(peer = %self.peer(), "amqp: responses pile up without a response link; dropping one");
                }
            }
        }
    }
}

/// Sends a response on the sender link, waiting (bounded) for the device's credit and settlement.
async fn send_response(settings: &AmqpSettings, peer: SocketAddr, links: &mut Links, msg: Message<Data>) {
    let Some(sender) = links.sender.as_mut() else { return };
    let sendable = Sendable::builder().message(msg).settled(false).build();
    match tokio::time::timeout(settings.response_timeout, sender.send(sendable)).await {
        Ok(Ok(_outcome)) => {}
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "amqp: response not delivered");
            links.sender = None;
        }
        Err(_) => {
            tracing::info!(%peer, "amqp: response not settled within {:?}", settings.response_timeout);
        }
    }
}

fn limit_error(message: &str) -> definitions::Error {
    definitions::Error {
        condition: ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
        description: Some(message.to_owned()),
        info: None,
    }
}
