//! `smoke`: every benchmark, tiny, for CI (`hostile` included). It checks that the tool works end
//! to end (every part has successes and no failure) and judges no timing.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use crate::device::Auth;
use crate::growth::{self, GrowthArgs, SeedVia};
use crate::hostile::{self, HostileArgs, Kind, Placement};
use crate::idle::{self, IdleArgs};
use crate::load::Spec;
use crate::register::{NginxArgs, Setup, SetupSpec};
use crate::report::Report;
use crate::stats::LoadResult;
use crate::{Attestation, Common, Protocol, WorkDir};

#[derive(Args, Debug)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Registrations per protocol and attestation.
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Idle connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Store size of the growth point.
    #[arg(long, default_value_t = 1000)]
    pub enrollments: u64,
    /// Bound on each load.
    #[arg(long, default_value_t = 30)]
    pub max_seconds: u64,
    /// Skip the nginx ceiling even if nginx is installed.
    #[arg(long)]
    pub no_ceiling: bool,
    /// The nginx binary.
    #[arg(long)]
    pub nginx_bin: Option<std::path::PathBuf>,
}

pub async fn smoke(a: SmokeArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let c = &a.common;
    let work = WorkDir::new(c)?;
    let address = c.address.unwrap_or(Ipv4Addr::new(127, 0, 0, 94));
    crate::procstat::raise_own_nofile(8192);
    let mut parts: Vec<(String, LoadResult)> = Vec::new();
    let spec = |label: String, n: usize| Spec {
        label,
        n,
        concurrency: 4,
        max: Duration::from_secs(a.max_seconds.max(1)),
        device_timeout: c.device_timeout(),
        progress: false,
    };

    let mut common = c.clone();
    common.address = Some(address);
    let setup = Setup::start(SetupSpec {
        common: &common,
        default_address: address,
        data_dir: work.path.join("opendps"),
        max_connections: 2000,
        nofile: 65_536,
        symmetric: true,
        x509: true,
        shared: None,
    })?;
    for proto in [Protocol::Https, Protocol::Mqtt, Protocol::Amqp] {
        for att in [Attestation::Symmetric, Attestation::X509] {
            let tag = format!("smoke-{}-{}", proto.name(), att.name());
            let ids: Arc<Vec<String>> = Arc::new((0..a.devices).map(|i| format!("{tag}-{i:04}")).collect());
            let auths = setup.creds(att, &ids)?;
            let r = setup.load(&spec(format!("{} {}", proto.name(), att.name()), a.devices), proto, ids, auths).await;
            eprintln!("{}", r.line());
            parts.push((format!("{}-{}", proto.name(), att.name()), r));
        }
    }

    // Resumed registrations (`register --resume`): each device's second connection offers the
    // session of its first, and every one of them must resume.
    let resuming = setup.resuming_target(&common)?;
    let mut not_resumed = Vec::new();
    for (proto, att, addr) in
        [(Protocol::Https, Attestation::X509, resuming.https), (Protocol::Mqtt, Attestation::Symmetric, resuming.mqtt)]
    {
        let tag = format!("smoke-resume-{}-{}", proto.name(), att.name());
        let ids: Arc<Vec<String>> = Arc::new((0..a.devices).map(|i| format!("{tag}-{i:04}")).collect());
        let auths = setup.creds(att, &ids)?;
        let label = format!("{} {} sessions", proto.name(), att.name());
        let (s, g) = (spec(label, a.devices), setup.server.group());
        let p = setup.prime(&resuming, &s, addr, &g, ids.clone(), auths.clone()).await;
        eprintln!("{}", p.line());
        let before = resuming.tls.resumed();
        let label = format!("{} {} resumed", proto.name(), att.name());
        let r = setup.load_on(&resuming, &spec(label, a.devices), proto, ids, auths).await;
        eprintln!("{}", r.line());
        let resumed = resuming.tls.resumed() - before;
        if resumed != r.ok {
            not_resumed.push(format!("{} {}: {resumed} of {} resumed", proto.name(), att.name(), r.ok));
        }
        parts.push((format!("{}-{}-sessions", proto.name(), att.name()), p));
        parts.push((format!("{}-{}-resumed", proto.name(), att.name()), r));
    }

    let nginx_bin = crate::nginx::find_bin(a.nginx_bin.as_deref());
    let mut unverified: Option<String> = None;
    let ceiling_note = match (&nginx_bin, a.no_ceiling) {
        (_, true) => "skipped (--no-ceiling)".to_owned(),
        (None, false) => "skipped (nginx not installed: apt-get install -y nginx)".to_owned(),
        (Some(bin), false) => {
            let n = NginxArgs { nginx_bin: Some(bin.clone()), nginx_workers: 2, no_openssl_speed: true };
            let nginx = setup.start_nginx(&common, &n, &work.path.join("nginx"), true)?;
            for att in [Attestation::Symmetric, Attestation::X509] {
                let ids: Arc<Vec<String>> = Arc::new((0..a.devices).map(|i| format!("smoke-ceiling-{i:04}")).collect());
                let auths = setup.creds(att, &ids)?;
                let spec = spec(format!("nginx ceiling {}", att.name()), a.devices);
                let r = setup.ceiling_load(&setup.target, &spec, &nginx, ids.clone(), auths.clone()).await;
                eprintln!("{}", r.line());
                parts.push((format!("ceiling-{}", att.name()), r));
                if att == Attestation::Symmetric {
                    // nginx issues tickets here: the resumed ceiling of `register --resume`.
                    let g = nginx.group();
                    let p = setup.prime(&resuming, &spec, nginx.addr, &g, ids.clone(), auths.clone()).await;
                    parts.push(("ceiling-sessions".into(), p));
                    let before = resuming.tls.resumed();
                    let r = setup.ceiling_load(&resuming, &spec, &nginx, ids, auths).await;
                    let resumed = resuming.tls.resumed() - before;
                    if resumed != r.ok {
                        not_resumed.push(format!("nginx: {resumed} of {} resumed", r.ok));
                    }
                    eprintln!("resumed {}", r.line());
                    parts.push(("ceiling-resumed".into(), r));
                }
            }
            // `register --verifying-ceiling`: the group CA's devices pass nginx's chain check,
            // and devices of another CA are answered 400, so the check really runs.
            let verifying = setup.start_verifying_nginx(&common, &n, &work.path.join("nginx-verifying"))?;
            let ids: Arc<Vec<String>> = Arc::new((0..a.devices).map(|i| format!("smoke-verifying-{i:04}")).collect());
            let auths = setup.creds(Attestation::X509, &ids)?;
            let r = setup
                .ceiling_load(
                    &setup.target,
                    &spec("nginx verifying x509".into(), a.devices),
                    &verifying,
                    ids.clone(),
                    auths,
                )
                .await;
            eprintln!("{}", r.line());
            parts.push(("ceiling-verifying".into(), r));
            let stranger = crate::pki::Ca::new("opendps-bench smoke: not the group's CA")?;
            let strangers =
                ids.iter().map(|id| stranger.issue(id).map(Auth::Cert)).collect::<anyhow::Result<Vec<_>>>()?;
            let spec_refused = spec("nginx verifying, another CA".into(), a.devices);
            let r = setup.ceiling_load(&setup.target, &spec_refused, &verifying, ids, Arc::new(strangers)).await;
            eprintln!("{}", r.line());
            // Every device must have been answered, and answered 400: a refused connection or a
            // failed handshake would also leave ok at 0 without proving that nginx verified.
            let refused = r.failures.get("static: HTTP 400").copied().unwrap_or(0);
            if r.attempted == 0 || refused != r.attempted {
                unverified = Some(format!(
                    "nginx verifying answered {refused} of {} chains from another CA with 400 (failures: {})",
                    r.attempted,
                    r.failures_text()
                ));
            }
            format!("ran ({})", nginx.version)
        }
    };

    let idle_args = IdleArgs {
        common: common.clone(),
        connections: a.connections,
        concurrency: 8,
        max_seconds: a.max_seconds,
        hold_seconds: 1,
        shape: idle::Shape { keep_alive: 60, no_subscribe: false, protocol: Protocol::Mqtt },
        warmup: 10,
        sources: 2,
        register: 10,
        register_concurrency: 2,
        register_seconds: a.max_seconds,
        nodes: 1,
    };
    let idle_result = idle::measure(&setup, &idle_args).await?;
    parts.push(("idle".into(), idle_result.open.clone()));
    if let Some(r) = &idle_result.register {
        parts.push(("idle-register".into(), r.clone()));
    }

    // The same across two nodes sharing a throwaway PostgreSQL database, each with its own load
    // generator process (`idle --nodes`), on addresses of their own.
    let mut nodes_common = common.clone();
    nodes_common.address = Some(Ipv4Addr::new(127, 0, 5, 1));
    let nodes_args = IdleArgs {
        common: nodes_common,
        connections: a.connections.min(40),
        warmup: 4,
        sources: 1,
        nodes: 2,
        ..idle_args.clone()
    };
    let nodes_result = crate::nodes::measure(&nodes_args, &work.path.join("nodes")).await?;
    parts.push(("idle-nodes".into(), nodes_result.open.clone()));
    if let Some(r) = &nodes_result.register {
        parts.push(("idle-nodes-register".into(), r.clone()));
    }

    // Every hostile load, small, from a few sources (the smoke server's per-source limits are
    // off): good devices must all register under each.
    let hostile_args = HostileArgs {
        common: common.clone(),
        loads: vec![
            Kind::IdleTls,
            Kind::HalfOpen,
            Kind::Slowloris,
            Kind::StalledUpload,
            Kind::MqttNoConnect,
            Kind::MqttWrongPassword,
            Kind::Oversized,
        ],
        placement: vec![Placement::Many],
        devices: a.devices.min(10),
        concurrency: 4,
        max_seconds: a.max_seconds,
        ramp_seconds: 10,
        settle_seconds: 1,
        warmup: 0,
        hostile_concurrency: 8,
        sources: 4,
        idle_tls: 20,
        half_open_per_second: 50,
        slowloris: 20,
        stalled_uploads: 10,
        mqtt_no_connect: 20,
        mqtt_wrong_password: 20,
        oversized_per_second: 20,
    };
    let hostile_results = hostile::measure(&setup, &hostile_args, &setup.target).await?;
    for c in &hostile_results {
        for (p, r) in &c.loaded {
            parts.push((format!("hostile-{:?}-{}", c.kind, p.name()), r.clone()));
        }
    }
    drop(setup);

    let growth_args = GrowthArgs {
        common: common.clone(),
        enrollments: vec![a.enrollments],
        devices: a.devices,
        concurrency: 4,
        protocol: Protocol::Https,
        max_seconds: a.max_seconds,
        seed_batch: 500,
        seed_max_seconds: 120,
        seed_via: SeedVia::Bulk,
        warmup: 10,
        rounds: 1,
    };
    let seeded = growth::seed_point(&growth_args, address, work.path.join("growth"), a.enrollments).await?;
    let point = growth::measure_point(&growth_args, address, &seeded, 1).await?;
    parts.push((format!("growth-{}-first", a.enrollments), point.first.clone()));
    parts.push((format!("growth-{}-again", a.enrollments), point.again.clone()));

    let der = crate::decode::device_certificate()?;
    let decoded = crate::decode::measure(&der, 50, 2)?;

    let mut rep = Report::new("opendps-bench smoke run (CI: checks the tool works, judges no timing)");
    rep.line(format!("Ceiling: {ceiling_note}.\n"));
    rep.loads(&parts.iter().map(|(_, r)| r).collect::<Vec<_>>());
    idle::report(&mut rep, &idle_args, &idle_result);
    rep.line("");
    crate::nodes::report(&mut rep, &nodes_args, &nodes_result);
    rep.line("");
    hostile::report(&mut rep, &hostile_args, &hostile_results);
    rep.line("");
    growth::report(&mut rep, &growth_args, std::slice::from_ref(&point));
    crate::decode::report(&mut rep, der.len(), 50, &decoded);
    rep.line(format!(
        "\nResumed handshakes: {}.",
        if not_resumed.is_empty() {
            "every connection that offered a session resumed it".to_owned()
        } else {
            not_resumed.join("; ")
        }
    ));
    rep.finish(c.report.as_deref())?;

    let mut bad: Vec<&str> =
        parts.iter().filter(|(_, r)| r.ok == 0 || r.failed() > 0).map(|(n, _)| n.as_str()).collect();
    if !not_resumed.is_empty() {
        bad.push("resumption");
    }
    if let Some(u) = &unverified {
        eprintln!("{u}");
        bad.push("verifying ceiling");
    }
    let summary: Vec<String> = parts.iter().map(|(n, r)| format!("{n} {}/{}", r.ok, r.attempted)).collect();
    let line = format!("{}, ceiling {ceiling_note}; in {:.1} s", summary.join(", "), t0.elapsed().as_secs_f64());
    if bad.is_empty() {
        println!("smoke: PASS {line}");
        Ok(())
    } else {
        println!("smoke: FAIL ({}) {line}", bad.join(", "));
        bail!("smoke run failed: {}", bad.join(", "))
    }
}
