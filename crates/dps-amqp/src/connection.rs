//! The connection driver: header sniff → SASL (ours) or no SASL → our AMQP engine: one task,
//! one read buffer, the connection, one session at a time and the device's two links as plain
//! state, the frames decoded and encoded with `fe2o3-amqp`'s types ([`crate::codec`]) →
//! requests to the device API. Every step before authentication is bounded in time; every bad
//! input is answered in AMQP's own terms (header, sasl-outcome, detach, rejected disposition,
//! close), logged once.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dps_core::device::{ApiVersion, AuthOutcome, ConnectionFacts, Credential, DeviceReply, DeviceSession};
use dps_core::error::{Error, WireError};
use dps_core::service::Services;
use fe2o3_amqp::frames::amqp::{Frame, FrameBody};
use fe2o3_amqp::types::definitions::{
    self, AmqpError, ConnectionError, ErrorCondition, LinkError, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::{Accepted, Data, DeliveryState, Message, Rejected, TargetArchetype};
use fe2o3_amqp::types::performatives::{Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Transfer};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::address::{parse_link_address, same_device};
use crate::codec::{self, FrameError};
use crate::header::{self, Sniff};
use crate::mapping::{self, Answer, Operation};
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
            Box::pin(close_after_refusal(io)).await;
            return;
        }
        Ok(Some(Sniff::NeedMore) | None) => return,
        Err(_) => {
            tracing::info!(%peer, "amqp: no protocol header within {:?}; closing", settings.header_timeout);
            return;
        }
    };
    let _ = buf.split_to(8);
    // Held here for the whole connection; `Conn` borrows the slot, and a device-API call takes
    // the session out of it and puts it back (so it is neither boxed nor held twice).
    let mut session = Some(ctx.services.device_session(ctx.facts.clone()));
    let auth = if sasl {
        // Boxed: the SASL future is large and lives only during the exchange.
        let Some(device) = session.as_mut() else { return };
        let run = Box::pin(driver::run(&mut io, &mut buf, device, None, settings.sasl, peer));
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = run => r,
        };
        match result {
            Ok(identity) => Auth::Named(identity),
            Err(SaslEnd::Closed) => return,
            Err(SaslEnd::Failed { code, reason }) => {
                tracing::info!(%peer, code = ?code, reason = %reason, "amqp: SASL authentication failed");
                Box::pin(close_after_refusal(io)).await;
                return;
            }
            Err(SaslEnd::Refused { code }) => {
                tracing::debug!(%peer, code = ?code, "amqp: SASL outcome for a refused device");
                Box::pin(close_after_refusal(io)).await;
                return;
            }
        }
    } else {
        Auth::Pending
    };
    let mut conn = Conn {
        io,
        buf,
        out: Vec::new(),
        ctx: &ctx,
        session: &mut session,
        api_version_stale: false,
        running: None,
        queued: VecDeque::new(),
        request_links: 0,
        auth,
        api_version: None,
        auth_deadline: started + settings.authenticate_timeout,
        peer_max_frame: 512,
        heartbeat: None,
        last_sent: Instant::now(),
        last_received: Instant::now(),
        rest_at: Some(Instant::now() + DeviceSession::REST_AFTER),
        open_sent: false,
        sess: None,
    };
    conn.serve(sasl, &shutdown).await;
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

/// Link credit we grant the device's request link (given back after each request).
const CREDIT: u32 = 8;
/// Our session's incoming window (transfer frames); renewed whenever it falls to half.
const INCOMING_WINDOW: u32 = 2048;
/// Our session's outgoing window as we announce it.
const OUTGOING_WINDOW: u32 = 2048;
/// Highest link handle: a session has at most a few links, each handle is a bit of a `u8`.
const HANDLE_MAX: u32 = 7;
/// Responses held for a sender link (or credit) that is not there yet.
const MAX_WAITING: usize = 4;
/// Requests a connection may have at the device API at once: one running, the rest queued in
/// order. A request over this is rejected as throttled.
const MAX_CALLS: usize = 4;
/// A read buffer larger than this is given back once it is empty (idle connections stay small).
const IDLE_BUFFER: usize = 2 * 1024;
/// Queued output past which it is written before the next frame is read: one TLS record.
const FLUSH_AT: usize = 16 * 1024;
/// The read buffer an idle connection waits with.
const READ_CHUNK: usize = 256;

/// The connection is over (the peer is gone, or we closed it); nothing more is sent.
struct Stop;

type Step = Result<(), Stop>;

/// Our sender link: the device's receiver, where responses go.
struct Out {
    handle: u32,
    delivery_count: u32,
    credit: u32,
    /// The device asked for settled deliveries (`snd-settle-mode` settled).
    presettled: bool,
}

