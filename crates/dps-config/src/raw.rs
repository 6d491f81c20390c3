//! The TOML shape of the config file. Every field is optional; defaults are applied by
//! validation in [`crate::Config::from_raw`], so "absent" and "default" stay distinguishable
//! for command-line overrides.

use std::path::PathBuf;

use serde::Deserialize;

use crate::Overrides;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub https: RawListener,
    #[serde(default)]
    pub mqtt: RawListener,
    #[serde(default)]
    pub amqp: RawListener,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub service: RawService,
    #[serde(default)]
    pub allocation: RawAllocation,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub hub_registry: RawHubRegistry,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub hello_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub mqtt_connect_timeout: Option<String>,
    pub mqtt_max_keep_alive: Option<String>,
    pub mqtt_refused_lifetime: Option<String>,
    pub max_connections_per_source: Option<i64>,
    pub handshakes_per_second_per_source: Option<i64>,
    pub handshake_burst_per_source: Option<i64>,
    pub log_line_max: Option<i64>,
    pub log_failed_handshakes_per_second: Option<i64>,
    pub log_refusals_interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub address: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHubRegistry {
    pub register_devices: Option<bool>,
    pub timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllocation {
    pub webhook_timeout: Option<String>,
    pub webhook_ca_file: Option<PathBuf>,
    pub allow_http_localhost: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub url: Option<String>,
    pub path: Option<PathBuf>,
    pub durability: Option<String>,
    pub node_key_file: Option<PathBuf>,
    pub role_poll: Option<String>,
    pub peer_url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub public_host: Option<String>,
    pub region: Option<String>,
    pub default_instance: Option<String>,
    pub max_body: Option<i64>,
    pub registrations_per_minute: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub enabled: Option<bool>,
    pub port: Option<u16>,
    pub profile: Option<String>,
    pub tls13: Option<bool>,
    pub request_client_cert: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub profile: Option<String>,
    pub tls13: Option<bool>,
    pub request_client_cert: Option<bool>,
    pub groups: Option<Vec<String>>,
    pub handshake_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_handshakes: Option<i64>,
    pub session_tickets: Option<bool>,
    pub ticket_key_lifetime: Option<String>,
    pub builtin: Option<RawBuiltIn>,
    pub files: Option<RawFiles>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuiltIn {
    pub dns_names: Option<Vec<String>>,
    pub ip_addresses: Option<Vec<String>>,
    pub leaf_lifetime: Option<String>,
    pub check_interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub chain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub poll_interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub filter: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace: Option<String>,
}

impl Raw {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Raw, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies command-line overrides on top of the file.
    #[must_use]
    pub fn with_overrides(mut self, o: &Overrides) -> Raw {
        fn set<T: Clone>(slot: &mut Option<T>, v: &Option<T>) {
            if let Some(v) = v {
                *slot = Some(v.clone());
            }
        }
        set(&mut self.data_dir, &o.data_dir);
        set(&mut self.listen.address, &o.listen_address);
        set(&mut self.https.port, &o.https_port);
        set(&mut self.mqtt.port, &o.mqtt_port);
        set(&mut self.admin.port, &o.admin_port);
        set(&mut self.amqp.port, &o.amqp_port);
        if o.tls_profile.is_some() {
            // A profile on the command line applies to every listener.
            self.tls.profile.clone_from(&o.tls_profile);
            self.https.profile = None;
            self.mqtt.profile = None;
            self.amqp.profile = None;
        }
        if o.tls13.is_some() {
            self.tls.tls13 = o.tls13;
            self.https.tls13 = None;
            self.mqtt.tls13 = None;
            self.amqp.tls13 = None;
        }
        if o.request_client_cert.is_some() {
            self.tls.request_client_cert = o.request_client_cert;
            self.https.request_client_cert = None;
            self.mqtt.request_client_cert = None;
            self.amqp.request_client_cert = None;
        }
        if o.cert_chain.is_some() || o.cert_key.is_some() {
            let files = self.tls.files.get_or_insert_with(RawFiles::default);
            set(&mut files.chain, &o.cert_chain);
            set(&mut files.key, &o.cert_key);
            set(&mut files.root, &o.cert_root);
            self.tls.builtin = None;
        }
        if !o.server_names.is_empty() || o.leaf_lifetime.is_some() {
            let b = self.tls.builtin.get_or_insert_with(RawBuiltIn::default);
            for name in &o.server_names {
                if name.parse::<std::net::IpAddr>().is_ok() {
                    b.ip_addresses.get_or_insert_with(Vec::new).push(name.clone());
                } else {
                    b.dns_names.get_or_insert_with(Vec::new).push(name.clone());
                }
            }
            set(&mut b.leaf_lifetime, &o.leaf_lifetime);
        }
        set(&mut self.service.public_host, &o.public_host);
        set(&mut self.store.url, &o.store_url);
        set(&mut self.log.format, &o.log_format);
        set(&mut self.log.filter, &o.log_filter);
        self
    }
}
