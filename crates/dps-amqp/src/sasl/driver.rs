//! The async side of SASL: reads and writes frames, asks the device API, keeps the time limit.
//! Every failure is answered with a sasl-outcome before the connection closes (a TPM client
//! that is dropped silently waits for its own timeout).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fe2o3_amqp::frames::sasl::Frame;
use fe2o3_amqp::types::sasl::{SaslCode, SaslOutcome};
use fe2o3_amqp::types::{primitives::Binary, sasl::SaslChallenge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::frame;
use base64::Engine as _;
use dps_core::device::{Credential, DeviceSession, TpmKeys};

use super::machine::{Identity, SaslCredential, SaslServer, Step};

/// Limits of the SASL phase.
#[derive(Clone, Copy, Debug)]
pub struct SaslLimits {
    /// Largest frame a client may send (more than 512: TPM inits are larger).
    pub max_frame: usize,
    /// The whole exchange, from the header on (PLAIN).
    pub timeout: Duration,
    /// The whole exchange once the client chose TPM (the device does TPM work in between).
    pub tpm_timeout: Duration,
}

/// How the exchange ended when it did not authenticate (the outcome is already sent).
#[derive(Debug)]
pub(crate) enum SaslEnd {
    /// The client closed or the socket failed.
    Closed,
    /// Failed, timed out or malformed; the reason is for the log.
    Failed { code: SaslCode, reason: String },
    /// The device API refused the device; it logged why.
    Refused { code: SaslCode },
}

enum Read {
    Frame(Frame),
    Closed,
    Bad(String),
}

async fn read_frame<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut, cap: usize) -> Read {
    loop {
        match frame::decode(buf, cap) {
            Ok(Some((f, n))) => {
                buf.advance(n);
                return Read::Frame(f);
            }
            Ok(None) => {}
            Err(e) => return Read::Bad(e.to_string()),
        }
        buf.reserve(1024.min(cap));
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Read::Closed,
            Ok(_) => {}
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, f: &Frame) -> bool {
    match frame::encode(f) {
        Ok(bytes) => io.write_all(&bytes).await.is_ok() && io.flush().await.is_ok(),
        Err(_) => false,
    }
}

async fn fail<S: AsyncWrite + Unpin>(io: &mut S, code: SaslCode, reason: String) -> SaslEnd {
    let outcome = Frame::Outcome(SaslOutcome { code: code.clone(), additional_data: None });
    send(io, &outcome).await;
    SaslEnd::Failed { code, reason }
}

/// Runs SASL after the client's SASL header: sends our header and the mechanisms, then the
/// exchange. On success the outcome `ok` is sent and `buf` holds whatever the client sent after
/// its last SASL frame (its AMQP header, pipelined).
pub(crate) async fn run<S>(
    io: &mut S,
    buf: &mut BytesMut,
    session: &mut DeviceSession,
    api_version: Option<&str>,
    limits: SaslLimits,
    peer: SocketAddr,
) -> Result<Identity, SaslEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut machine = SaslServer::new();
    let mut out = crate::header::SASL_HEADER.to_vec();
    out.extend(frame::encode(&SaslServer::mechanisms()).unwrap_or_default());
    if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
        return Err(SaslEnd::Closed);
    }
    let deadline = |m: &SaslServer| started + if m.is_tpm() { limits.tpm_timeout } else { limits.timeout };
    let mut step = match tokio::time::timeout_at(deadline(&machine), read_frame(io, buf, limits.max_frame)).await {
        Ok(Read::Frame(f)) => machine.on_frame(f),
        Ok(Read::Closed) => return Err(SaslEnd::Closed),
        Ok(Read::Bad(why)) => return Err(fail(io, SaslCode::SysPerm, why).await),
        Err(_) => return Err(fail(io, SaslCode::SysTemp, "no SASL init in time".into()).await),
    };
    loop {
        step = match step {
            Step::Challenge(bytes) => {
                let challenge = Frame::Challenge(SaslChallenge { challenge: Binary::from(bytes) });
                if !send(io, &challenge).await {
                    return Err(SaslEnd::Closed);
                }
                match tokio::time::timeout_at(deadline(&machine), read_frame(io, buf, limits.max_frame)).await {
                    Ok(Read::Frame(f)) => machine.on_frame(f),
                    Ok(Read::Closed) => return Err(SaslEnd::Closed),
                    Ok(Read::Bad(why)) => return Err(fail(io, SaslCode::SysPerm, why).await),
                    Err(_) => return Err(fail(io, SaslCode::SysTemp, "no SASL response in time".into()).await),
                }
            }
            Step::Authenticate { id_scope, registration_id, credential } => {
                let keys;
                let credential = match &credential {
                    SaslCredential::Sas(token) => Credential::Sas(token),
                    SaslCredential::Tpm { endorsement_key, storage_root_key } => {
                        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
                        keys = TpmKeys {
                            endorsement_key: b64(endorsement_key),
                            storage_root_key: Some(b64(storage_root_key)),
                        };
                        Credential::Tpm(&keys)
                    }
                };
                let asked = session.authenticate(&id_scope, &registration_id, api_version, credential);
                match tokio::time::timeout_at(deadline(&machine), asked).await {
                    Ok(outcome) => machine.on_auth(outcome),
                    Err(_) => {
                        tracing::warn!(%peer, registration_id = %registration_id, "amqp: authentication did not finish within the SASL time limit");
                        return Err(fail(io, SaslCode::SysTemp, "authentication took too long".into()).await);
                    }
                }
            }
            Step::Succeeded(identity) => {
                let ok = Frame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None });
                if !send(io, &ok).await {
                    return Err(SaslEnd::Closed);
                }
                return Ok(identity);
            }
            Step::Failed { code, reason } => return Err(fail(io, code, reason).await),
            Step::Refused { code } => {
                let _ = fail(io, code.clone(), String::new()).await;
                return Err(SaslEnd::Refused { code });
            }
        };
    }
}
