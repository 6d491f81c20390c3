//! `register` and `ceiling`: registrations/s of OpenDPS, each load paired with the nginx TLS
//! ceiling measured just before it with the same client, concurrency and credentials.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::device::{self, Auth, Target};
use crate::load::{self, Spec};
use crate::nginx::{Nginx, NginxSpec};
use crate::pki::Ca;
use crate::report::{verdict, Report};
use crate::server::{self, Server, ServerSpec};
use crate::stats::{median, LoadResult};
use crate::tlsclient::TlsClient;
use crate::{Attestation, Common, Protocol, WorkDir};

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Protocols to run, each a load of its own (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "https")]
    pub protocol: Vec<Protocol>,
    /// Attestations to run, each a load of its own (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "symmetric")]
    pub attestation: Vec<Attestation>,
    /// Devices per load.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Devices in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// No device starts after this many seconds of a load.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Pair each load with the nginx ceiling, measured just before it.
    #[arg(long)]
    pub with_ceiling: bool,
    /// Repeat every (ceiling, load) pair this many times; ratios are reported per pair and as
    /// the median.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Registrations before the measured loads (not reported in the table), per protocol and
    /// attestation.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Resumed TLS handshakes instead of full ones: before each measured load every device
    /// makes one TLS connection (a full handshake, not measured) and keeps its session; the
    /// load then offers it. nginx issues tickets too in this mode.
    #[arg(long)]
    pub resume: bool,
    /// With `--with-ceiling`, pair each X.509 load with a second nginx too, one that verifies
    /// every device's chain against the group's CA in the handshake (`ssl_verify_client
    /// optional`, the CA as `ssl_client_certificate`, on `--nginx-port` + 1): the chain
    /// verification OpenDPS must do and the ceiling skips. Reported beside the target's ratio,
    /// never instead of it.
    #[arg(long)]
    pub verifying_ceiling: bool,
    #[command(flatten)]
    pub nginx: NginxArgs,
}

#[derive(Args, Debug, Clone)]
pub struct NginxArgs {
    /// The nginx binary (default: nginx on the PATH or /usr/sbin/nginx; `apt-get install nginx`).
    #[arg(long)]
    pub nginx_bin: Option<PathBuf>,
    /// nginx worker processes (2: one per core, as the OpenDPS runtime uses every core).
    #[arg(long, default_value_t = 2)]
    pub nginx_workers: usize,
    /// Skip `openssl speed rsa2048 ecdhp256` (the crypto cost of one handshake) in the report.
    #[arg(long)]
    pub no_openssl_speed: bool,
}

#[derive(Args, Debug)]
pub struct CeilingArgs {
    #[command(flatten)]
    pub common: Common,
    /// With a client certificate (x509) or without (symmetric).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "symmetric")]
    pub attestation: Vec<Attestation>,
    /// Handshakes per load.
    #[arg(long, default_value_t = 3000)]
    pub handshakes: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    #[command(flatten)]
    pub nginx: NginxArgs,
}

/// A server with a linked hub and the bench's enrollment groups, and a client for it.
#[derive(Debug)]
pub struct Setup {
    pub server: Server,
    pub target: Arc<Target>,
    pub group_key: Option<String>,
    pub ca: Option<Arc<Ca>>,
    pub address: Ipv4Addr,
}

/// What a [`Setup`] needs.
#[derive(Debug)]
pub struct SetupSpec<'a> {
    pub common: &'a Common,
    pub default_address: Ipv4Addr,
    pub data_dir: PathBuf,
    pub max_connections: u64,
    pub nofile: u64,
    pub symmetric: bool,
    pub x509: bool,
    /// A PostgreSQL database the server shares with other nodes (none: its own SQLite store).
    pub shared: Option<SharedStore>,
}

/// A PostgreSQL database several nodes share, and the node key they all get
/// (docs/failover.md: every node of a shared store needs the same one).
#[derive(Debug, Clone)]
pub struct SharedStore {
    pub url: String,
    pub node_key: String,
}

