//! WebSockets on the HTTPS port (docs/protocol.md, "MQTT over WebSockets"): `GET /$iothub/websocket` or
//! `GET /` (C# uses no path) with `Upgrade: websocket`. The sub-protocol the client offers picks
//! the driver (`mqtt` → MQTT, `AMQPWSB10` → AMQP); the composition root registers the drivers
//! as [`WsRoute`]s, so this crate depends on none of them. Binary messages carry the protocol's
//! byte stream, which the driver reads and writes as if it were the TLS stream of its own port.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dps_core::device::{ConnectionFacts, Transport};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::{AppState, ConnectionInfo};

/// A bidirectional byte stream (a WebSocket's binary messages, read and written as bytes).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A driver for one sub-protocol: takes the byte stream, the connection's facts (transport set
/// to the WebSocket form) and the shutdown token.
pub type WsHandler = Arc<
    dyn Fn(Box<dyn ByteStream>, ConnectionFacts, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A sub-protocol route.
#[derive(Clone)]
pub struct WsRoute {
    /// The sub-protocol names as clients offer them, e.g. `["mqtt", "MQTT"]` (C offers upper
    /// case); the one offered is echoed exactly.
    pub protocols: Vec<&'static str>,
    /// The transport this route is, for the device API (`MqttWs`, `AmqpWs`).
    pub transport: Transport,
    /// Largest message accepted.
    pub max_message: usize,
    pub handler: WsHandler,
}

impl std::fmt::Debug for WsRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsRoute").field("protocols", &self.protocols).field("transport", &self.transport).finish()
    }
}

/// The registered routes.
#[derive(Debug)]
pub(crate) struct WsRoutes(Vec<WsRoute>);

impl WsRoutes {
    pub(crate) fn new(routes: Vec<WsRoute>) -> Self {
        WsRoutes(routes)
    }
}

/// `GET /$iothub/websocket` and `GET /`: a WebSocket upgrade routed by sub-protocol, else 404.
pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    Extension(routes): Extension<Arc<WsRoutes>>,
    conn: Option<Extension<ConnectionInfo>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let path = uri.path().to_owned();
    let Ok(ws) = ws else {
        return ApiError::new(404, format!("GET {path} is not a DPS operation (a WebSocket upgrade is expected here)"))
            .into_response(&state, "GET", &path);
    };
    let Some(Extension(conn)) = conn else {
        return ApiError::new(500, "connection information missing").into_response(&state, "GET", &path);
    };
    // The first offered sub-protocol we serve, compared case-insensitively, echoed as offered.
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let chosen = offered.iter().find_map(|o| {
        routes.0.iter().find(|r| r.protocols.iter().any(|p| p.eq_ignore_ascii_case(o))).map(|r| (o.clone(), r.clone()))
    });
    let Some((protocol, route)) = chosen else {
        let names: Vec<&str> = routes.0.iter().flat_map(|r| r.protocols.iter().copied()).collect();
        return ApiError::bad_request(format!(
            "the WebSocket sub-protocol must be one of {}; the client offered {:?}",
            names.join(", "),
            dps_core::device::excerpt(&offered.join(","), 100)
        ))
        .into_response(&state, "GET", &path);
    };
    let shutdown = state.shutdown.clone();
    let mut facts = conn.facts.clone();
    facts.transport = route.transport;
    let protocol: &'static str = route.protocols.iter().copied().find(|p| *p == protocol).unwrap_or(route.protocols[0]);
    ws.protocols([protocol])
        .max_message_size(route.max_message)
        .on_upgrade(move |socket| async move {
            (route.handler)(byte_stream(socket), facts, shutdown).await;
        })
        .into_response()
}

/// A WebSocket as a byte stream: binary messages in, binary messages out. A close message or
/// the end of the socket is the end of the stream; text messages are ignored; closing the
/// writer flushes every byte written and then sends the close message.
pub fn byte_stream(socket: WebSocket) -> Box<dyn ByteStream> {
    let (sink, stream) = socket.split();
    let reader = StreamReader::new(
        stream.take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_))))).filter_map(|m| {
            std::future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok::<Bytes, std::io::Error>(b)),
                Ok(_) => None,
                Err(e) => Some(Err(std::io::Error::other(e))),
            })
        }),
    );
    let writer = SinkWriter::new(CopyToBytes::new(
        sink.sink_map_err(std::io::Error::other)
            .with(|b: Bytes| std::future::ready(Ok::<_, std::io::Error>(Message::Binary(b)))),
    ));
    Box::new(tokio::io::join(reader, writer))
}
