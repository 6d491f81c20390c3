//! Entry points for fuzzing (the `amqp_*` targets of the workspace's `fuzz/`, through
//! `dps-fuzz`, and the corpus test that runs in `cargo test`): each takes arbitrary bytes, drives
//! one pure layer, and panics if an invariant breaks. The code under test may not panic.

use base64::Engine as _;
use fe2o3_amqp::types::messaging::MessageId;

use crate::address::{parse_link_address, same_device};
use crate::header::{self, Sniff, AMQP_HEADER, SASL_HEADER};
use crate::mapping::{self, Answer, MAX_BODY, MAX_OPERATION_ID};
use crate::replay::{FrameGuard, FrameViolation};
use crate::sasl::machine::{Identity, MAX_ID_SCOPE, MAX_REGISTRATION_ID, SEGMENT_MAX};
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

/// Longest message (log line or error text) a layer may make of hostile input: they quote at most
/// a couple of hundred characters of it, Debug-escaped (up to 10 bytes a character).
const MAX_MESSAGE: usize = 4096;

fn bounded(what: &str, message: &str) {
    assert!(message.len() < MAX_MESSAGE, "a {what} message grows with the input ({} bytes)", message.len());
}

/// The header sniff on every prefix of `data`: it waits only on prefixes of the two headers it
/// serves, recognises exactly those, and once it has decided it does not change its mind.
pub fn header_sniff(data: &[u8]) {
    let mut decided = None;
    for n in 0..=data.len().min(16) {
        let s = header::sniff(&data[..n]);
        match s {
            Sniff::NeedMore => {
                assert!(n < 8 && (SASL_HEADER.starts_with(&data[..n]) || AMQP_HEADER.starts_with(&data[..n])));
            }
            Sniff::Sasl => assert_eq!(data.get(..8), Some(&SASL_HEADER[..])),
            Sniff::Amqp => assert_eq!(data.get(..8), Some(&AMQP_HEADER[..])),
            Sniff::Unsupported { reply } => assert!(reply == SASL_HEADER || reply == AMQP_HEADER),
        }
        if let Some(d) = decided {
            assert_eq!(s, d, "the sniff changed its mind at {n} bytes");
        } else if s != Sniff::NeedMore {
            decided = Some(s);
        }
    }
}

/// A SASL exchange: `data` is what a client sends (SASL frames, back to back); the device
/// API's answers are picked by the byte after each frame. Every frame read round-trips through
/// the codec; the machine asks about well-formed identities only, challenges fit a 512-byte
/// frame, failure reasons stay short, and nothing is accepted after the exchange ended.
pub fn sasl_exchange(data: &[u8]) {
    const CAP: usize = 8 * 1024;
    let mut machine = SaslServer::new();
    let mut rest = data;
    let mut ended = false;
    loop {
        let (f, n) = match frame::decode(rest, CAP) {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => {
                bounded("SASL frame error", &e.to_string());
                break;
            }
        };
        assert!((8..=CAP.min(rest.len())).contains(&n), "a frame of {n} bytes");
        if let Ok(again) = frame::encode(&f) {
            match frame::decode(&again, usize::MAX) {
                Ok(Some((g, m))) => {
                    assert_eq!(m, again.len());
                    assert_eq!(frame::encode(&g).ok(), Some(again), "a SASL frame does not round-trip");
                }
                other => panic!("a re-encoded SASL frame reads as {other:?}"),
            }
        }
        rest = &rest[n..];
        let mut step = machine.on_frame(f);
        if ended {
            assert!(matches!(step, Step::Failed { .. }), "a frame after the end gave {step:?}");
            break;
        }
        while let Step::Authenticate { id_scope, registration_id, .. } = &step {
            let id = Identity { id_scope: id_scope.clone(), registration_id: registration_id.clone() };
            well_formed(&id);
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
        match &step {
            Step::Challenge(c) => {
                assert!(!c.is_empty() && c.len() <= SEGMENT_MAX + 1, "a challenge of {} bytes", c.len());
                let f = fe2o3_amqp::frames::sasl::Frame::Challenge(fe2o3_amqp::types::sasl::SaslChallenge {
                    challenge: c.clone().into(),
                });
                let encoded = frame::encode(&f).unwrap_or_default();
                assert!(encoded.len() <= frame::MAX_SERVER_FRAME, "a server SASL frame over 512 bytes");
            }
            Step::Succeeded(id) => well_formed(id),
            Step::Failed { reason, .. } => bounded("SASL failure", reason),
            Step::Refused { .. } | Step::Authenticate { .. } => {}
        }
        if matches!(step, Step::Succeeded(_) | Step::Failed { .. } | Step::Refused { .. }) {
            ended = true;
        }
    }
}

fn well_formed(id: &Identity) {
    for (part, max) in [(&id.id_scope, MAX_ID_SCOPE), (&id.registration_id, MAX_REGISTRATION_ID)] {
        assert!(!part.is_empty() && part.len() <= max, "{id:?}");
        assert!(!part.contains('/') && !part.chars().any(char::is_control), "{id:?}");
    }
}

/// A request message payload through the DPS mapping, and its answer; the bytes as a link
/// address too.
pub fn message_mapping(data: &[u8]) {
    match mapping::decode_request(data) {
        Ok(request) => {
            match &request.operation {
                mapping::Operation::Register { body } => assert!(body.len() <= MAX_BODY),
                mapping::Operation::OperationStatus { operation_id } => {
                    assert!(!operation_id.is_empty() && operation_id.len() <= MAX_OPERATION_ID);
                }
            }
            let id: Option<MessageId> = request.correlation_id.clone();
            match mapping::answer(&DeviceReply::Accepted { operation_id: "op".into() }, id.clone()) {
                Answer::Respond(m) => {
                    let echoed = m.properties.as_ref().and_then(|p| p.correlation_id.clone());
                    assert_eq!(echoed, id, "the correlation id is not echoed as sent");
                }
                Answer::Reject(_) => panic!("an accepted reply was rejected"),
            }
            match mapping::answer(&DeviceReply::Error(wire(400, 400_000, "x")), id) {
                Answer::Reject(e) => {
                    let json = e.description.unwrap_or_default();
                    assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok(), "{json:?}");
                }
                Answer::Respond(_) => panic!("an error was answered as a response"),
            }
        }
        Err(e) => bounded("request", &e.to_string()),
    }
    let text = String::from_utf8_lossy(data);
    if let Some(id) = parse_link_address(&text) {
        well_formed(&id);
        assert!(same_device(&id, &id));
        let suffix = format!("{}/registrations/{}", id.id_scope, id.registration_id);
        assert!(text.ends_with(&suffix), "{text:?} names {id:?}");
        assert_eq!(parse_link_address(&suffix), Some(id), "the address's own form reads differently");
    }
}

