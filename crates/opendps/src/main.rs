//! `opendps`: the command line. Thin: parse arguments, load config, call `dps_server` (serve)
//! or the server's APIs (every operator command, `ops.rs` over `client.rs`).

mod client;
mod hub_ops;
mod log_cap;
mod ops;
mod output;

/// jemalloc is the whole process's malloc, OpenSSL's allocations included (the crate's
/// unprefixed build replaces the C library's `malloc`): about 8 % less CPU per registration
/// than glibc's, for about 0.4 KiB more per idle connection (docs/performance.md, "Allocator").
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dps_config::{Config, LogFormat, Overrides};
use dps_core::tls::{ProfileName, TLS13_SUITES};
use output::{Output, Printer};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "opendps",
    version,
    long_version = long_version(),
    about = "A self-hosted Device Provisioning Service, wire-compatible with Azure IoT Hub DPS",
    after_help = "Examples:\n  opendps serve\n  opendps enrollment create --enrollment-id my-device --attestation-type symmetricKey\n  opendps registration show --rid my-device -o table"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (HTTPS on 443, MQTT on 8883 by default).
    #[command(
        after_help = "Examples:\n  opendps serve\n  opendps serve --listen-address 127.0.0.2 --tls-profile dps-recommended"
    )]
    Serve(Box<ServeArgs>),
    /// The built-in certificate authority.
    #[command(subcommand, after_help = "Example:\n  opendps ca export-root > opendps-root.pem")]
    Ca(CaCommand),
    /// The TLS policy.
    #[command(subcommand, after_help = "Example:\n  opendps tls profiles")]
    Tls(TlsCommand),
    /// ARM template deployments (`az deployment group create`).
    #[command(subcommand, after_help = "Example:\n  opendps deployment create -g my-rg -f template.json")]
    Deployment(ops::DeploymentCmd),
    /// DPS instances, linked hubs, access policies, CA certificates (`az iot dps`).
    #[command(subcommand, after_help = "Example:\n  opendps dps show -o table")]
    Dps(ops::DpsCmd),
    /// Individual enrollments (`az iot dps enrollment`).
    #[command(subcommand, after_help = "Example:\n  opendps enrollment list -o table")]
    Enrollment(ops::EnrollmentCmd),
    /// Enrollment groups (`az iot dps enrollment-group`).
    #[command(subcommand, after_help = "Example:\n  opendps enrollment-group list -o table")]
    EnrollmentGroup(ops::GroupCmd),
    /// Registration records (`az iot dps registration`).
    #[command(subcommand, after_help = "Example:\n  opendps registration list -o table")]
    Registration(ops::RegistrationCmd),
    /// Embedded IoT hubs, their device identities and twins (`az iot hub`).
    #[command(subcommand, after_help = "Example:\n  opendps hub create -n my-hub")]
    Hub(hub_ops::IotHubCmd),
    /// Print the OpenAPI 3 document of the server's APIs (also served at GET /openapi.yaml).
    #[command(after_help = "Example:\n  opendps openapi > openapi.yaml")]
    Openapi,
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  opendps completions bash > /etc/bash_completion.d/opendps\n  opendps completions zsh > \"${fpath[1]}/_opendps\""
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one page per command into a directory.
    #[command(after_help = "Examples:\n  opendps man | man -l -\n  opendps man --dir /usr/local/share/man/man1")]
    Man {
        /// Write opendps.1 and one page per subcommand (opendps-dps-show.1, …) here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Options every command accepts, before or after the subcommand. The operator commands use them
/// to reach the running server; `serve` and `ca export-root` use `--data-dir`.
#[derive(Args, Debug, Clone)]
struct GlobalArgs {
    /// The server's data directory (default /var/lib/opendps): its address, admin token and root CA are read from there.
    #[arg(long, global = true, env = "OPENDPS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Server address (HOST[:PORT]); default: the address the server recorded in the data directory
    /// (0.0.0.0 and :: are reached through loopback).
    #[arg(long, global = true, env = "OPENDPS_SERVER")]
    server: Option<String>,
    /// Root CA to trust for the server (default: <data-dir>/pki/root.pem).
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Admin token for the management API (default: <data-dir>/admin.token).
    #[arg(long, global = true, env = "OPENDPS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Output format of operator commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Json)]
    output: Output,
    /// JMESPath query applied to the result before it is printed (e.g. "[].registrationId").
    #[arg(long, global = true)]
    query: Option<String>,
}

impl GlobalArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(dps_config::DEFAULT_DATA_DIR))
    }

    fn target(&self) -> anyhow::Result<client::Target> {
        client::Target::resolve(
            &self.data_dir(),
            self.server.as_deref(),
            self.ca_file.as_deref(),
            self.admin_token.as_deref(),
        )
    }

    fn printer(&self) -> Printer {
        Printer { output: self.output, query: self.query.clone() }
    }
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Print the root certificate (PEM) that devices must trust.
    #[command(after_help = "Example:\n  opendps ca export-root --data-dir /var/lib/opendps > opendps-root.pem")]
    ExportRoot,
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// List the TLS profiles: the cipher suites each accepts, in server-preference order.
    #[command(after_help = "Examples:\n  opendps tls profiles\n  opendps tls profiles -o json")]
    Profiles {
        /// Print JSON instead of a table (same as -o json).
        #[arg(long)]
        json: bool,
    },
    /// Which registered devices a stricter TLS policy would lock out, from the TLS facts each
    /// registration recorded (nothing is changed).
    #[command(after_help = "Example:\n  opendps tls readiness --profile dps-recommended -o table")]
    Readiness {
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
    /// TOML config file (see opendps.example.toml; default /etc/opendps/opendps.toml when it
    /// exists); OPENDPS_SECTION__KEY variables override it, flags override both.
    #[arg(long, short = 'c', env = "OPENDPS_CONFIG")]
    config: Option<PathBuf>,
    /// Address every listener binds (e.g. 127.0.0.2). Default: 0.0.0.0.
    #[arg(long, visible_alias = "bind")]
    listen_address: Option<String>,
    /// HTTPS port (device and service API). Default: 443.
    #[arg(long)]
    https_port: Option<u16>,
    /// MQTT-over-TLS port. Default: 8883.
    #[arg(long)]
    mqtt_port: Option<u16>,
    /// AMQP-over-TLS port. Default: 5671 (AMQP over WebSockets uses the HTTPS port).
    #[arg(long)]
    amqp_port: Option<u16>,
    /// Port of the plain-HTTP admin listener (/metrics, /health/live, /health/ready; loopback).
    /// Default: 9464; 0 picks a free port.
    #[arg(long)]
    admin_port: Option<u16>,
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
    fn overrides(&self, data_dir: Option<PathBuf>) -> Overrides {
        Overrides {
            data_dir,
            listen_address: self.listen_address.clone(),
            https_port: self.https_port,
            mqtt_port: self.mqtt_port,
            amqp_port: self.amqp_port,
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
            admin_port: self.admin_port,
        }
    }
}

