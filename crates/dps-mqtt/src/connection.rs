//! The MQTT connection driver (docs/protocol.md, "MQTT connection"): socket, buffer, framing with the
//! `mqttbytes` codec, keep-alive. CONNECT becomes the device session's connection-level
//! authentication; each request PUBLISH becomes one `dps_core::device` operation, whose reply
//! goes back on the response topic.

use std::time::Duration;

use bytes::BytesMut;
use dps_core::device::{AuthOutcome, ConnectionFacts, Credential, DeviceReply, DeviceSession, Operation};
use dps_core::service::Services;
use mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PingResp, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::session::{self, Decoded, Request};

/// What the connection knows from below (TCP and TLS), and the domain.
#[derive(Clone, Debug)]
pub struct ConnectionContext {
    pub facts: ConnectionFacts,
    pub services: Services,
    pub limits: Limits,
}

/// Time bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send CONNECT.
    pub connect_timeout: Duration,
    /// The longest keep-alive honoured (a client asking for more, or for none, gets this).
    pub max_keep_alive: Duration,
    /// How long a connection whose device was refused at CONNECT may stay (it can only be
    /// told, request by request, that it was refused).
    pub refused_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(1740),
            refused_lifetime: Duration::from_secs(30),
        }
    }
}

/// Read buffer reserved while no packet is in progress: what an idle connection holds.
const IDLE_READ: usize = 64;
/// Read buffer growth while a packet is incomplete.
const READ_CHUNK: usize = 4096;
/// How long a QoS 1 request's PUBACK waits for the reply, to be sent with it
/// (docs/protocol.md, "MQTT connection").
const ACK_WAIT: Duration = Duration::from_millis(200);

/// One connection. Idle, it holds no buffer beyond [`IDLE_READ`]: the read buffer is let go
/// once every byte read was a whole packet, and each reply is encoded into a buffer of its own
/// (idle memory per connection, bench/README.md "How to read `idle`").
struct Conn<S> {
    io: S,
    buf: BytesMut,
}

enum Read {
    Packet(Packet),
    Closed,
    Bad(String),
    BadLevel(u8),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn read(&mut self) -> Read {
        loop {
            match session::decode(&mut self.buf) {
                Decoded::Packet(p) => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::new();
                    }
                    return Read::Packet(p);
                }
                Decoded::Incomplete => {}
                Decoded::Bad(why) => return Read::Bad(why),
                Decoded::BadLevel(l) => return Read::BadLevel(l),
            }
            self.buf.reserve(if self.buf.is_empty() { IDLE_READ } else { READ_CHUNK });
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Read::Closed,
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> bool {
        let mut out = BytesMut::new();
        if write(&mut out).is_err() {
            return false;
        }
        self.io.write_all(&out).await.is_ok() && self.io.flush().await.is_ok()
    }

    async fn refuse_connect(&mut self, code: ConnectReturnCode) {
        let ack = ConnAck::new(code, false);
        self.send(|b| ack.write(b)).await;
        let _ = self.io.shutdown().await;
    }

    /// Publishes `reply` on the response topic, after `ack` (the request's PUBACK, if it is still
    /// owed) in the same write: one TLS record and one send for both.
    async fn respond(&mut self, ack: Option<PubAck>, rid: &str, reply: &DeviceReply) -> bool {
        let topic = session::response_topic(reply.status(), rid, reply.retry_after());
        let p = Publish::new(topic, QoS::AtMostOnce, reply.body_bytes());
        self.send(|b| {
            if let Some(ack) = &ack {
                ack.write(b)?;
            }
            p.write(b)
        })
        .await
    }

    /// Awaits `reply`. A PUBACK owed (`ack`) waits for it up to [`ACK_WAIT`], to go out in the
    /// same write as the reply (returned, still owed); a slower reply has the PUBACK sent on its
    /// own when the wait runs out, so a slow store never holds the acknowledgement back long.
    /// The request keeps running while that PUBACK is written (a device that stops reading does
    /// not stall it half-way with a store connection in hand), and runs to its end even if the
    /// write fails. Either way the PUBACK goes first. `None`: the connection failed.
    /// `reply` is borrowed pinned, not moved in: the device API's future is large, and each move
    /// of it would be a copy.
    async fn after<F>(
        &mut self,
        ack: Option<PubAck>,
        mut reply: std::pin::Pin<&mut F>,
    ) -> Option<(Option<PubAck>, DeviceReply)>
    where
        F: std::future::Future<Output = DeviceReply>,
    {
        let Some(ack) = ack else { return Some((None, reply.await)) };
        match tokio::time::timeout(ACK_WAIT, &mut reply).await {
            Ok(r) => Some((Some(ack), r)),
            Err(_) => {
                let (sent, reply) = tokio::join!(self.send(|b| ack.write(b)), reply);
                sent.then_some((None, reply))
            }
        }
    }
}