impl SharedStore {
    /// The config lines that point a node at the database.
    pub fn config(&self) -> String {
        format!("[store]\nurl = {}\n", toml::Value::String(self.url.clone()))
    }
    /// The node key, as the server reads it.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("OPENDPS_NODE_KEY".to_owned(), self.node_key.clone())]
    }
}

impl Setup {
    pub fn start(s: SetupSpec<'_>) -> anyhow::Result<Setup> {
        let c = s.common;
        let address = c.address.unwrap_or(s.default_address);
        if !address.is_loopback() {
            bail!("--address {address}: the bench only runs on loopback (127.0.0.0/8)");
        }
        let spec = ServerSpec {
            bin: server::find_bin(c.opendps_bin.as_deref())?,
            data_dir: s.data_dir.clone(),
            address: IpAddr::V4(address),
            https_port: c.https_port,
            mqtt_port: c.mqtt_port,
            amqp_port: c.amqp_port,
            config: match &s.shared {
                Some(sh) => crate::merge_toml(&crate::server_config(c, s.max_connections)?, &sh.config())?,
                None => crate::server_config(c, s.max_connections)?,
            },
            nofile: s.nofile,
            env: s.shared.as_ref().map(SharedStore::env).unwrap_or_default(),
        };
        eprintln!("starting {} on {address} (data {})", spec.bin.display(), spec.data_dir.display());
        let server = Server::start(spec)?;
        server.link_hub()?;
        let group_key = if s.symmetric { Some(server.symmetric_group("bench-sym")?) } else { None };
        let ca = if s.x509 {
            let ca = Ca::new("opendps-bench device CA")?;
            let pem = s.data_dir.with_extension("device-ca.pem");
            std::fs::write(&pem, ca.pem()?)?;
            server.x509_group("bench-x509", &pem)?;
            Some(Arc::new(ca))
        } else {
            None
        };
        let tls = TlsClient::new(&server.root_pem(), IpAddr::V4(address), &c.groups)?;
        let target = Arc::new(server.target(tls, c.amqp_client));
        Ok(Setup { server, target, group_key, ca, address })
    }

