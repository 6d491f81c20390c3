//! SASL frames on the wire (AMQP 1.0 part 5.3): a 4-byte size, data offset, type 1, two
//! ignored bytes, then one described list. Pure: the driver owns the buffer.
//!
//! The body is encoded and decoded by `fe2o3-amqp`'s SASL frame type; the framing around it is
//! ours, so the size cap is ours (fe2o3's own SASL decoder stops at 512 bytes, which TPM inits
//! exceed) and a short frame is an error instead of a panic in a `Buf` read.

use fe2o3_amqp::frames::sasl::Frame;

/// Type byte of a SASL frame.
const FRAME_TYPE_SASL: u8 = 0x01;
/// Size of the fixed frame header (size, doff, type, two ignored bytes).
const HEADER: usize = 8;
/// The largest frame the server sends during SASL: before Open nobody has agreed to more than
/// AMQP's minimum max-frame-size.
pub const MAX_SERVER_FRAME: usize = 512;

/// Why a SASL frame cannot be read. The connection ends (after a failed outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("SASL frame of {size} bytes exceeds the {cap}-byte limit")]
    TooLarge { size: usize, cap: usize },
    #[error("SASL frame size {0} is smaller than the frame header")]
    TooSmall(usize),
    #[error("data offset {0} is not valid for this frame")]
    BadOffset(u8),
    #[error("frame type {0:#04x} is not SASL")]
    NotSasl(u8),
    #[error("SASL frame has no body")]
    Empty,
    #[error("SASL frame body does not decode: {0}")]
    Decode(String),
}

/// Reads one frame from the front of `buf`. `Ok(None)`: not all of it is there yet (and what
/// is there is within `cap`); `Ok(Some((frame, n)))`: the frame and its length in bytes.
pub fn decode(buf: &[u8], cap: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(size) = buf.get(..4) else { return Ok(None) };
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if size > cap {
        return Err(FrameError::TooLarge { size, cap });
    }
    if size < HEADER {
        return Err(FrameError::TooSmall(size));
    }
    let Some(frame) = buf.get(..size) else { return Ok(None) };
    let doff = frame[4];
    let body_start = usize::from(doff) * 4;
    if doff < 2 || body_start > size {
        return Err(FrameError::BadOffset(doff));
    }
    if frame[5] != FRAME_TYPE_SASL {
        return Err(FrameError::NotSasl(frame[5]));
    }
    let body = &frame[body_start..];
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    // A SASL frame's body is the one described value (docs/amqp.md, "Encoded values").
    crate::encoding::check_described(body)
        .and_then(|n| if n == body.len() { Ok(()) } else { Err(crate::encoding::EncodingError::SizeMismatch) })
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    let decoded: Frame = serde_amqp::from_slice(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok(Some((decoded, size)))
}

/// Encodes one frame (size, doff 2, type 1, then the body).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let body = serde_amqp::to_vec(frame).map_err(|e| FrameError::Decode(e.to_string()))?;
    let size = HEADER + body.len();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&[0x02, FRAME_TYPE_SASL, 0x00, 0x00]);
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::primitives::{Binary, Symbol};
    use fe2o3_amqp::types::sasl::{SaslInit, SaslMechanisms};

    use super::*;

    fn init(len: usize) -> Frame {
        Frame::Init(SaslInit {
            mechanism: Symbol::from("TPM"),
            initial_response: Some(Binary::from(vec![7u8; len])),
            hostname: Some("localhost".into()),
        })
    }

    #[test]
    fn round_trips_and_reports_every_prefix_as_incomplete() {
        let bytes = encode(&init(600)).expect("encode");
        assert!(bytes.len() > 512, "a TPM-sized init is larger than fe2o3's own cap");
        for n in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..n], 4096), Ok(None)), "prefix {n}");
        }
        let (frame, n) = decode(&bytes, 4096).expect("decode").expect("complete");
        assert_eq!(n, bytes.len());
        match frame {
            Frame::Init(i) => assert_eq!(i.initial_response.map(|b| b.len()), Some(600)),
            other => panic!("not an init: {other:?}"),
        }
    }

    #[test]
    fn leaves_following_bytes_alone() {
        let mut bytes =
            encode(&Frame::Mechanisms(SaslMechanisms { sasl_server_mechanisms: vec![Symbol::from("PLAIN")].into() }))
                .expect("encode");
        let len = bytes.len();
        bytes.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        let (_, n) = decode(&bytes, 512).expect("decode").expect("complete");
        assert_eq!(n, len);
    }

    #[test]
    fn refuses_bad_frames_without_waiting_for_them() {
        assert_eq!(decode(&[0, 16, 0, 0], 4096).err(), Some(FrameError::TooLarge { size: 0x0010_0000, cap: 4096 }));
        assert_eq!(decode(&[0, 0, 0, 4], 4096).err(), Some(FrameError::TooSmall(4)));
        assert_eq!(decode(&[0, 0, 0, 8, 2, 1, 0, 0], 4096).err(), Some(FrameError::Empty));
        assert_eq!(decode(&[0, 0, 0, 9, 1, 1, 0, 0, 0x45], 4096).err(), Some(FrameError::BadOffset(1)));
        assert_eq!(decode(&[0, 0, 0, 9, 9, 1, 0, 0, 0x45], 4096).err(), Some(FrameError::BadOffset(9)));
        assert_eq!(decode(&[0, 0, 0, 9, 2, 0, 0, 0, 0x45], 4096).err(), Some(FrameError::NotSasl(0)));
        assert!(matches!(decode(&[0, 0, 0, 9, 2, 1, 0, 0, 0x45], 4096), Err(FrameError::Decode(_))));
    }
}
