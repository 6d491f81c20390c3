//! `idle --nodes N`: idle connections held by N OpenDPS nodes that share one PostgreSQL
//! database (docs/failover.md, "The shape"), all on this machine, each node on its own loopback
//! address with its own load generator process (`opendps-bench hold`).
//!
//! Why processes: one process can hold no more connections than it may open files, and where the
//! hard `RLIMIT_NOFILE` cannot be raised (a sandbox without `CAP_SYS_RESOURCE`), the only way to
//! hold more connections on one machine is more processes, on both sides. That is also how
//! OpenDPS grows past one process anywhere: nodes on a shared store.
//!
//! The bench starts a throwaway PostgreSQL cluster (never the machine's own), node 1 (which
//! creates the instance, the CA and the bench's enrollment group in the database), then the other
//! nodes with the same node key. Each load generator derives its devices' keys from the group's
//! key, which it gets in its environment, never on its command line. While every connection is
//! held, new devices register on node 1 from this process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use dps_store_postgres::test_cluster::{Options, TestCluster};
use serde_json::{json, Value};

use crate::device::{Auth, IdleConnection, Target};
use crate::idle::{IdleArgs, Shape};
use crate::load::{self, Spec};
use crate::procstat::{self, Group};
use crate::register::{Setup, SetupSpec, SharedStore};
use crate::report::{verdict, Report};
use crate::server::{Server, ServerSpec};
use crate::stats::LoadResult;
use crate::tlsclient::TlsClient;
use crate::{AmqpClient, Protocol};

/// The environment variable that hands a load generator the group's key.
const GROUP_KEY_ENV: &str = "OPENDPS_BENCH_GROUP_KEY";

/// Files a process needs besides its connections (store, logs, listeners, the runtime).
const MARGIN: u64 = 512;

/// `opendps-bench hold`: one load generator of `idle --nodes` (started by the bench, not by hand).
/// Opens the connections to one node, prints one JSON line with what it held, keeps them until
/// its standard input closes (or `--hold-max-seconds` pass), then closes them and exits.
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// The root the node's certificate chains to.
    #[arg(long)]
    pub root_pem: PathBuf,
    /// The node's loopback address.
    #[arg(long)]
    pub server: IpAddr,
    #[arg(long)]
    pub https_port: u16,
    #[arg(long)]
    pub mqtt_port: u16,
    #[arg(long)]
    pub amqp_port: u16,
    #[arg(long)]
    pub scope: String,
    #[arg(long)]
    pub connections: usize,
    /// Index of the first device (ids are idle-NNNNNNN, unique across load generators).
    #[arg(long)]
    pub first: usize,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    #[command(flatten)]
    pub shape: Shape,
    #[arg(long, value_enum, default_value = "lean")]
    pub amqp_client: AmqpClient,
    /// Source addresses, used in turn (repeatable).
    #[arg(long = "source")]
    pub sources: Vec<IpAddr>,
    #[arg(long, default_value = "P-256")]
    pub groups: String,
    #[arg(long, default_value_t = 30)]
    pub device_timeout: u64,
    /// The connections are closed after this long even if standard input stays open.
    #[arg(long, default_value_t = 1800)]
    pub hold_max_seconds: u64,
    /// Threads of this load generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// The load generator's side of `idle --nodes`.
