//! The stream handed to fe2o3 after the header (and SASL): it first replays the bytes we
//! already read (the client's AMQP header, and whatever came with it), and it checks AMQP frame
//! boundaries as they pass, so a malformed frame ends the connection here instead of reaching a
//! decoder that would index past its end.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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

/// Replays `prefix`, then reads `inner`; every byte read passes the [`FrameGuard`]. When
/// `kill` is cancelled the stream ends (reads see EOF, writes fail), whoever holds it.
pub(crate) struct Replay<S> {
    prefix: Bytes,
    inner: S,
    guard: FrameGuard,
    peer: SocketAddr,
    failed: bool,
    /// Set once a violation was logged, so the driver does not log the same failure again.
    reported: Arc<AtomicBool>,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Replay<S> {
    pub(crate) fn new(
        prefix: Bytes,
        inner: S,
        max_frame: u32,
        peer: SocketAddr,
        kill: CancellationToken,
        reported: Arc<AtomicBool>,
    ) -> Replay<S> {
        Replay {
            reported,
            prefix,
            inner,
            guard: FrameGuard::new(max_frame),
            peer,
            failed: false,
            kill: Box::pin(kill.cancelled_owned()),
        }
    }

    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.kill.as_mut().poll(cx).is_ready()
    }

    fn violation(&mut self, v: FrameViolation) -> io::Error {
        if !self.failed {
            self.failed = true;
            self.reported.store(true, Ordering::Relaxed);
            tracing::info!(peer = %self.peer, reason = %v, "amqp: malformed frame; closing the connection");
        }
        io::Error::new(io::ErrorKind::InvalidData, v)
    }
}

impl<S> std::fmt::Debug for Replay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("prefix", &self.prefix.len()).field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.killed(cx) {
            return Poll::Ready(Ok(()));
        }
        if me.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "malformed AMQP frame")));
        }
        if !me.prefix.is_empty() {
            let n = me.prefix.len().min(buf.remaining());
            let chunk = me.prefix.split_to(n);
            if let Err(v) = me.guard.check(&chunk) {
                return Poll::Ready(Err(me.violation(v)));
            }
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                match me.guard.check(new) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(v) => {
                        buf.set_filled(before);
                        Poll::Ready(Err(me.violation(v)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
