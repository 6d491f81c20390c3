//! The OpenDPS server under test: started by the bench on its own loopback address with a
//! raised open-files limit, read from its banner, driven with the operator CLI, stopped with
//! SIGTERM.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::procstat::Group;

/// How to start a server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub address: IpAddr,
    pub https_port: u16,
    pub mqtt_port: u16,
    pub amqp_port: u16,
    /// TOML given with `--config`.
    pub config: String,
    /// Open-files limit of the server process (soft and hard), through `prlimit`.
    pub nofile: u64,
    /// Extra environment of the server process (the node key of nodes sharing a store).
    pub env: Vec<(String, String)>,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub spec: ServerSpec,
    child: Option<Child>,
    pub pid: u32,
    pub https: SocketAddr,
    pub mqtt: SocketAddr,
    pub amqp: SocketAddr,
    pub scope: String,
    pub log: PathBuf,
    /// Seconds from spawn to the banner.
    pub startup_seconds: f64,
}

/// The `opendps` binary: the one given, else target/release/opendps, else target/debug/opendps
/// (relative to the working directory, then to this executable's target directory).
pub fn find_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!("--opendps-bin {}: no such file", p.display());
    }
    let mut candidates = vec![PathBuf::from("target/release/opendps"), PathBuf::from("target/debug/opendps")];
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent()?.parent().map(Path::to_owned)) {
        candidates.push(dir.join("release/opendps"));
        candidates.push(dir.join("debug/opendps"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("no opendps binary: build it (cargo build --release -p opendps) or pass --opendps-bin"))
}

/// What `bin --version` prints (the version and the OpenSSL the server runs with), or why not.
pub fn version_of(bin: &Path) -> String {
    match Command::new(bin).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => format!("`--version` failed ({})", o.status),
        Err(e) => format!("`--version` could not run: {e}"),
    }
}

/// The base server config of every bench: limits out of the way of the load (the bench opens
/// every connection from one address, so the per-source limits are off); the linked hubs are
/// names only (no device is written into a hub: the bench measures DPS alone).
pub fn base_config(max_connections: u64, durability: &str, log_filter: &str) -> String {
    format!(
        "[tls]\nmax_connections = {max_connections}\n\n[service]\nregistrations_per_minute = 0\n\n\
         [store]\ndurability = \"{durability}\"\n\n[log]\nfilter = \"{log_filter}\"\n\n\
         [hub_registry]\nregister_devices = false\n\n\
         [limits]\nmax_connections_per_source = 0\nhandshakes_per_second_per_source = 0\n"
    )
}

impl Server {
    /// Where devices reach this server, through `tls` (a client trusting its root).
    pub fn target(&self, tls: crate::tlsclient::TlsClient, amqp_client: crate::AmqpClient) -> crate::device::Target {
        crate::device::Target {
            tls,
            https: self.https,
            mqtt: self.mqtt,
            amqp: self.amqp,
            amqp_client,
            scope: self.scope.clone(),
        }
    }

    pub fn start(spec: ServerSpec) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&spec.data_dir)?;
        let config = spec.data_dir.with_extension("toml");
        std::fs::write(&config, &spec.config)?;
        let log = spec.data_dir.with_extension("log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = if has_prlimit() {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={0}:{0}", crate::procstat::child_nofile(spec.nofile))).arg("--").arg(&spec.bin);
            c
        } else {
            Command::new(&spec.bin)
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--listen-address")
            .arg(spec.address.to_string())
            .arg("--https-port")
            .arg(spec.https_port.to_string())
            .arg("--mqtt-port")
            .arg(spec.mqtt_port.to_string())
            // The admin listener is not measured; a free port keeps servers side by side apart.
            .arg("--admin-port")
            .arg("0")
            .arg("--amqp-port")
            .arg(spec.amqp_port.to_string())
            .arg("--config")
            .arg(&config)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let t0 = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", spec.bin.display()))?;
        let pid = child.id();
        let scope = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("service connection string:") {
                let scope = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("ID scope:").map(|s| s.trim().to_owned()))
                    .ok_or_else(|| anyhow!("no ID scope in the banner:\n{text}"))?;
                break scope;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("opendps serve exited ({status}) before serving:\n{}", tail(&text, 40));
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                bail!("opendps serve did not print its banner within 120 s:\n{}", tail(&text, 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Server {
            https: SocketAddr::new(spec.address, spec.https_port),
            mqtt: SocketAddr::new(spec.address, spec.mqtt_port),
            amqp: SocketAddr::new(spec.address, spec.amqp_port),
            startup_seconds: t0.elapsed().as_secs_f64(),
            spec,
            child: Some(child),
            pid,
            scope,
            log,
        })
    }

    pub fn group(&self) -> Group {
        Group { root: self.pid }
    }

    pub fn root_pem(&self) -> PathBuf {
        self.spec.data_dir.join("pki/root.pem")
    }

    /// `opendps ARGS --data-dir D`, its JSON output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = Command::new(&self.spec.bin)
            .args(args)
            .arg("--data-dir")
            .arg(&self.spec.data_dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running opendps {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("opendps {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("opendps {}: output is not JSON", args.join(" ")))
    }

    /// Links the hub every registration is assigned to (registrations fail without one).
    pub fn link_hub(&self) -> anyhow::Result<()> {
        self.cli(&[
            "dps",
            "linked-hub",
            "create",
            "--connection-string",
            "HostName=hub-a.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=aHViLWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ==",
            "--location",
            "local",
        ])?;
        Ok(())
    }

    /// A symmetric-key enrollment group; returns its primary key.
    pub fn symmetric_group(&self, group_id: &str) -> anyhow::Result<String> {
        let g =
            self.cli(&["enrollment-group", "create", "--group-id", group_id, "--attestation-type", "symmetrickey"])?;
        g["attestation"]["symmetricKey"]["primaryKey"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("enrollment group {group_id}: no primary key in {g}"))
    }

    /// An X.509 enrollment group whose signing certificate is the PEM at `ca`.
    pub fn x509_group(&self, group_id: &str, ca: &Path) -> anyhow::Result<()> {
        let path = ca.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
        self.cli(&[
            "enrollment-group",
            "create",
            "--group-id",
            group_id,
            "--attestation-type",
            "x509",
            "--certificate-path",
            path,
        ])?;
        Ok(())
    }

    /// SIGTERM, then up to 20 s for a graceful exit, then SIGKILL.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let t0 = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("opendps did not stop within 20 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin listener (/metrics), from the banner's "admin (metrics, health):" line.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().find(|l| l.trim_start().starts_with("admin (metrics, health):"))?;
        line.split("http://").nth(1)?.split('/').next()?.parse().ok()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

pub fn has_prlimit() -> bool {
    Command::new("prlimit").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
