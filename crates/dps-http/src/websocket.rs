//! MQTT over WebSockets on the HTTPS port (dps-protocol.md §2.6): `GET /$iothub/websocket` or
//! `GET /` with `Upgrade: websocket` and sub-protocol `mqtt`. Binary frames carry the MQTT byte
//! stream, which is handed to the same MQTT driver as port 8883.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{AppState, ConnectionInfo};

/// The upgrade handler.
pub async fn mqtt_over_websocket(
    State(state): State<Arc<AppState>>,
    conn: Option<Extension<ConnectionInfo>>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(Extension(conn)) = conn else {
        return crate::error::ApiError::new(500, "connection information missing")
            .into_response_logged("GET", "websocket");
    };
    ws.protocols(["mqtt", "MQTT"])
        .max_message_size(dps_mqtt::session::MAX_PACKET * 2)
        .on_upgrade(move |socket| run(socket, state, conn))
        .into_response()
}

async fn run(socket: WebSocket, state: Arc<AppState>, conn: ConnectionInfo) {
    let (ours, theirs) = tokio::io::duplex(dps_mqtt::session::MAX_PACKET * 2);
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(ours);
    // WebSocket → MQTT driver.
    let inbound = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // MQTT driver → WebSocket.
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    });
    let ctx = dps_mqtt::ConnectionContext {
        peer: conn.peer,
        tls: conn.tls.clone(),
        peer_certificates: conn.peer_certificates.clone(),
        services: state.services.clone(),
    };
    dps_mqtt::serve_connection(theirs, ctx, state.shutdown.clone()).await;
    outbound.abort();
    inbound.abort();
}
