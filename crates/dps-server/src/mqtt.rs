//! The MQTT port until the MQTT device API lands: the TLS handshake completes (so the port can
//! be scanned and its handshake facts logged), and an MQTT CONNECT is answered with CONNACK
//! return code 3, "server unavailable", which every MQTT 3.1.1 client reports as such.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const CONNECT: u8 = 0x10;
/// CONNACK, remaining length 2, session-present 0, return code 3 (server unavailable).
const CONNACK_UNAVAILABLE: [u8; 4] = [0x20, 0x02, 0x00, 0x03];
const IDLE: Duration = Duration::from_secs(30);

pub(crate) async fn serve_connection<S>(mut io: S, peer: SocketAddr, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut first = [0u8; 1];
    let read = tokio::select! {
        () = shutdown.cancelled() => return,
        r = tokio::time::timeout(IDLE, io.read(&mut first)) => r,
    };
    if let Ok(Ok(1)) = read {
        if first[0] & 0xF0 == CONNECT {
            tracing::info!(%peer, "mqtt CONNECT refused: the MQTT device API is not available yet");
            let _ = io.write_all(&CONNACK_UNAVAILABLE).await;
        } else {
            tracing::info!(%peer, first_byte = first[0], "mqtt connection did not start with CONNECT; closing");
        }
    }
    let _ = io.shutdown().await;
}