pub async fn hold(a: HoldArgs) -> anyhow::Result<()> {
    let key = std::env::var(GROUP_KEY_ENV).map_err(|_| anyhow!("{GROUP_KEY_ENV} is not set"))?;
    let need = a.connections as u64 + MARGIN;
    let have = procstat::raise_own_nofile(need);
    if have < need {
        bail!("this load generator may open {have} files, {need} needed: start more nodes");
    }
    let tls = TlsClient::holding(&a.root_pem, a.server, &a.groups, a.sources.clone())?;
    let target = Arc::new(Target {
        tls,
        https: SocketAddr::new(a.server, a.https_port),
        mqtt: SocketAddr::new(a.server, a.mqtt_port),
        amqp: SocketAddr::new(a.server, a.amqp_port),
        amqp_client: a.amqp_client,
        scope: a.scope.clone(),
    });
    let ids: Arc<Vec<String>> = Arc::new((a.first..a.first + a.connections).map(|i| format!("idle-{i:07}")).collect());
    let auths: Arc<Vec<Auth>> = Arc::new(
        ids.iter()
            .map(|id| dps_attest::derive_device_key(&key, id).map(Auth::Key).ok_or_else(|| anyhow!("bad group key")))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    let held: Arc<Mutex<Vec<IdleConnection>>> = Arc::new(Mutex::new(Vec::with_capacity(a.connections)));
    let me = std::process::id();
    let client_base = procstat::rss_kib(me).unwrap_or(0);
    let spec = Spec {
        label: format!("hold on {}", a.server),
        n: a.connections,
        concurrency: a.concurrency.max(1),
        max: Duration::from_secs(a.max_seconds.max(1)),
        device_timeout: Duration::from_secs(a.device_timeout.max(1)),
        progress: false,
    };
    let (t, h, shape) = (target.clone(), held.clone(), a.shape);
    // The nodes are measured by the bench; `load::run` samples this process.
    let r = load::run(&spec, &Group { root: me }, move |i| {
        let (t, ids, auths, h) = (t.clone(), ids.clone(), auths.clone(), h.clone());
        async move { shape.open(&t, &ids[i], &auths[i], &h).await }
    })
    .await;
    let line = json!({
        "ok": r.ok,
        "failures": r.failures,
        "wall_ms": r.wall.as_millis() as u64,
        "client_cpu_seconds": r.client_cpu_seconds,
        "client_rss_delta_kib": procstat::rss_kib(me).unwrap_or(0).saturating_sub(client_base),
        "nofile": procstat::nofile_of("self").map(|(s, _)| s),
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    // Hold until the bench closes our standard input (or the bound passes).
    let wait = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
    });
    let _ = tokio::time::timeout(Duration::from_secs(a.hold_max_seconds.max(1)), wait).await;
    drop(std::mem::take(&mut *held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
    Ok(())
}

/// One node of the run and what was read of it.
#[derive(Debug, Clone)]
pub struct NodeFigures {
    pub address: IpAddr,
    pub pid: u32,
    pub held: u64,
    pub base_rss_kib: u64,
    pub open_rss_kib: u64,
    pub after_register_rss_kib: u64,
    pub closed_rss_kib: u64,
    pub open_fds: usize,
    pub nofile: Option<(u64, u64)>,
}

/// The figures of an `idle --nodes` run.
#[derive(Debug, Default, Clone)]
pub struct NodesResult {
    pub nodes: Vec<NodeFigures>,
    /// Every load generator's opening, merged (no latencies: each process keeps its own).
    pub open: LoadResult,
    pub client_rss_delta_kib: u64,
    pub client_nofile: Option<u64>,
    pub register: Option<LoadResult>,
    pub postgres: String,
}

impl NodesResult {
    pub fn held(&self) -> u64 {
        self.nodes.iter().map(|n| n.held).sum()
    }
    /// Server KiB per held connection, over every node.
    pub fn per_connection_kib(&self) -> Option<f64> {
        let grown: u64 = self.nodes.iter().map(|n| n.open_rss_kib.saturating_sub(n.base_rss_kib)).sum();
        (self.held() > 0).then(|| grown as f64 / self.held() as f64)
    }
}

/// Node `i`'s address: `base` with `i` added to its last octet.
fn node_address(base: Ipv4Addr, i: usize) -> anyhow::Result<Ipv4Addr> {
    let [a, b, c, d] = base.octets();
    let last = u8::try_from(usize::from(d) + i)
        .ok()
        .filter(|l| *l < 255)
        .ok_or_else(|| anyhow!("--address {base}: no room for {} nodes on consecutive addresses", i + 1))?;
    Ok(Ipv4Addr::new(a, b, c, last))
}

/// Load generator `i`'s source addresses: 127.0.(10 + i).1 to 127.0.(10 + i).n.
fn worker_sources(i: usize, n: u8) -> Vec<IpAddr> {
    crate::tlsclient::loopback_range(u8::try_from(10 + i).unwrap_or(u8::MAX), n)
}

/// A started load generator.
struct Worker {
    child: Child,
    node: usize,
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        // Give it the time to close its connections, then make sure.
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts PostgreSQL and `a.nodes` nodes, holds `a.connections` across them, registers new
/// devices meanwhile, closes everything; `work` holds the nodes' data directories.
pub async fn measure(a: &IdleArgs, work: &std::path::Path) -> anyhow::Result<NodesResult> {
    let c = &a.common;
    let n = usize::from(a.nodes.max(1));
    let base = c.address.unwrap_or(Ipv4Addr::new(127, 0, 4, 1));
    let (_, hard) = procstat::nofile_of("self").unwrap_or((0, 0));
    let per_node = a.connections.div_ceil(n) as u64;
    if per_node + (a.register_concurrency as u64) + MARGIN > hard {
        bail!(
            "{} connections over {n} nodes is {per_node} a node, more than one process may open here \
             (hard open-files limit {hard}): use --nodes {} or more",
            a.connections,
            (a.connections as u64).div_ceil(hard.saturating_sub(MARGIN + a.register_concurrency as u64).max(1))
        );
    }
    procstat::raise_own_nofile(hard);

    let pg = TestCluster::start_with(&Options {
        host: IpAddr::V4(Ipv4Addr::new(127, 0, 4, 254)),
        // Each node pools up to 16 connections.
        conf: vec![format!("max_connections = {}", 16 * n + 40)],
        ..Options::default()
    })
    .map_err(|e| anyhow!("starting PostgreSQL for the nodes: {e}"))?;
    let postgres = pg.psql("SHOW server_version").unwrap_or_default().trim().to_owned();
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key)?;
    let shared = SharedStore { url: pg.url("postgres"), node_key: openssl::base64::encode_block(&key) };

    let max_connections = per_node + a.register_concurrency as u64 + 1000;
    let nofile = per_node + MARGIN + 4096;
    let setup = Setup::start(SetupSpec {
        common: c,
        default_address: base,
        data_dir: work.join("node-1"),
        max_connections,
        nofile,
        symmetric: true,
        x509: false,
        shared: Some(shared.clone()),
    })?;
    let key = setup.group_key.clone().ok_or_else(|| anyhow!("no symmetric-key group"))?;
    let mut others: Vec<Server> = Vec::new();
    for i in 1..n {
        let address = IpAddr::V4(node_address(base, i)?);
        let spec = ServerSpec { data_dir: work.join(format!("node-{}", i + 1)), address, ..setup.server.spec.clone() };
        eprintln!("starting node {} on {address}", i + 1);
        let s = Server::start(spec)?;
        if s.scope != setup.server.scope {
            bail!("node {} serves ID scope {}, node 1 {}: not one instance", i + 1, s.scope, setup.server.scope);
        }
        others.push(s);
    }
    let nodes: Vec<&Server> = std::iter::once(&setup.server).chain(others.iter()).collect();
    let mut targets: Vec<Arc<Target>> = vec![setup.target.clone()];
    for s in &nodes[1..] {
        targets.push(Arc::new(s.target(TlsClient::new(&s.root_pem(), s.spec.address, &c.groups)?, c.amqp_client)));
    }

    // Warm every node up (code paths, allocator, pool), then read where each starts from.
    if a.warmup > 0 {
        for (i, t) in targets.iter().enumerate() {
            let ids: Arc<Vec<String>> = Arc::new((0..a.warmup).map(|j| format!("idle-warm-{i}-{j:05}")).collect());
            let auths = setup.creds(crate::Attestation::Symmetric, &ids)?;
            let spec = Spec {
                label: format!("warm-up node {}", i + 1),
                n: a.warmup,
                concurrency: a.concurrency.min(a.warmup).max(1),
                max: Duration::from_secs(a.max_seconds.max(1)),
                device_timeout: c.device_timeout(),
                progress: false,
            };
            let r = setup.load_on(t, &spec, Protocol::Mqtt, ids, auths).await;
            eprintln!("{}", r.line());
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut figures: Vec<NodeFigures> = nodes
        .iter()
        .map(|s| NodeFigures {
            address: s.spec.address,
            pid: s.pid,
            base_rss_kib: procstat::rss_kib(s.pid).unwrap_or(0),
            nofile: procstat::nofile_of(&s.pid.to_string()),
            held: 0,
            open_rss_kib: 0,
            after_register_rss_kib: 0,
            closed_rss_kib: 0,
            open_fds: 0,
        })
        .collect();

    // One load generator a node, each with its share and its own source addresses.
    let exe = std::env::current_exe()?;
    let (tx, rx) = mpsc::channel::<(usize, anyhow::Result<Value>)>();
    let mut workers: Vec<Worker> = Vec::new();
    let mut first = 0;
    for (i, s) in nodes.iter().enumerate() {
        let share = a.connections / n + usize::from(i < a.connections % n);
        let mut cmd = Command::new(&exe);
        cmd.arg("hold")
            .arg("--root-pem")
            .arg(s.root_pem())
            .args(["--server", &s.spec.address.to_string()])
            .args(["--https-port", &s.spec.https_port.to_string()])
            .args(["--mqtt-port", &s.spec.mqtt_port.to_string()])
            .args(["--amqp-port", &s.spec.amqp_port.to_string()])
            .args(["--scope", &s.scope])
            .args(["--connections", &share.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--concurrency", &(a.concurrency / n).max(4).to_string()])
            .args(["--max-seconds", &a.max_seconds.to_string()])
            .args(["--keep-alive", &a.shape.keep_alive.to_string()])
            .args(["--protocol", a.shape.protocol.name()])
            .args(["--amqp-client", if c.amqp_client == AmqpClient::Fe2o3 { "fe2o3" } else { "lean" }])
            .args(["--groups", &c.groups])
            .args(["--device-timeout", &c.device_timeout.to_string()])
            .args(["--hold-max-seconds", &(a.max_seconds + a.register_seconds + 600).to_string()])
            .env(GROUP_KEY_ENV, &key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if a.shape.no_subscribe {
            cmd.arg("--no-subscribe");
        }
        for src in worker_sources(i, a.sources) {
            cmd.args(["--source", &src.to_string()]);
        }
        let mut child = cmd.spawn().context("starting a load generator (opendps-bench hold)")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout of a load generator"))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let got = match BufReader::new(stdout).read_line(&mut line) {
                Ok(0) => Err(anyhow!("load generator {} exited without a result", i + 1)),
                Ok(_) => serde_json::from_str(&line).context("a load generator's result line"),
                Err(e) => Err(anyhow!("reading load generator {}: {e}", i + 1)),
            };
            let _ = tx.send((i, got));
        });
        workers.push(Worker { child, node: i });
        first += share;
    }
    drop(tx);
    eprintln!("{n} load generators opening {} connections", a.connections);
    let deadline = Duration::from_secs(a.max_seconds + 60);
    let results = tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_sub(t0.elapsed()) {
            match rx.recv_timeout(left) {
                Ok(r) => got.push(r),
                Err(_) => break,
            }
        }
        got
    })
    .await?;
    let mut open = LoadResult {
        label: format!("open {} idle {}-TLS connections on {n} nodes", a.connections, a.shape.name()),
        ..LoadResult::default()
    };
    let mut client_rss = 0;
    let mut client_nofile = None;
    for w in &workers {
        match results.iter().find(|(i, _)| *i == w.node) {
            Some((i, Ok(v))) => {
                let ok = v["ok"].as_u64().unwrap_or(0);
                figures[*i].held = ok;
                open.ok += ok;
                if let Some(f) = v["failures"].as_object() {
                    for (cause, k) in f {
                        *open.failures.entry(cause.clone()).or_default() += k.as_u64().unwrap_or(0);
                    }
                }
                open.wall = open.wall.max(Duration::from_millis(v["wall_ms"].as_u64().unwrap_or(0)));
                open.client_cpu_seconds += v["client_cpu_seconds"].as_f64().unwrap_or(0.0);
                client_rss += v["client_rss_delta_kib"].as_u64().unwrap_or(0);
                client_nofile = client_nofile.or(v["nofile"].as_u64());
            }
            Some((i, Err(e))) => {
                *open.failures.entry(format!("load generator {}: {e:#}", i + 1)).or_default() += 1;
            }
            None => {
                *open.failures.entry(format!("load generator {}: no result in time", w.node + 1)).or_default() += 1;
            }
        }
    }
    let accounted = open.ok + open.failed();
    if accounted < a.connections as u64 {
        *open.failures.entry("not started before --max-seconds".to_owned()).or_default() +=
            a.connections as u64 - accounted;
    }
    open.attempted = open.ok + open.failed();
    eprintln!("{}: {} held; failures: {}", open.label, open.ok, open.failures_text());
    tokio::time::sleep(Duration::from_secs(a.hold_seconds)).await;
    for f in &mut figures {
        f.open_rss_kib = procstat::rss_kib(f.pid).unwrap_or(0);
        f.open_fds = procstat::fd_count(f.pid).unwrap_or(0);
    }
    let held: u64 = figures.iter().map(|f| f.held).sum();
    let mut register = None;
    if a.register > 0 {
        let ids: Arc<Vec<String>> = Arc::new((0..a.register).map(|i| format!("idle-new-{i:07}")).collect());
        let auths = setup.creds(crate::Attestation::Symmetric, &ids)?;
        let spec = Spec {
            label: format!("register new devices (MQTT) on node 1 while {held} are held on {n} nodes"),
            n: a.register,
            concurrency: a.register_concurrency.max(1),
            max: Duration::from_secs(a.register_seconds.max(1)),
            device_timeout: c.device_timeout(),
            progress: true,
        };
        let r = setup.load(&spec, Protocol::Mqtt, ids, auths).await;
        eprintln!("{}", r.line());
        register = Some(r);
        for f in &mut figures {
            f.after_register_rss_kib = procstat::rss_kib(f.pid).unwrap_or(0);
        }
    }
    drop(workers);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for f in &mut figures {
        f.closed_rss_kib = procstat::rss_kib(f.pid).unwrap_or(0);
    }
    drop(others);
    drop(setup);
    drop(pg);
    Ok(NodesResult { nodes: figures, open, client_rss_delta_kib: client_rss, client_nofile, register, postgres })
}

/// The report of an `idle --nodes` run.
pub fn report(rep: &mut Report, a: &IdleArgs, r: &NodesResult) {
    let mib = |k: u64| k as f64 / 1024.0;
    let n = r.nodes.len();
    let first = r.nodes.first().map(|f| f.address.to_string()).unwrap_or_default();
    let last = r.nodes.last().map(|f| f.address.to_string()).unwrap_or_default();
    rep.line(format!(
        "{n} OpenDPS nodes on this machine ({first} to {last}) share one PostgreSQL {} database (a \
         throwaway cluster on 127.0.4.254), as docs/failover.md describes; one load generator process a \
         node, each from its own source addresses (127.0.(10+i).1-{}). {} connections asked, {} held \
         ({}); each: a new full TLS 1.2 handshake, {}, then nothing. Memory read {} s after the last \
         one opened.\n",
        r.postgres,
        a.sources.max(1),
        a.connections,
        r.held(),
        r.open.failures_text(),
        a.shape.describe(),
        a.hold_seconds
    ));
    let lim = |l: Option<(u64, u64)>| l.map_or_else(|| "?".to_owned(), |(s, h)| format!("{s} (hard {h})"));
    rep.line(format!(
        "Limits: open files of a node {}, of a load generator {}; net.ipv4.ip_local_port_range {}; \
         net.core.somaxconn {}.\n",
        lim(r.nodes.first().and_then(|f| f.nofile)),
        r.client_nofile.map_or_else(|| "?".to_owned(), |s| s.to_string()),
        procstat::sysctl("net/ipv4/ip_local_port_range").replace('\t', "-"),
        procstat::sysctl("net/core/somaxconn"),
    ));
    rep.line(
        "| node | address | held | RSS before MiB | RSS all open MiB | RSS after registrations MiB | RSS 3 s after \
         closing MiB | open fds | KiB per connection |",
    );
    rep.line("|---|---|---|---|---|---|---|---|---|");
    for (i, f) in r.nodes.iter().enumerate() {
        rep.line(format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            i + 1,
            f.address,
            f.held,
            mib(f.base_rss_kib),
            mib(f.open_rss_kib),
            mib(f.after_register_rss_kib),
            mib(f.closed_rss_kib),
            f.open_fds,
            if f.held > 0 {
                format!("{:.1}", f.open_rss_kib.saturating_sub(f.base_rss_kib) as f64 / f.held as f64)
            } else {
                "-".to_owned()
            }
        ));
    }
    let sum = |g: fn(&NodeFigures) -> u64| r.nodes.iter().map(g).sum::<u64>();
    rep.line(format!(
        "| all | | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
        r.held(),
        mib(sum(|f| f.base_rss_kib)),
        mib(sum(|f| f.open_rss_kib)),
        mib(sum(|f| f.after_register_rss_kib)),
        mib(sum(|f| f.closed_rss_kib)),
        r.nodes.iter().map(|f| f.open_fds).sum::<usize>(),
        r.per_connection_kib().map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
    ));
    if r.held() > 0 {
        rep.line(format!(
            "Opening took {:.1} s ({:.0} connections/s over all load generators); the load generators' RSS \
             grew {:.1} MiB ({:.1} KiB per client connection).\n",
            r.open.wall.as_secs_f64(),
            r.open.rate(),
            mib(r.client_rss_delta_kib),
            r.client_rss_delta_kib as f64 / r.held() as f64
        ));
    }
    if let Some(reg) = &r.register {
        rep.line(format!(
            "New devices registering over MQTT on node 1 (symmetric key, a new TLS connection each, {} at \
             once, at most {} s) while the {} connections stayed open; server CPU and peak RSS are node 1's:\n",
            a.register_concurrency,
            a.register_seconds,
            r.held()
        ));
        rep.loads(&[reg]);
    }
    let registered = r.register.as_ref().is_some_and(|g| g.ok > 0 && g.failed() == 0);
    rep.line(format!(
        "Target (reported, not asserted): 100 000 concurrent idle {}-TLS connections held on this machine while \
         new devices still register: {}",
        a.shape.name(),
        verdict(r.held() >= 100_000 && registered)
    ));
}

/// `idle --nodes N` (N > 1).
pub async fn idle_nodes(a: &IdleArgs, work: &std::path::Path) -> anyhow::Result<()> {
    // On SIGINT or SIGTERM the run is dropped, which stops the load generators, the nodes and
    // the PostgreSQL cluster rather than leaving them behind.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let r = tokio::select! {
        r = measure(a, work) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: nodes, load generators and PostgreSQL stopped"),
        _ = term.recv() => bail!("terminated: nodes, load generators and PostgreSQL stopped"),
    };
    let mut rep = Report::new(&format!(
        "OpenDPS: idle {}-over-TLS connections held by {} nodes sharing PostgreSQL",
        a.shape.name(),
        r.nodes.len()
    ));
    report(&mut rep, a, &r);
    rep.finish(a.common.report.as_deref())?;
    if r.held() == 0 {
        bail!("no connection could be opened");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_sources_get_their_own_addresses() -> anyhow::Result<()> {
        assert_eq!(node_address(Ipv4Addr::new(127, 0, 4, 1), 5)?, Ipv4Addr::new(127, 0, 4, 6));
        assert!(node_address(Ipv4Addr::new(127, 0, 4, 250), 5).is_err(), "past .254 is refused");
        assert_eq!(
            worker_sources(2, 3),
            vec![
                IpAddr::V4(Ipv4Addr::new(127, 0, 12, 1)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 12, 2)),
                IpAddr::V4(Ipv4Addr::new(127, 0, 12, 3))
            ]
        );
        assert_eq!(worker_sources(0, 0).len(), 1, "at least one source address");
        Ok(())
    }
}
