//! `dps-config`: the configuration of `opendps serve`.
//!
//! Two layers: [`raw`] is the serde shape of the TOML file
//! (`deny_unknown_fields`: a misspelt security setting must fail, not be ignored), and [`Config`]
//! is the validated value the server runs on. [`Config::load`] goes file → command-line
//! [`Overrides`] → one validation pass that reports **every** problem with its TOML path.
//!
//! Every setting has a default that works as is; see `opendps.example.toml` at the repository
//! root for the documented file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dps_core::tls::{Group, ProfileName};

pub mod env;
pub mod raw;

/// Default data directory (`/var/lib/opendps`). Override with `--data-dir` or `data_dir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/opendps";

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where state lives: the built-in CA under `pki/`, later the store.
    pub data_dir: PathBuf,
    pub https: ListenerConfig,
    pub mqtt: ListenerConfig,
    pub amqp: ListenerConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    /// How long shutdown waits for open connections to finish before closing them.
    pub shutdown_grace: Duration,
    pub store: StoreConfig,
    pub service: ServiceConfig,
    pub allocation: AllocationConfig,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    pub hub_registry: HubRegistryConfig,
}

/// Time bounds of every connection (docs/limits.md). A bound reached costs only that connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// A new connection must send its first bytes (the ClientHello) within this; until then it
    /// holds no handshake slot.
    pub hello_timeout: Duration,
    /// HTTPS: a request head must be complete within this, counted from the end of the TLS
    /// handshake or of the previous response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// HTTPS: a request body must be complete within this, counted from the end of its head.
    pub body_timeout: Duration,
    /// MQTT: how long a client may take to send CONNECT.
    pub mqtt_connect_timeout: Duration,
    /// MQTT: the longest keep-alive honoured (a client asking for more, or for none, gets this).
    pub mqtt_max_keep_alive: Duration,
    /// MQTT: how long a connection whose device was refused at CONNECT may stay.
    pub mqtt_refused_lifetime: Duration,
    /// Open connections from one source (an IPv4 address, or an IPv6 /64), over every TLS
    /// listener together; 0: no limit.
    pub max_connections_per_source: u32,
    /// New connections (each one a handshake) one source may open per second, over every TLS
    /// listener together, refused at accept before TLS beyond; 0: no limit.
    pub handshakes_per_second_per_source: u32,
    /// How many new connections one source may open at once above its rate.
    pub handshake_burst_per_source: u32,
    /// A log line (as written, in bytes) longer than this is cut (`opendps serve`'s writer).
    pub log_line_max: usize,
    /// Failed handshakes logged per second per listener; the rest are counted.
    pub log_failed_handshakes_per_second: u32,
    /// Refused connections (at a connection cap, per source) are logged once per source per
    /// this interval, the rest counted.
    pub log_refusals_interval: Duration,
}

/// The plain-HTTP admin listener: Prometheus `/metrics`, `/health/live`, `/health/ready`
/// (docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Default: the listen address if it is a loopback address, else 127.0.0.1.
    pub address: IpAddr,
    /// Default 9464.
    pub port: u16,
}

/// How registration writes devices into their IoT hubs (docs/hub.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRegistryConfig {
    /// Write each assigned device into its hub before answering `assigned`, as DPS does
    /// (`false`: only record the assignment).
    pub register_devices: bool,
    /// How long one registry call may take (connect, TLS, request, answer).
    pub timeout: Duration,
    /// A CA to trust for hubs besides the system's roots and this server's own root.
    pub ca_file: Option<PathBuf>,
}

/// Custom allocation webhooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationConfig {
    /// How long a webhook may take (connect, TLS, request, answer).
    pub webhook_timeout: Duration,
    /// A CA to trust for webhooks besides the system's roots.
    pub webhook_ca_file: Option<PathBuf>,
    /// Allow plain `http://` webhooks to localhost (development and tests only).
    pub allow_http_localhost: bool,
}