    /// A credential per id.
    pub fn creds(&self, att: Attestation, ids: &[String]) -> anyhow::Result<Arc<Vec<Auth>>> {
        let v = match att {
            Attestation::Symmetric => {
                let g = self.group_key.as_deref().ok_or_else(|| anyhow!("no symmetric-key group"))?;
                ids.iter()
                    .map(|id| {
                        dps_attest::derive_device_key(g, id).map(Auth::Key).ok_or_else(|| anyhow!("bad group key"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
            Attestation::X509 => {
                let ca = self.ca.as_ref().ok_or_else(|| anyhow!("no X.509 group"))?;
                ids.iter().map(|id| ca.issue(id).map(Auth::Cert)).collect::<anyhow::Result<Vec<_>>>()?
            }
        };
        Ok(Arc::new(v))
    }

    /// The same server through a client that keeps each device's session and resumes it.
    pub fn resuming_target(&self, c: &Common) -> anyhow::Result<Arc<Target>> {
        let tls = TlsClient::resuming(&self.server.root_pem(), IpAddr::V4(self.address), &c.groups)?;
        Ok(Arc::new(Target { tls, ..(*self.target).clone() }))
    }

    /// The same server through a client made for holding many idle connections
    /// ([`TlsClient::holding`]), its connections made from `sources` in turn.
    pub fn holding_target(&self, c: &Common, sources: Vec<IpAddr>) -> anyhow::Result<Arc<Target>> {
        let tls = TlsClient::holding(&self.server.root_pem(), IpAddr::V4(self.address), &c.groups, sources)?;
        Ok(Arc::new(Target { tls, ..(*self.target).clone() }))
    }

    /// N registrations over `proto` of `ids` with `auths`.
    pub async fn load(&self, spec: &Spec, proto: Protocol, ids: Arc<Vec<String>>, auths: Arc<Vec<Auth>>) -> LoadResult {
        self.load_on(&self.target, spec, proto, ids, auths).await
    }

    /// As [`Setup::load`], through `target`'s client.
    pub async fn load_on(
        &self,
        target: &Arc<Target>,
        spec: &Spec,
        proto: Protocol,
        ids: Arc<Vec<String>>,
        auths: Arc<Vec<Auth>>,
    ) -> LoadResult {
        let t = target.clone();
        load::run(spec, &self.server.group(), move |i| {
            let (t, ids, auths) = (t.clone(), ids.clone(), auths.clone());
            async move {
                match proto {
                    Protocol::Https => device::https_register(&t, &ids[i], &auths[i]).await,
                    Protocol::Mqtt => device::mqtt_register(&t, &ids[i], &auths[i]).await,
                    Protocol::Amqp => device::amqp_register(&t, &ids[i], &auths[i]).await,
                }
            }
        })
        .await
    }

    /// N ceiling requests to nginx with `target`'s client, `ids` and `auths`.
    pub async fn ceiling_load(
        &self,
        target: &Arc<Target>,
        spec: &Spec,
        nginx: &Nginx,
        ids: Arc<Vec<String>>,
        auths: Arc<Vec<Auth>>,
    ) -> LoadResult {
        let (t, addr) = (target.clone(), nginx.addr);
        load::run(spec, &nginx.group(), move |i| {
            let (t, ids, auths) = (t.clone(), ids.clone(), auths.clone());
            async move { device::https_static(&t, addr, &ids[i], &auths[i]).await }
        })
        .await
    }

    /// [`Setup::ceiling_load`] against the verifying nginx, its line printed.
    async fn verifying_load(
        &self,
        target: &Arc<Target>,
        spec: &Spec,
        nginx: &Nginx,
        ids: &Arc<Vec<String>>,
        auths: &Arc<Vec<Auth>>,
    ) -> LoadResult {
        let r = self.ceiling_load(target, spec, nginx, ids.clone(), auths.clone()).await;
        eprintln!("{}", r.line());
        r
    }

    /// A TLS handshake per device to `addr` and nothing else (`server` is measured): a resuming
    /// `target` keeps the sessions for the load that follows.
    pub async fn prime(
        &self,
        target: &Arc<Target>,
        spec: &Spec,
        addr: SocketAddr,
        server: &crate::procstat::Group,
        ids: Arc<Vec<String>>,
        auths: Arc<Vec<Auth>>,
    ) -> LoadResult {
        let t = target.clone();
        load::run(spec, server, move |i| {
            let (t, ids, auths) = (t.clone(), ids.clone(), auths.clone());
            async move { device::tls_only(&t, addr, &ids[i], &auths[i]).await }
        })
        .await
    }

    /// nginx with this server's certificate chain and key, in `prefix`; issuing session tickets
    /// when `tickets`.
    pub fn start_nginx(&self, c: &Common, n: &NginxArgs, prefix: &Path, tickets: bool) -> anyhow::Result<Nginx> {
        self.start_nginx_on(n, prefix, tickets, c.nginx_port, false)
    }

    /// The verifying ceiling (`register --verifying-ceiling`): nginx on `--nginx-port` + 1,
    /// verifying every client chain against the X.509 group's CA in the handshake; full
    /// handshakes only.
    pub fn start_verifying_nginx(&self, c: &Common, n: &NginxArgs, prefix: &Path) -> anyhow::Result<Nginx> {
        let port = c.nginx_port.checked_add(1).ok_or_else(|| anyhow!("--nginx-port + 1 is not a port"))?;
        self.start_nginx_on(n, prefix, false, port, true)
    }

    /// [`Setup::start_nginx`] on `port`; with `verifying`, client chains are verified against
    /// the X.509 group's CA in the handshake.
    fn start_nginx_on(
        &self,
        n: &NginxArgs,
        prefix: &Path,
        tickets: bool,
        port: u16,
        verifying: bool,
    ) -> anyhow::Result<Nginx> {
        let bin = crate::nginx::find_bin(n.nginx_bin.as_deref())
            .ok_or_else(|| anyhow!("nginx is not installed: apt-get install -y nginx (or pass --nginx-bin)"))?;
        std::fs::create_dir_all(prefix)?;
        let pki = self.server.spec.data_dir.join("pki");
        let mut chain = std::fs::read_to_string(pki.join("server.pem")).context("the server's leaf")?;
        if chain.matches("BEGIN CERTIFICATE").count() == 1 {
            chain.push_str(&std::fs::read_to_string(pki.join("intermediate.pem")).context("the intermediate")?);
        }
        let chain_path = prefix.join("chain.pem");
        std::fs::write(&chain_path, chain)?;
        let trusted_ca = match (verifying, &self.ca) {
            (false, _) => None,
            (true, None) => bail!("a verifying ceiling needs the X.509 group's CA"),
            (true, Some(ca)) => {
                let path = prefix.join("device-ca.pem");
                std::fs::write(&path, ca.pem()?)?;
                Some(path)
            }
        };
        let spec = NginxSpec {
            bin,
            prefix: prefix.to_owned(),
            listen: SocketAddr::new(IpAddr::V4(self.address), port),
            chain: chain_path,
            key: std::path::absolute(pki.join("server.key"))?,
            workers: n.nginx_workers.max(1),
            groups: "P-256:P-384".into(),
            request_client_cert: true,
            trusted_ca,
            tickets,
            nofile: 65536,
        };
        let nginx = Nginx::start(&spec)?;
        let what = if verifying { "nginx verifying client chains" } else { "nginx ceiling" };
        eprintln!("{what} on {} ({}, {} workers)", nginx.addr, nginx.version, spec.workers);
        Ok(nginx)
    }
}

/// `openssl speed` of the two operations a full handshake costs the server.
pub fn openssl_speed() -> Vec<String> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", "rsa2048", "ecdhp256"])
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return vec!["openssl speed: not available".into()] };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = Vec::new();
    let mut keep = false;
    for l in text.lines() {
        if l.trim_start().starts_with("sign") || l.contains("op      op/s") {
            keep = true;
        }
        if keep && !l.trim().is_empty() {
            lines.push(l.to_owned());
        }
    }
    lines
}

/// A one-core estimate of full handshakes/s from `openssl speed` lines: 1 / (RSA sign + 2 ECDH),
/// from the operations per second columns.
pub fn handshake_estimate(lines: &[String]) -> Option<f64> {
    let mut sign_per_s = None;
    let mut ecdh_per_s = None;
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        if l.trim_start().starts_with("rsa 2048") && w.len() >= 7 {
            sign_per_s = w[5].parse::<f64>().ok();
        }
        if l.contains("ecdh (nistp256)") {
            ecdh_per_s = w.last().and_then(|s| s.parse::<f64>().ok());
        }
    }
    let (s, e) = (sign_per_s?, ecdh_per_s?);
    Some(1.0 / (1.0 / s + 2.0 / e))
}

fn ids(tag: &str, n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| format!("{tag}-{i:07}")).collect())
}