/// Serves the DPS device API on one MQTT connection (already through TLS, or a WebSocket).
/// A plain function returning the future, not an `async fn`: a wrapper future would keep its own
/// copy of the arguments for the connection's whole life. The CONNECT exchange runs in an
/// allocation of its own, freed once the device is connected, so the future that stays while the
/// device idles holds only what serving its requests needs (bench/README.md, "How to read
/// `idle`"). For the same reason the connection's `mqtt_connection` span lives only while there
/// is work: the CONNECT phase and each packet's handling run in one, and a line logged while
/// waiting for the next packet opens one for itself ([`Tag`]).
pub fn serve_connection<S>(
    io: S,
    ctx: ConnectionContext,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tag = Tag { transport: ctx.facts.transport, peer: ctx.facts.peer };
    let connect = Box::pin(connect(io, ctx, tag, shutdown).instrument(tag.span()));
    async move {
        // Moved, never borrowed, so that this block keeps no second copy of the connected state
        // beside the one inside `serve`; everything `serve` needs travels in `Connected`.
        let Some(connected) = connect.await else { return };
        connected.serve().await;
    }
}

/// What names a connection in the log. The span it makes is the same for every phase, so each
/// line reads as it would under one span for the whole connection; but a span held for the
/// connection's life costs its slot in the span registry and its fields as text (about 0.3 KiB
/// per idle connection, docs/performance.md "Idle connections"), and this is 36 bytes.
#[derive(Clone, Copy)]
struct Tag {
    transport: dps_core::device::Transport,
    peer: std::net::SocketAddr,
}

impl Tag {
    fn span(self) -> tracing::Span {
        tracing::info_span!("mqtt_connection", transport = self.transport.as_str(), peer = %self.peer)
    }
}

/// A device past CONNECT (accepted, or refused and told so request by request), with what
/// serving it needs and nothing more: its limits are already worked out into `idle` and
/// `deadline`.
struct Connected<S> {
    c: Conn<S>,
    device: DeviceSession,
    tag: Tag,
    shutdown: CancellationToken,
    /// How long the device may stay silent: 1.5 × its keep-alive, bounded.
    idle: Duration,
    /// A refused device's connection ends here.
    deadline: Option<Instant>,
    refused: bool,
}

