//! `growth`: registration latency and rate as the embedded store grows. For each size N: a
//! fresh server is started once (instance, PKI, linked hub), stopped, seeded with N individual
//! symmetric-key enrollments and their registration records (plus the enrollments of the
//! devices to measure), restarted, and then measured twice: first registrations of enrolled
//! devices with no record yet (a B-tree insert at a random place), and re-registrations of
//! random seeded devices (a lookup and an update).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::device::{self, Auth, Target};
use crate::load::{self, Spec};
use crate::report::{verdict, Report};
use crate::seed;
use crate::server::{self, Server, ServerSpec};
use crate::stats::{median, ms, LoadResult};
use crate::tlsclient::TlsClient;
use crate::{Common, Protocol, WorkDir};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SeedVia {
    /// The store crate's bulk write, many rows per transaction (fast; the fixture path).
    #[value(alias = "sql")]
    Bulk,
    /// The store's own `Store` trait, one transaction per row (slow; for checking).
    Store,
}

#[derive(Args, Debug)]
pub struct GrowthArgs {
    #[command(flatten)]
    pub common: Common,
    /// Store sizes: seeded enrollments, each with a registration record (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    pub enrollments: Vec<u64>,
    /// Devices measured per phase (first registration, re-registration).
    #[arg(long, default_value_t = 2000)]
    pub devices: usize,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "https")]
    pub protocol: Protocol,
    /// Bound on each load.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Devices (an enrollment and a registration each) per seeding transaction.
    #[arg(long, default_value_t = 50_000)]
    pub seed_batch: u64,
    /// Bound on seeding one size.
    #[arg(long, default_value_t = 3600)]
    pub seed_max_seconds: u64,
    #[arg(long, value_enum, default_value = "bulk")]
    pub seed_via: SeedVia,
    /// Re-registrations before the measured phases (warm the page cache as a running server
    /// would be).
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Measure every size this many times, alternating sizes (each time a restarted server),
    /// so that a noisy minute does not land on one size only; the p99 ratio is the median.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

/// One store size.
#[derive(Debug, Clone)]
pub struct Point {
    pub n: u64,
    pub round: usize,
    pub seeded: seed::Seeded,
    pub startup_seconds: f64,
    pub first: LoadResult,
    pub again: LoadResult,
}

fn server_spec(c: &Common, address: Ipv4Addr, dir: std::path::PathBuf) -> anyhow::Result<ServerSpec> {
    Ok(ServerSpec {
        bin: server::find_bin(c.opendps_bin.as_deref())?,
        data_dir: dir,
        address: IpAddr::V4(address),
        https_port: c.https_port,
        mqtt_port: c.mqtt_port,
        amqp_port: c.amqp_port,
        config: crate::server_config(c, 20_000)?,
        nofile: 65_536,
        env: Vec::new(),
    })
}

async fn load(
    server: &Server,
    target: &Arc<Target>,
    proto: Protocol,
    spec: &Spec,
    ids: Vec<String>,
) -> anyhow::Result<LoadResult> {
    let auths: Arc<Vec<Auth>> =
        Arc::new(ids.iter().map(|id| seed::primary_key(id).map(Auth::Key)).collect::<anyhow::Result<_>>()?);
    let (t, ids) = (target.clone(), Arc::new(ids));
    Ok(load::run(spec, &server.group(), move |i| {
        let (t, ids, auths) = (t.clone(), ids.clone(), auths.clone());
        async move {
            match proto {
                Protocol::Https => device::https_register(&t, &ids[i], &auths[i]).await,
                Protocol::Mqtt => device::mqtt_register(&t, &ids[i], &auths[i]).await,
                Protocol::Amqp => device::amqp_register(&t, &ids[i], &auths[i]).await,
            }
        }
    })
    .await)
}

/// A seeded store size.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub n: u64,
    pub dir: std::path::PathBuf,
    pub seeded: seed::Seeded,
}