fn spec(label: String, n: usize, c: usize, max: u64, common: &Common) -> Spec {
    Spec {
        label,
        n,
        concurrency: c,
        max: Duration::from_secs(max.max(1)),
        device_timeout: common.device_timeout(),
        progress: true,
    }
}

/// A paired measurement.
struct Pair {
    round: usize,
    att: Attestation,
    proto: Protocol,
    ceiling: Option<LoadResult>,
    /// With `--verifying-ceiling`, X.509 only: nginx verifying each chain against the group CA.
    verifying: Option<LoadResult>,
    opendps: LoadResult,
    /// With `--resume`: handshakes that resumed a session, (nginx, OpenDPS).
    resumed: (u64, u64),
}

pub async fn register(a: RegisterArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let work = WorkDir::new(c)?;
    let sym = a.attestation.contains(&Attestation::Symmetric);
    let x509 = a.attestation.contains(&Attestation::X509);
    if a.verifying_ceiling && (a.resume || !a.with_ceiling || !x509) {
        bail!("--verifying-ceiling pairs X.509 full handshakes: it needs --with-ceiling, x509 in --attestation and no --resume");
    }
    let setup = Setup::start(SetupSpec {
        common: c,
        default_address: Ipv4Addr::new(127, 0, 0, 90),
        data_dir: work.path.join("opendps"),
        max_connections: 20_000,
        nofile: 65_536,
        symmetric: sym,
        x509,
        shared: None,
    })?;
    crate::procstat::raise_own_nofile(65_536);
    let target = if a.resume { setup.resuming_target(c)? } else { setup.target.clone() };
    let nginx =
        if a.with_ceiling { Some(setup.start_nginx(c, &a.nginx, &work.path.join("nginx"), a.resume)?) } else { None };
    let verifying = if a.verifying_ceiling {
        Some(setup.start_verifying_nginx(c, &a.nginx, &work.path.join("nginx-verifying"))?)
    } else {
        None
    };
    let speed = if a.with_ceiling && !a.nginx.no_openssl_speed {
        eprintln!("openssl speed rsa2048 ecdhp256 (about 10 s)...");
        openssl_speed()
    } else {
        Vec::new()
    };

    // Warm-up: first connections, SQLite pages, allocator arenas.
    for &att in &a.attestation {
        for &proto in &a.protocol {
            if a.warmup == 0 {
                continue;
            }
            let tag = format!("warm-{}-{}", proto.name(), att.name());
            let ids = ids(&tag, a.warmup);
            let auths = setup.creds(att, &ids)?;
            let mut s = spec(tag, a.warmup, a.concurrency.min(a.warmup), a.max_seconds, c);
            s.progress = false;
            let r = setup.load(&s, proto, ids, auths).await;
            eprintln!("warm-up {}", r.line());
        }
    }

    let mut pairs = Vec::new();
    for round in 1..=a.rounds.max(1) {
        for &att in &a.attestation {
            for &proto in &a.protocol {
                let tag = format!("r{round}-{}-{}", proto.name(), att.name());
                let ids = ids(&tag, a.devices);
                let auths = setup.creds(att, &ids)?;
                let prime = |label: String| {
                    let mut s = spec(label, a.devices, a.concurrency, a.max_seconds, c);
                    s.progress = false;
                    s
                };
                let mut resumed = (0, 0);
                // The verifying nginx runs before the ceiling in even rounds and after it in odd
                // ones, so that neither always follows the previous OpenDPS load.
                let verifying_first = round % 2 == 0;
                let label = format!("nginx verifying r{round} ({})", att.name());
                let verifying_spec = spec(label, a.devices, a.concurrency, a.max_seconds, c);
                let mut verified = None;
                if let (true, Some(v), Attestation::X509) = (verifying_first, &verifying, att) {
                    verified = Some(setup.verifying_load(&target, &verifying_spec, v, &ids, &auths).await);
                }
                let ceiling = match &nginx {
                    Some(n) => {
                        if a.resume {
                            let label = format!("nginx sessions r{round} ({})", att.name());
                            let (s, g) = (prime(label), n.group());
                            let p = setup.prime(&target, &s, n.addr, &g, ids.clone(), auths.clone()).await;
                            eprintln!("{}", p.line());
                        }
                        let before = target.tls.resumed();
                        let label = format!("nginx ceiling r{round} ({}){}", att.name(), resumed_tag(a.resume));
                        let r = setup
                            .ceiling_load(
                                &target,
                                &spec(label, a.devices, a.concurrency, a.max_seconds, c),
                                n,
                                ids.clone(),
                                auths.clone(),
                            )
                            .await;
                        resumed.0 = target.tls.resumed() - before;
                        eprintln!("{}", r.line());
                        Some(r)
                    }
                    None => None,
                };
                if let (false, Some(v), Attestation::X509) = (verifying_first, &verifying, att) {
                    verified = Some(setup.verifying_load(&target, &verifying_spec, v, &ids, &auths).await);
                }
                if a.resume {
                    let addr = match proto {
                        Protocol::Https => target.https,
                        Protocol::Mqtt => target.mqtt,
                        Protocol::Amqp => target.amqp,
                    };
                    let label = format!("OpenDPS sessions r{round} {} {}", proto.name(), att.name());
                    let (s, g) = (prime(label), setup.server.group());
                    let p = setup.prime(&target, &s, addr, &g, ids.clone(), auths.clone()).await;
                    eprintln!("{}", p.line());
                }
                let before = target.tls.resumed();
                let label = format!("OpenDPS r{round} {} {}{}", proto.name(), att.name(), resumed_tag(a.resume));
                let r = setup
                    .load_on(&target, &spec(label, a.devices, a.concurrency, a.max_seconds, c), proto, ids, auths)
                    .await;
                resumed.1 = target.tls.resumed() - before;
                eprintln!("{}", r.line());
                if r.ok == 0 {
                    eprintln!("no registration succeeded; the server log ends with:\n{}", setup.server.log_tail(20));
                }
                pairs.push(Pair { round, att, proto, ceiling, verifying: verified, opendps: r, resumed });
            }
        }
    }

    let mut rep = Report::new("OpenDPS registrations per second against the nginx TLS ceiling");
    rep.line(format!("- OpenDPS (`--version`): {}", crate::server::version_of(&setup.server.spec.bin)));
    if let Some(n) = &nginx {
        rep.line(format!("- nginx's OpenSSL: {}", n.openssl()));
    }
    let handshakes = if a.resume {
        "a resumed handshake per device (before each load every device made one TLS connection to the same \
         address, a full handshake not measured, and kept the session from its ticket; the load offers it)"
    } else {
        "full handshake per device (no session cache, no ticket)"
    };
    rep.line(format!(
        "Setup: {} devices per load, {} in flight, at most {} s per load, {} round(s), {} warm-up registrations per \
         protocol and attestation. Client: TLS 1.2, groups {}, {handshakes}, server verified against the OpenDPS \
         root; polls at once without waiting Retry-After. Server: `{}` on {}, store durability {}, log filter {}. \
         Latency is per device, from TCP connect to the connection closed; the rate is successes over the wall time \
         of the load.",
        a.devices,
        a.concurrency,
        a.max_seconds,
        a.rounds.max(1),
        a.warmup,
        c.groups,
        setup.server.spec.bin.display(),
        setup.address,
        c.durability,
        c.server_log,
    ));
    if let Some(n) = &nginx {
        rep.line(format!(
            "\nCeiling: {} with {} worker processes on {}, the same certificate chain and key, TLS 1.2, the default \
             profile's twelve suites at @SECLEVEL=1, server preference, groups P-256:P-384, client certificate \
             requested (optional_no_ca, as OpenDPS asks for one), session cache off, tickets {}, keepalive_timeout \
             0, `return 202` of a 22-byte body: one {} handshake per request, the same client, concurrency and \
             credentials as the OpenDPS load measured after it (right after it, unless a verifying load came \
             between).",
            n.version,
            a.nginx.nginx_workers,
            n.addr,
            if a.resume { "on" } else { "off" },
            if a.resume { "resumed" } else { "full" },
        ));
    }
    if let Some(v) = &verifying {
        rep.line(format!(
            "\nVerifying ceiling (X.509 loads only, not the target's): a second nginx on {}, configured as the \
             ceiling except that it verifies every device's chain against the group's CA in the handshake \
             (`ssl_verify_client optional`, `ssl_verify_depth {}`, the CA as `ssl_client_certificate`, which nginx \
             1.22 requires and which also names the CA in its CertificateRequest, a few dozen bytes OpenDPS does \
             not send): the signature check OpenDPS must make for an X.509 device and `optional_no_ca` skips. \
             Measured before the OpenDPS load, after the ceiling in odd rounds and before it in even ones.",
            v.addr,
            dps_attest::MAX_CHAIN,
        ));
    }
    if let Some(cipher) = pairs.iter().find_map(|p| p.opendps.cipher.clone()) {
        rep.line(format!("\nNegotiated: {cipher}."));
    }
    rep.line("");
    let mut all: Vec<&LoadResult> = Vec::new();
    for p in &pairs {
        all.extend(p.ceiling.iter());
        all.extend(p.verifying.iter());
        all.push(&p.opendps);
    }
    rep.loads(&all);
    if a.resume {
        rep.line("Resumed handshakes (the client's `session_reused`) per load:\n");
        for p in &pairs {
            let ce = p.ceiling.as_ref().map(|ce| format!("; nginx {} of {}", p.resumed.0, ce.ok)).unwrap_or_default();
            rep.line(format!(
                "- r{} {} {}: OpenDPS {} of {}{ce}",
                p.round,
                p.proto.name(),
                p.att.name(),
                p.resumed.1,
                p.opendps.ok
            ));
        }
        rep.line("");
    }
    if nginx.is_some() {
        let ms = |r: &LoadResult| r.server_cpu_ms_per_op().map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        let (vh, vl) = if verifying.is_some() {
            (" nginx verifying /s | ratio to verifying | nginx verifying CPU ms/handshake |", "---|---|---|")
        } else {
            ("", "")
        };
        rep.line(format!(
            "| round | protocol | attestation | OpenDPS /s | nginx /s | ratio | OpenDPS server CPU ms/reg | nginx CPU \
             ms/handshake |{vh}"
        ));
        rep.line(format!("|---|---|---|---|---|---|---|---|{vl}"));
        for p in &pairs {
            let Some(ce) = &p.ceiling else { continue };
            let v = match (&verifying, &p.verifying) {
                (None, _) => String::new(),
                (Some(_), None) => " - | - | - |".into(),
                (Some(_), Some(v)) => {
                    format!(" {:.1} | {:.2} | {} |", v.rate(), ratio(&p.opendps, v).unwrap_or(0.0), ms(v))
                }
            };
            rep.line(format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} |{v}",
                p.round,
                p.proto.name(),
                p.att.name(),
                p.opendps.rate(),
                ce.rate(),
                ratio(&p.opendps, ce).unwrap_or(0.0),
                ms(&p.opendps),
                ms(ce),
            ));
        }
        rep.line("");
        if !speed.is_empty() {
            rep.line("`openssl speed -seconds 2 rsa2048 ecdhp256` (one core):\n\n```");
            for l in &speed {
                rep.line(l);
            }
            rep.line("```");
            if let Some(e) = handshake_estimate(&speed) {
                rep.line(format!(
                    "\nServer-side crypto of one full handshake (one RSA-2048 sign + two P-256 ECDH operations) \
                     allows about {e:.0} handshakes/s per core, {:.0}/s on all cores if nothing else ran.\n",
                    e * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64
                ));
            }
        }
        rep.line("Targets (reported, not asserted):\n");
        // The median over the rounds of OpenDPS's ratio to one of the pair's nginx loads.
        let median_of = |proto: Protocol, att: Attestation, nginx: fn(&Pair) -> Option<&LoadResult>| {
            median(
                pairs
                    .iter()
                    .filter(|p| p.proto == proto && p.att == att)
                    .filter_map(|p| ratio(&p.opendps, nginx(p)?))
                    .collect(),
            )
        };
        for &proto in &a.protocol {
            for &att in &a.attestation {
                if let Some(m) = median_of(proto, att, |p| p.ceiling.as_ref()) {
                    let kind = if a.resume { "resumed" } else { "full" };
                    rep.line(format!(
                        "- {} {} {kind}-handshake registrations/s ≥ 0.8 × nginx {kind} handshakes/s (groups {}): \
                         median ratio {m:.2}: {}",
                        proto.name().to_uppercase(),
                        att.name(),
                        c.groups,
                        verdict(m >= 0.8)
                    ));
                }
                if let Some(m) = median_of(proto, att, |p| p.verifying.as_ref()) {
                    rep.line(format!(
                        "  - beside it, not a target: against nginx verifying the same chains, median ratio {m:.2}"
                    ));
                }
            }
        }
    }
    if let Some(hwm) = crate::procstat::hwm_kib(setup.server.pid) {
        rep.line(format!("\nOpenDPS peak RSS over the whole run (VmHWM): {:.1} MiB.", hwm as f64 / 1024.0));
    }
    drop(nginx);
    drop(verifying);
    rep.finish(c.report.as_deref())?;
    if pairs.iter().any(|p| p.opendps.ok == 0) {
        bail!("a load had no successful registration");
    }
    Ok(())
}