/// CONNECT: read it, authenticate the device and answer CONNACK. `None`: the connection is over.
async fn connect<S>(io: S, ctx: ConnectionContext, tag: Tag, shutdown: CancellationToken) -> Option<Connected<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = ctx.limits;
    let mut c = Conn { io, buf: BytesMut::new() };
    let first = tokio::select! {
        () = shutdown.cancelled() => return None,
        r = tokio::time::timeout(limits.connect_timeout, c.read()) => r,
    };
    let connect = match first {
        Ok(Read::Packet(Packet::Connect(connect))) => connect,
        Ok(Read::Packet(_)) => {
            tracing::info!("mqtt: first packet is not CONNECT; closing");
            return None;
        }
        Ok(Read::BadLevel(level)) => {
            tracing::info!(level, "mqtt: CONNECT with an unsupported protocol level (DPS speaks MQTT 3.1.1); refused");
            c.refuse_connect(ConnectReturnCode::RefusedProtocolVersion).await;
            return None;
        }
        Ok(Read::Bad(why)) => {
            tracing::info!(reason = %dps_core::device::excerpt(&why, 200), "mqtt: bad CONNECT; closing");
            return None;
        }
        Ok(Read::Closed) => return None,
        Err(_) => {
            tracing::info!("mqtt: no CONNECT within {:?}; closing", limits.connect_timeout);
            return None;
        }
    };
    if connect.protocol != Protocol::V4 {
        tracing::info!("mqtt: CONNECT for MQTT 5 (DPS speaks MQTT 3.1.1); refused");
        c.refuse_connect(ConnectReturnCode::RefusedProtocolVersion).await;
        return None;
    }
    // CONNECT is refused only when it cannot be a DPS connection (username, client id). An
    // attestation failure is accepted here and answered on the response topic of each request,
    // with a DPS error body, as DPS does (docs/protocol.md, "MQTT connection").
    let user = match session::check_connect(&connect) {
        Ok(u) => u,
        Err((code, why)) => {
            tracing::info!(
                client_id = %dps_core::device::excerpt(&connect.client_id, 130),
                reason = %dps_core::device::excerpt(&why, 300),
                "mqtt: CONNECT refused"
            );
            c.refuse_connect(code).await;
            return None;
        }
    };
    let ConnectionContext { facts, services, .. } = ctx;
    let mut device = services.device_session(facts);
    let password = connect.login.as_ref().map_or("", |l| l.password.as_str());
    let credential = if password.is_empty() { Credential::ClientCertificate } else { Credential::Sas(password) };
    // Authentication (a store read, maybe a key derivation) runs in its own allocation too.
    let outcome =
        Box::pin(device.authenticate(&user.id_scope, &user.registration_id, user.api_version.as_deref(), credential))
            .await;
    // A node whose database is not primary (a standby during a failover) serves no device:
    // MQTT's own "server unavailable", so the client retries (possibly at another node).
    if matches!(&outcome, AuthOutcome::Refused(w) if w.status == 503) {
        c.refuse_connect(ConnectReturnCode::ServiceUnavailable).await;
        return None;
    }
    let refused = matches!(outcome, AuthOutcome::Refused(_));
    let ack = ConnAck::new(ConnectReturnCode::Success, false);
    if !c.send(|b| ack.write(b)).await {
        return None;
    }
    // Keep-alive: the client must send something within 1.5 × its keep-alive, bounded.
    let asked = Duration::from_millis(u64::from(connect.keep_alive) * 1500);
    let idle = if connect.keep_alive == 0 { limits.max_keep_alive } else { asked.min(limits.max_keep_alive) };
    let (idle, deadline) = if refused {
        (idle.min(limits.refused_lifetime), Some(Instant::now() + limits.refused_lifetime))
    } else {
        (idle, None)
    };
    Some(Connected { c, device, tag, shutdown, idle, deadline, refused })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connected<S> {
    /// Requests until the device leaves, breaks the protocol or goes quiet past its keep-alive.
    ///
    /// A plain function returning its future: an `async fn` would move `self` from its argument
    /// slot into a local, and keep both for the connection's life. What an idle connection holds
    /// is this future suspended in `next_packet`; each packet is handled in an allocation of its
    /// own (`dispatch`), so the packet and its handling take no room in it between packets.
    #[allow(clippy::manual_async_fn)]
    fn serve(mut self) -> impl std::future::Future<Output = ()> {
        async move {
            // An attested device's records are let go once no request has come for a while
            // (`DeviceSession::rest`); the next request reads them again.
            let mut rest_at = (!self.refused).then(|| Instant::now() + DeviceSession::REST_AFTER);
            loop {
                // The packet is moved into its handler before anything is awaited, so this future
                // keeps no slot for it (a `while let` would keep its scrutinee across the loop body).
                let Some(packet) = self.next_packet(&mut rest_at).await else { break };
                if !self.refused && matches!(packet, Packet::Publish(_)) {
                    rest_at = Some(Instant::now() + DeviceSession::REST_AFTER);
                }
                let span = self.tag.span();
                let handled = Box::pin(self.dispatch(packet).instrument(span));
                if !handled.await {
                    break;
                }
            }
            let _ = self.c.io.shutdown().await;
        }
    }

    /// The next packet, or `None` when the connection is over (closed, shut down, silent past its
    /// keep-alive or its refused lifetime, or unreadable). Rests the device on the way when
    /// `rest_at` passes. One timer serves the three deadlines.
    async fn next_packet(&mut self, rest_at: &mut Option<Instant>) -> Option<Packet> {
        let keep_alive_until = Instant::now() + self.idle;
        let read = loop {
            let wake = [self.deadline, *rest_at].into_iter().flatten().fold(keep_alive_until, Instant::min);
            let read = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                r = tokio::time::timeout_at(wake, self.c.read()) => r,
            };
            match read {
                Ok(r) => break r,
                Err(_) => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| d <= now) {
                        self.tag.span().in_scope(|| tracing::info!("mqtt: closing the connection of a refused device"));
                        return None;
                    }
                    if keep_alive_until <= now {
                        self.tag.span().in_scope(|| tracing::info!("mqtt: keep-alive expired; closing"));
                        return None;
                    }
                    // `c.read` keeps what it has read in `c.buf`: waiting again loses nothing.
                    self.device.rest();
                    *rest_at = None;
                }
            }
        };
        match read {
            Read::Packet(p) => Some(p),
            Read::Closed | Read::BadLevel(_) => None,
            Read::Bad(why) => {
                self.tag.span().in_scope(|| {
                    tracing::info!(reason = %dps_core::device::excerpt(&why, 200), "mqtt: closing connection");
                });
                None
            }
        }
    }

    /// Handles one packet after CONNECT, inside the connection's span (`serve` opens it).
    /// `false`: the connection is over.
    async fn dispatch(&mut self, packet: Packet) -> bool {
        match packet {
            Packet::Subscribe(s) if s.filters.is_empty() => {
                tracing::info!("mqtt: SUBSCRIBE without topic filters (a protocol violation); closing");
                false
            }
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| {
                        if session::accepts_filter(&f.path) {
                            let qos = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                            SubscribeReasonCode::Success(qos)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                let ack = SubAck::new(s.pkid, codes);
                self.c.send(|b| ack.write(b)).await
            }
            Packet::Unsubscribe(u) => {
                let ack = UnsubAck::new(u.pkid);
                self.c.send(|b| ack.write(b)).await
            }
            Packet::PingReq => self.c.send(|b| PingResp.write(b)).await,
            Packet::Publish(p) => handle_publish(&mut self.c, &mut self.device, p).await,
            Packet::Disconnect => false,
            Packet::PubAck(_) => true,
            Packet::Connect(_) => {
                tracing::info!("mqtt: second CONNECT on one connection; closing");
                false
            }
            _ => {
                tracing::info!("mqtt: unexpected packet; closing");
                false
            }
        }
    }
}

