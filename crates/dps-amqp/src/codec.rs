//! AMQP frames over bytes (docs/amqp.md, "Connection"): the 8-byte frame header is ours, the
//! performatives and messages are `fe2o3-amqp`'s types and decoder. Pure; fuzzed.
//!
//! A frame is `size(4) doff(1) type(1) channel(2)` then the performative (and, for a transfer,
//! the payload). We check size, data offset and type before any decoder sees the bytes, so a
//! malformed frame is refused here with a clear reason.

use bytes::{Buf, BytesMut};
use fe2o3_amqp::frames::amqp::{Frame, FrameDecoder};
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{Data, Message};
use fe2o3_amqp::types::performatives::Transfer;
use fe2o3_amqp::types::primitives::Binary;
use serde::Serialize;
use tokio_util::codec::Decoder;

use crate::replay::FrameViolation;

/// The 8-byte empty frame: a heartbeat.
pub const EMPTY_FRAME: [u8; 8] = [0, 0, 0, 8, 2, 0, 0, 0];
/// The frame header's size.
pub const HEADER: usize = 8;

/// Why the next frame cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Violation(#[from] FrameViolation),
    #[error("the frame does not decode: {0}")]
    Decode(String),
}

/// Takes the next whole frame off the front of `buf` (`None`: more bytes are needed).
pub fn next_frame(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, FrameError> {
    let Some(size) = frame_size(buf, max_frame)? else { return Ok(None) };
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size);
    // The performative is checked before the decoder trusts its sizes (crate::encoding).
    if let Some(body) = frame.get(HEADER..).filter(|b| !b.is_empty()) {
        crate::encoding::check_described(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    }
    frame.advance(4);
    FrameDecoder {}.decode(&mut frame).map_err(|e| FrameError::Decode(e.to_string()))
}

/// How many more bytes the next frame needs (0: it is complete or not started).
pub fn missing(buf: &[u8], max_frame: u32) -> usize {
    match frame_size(buf, max_frame) {
        Ok(Some(size)) => size.saturating_sub(buf.len()),
        _ => 0,
    }
}

/// The size of the frame at the front of `buf`, once its header is there and checked.
fn frame_size(buf: &[u8], max_frame: u32) -> Result<Option<usize>, FrameViolation> {
    let Some(header) = buf.get(..HEADER) else { return Ok(None) };
    let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if size < HEADER as u32 {
        return Err(FrameViolation::TooSmall(size));
    }
    if size > max_frame {
        return Err(FrameViolation::TooLarge { size, max: max_frame });
    }
    if header[4] != 2 {
        return Err(FrameViolation::BadOffset(header[4]));
    }
    if header[5] != 0 {
        return Err(FrameViolation::BadType(header[5]));
    }
    Ok(Some(size as usize))
}

/// Appends one frame: the header, the performative, the payload.
pub fn encode<P: Serialize>(
    out: &mut Vec<u8>,
    channel: u16,
    performative: &P,
    payload: &[u8],
) -> Result<(), serde_amqp::Error> {
    let body = serde_amqp::to_vec(performative)?;
    let size = HEADER + body.len() + payload.len();
    let size = u32::try_from(size).map_err(|_| serde_amqp::Error::Message("frame too large".into()))?;
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[2, 0]);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(payload);
    Ok(())
}

/// The first (or only) transfer frame of a delivery: format 0, its delivery-id as the tag.
pub fn transfer(handle: u32, delivery_id: u32, settled: bool) -> Transfer {
    Transfer {
        handle: handle.into(),
        delivery_id: Some(delivery_id),
        delivery_tag: Some(Binary::from(delivery_id.to_be_bytes().to_vec())),
        message_format: Some(0),
        settled: Some(settled),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    }
}

/// The bytes of a message, as a transfer carries them.
pub fn encode_message(msg: Message<Data>) -> Result<Vec<u8>, serde_amqp::Error> {
    serde_amqp::to_vec(&Serializable(msg))
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::frames::amqp::FrameBody;
    use fe2o3_amqp::types::performatives::{Close, Detach};

    use super::*;

    #[test]
    fn frames_round_trip_split_anywhere() {
        let mut out = Vec::new();
        encode(&mut out, 3, &Detach { handle: 1.into(), closed: true, error: None }, &[]).expect("encode");
        out.extend_from_slice(&EMPTY_FRAME);
        encode(&mut out, 0, &Close { error: None }, &[]).expect("encode");
        for split in 0..out.len() {
            let mut buf = BytesMut::from(&out[..split]);
            let mut got = Vec::new();
            while let Some(f) = next_frame(&mut buf, 512).expect("frame") {
                got.push(f);
            }
            buf.extend_from_slice(&out[split..]);
            while let Some(f) = next_frame(&mut buf, 512).expect("frame") {
                got.push(f);
            }
            assert!(buf.is_empty());
            assert_eq!(got.len(), 3, "{split}");
            assert!(matches!(got[0].body, FrameBody::Detach(ref d) if d.closed && u32::from(d.handle.clone()) == 1));
            assert_eq!(got[0].channel, 3);
            assert!(matches!(got[1].body, FrameBody::Empty));
            assert!(matches!(got[2].body, FrameBody::Close(_)));
        }
    }

    #[test]
    fn refuses_malformed_headers_before_decoding() {
        for (bad, want) in [
            (&[0u8, 0, 0, 7, 2, 0, 0, 0][..], "smaller"),
            (&[0, 0, 2, 1, 2, 0, 0, 0], "exceeds"),
            (&[0, 0, 0, 8, 3, 0, 0, 0], "offset"),
            (&[0, 0, 0, 8, 2, 1, 0, 0], "type"),
        ] {
            let mut buf = BytesMut::from(bad);
            let e = next_frame(&mut buf, 512).expect_err("malformed");
            assert!(e.to_string().contains(want), "{e}");
        }
        let mut buf = BytesMut::from(&[0u8, 0, 0, 12, 2, 0, 0, 0, 0, 0x53, 0x99, 0x45][..]);
        assert!(matches!(next_frame(&mut buf, 512), Err(FrameError::Decode(_))));
        assert_eq!(missing(&[0, 0, 1, 0, 2, 0, 0, 0], 512), 248);
        assert_eq!(missing(&[0, 0, 1], 512), 0);
    }
}
