//! `opendps`: the command line. Thin: parse arguments, load config, call `dps_server` (serve)
//! or the server's APIs (every operator command, `ops.rs` over `client.rs`).

mod client;
mod ops;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dps_config::{Config, LogFormat, Overrides};
use dps_core::tls::{ProfileName, TLS13_SUITES};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "opendps",
    version,
    about = "A self-hosted Device Provisioning Service, wire-compatible with Azure IoT Hub DPS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (HTTPS on 443, MQTT on 8883 by default).
    Serve(Box<ServeArgs>),
    /// The built-in certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The TLS policy.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// ARM template deployments (`az deployment group create`).
    Deployment {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: ops::DeploymentCmd,
    },
    /// DPS instances, linked hubs, access policies, CA certificates (`az iot dps`).
    Dps {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: ops::DpsCmd,
    },
    /// Individual enrollments.
    Enrollment {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: ops::EnrollmentCmd,
    },
    /// Enrollment groups.
    EnrollmentGroup {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: ops::GroupCmd,
    },
    /// Registration records.
    Registration {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: ops::RegistrationCmd,
    },
}

/// How an operator command reaches the running server.
#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// The server's data directory: its address, admin token and root CA are read from there.
    #[arg(long, global = true, env = "OPENDPS_DATA_DIR", default_value = dps_config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Server address (HOST[:PORT]); default: the address the server recorded in the data directory.
    #[arg(long, global = true, env = "OPENDPS_SERVER")]
    server: Option<String>,
    /// Root CA to trust for the server (default: <data-dir>/pki/root.pem).
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Admin token for the management API (default: <data-dir>/admin.token).
    #[arg(long, global = true, env = "OPENDPS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = ops::Output::Json)]
    output: ops::Output,
}

impl ClientArgs {
    fn target(&self) -> anyhow::Result<client::Target> {
        client::Target::resolve(
            &self.data_dir,
            self.server.as_deref(),
            self.ca_file.as_deref(),
            self.admin_token.as_deref(),
        )
    }
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print the root certificate (PEM) that devices must trust.
    ExportRoot {
        /// Data directory of the server.
        #[arg(long, env = "OPENDPS_DATA_DIR", default_value = dps_config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// List the TLS profiles: the cipher suites each accepts, in server-preference order.
    Profiles {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Which registered devices a stricter TLS policy would lock out, from the TLS facts each
    /// registration recorded (nothing is changed).
    Readiness {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        dps: ops::NameArg,
        /// Profile to evaluate (dps-recommended, dps-legacy-security, dps-legacy-performance).
        #[arg(long)]
        profile: Option<String>,
        /// Evaluate with TLS 1.3 enabled.
        #[arg(long)]
        tls13: bool,
        /// Evaluate with this instance floor ("1.2" or "1.3"; default: the instance's).
        #[arg(long)]
        min_tls_version: Option<String>,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML config file (see opendps.example.toml); flags override it.
    #[arg(long, short = 'c', env = "OPENDPS_CONFIG")]
    config: Option<PathBuf>,
    /// Where state lives (built-in CA under pki/). Default: /var/lib/opendps.
    #[arg(long, env = "OPENDPS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address every listener binds (e.g. 127.0.0.2). Default: 0.0.0.0.
    #[arg(long, visible_alias = "bind")]
    listen_address: Option<String>,
    /// HTTPS port (device and service API). Default: 443.
    #[arg(long)]
    https_port: Option<u16>,
    /// MQTT-over-TLS port. Default: 8883.
    #[arg(long)]
    mqtt_port: Option<u16>,
    /// TLS profile for every listener: dps-legacy-security (default), dps-legacy-performance, dps-recommended.
    #[arg(long)]
    tls_profile: Option<String>,
    /// Also offer TLS 1.3 (DPS itself offers only TLS 1.2).
    #[arg(long)]
    tls13: bool,
    /// Do not request client certificates (deployments with no X.509 devices).
    #[arg(long)]
    no_client_cert_request: bool,
    /// Serve this PEM chain (leaf first) instead of the built-in CA; reloaded on change and SIGHUP.
    #[arg(long, requires = "cert_key")]
    cert_chain: Option<PathBuf>,
    /// The private key (PEM) for --cert-chain.
    #[arg(long, requires = "cert_chain")]
    cert_key: Option<PathBuf>,
    /// A root the --cert-chain must verify to before it is used.
    #[arg(long, requires = "cert_chain")]
    cert_root: Option<PathBuf>,
    /// Extra DNS name or IP for the built-in CA's server certificate (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Lifetime of the built-in CA's server certificate (e.g. 30d, 2m); renewed with a third left.
    #[arg(long)]
    leaf_lifetime: Option<String>,
    /// Log format: plain or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Host name or IP that connection strings carry (default: the listen address, or localhost).
    #[arg(long)]
    public_host: Option<String>,
    /// Share a PostgreSQL database with other nodes (postgres://user@host/db) instead of the
    /// embedded SQLite store.
    #[arg(long, env = "OPENDPS_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            listen_address: self.listen_address.clone(),
            https_port: self.https_port,
            mqtt_port: self.mqtt_port,
            tls_profile: self.tls_profile.clone(),
            tls13: self.tls13.then_some(true),
            request_client_cert: self.no_client_cert_request.then_some(false),
            cert_chain: self.cert_chain.clone(),
            cert_key: self.cert_key.clone(),
            cert_root: self.cert_root.clone(),
            server_names: self.server_names.clone(),
            leaf_lifetime: self.leaf_lifetime.clone(),
            log_format: self.log_format.clone(),
            log_filter: None,
            public_host: self.public_host.clone(),
            store_url: self.store_url.clone(),
        }
    }
}

fn init_logging(config: &Config) {
    let filter = std::env::var("OPENDPS_LOG").unwrap_or_else(|_| config.log.filter.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("opendps: ignoring log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &args.overrides())?;
    init_logging(&config);
    let listeners = dps_server::bind(&config).await?;
    let server = dps_server::Server::start(config.clone(), listeners).await?;
    let root = dps_tls::builtin_ca::root_path(&dps_server::pki_dir(&config));
    let fmt = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!("OpenDPS is serving");
    println!("  https (device + service API): {}", fmt(server.https_addr));
    println!("  mqtt:                         {}", fmt(server.mqtt_addr));
    println!(
        "  tls profile:                  {} (TLS 1.3 {})",
        config.https.tls.profile,
        if config.https.tls.tls13 { "on" } else { "off" }
    );
    println!("  data directory:               {}", config.data_dir.display());
    if matches!(config.tls.certificate, dps_config::CertificateSource::BuiltIn(_)) {
        println!("  root CA for devices:          {} (opendps ca export-root)", root.display());
    }
    if let Some(i) = &server.created_default {
        println!("  created DPS instance:         {} (first start)", i.name);
    }
    if let Ok(i) = server.state.services.instance(&config.service.default_instance).await {
        println!("  DPS instance:                 {}", i.name);
        println!("  ID scope:                     {}", i.id_scope);
        println!("  global device endpoint:       {}", config.service.public_host);
        if let Some(cs) = dps_server::connection_string(&server.state, &i) {
            println!("  service connection string:   {cs}");
        }
    }

    let token = server.shutdown_token();
    let tls = server.tls.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading server credentials");
                    tls.clone().reload_logged("SIGHUP").await;
                }
            }
        }
        tracing::info!("shutting down: no new connections, open ones may finish");
        token.cancel();
    });
    server.wait().await;
    tracing::info!("stopped");
    Ok(())
}