fn resumed_tag(resume: bool) -> &'static str {
    if resume {
        " resumed"
    } else {
        ""
    }
}

fn ratio(opendps: &LoadResult, ceiling: &LoadResult) -> Option<f64> {
    let c = ceiling.rate();
    (c > 0.0).then(|| opendps.rate() / c)
}

pub async fn ceiling(a: CeilingArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let work = WorkDir::new(c)?;
    let x509 = a.attestation.contains(&Attestation::X509);
    // The server runs only to make (and serve, idle) the certificate nginx uses.
    let setup = Setup::start(SetupSpec {
        common: c,
        default_address: Ipv4Addr::new(127, 0, 0, 91),
        data_dir: work.path.join("opendps"),
        max_connections: 20_000,
        nofile: 65_536,
        symmetric: true,
        x509,
        shared: None,
    })?;
    crate::procstat::raise_own_nofile(65_536);
    let nginx = setup.start_nginx(c, &a.nginx, &work.path.join("nginx"), false)?;
    let speed = if a.nginx.no_openssl_speed { Vec::new() } else { openssl_speed() };
    let mut results = Vec::new();
    for round in 1..=a.rounds.max(1) {
        for &att in &a.attestation {
            let ids = ids(&format!("c{round}-{}", att.name()), a.handshakes);
            let auths = setup.creds(att, &ids)?;
            let label = format!("nginx ceiling r{round} ({})", att.name());
            let spec = spec(label, a.handshakes, a.concurrency, a.max_seconds, c);
            let r = setup.ceiling_load(&setup.target, &spec, &nginx, ids, auths).await;
            eprintln!("{}", r.line());
            results.push(r);
        }
    }
    let mut rep = Report::new("nginx full-handshake ceiling");
    rep.line(format!(
        "{} with {} workers on {}; {} handshakes per load, {} in flight; client groups {}.\n",
        nginx.version, a.nginx.nginx_workers, nginx.addr, a.handshakes, a.concurrency, c.groups
    ));
    rep.loads(&results.iter().collect::<Vec<_>>());
    if !speed.is_empty() {
        rep.line("```");
        for l in &speed {
            rep.line(l);
        }
        rep.line("```");
    }
    rep.finish(c.report.as_deref())?;
    if results.iter().any(|r| r.ok == 0) {
        bail!("a ceiling load had no successful handshake");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_estimate_from_openssl_speed() {
        let lines: Vec<String> = [
            "                  sign    verify    sign/s verify/s",
            "rsa 2048 bits 0.000800s 0.000025s   1250.0  40000.0",
            "                              op      op/s",
            " 256 bits ecdh (nistp256)   0.0000s  10000.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = handshake_estimate(&lines).expect("estimate");
        assert!((e - 1000.0).abs() < 1e-6, "{e}");
    }
}
