//! `opendps-bench`: the load generator and the benchmarks of OpenDPS (bench/README.md).
//!
//! - `register`: N devices provision concurrently (a new full TLS handshake each), over HTTPS,
//!   MQTT and/or AMQP, with symmetric keys and/or X.509, optionally each load paired with the nginx
//!   TLS ceiling measured just before it with the same client and concurrency.
//! - `ceiling`: the nginx ceiling alone.
//! - `idle`: K idle MQTT- or AMQP-over-TLS connections, and the server memory each costs.
//! - `growth`: registration latency with 10 k, 1 M, ... seeded enrollments and registrations.
//! - `hostile`: good devices registering unloaded and under each hostile load (idle TLS,
//!   half-open TCP, slowloris, stalled uploads, MQTT without CONNECT or with a wrong password,
//!   oversized fields) from one source and from many.
//! - `smoke`: all of the above, tiny, for CI (no timing is judged).
//!
//! Every subcommand starts and stops its own server (and nginx) on its own loopback address,
//! and every load is bounded in count and in time.

mod amqp;
mod decode;
mod device;
mod growth;
mod hostile;
mod idle;
mod load;
mod nginx;
mod nodes;
mod pki;
mod procstat;
mod register;
mod report;
mod seed;
mod server;
mod smoke;
mod stats;
mod tlsclient;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "opendps-bench",
    version,
    about = "Benchmarks of OpenDPS: registrations/s against the nginx TLS ceiling, memory per idle connection, cost as the store grows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N devices register concurrently (new full TLS handshake each) and poll until assigned.
    Register(register::RegisterArgs),
    /// The ceiling alone: nginx with OpenDPS's certificate and TLS profile, one full handshake
    /// per request.
    Ceiling(register::CeilingArgs),
    /// K idle MQTT- or AMQP-over-TLS connections: server memory per connection.
    Idle(idle::IdleArgs),
    /// Registration latency as the store grows (seeded individual enrollments + registrations).
    Growth(growth::GrowthArgs),
    /// Good devices registering unloaded, then under each hostile load at its bound, from one
    /// source address and from many: rate and p99 as fractions of unloaded.
    Hostile(hostile::HostileArgs),
    /// A quick run of every benchmark (CI): checks the tool works end to end, judges no timing.
    Smoke(smoke::SmokeArgs),
    /// What decoding a device certificate costs the linked OpenSSL, on one thread and on
    /// several at once (no server).
    Decode(decode::DecodeArgs),
    /// One load generator of `idle --nodes` (started by the bench itself).
    #[command(hide = true)]
    Hold(nodes::HoldArgs),
}

/// What every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The opendps binary (default: target/release/opendps, else target/debug/opendps).
    #[arg(long)]
    pub opendps_bin: Option<PathBuf>,
    /// Loopback address of the server (and of nginx). Default: per subcommand (127.0.0.90+).
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    #[arg(long, default_value_t = 8884)]
    pub mqtt_port: u16,
    #[arg(long, default_value_t = 5673)]
    pub amqp_port: u16,
    #[arg(long, default_value_t = 9443)]
    pub nginx_port: u16,
    /// Write the Markdown report here too.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Working directory (server data, nginx prefix); default: a temporary one, removed after.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the working directory.
    #[arg(long)]
    pub keep: bool,
    /// Extra TOML appended to the server's config (e.g. a [tls] profile for a comparison).
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// ECDHE groups the client offers (OpenSSL list syntax).
    #[arg(long, default_value = "P-256")]
    pub groups: String,
    /// Store durability of the server: normal or full.
    #[arg(long, default_value = "normal")]
    pub durability: String,
    /// The server's log filter (its default is "info": what an operator runs with).
    #[arg(long, default_value = "info")]
    pub server_log: String,
    /// Threads of the load generator (default: the number of cores).
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// One device slower than this fails (seconds).
    #[arg(long, default_value_t = 30)]
    pub device_timeout: u64,
    /// The AMQP device client: the bench's own (lean) or fe2o3-amqp's (for comparison).
    #[arg(long, value_enum, default_value = "lean")]
    pub amqp_client: AmqpClient,
}

impl Common {
    pub fn device_timeout(&self) -> Duration {
        Duration::from_secs(self.device_timeout.max(1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Https,
    Mqtt,
    Amqp,
}

/// Which AMQP client the simulated devices use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AmqpClient {
    /// `amqp.rs`: the Node SDK's frames on one task.
    Lean,
    /// fe2o3-amqp's client (a task per connection, session and link).
    Fe2o3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Attestation {
    Symmetric,
    X509,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Https => "https",
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
        }
    }
}

impl Attestation {
    pub fn name(self) -> &'static str {
        match self {
            Attestation::Symmetric => "sym",
            Attestation::X509 => "x509",
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Register(a) => a.common.client_threads,
        Command::Ceiling(a) => a.common.client_threads,
        Command::Idle(a) => a.common.client_threads,
        Command::Growth(a) => a.common.client_threads,
        Command::Hostile(a) => a.common.client_threads,
        Command::Smoke(a) => a.common.client_threads,
        Command::Decode(_) => Some(1),
        Command::Hold(a) => Some(a.threads),
    };
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opendps-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Register(a) => register::register(a).await,
            Command::Ceiling(a) => register::ceiling(a).await,
            Command::Idle(a) => idle::idle(a).await,
            Command::Growth(a) => growth::growth(a).await,
            Command::Hostile(a) => hostile::hostile(a).await,
            Command::Smoke(a) => smoke::smoke(a).await,
            Command::Decode(a) => decode::decode(a),
            Command::Hold(a) => nodes::hold(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opendps-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The working directory of a run: given (kept), or temporary (removed unless `--keep`).
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    pub fn new(c: &Common) -> anyhow::Result<WorkDir> {
        if let Some(p) = &c.work_dir {
            std::fs::create_dir_all(p)?;
            return Ok(WorkDir { path: std::path::absolute(p)?, _temp: None });
        }
        let t = tempfile::Builder::new().prefix("opendps-bench.").tempdir()?;
        if c.keep {
            let path = t.keep();
            eprintln!("working directory (kept): {}", path.display());
            return Ok(WorkDir { path, _temp: None });
        }
        Ok(WorkDir { path: t.path().to_owned(), _temp: Some(t) })
    }
}

/// The server config of a subcommand: the base, with `--server-config`'s tables merged over it.
pub fn server_config(c: &Common, max_connections: u64) -> anyhow::Result<String> {
    let base = server::base_config(max_connections, &c.durability, &c.server_log);
    let Some(p) = &c.server_config else { return Ok(base) };
    let extra = std::fs::read_to_string(p)?;
    merge_toml(&base, &extra)
}

/// `over`'s keys replace `base`'s, tables merged key by key.
pub fn merge_toml(base: &str, over: &str) -> anyhow::Result<String> {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut a: toml::Table = base.parse()?;
    merge(&mut a, over.parse()?);
    Ok(toml::to_string(&a)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_config_merges_table_by_table() -> anyhow::Result<()> {
        let base = crate::server::base_config(20_000, "normal", "info");
        let merged =
            super::merge_toml(&base, "[tls]\nprofile = \"dps-recommended\"\n[store]\ndurability = \"full\"\n")?;
        let t: toml::Table = merged.parse()?;
        assert_eq!(t["tls"]["max_connections"].as_integer(), Some(20_000));
        assert_eq!(t["tls"]["profile"].as_str(), Some("dps-recommended"));
        assert_eq!(t["store"]["durability"].as_str(), Some("full"));
        assert_eq!(t["service"]["registrations_per_minute"].as_integer(), Some(0));
        Ok(())
    }
}
