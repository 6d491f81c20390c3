//! One accept loop per listener: connection cap, TLS handshake, then the port's protocol
//! driver. The drivers are built once (`Drivers`), including the WebSocket routes that the
//! HTTPS port hands to the MQTT and AMQP drivers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_core::log_limit::LogLimit;

use dps_core::device::{ConnectionFacts, Transport};
use dps_tls::ListenerAcceptor;
use futures_util::FutureExt;
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
    /// A new connection must send its first bytes within this before it may take a handshake
    /// slot (half-open and silent connections hold none).
    pub hello_timeout: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-source limits, shared by every listener.
    pub sources: Arc<crate::sources::SourceLimits>,
    /// Refusals at the connection cap are logged one line per this interval.
    pub log_interval: Duration,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

pub(crate) async fn accept_loop(args: LoopArgs) {
    let LoopArgs {
        listener,
        acceptor,
        protocol,
        drivers,
        max_connections,
        hello_timeout,
        metrics,
        sources,
        log_interval,
        tracker,
        shutdown,
    } = args;
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::from_millis(5);
    // A flood of refusals is one line per interval, not one per connection.
    let mut refusals = LogLimit::new(1, log_interval);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => { backoff = Duration::from_millis(5); a }
                Err(e) => {
                    // Out of file descriptors and the like: back off (bounded) and keep serving.
                    if let Some(more) = refusals.event(Instant::now()) {
                        tracing::warn!(listener = acceptor.name(), error = %e, refused_before = more, "accept failed; retrying in {backoff:?}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Some(more) = refusals.event(Instant::now()) {
                tracing::warn!(listener = acceptor.name(), %peer, max_connections, refused_before = more, "connection limit reached; closing the new connection (further refusals are counted, one line per {log_interval:?})");
            }
            metrics.connection_refused(acceptor.name(), "max_connections");
            drop(tcp);
            continue;
        };
        // Per source, before anything else is spent on the connection (logged by `admit`).
        let admitted = match sources.admit(peer.ip(), acceptor.name()) {
            Ok(a) => a,
            Err(refusal) => {
                metrics.connection_refused(acceptor.name(), refusal.reason());
                drop(tcp);
                continue;
            }
        };
        if let Some(more) = refusals.flush(Instant::now()) {
            tracing::warn!(
                listener = acceptor.name(),
                max_connections,
                refused = more,
                "connections refused at the limit (or failed accepts) in the last period"
            );
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let drivers = drivers.clone();
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        let connection = tracker.clone();
        tracker.spawn(async move {
            // The per-source and connection-cap guards are this block's captures until the
            // handshake is done, then move to the connection's own task (below), which holds
            // them until the connection ends.
            let open = metrics.connection_open(acceptor.name());
            // The first bytes of the ClientHello, waited for without a handshake slot (boxed,
            // like the handshake below, so that this task stays small while connections wait).
            let hello = Box::pin(async {
                let mut byte = [0u8; 1];
                tokio::select! {
                    () = shutdown.cancelled() => None,
                    r = tokio::time::timeout(hello_timeout, tcp.peek(&mut byte)) => Some(matches!(r, Ok(Ok(n)) if n > 0)),
                }
            })
            .await;
            let Some(hello) = hello else { return };
            if !hello {
                tracing::debug!(listener = acceptor.name(), %peer, "no ClientHello within {hello_timeout:?}; closed");
                metrics.handshake_failure(acceptor.name(), "no ClientHello in time");
                return;
            }
            // The handshake's state lives in its own allocation, freed when it ends, so that this
            // task stays small while handshakes wait; the protocol then runs in a task of its own
            // and this one ends (idle memory per connection, bench/README.md "How to read
            // `idle`"). The connection is taken apart at once and its parts moved on.
            let dps_tls::TlsConnection { stream, facts: tls, peer_certificates } = tokio::select! {
                () = shutdown.cancelled() => return,
                // A failure is logged by accept and counted here, before the socket closes.
                r = Box::pin(acceptor.accept(tcp, peer, |e| metrics.handshake_failure(acceptor.name(), &handshake_reason(e)))) => match r {
                    Ok(c) => c,
                    Err(_) => return,
                },
            };
            metrics.handshake(acceptor.name(), &tls);
            let facts =
                ConnectionFacts { transport: protocol.transport(), peer, tls, peer_certificates: peer_certificates.into_shared() };
            // The connection goes on in a task of its own, and this one ends: what stays for the
            // connection's life is one allocation, the driver's future with the guards beside it
            // (`map` holds them and drops them when the driver ends), where this task with the
            // driver boxed inside took two (docs/performance.md, "Idle connections").
            let guards = (open, permit, admitted);
            match protocol {
                Protocol::Https => {
                    let https = drivers.https;
                    let serve = async move { https.serve_connection(stream, facts, shutdown).await };
                    connection.spawn(serve.map(move |()| drop(guards)));
                }
                Protocol::Mqtt => {
                    let ctx =
                        dps_mqtt::ConnectionContext { facts, services: drivers.services, limits: drivers.mqtt_limits };
                    connection.spawn(dps_mqtt::serve_connection(stream, ctx, shutdown).map(move |()| drop(guards)));
                }
                Protocol::Amqp => {
                    let ctx = dps_amqp::ConnectionContext { facts, services: drivers.services, settings: drivers.amqp };
                    connection.spawn(dps_amqp::serve_connection(stream, ctx, shutdown).map(move |()| drop(guards)));
                }
            }
        });
    }
    tracing::debug!(listener = acceptor.name(), "accept loop stopped");
}

/// The `reason` label of a failed handshake: OpenSSL's reason, or the failure's kind.
fn handshake_reason(e: &dps_tls::HandshakeFailure) -> String {
    match e {
        dps_tls::HandshakeFailure::Timeout(_) => "timeout".into(),
        dps_tls::HandshakeFailure::Tls(reason) => reason.clone(),
        _ => "setup".into(),
    }
}