/// Logs go to stderr: ANSI colours only on a terminal (and never with NO_COLOR), timestamps in
/// RFC 3339 (UTC), each line at most `[limits] log_line_max` bytes.
fn init_logging(config: &Config) {
    let filter = std::env::var("OPENDPS_LOG").unwrap_or_else(|_| config.log.filter.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("opendps: ignoring log filter {filter:?}: {e}");
        EnvFilter::new("info")
    });
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_cap::CappedStderr {
            max: config.limits.log_line_max,
            json: config.log.format == LogFormat::Json,
        })
        .with_ansi(ansi)
        .with_timer(tracing_subscriber::fmt::time::SystemTime);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder.init(),
    }
}

/// The config file: `--config`, else `default` when it exists.
fn config_path(explicit: Option<&std::path::Path>, default: &std::path::Path) -> Option<PathBuf> {
    explicit.map(std::path::Path::to_owned).or_else(|| default.is_file().then(|| default.to_owned()))
}

async fn serve(args: ServeArgs, global: GlobalArgs) -> anyhow::Result<()> {
    let config_file = config_path(args.config.as_deref(), std::path::Path::new(dps_config::DEFAULT_CONFIG_PATH));
    let config = Config::load_with_env(config_file.as_deref(), std::env::vars(), &args.overrides(global.data_dir))?;
    init_logging(&config);
    let listeners = dps_server::bind(&config).await?;
    let server = dps_server::Server::start(config.clone(), listeners).await?;
    let root = dps_tls::builtin_ca::root_path(&dps_server::pki_dir(&config));
    let fmt = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let mut banner = String::from("OpenDPS is serving\n");
    let mut line = |label: &str, value: &dyn std::fmt::Display| banner.push_str(&format!("  {label:<29} {value}\n"));
    line("https (device + service API):", &fmt(server.https_addr));
    line("mqtt:", &fmt(server.mqtt_addr));
    line("amqp:", &fmt(server.amqp_addr));
    line(
        "admin (metrics, health):",
        &server.admin_addr.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics")),
    );
    line(
        "tls profile:",
        &format!("{} (TLS 1.3 {})", config.https.tls.profile, if config.https.tls.tls13 { "on" } else { "off" }),
    );
    line(
        "config file:",
        &config_file.as_ref().map_or_else(|| "none (defaults)".to_owned(), |p| p.display().to_string()),
    );
    line("data directory:", &config.data_dir.display());
    if matches!(config.tls.certificate, dps_config::CertificateSource::BuiltIn(_)) {
        line("root CA for devices:", &format!("{} (opendps ca export-root)", root.display()));
    }
    if let Some(i) = &server.created_default {
        line("created DPS instance:", &format!("{} (first start)", i.name));
    }
    if let Ok(i) = server.state.services.instance(&config.service.default_instance).await {
        line("DPS instance:", &i.name);
        line("ID scope:", &i.id_scope);
        line("global device endpoint:", &config.service.public_host);
        // The owner key is a secret: printed only to a person at a terminal, never into a log
        // (systemd, a container, a redirected file).
        if std::io::stdout().is_terminal() {
            if let Some(cs) = dps_server::connection_string(&server.state, &i) {
                line("service connection string:", &cs);
            }
        } else {
            let dir = if config.data_dir == std::path::Path::new(dps_config::DEFAULT_DATA_DIR) {
                String::new()
            } else {
                format!(" --data-dir {}", config.data_dir.display())
            };
            line("service connection string:", &format!("opendps dps connection-string{dir}"));
        }
    }
    // Signal handlers first: a stop right after READY must be a clean shutdown.
    let (mut term, mut int, mut hup) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?,
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot install the SIGINT handler")?,
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?,
    );
    print(&banner)?;
    // systemd (Type=notify): ready once every listener accepts. No-op without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the server is ready");
    }

    let token = server.shutdown_token();
    let tls = server.tls.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                    tracing::info!("SIGHUP: reloading server credentials");
                    tls.clone().reload_logged("SIGHUP").await;
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                }
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
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

