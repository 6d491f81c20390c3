//! The ceiling: nginx from Debian's packages on loopback, with OpenDPS's own certificate chain
//! and key, its default TLS profile (the twelve DPS suites at @SECLEVEL=1, TLS 1.2 only, server
//! preference, groups P-256:P-384), asking for (not requiring) a client certificate as OpenDPS
//! does, no session cache and no tickets (tickets on for `register --resume`), answering every
//! request with a tiny static 202 and closing the connection (`keepalive_timeout 0`): one
//! handshake per request. The verifying ceiling (`register --verifying-ceiling`) is the same
//! nginx verifying each client chain against the X.509 group's CA, as OpenDPS must.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procstat::Group;
use crate::server::has_prlimit;

/// OpenDPS's default profile (dps-legacy-security), in its order.
pub const DEFAULT_PROFILE: &str = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA384:\
ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA:AES256-GCM-SHA384:AES128-GCM-SHA256:\
AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA";

/// How nginx runs.
#[derive(Clone, Debug)]
pub struct NginxSpec {
    pub bin: PathBuf,
    /// Its prefix: config, pid, logs and temp directories, nothing outside.
    pub prefix: PathBuf,
    pub listen: SocketAddr,
    /// Leaf first, then the intermediate.
    pub chain: PathBuf,
    pub key: PathBuf,
    pub workers: usize,
    pub groups: String,
    pub request_client_cert: bool,
    /// Verify every client chain against this CA (PEM) in the handshake, as OpenDPS verifies a
    /// device's chain against its group's CA (`register --verifying-ceiling`); otherwise any
    /// chain is accepted unverified (`optional_no_ca`).
    pub trusted_ca: Option<PathBuf>,
    /// Issue and accept session tickets (`register --resume`); otherwise every connection is a
    /// full handshake.
    pub tickets: bool,
    pub nofile: u64,
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    pub version: String,
    /// What `nginx -V` says of its OpenSSL ("built with …, running with …").
    openssl: String,
}

