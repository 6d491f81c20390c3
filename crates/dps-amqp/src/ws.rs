//! A WebSocket as a byte stream, for protocols carried in binary WebSocket messages (AMQP
//! `AMQPWSB10`, MQTT `mqtt`): the messages are concatenated on read (a frame may span messages,
//! or a message hold several frames), and each write goes out as one binary message.
//!
//! It is generic over the WebSocket library: give it the socket (a `Stream` of messages and a
//! `Sink` for them, as axum's `WebSocket` and tokio-tungstenite's `WebSocketStream` are), a
//! function that says what a message is, and one that makes a binary message. With axum:
//!
//! ```text
//! use axum::extract::ws::Message;
//! let io = WsByteStream::new(socket, |m| match m {
//!     Message::Binary(b) => WsFrame::Binary(b),
//!     Message::Text(_) => WsFrame::Text,
//!     Message::Close(_) => WsFrame::Close,
//!     _ => WsFrame::Control,
//! }, Message::Binary);
//! ```

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a WebSocket message means to the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsFrame {
    /// Bytes of the stream.
    Binary(Bytes),
    /// A text message: not allowed on a binary protocol; the stream fails.
    Text,
    /// The peer closed: end of stream.
    Close,
    /// Ping, pong: the WebSocket library's business; skipped.
    Control,
}

/// A WebSocket as `AsyncRead + AsyncWrite`.
pub struct WsByteStream<W, M> {
    ws: W,
    classify: fn(M) -> WsFrame,
    binary: fn(Bytes) -> M,
    read: Bytes,
    eof: bool,
}

impl<W, M> WsByteStream<W, M> {
    pub fn new(ws: W, classify: fn(M) -> WsFrame, binary: fn(Bytes) -> M) -> Self {
        WsByteStream { ws, classify, binary, read: Bytes::new(), eof: false }
    }
}

impl<W, M> std::fmt::Debug for WsByteStream<W, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsByteStream")
            .field("buffered", &self.read.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<W, M, E> AsyncRead for WsByteStream<W, M>
where
    W: Stream<Item = Result<M, E>> + Unpin,
    E: std::fmt::Display,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            if !me.read.is_empty() {
                let n = me.read.len().min(buf.remaining());
                buf.put_slice(&me.read[..n]);
                me.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut me.ws).poll_next(cx)) {
                Some(Ok(m)) => match (me.classify)(m) {
                    WsFrame::Binary(b) => me.read = b,
                    WsFrame::Text => {
                        me.eof = true;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text WebSocket message on a binary protocol",
                        )));
                    }
                    WsFrame::Close => me.eof = true,
                    WsFrame::Control => {}
                },
                Some(Err(e)) => {
                    me.eof = true;
                    return Poll::Ready(Err(io::Error::other(e.to_string())));
                }
                None => me.eof = true,
            }
        }
    }
}

impl<W, M> AsyncWrite for WsByteStream<W, M>
where
    W: Sink<M> + Unpin,
    <W as Sink<M>>::Error: std::fmt::Display,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        ready!(Pin::new(&mut me.ws).poll_ready(cx)).map_err(|e| io::Error::other(e.to_string()))?;
        let message = (me.binary)(Bytes::copy_from_slice(buf));
        Pin::new(&mut me.ws).start_send(message).map_err(|e| io::Error::other(e.to_string()))?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(|e| io::Error::other(e.to_string()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(|e| io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Msg {
        Bin(Bytes),
        Text,
        Ping,
        Close,
    }

    fn classify(m: Msg) -> WsFrame {
        match m {
            Msg::Bin(b) => WsFrame::Binary(b),
            Msg::Text => WsFrame::Text,
            Msg::Ping => WsFrame::Control,
            Msg::Close => WsFrame::Close,
        }
    }

    /// A message channel pair standing in for the two ends of a WebSocket.
    fn pair() -> (
        impl Stream<Item = Result<Msg, String>> + Sink<Msg, Error = String> + Unpin,
        futures::channel::mpsc::Sender<Msg>,
        futures::channel::mpsc::Receiver<Msg>,
    ) {
        let (in_tx, in_rx) = futures::channel::mpsc::channel::<Msg>(16);
        let (out_tx, out_rx) = futures::channel::mpsc::channel::<Msg>(16);
        let sink = out_tx.sink_map_err(|e| e.to_string());
        let stream = in_rx.map(Ok::<Msg, String>);
        (Duplex { stream, sink }, in_tx, out_rx)
    }

    struct Duplex<St, Si> {
        stream: St,
        sink: Si,
    }
    impl<St: Stream + Unpin, Si: Unpin> Stream for Duplex<St, Si> {
        type Item = St::Item;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<St::Item>> {
            Pin::new(&mut self.stream).poll_next(cx)
        }
    }
    impl<St: Unpin, Si: Sink<Msg> + Unpin> Sink<Msg> for Duplex<St, Si> {
        type Error = Si::Error;
        fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.sink).poll_ready(cx)
        }
        fn start_send(mut self: Pin<&mut Self>, item: Msg) -> Result<(), Self::Error> {
            Pin::new(&mut self.sink).start_send(item)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.sink).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.sink).poll_close(cx)
        }
    }

    #[tokio::test]
    async fn concatenates_binary_messages_and_skips_control() {
        let (ws, mut tx, mut rx) = pair();
        let mut io = WsByteStream::new(ws, classify, Msg::Bin);
        tx.send(Msg::Bin(Bytes::from_static(b"AMQP"))).await.expect("send");
        tx.send(Msg::Ping).await.expect("send");
        tx.send(Msg::Bin(Bytes::new())).await.expect("send");
        tx.send(Msg::Bin(Bytes::from_static(b"\x03\x01\x00\x00rest"))).await.expect("send");
        tx.send(Msg::Close).await.expect("send");
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"AMQP\x03\x01\x00\x00rest");
        io.write_all(b"answer").await.expect("write");
        io.flush().await.expect("flush");
        assert_eq!(rx.next().await, Some(Msg::Bin(Bytes::from_static(b"answer"))));
    }

    #[tokio::test]
    async fn a_text_message_fails_the_stream() {
        let (ws, mut tx, _rx) = pair();
        let mut io = WsByteStream::new(ws, classify, Msg::Bin);
        tx.send(Msg::Text).await.expect("send");
        let mut b = [0u8; 8];
        let err = io.read(&mut b).await.expect_err("text refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(io.read(&mut b).await.expect("eof after failure"), 0);
    }
}
