//! `idle`: K MQTT-over-TLS connections opened (TLS, CONNECT, SUBSCRIBE) and left idle; the
//! server's resident memory before, with them open, and after they close, per connection.
//! Optionally, while they are held, new devices register (bounded in count and time) to show
//! the server still serves. For K beyond one source address's ephemeral ports the client
//! sockets are spread over several loopback source addresses (`--sources`); the client keeps
//! no task per idle connection, only its TLS stream with OpenSSL's buffers released.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::device::{self, Auth, Failure, IdleConnection, Target, Timing};
use crate::load::{self, Spec};
use crate::procstat;
use crate::register::{Setup, SetupSpec};
use crate::report::{verdict, Report};
use crate::stats::LoadResult;
use crate::{Attestation, Common, Protocol, WorkDir};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Bound on the opening phase.
    #[arg(long, default_value_t = 240)]
    pub max_seconds: u64,
    /// How long all connections stay open before memory is read.
    #[arg(long, default_value_t = 5)]
    pub hold_seconds: u64,
    #[command(flatten)]
    pub shape: Shape,
    /// Registrations before the baseline is read (warm code paths, allocator, store).
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Spread the client sockets over this many source addresses, 127.0.2.1 to 127.0.2.N in
    /// turn (0: the kernel's choice, one address). Each address has the kernel's ephemeral
    /// port range (net.ipv4.ip_local_port_range) to itself.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=254))]
    pub sources: u8,
    /// New devices registering over MQTT while all connections are held (0: none).
    #[arg(long, default_value_t = 0)]
    pub register: usize,
    /// Registrations at once during the hold.
    #[arg(long, default_value_t = 8)]
    pub register_concurrency: usize,
    /// Bound on the registrations during the hold.
    #[arg(long, default_value_t = 60)]
    pub register_seconds: u64,
    /// Hold the connections on this many OpenDPS nodes sharing a throwaway PostgreSQL database,
    /// each on its own address (from --address, default 127.0.4.1, upwards) with its own load
    /// generator process: beyond what one process may open (its hard open-files limit).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
}

/// What each idle connection does before it goes quiet.
#[derive(Args, Debug, Clone, Copy)]
pub struct Shape {
    /// MQTT keep-alive of the idle connections (seconds; the server closes one silent for 1.5×).
    #[arg(long, default_value_t = 600)]
    pub keep_alive: u16,
    /// CONNECT only, no SUBSCRIBE.
    #[arg(long)]
    pub no_subscribe: bool,
    /// mqtt (CONNECT, SUBSCRIBE) or amqp (SASL PLAIN, Open, Begin, both links attached).
    #[arg(long, value_enum, default_value = "mqtt")]
    pub protocol: Protocol,
}

impl Shape {
    /// Opens one idle connection of this shape and keeps it in `held`.
    pub async fn open(
        self,
        t: &Target,
        id: &str,
        auth: &Auth,
        held: &Mutex<Vec<IdleConnection>>,
    ) -> Result<Timing, Failure> {
        let (conn, timing) = match self.protocol {
            Protocol::Amqp => device::amqp_idle(t, id, auth).await?,
            _ => device::mqtt_idle(t, id, auth, !self.no_subscribe, self.keep_alive).await?,
        };
        held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(conn);
        Ok(timing)
    }

    /// What a connection did, for a report.
    pub fn describe(self) -> String {
        if self.protocol == Protocol::Amqp {
            "SASL PLAIN, Open, Begin, receiver and sender links attached on the device's address".to_owned()
        } else {
            format!(
                "CONNECT (keep-alive {} s){}",
                self.keep_alive,
                if self.no_subscribe { "" } else { ", SUBSCRIBE $dps/registrations/res/#" }
            )
        }
    }

    /// `MQTT` or `AMQP`.
    pub fn name(self) -> String {
        self.protocol.name().to_uppercase()
    }
}

/// The loopback source addresses of `--sources n`: 127.0.2.1 to 127.0.2.n.
pub fn source_addresses(n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 2, i))).collect()
}

/// The figures of an idle run.
#[derive(Debug, Default, Clone)]
pub struct IdleResult {
    pub open: LoadResult,
    pub base_rss_kib: u64,
    pub open_rss_kib: u64,
    pub closed_rss_kib: u64,
    pub base_fds: usize,
    pub open_fds: usize,
    pub client_rss_delta_kib: u64,
    /// Registrations of new devices while the connections were held, when asked.
    pub register: Option<LoadResult>,
    /// Server RSS and descriptors after those registrations, the connections still held.
    pub after_register_rss_kib: u64,
    pub after_register_fds: usize,
    pub server_pid: Option<u32>,
}

