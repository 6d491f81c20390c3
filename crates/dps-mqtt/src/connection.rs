//! The MQTT connection driver: socket, buffer, framing, keep-alive; the domain is called for
//! CONNECT (authentication) and for each request PUBLISH.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dps_core::error::Error;
use dps_core::model::RegistrationStatus;
use dps_core::service::{Attested, Evidence, Services};
use dps_core::tls::{HandshakeFacts, PeerCertificates};
use mqttbytes::v4::{
    self, ConnAck, ConnectReturnCode, Packet, PingResp, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use mqttbytes::QoS;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::session::{self, Request, MAX_PACKET, RETRY_AFTER_SECS};

/// What the connection knows from below (TCP and TLS).
#[derive(Clone, Debug)]
pub struct ConnectionContext {
    pub peer: SocketAddr,
    pub tls: Arc<HandshakeFacts>,
    pub peer_certificates: Arc<PeerCertificates>,
    pub services: Services,
}

/// How long a client may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn<S> {
    io: S,
    buf: BytesMut,
    out: BytesMut,
    ctx: ConnectionContext,
}

enum Read {
    Packet(Packet),
    Closed,
    Bad(String),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn read(&mut self) -> Read {
        loop {
            match v4::read(&mut self.buf, MAX_PACKET) {
                Ok(p) => return Read::Packet(p),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => {
                    return Read::Bad(format!(
                        "packet of {n} bytes exceeds the {MAX_PACKET}-byte limit (DPS messages are at most 96 KB)"
                    ))
                }
                Err(e) => return Read::Bad(format!("malformed MQTT packet: {e:?}")),
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Read::Closed,
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> bool {
        self.out.clear();
        if write(&mut self.out).is_err() {
            return false;
        }
        self.io.write_all(&self.out).await.is_ok() && self.io.flush().await.is_ok()
    }

    async fn respond(&mut self, status: u16, rid: &str, retry_after: Option<u32>, body: &Value) -> bool {
        let topic = session::response_topic(status, rid, retry_after);
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let p = Publish::new(topic, QoS::AtMostOnce, payload);
        self.send(|b| p.write(b)).await
    }
}

fn error_body(e: &Error) -> (u16, Value) {
    let status = e.kind().status();
    let message =
        if status >= 500 { "the service failed to complete the request; try again".to_owned() } else { e.to_string() };
    (
        status,
        serde_json::json!({
            "errorCode": e.code(),
            "trackingId": tracking_id(),
            "message": message,
            "timestampUtc": dps_core::time::format_utc(std::time::SystemTime::now()),
        }),
    )
}

fn tracking_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Serves the DPS device API on one MQTT connection (already through TLS).
pub async fn serve_connection<S>(io: S, ctx: ConnectionContext, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = ctx.peer;
    let mut c = Conn { io, buf: BytesMut::with_capacity(4096), out: BytesMut::with_capacity(1024), ctx };
    let first = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(CONNECT_TIMEOUT, c.read()) => r,
    };
    let connect = match first {
        Ok(Read::Packet(Packet::Connect(connect))) => connect,
        Ok(Read::Packet(other)) => {
            tracing::info!(%peer, packet = ?std::mem::discriminant(&other), "mqtt: first packet is not CONNECT; closing");
            return;
        }
        Ok(Read::Bad(why)) => {
            tracing::info!(%peer, reason = %why, "mqtt: bad CONNECT; closing");
            return;
        }
        Ok(Read::Closed) => return,
        Err(_) => {
            tracing::info!(%peer, "mqtt: no CONNECT within {CONNECT_TIMEOUT:?}; closing");
            return;
        }
    };
    // CONNECT is refused only when it cannot be a DPS connection (username, client id). An
    // attestation failure is accepted here and answered on the response topic of the register
    // request, with a DPS error body, as DPS does (dps-protocol.md §2.1).
    let user = match parse_connect(&connect) {
        Ok(u) => u,
        Err((code, why)) => {
            tracing::info!(%peer, client_id = %connect.client_id, reason = %why, "mqtt: CONNECT refused");
            let ack = ConnAck::new(code, false);
            c.send(|b| ack.write(b)).await;
            let _ = c.io.shutdown().await;
            return;
        }
    };
    let attested = authenticate(&c.ctx, &connect, &user).await;
    if let Err(e) = &attested {
        tracing::info!(%peer, client_id = %connect.client_id, error = %e, "mqtt: device not authenticated; requests will be refused");
    }
    let registration_id = user.registration_id.clone();
    let ack = ConnAck::new(ConnectReturnCode::Success, false);
    if !c.send(|b| ack.write(b)).await {
        return;
    }
    // Keep-alive: the client must send something within 1.5 × its keep-alive.
    let idle = match connect.keep_alive {
        0 => Duration::from_secs(3600),
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            r = tokio::time::timeout(idle, c.read()) => r,
        };
        let packet = match next {
            Ok(Read::Packet(p)) => p,
            Ok(Read::Closed) => break,
            Ok(Read::Bad(why)) => {
                tracing::info!(%peer, registration_id = %registration_id, reason = %why, "mqtt: closing connection");
                break;
            }
            Err(_) => {
                tracing::info!(%peer, registration_id = %registration_id, "mqtt: keep-alive expired; closing");
                break;
            }
        };
        let ok = match packet {
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| {
                        if session::accepts_filter(&f.path) {
                            SubscribeReasonCode::Success(if f.qos == QoS::AtMostOnce {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            })
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                let ack = SubAck::new(s.pkid, codes);
                c.send(|b| ack.write(b)).await
            }
            Packet::Unsubscribe(u) => {
                let ack = UnsubAck::new(u.pkid);
                c.send(|b| ack.write(b)).await
            }
            Packet::PingReq => c.send(|b| PingResp.write(b)).await,
            Packet::Publish(p) => handle_publish(&mut c, &attested, user.api_version.as_deref(), p).await,
            Packet::Disconnect => break,
            Packet::PubAck(_) => true,
            Packet::Connect(_) => {
                tracing::info!(%peer, "mqtt: second CONNECT on one connection; closing");
                break;
            }
            other => {
                tracing::info!(%peer, packet = ?std::mem::discriminant(&other), "mqtt: unexpected packet; closing");
                break;
            }
        };
        if !ok {
            break;
        }
    }
    let _ = c.io.shutdown().await;
}

/// The CONNECT checks that refuse the connection itself.
fn parse_connect(connect: &v4::Connect) -> Result<session::Username, (ConnectReturnCode, String)> {
    let login =
        connect.login.as_ref().ok_or((ConnectReturnCode::BadUserNamePassword, "CONNECT has no username".to_owned()))?;
    let user = session::parse_username(&login.username).map_err(|e| (ConnectReturnCode::BadUserNamePassword, e))?;
    if !user.registration_id.eq_ignore_ascii_case(&connect.client_id) {
        return Err((
            ConnectReturnCode::BadClientId,
            format!(
                "client id {:?} is not the registration id {:?} of the username",
                connect.client_id, user.registration_id
            ),
        ));
    }
    Ok(user)
}

async fn authenticate(
    ctx: &ConnectionContext,
    connect: &v4::Connect,
    user: &session::Username,
) -> Result<Attested, Error> {
    let password = connect.login.as_ref().map_or("", |l| l.password.as_str());
    let evidence = if !password.is_empty() {
        Evidence::Sas(password)
    } else if !ctx.peer_certificates.is_empty() {
        Evidence::X509(&ctx.peer_certificates.0)
    } else {
        Evidence::None
    };
    ctx.services
        .authenticate_device(&user.id_scope, &user.registration_id, evidence, Some(ctx.tls.negotiated.version))
        .await
}

async fn handle_publish<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Conn<S>,
    attested: &Result<Attested, Error>,
    api_version: Option<&str>,
    p: Publish,
) -> bool {
    match p.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            // PUBACK before the response (C# v1 depends on the order).
            let ack = PubAck::new(p.pkid);
            if !c.send(|b| ack.write(b)).await {
                return false;
            }
        }
        QoS::ExactlyOnce => {
            tracing::info!(peer = %c.ctx.peer, "mqtt: QoS 2 publish refused (DPS supports QoS 0 and 1); closing");
            return false;
        }
    }
    let request = match session::parse_topic(&p.topic) {
        Ok(r) => r,
        Err((Some(rid), why)) => {
            tracing::info!(peer = %c.ctx.peer, reason = %why, "mqtt: bad request topic");
            let (status, body) = error_body(&Error::Invalid(why));
            return c.respond(status, &rid, None, &body).await;
        }
        Err((None, why)) => {
            tracing::info!(peer = %c.ctx.peer, reason = %why, "mqtt: bad request topic without $rid; closing");
            return false;
        }
    };
    let a = match attested {
        Ok(a) => a,
        Err(e) => {
            // Attestation failed at CONNECT: every request gets the DPS error (401002, …).
            let rid = match &request {
                Request::Register { rid } | Request::Poll { rid, .. } => rid.clone(),
            };
            let (status, body) = error_body(e);
            return c.respond(status, &rid, None, &body).await;
        }
    };
    let services = c.ctx.services.clone();
    match request {
        Request::Register { rid } => {
            // Lenient body (dps-protocol.md §1.4): empty, `{}`, `payload: null`, no registrationId.
            let body: Value = if p.payload.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                match serde_json::from_slice(&p.payload) {
                    Ok(v) => v,
                    Err(e) => {
                        let (status, body) =
                            error_body(&Error::Invalid(format!("the register body is not valid JSON: {e}")));
                        return c.respond(status, &rid, None, &body).await;
                    }
                }
            };
            if let Some(id) = body.get("registrationId").and_then(Value::as_str) {
                if !id.eq_ignore_ascii_case(&a.registration_id) {
                    let e = Error::Invalid(format!(
                        "registrationId {id:?} in the body is not the connection's {:?}",
                        a.registration_id
                    ));
                    let (status, body) = error_body(&e);
                    return c.respond(status, &rid, None, &body).await;
                }
            }
            let tls = dps_core::tls::facts_json(&c.ctx.tls, &c.ctx.peer_certificates);
            let payload = body.get("payload").filter(|p| !p.is_null()).cloned();
            match services.register(a, payload, Some(tls), api_version).await {
                Ok(op) => {
                    tracing::info!(
                        registration_id = %a.registration_id,
                        instance = %a.instance.name,
                        attestation = a.kind.as_str(),
                        status = ?op.status,
                        hub = op.registration_state.as_ref().and_then(|s| s.assigned_hub.as_deref()).unwrap_or("-"),
                        protocol = "mqtt",
                        "device registered"
                    );
                    let body = serde_json::json!({ "operationId": op.operation_id, "status": "assigning" });
                    c.respond(202, &rid, Some(RETRY_AFTER_SECS), &body).await
                }
                Err(e) => {
                    tracing::info!(registration_id = %a.registration_id, error = %e, "mqtt: registration refused");
                    let (status, body) = error_body(&e);
                    let retry = e.retry_after().map(|s| u32::try_from(s).unwrap_or(u32::MAX));
                    c.respond(status, &rid, retry, &body).await
                }
            }
        }
        Request::Poll { rid, operation_id } => match services.operation_status(a, &operation_id).await {
            Ok(op) if op.status == RegistrationStatus::Assigning => {
                c.respond(202, &rid, Some(RETRY_AFTER_SECS), &op.to_json()).await
            }
            Ok(op) => c.respond(200, &rid, None, &op.to_json()).await,
            Err(e) => {
                tracing::info!(registration_id = %a.registration_id, error = %e, "mqtt: operation status refused");
                let (status, body) = error_body(&e);
                c.respond(status, &rid, None, &body).await
            }
        },
    }
}