/// Makes a server's data directory in `dir` (instance, PKI, linked hub) and seeds `n` devices
/// into it while the server is stopped.
pub async fn seed_point(a: &GrowthArgs, address: Ipv4Addr, dir: std::path::PathBuf, n: u64) -> anyhow::Result<Seeded> {
    let c = &a.common;
    let spec = server_spec(c, address, dir.clone())?;
    eprintln!("store of {n}: first start of {} (instance, PKI, linked hub)", spec.bin.display());
    {
        let mut s = Server::start(spec)?;
        s.link_hub()?;
        s.stop()?;
    }
    let db = dir.join("opendps.db");
    // Devices n..n+devices are enrolled but not registered: the first-registration phase of
    // each round takes its own slice of them.
    let enrolled = n + (a.devices * a.rounds.max(1)) as u64;
    let max = Duration::from_secs(a.seed_max_seconds);
    eprintln!("store of {n}: seeding {enrolled} enrollments and {n} registrations (server stopped)");
    let seeded = match a.seed_via {
        SeedVia::Bulk => seed::seed_bulk(&db, "opendps", enrolled, n, a.seed_batch, max).await?,
        SeedVia::Store => seed::seed_store(&db, "opendps", enrolled, n, max).await?,
    };
    eprintln!(
        "store of {n}: seeded in {:.1} s, database {:.1} MiB",
        seeded.seconds,
        seeded.db_bytes as f64 / 1048576.0
    );
    let probe: Vec<String> = [0, n.saturating_sub(1), n].iter().map(|&i| seed::id(i)).collect();
    let registered: Vec<String> = if n > 0 { vec![seed::id(0), seed::id(n - 1)] } else { Vec::new() };
    seed::verify(&db, "opendps", &probe, &registered).await.context("reading the seeded rows back")?;
    Ok(Seeded { n, dir, seeded })
}

/// Starts the server on a seeded store and measures round `round` (1-based).
pub async fn measure_point(a: &GrowthArgs, address: Ipv4Addr, s: &Seeded, round: usize) -> anyhow::Result<Point> {
    let c = &a.common;
    let n = s.n;
    let server = Server::start(server_spec(c, address, s.dir.clone())?)?;
    eprintln!("store of {n}, round {round}: server up in {:.2} s", server.startup_seconds);
    let tls = TlsClient::new(&server.root_pem(), IpAddr::V4(address), &c.groups)?;
    let target = Arc::new(server.target(tls, c.amqp_client));
    let spec = |label: String, n: usize, progress: bool| Spec {
        label,
        n,
        concurrency: a.concurrency,
        max: Duration::from_secs(a.max_seconds.max(1)),
        device_timeout: c.device_timeout(),
        progress,
    };
    let (devices, warmup) = (a.devices as u64, a.warmup as u64);
    let salt = round as u64 * (1 << 32);
    if warmup > 0 && n > 0 {
        let ids = (0..warmup).map(|k| seed::id(seed::spread(salt + (1 << 40), k, n))).collect();
        let r = load(&server, &target, a.protocol, &spec("warm-up".into(), a.warmup, false), ids).await?;
        eprintln!("warm-up {}", r.line());
    }
    let proto = a.protocol.name();
    let from = n + (round as u64 - 1) * devices;
    let ids = (from..from + devices).map(seed::id).collect();
    let label = format!("{n} r{round}: first registration ({proto})");
    let first = load(&server, &target, a.protocol, &spec(label, a.devices, true), ids).await?;
    eprintln!("{}", first.line());
    let again = if n > 0 {
        let ids = (0..devices).map(|k| seed::id(seed::spread(salt, k, n))).collect();
        let label = format!("{n} r{round}: re-registration ({proto})");
        let r = load(&server, &target, a.protocol, &spec(label, a.devices, true), ids).await?;
        eprintln!("{}", r.line());
        r
    } else {
        LoadResult { label: format!("{n} r{round}: re-registration (none seeded)"), ..LoadResult::default() }
    };
    if first.ok == 0 {
        eprintln!("no registration succeeded; the server log ends with:\n{}", server.log_tail(20));
    }
    Ok(Point { n, round, seeded: s.seeded.clone(), startup_seconds: server.startup_seconds, first, again })
}