impl IdleResult {
    pub fn held(&self) -> u64 {
        self.open.ok
    }
    /// Server KiB per held connection.
    pub fn per_connection_kib(&self) -> Option<f64> {
        (self.held() > 0).then(|| self.open_rss_kib.saturating_sub(self.base_rss_kib) as f64 / self.held() as f64)
    }
    pub fn peak_per_connection_kib(&self) -> Option<f64> {
        (self.held() > 0)
            .then(|| self.open.server.peak_rss_kib.saturating_sub(self.base_rss_kib) as f64 / self.held() as f64)
    }
}

/// Opens, holds and closes the connections against `setup`'s server.
pub async fn measure(setup: &Setup, a: &IdleArgs) -> anyhow::Result<IdleResult> {
    let c = &a.common;
    let pid = setup.server.pid;
    if a.warmup > 0 {
        let ids: Arc<Vec<String>> = Arc::new((0..a.warmup).map(|i| format!("idle-warm-{i:07}")).collect());
        let auths = setup.creds(Attestation::Symmetric, &ids)?;
        let spec = Spec {
            label: "warm-up".into(),
            n: a.warmup,
            concurrency: a.concurrency.min(a.warmup),
            max: Duration::from_secs(a.max_seconds.max(1)),
            device_timeout: c.device_timeout(),
            progress: false,
        };
        let r = setup.load(&spec, Protocol::Mqtt, ids, auths).await;
        eprintln!("warm-up {}", r.line());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base_rss_kib = procstat::rss_kib(pid).unwrap_or(0);
    let base_fds = procstat::fd_count(pid).unwrap_or(0);
    let me = std::process::id();
    let client_base = procstat::rss_kib(me).unwrap_or(0);

    let holding = setup.holding_target(c, source_addresses(a.sources))?;
    let ids: Arc<Vec<String>> = Arc::new((0..a.connections).map(|i| format!("idle-{i:07}")).collect());
    let auths = setup.creds(Attestation::Symmetric, &ids)?;
    let held: Arc<Mutex<Vec<IdleConnection>>> = Arc::new(Mutex::new(Vec::with_capacity(a.connections)));
    let spec = Spec {
        label: format!("open {} idle {}-TLS connections", a.connections, a.shape.name()),
        n: a.connections,
        concurrency: a.concurrency,
        max: Duration::from_secs(a.max_seconds.max(1)),
        device_timeout: c.device_timeout(),
        progress: true,
    };
    let (t, h, shape) = (holding.clone(), held.clone(), a.shape);
    let open = load::run(&spec, &setup.server.group(), move |i| {
        let (t, ids, auths, h) = (t.clone(), ids.clone(), auths.clone(), h.clone());
        async move { shape.open(&t, &ids[i], &auths[i], &h).await }
    })
    .await;
    eprintln!("{}", open.line());
    tokio::time::sleep(Duration::from_secs(a.hold_seconds)).await;
    let open_rss_kib = procstat::rss_kib(pid).unwrap_or(0);
    let open_fds = procstat::fd_count(pid).unwrap_or(0);
    let client_rss_delta_kib = procstat::rss_kib(me).unwrap_or(0).saturating_sub(client_base);
    let mut r = IdleResult {
        open,
        base_rss_kib,
        open_rss_kib,
        base_fds,
        open_fds,
        client_rss_delta_kib,
        server_pid: Some(pid),
        ..Default::default()
    };
    if a.register > 0 {
        let ids: Arc<Vec<String>> = Arc::new((0..a.register).map(|i| format!("idle-new-{i:07}")).collect());
        let auths = setup.creds(Attestation::Symmetric, &ids)?;
        let spec = Spec {
            label: format!("register new devices (MQTT) while {} are held", r.held()),
            n: a.register,
            concurrency: a.register_concurrency.max(1),
            max: Duration::from_secs(a.register_seconds.max(1)),
            device_timeout: c.device_timeout(),
            progress: true,
        };
        let reg = setup.load_on(&holding, &spec, Protocol::Mqtt, ids, auths).await;
        eprintln!("{}", reg.line());
        r.register = Some(reg);
        r.after_register_rss_kib = procstat::rss_kib(pid).unwrap_or(0);
        r.after_register_fds = procstat::fd_count(pid).unwrap_or(0);
    }
    let conns = std::mem::take(&mut *held.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    // Close them all, give the server a moment, read again.
    drop(conns);
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.closed_rss_kib = procstat::rss_kib(pid).unwrap_or(0);
    Ok(r)
}

/// The report lines of an idle run.
pub fn report(rep: &mut Report, a: &IdleArgs, r: &IdleResult) {
    let mib = |k: u64| k as f64 / 1024.0;
    let what = a.shape.describe();
    let from = match a.sources {
        0 => "one source address (the kernel's choice)".to_owned(),
        n => format!("{n} source addresses 127.0.2.1-127.0.2.{n} in turn"),
    };
    rep.line(format!(
        "{} connections asked, {} held open ({}); each: new full TLS 1.2 handshake from {from}, {what}, \
         then nothing. Memory read {} s after the last one opened.\n",
        a.connections,
        r.held(),
        r.open.failures_text(),
        a.hold_seconds
    ));
    rep.line(limits_line(r));
    rep.line("| | server RSS MiB | server open fds |");
    rep.line("|---|---|---|");
    rep.line(format!("| before (after warm-up) | {:.1} | {} |", mib(r.base_rss_kib), r.base_fds));
    rep.line(format!("| peak while opening | {:.1} | |", mib(r.open.server.peak_rss_kib.max(r.open_rss_kib))));
    rep.line(format!("| all open, idle | {:.1} | {} |", mib(r.open_rss_kib), r.open_fds));
    if r.register.is_some() {
        rep.line(format!(
            "| all open, after the registrations below | {:.1} | {} |",
            mib(r.after_register_rss_kib),
            r.after_register_fds
        ));
    }
    rep.line(format!("| 3 s after all closed | {:.1} | |", mib(r.closed_rss_kib)));
    rep.line("");
    if let Some(per) = r.per_connection_kib() {
        rep.line(format!(
            "Server memory per idle connection: **{per:.1} KiB** ((RSS open − RSS before) / connections held); \
             {:.1} KiB at the peak while handshakes were in flight. The load generator's own RSS grew {:.1} MiB \
             ({:.1} KiB per client connection). Opening rate: {:.0} connections/s.\n",
            r.peak_per_connection_kib().unwrap_or(0.0),
            mib(r.client_rss_delta_kib),
            r.client_rss_delta_kib as f64 / r.held() as f64,
            r.open.rate(),
        ));
    }
    if let Some(reg) = &r.register {
        rep.line(format!(
            "New devices registering over MQTT (symmetric key, a new TLS connection each, {} at once, at \
             most {} s) while the {} connections stayed open:\n",
            a.register_concurrency,
            a.register_seconds,
            r.held()
        ));
        rep.loads(&[reg]);
    }
    if let Some(per) = r.per_connection_kib() {
        // Issue 13 asks ≤ 16 KiB of an MQTT connection; issue 10 ≤ 32 KiB of an AMQP one.
        let target = if a.shape.protocol == Protocol::Amqp { 32.0 } else { 16.0 };
        rep.line(format!(
            "Target (reported, not asserted): idle {}-TLS connection ≤ {target:.0} KiB of server memory: {}",
            a.shape.name(),
            verdict(per <= target)
        ));
    }
}

/// The limits the run had: open files of both processes, the ephemeral ports, the accept
/// queue.
fn limits_line(r: &IdleResult) -> String {
    let lim = |pid: &str| {
        procstat::nofile_of(pid).map_or_else(|| "?".to_owned(), |(soft, hard)| format!("{soft} (hard {hard})"))
    };
    format!(
        "Limits: open files of the load generator {}, of the server {}; net.ipv4.ip_local_port_range {}; \
         net.core.somaxconn {}; net.ipv4.tcp_max_syn_backlog {}.\n",
        lim("self"),
        r.server_pid.map_or_else(|| "?".to_owned(), |p| lim(&p.to_string())),
        procstat::sysctl("net/ipv4/ip_local_port_range").replace('\t', "-"),
        procstat::sysctl("net/core/somaxconn"),
        procstat::sysctl("net/ipv4/tcp_max_syn_backlog"),
    )
}

pub async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let work = WorkDir::new(c)?;
    if a.nodes > 1 {
        return crate::nodes::idle_nodes(&a, &work.path).await;
    }
    // Descriptors: one per held connection and per registration in flight, plus a margin for
    // the process's own files (the store, logs, listeners).
    let need = (a.connections + a.register_concurrency) as u64 + 512;
    let have = procstat::raise_own_nofile(need.max(65_536));
    if have < need {
        bail!(
            "this process may open {have} files, {need} needed: raise the hard `ulimit -n` first \
             (raising it from inside needs CAP_SYS_RESOURCE)"
        );
    }
    if procstat::child_nofile(need + 4096) < need {
        bail!(
            "the server could not be given {need} open files for {} connections: raise the hard `ulimit -n`",
            a.connections
        );
    }
    let setup = Setup::start(SetupSpec {
        common: c,
        default_address: Ipv4Addr::new(127, 0, 0, 92),
        data_dir: work.path.join("opendps"),
        max_connections: (a.connections + a.register_concurrency) as u64 + 1000,
        nofile: (a.connections as u64 + 16_384).max(65_536),
        symmetric: true,
        x509: false,
        shared: None,
    })?;
    let r = measure(&setup, &a).await?;
    let mut rep = Report::new(&format!("OpenDPS server memory per idle {}-over-TLS connection", a.shape.name()));
    report(&mut rep, &a, &r);
    rep.finish(c.report.as_deref())?;
    if r.held() == 0 {
        bail!("no connection could be opened; the server log ends with:\n{}", setup.server.log_tail(20));
    }
    Ok(())
}