fn profiles(json: bool, out: &Printer) -> anyhow::Result<()> {
    if json || out.output != Output::Table {
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
        let v = serde_json::Value::Array(v);
        return if json { out.clone_with(Output::Json).print(&v) } else { out.print(&v) };
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

fn run_client<F, Fut>(args: &GlobalArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(client::Target, Printer) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let target = args.target()?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(f(target, args.printer()))
}

/// The command tree, for completions and man pages.
fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

fn man(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cmd = command();
    match dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf).context("rendering the man page")?;
            print(&String::from_utf8_lossy(&buf))
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| format!("cannot write man pages to {}", dir.display()))
        }
    }
}

/// `opendps --version`: the version and the OpenSSL it runs with (the system's, or the one built
/// in with the `vendored-openssl` feature: docs/tls.md, "Which OpenSSL").
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| format!("{}, {}", env!("CARGO_PKG_VERSION"), dps_tls::openssl_version()))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let g = cli.global;
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(serve(*args, g))),
        Command::Ca(CaCommand::ExportRoot) => export_root(g.data_dir()),
        Command::Tls(TlsCommand::Profiles { json }) => profiles(json, &g.printer()),
        Command::Tls(TlsCommand::Readiness { dps, profile, tls13, min_tls_version }) => {
            run_client(&g, |t, o| async move { ops::readiness(&t, &dps, profile, tls13, min_tls_version, &o).await })
        }
        Command::Deployment(cmd) => run_client(&g, |t, o| async move { ops::deployment(&t, cmd, &o).await }),
        Command::Dps(cmd) => run_client(&g, |t, o| async move { ops::dps(&t, cmd, &o).await }),
        Command::Enrollment(cmd) => run_client(&g, |t, o| async move { ops::enrollment(&t, cmd, &o).await }),
        // With the group key given, nothing is read from a server.
        Command::EnrollmentGroup(ops::GroupCmd::ComputeDeviceKey { key: Some(key), registration_id, .. }) => {
            ops::derived_key(&key, &registration_id).and_then(|v| g.printer().print(&v))
        }
        Command::EnrollmentGroup(cmd) => run_client(&g, |t, o| async move { ops::group(&t, cmd, &o).await }),
        Command::Registration(cmd) => run_client(&g, |t, o| async move { ops::registration(&t, cmd, &o).await }),
        Command::Hub(cmd) => run_client(&g, |t, o| async move { hub_ops::hub(&t, cmd, &o).await }),
        Command::Openapi => print(dps_http::openapi::DOCUMENT),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut command(), "opendps", &mut buf);
            print(&String::from_utf8_lossy(&buf))
        }
        Command::Man { dir } => man(dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opendps: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and flag has a help line; every command has an example.
    fn check(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
        let name = format!("{path} {}", cmd.get_name()).trim().to_owned();
        if cmd.get_about().is_none() && !path.is_empty() {
            problems.push(format!("{name}: no help line"));
        }
        if !cmd.get_after_help().is_some_and(|h| h.to_string().contains("opendps ")) {
            problems.push(format!("{name}: no example"));
        }
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id != "help" && id != "version" && a.get_help().is_none() {
                problems.push(format!("{name} --{id}: no help line"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                check(sub, &name, problems);
            }
        }
    }

    #[test]
    fn every_command_and_flag_is_documented_with_an_example() {
        let cmd = command();
        cmd.clone().debug_assert();
        let mut problems = Vec::new();
        check(&cmd, "", &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_default_config_file_is_read_when_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let default = dir.path().join("opendps.toml");
        let explicit = dir.path().join("other.toml");
        assert_eq!(config_path(None, &default), None, "absent: defaults");
        std::fs::write(&default, "").expect("write");
        assert_eq!(config_path(None, &default), Some(default.clone()));
        assert_eq!(config_path(Some(&explicit), &default), Some(explicit.clone()), "--config wins");
    }

    #[test]
    fn global_options_go_anywhere_and_az_spellings_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map_err(|e| e.to_string());
        let c = parse(&["opendps", "--server", "127.0.0.1", "-o", "table", "enrollment", "list"]).expect("before");
        assert_eq!(c.global.server.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.global.output, Output::Table);
        let c = parse(&["opendps", "enrollment", "list", "--server", "h", "--data-dir", "/d", "-o", "yaml"])
            .expect("after");
        assert_eq!(c.global.data_dir.as_deref(), Some(std::path::Path::new("/d")));
        assert_eq!(c.global.output, Output::Yaml);
        for at in ["symmetricKey", "symmetrickey", "SYMMETRICKEY", "x509", "tpm"] {
            parse(&["opendps", "enrollment", "create", "--eid", "d", "--attestation-type", at]).expect(at);
        }
        parse(&["opendps", "enrollment-group", "create", "--gid", "g", "--at", "symmetricKey", "-n", "x", "-g", "rg"])
            .expect("group aliases");
        parse(&["opendps", "enrollment-group", "compute-device-key", "--gid", "g", "--rid", "d"]).expect("--gid --rid");
        parse(&["opendps", "registration", "show", "--rid", "d", "--show-tls"]).expect("--rid");
        parse(&["opendps", "dps", "show", "--dps-name", "x", "--resource-group", "rg"]).expect("--dps-name");
        parse(&["opendps", "enrollment", "update", "--eid", "d", "--edge-enabled", "--ps", "disabled"])
            .expect("update");
        parse(&["opendps", "enrollment", "show", "--eid", "d", "--show-keys", "--query", "attestation"]).expect("show");
        assert!(parse(&["opendps", "enrollment", "create", "--eid", "d", "--attestation-type", "none"]).is_err());
    }
}