/// The embedded store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// `postgres://…`: a PostgreSQL database shared by several nodes, instead of the SQLite file.
    pub url: Option<Secret>,
    /// The SQLite file (default `data_dir/opendps.db`).
    pub path: PathBuf,
    /// `full`: fsync every commit (survives power loss); `normal` (default): survives a crash.
    pub durable_fsync: bool,
    /// The operator's node key (a file holding at least 32 characters; the variable
    /// `OPENDPS_NODE_KEY` holds the key itself and wins). Required on a shared store: it seals
    /// the built-in CA's keys and the admin credential there.
    pub node_key_file: Option<PathBuf>,
    /// How often a node on a shared store asks its database for its role (primary or standby).
    pub role_poll: Duration,
    /// The other region's database (`postgres://…`), watched for fencing: while it is primary on
    /// a higher timeline than this node's database, this node serves nothing (split brain).
    pub peer_url: Option<Secret>,
}

/// How the server presents itself to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Host name (or IP) in connection strings: default the listen address, or `localhost`.
    pub public_host: String,
    /// This node's region (location of instances that name none).
    pub region: String,
    /// Name of the instance created on first start.
    pub default_instance: String,
    /// Largest request body in bytes (413 beyond).
    pub max_body: usize,
    /// Registrations per minute per DPS instance on this node; 0 = unlimited.
    pub registrations_per_minute: u32,
}

/// One TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub enabled: bool,
    pub address: IpAddr,
    pub port: u16,
    pub tls: ListenerTls,
}

/// The per-listener TLS choices (each defaults to the `[tls]` value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    pub profile: ProfileName,
    pub tls13: bool,
    /// Send a CertificateRequest (optional client certificate, empty CA list).
    pub request_client_cert: bool,
}

/// Settings shared by every listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub groups: Vec<Group>,
    pub handshake_timeout: Duration,
    /// Open connections per listener; one more is closed at once.
    pub max_connections: usize,
    /// Handshakes in progress per listener; more wait (bounded by `handshake_timeout`).
    pub max_handshakes: usize,
    pub session_tickets: bool,
    /// How often the session-ticket key is replaced.
    pub ticket_key_lifetime: Duration,
    pub certificate: CertificateSource,
}

/// Where the server certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    BuiltIn(BuiltInCa),
    Files(CertificateFiles),
}

/// The built-in CA: root → intermediate → RSA-2048 leaf under `data_dir/pki`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltInCa {
    /// DNS names on the leaf (localhost and the host name are always added).
    pub dns_names: Vec<String>,
    /// IP addresses on the leaf (127.0.0.1, ::1 and the listen address are always added).
    pub ip_addresses: Vec<IpAddr>,
    pub leaf_lifetime: Duration,
    /// How often the renewal check runs.
    pub check_interval: Duration,
}

/// PEM files supplied by the operator, reloaded on change and on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Leaf first, then intermediates.
    pub chain: PathBuf,
    pub key: PathBuf,
    /// If set, the chain must verify to this root before it is used.
    pub root: Option<PathBuf>,
    pub poll_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive string (`info`, `opendps=debug`); `OPENDPS_LOG` overrides it.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Command-line values that override the file. `None` leaves the file's (or default) value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen_address: Option<String>,
    pub https_port: Option<u16>,
    pub mqtt_port: Option<u16>,
    pub amqp_port: Option<u16>,
    pub tls_profile: Option<String>,
    pub tls13: Option<bool>,
    pub request_client_cert: Option<bool>,
    pub cert_chain: Option<PathBuf>,
    pub cert_key: Option<PathBuf>,
    pub cert_root: Option<PathBuf>,
    pub server_names: Vec<String>,
    pub leaf_lifetime: Option<String>,
    pub log_format: Option<String>,
    pub log_filter: Option<String>,
    pub public_host: Option<String>,
    pub store_url: Option<String>,
    pub admin_port: Option<u16>,
}