/// The AMQP frame guard: the first byte says where to split the rest, which is fed in two
/// pieces and byte by byte; every feeding stops at the same violation as a plain walk over the
/// frames. The engine's frame reader then reads the same two pieces.
pub fn frame_guard(data: &[u8]) {
    const MAX: u32 = 32 * 1024;
    let Some((&split, rest)) = data.split_first() else { return };
    let want = walk(rest, MAX);
    let split = usize::from(split).min(rest.len());
    let mut g = FrameGuard::new(MAX);
    let two = g.check(&rest[..split]).and_then(|()| g.check(&rest[split..]));
    assert_eq!(two, want, "split at {split}");
    let mut g = FrameGuard::new(MAX);
    let one = rest.iter().try_for_each(|b| g.check(std::slice::from_ref(b)));
    assert_eq!(one, want, "byte by byte");
    if let Err(v) = want {
        bounded("frame violation", &v.to_string());
    }
    engine_frames(rest, split);
}

/// The engine's frame reader (`codec::next_frame`, which decodes the performatives) on the same
/// two pieces: whatever the bytes, it returns (a frame, "need more", or an error), never panics.
fn engine_frames(rest: &[u8], split: usize) {
    const MAX: u32 = 32 * 1024;
    let mut buf = bytes::BytesMut::from(&rest[..split]);
    for more in [&rest[split..], &[][..]] {
        while let Ok(Some(_)) = crate::codec::next_frame(&mut buf, MAX) {}
        let _ = crate::codec::missing(&buf, MAX);
        buf.extend_from_slice(more);
    }
    while let Ok(Some(_)) = crate::codec::next_frame(&mut buf, MAX) {}
}

/// The frames of a stream that starts with an 8-byte protocol header, walked plainly.
fn walk(stream: &[u8], max: u32) -> Result<(), FrameViolation> {
    let mut at = 8usize;
    loop {
        let Some(size) = stream.get(at..at + 4) else { return Ok(()) };
        let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
        if size < 8 {
            return Err(FrameViolation::TooSmall(size));
        }
        if size > max {
            return Err(FrameViolation::TooLarge { size, max });
        }
        match stream.get(at + 4) {
            None => return Ok(()),
            Some(2) => {}
            Some(&doff) => return Err(FrameViolation::BadOffset(doff)),
        }
        match stream.get(at + 5) {
            None => return Ok(()),
            Some(0) => {}
            Some(&ty) => return Err(FrameViolation::BadType(ty)),
        }
        at += size as usize;
    }
}