/// Our receiver link: the device's sender, where requests come from.
struct In {
    handle: u32,
    /// Which attach of a request link this is (on this connection): a call's answer goes out
    /// only on the link its request came from.
    generation: u32,
    delivery_count: u32,
    /// The delivery being gathered from transfers with `more`.
    partial: Option<Partial>,
}

struct Partial {
    delivery_id: u32,
    settled: bool,
    payload: Vec<u8>,
}

/// A request admitted to the device API, queued or running.
struct Call {
    delivery_id: u32,
    settled: bool,
    handle: u32,
    /// The request link's `In::generation`.
    link: u32,
    request: mapping::Request,
}

/// A call running: it owns the device session while it runs and hands it back with the
/// answer already made (the device API's reply is large: it stays in the call's own
/// allocation, not in the connection's future).
type Running = Pin<Box<dyn Future<Output = Box<Done>> + Send>>;

struct Done {
    session: DeviceSession,
    delivery_id: u32,
    settled: bool,
    handle: u32,
    link: u32,
    answer: Answer,
}

/// The one session (state of AMQP 1.0 §2.5.6 and the two links).
struct Sess {
    /// The device's channel for it (ours is 0).
    channel: u16,
    next_outgoing_id: u32,
    next_incoming_id: u32,
    incoming_window: u32,
    remote_incoming_window: u32,
    sender: Option<Out>,
    receiver: Option<In>,
    /// Responses waiting for the sender link or its credit.
    waiting: VecDeque<Message<Data>>,
    /// Handles we detached (refused) whose detach from the device is still to come: not answered.
    detaching: u8,
}

impl Sess {
    fn handle_in_use(&self, handle: u32) -> bool {
        self.sender.as_ref().is_some_and(|o| o.handle == handle)
            || self.receiver.as_ref().is_some_and(|i| i.handle == handle)
            || self.detaching & bit(handle) != 0
    }
}

fn bit(handle: u32) -> u8 {
    if handle <= HANDLE_MAX {
        1 << handle
    } else {
        0
    }
}

struct Conn<'a, S> {
    io: S,
    /// The one read buffer: grown to the frame being read, given back when idle.
    buf: BytesMut,
    /// Frames encoded but not yet written. What answers the frames of one read goes out
    /// together, in one TLS record and one `send`, before the connection reads or waits
    /// again ([`Conn::flush`]); it was a record and a `send` per frame, about ten per
    /// registration (docs/amqp.md, "Writes").
    out: Vec<u8>,
    ctx: &'a ConnectionContext,
    /// The device session; away (`None`) while a call runs, which owns it.
    session: &'a mut Option<DeviceSession>,
    /// A link brought a new api-version while the session was away: applied when it is back.
    api_version_stale: bool,
    /// The device-API call running, polled by the frame loop beside the socket.
    running: Option<Running>,
    /// Admitted requests waiting for the running call to end (at most `MAX_CALLS` - 1).
    queued: VecDeque<Call>,
    /// Request links attached so far (the next one's generation).
    request_links: u32,
    auth: Auth,
    api_version: Option<String>,
    auth_deadline: Instant,
    /// Our frames stay within the device's `max-frame-size`.
    peer_max_frame: usize,
    /// Half the device's `idle-time-out`: we send an empty frame when silent this long.
    heartbeat: Option<Duration>,
    last_sent: Instant,
    last_received: Instant,
    /// When the device session rests (`DeviceSession::rest`) if no request comes before.
    rest_at: Option<Instant>,
    open_sent: bool,
    sess: Option<Sess>,
}

enum Wake {
    Shutdown,
    AuthTimeout,
    Idle,
    Rest,
    Heartbeat,
    Read(std::io::Result<usize>),
    Done(Box<Done>),
}

