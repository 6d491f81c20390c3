//! Entry points for fuzzing (the `fuzz/` targets of `cargo fuzz`, and the corpus test that runs
//! in `cargo test`): each takes arbitrary bytes and drives one pure layer. None may panic.

use base64::Engine as _;
use fe2o3_amqp::types::messaging::MessageId;

use crate::header;
use crate::mapping;
use crate::replay::FrameGuard;
use crate::sasl::{frame, SaslServer, Step};
use dps_core::device::{AuthOutcome, DeviceReply};
use dps_core::error::WireError;

/// A DPS error body as the device API would give it (for fuzzing and the unit tests).
pub fn wire(status: u16, error_code: u32, message: &str) -> WireError {
    WireError {
        status,
        error_code,
        message: message.into(),
        tracking_id: "t".into(),
        timestamp_utc: "2026-01-01T00:00:00Z".into(),
        retry_after: None,
    }
}

/// The header sniff on every prefix of `data`.
pub fn header_sniff(data: &[u8]) {
    for n in 0..=data.len().min(16) {
        let _ = header::sniff(&data[..n]);
    }
}

/// A SASL exchange: `data` is what a client sends (SASL frames, back to back); the device
/// API's answers are picked by the byte after each frame.
pub fn sasl_exchange(data: &[u8]) {
    let mut machine = SaslServer::new();
    let mut rest = data;
    while let Ok(Some((f, n))) = frame::decode(rest, 8 * 1024) {
        rest = &rest[n..];
        let mut step = machine.on_frame(f);
        while let Step::Authenticate { .. } = step {
            let pick = rest.first().copied().unwrap_or(0);
            rest = rest.get(1..).unwrap_or(&[]);
            let outcome = match pick % 4 {
                0 => AuthOutcome::Attested,
                1 => AuthOutcome::Refused(wire(401, 401_002, "no")),
                2 => {
                    let len = usize::from(pick) * 8;
                    AuthOutcome::Challenge {
                        authentication_key: base64::engine::general_purpose::STANDARD.encode(vec![0xA5; len]),
                    }
                }
                _ => AuthOutcome::Challenge {
                    authentication_key: String::from_utf8_lossy(rest.get(..8).unwrap_or(rest)).into_owned(),
                },
            };
            step = machine.on_auth(outcome);
        }
        if let Step::Challenge(c) = &step {
            let f = fe2o3_amqp::frames::sasl::Frame::Challenge(fe2o3_amqp::types::sasl::SaslChallenge {
                challenge: c.clone().into(),
            });
            let encoded = frame::encode(&f).unwrap_or_default();
            assert!(encoded.len() <= frame::MAX_SERVER_FRAME, "a server SASL frame over 512 bytes");
        }
        if matches!(step, Step::Succeeded(_) | Step::Failed { .. } | Step::Refused { .. }) {
            break;
        }
    }
}

/// A request message payload through the DPS mapping, and its answer.
pub fn message_mapping(data: &[u8]) {
    if let Ok(request) = mapping::decode_request(data) {
        let id: Option<MessageId> = request.correlation_id.clone();
        let _ = mapping::answer(&DeviceReply::Accepted { operation_id: "op".into() }, id.clone());
        let _ = mapping::answer(&DeviceReply::Error(wire(400, 400_000, "x")), id);
    }
    let _ = crate::address::parse_link_address(&String::from_utf8_lossy(data));
}

/// The AMQP frame guard, fed in two pieces split where the first byte says; and the engine's
/// frame reader (`codec::next_frame`, which decodes the performatives) on the same two pieces.
pub fn frame_guard(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else { return };
    let split = usize::from(split).min(rest.len());
    let mut g = FrameGuard::new(32 * 1024);
    if g.check(&rest[..split]).is_ok() {
        let _ = g.check(&rest[split..]);
    }
    let mut buf = bytes::BytesMut::from(&rest[..split]);
    for more in [&rest[split..], &[][..]] {
        while let Ok(Some(_)) = crate::codec::next_frame(&mut buf, 32 * 1024) {}
        let _ = crate::codec::missing(&buf, 32 * 1024);
        buf.extend_from_slice(more);
    }
    while let Ok(Some(_)) = crate::codec::next_frame(&mut buf, 32 * 1024) {}
}