fn export_root(data_dir: PathBuf) -> anyhow::Result<()> {
    let path = dps_tls::builtin_ca::root_path(&data_dir.join("pki"));
    let pem = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no root CA at {}; start the server once (opendps serve) to create it, or pass --data-dir",
            path.display()
        )
    })?;
    print(&pem)
}

fn profiles(json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<_> = ProfileName::ALL
            .iter()
            .map(|p| {
                let suites: Vec<_> = p
                    .profile()
                    .suites()
                    .map(|s| serde_json::json!({"number": s.number, "iana": s.iana, "openssl": s.openssl, "code": format!("0x{:04X}", s.code), "class": s.class.label()}))
                    .collect();
                serde_json::json!({"name": p.as_str(), "default": *p == ProfileName::default(), "tls12Suites": suites,
                    "tls13Suites": TLS13_SUITES.iter().map(|(n, _)| *n).collect::<Vec<_>>()})
            })
            .collect();
        return print(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let mut out = String::new();
    for p in ProfileName::ALL {
        out += &format!("{}{}\n", p, if p == ProfileName::default() { " (default)" } else { "" });
        for (i, s) in p.profile().suites().enumerate() {
            out += &format!("  {:>2}. #{:<2} {:<42} {:<28} {}\n", i + 1, s.number, s.iana, s.openssl, s.class.label());
        }
        out += "\n";
    }
    out += &format!(
        "With TLS 1.3 enabled (--tls13): {}\n",
        TLS13_SUITES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    );
    print(&out)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

fn run_client<F, Fut>(args: &ClientArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(client::Target, ops::Output) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let target = args.target()?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(f(target, args.output))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(serve(*args))),
        Command::Ca(CaCommand::ExportRoot { data_dir }) => export_root(data_dir),
        Command::Tls(TlsCommand::Profiles { json }) => profiles(json),
        Command::Tls(TlsCommand::Readiness { client, dps, profile, tls13, min_tls_version }) => run_client(
            &client,
            |t, o| async move { ops::readiness(&t, &dps, profile, tls13, min_tls_version, o).await },
        ),
        Command::Deployment { client, cmd } => {
            run_client(&client, |t, o| async move { ops::deployment(&t, cmd, o).await })
        }
        Command::Dps { client, cmd } => run_client(&client, |t, o| async move { ops::dps(&t, cmd, o).await }),
        Command::Enrollment { client, cmd } => {
            run_client(&client, |t, o| async move { ops::enrollment(&t, cmd, o).await })
        }
        Command::EnrollmentGroup { client, cmd } => {
            run_client(&client, |t, o| async move { ops::group(&t, cmd, o).await })
        }
        Command::Registration { client, cmd } => {
            run_client(&client, |t, o| async move { ops::registration(&t, cmd, o).await })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opendps: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