/// The running call's end (never, when none runs).
async fn finished(running: &mut Option<Running>) -> Box<Done> {
    match running {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

fn condition_error(condition: ErrorCondition, e: &WireError) -> definitions::Error {
    definitions::Error { condition, description: Some(e.body().to_string()), info: None }
}

fn error(condition: ErrorCondition, message: &str) -> definitions::Error {
    definitions::Error { condition, description: Some(message.to_owned()), info: None }
}

fn limit_error(message: &str) -> definitions::Error {
    error(ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded), message)
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

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    fn peer(&self) -> SocketAddr {
        self.ctx.facts.peer
    }

    fn settings(&self) -> &AmqpSettings {
        &self.ctx.settings
    }

    /// The DPS error body of an error this adapter decides (not logged: the caller logs once).
    fn wire(&self, e: &Error) -> WireError {
        self.ctx.services.wire_error(e)
    }

    async fn serve(&mut self, sasl: bool, shutdown: &CancellationToken) {
        let deadline = self.auth_deadline;
        let opened = tokio::select! {
            () = shutdown.cancelled() => return,
            // Boxed, as each frame's handling is below: what the connection holds while the
            // device idles is the frame loop's wait, not the largest step it ever takes.
            r = tokio::time::timeout_at(deadline, Box::pin(self.open(sasl))) => r,
        };
        match opened {
            Ok(Ok(())) => {}
            Ok(Err(Stop)) => {
                let _ = self.flush().await;
                return;
            }
            Err(_) => {
                tracing::info!(peer = %self.peer(), "amqp: connection not opened within {:?}; closing", self.settings().authenticate_timeout);
                let _ = self.flush().await;
                let _ = self.io.shutdown().await;
                return;
            }
        }
        let _ = self.run(shutdown).await;
        // A frame loop that stopped may have answered first (a refusal, our Close).
        let _ = self.flush().await;
    }

    /// The AMQP header (after SASL the client sends it again), then the device's Open and ours.
    async fn open(&mut self, sasl: bool) -> Step {
        if sasl {
            while self.buf.len() < 8 {
                self.fill(8).await?;
            }
            let got = self.buf.split_to(8);
            if got[..] != header::AMQP_HEADER {
                tracing::info!(peer = %self.peer(), "amqp: after SASL, not the AMQP 1.0 protocol header; answered with ours and closed");
                let _ = self.io.write_all(&header::AMQP_HEADER).await;
                let _ = self.io.shutdown().await;
                return Err(Stop);
            }
        }
        self.write(&header::AMQP_HEADER).await?;
        let max = self.settings().max_frame_size;
        let frame = loop {
            match codec::next_frame(&mut self.buf, max) {
                Ok(Some(f)) => break f,
                Ok(None) => {
                    let need = codec::missing(&self.buf, max);
                    self.fill(need).await?;
                }
                Err(e) => return self.malformed(&e).await,
            }
        };
        let FrameBody::Open(open) = frame.body else {
            return self.violation("the first frame is not an open").await;
        };
        self.last_received = Instant::now();
        let theirs = usize::try_from(open.max_frame_size.0).unwrap_or(usize::MAX);
        self.peer_max_frame = theirs.clamp(512, self.settings().max_frame_size as usize);
        self.heartbeat = open
            .idle_time_out
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(u64::from(ms) / 2).max(Duration::from_millis(500)));
        self.send_open().await
    }

    async fn send_open(&mut self) -> Step {
        let s = self.settings();
        let ours = Open {
            container_id: s.container_id.clone(),
            hostname: None,
            max_frame_size: s.max_frame_size.into(),
            channel_max: 0u16.into(),
            idle_time_out: Some(u32::try_from(s.idle_timeout.as_millis()).unwrap_or(u32::MAX)),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.open_sent = true;
        self.send(0, &ours, &[]).await
    }

    /// Reads at least once more, with room for `need` more bytes (0: a small chunk); what is
    /// waiting to be written goes first.
    async fn fill(&mut self, need: usize) -> Step {
        self.flush().await?;
        self.buf.reserve(need.max(READ_CHUNK.saturating_sub(self.buf.len())));
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(Stop),
            Ok(_) => Ok(()),
        }
    }

    /// Queues `bytes` behind the frames already waiting ([`Conn::flush`] writes them).
    async fn write(&mut self, bytes: &[u8]) -> Step {
        self.out.extend_from_slice(bytes);
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Step {
        if self.out.len() >= FLUSH_AT {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Writes the frames waiting in `out`, if any, and lets the buffer go (an idle connection
    /// keeps none).
    async fn flush(&mut self) -> Step {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let written = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        };
        match written.await {
            Ok(()) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Err(e) => {
                tracing::debug!(peer = %self.ctx.facts.peer, error = %e, "amqp: write failed");
                Err(Stop)
            }
        }
    }

    async fn send<P: Serialize>(&mut self, channel: u16, performative: &P, payload: &[u8]) -> Step {
        // `encode` writes nothing unless the whole frame encodes.
        if let Err(e) = codec::encode(&mut self.out, channel, performative, payload) {
            tracing::warn!(peer = %self.peer(), error = %e, "amqp: a frame of ours does not encode");
            return Err(Stop);
        }
        self.flush_if_full().await
    }

    /// The frame loop: one frame at a time from the buffer, else wait for bytes, a deadline or
    /// shutdown. Every step but the wait runs boxed: the loop's own future is what an idle
    /// connection holds.
    async fn run(&mut self, shutdown: &CancellationToken) -> Step {
        let max = self.settings().max_frame_size;
        loop {
            match codec::next_frame(&mut self.buf, max) {
                Ok(Some(frame)) => {
                    self.last_received = Instant::now();
                    Box::pin(self.on_frame(frame)).await?;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Box::pin(self.malformed(&e)).await,
            }
            // Every frame read so far is answered: the answers go out before the wait.
            self.flush().await?;
            if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER {
                self.buf = BytesMut::new();
            }
            let need = codec::missing(&self.buf, max);
            self.buf.reserve(need.max(READ_CHUNK.saturating_sub(self.buf.len())));
            let pending = matches!(self.auth, Auth::Pending);
            let idle_at = self.last_received + self.settings().idle_timeout;
            let beat_at = self.heartbeat.map(|h| self.last_sent + h);
            let calling = self.running.is_some();
            // The session rests once no request has run for a while (never during a call).
            let rest_at = self.rest_at.filter(|_| !calling && self.queued.is_empty());
            // One timer for every deadline; when it fires, the first one due (in this order)
            // is the one acted on.
            let auth_at = pending.then_some(self.auth_deadline);
            let wake_at = [auth_at, rest_at, beat_at].into_iter().flatten().fold(idle_at, Instant::min);
            let wake = tokio::select! {
                () = shutdown.cancelled() => Wake::Shutdown,
                done = finished(&mut self.running), if calling => Wake::Done(done),
                () = tokio::time::sleep_until(wake_at) => {
                    let now = Instant::now();
                    let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
                    if due(auth_at) {
                        Wake::AuthTimeout
                    } else if due(rest_at) {
                        Wake::Rest
                    } else if idle_at <= now {
                        Wake::Idle
                    } else {
                        Wake::Heartbeat
                    }
                }
                r = self.io.read_buf(&mut self.buf) => Wake::Read(r),
            };
            match wake {
                Wake::Read(Ok(0)) => return Err(Stop),
                Wake::Read(Err(e)) => {
                    tracing::debug!(peer = %self.peer(), error = %e, "amqp: read failed");
                    return Err(Stop);
                }
                Wake::Read(Ok(_)) => {}
                Wake::Done(done) => {
                    self.running = None;
                    Box::pin(self.on_done(done)).await?;
                }
                Wake::Heartbeat => self.write(&codec::EMPTY_FRAME).await?,
                Wake::Rest => {
                    if let Some(device) = self.session.as_mut() {
                        device.rest();
                    }
                    self.rest_at = None;
                }
                Wake::Shutdown => {
                    let e = error(
                        ErrorCondition::ConnectionError(ConnectionError::ConnectionForced),
                        "the server is shutting down",
                    );
                    return Box::pin(self.close(Some(e))).await;
                }
                Wake::AuthTimeout => return Box::pin(self.refuse_unauthenticated()).await,
                Wake::Idle => {
                    tracing::info!(peer = %self.peer(), "amqp: nothing received within our idle-time-out of {:?}; closing", self.settings().idle_timeout);
                    let e = limit_error("idle-time-out exceeded");
                    return Box::pin(self.close(Some(e))).await;
                }
            }
        }
    }

    /// Sends our Close (after our Open, if it was not sent), waits a while for the device's,
    /// then ends the stream.
    async fn close(&mut self, e: Option<definitions::Error>) -> Step {
        if !self.open_sent {
            self.send_open().await?;
        }
        self.send(0, &Close { error: e }, &[]).await?;
        self.flush().await?;
        let max = self.settings().max_frame_size;
        let close_timeout = self.settings().close_timeout;
        let wait = async {
            loop {
                match codec::next_frame(&mut self.buf, max) {
                    Ok(Some(Frame { body: FrameBody::Close(_), .. })) | Err(_) => return,
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                }
                let need = codec::missing(&self.buf, max);
                if self.fill(need).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(close_timeout, wait).await;
        let _ = self.io.shutdown().await;
        Err(Stop)
    }

    /// A frame that is not AMQP: logged once, the connection closed with a framing error.
    async fn malformed(&mut self, e: &FrameError) -> Step {
        tracing::info!(peer = %self.peer(), reason = %e, "amqp: malformed frame; closing the connection");
        self.buf.clear();
        if !self.open_sent {
            self.send_open().await?;
        }
        let err = error(ErrorCondition::ConnectionError(ConnectionError::FramingError), &e.to_string());
        self.send(0, &Close { error: Some(err) }, &[]).await?;
        self.flush().await?;
        close_after_refusal(&mut self.io).await;
        Err(Stop)
    }

    /// A frame out of place (AMQP's rules, not DPS's): logged once, the connection closed.
    async fn violation(&mut self, reason: &str) -> Step {
        tracing::info!(peer = %self.peer(), reason = %reason, "amqp: protocol violation; closing the connection");
        self.close(Some(error(ErrorCondition::AmqpError(AmqpError::NotAllowed), reason))).await
    }

    async fn refuse_unauthenticated(&mut self) -> Step {
        tracing::info!(peer = %self.peer(), "amqp: no link named the device within {:?}; closing", self.settings().authenticate_timeout);
        let e =
            self.wire(&Error::Unauthorized("no link named {idScope}/registrations/{registrationId} in time".into()));
        let err = condition_error(ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), &e);
        self.close(Some(err)).await
    }

    async fn on_frame(&mut self, frame: Frame) -> Step {
        let channel = frame.channel;
        match frame.body {
            FrameBody::Empty => Ok(()),
            FrameBody::Close(_) => {
                // Answered, then the connection is over.
                let _ = self.send(0, &Close { error: None }, &[]).await;
                let _ = self.flush().await;
                let _ = self.io.shutdown().await;
                Err(Stop)
            }
            FrameBody::Open(_) => self.violation("a second open").await,
            FrameBody::Begin(b) => self.on_begin(channel, b).await,
            body => {
                if self.sess.as_ref().map(|s| s.channel) != Some(channel) {
                    return self.violation("a frame on a channel without a session").await;
                }
                match body {
                    FrameBody::End(_) => {
                        self.sess = None;
                        self.send(0, &End { error: None }, &[]).await
                    }
                    FrameBody::Attach(a) => self.on_attach(a).await,
                    FrameBody::Flow(f) => self.on_flow(f).await,
                    FrameBody::Transfer { performative, payload } => self.on_transfer(performative, &payload).await,
                    FrameBody::Disposition(d) => self.on_disposition(d).await,
                    FrameBody::Detach(d) => self.on_detach(d).await,
                    _ => Ok(()),
                }
            }
        }
    }

    async fn on_begin(&mut self, channel: u16, begin: Begin) -> Step {
        if self.sess.is_some() {
            return self.violation("a second session (one at a time)").await;
        }
        if begin.remote_channel.is_some() {
            return self.violation("a begin answering a session we did not begin").await;
        }
        self.sess = Some(Sess {
            channel,
            next_outgoing_id: 0,
            next_incoming_id: begin.next_outgoing_id,
            incoming_window: INCOMING_WINDOW,
            remote_incoming_window: begin.incoming_window,
            sender: None,
            receiver: None,
            waiting: VecDeque::new(),
            detaching: 0,
        });
        let ours = Begin {
            remote_channel: Some(channel),
            next_outgoing_id: 0,
            incoming_window: INCOMING_WINDOW,
            outgoing_window: OUTGOING_WINDOW,
            handle_max: HANDLE_MAX.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.send(0, &ours, &[]).await
    }

    /// Checks an attach against the connection's identity (authenticating it first when there
    /// was no SASL), then attaches it, or attaches and at once closes it with the reason.
    async fn on_attach(&mut self, attach: Attach) -> Step {
        let handle = u32::from(attach.handle.clone());
        if handle > HANDLE_MAX {
            return self.violation("link handle above handle-max").await;
        }
        if self.sess.as_ref().is_some_and(|s| s.handle_in_use(handle)) {
            return self.violation("link handle already in use").await;
        }
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
                // Authentication reads the store and checks the chain: what is answered so far
                // (our header, Open, Begin) goes out first.
                self.flush().await?;
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
                    match self.session.as_mut() {
                        Some(session) => session.set_api_version(v).map_err(|e| mapping::rejection(&e)),
                        // A call has the session: checked now, applied when it is back.
                        None => ApiVersion::parse(v)
                            .map(|_| self.api_version_stale = true)
                            .map_err(|e| mapping::rejection(&self.wire(&e))),
                    }
                } else {
                    Ok(())
                }
            }
        };
        let Some(sess) = self.sess.as_ref() else { return Ok(()) };
        // The device's role: its sender is our receiver (requests), its receiver our sender.
        let device_sends = matches!(attach.role, Role::Sender);
        let refusal = match &verdict {
            Err(e) => Some(e.clone()),
            Ok(()) if !device_sends && sess.sender.is_some() => {
                Some(limit_error("a response link is already attached"))
            }
            Ok(()) if device_sends && sess.receiver.is_some() => {
                Some(limit_error("a request link is already attached"))
            }
            Ok(()) => None,
        };
        let link_name = attach.name.clone();
        let presettled = matches!(attach.snd_settle_mode, SenderSettleMode::Settled);
        let initial_delivery_count = attach.initial_delivery_count.unwrap_or(0);
        let ours = Attach {
            name: attach.name,
            handle: handle.into(),
            role: if device_sends { Role::Receiver } else { Role::Sender },
            snd_settle_mode: attach.snd_settle_mode,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: attach.source,
            target: attach.target,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: if device_sends { None } else { Some(0) },
            max_message_size: Some(self.settings().max_message_size),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        self.send(0, &ours, &[]).await?;
        if let Some(err) = refusal {
            tracing::info!(
                peer = %self.peer(),
                link = %link_name,
                reason = %err.description.as_deref().unwrap_or(""),
                "amqp: link refused"
            );
            return self.detach(handle, err).await;
        }
        let Some(sess) = self.sess.as_mut() else { return Ok(()) };
        if device_sends {
            self.request_links = self.request_links.wrapping_add(1);
            let generation = self.request_links;
            sess.receiver = Some(In { handle, generation, delivery_count: initial_delivery_count, partial: None });
            self.send_flow(Some(handle)).await
        } else {
            sess.sender = Some(Out { handle, delivery_count: 0, credit: 0, presettled });
            Ok(())
        }
    }

    /// Closes one of our links with an error; the device's detach that follows is not answered.
    async fn detach(&mut self, handle: u32, err: definitions::Error) -> Step {
        if let Some(sess) = self.sess.as_mut() {
            sess.detaching |= bit(handle);
            if sess.sender.as_ref().is_some_and(|o| o.handle == handle) {
                sess.sender = None;
            }
            if sess.receiver.as_ref().is_some_and(|i| i.handle == handle) {
                sess.receiver = None;
            }
        }
        self.send(0, &Detach { handle: handle.into(), closed: true, error: Some(err) }, &[]).await
    }

    /// Our flow: the session's state, and a link's when `handle` names one (the request link
    /// gets its credit back to [`CREDIT`]).
    async fn send_flow(&mut self, handle: Option<u32>) -> Step {
        let Some(sess) = self.sess.as_mut() else { return Ok(()) };
        sess.incoming_window = INCOMING_WINDOW;
        let mut flow = Flow {
            next_incoming_id: Some(sess.next_incoming_id),
            incoming_window: INCOMING_WINDOW,
            next_outgoing_id: sess.next_outgoing_id,
            outgoing_window: OUTGOING_WINDOW,
            handle: None,
            delivery_count: None,
            link_credit: None,
            available: None,
            drain: false,
            echo: false,
            properties: None,
        };
        if let Some(h) = handle {
            if let Some(i) = sess.receiver.as_ref().filter(|i| i.handle == h) {
                flow.handle = Some(h.into());
                flow.delivery_count = Some(i.delivery_count);
                flow.link_credit = Some(CREDIT);
            } else if let Some(o) = sess.sender.as_ref().filter(|o| o.handle == h) {
                flow.handle = Some(h.into());
                flow.delivery_count = Some(o.delivery_count);
                flow.link_credit = Some(o.credit);
                flow.available = Some(u32::try_from(sess.waiting.len()).unwrap_or(0));
            }
        }
        self.send(0, &flow, &[]).await
    }

    async fn on_flow(&mut self, flow: Flow) -> Step {
        let Some(sess) = self.sess.as_mut() else { return Ok(()) };
        sess.remote_incoming_window = match flow.next_incoming_id {
            Some(next) => next.wrapping_add(flow.incoming_window).wrapping_sub(sess.next_outgoing_id),
            None => flow.incoming_window,
        };
        let handle = flow.handle.map(u32::from);
        let mut drain = false;
        if let (Some(h), Some(out)) = (handle, sess.sender.as_mut()) {
            if out.handle == h {
                let count = flow.delivery_count.unwrap_or(out.delivery_count);
                out.credit =
                    count.wrapping_add(flow.link_credit.unwrap_or(0)).wrapping_sub(out.delivery_count).min(1 << 20);
                drain = flow.drain;
            }
        }
        self.send_waiting().await?;
        if drain {
            if let Some(out) = self.sess.as_mut().and_then(|s| s.sender.as_mut()) {
                out.delivery_count = out.delivery_count.wrapping_add(out.credit);
                out.credit = 0;
            }
        }
        if flow.echo || drain {
            let h = handle.filter(|h| self.sess.as_ref().is_some_and(|s| s.handle_in_use(*h)));
            self.send_flow(h).await?;
        }
        Ok(())
    }

    async fn on_transfer(&mut self, t: Transfer, payload: &[u8]) -> Step {
        let max = self.settings().max_message_size;
        let Some(sess) = self.sess.as_mut() else { return Ok(()) };
        sess.next_incoming_id = sess.next_incoming_id.wrapping_add(1);
        sess.incoming_window = sess.incoming_window.saturating_sub(1);
        let renew = sess.incoming_window < INCOMING_WINDOW / 2;
        let handle = u32::from(t.handle);
        let Some(link) = sess.receiver.as_mut().filter(|i| i.handle == handle) else {
            if sess.detaching & bit(handle) != 0 {
                return Ok(());
            }
            return self.violation("a transfer on a handle that is not an attached request link").await;
        };
        if t.aborted {
            link.partial = None;
            return if renew { self.send_flow(None).await } else { Ok(()) };
        }
        let partial = match link.partial.take() {
            Some(p) => p,
            None => match t.delivery_id {
                Some(delivery_id) => Partial { delivery_id, settled: false, payload: Vec::new() },
                None => return self.violation("the first transfer of a delivery has no delivery-id").await,
            },
        };
        let mut partial = partial;
        partial.settled |= t.settled.unwrap_or(false);
        if (partial.payload.len() + payload.len()) as u64 > max {
            tracing::info!(peer = %self.peer(), "amqp: request larger than the link's max-message-size; link detached");
            let err = error(
                ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
                "the message exceeds the link's max-message-size",
            );
            return self.detach(handle, err).await;
        }
        partial.payload.extend_from_slice(payload);
        if t.more {
            link.partial = Some(partial);
            return if renew { self.send_flow(None).await } else { Ok(()) };
        }
        link.delivery_count = link.delivery_count.wrapping_add(1);
        let generation = link.generation;
        let Partial { delivery_id, settled, payload } = partial;
        let admitted = self.admit(&payload);
        drop(payload);
        match admitted {
            Ok(request) => {
                self.queued.push_back(Call { delivery_id, settled, handle, link: generation, request });
                self.start_next();
                Ok(())
            }
            Err(err) => self.settle(delivery_id, settled, handle, Answer::Reject(err)).await,
        }
    }

    /// A request for the device API, or the rejection it gets at once (it does not decode, the
    /// connection names no device yet, or `MAX_CALLS` are there already).
    fn admit(&self, payload: &[u8]) -> Result<mapping::Request, definitions::Error> {
        let request = match (mapping::decode_request(payload), &self.auth) {
            (Err(e), _) => {
                tracing::info!(peer = %self.peer(), reason = %e, "amqp: request refused");
                return Err(mapping::rejection(&self.wire(&e.error())));
            }
            (Ok(_), Auth::Pending) => {
                tracing::info!(peer = %self.peer(), "amqp: request before any link named the device; refused");
                return Err(mapping::rejection(
                    &self.wire(&Error::Unauthorized("the connection is not authenticated".into())),
                ));
            }
            (Ok(request), Auth::Named(_)) => request,
        };
        if self.queued.len() + usize::from(self.running.is_some()) >= MAX_CALLS {
            tracing::info!(peer = %self.peer(), "amqp: more than {MAX_CALLS} requests at once; refused as throttled");
            return Err(mapping::rejection(&self.wire(&Error::Throttled { retry_after: Duration::from_secs(1) })));
        }
        Ok(request)
    }

    /// Starts the next queued call whose request link is still attached, if none runs. The
    /// call owns the device session until it ends; the frame loop polls it beside the socket,
    /// so frames, heartbeats, detach and close are served while it runs.
    fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let live = self.sess.as_ref().and_then(|s| s.receiver.as_ref()).map(|i| i.generation);
        while let Some(call) = self.queued.pop_front() {
            if Some(call.link) != live {
                continue;
            }
            let Some(mut session) = self.session.take() else {
                self.queued.push_front(call);
                return;
            };
            let timeout = self.ctx.settings.call_timeout;
            let (services, peer) = (self.ctx.services.clone(), self.peer());
            self.running = Some(Box::pin(async move {
                let Call { delivery_id, settled, handle, link, request } = call;
                let op = match &request.operation {
                    Operation::Register { body } => dps_core::device::Operation::Register { body },
                    Operation::OperationStatus { operation_id } => {
                        dps_core::device::Operation::OperationStatus { operation_id }
                    }
                };
                let reply = match tokio::time::timeout(timeout, session.handle(op)).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        tracing::warn!(%peer, "amqp: device API call timed out");
                        DeviceReply::Error(services.wire(
                            500,
                            500_000,
                            "the service failed to complete the request; try again".into(),
                        ))
                    }
                };
                let answer = mapping::answer(&reply, request.correlation_id);
                Box::new(Done { session, delivery_id, settled, handle, link, answer })
            }));
            return;
        }
    }

    /// A call ended: the session is back; its request is settled and answered if its link is
    /// still there, and the next queued call starts.
    async fn on_done(&mut self, done: Box<Done>) -> Step {
        let Done { mut session, delivery_id, settled, handle, link, answer } = *done;
        if std::mem::take(&mut self.api_version_stale) {
            if let Some(v) = self.api_version.as_deref() {
                // Checked when the link attached.
                let _ = session.set_api_version(v);
            }
        }
        *self.session = Some(session);
        self.rest_at = Some(Instant::now() + DeviceSession::REST_AFTER);
        let live = self.sess.as_ref().and_then(|s| s.receiver.as_ref()).is_some_and(|i| i.generation == link);
        let step = if live {
            self.settle(delivery_id, settled, handle, answer).await
        } else {
            tracing::debug!(peer = %self.peer(), "amqp: the request link is gone; the answer is dropped");
            Ok(())
        };
        self.start_next();
        step
    }

    /// Settles a request (the device's send completes on it), gives the link its credit back,
    /// then answers.
    async fn settle(&mut self, delivery_id: u32, settled: bool, handle: u32, answer: Answer) -> Step {
        let (state, response) = match answer {
            Answer::Reject(err) => (DeliveryState::Rejected(Rejected { error: Some(err) }), None),
            Answer::Respond(msg) => (DeliveryState::Accepted(Accepted {}), Some(msg)),
        };
        if !settled {
            let d = Disposition {
                role: Role::Receiver,
                first: delivery_id,
                last: None,
                settled: true,
                state: Some(state),
                batchable: false,
            };
            self.send(0, &d, &[]).await?;
        }
        self.send_flow(Some(handle)).await?;
        if let Some(msg) = response {
            self.respond(*msg).await?;
        }
        Ok(())
    }

    /// Queues a response and sends what the sender link's credit allows.
    async fn respond(&mut self, msg: Message<Data>) -> Step {
        let Some(sess) = self.sess.as_mut() else { return Ok(()) };
        if sess.waiting.len() >= MAX_WAITING {
            tracing::info!(peer = %self.peer(), "amqp: responses pile up without a response link or credit; dropping one");
            return Ok(());
        }
        sess.waiting.push_back(msg);
        self.send_waiting().await
    }

    /// Sends waiting responses while the sender link has credit and the session a window.
    async fn send_waiting(&mut self) -> Step {
        loop {
            let Some(sess) = self.sess.as_mut() else { return Ok(()) };
            let Some(out) = sess.sender.as_mut() else { return Ok(()) };
            if out.credit == 0 || sess.remote_incoming_window == 0 {
                return Ok(());
            }
            let Some(msg) = sess.waiting.pop_front() else { return Ok(()) };
            let bytes = match codec::encode_message(msg) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(peer = %self.ctx.facts.peer, error = %e, "amqp: a response does not encode");
                    continue;
                }
            };
            out.credit -= 1;
            out.delivery_count = out.delivery_count.wrapping_add(1);
            let presettled = out.presettled;
            let handle = out.handle;
            let mut transfer = codec::transfer(handle, sess.next_outgoing_id, presettled);
            // Within the device's max-frame-size: the transfer performative is under 64 bytes.
            let room = self.peer_max_frame.saturating_sub(codec::HEADER + 64).max(64);
            let mut rest = &bytes[..];
            loop {
                let (chunk, tail) = rest.split_at(rest.len().min(room));
                rest = tail;
                transfer.more = !rest.is_empty();
                if let Some(s) = self.sess.as_mut() {
                    s.next_outgoing_id = s.next_outgoing_id.wrapping_add(1);
                    s.remote_incoming_window = s.remote_incoming_window.saturating_sub(1);
                }
                self.send(0, &transfer, chunk).await?;
                if rest.is_empty() {
                    break;
                }
            }
        }
    }

    async fn on_disposition(&mut self, d: Disposition) -> Step {
        // The device settles our responses; if it only decided (receiver settle mode second),
        // we settle them.
        if matches!(d.role, Role::Receiver) && !d.settled {
            let ours = Disposition {
                role: Role::Sender,
                first: d.first,
                last: d.last,
                settled: true,
                state: d.state,
                batchable: false,
            };
            return self.send(0, &ours, &[]).await;
        }
        Ok(())
    }

    async fn on_detach(&mut self, d: Detach) -> Step {
        let handle = u32::from(d.handle);
        let Some(sess) = self.sess.as_mut() else { return Ok(()) };
        if sess.detaching & bit(handle) != 0 {
            // The answer to our own detach.
            sess.detaching &= !bit(handle);
            return Ok(());
        }
        if sess.sender.as_ref().is_some_and(|o| o.handle == handle) {
            sess.sender = None;
        }
        if sess.receiver.as_ref().is_some_and(|i| i.handle == handle) {
            sess.receiver = None;
        }
        self.send(0, &Detach { handle: handle.into(), closed: d.closed, error: None }, &[]).await
    }

    /// No SASL: the device is the one the link names, proved by its TLS client chain.
    async fn authenticate_x509(&mut self, identity: Identity) {
        // No call runs before the connection names its device, so the session is here.
        let Some(session) = self.session.as_mut() else {
            self.auth = Auth::Named(identity);
            return;
        };
        let asked = Box::pin(session.authenticate(
            &identity.id_scope,
            &identity.registration_id,
            self.api_version.as_deref(),
            Credential::ClientCertificate,
        ));
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
        self.rest_at = Some(Instant::now() + DeviceSession::REST_AFTER);
        self.auth = Auth::Named(identity);
    }
}
