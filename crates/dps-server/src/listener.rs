//! One accept loop per listener: connection cap, TLS handshake, then the port's protocol.

use std::sync::Arc;
use std::time::Duration;

use dps_http::ConnectionInfo;
use dps_tls::ListenerAcceptor;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What runs inside TLS on a port.
#[derive(Clone, Debug)]
pub enum Protocol {
    Https(dps_http::Router),
    Mqtt(dps_core::service::Services),
}

pub(crate) struct LoopArgs {
    pub listener: TcpListener,
    pub acceptor: Arc<ListenerAcceptor>,
    pub protocol: Protocol,
    pub max_connections: usize,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

pub(crate) async fn accept_loop(args: LoopArgs) {
    let LoopArgs { listener, acceptor, protocol, max_connections, tracker, shutdown } = args;
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
        let protocol = protocol.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let conn = tokio::select! {
                () = shutdown.cancelled() => return,
                r = acceptor.accept(tcp, peer) => match r { Ok(c) => c, Err(_) => return }, // logged by accept
            };
            match protocol {
                Protocol::Https(router) => {
                    let info = ConnectionInfo {
                        peer,
                        tls: Arc::new(conn.facts),
                        peer_certificates: Arc::new(conn.peer_certificates),
                    };
                    dps_http::serve_connection(conn.stream, info, router, shutdown).await;
                }
                Protocol::Mqtt(services) => {
                    let ctx = dps_mqtt::ConnectionContext {
                        peer,
                        tls: Arc::new(conn.facts),
                        peer_certificates: Arc::new(conn.peer_certificates),
                        services,
                    };
                    dps_mqtt::serve_connection(conn.stream, ctx, shutdown).await;
                }
            }
        });
    }
    tracing::debug!(listener = acceptor.name(), "accept loop stopped");
}
