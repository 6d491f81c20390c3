//! AMQP frame boundaries followed over a byte stream, holding no frame data: the same checks as
//! [`crate::codec`] makes on each frame header (size, data offset, type), as a pure state machine
//! the fuzz targets drive byte by byte.

/// Why the byte stream is not a sequence of AMQP frames.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameViolation {
    #[error("frame size {0} is smaller than the 8-byte frame header")]
    TooSmall(u32),
    #[error("frame of {size} bytes exceeds the agreed maximum of {max}")]
    TooLarge { size: u32, max: u32 },
    #[error("data offset {0} (only 2 is used)")]
    BadOffset(u8),
    #[error("frame type {0:#04x} is not an AMQP frame")]
    BadType(u8),
}

#[derive(Clone, Copy, Debug)]
enum GuardState {
    /// Skipping the protocol header (bytes left).
    Header(usize),
    /// Reading the 4-byte size.
    Size {
        bytes: [u8; 4],
        have: usize,
    },
    Offset {
        size: u32,
    },
    Type {
        size: u32,
    },
    /// Skipping the rest of the frame.
    Body(usize),
    Broken,
}

/// Follows AMQP frame boundaries in a byte stream that starts with the 8-byte protocol header.
/// Holds no frame data; pure.
#[derive(Clone, Debug)]
pub struct FrameGuard {
    state: GuardState,
    max_frame: u32,
}

impl FrameGuard {
    pub fn new(max_frame: u32) -> FrameGuard {
        FrameGuard { state: GuardState::Header(8), max_frame }
    }

    /// Checks the next bytes of the stream.
    pub fn check(&mut self, mut data: &[u8]) -> Result<(), FrameViolation> {
        while !data.is_empty() {
            let state = self.state;
            self.state = match state {
                GuardState::Broken => return Ok(()),
                GuardState::Header(left) => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    if left == n {
                        GuardState::Size { bytes: [0; 4], have: 0 }
                    } else {
                        GuardState::Header(left - n)
                    }
                }
                GuardState::Size { mut bytes, have } => {
                    bytes[have] = data[0];
                    data = &data[1..];
                    if have + 1 < 4 {
                        GuardState::Size { bytes, have: have + 1 }
                    } else {
                        let size = u32::from_be_bytes(bytes);
                        if size < 8 {
                            return self.broken(FrameViolation::TooSmall(size));
                        }
                        if size > self.max_frame {
                            return self.broken(FrameViolation::TooLarge { size, max: self.max_frame });
                        }
                        GuardState::Offset { size }
                    }
                }
                GuardState::Offset { size } => {
                    let doff = data[0];
                    data = &data[1..];
                    if doff != 2 {
                        return self.broken(FrameViolation::BadOffset(doff));
                    }
                    GuardState::Type { size }
                }
                GuardState::Type { size } => {
                    let ty = data[0];
                    data = &data[1..];
                    if ty != 0 {
                        return self.broken(FrameViolation::BadType(ty));
                    }
                    // 4 size + 1 doff + 1 type are behind us.
                    GuardState::Body(size as usize - 6)
                }
                GuardState::Body(left) => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    if left == n {
                        GuardState::Size { bytes: [0; 4], have: 0 }
                    } else {
                        GuardState::Body(left - n)
                    }
                }
            };
        }
        Ok(())
    }

    fn broken(&mut self, v: FrameViolation) -> Result<(), FrameViolation> {
        self.state = GuardState::Broken;
        Err(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(size: u32, doff: u8, ty: u8, body: usize) -> Vec<u8> {
        let mut v = size.to_be_bytes().to_vec();
        v.extend_from_slice(&[doff, ty, 0, 0]);
        v.extend(std::iter::repeat_n(0x40, body));
        v
    }

    #[test]
    fn passes_well_formed_frames_split_anywhere() {
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend(frame(8, 2, 0, 0)); // heartbeat
        stream.extend(frame(30, 2, 0, 22));
        stream.extend(frame(8, 2, 0, 0));
        for split in 0..stream.len() {
            let mut g = FrameGuard::new(512);
            assert_eq!(g.check(&stream[..split]), Ok(()), "{split}");
            assert_eq!(g.check(&stream[split..]), Ok(()), "{split}");
        }
        let mut g = FrameGuard::new(512);
        for b in &stream {
            assert_eq!(g.check(std::slice::from_ref(b)), Ok(()));
        }
    }

    #[test]
    fn stops_at_the_first_malformed_frame() {
        let header = b"AMQP\x00\x01\x00\x00".to_vec();
        for (bad, want) in [
            (frame(7, 2, 0, 0), FrameViolation::TooSmall(7)),
            (frame(0, 2, 0, 0), FrameViolation::TooSmall(0)),
            (frame(513, 2, 0, 505), FrameViolation::TooLarge { size: 513, max: 512 }),
            (frame(8, 3, 0, 0), FrameViolation::BadOffset(3)),
            (frame(8, 2, 1, 0), FrameViolation::BadType(1)),
        ] {
            let mut g = FrameGuard::new(512);
            let mut s = header.clone();
            s.extend(bad);
            assert_eq!(g.check(&s), Err(want));
        }
    }
}
