//! A small AMQP DPS endpoint for the official-SDK tests of `dps-amqp` (tests/amqp): the real
//! driver behind the real TLS acceptor (`dps-tls`, built-in CA), on 5671 and as AMQP over
//! WebSockets on 443, with the TEST device API of `tests/support/fake.rs`. Not a server: the
//! devices live in memory and are given on the command line.
//!
//! ```text
//! fake_dps --listen 127.0.0.100:5671 [--ws-listen 127.0.0.100:443] --data-dir DIR --id-scope S
//!          [--symmetric-key ID=BASE64]... [--x509 ID=SHA256HEX]... [--throttle-once ID]...
//! ```
//! Prints `ready <root CA path>` on stdout once both listeners accept connections.

#[path = "../tests/support/fake.rs"]
mod fake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Extension;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use dps_amqp::{serve_connection, AmqpSettings, ConnectionContext, DeviceApi, Transport, WsByteStream, WsFrame};
use dps_core::tls::{HandshakeFacts, PeerCertificates};
use dps_tls::builtin_ca::BuiltInCaSettings;
use dps_tls::{CredentialSource, ListenerAcceptor, ListenerSpec, ServerTls, TlsPolicy};
use fake::{FakeApi, FakeDevices};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Shared {
    api: Arc<dyn DeviceApi>,
    settings: Arc<AmqpSettings>,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct Conn {
    peer: SocketAddr,
    tls: Arc<HandshakeFacts>,
    peer_certificates: Arc<PeerCertificates>,
}

fn classify(m: Message) -> WsFrame {
    match m {
        Message::Binary(b) => WsFrame::Binary(b),
        Message::Text(_) => WsFrame::Text,
        Message::Close(_) => WsFrame::Close,
        _ => WsFrame::Control,
    }
}

async fn amqp_over_websocket(
    Extension(shared): Extension<Shared>,
    Extension(conn): Extension<Conn>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.protocols([dps_amqp::WEBSOCKET_PROTOCOL]).on_upgrade(move |socket: WebSocket| async move {
        let io = WsByteStream::new(socket, classify, Message::Binary);
        let ctx = ConnectionContext {
            peer: conn.peer,
            tls: conn.tls,
            peer_certificates: conn.peer_certificates,
            transport: Transport::AmqpWs,
            api: shared.api,
            settings: shared.settings,
        };
        serve_connection(io, ctx, shared.shutdown).await;
    })
}

async fn accept_loop(listener: TcpListener, acceptor: Arc<ListenerAcceptor>, shared: Shared, websocket: bool) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp, peer).await else { return };
            let conn = Conn { peer, tls: Arc::new(tls.facts), peer_certificates: Arc::new(tls.peer_certificates) };
            if websocket {
                let router = Router::new()
                    .route("/$iothub/websocket", get(amqp_over_websocket))
                    .route("/", get(amqp_over_websocket))
                    .layer(Extension(shared.clone()))
                    .layer(Extension(conn));
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls.stream), service)
                    .with_upgrades()
                    .await;
            } else {
                let ctx = ConnectionContext {
                    peer,
                    tls: conn.tls,
                    peer_certificates: conn.peer_certificates,
                    transport: Transport::Amqp,
                    api: shared.api.clone(),
                    settings: shared.settings.clone(),
                };
                serve_connection(tls.stream, ctx, shared.shutdown.clone()).await;
            }
        });
    }
}

fn usage(why: &str) -> ! {
    eprintln!("fake_dps: {why}\nusage: fake_dps --listen IP:PORT [--ws-listen IP:PORT] --data-dir DIR --id-scope S [--symmetric-key ID=KEY]... [--x509 ID=SHA256]... [--throttle-once ID]...");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,opendps::tls::handshake=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut listen, mut ws_listen, mut data_dir, mut scope) = (None, None, None, None);
    let mut devices = FakeDevices::default();
    for pair in args.chunks(2) {
        let [name, value] = pair else { usage("every option takes a value") };
        let kv = || {
            value
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .unwrap_or_else(|| usage("expected ID=VALUE"))
        };
        match name.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>().unwrap_or_else(|_| usage("bad --listen"))),
            "--ws-listen" => ws_listen = Some(value.parse::<SocketAddr>().unwrap_or_else(|_| usage("bad --ws-listen"))),
            "--data-dir" => data_dir = Some(std::path::PathBuf::from(value)),
            "--id-scope" => scope = Some(value.clone()),
            "--symmetric-key" => {
                let (k, v) = kv();
                devices.symmetric_keys.insert(k, v);
            }
            "--x509" => {
                let (k, v) = kv();
                devices.x509.insert(k, v);
            }
            "--throttle-once" => {
                devices.throttle_once.insert(value.clone());
            }
            other => usage(&format!("unknown option {other}")),
        }
    }
    let listen = listen.unwrap_or_else(|| usage("--listen is required"));
    let data_dir = data_dir.unwrap_or_else(|| usage("--data-dir is required"));
    devices.id_scope = scope.unwrap_or_else(|| usage("--id-scope is required"));
    let pki = data_dir.join("pki");
    let mut ips = vec![listen.ip()];
    ips.extend(ws_listen.map(|a| a.ip()));
    let source = CredentialSource::BuiltIn(BuiltInCaSettings {
        dir: pki.clone(),
        dns_names: Vec::new(),
        ip_addresses: ips,
        leaf_lifetime: Duration::from_secs(30 * 86_400),
    });
    let spec = |name: &str| ListenerSpec {
        name: name.to_owned(),
        policy: TlsPolicy::default(),
        handshake_timeout: Duration::from_secs(10),
        max_handshakes: 64,
    };
    let tls = ServerTls::start(source, &[spec("amqp"), spec("https")], std::sync::Arc::new(dps_attest::SystemClock))
        .unwrap_or_else(|e| {
            eprintln!("fake_dps: TLS: {e}");
            std::process::exit(1)
        });
    let shared = Shared {
        api: Arc::new(FakeApi(Arc::new(devices))),
        settings: Arc::new(AmqpSettings::default()),
        shutdown: CancellationToken::new(),
    };
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a).await.unwrap_or_else(|e| {
            eprintln!("fake_dps: cannot listen on {a}: {e}");
            std::process::exit(1)
        })
    };
    let amqp = bind(listen).await;
    let acceptor = |n: &str| tls.acceptor(n).unwrap_or_else(|| usage("listener missing"));
    tokio::spawn(accept_loop(amqp, acceptor("amqp"), shared.clone(), false));
    if let Some(a) = ws_listen {
        let ws = bind(a).await;
        tokio::spawn(accept_loop(ws, acceptor("https"), shared.clone(), true));
    }
    println!("ready {}", dps_tls::builtin_ca::root_path(&pki).display());
    let _ = tokio::signal::ctrl_c().await;
    shared.shutdown.cancel();
}