/// A string that never prints (store URLs may carry passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One problem found by validation, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration:\n{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

/// The config file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/opendps/opendps.toml";

impl Config {
    /// Reads `path` (if given), applies `overrides`, validates once.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::iter::empty(), overrides)
    }

    /// Reads `path` (if given), applies the `OPENDPS_SECTION__KEY` variables among `vars`
    /// (see [`env`]), then `overrides`, and validates once: problems of the variables and of
    /// the values are reported together, each naming its key and, if it set it, the variable.
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                // Parsed once as the schema, for errors with line and column.
                raw::Raw::parse(&text).map_err(|source| ConfigError::Parse { path: p.to_owned(), source })?;
                Some((p, text))
            }
            None => None,
        };
        let settings = env::settings(vars);
        if settings.is_empty() {
            let raw = match &text {
                Some((p, t)) => {
                    raw::Raw::parse(t).map_err(|source| ConfigError::Parse { path: p.to_path_buf(), source })?
                }
                None => raw::Raw::default(),
            };
            return Config::from_raw(raw.with_overrides(overrides));
        }
        let table = match &text {
            Some((p, t)) => {
                t.parse::<toml::Table>().map_err(|source| ConfigError::Parse { path: p.to_path_buf(), source })?
            }
            None => toml::Table::new(),
        };
        let (table, mut problems) = env::apply(table, &settings);
        let raw: raw::Raw = match toml::Value::Table(table).try_into() {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem { path: "environment".into(), message: e.message().to_owned() });
                raw::Raw::default()
            }
        };
        match Config::from_raw(raw.with_overrides(overrides)) {
            Ok(c) if problems.is_empty() => Ok(c),
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(ConfigError::Invalid(mut more)) => {
                env::attribute(&mut more, &settings);
                problems.extend(more);
                Err(ConfigError::Invalid(problems))
            }
            Err(other) => Err(other),
        }
    }

    /// Validates a raw configuration, collecting every problem.
    pub fn from_raw(raw: raw::Raw) -> Result<Config, ConfigError> {
        let mut v = Validator::default();
        let address = v.ip("listen.address", raw.listen.address.as_deref().unwrap_or("0.0.0.0"));
        let tls_profile = v.profile("tls.profile", raw.tls.profile.as_deref());
        let tls13 = raw.tls.tls13.unwrap_or(false);
        let request = raw.tls.request_client_cert.unwrap_or(true);
        let listener = |v: &mut Validator, name: &str, r: &raw::RawListener, port: u16| ListenerConfig {
            enabled: r.enabled.unwrap_or(true),
            address,
            port: r.port.unwrap_or(port),
            tls: ListenerTls {
                profile: match &r.profile {
                    Some(p) => v.profile(&format!("{name}.profile"), Some(p)),
                    None => tls_profile,
                },
                tls13: r.tls13.unwrap_or(tls13),
                request_client_cert: r.request_client_cert.unwrap_or(request),
            },
        };
        let https = listener(&mut v, "https", &raw.https, 443);
        let mqtt = listener(&mut v, "mqtt", &raw.mqtt, 8883);
        let amqp = listener(&mut v, "amqp", &raw.amqp, 5671);
        let clash = |a: &ListenerConfig, b: &ListenerConfig| a.enabled && b.enabled && a.port == b.port && a.port != 0;
        if clash(&https, &mqtt) {
            v.problem("mqtt.port", format!("{} is also the HTTPS port; give each listener its own port", mqtt.port));
        }
        if clash(&https, &amqp) {
            v.problem("amqp.port", format!("{} is also the HTTPS port; give each listener its own port", amqp.port));
        }
        if clash(&mqtt, &amqp) {
            v.problem("amqp.port", format!("{} is also the MQTT port; give each listener its own port", amqp.port));
        }

        let groups = match &raw.tls.groups {
            None => Group::DEFAULT.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, g) in list.iter().enumerate() {
                    match g.parse::<Group>() {
                        Ok(g) if out.contains(&g) => {
                            v.problem(&format!("tls.groups[{i}]"), format!("{g} is listed twice"))
                        }
                        Ok(g) => out.push(g),
                        Err(e) => v.problem(&format!("tls.groups[{i}]"), e.to_string()),
                    }
                }
                if list.is_empty() {
                    v.problem("tls.groups", "at least one group is needed for the ECDHE suites".into());
                }
                out
            }
        };
        let handshake_timeout = v.duration(
            "tls.handshake_timeout",
            raw.tls.handshake_timeout.as_deref(),
            "10s",
            Duration::from_millis(100),
        );
        let max_connections = v.positive("tls.max_connections", raw.tls.max_connections, 10_000);
        let max_handshakes = v.positive("tls.max_handshakes", raw.tls.max_handshakes, 256);
        let ticket_key_lifetime = v.duration(
            "tls.ticket_key_lifetime",
            raw.tls.ticket_key_lifetime.as_deref(),
            "12h",
            Duration::from_secs(60),
        );

        let certificate = match (&raw.tls.files, &raw.tls.builtin) {
            (Some(_), Some(_)) => {
                v.problem("tls", "set either [tls.files] or [tls.builtin], not both".into());
                CertificateSource::BuiltIn(v.builtin(&raw::RawBuiltIn::default()))
            }
            (Some(f), None) => {
                let chain = v.path("tls.files.chain", f.chain.as_deref());
                let key = v.path("tls.files.key", f.key.as_deref());
                let poll_interval =
                    v.duration("tls.files.poll_interval", f.poll_interval.as_deref(), "5s", Duration::from_millis(200));
                CertificateSource::Files(CertificateFiles { chain, key, root: f.root.clone(), poll_interval })
            }
            (None, b) => CertificateSource::BuiltIn(v.builtin(b.as_ref().unwrap_or(&raw::RawBuiltIn::default()))),
        };

        let format = match raw.log.format.as_deref().unwrap_or("plain") {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                v.problem("log.format", format!("{other:?} is not a log format (expected plain or json)"));
                LogFormat::Plain
            }
        };
        let shutdown_grace = v.duration("shutdown.grace", raw.shutdown.grace.as_deref(), "10s", Duration::ZERO);
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let durable_fsync = match raw.store.durability.as_deref().unwrap_or("normal") {
            "normal" => false,
            "full" => true,
            other => {
                v.problem("store.durability", format!("{other:?} is not normal or full"));
                false
            }
        };
        let allocation = AllocationConfig {
            webhook_timeout: v.duration(
                "allocation.webhook_timeout",
                raw.allocation.webhook_timeout.as_deref(),
                "10s",
                Duration::from_millis(100),
            ),
            webhook_ca_file: raw.allocation.webhook_ca_file.clone(),
            allow_http_localhost: raw.allocation.allow_http_localhost.unwrap_or(false),
        };
        let hub_registry = HubRegistryConfig {
            register_devices: raw.hub_registry.register_devices.unwrap_or(true),
            timeout: v.duration(
                "hub_registry.timeout",
                raw.hub_registry.timeout.as_deref(),
                "10s",
                Duration::from_millis(100),
            ),
            ca_file: raw.hub_registry.ca_file.clone(),
        };
        if let Some(u) = &raw.store.url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                v.problem("store.url", "must be a postgres:// URL (leave it out for the embedded SQLite store)".into());
            }
        }
        if let Some(u) = &raw.store.peer_url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                v.problem("store.peer_url", "must be a postgres:// URL (the other region's database)".into());
            } else if raw.store.url.is_none() {
                v.problem("store.peer_url", "needs store.url (fencing is for nodes on a shared store)".into());
            }
        }
        let store = StoreConfig {
            url: raw.store.url.clone().map(Secret),
            path: raw.store.path.clone().unwrap_or_else(|| data_dir.join("opendps.db")),
            durable_fsync,
            node_key_file: raw.store.node_key_file.clone(),
            peer_url: raw.store.peer_url.clone().map(Secret),
            role_poll: v.duration(
                "store.role_poll",
                raw.store.role_poll.as_deref(),
                "250ms",
                Duration::from_millis(50),
            ),
        };
        let public_host = raw.service.public_host.clone().unwrap_or_else(|| {
            if address.is_unspecified() {
                "localhost".to_owned()
            } else {
                address.to_string()
            }
        });
        let default_instance = raw.service.default_instance.clone().unwrap_or_else(|| "opendps".to_owned());
        if let Err(e) = dps_core::model::validate_instance_name(&default_instance) {
            v.problem("service.default_instance", e);
        }
        let max_body = v.positive("service.max_body", raw.service.max_body, 1024 * 1024);
        let service = ServiceConfig {
            public_host,
            region: raw.service.region.clone().unwrap_or_else(|| "local".to_owned()),
            default_instance,
            max_body,
            registrations_per_minute: match raw.service.registrations_per_minute {
                None => 0,
                Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => u32::try_from(n).unwrap_or(0),
                Some(n) => {
                    v.problem("service.registrations_per_minute", format!("must be 0 (unlimited) or more, got {n}"));
                    0
                }
            },
        };
        let limits = v.limits(&raw.limits);
        let admin = AdminConfig {
            enabled: raw.admin.enabled.unwrap_or(true),
            address: match raw.admin.address.as_deref() {
                Some(a) => v.ip("admin.address", a),
                None if address.is_loopback() => address,
                None => IpAddr::from([127, 0, 0, 1]),
            },
            port: raw.admin.port.unwrap_or(9464),
        };
        if admin.enabled && admin.port != 0 {
            for (name, l) in [("https", &https), ("mqtt", &mqtt), ("amqp", &amqp)] {
                if l.enabled && l.port == admin.port && (l.address == admin.address || l.address.is_unspecified()) {
                    v.problem(
                        "admin.port",
                        format!("{} is also the {name} port; give each listener its own port", admin.port),
                    );
                }
            }
        }
        if data_dir.as_os_str().is_empty() {
            v.problem("data_dir", "must not be empty".into());
        }
        if !v.problems.is_empty() {
            return Err(ConfigError::Invalid(v.problems));
        }
        Ok(Config {
            data_dir,
            https,
            mqtt,
            amqp,
            tls: TlsConfig {
                groups,
                handshake_timeout,
                max_connections,
                max_handshakes,
                session_tickets: raw.tls.session_tickets.unwrap_or(true),
                ticket_key_lifetime,
                certificate,
            },
            log: LogConfig { format, filter: raw.log.filter.unwrap_or_else(|| "info".into()) },
            shutdown_grace,
            store,
            service,
            allocation,
            limits,
            admin,
            hub_registry,
        })
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, path: &str, message: String) {
        self.problems.push(Problem { path: path.to_owned(), message });
    }

    fn ip(&mut self, path: &str, value: &str) -> IpAddr {
        value.parse().unwrap_or_else(|_| {
            self.problem(path, format!("{value:?} is not an IP address (e.g. 0.0.0.0, 127.0.0.2, ::)"));
            IpAddr::from([0, 0, 0, 0])
        })
    }

    fn profile(&mut self, path: &str, value: Option<&str>) -> ProfileName {
        match value.map(str::parse::<ProfileName>) {
            None => ProfileName::default(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                self.problem(path, e.to_string());
                ProfileName::default()
            }
        }
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: &str, min: Duration) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d < min => {
                self.problem(path, format!("{text:?} is shorter than the minimum {}", humantime::format_duration(min)));
                d
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(path, format!("{text:?} is not a duration ({e}); write e.g. \"10s\", \"5m\", \"30d\""));
                Duration::ZERO
            }
        }
    }

    fn limits(&mut self, r: &raw::RawLimits) -> LimitsConfig {
        let min = Duration::from_millis(100);
        LimitsConfig {
            hello_timeout: self.duration("limits.hello_timeout", r.hello_timeout.as_deref(), "5s", min),
            header_timeout: self.duration("limits.header_timeout", r.header_timeout.as_deref(), "20s", min),
            body_timeout: self.duration("limits.body_timeout", r.body_timeout.as_deref(), "20s", min),
            mqtt_connect_timeout: self.duration(
                "limits.mqtt_connect_timeout",
                r.mqtt_connect_timeout.as_deref(),
                "10s",
                min,
            ),
            mqtt_max_keep_alive: self.duration(
                "limits.mqtt_max_keep_alive",
                r.mqtt_max_keep_alive.as_deref(),
                "29m",
                Duration::from_secs(1),
            ),
            mqtt_refused_lifetime: self.duration(
                "limits.mqtt_refused_lifetime",
                r.mqtt_refused_lifetime.as_deref(),
                "30s",
                min,
            ),
            max_connections_per_source: self.count(
                "limits.max_connections_per_source",
                r.max_connections_per_source,
                1000,
                0,
            ),
            handshakes_per_second_per_source: self.count(
                "limits.handshakes_per_second_per_source",
                r.handshakes_per_second_per_source,
                100,
                0,
            ),
            handshake_burst_per_source: self.count(
                "limits.handshake_burst_per_source",
                r.handshake_burst_per_source,
                500,
                1,
            ),
            log_line_max: self.count("limits.log_line_max", r.log_line_max, 8192, 256) as usize,
            log_failed_handshakes_per_second: self.count(
                "limits.log_failed_handshakes_per_second",
                r.log_failed_handshakes_per_second,
                20,
                1,
            ),
            log_refusals_interval: self.duration(
                "limits.log_refusals_interval",
                r.log_refusals_interval.as_deref(),
                "10s",
                Duration::from_secs(1),
            ),
        }
    }

    /// A whole number from `min` to `u32::MAX` (`default` when unset).
    fn count(&mut self, path: &str, value: Option<i64>, default: u32, min: u32) -> u32 {
        match value {
            None => default,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n >= min => n,
                _ => {
                    self.problem(path, format!("must be a whole number from {min} to {}, got {n}", u32::MAX));
                    default
                }
            },
        }
    }

    fn positive(&mut self, path: &str, value: Option<i64>, default: usize) -> usize {
        match value {
            None => default,
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                self.problem(path, format!("must be at least 1, got {n}"));
                default
            }
        }
    }

    fn path(&mut self, path: &str, value: Option<&Path>) -> PathBuf {
        match value {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => {
                self.problem(path, "is required with [tls.files]".into());
                PathBuf::new()
            }
        }
    }

    fn builtin(&mut self, b: &raw::RawBuiltIn) -> BuiltInCa {
        let mut ip_addresses = Vec::new();
        for (i, ip) in b.ip_addresses.iter().flatten().enumerate() {
            ip_addresses.push(self.ip(&format!("tls.builtin.ip_addresses[{i}]"), ip));
        }
        let dns_names = b.dns_names.clone().unwrap_or_default();
        for (i, n) in dns_names.iter().enumerate() {
            if n.is_empty()
                || n.len() > 253
                || !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'))
            {
                self.problem(&format!("tls.builtin.dns_names[{i}]"), format!("{n:?} is not a DNS name"));
            }
        }
        BuiltInCa {
            dns_names,
            ip_addresses,
            leaf_lifetime: self.duration(
                "tls.builtin.leaf_lifetime",
                b.leaf_lifetime.as_deref(),
                "30d",
                Duration::from_secs(60),
            ),
            check_interval: self.duration(
                "tls.builtin.check_interval",
                b.check_interval.as_deref(),
                "1m",
                Duration::from_secs(1),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
