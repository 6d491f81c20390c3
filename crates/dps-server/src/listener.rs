//! One accept loop per listener: connection cap, TLS handshake, then the port's protocol
//! driver. The drivers are built once (`Drivers`), including the WebSocket routes that the
//! HTTPS port hands to the MQTT and AMQP drivers.

use std::sync::Arc;
use std::time::Duration;

use dps_core::device::{ConnectionFacts, Transport};
use dps_tls::ListenerAcceptor;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What runs inside TLS on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Https,
    Mqtt,
    Amqp,
}

impl Protocol {
    fn transport(self) -> Transport {
        match self {
            Protocol::Https => Transport::Https,
            Protocol::Mqtt => Transport::Mqtt,
            Protocol::Amqp => Transport::Amqp,
        }
    }
}

/// Every protocol driver, built once and shared by the accept loops.
#[derive(Clone, Debug)]
pub(crate) struct Drivers {
    https: dps_http::HttpService,
    services: dps_core::service::Services,
    mqtt_limits: dps_mqtt::Limits,
    amqp: Arc<dps_amqp::AmqpSettings>,
}

impl Drivers {
    pub(crate) fn new(
        state: Arc<dps_http::AppState>,
        mqtt_limits: dps_mqtt::Limits,
        amqp: Arc<dps_amqp::AmqpSettings>,
    ) -> Self {
        let services = state.services.clone();
        let mqtt_ws = {
            let services = services.clone();
            dps_http::WsRoute {
                protocols: vec!["mqtt", "MQTT"],
                transport: Transport::MqttWs,
                max_message: dps_mqtt::session::MAX_PACKET * 2,
                handler: Arc::new(move |stream, facts, shutdown| {
                    let ctx = dps_mqtt::ConnectionContext { facts, services: services.clone(), limits: mqtt_limits };
                    Box::pin(dps_mqtt::serve_connection(stream, ctx, shutdown))
                }),
            }
        };
        let amqp_ws = {
            let services = services.clone();
            let settings = amqp.clone();
            dps_http::WsRoute {
                protocols: vec![dps_amqp::WEBSOCKET_PROTOCOL],
                transport: Transport::AmqpWs,
                // A client may put several AMQP frames in one message.
                max_message: 4 * settings.max_frame_size as usize,
                handler: Arc::new(move |stream, facts, shutdown| {
                    let ctx =
                        dps_amqp::ConnectionContext { facts, services: services.clone(), settings: settings.clone() };
                    Box::pin(dps_amqp::serve_connection(stream, ctx, shutdown))
                }),
            }
        };
        Drivers { https: dps_http::HttpService::new(state, vec![mqtt_ws, amqp_ws]), services, mqtt_limits, amqp }
    }
}

pub(crate) struct LoopArgs {
    pub listener: TcpListener,
    pub acceptor: Arc<ListenerAcceptor>,
    pub protocol: Protocol,
    pub drivers: Drivers,
    pub max_connections: usize,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

pub(crate) async fn accept_loop(args: LoopArgs) {
    let LoopArgs { listener, acceptor, protocol, drivers, max_connections, tracker, shutdown } = args;
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => { backoff = Duration::from_millis(5); a }
                Err(e) => {
                    // Out of file descriptors and the like: back off (bounded) and keep serving.
                    tracing::warn!(listener = acceptor.name(), error = %e, "accept failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(listener = acceptor.name(), %peer, max_connections, "connection limit reached; closing the new connection");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let drivers = drivers.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let conn = tokio::select! {
                () = shutdown.cancelled() => return,
                r = acceptor.accept(tcp, peer) => match r { Ok(c) => c, Err(_) => return }, // logged by accept
            };
            let facts = ConnectionFacts {
                transport: protocol.transport(),
                peer,
                tls: Arc::new(conn.facts),
                peer_certificates: Arc::new(conn.peer_certificates),
            };
            match protocol {
                Protocol::Https => drivers.https.serve_connection(conn.stream, facts, shutdown).await,
                Protocol::Mqtt => {
                    let ctx =
                        dps_mqtt::ConnectionContext { facts, services: drivers.services, limits: drivers.mqtt_limits };
                    dps_mqtt::serve_connection(conn.stream, ctx, shutdown).await;
                }
                Protocol::Amqp => {
                    let ctx = dps_amqp::ConnectionContext { facts, services: drivers.services, settings: drivers.amqp };
                    dps_amqp::serve_connection(conn.stream, ctx, shutdown).await;
                }
            }
        });
    }
    tracing::debug!(listener = acceptor.name(), "accept loop stopped");
}