/// `nginx` on the PATH or in /usr/sbin, if installed.
pub fn find_bin(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.is_file().then(|| p.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The nginx.conf of the ceiling.
pub fn config(spec: &NginxSpec) -> String {
    let p = spec.prefix.display();
    let verify = match (spec.request_client_cert, &spec.trusted_ca) {
        (false, _) => String::new(),
        (true, None) => "    ssl_verify_client optional_no_ca;\n".to_owned(),
        // nginx 1.22 verifies client chains only against `ssl_client_certificate`, which also
        // names the CA in the CertificateRequest (OpenDPS names none): a few dozen bytes more.
        (true, Some(ca)) => format!(
            "    ssl_verify_client optional;\n    ssl_verify_depth {};\n    ssl_client_certificate {};\n",
            dps_attest::MAX_CHAIN, // as deep as OpenDPS verifies a device's chain
            ca.display()
        ),
    };
    format!(
        "# opendps-bench ceiling: generated, do not edit.\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         worker_rlimit_nofile {nofile};\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\n\
         events {{\n    worker_connections 16384;\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {p}/tmp/body;\n\
         \x20   proxy_temp_path {p}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {p}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {p}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {p}/tmp/scgi;\n\
         \x20   keepalive_timeout 0;\n\
         \x20   server {{\n\
         \x20   listen {listen} ssl;\n\
         \x20   ssl_certificate {chain};\n\
         \x20   ssl_certificate_key {key};\n\
         \x20   ssl_protocols TLSv1.2;\n\
         \x20   ssl_ciphers \"{profile}:@SECLEVEL=1\";\n\
         \x20   ssl_prefer_server_ciphers on;\n\
         \x20   ssl_ecdh_curve {groups};\n\
         \x20   ssl_session_cache off;\n\
         \x20   ssl_session_tickets {tickets};\n\
         {verify}\
         \x20   location / {{\n\
         \x20       default_type application/json;\n\
         \x20       return 202 '{{\"status\":\"assigning\"}}';\n\
         \x20   }}\n\
         \x20   }}\n\
         }}\n",
        workers = spec.workers,
        nofile = crate::procstat::child_nofile(spec.nofile),
        listen = spec.listen,
        chain = spec.chain.display(),
        key = spec.key.display(),
        profile = DEFAULT_PROFILE,
        groups = spec.groups,
        tickets = if spec.tickets { "on" } else { "off" },
    )
}

impl Nginx {
    /// The OpenSSL nginx was built with and runs with, as `nginx -V` says it.
    pub fn openssl(&self) -> &str {
        &self.openssl
    }

    pub fn start(spec: &NginxSpec) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(spec.prefix.join("tmp"))?;
        let conf = spec.prefix.join("nginx.conf");
        std::fs::write(&conf, config(spec))?;
        let version = Command::new(&spec.bin)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        let openssl = Command::new(&spec.bin)
            .arg("-V")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stderr).lines().find(|l| l.contains("OpenSSL")).map(|l| l.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let test = Command::new(&spec.bin)
            .arg("-t")
            .arg("-e")
            .arg(spec.prefix.join("error.log"))
            .arg("-p")
            .arg(&spec.prefix)
            .arg("-c")
            .arg(&conf)
            .output()
            .with_context(|| format!("running {}", spec.bin.display()))?;
        if !test.status.success() {
            bail!("nginx -t rejected the ceiling config: {}", String::from_utf8_lossy(&test.stderr).trim());
        }
        let log = std::fs::File::create(spec.prefix.join("stderr.log"))?;
        let mut cmd = if has_prlimit() {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={0}:{0}", crate::procstat::child_nofile(spec.nofile))).arg("--").arg(&spec.bin);
            c
        } else {
            Command::new(&spec.bin)
        };
        let child = cmd
            .arg("-e")
            .arg(spec.prefix.join("error.log"))
            .arg("-p")
            .arg(&spec.prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let mut n = Nginx { pid: child.id(), child: Some(child), addr: spec.listen, version, openssl };
        let t0 = Instant::now();
        while std::net::TcpStream::connect_timeout(&spec.listen, Duration::from_millis(200)).is_err() {
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let err = std::fs::read_to_string(spec.prefix.join("error.log")).unwrap_or_default();
                    bail!("nginx exited ({status}): {err}");
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not listen on {} within 10 s", spec.listen);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The workers start after the master listens.
        let t0 = Instant::now();
        while crate::procstat::children(n.pid).len() < spec.workers && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    /// The master and its workers.
    pub fn group(&self) -> Group {
        Group { root: self.pid }
    }

    /// SIGTERM (fast shutdown of master and workers), then up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let workers = crate::procstat::children(self.pid);
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        for w in workers {
            let _ = Command::new("kill").args(["-KILL", &w.to_string()]).status();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_profile_and_one_handshake_per_request() {
        let spec = NginxSpec {
            bin: "nginx".into(),
            prefix: "/tmp/x".into(),
            listen: "127.0.0.90:9443".parse().expect("addr"),
            chain: "/d/chain.pem".into(),
            key: "/d/pki/server.key".into(),
            workers: 2,
            groups: "P-256:P-384".into(),
            request_client_cert: true,
            trusted_ca: None,
            tickets: false,
            nofile: 65536,
        };
        let c = config(&spec);
        for want in [
            "listen 127.0.0.90:9443 ssl;",
            "ssl_protocols TLSv1.2;",
            "ssl_ciphers \"ECDHE-RSA-AES256-GCM-SHA384:",
            "AES128-SHA:@SECLEVEL=1\";",
            "ssl_prefer_server_ciphers on;",
            "ssl_ecdh_curve P-256:P-384;",
            "ssl_session_cache off;",
            "ssl_session_tickets off;",
            "keepalive_timeout 0;",
            "ssl_verify_client optional_no_ca;",
            "return 202 '{\"status\":\"assigning\"}';",
            "worker_processes 2;",
        ] {
            assert!(c.contains(want), "{want} missing from\n{c}");
        }
        assert_eq!(DEFAULT_PROFILE.split(':').count(), 12);
        let resuming = config(&NginxSpec { tickets: true, ..spec.clone() });
        assert!(resuming.contains("ssl_session_tickets on;") && resuming.contains("ssl_session_cache off;"));
        let verifying = config(&NginxSpec { trusted_ca: Some("/d/ca.pem".into()), ..spec });
        for want in ["ssl_verify_client optional;", "ssl_verify_depth 10;", "ssl_client_certificate /d/ca.pem;"] {
            assert!(verifying.contains(want), "{want} missing from\n{verifying}");
        }
        assert!(!verifying.contains("optional_no_ca"));
    }
}