/// The report of the points (every size, every round).
pub fn report(rep: &mut Report, a: &GrowthArgs, points: &[Point]) {
    rep.line(format!(
        "Per store size: {} devices per phase over {}, {} in flight, {} warm-up re-registrations, {} round(s) \
         alternating the sizes (a restarted server each time); seeding via {}. \"first registration\": enrolled \
         devices with no registration record yet; \"re-registration\": random seeded devices that have one. \
         Individual symmetric-key enrollments (device key = the enrollment's primary key).\n",
        a.devices,
        a.protocol.name(),
        a.concurrency,
        a.warmup,
        a.rounds.max(1),
        match a.seed_via {
            SeedVia::Bulk => "the store's bulk write",
            SeedVia::Store => "the Store trait",
        }
    ));
    rep.line("| store size | enrollments | registrations | database MiB | seeding s | server startup s |");
    rep.line("|---|---|---|---|---|---|");
    for p in points.iter().filter(|p| p.round == 1) {
        rep.line(format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} |",
            p.n,
            p.seeded.enrollments,
            p.seeded.registrations,
            p.seeded.db_bytes as f64 / 1048576.0,
            p.seeded.seconds,
            p.startup_seconds
        ));
    }
    rep.line("");
    let loads: Vec<&LoadResult> = points.iter().flat_map(|p| [&p.first, &p.again]).collect();
    rep.loads(&loads);
    let Some(smallest) = points.iter().map(|p| p.n).min() else { return };
    rep.line(format!("p99 against the smallest store ({smallest}) of the same round:\n"));
    rep.line("| round | store size | first registration p99 ms | × | re-registration p99 ms | × |");
    rep.line("|---|---|---|---|---|---|");
    let x = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    };
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for p in points {
        let Some(base) = points.iter().find(|b| b.round == p.round && b.n == smallest) else { continue };
        rep.line(format!(
            "| {} | {} | {} | {} | {} | {} |",
            p.round,
            p.n,
            ms(p.first.p(99.0)),
            fmt(x(p.first.p(99.0), base.first.p(99.0))),
            ms(p.again.p(99.0)),
            fmt(x(p.again.p(99.0), base.again.p(99.0))),
        ));
    }
    rep.line("");
    // The targets: every larger size against the smallest (10 k in the issue), the median over
    // rounds of the per-round ratio.
    let mut sizes: Vec<u64> = points.iter().map(|p| p.n).filter(|&n| n != smallest).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        let mut first = Vec::new();
        let mut again = Vec::new();
        for b in points.iter().filter(|p| p.n == n) {
            if let Some(s) = points.iter().find(|s| s.n == smallest && s.round == b.round) {
                first.extend(x(b.first.p(99.0), s.first.p(99.0)));
                again.extend(x(b.again.p(99.0), s.again.p(99.0)));
            }
        }
        for (what, ratios) in [("first registration", first), ("re-registration", again)] {
            let rounds = ratios.len();
            if let Some(m) = median(ratios) {
                rep.line(format!(
                    "- Target (reported, not asserted): {what} p99 with {n} enrollments within 1.2 × of p99 with \
                     {smallest}: median over {rounds} round(s) {m:.2} ×: {}",
                    verdict(m <= 1.2)
                ));
            }
        }
    }
}

pub async fn growth(a: GrowthArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let work = WorkDir::new(c)?;
    let address = c.address.unwrap_or(Ipv4Addr::new(127, 0, 0, 93));
    if !address.is_loopback() {
        bail!("--address {address}: the bench only runs on loopback (127.0.0.0/8)");
    }
    crate::procstat::raise_own_nofile(65_536);
    let mut seeded = Vec::new();
    for &n in &a.enrollments {
        seeded.push(seed_point(&a, address, work.path.join(format!("growth-{n}")), n).await?);
    }
    let mut points = Vec::new();
    for round in 1..=a.rounds.max(1) {
        for s in &seeded {
            points.push(measure_point(&a, address, s, round).await?);
        }
    }
    let mut rep = Report::new("OpenDPS registration cost as the store grows");
    report(&mut rep, &a, &points);
    rep.finish(c.report.as_deref())?;
    if points.iter().any(|p| p.first.ok == 0) {
        bail!("a store size had no successful registration");
    }
    Ok(())
}
