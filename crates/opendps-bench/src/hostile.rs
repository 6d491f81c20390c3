//! `hostile`: good devices registering (HTTPS and MQTT, symmetric key) unloaded, then under
//! each hostile load at its bound, in two placements of the hostile load: from one source
//! address (the server's per-source limits of `[limits]` apply) and spread over many loopback
//! source addresses (they do not help). Reported: the good registration rate and p99 as a
//! fraction of the unloaded figures measured just before, the server's RSS and open files, what
//! the per-source limits refused, and verdicts against the targets (docs/limits.md, "Per
//! source").
//!
//! A hostile load is held, not fired once: a connection the server closes (at its timeout) is
//! opened again, so `--idle-tls 5000` means 5 000 idle TLS connections kept open as long as the
//! load runs. Half-open TCP and oversized fields are rates of new connections instead. Every
//! hostile connection is bounded in time (`MAX_HOLD`), every load in count and in time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use crate::device::{self, Failure};
use crate::load::Spec;
use crate::procstat;
use crate::register::{Setup, SetupSpec};
use crate::report::{verdict, Report};
use crate::stats::{ms, LoadResult};
use crate::tlsclient::{loopback_range, tcp_connect, Sources, TlsClient};
use crate::{Attestation, Common, Protocol, WorkDir};

/// One hostile connection is dropped by the bench after this, whatever the server does.
const MAX_HOLD: Duration = Duration::from_secs(120);
/// Connect, handshake and first bytes of one hostile connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// A refused or failed hostile connection is tried again after this (per slot).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a slowloris waits between two bytes of its never-ending request head.
const SLOWLORIS_BYTE_EVERY: Duration = Duration::from_secs(5);

/// The server's per-source limits in this benchmark: the defaults of opendps.example.toml.
const DEFAULT_LIMITS: &str = "[limits]\nmax_connections_per_source = 1000\n\
    handshakes_per_second_per_source = 100\nhandshake_burst_per_source = 500\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// TLS handshake on the HTTPS port, then nothing (held).
    IdleTls,
    /// TCP connect to the HTTPS port, then nothing (a rate of new connections per second).
    HalfOpen,
    /// TLS, half a request head, then one byte every 5 s (held).
    Slowloris,
    /// TLS, a device PUT declaring 98 000 bytes, 90 000 sent, then nothing (held).
    StalledUpload,
    /// TLS on the MQTT port, then nothing (held).
    MqttNoConnect,
    /// TLS on the MQTT port, CONNECT with a wrong password and keep-alive 0 (held).
    MqttWrongPassword,
    /// TLS, a request with a 30 KB path, a 20 KB id and an 8 KB header (a rate per second).
    Oversized,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::IdleTls => "idle TLS",
            Kind::HalfOpen => "half-open TCP",
            Kind::Slowloris => "slowloris",
            Kind::StalledUpload => "stalled uploads",
            Kind::MqttNoConnect => "MQTT without CONNECT",
            Kind::MqttWrongPassword => "MQTT wrong password, keep-alive 0",
            Kind::Oversized => "oversized fields",
        }
    }

    /// A rate of new connections (per second) rather than connections held.
    fn is_rate(self) -> bool {
        matches!(self, Kind::HalfOpen | Kind::Oversized)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    /// Every hostile connection from 127.0.1.1.
    One,
    /// Hostile connections spread over 127.0.1.1 .. 127.0.1.N (`--sources`).
    Many,
}