async fn handle_publish<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    device: &mut DeviceSession,
    p: Publish,
) -> bool {
    // PUBACK before the response (C# v1 depends on the order); in the same write when the
    // response is ready soon enough (`Conn::after`).
    let ack = match p.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(PubAck::new(p.pkid)),
        QoS::ExactlyOnce => {
            tracing::info!("mqtt: QoS 2 publish refused (DPS supports QoS 0 and 1); closing");
            return false;
        }
    };
    let request = session::parse_topic(&p.topic);
    let (rid, operation) = match &request {
        Ok(Request::Register { rid }) => (rid, Operation::Register { body: &p.payload }),
        Ok(Request::Poll { rid, operation_id }) => (rid, Operation::OperationStatus { operation_id }),
        Err((Some(rid), why)) => {
            let reply = DeviceReply::Error(device.bad_request(why.clone()));
            return c.respond(ack, rid, &reply).await;
        }
        Err((None, why)) => {
            if let Some(ack) = ack {
                c.send(|b| ack.write(b)).await;
            }
            tracing::info!(reason = %dps_core::device::excerpt(why, 200), "mqtt: bad request topic without $rid; closing");
            return false;
        }
    };
    // The device API's future is pinned here, once; `after` borrows it.
    let reply = std::pin::pin!(device.handle(operation));
    let Some((ack, reply)) = c.after(ack, reply).await else { return false };
    c.respond(ack, rid, &reply).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::AsyncReadExt;

    fn accepted() -> DeviceReply {
        DeviceReply::Accepted { operation_id: "op".into() }
    }

    /// Bytes the peer has received so far (none waiting: an empty vector).
    async fn received(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = vec![0; 64];
        match tokio::time::timeout(Duration::from_millis(1), peer.read(&mut got)).await {
            Ok(n) => got.truncate(n.expect("read")),
            Err(_) => got.clear(),
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_reply_takes_its_puback_along() {
        let (io, mut peer) = tokio::io::duplex(4096);
        let mut c = Conn { io, buf: BytesMut::new() };
        let reply = std::pin::pin!(async { accepted() });
        let (ack, _) = c.after(Some(PubAck::new(7)), reply).await.expect("open");
        assert_eq!(ack.map(|a| a.pkid), Some(7), "still owed, to go out with the reply");
        assert!(received(&mut peer).await.is_empty(), "nothing sent before the reply");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reply_does_not_hold_the_puback_back() {
        let (io, mut peer) = tokio::io::duplex(4096);
        let mut c = Conn { io, buf: BytesMut::new() };
        let mut expected = BytesMut::new();
        PubAck::new(7).write(&mut expected).expect("encode");
        let peer = &mut peer;
        let slow = async {
            tokio::time::sleep(ACK_WAIT + Duration::from_millis(5)).await;
            assert_eq!(received(peer).await, expected.to_vec(), "the PUBACK went out before the reply was ready");
            tokio::time::sleep(ACK_WAIT * 10).await;
            accepted()
        };
        let (ack, _) = c.after(Some(PubAck::new(7)), std::pin::pin!(slow)).await.expect("open");
        assert!(ack.is_none(), "sent already, not owed with the reply");
    }
}