#[derive(Args, Debug, Clone)]
pub struct HostileArgs {
    #[command(flatten)]
    pub common: Common,
    /// Hostile loads to run, one after another (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "idle-tls,half-open,slowloris,stalled-upload,mqtt-no-connect,mqtt-wrong-password,oversized"
    )]
    pub loads: Vec<Kind>,
    /// Placements of each hostile load (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "one,many")]
    pub placement: Vec<Placement>,
    /// Good devices per protocol per measurement (HTTPS, then MQTT).
    #[arg(long, default_value_t = 1500)]
    pub devices: usize,
    /// Good devices in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Bound on each good load (seconds).
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// Bound on bringing a held hostile load up (seconds).
    #[arg(long, default_value_t = 60)]
    pub ramp_seconds: u64,
    /// How long a rate load runs before the good devices start (seconds): past the server's
    /// timeouts, so that what it holds is steady.
    #[arg(long, default_value_t = 8)]
    pub settle_seconds: u64,
    /// Registrations before the first measurement (not reported).
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Hostile handshakes in flight at once while a held load is brought up.
    #[arg(long, default_value_t = 64)]
    pub hostile_concurrency: usize,
    /// Source addresses of the `many` placement (127.0.1.1 ..), and of the good devices
    /// (127.0.2.1 ..), at most 254.
    #[arg(long, default_value_t = 250)]
    pub sources: u8,
    #[arg(long, default_value_t = 5000)]
    pub idle_tls: usize,
    /// New half-open TCP connections per second.
    #[arg(long, default_value_t = 1000)]
    pub half_open_per_second: usize,
    #[arg(long, default_value_t = 1000)]
    pub slowloris: usize,
    #[arg(long, default_value_t = 500)]
    pub stalled_uploads: usize,
    #[arg(long, default_value_t = 2000)]
    pub mqtt_no_connect: usize,
    #[arg(long, default_value_t = 2000)]
    pub mqtt_wrong_password: usize,
    /// New oversized-field requests per second.
    #[arg(long, default_value_t = 100)]
    pub oversized_per_second: usize,
}

impl HostileArgs {
    fn bound(&self, k: Kind) -> usize {
        match k {
            Kind::IdleTls => self.idle_tls,
            Kind::HalfOpen => self.half_open_per_second,
            Kind::Slowloris => self.slowloris,
            Kind::StalledUpload => self.stalled_uploads,
            Kind::MqttNoConnect => self.mqtt_no_connect,
            Kind::MqttWrongPassword => self.mqtt_wrong_password,
            Kind::Oversized => self.oversized_per_second,
        }
    }

    fn bound_text(&self, k: Kind) -> String {
        if k.is_rate() {
            format!("{}/s", self.bound(k))
        } else {
            format!("{} held", self.bound(k))
        }
    }
}

/// What the hostile side saw.
#[derive(Debug, Default)]
struct Counters {
    /// Connections open now.
    open: AtomicU64,
    /// Connections that got as far as the load's first bytes.
    opened: AtomicU64,
    /// Connections that did not (refused at accept, handshake failed, ...).
    failed: AtomicU64,
    /// Rate loads: connections started but not finished (the bench's own bound).
    in_flight: AtomicU64,
    /// Outcomes by cause: failures, and how long the server let an opened connection live.
    outcomes: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn outcome(&self, cause: String) {
        *self.outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(cause).or_default() += 1;
    }
    fn snapshot(&self) -> (u64, u64) {
        (self.opened.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// Where and how hostile connections are made.
#[derive(Debug)]
struct Ctx {
    kind: Kind,
    tls: TlsClient,
    https: SocketAddr,
    mqtt: SocketAddr,
    scope: String,
    sources: Sources,
    opening: Semaphore,
    counters: Counters,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A running hostile load.
struct Hostile {
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Hostile {
    fn start(ctx: Arc<Ctx>, bound: usize) -> Hostile {
        let (stop, rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if ctx.kind.is_rate() {
            tasks.spawn(rate_loop(ctx.clone(), bound, rx));
        } else {
            for _ in 0..bound {
                tasks.spawn(slot(ctx.clone(), rx.clone()));
            }
        }
        Hostile { ctx, stop, tasks }
    }

    fn open(&self) -> u64 {
        self.ctx.counters.open.load(Ordering::Relaxed)
    }

    /// Held loads: until `want` are open, or the count stops growing for 3 s, or `max`.
    async fn ramp(&self, want: usize, max: Duration) {
        let t0 = Instant::now();
        let (mut last, mut since) = (0, Instant::now());
        while t0.elapsed() < max && self.open() < want as u64 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.open();
            if now > last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > Duration::from_secs(3) && now > 0 {
                break;
            }
        }
    }

    /// Stops every connection and waits (at most 30 s) for the tasks.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let bound = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(bound);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut bound => { self.tasks.abort_all(); break }
            }
        }
        let t0 = Instant::now();
        while self.ctx.counters.in_flight.load(Ordering::Relaxed) > 0 && t0.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A held load's slot: open a connection, hold it until the server closes it, open another.
async fn slot(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let end = Instant::now() + Duration::from_secs(3600);
    while !*stop.borrow() && Instant::now() < end {
        let opened = {
            let Ok(_permit) = ctx.opening.acquire().await else { return };
            tokio::select! {
                r = tokio::time::timeout(OPEN_TIMEOUT, open(&ctx)) => r.unwrap_or_else(|_| Err(Failure::new("open: bench timeout"))),
                _ = stop.changed() => return,
            }
        };
        match opened {
            Ok(conn) => hold(&ctx, conn, &mut stop).await,
            Err(Failure(cause)) => {
                ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
                ctx.counters.outcome(cause);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// A rate load: `per_second` new connections a second, each on its own task, at most
/// `per_second` × 30 unfinished at once.
async fn rate_loop(ctx: Arc<Ctx>, per_second: usize, mut stop: watch::Receiver<bool>) {
    let cap = per_second as u64 * 30;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let mut started: u64 = 0;
    while t0.elapsed() < Duration::from_secs(3600) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let due = (t0.elapsed().as_secs_f64() * per_second as f64) as u64;
        while started < due {
            started += 1;
            if ctx.counters.in_flight.load(Ordering::Relaxed) >= cap {
                ctx.counters.outcome("not started (bench cap on unfinished connections)".into());
                continue;
            }
            ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let (ctx, mut stop) = (ctx.clone(), stop.clone());
            tokio::spawn(async move {
                let r = tokio::select! {
                    r = tokio::time::timeout(OPEN_TIMEOUT, open(&ctx)) => r.unwrap_or_else(|_| Err(Failure::new("open: bench timeout"))),
                    _ = stop.changed() => Err(Failure::new("stopped")),
                };
                match r {
                    Ok(conn) => hold(&ctx, conn, &mut stop).await,
                    Err(Failure(cause)) => {
                        if cause != "stopped" {
                            ctx.counters.failed.fetch_add(1, Ordering::Relaxed);
                            ctx.counters.outcome(cause);
                        }
                    }
                }
                ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// One hostile connection, up to its first bytes.
async fn open(ctx: &Ctx) -> Result<Box<dyn Io>, Failure> {
    let source = ctx.sources.next();
    let addr = match ctx.kind {
        Kind::MqttNoConnect | Kind::MqttWrongPassword => ctx.mqtt,
        _ => ctx.https,
    };
    if ctx.kind == Kind::HalfOpen {
        return Ok(Box::new(tcp_connect(addr, source).await?));
    }
    let mut s = ctx.tls.connect_from(addr, source).await?;
    let first: Vec<u8> = match ctx.kind {
        Kind::Slowloris => b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec(),
        Kind::StalledUpload => {
            let mut b = format!(
                "PUT /{}/registrations/stalled/register?api-version=2021-06-01 HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: 98000\r\n\r\n",
                ctx.scope
            )
            .into_bytes();
            b.extend(std::iter::repeat_n(b' ', 90_000));
            b
        }
        Kind::MqttWrongPassword => mqtt_wrong_password(&ctx.scope)?,
        Kind::Oversized => format!(
            "GET /{}/registrations/{}/register HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(30_000),
            "b".repeat(20_000),
            "c".repeat(8_000)
        )
        .into_bytes(),
        _ => Vec::new(),
    };
    if !first.is_empty() {
        match s.write_all(&first).await {
            // The server may answer an oversized head (431) and close before all of it is
            // written: the answer is read (or its absence recorded) by `hold`.
            Err(_) if ctx.kind == Kind::Oversized => {}
            r => r.map_err(|e| Failure::new(format!("write: {}", e.kind())))?,
        }
    }
    Ok(Box::new(s))
}

fn mqtt_wrong_password(scope: &str) -> Result<Vec<u8>, Failure> {
    let id = "hostile-device";
    let mut connect = mqttbytes::v4::Connect::new(id);
    connect.keep_alive = 0;
    connect.set_login(format!("{scope}/registrations/{id}/api-version=2019-03-31"), "wrong".to_owned());
    let mut buf = bytes::BytesMut::new();
    connect.write(&mut buf).map_err(|_| Failure::new("mqtt: CONNECT not encodable"))?;
    Ok(buf.to_vec())
}

/// Holds an opened connection until the server closes it (or the load stops, or `MAX_HOLD`),
/// and records how long the server let it live (or, for oversized fields, its answer).
async fn hold(ctx: &Ctx, mut conn: Box<dyn Io>, stop: &mut watch::Receiver<bool>) {
    let c = &ctx.counters;
    c.opened.fetch_add(1, Ordering::Relaxed);
    c.open.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let outcome = if ctx.kind == Kind::Oversized {
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), device::read_response(&mut conn)) => match r {
                Ok(Ok((status, _))) => Some(format!("answered HTTP {status}")),
                Ok(Err(Failure(cause))) => Some(cause),
                Err(_) => Some("no answer within 10 s".into()),
            },
            _ = stop.changed() => None,
        }
    } else {
        let mut buf = vec![0u8; 4096];
        let mut next_byte = tokio::time::Instant::now() + SLOWLORIS_BYTE_EVERY;
        let end = tokio::time::Instant::now() + MAX_HOLD;
        loop {
            tokio::select! {
                r = conn.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break Some(format!("closed by the server after {}", lifetime(t0.elapsed()))),
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(next_byte), if ctx.kind == Kind::Slowloris => {
                    next_byte += SLOWLORIS_BYTE_EVERY;
                    if conn.write_all(b"a").await.is_err() {
                        break Some(format!("closed by the server after {}", lifetime(t0.elapsed())));
                    }
                }
                _ = tokio::time::sleep_until(end) => break Some("held to the bench's bound".into()),
                _ = stop.changed() => break None,
            }
        }
    };
    c.open.fetch_sub(1, Ordering::Relaxed);
    if let Some(o) = outcome {
        c.outcome(o);
    }
}

/// A connection's life, in coarse steps (what the server's timeouts make of it).
fn lifetime(d: Duration) -> &'static str {
    match d.as_secs_f64() {
        s if s < 1.0 => "< 1 s",
        s if s < 4.0 => "1–4 s",
        s if s < 7.0 => "4–7 s",
        s if s < 15.0 => "7–15 s",
        s if s < 25.0 => "15–25 s",
        s if s < 40.0 => "25–40 s",
        _ => "40 s or more",
    }
}

/// The server's counters of refused connections, from its admin listener's /metrics.
async fn refused(metrics: Option<SocketAddr>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(addr) = metrics else { return out };
    let text = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    let Ok(Some(text)) = tokio::time::timeout(Duration::from_secs(5), text).await else { return out };
    for l in text.lines().filter(|l| l.starts_with("opendps_connections_refused_total{")) {
        let reason = l.split("reason=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(reason.to_owned()).or_default() += v;
        }
    }
    out
}

fn refused_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{d:.0} {k}"))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// One hostile load in one placement, with the good loads just before and under it.
#[derive(Debug)]
pub struct Condition {
    pub kind: Kind,
    pub placement: Placement,
    pub bound: String,
    pub unloaded: Vec<(Protocol, LoadResult)>,
    pub loaded: Vec<(Protocol, LoadResult)>,
    /// Hostile connections open when the good devices started, and when they finished.
    pub held: (u64, u64),
    /// Hostile connections opened (and failed) per second while the good devices ran.
    pub opened_per_s: f64,
    pub failed_per_s: f64,
    pub outcomes: BTreeMap<String, u64>,
    pub refused: String,
    pub rss_kib: (u64, u64, u64),
    pub fds: (usize, usize),
}

impl Condition {
    fn ratios(&self, p: Protocol) -> Option<(f64, f64)> {
        let u = &self.unloaded.iter().find(|(q, _)| *q == p)?.1;
        let l = &self.loaded.iter().find(|(q, _)| *q == p)?.1;
        let (up99, lp99) = (u.p(99.0)? as f64, l.p(99.0)? as f64);
        (u.rate() > 0.0 && up99 > 0.0).then(|| (l.rate() / u.rate(), lp99 / up99))
    }

    /// CPU cores used (CPU seconds over wall seconds) over the good loads, unloaded and loaded:
    /// (server, bench). The bench's figure includes its hostile client.
    pub fn cores(&self) -> ((f64, f64), (f64, f64)) {
        let sum = |v: &[(Protocol, LoadResult)]| {
            let wall: f64 = v.iter().map(|(_, r)| r.wall.as_secs_f64()).sum::<f64>().max(1e-3);
            let server: f64 = v.iter().map(|(_, r)| r.server.cpu_seconds).sum();
            let client: f64 = v.iter().map(|(_, r)| r.client_cpu_seconds).sum();
            (server / wall, client / wall)
        };
        let (u, l) = (sum(&self.unloaded), sum(&self.loaded));
        ((u.0, l.0), (u.1, l.1))
    }

    /// Server CPU the hostile load cost while the good devices ran, in cores: the server's CPU
    /// under load less what the good registrations cost it unloaded (per registration), over
    /// the wall time.
    pub fn hostile_server_cores(&self) -> Option<f64> {
        let mut extra = 0.0;
        let mut wall = 0.0;
        for (p, l) in &self.loaded {
            let u = &self.unloaded.iter().find(|(q, _)| q == p)?.1;
            extra += l.server.cpu_seconds - l.ok as f64 * u.server_cpu_ms_per_op()? / 1000.0;
            wall += l.wall.as_secs_f64();
        }
        (wall > 0.0).then(|| extra / wall)
    }

    /// Rate ≥ 0.8× and p99 ≤ 2× unloaded, for every protocol, with no failed good device.
    pub fn met(&self) -> bool {
        self.loaded.iter().all(|(p, l)| l.failed() == 0 && self.ratios(*p).is_some_and(|(r, q)| r >= 0.8 && q <= 2.0))
    }
}

fn good_spec(label: String, a: &HostileArgs, n: usize) -> Spec {
    Spec {
        label,
        n,
        concurrency: a.concurrency.min(n.max(1)),
        max: Duration::from_secs(a.max_seconds.max(1)),
        device_timeout: a.common.device_timeout(),
        progress: false,
    }
}

/// Runs every load in every placement against `setup`'s server; `good` is the good devices'
/// client (spread over their own source addresses).
pub async fn measure(
    setup: &Setup,
    a: &HostileArgs,
    good: &Arc<crate::device::Target>,
) -> anyhow::Result<Vec<Condition>> {
    let pid = setup.server.pid;
    let metrics = setup.server.metrics_addr();
    let mut seq = 0usize;
    let mut next_tag = |proto: Protocol| {
        seq += 1;
        format!("good-{seq:03}-{}", proto.name())
    };
    if a.warmup > 0 {
        for proto in [Protocol::Https, Protocol::Mqtt] {
            let tag = next_tag(proto);
            let ids: Arc<Vec<String>> = Arc::new((0..a.warmup).map(|i| format!("{tag}-{i:06}")).collect());
            let auths = setup.creds(Attestation::Symmetric, &ids)?;
            let r = setup.load_on(good, &good_spec("warm-up".into(), a, a.warmup), proto, ids, auths).await;
            eprintln!("warm-up {}", r.line());
        }
    }
    let mut out = Vec::new();
    for &placement in &a.placement {
        for &kind in &a.loads {
            let bound = a.bound(kind);
            let name = format!("{} ({}, {})", kind.name(), a.bound_text(kind), placement_name(placement));
            eprintln!("== {name}");
            let mut unloaded = Vec::new();
            for proto in [Protocol::Https, Protocol::Mqtt] {
                let tag = next_tag(proto);
                let label = format!("unloaded {} before {name}", proto.name());
                unloaded.push((proto, run_good(setup, a, good, &tag, label, proto).await?));
            }
            let rss0 = procstat::rss_kib(pid).unwrap_or(0);
            let fds0 = procstat::fd_count(pid).unwrap_or(0);
            let refused0 = refused(metrics).await;
            let sources = match placement {
                Placement::One => loopback_range(1, 1),
                Placement::Many => loopback_range(1, a.sources),
            };
            let ctx = Arc::new(Ctx {
                kind,
                tls: setup.target.tls.clone(),
                https: setup.target.https,
                mqtt: setup.target.mqtt,
                scope: setup.target.scope.clone(),
                sources: Sources::new(sources),
                opening: Semaphore::new(a.hostile_concurrency.max(1)),
                counters: Counters::default(),
            });
            let h = Hostile::start(ctx.clone(), bound);
            if kind.is_rate() {
                tokio::time::sleep(Duration::from_secs(a.settle_seconds)).await;
            } else {
                h.ramp(bound, Duration::from_secs(a.ramp_seconds.max(1))).await;
            }
            let held_before = h.open();
            eprintln!("   hostile: {held_before} open; {:?} opened/failed so far", ctx.counters.snapshot());
            let (o0, f0) = ctx.counters.snapshot();
            let t0 = Instant::now();
            let mut loaded = Vec::new();
            for proto in [Protocol::Https, Protocol::Mqtt] {
                let tag = next_tag(proto);
                let label = format!("under {name}: {}", proto.name());
                loaded.push((proto, run_good(setup, a, good, &tag, label, proto).await?));
            }
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            let (o1, f1) = ctx.counters.snapshot();
            let held_after = h.open();
            let rss1 = procstat::rss_kib(pid).unwrap_or(0);
            let fds1 = procstat::fd_count(pid).unwrap_or(0);
            let peak = loaded.iter().map(|(_, r)| r.server.peak_rss_kib).max().unwrap_or(0).max(rss1);
            let refused1 = refused(metrics).await;
            h.stop().await;
            let outcomes = ctx.counters.outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            // The server closes its side of what the bench dropped; wait for it (bounded).
            let t = Instant::now();
            while procstat::fd_count(pid).unwrap_or(0) > fds0 + 64 && t.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let c = Condition {
                kind,
                placement,
                bound: a.bound_text(kind),
                unloaded,
                loaded,
                held: (held_before, held_after),
                opened_per_s: (o1 - o0) as f64 / secs,
                failed_per_s: (f1 - f0) as f64 / secs,
                outcomes,
                refused: refused_delta(&refused0, &refused1),
                rss_kib: (rss0, peak, rss1),
                fds: (fds0, fds1),
            };
            for p in [Protocol::Https, Protocol::Mqtt] {
                if let Some((r, q)) = c.ratios(p) {
                    eprintln!("   {}: rate {r:.2}×, p99 {q:.2}× unloaded", p.name());
                }
            }
            out.push(c);
        }
    }
    Ok(out)
}

async fn run_good(
    setup: &Setup,
    a: &HostileArgs,
    good: &Arc<crate::device::Target>,
    tag: &str,
    label: String,
    proto: Protocol,
) -> anyhow::Result<LoadResult> {
    let ids: Arc<Vec<String>> = Arc::new((0..a.devices).map(|i| format!("{tag}-{i:06}")).collect());
    let auths = setup.creds(Attestation::Symmetric, &ids)?;
    let r = setup.load_on(good, &good_spec(label, a, a.devices), proto, ids, auths).await;
    eprintln!("   {}", r.line());
    Ok(r)
}

fn placement_name(p: Placement) -> &'static str {
    match p {
        Placement::One => "one source",
        Placement::Many => "many sources",
    }
}

/// The report of a run.
pub fn report(rep: &mut Report, a: &HostileArgs, results: &[Condition]) {
    let mib = |k: u64| k as f64 / 1024.0;
    rep.line(
        "| hostile load | placement | held at start / end | hostile opened /s (failed /s) during | refused by the server \
         (per-source limits, cap) | HTTPS rate × | HTTPS p99 ms unloaded → loaded (×) | MQTT rate × | MQTT p99 ms \
         unloaded → loaded (×) | server RSS MiB before / peak / end | server fds before / end | verdict |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in results {
        let cell = |p: Protocol| -> (String, String) {
            let u = c.unloaded.iter().find(|(q, _)| *q == p).map(|x| &x.1);
            let l = c.loaded.iter().find(|(q, _)| *q == p).map(|x| &x.1);
            match (u, l, c.ratios(p)) {
                (Some(u), Some(l), Some((r, q))) => (
                    format!("{r:.2} ({:.0} → {:.0}/s)", u.rate(), l.rate()),
                    format!("{} → {} ({q:.2})", ms(u.p(99.0)), ms(l.p(99.0))),
                ),
                _ => ("-".into(), "-".into()),
            }
        };
        let (hr, hp) = cell(Protocol::Https);
        let (mr, mp) = cell(Protocol::Mqtt);
        rep.line(format!(
            "| {} ({}) | {} | {} / {} | {:.0} ({:.0}) | {} | {hr} | {hp} | {mr} | {mp} | {:.1} / {:.1} / {:.1} | {} / {} | {} |",
            c.kind.name(),
            c.bound,
            placement_name(c.placement),
            c.held.0,
            c.held.1,
            c.opened_per_s,
            c.failed_per_s,
            c.refused,
            mib(c.rss_kib.0),
            mib(c.rss_kib.1),
            mib(c.rss_kib.2),
            c.fds.0,
            c.fds.1,
            verdict(c.met()),
        ));
    }
    rep.line("");
    rep.line(
        "CPU while the good devices ran (cores = CPU seconds over wall seconds; the machine has 2 and other \
         work on it): the server's, unloaded → loaded; the part of the server's that went to the hostile load (its \
         CPU under load less the good registrations at their unloaded cost); the bench process's (good devices, and \
         the hostile client when loaded).\n",
    );
    rep.line("| hostile load | placement | server cores unloaded → loaded | server cores on the hostile load | bench cores unloaded → loaded |");
    rep.line("|---|---|---|---|---|");
    for c in results {
        let ((su, sl), (bu, bl)) = c.cores();
        rep.line(format!(
            "| {} ({}) | {} | {su:.2} → {sl:.2} | {} | {bu:.2} → {bl:.2} |",
            c.kind.name(),
            c.bound,
            placement_name(c.placement),
            c.hostile_server_cores().map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        ));
    }
    rep.line("");
    rep.line("What happened to the hostile connections (over the whole load, bringing it up included):\n");
    for c in results {
        let o: Vec<String> = c.outcomes.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        rep.line(format!("- {} ({}, {}): {}", c.kind.name(), c.bound, placement_name(c.placement), o.join("; ")));
    }
    rep.line("");
    rep.line("Every good load:\n");
    let all: Vec<&LoadResult> =
        results.iter().flat_map(|c| c.unloaded.iter().chain(c.loaded.iter()).map(|x| &x.1)).collect();
    rep.loads(&all);
    let met = results.iter().filter(|c| c.met()).count();
    rep.line(format!(
        "Targets (reported, not asserted): under each hostile load, good registrations/s ≥ 0.8× and p99 ≤ 2× \
         unloaded, HTTPS and MQTT, no good device failed: met in {met} of {} ({} good devices per protocol per \
         measurement).",
        results.len(),
        a.devices
    ));
}

pub async fn hostile(mut a: HostileArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(&a.common)?;
    let have = procstat::raise_own_nofile(65_536);
    let biggest = [
        a.idle_tls,
        a.slowloris,
        a.stalled_uploads,
        a.mqtt_no_connect,
        a.mqtt_wrong_password,
        a.half_open_per_second * 6,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as u64;
    if have < biggest + 2048 {
        bail!(
            "this process may open {have} files, {} needed: raise `ulimit -n` (the hard limit) first",
            biggest + 2048
        );
    }
    // The per-source limits at their defaults (the bench's base config turns them off), then
    // `--server-config` over them.
    let mut limits = DEFAULT_LIMITS.to_owned();
    if let Some(p) = &a.common.server_config {
        let extra = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        limits = crate::merge_toml(&limits, &extra)?;
    }
    let limits_path = work.path.join("hostile-limits.toml");
    std::fs::write(&limits_path, limits)?;
    a.common.server_config = Some(limits_path);
    let setup = Setup::start(SetupSpec {
        common: &a.common,
        default_address: Ipv4Addr::new(127, 0, 0, 240),
        data_dir: work.path.join("opendps"),
        max_connections: 6000,
        nofile: 65_536,
        symmetric: true,
        x509: false,
        shared: None,
    })?;
    let good_sources = Arc::new(Sources::new(loopback_range(2, a.sources)));
    let good = Arc::new(crate::device::Target {
        tls: setup.target.tls.spread_over(good_sources.clone()),
        ..(*setup.target).clone()
    });
    let results = measure(&setup, &a, &good).await?;
    let mut rep = Report::new("Good devices under hostile load");
    rep.line(format!(
        "Setup: `{}` on {}, `[tls] max_connections = 6000` per listener, `[limits]` per-source limits at their \
         defaults (max_connections_per_source 1000, handshakes_per_second_per_source 100, burst 500), timeouts at \
         their defaults (hello 5 s, header 20 s, body 20 s, MQTT CONNECT 10 s, refused MQTT device 30 s), store \
         durability {}, log filter {}. Server open-file limit: {}.\n",
        setup.server.spec.bin.display(),
        setup.address,
        a.common.durability,
        a.common.server_log,
        procstat::nofile_of(&setup.server.pid.to_string())
            .map_or_else(|| "unknown".to_owned(), |(soft, hard)| format!("soft {soft}, hard {hard}")),
    ));
    rep.line(format!(
        "Good devices: {} per protocol per measurement, HTTPS then MQTT, symmetric key (group enrollment), {} in \
         flight, a new full TLS 1.2 handshake each (groups {}), each connection from the next of {} source \
         addresses 127.0.2.1 .. (so the per-source limits do not refuse them: they are many devices). Each \
         hostile load is measured with the good devices unloaded just before it (the machine is shared, so the \
         pair is what is compared), then under it. Rate = successes over the wall time of the load; p99 of the \
         whole device (TCP connect to close).\n",
        a.devices,
        a.concurrency,
        a.common.groups,
        good_sources.len(),
    ));
    rep.line(format!(
        "Hostile loads, one after another, each held while the good devices run: a held load keeps its count of \
         connections open, opening a new one when the server closes one ({} handshakes in flight at most while \
         bringing it up, a refused or failed attempt retried after {} s per slot); a rate load opens that many \
         new connections a second and runs {} s before the good devices start. One source: every hostile \
         connection from 127.0.1.1. Many sources: spread over 127.0.1.1 .. 127.0.1.{}. The hostile client runs \
         in the bench process on the same cores (its CPU is the machine's too).\n",
        a.hostile_concurrency,
        RETRY_AFTER.as_secs(),
        a.settle_seconds,
        a.sources.clamp(1, 254),
    ));
    report(&mut rep, &a, &results);
    if let Some(hwm) = procstat::hwm_kib(setup.server.pid) {
        rep.line(format!("\nOpenDPS peak RSS over the whole run (VmHWM): {:.1} MiB.", hwm as f64 / 1024.0));
    }
    rep.finish(a.common.report.as_deref())?;
    if results.iter().any(|c| c.loaded.iter().chain(c.unloaded.iter()).any(|(_, r)| r.ok == 0)) {
        bail!("a good load had no successful registration; the server log ends with:\n{}", setup.server.log_tail(20));
    }
    Ok(())
}
