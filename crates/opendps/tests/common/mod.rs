//! Shared by the binary's end-to-end tests: start `opendps serve`, read its banner, signal it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_opendps");

pub struct Running {
    pub child: Child,
    pub https: SocketAddr,
    pub lines: mpsc::Receiver<String>,
    /// Banner lines read before the HTTPS address.
    pub banner: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `opendps serve` with `args`. A server given ephemeral ports (`--https-port 0`) gets an
/// ephemeral AMQP port too, so parallel tests on one address do not collide on 5671.
pub fn serve(args: &[&str]) -> Running {
    let ephemeral = args.windows(2).any(|w| w == ["--https-port", "0"]) && !args.contains(&"--amqp-port");
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        // Tests run servers side by side: each admin listener on a port of its own.
        .env("OPENDPS_ADMIN__PORT", "0")
        .args(if ephemeral { &["--amqp-port", "0"][..] } else { &[] })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn opendps");
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut https = None;
    let mut banner = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("server prints its banner");
        if let Some(rest) = line.trim().strip_prefix("https (device + service API):") {
            https = Some(rest.trim().parse().expect("address"));
        }
        let done = line.trim().starts_with("service connection string:");
        banner.push(line);
        if done || (https.is_some() && banner.len() > 40) {
            break;
        }
    }
    Running { child, https: https.expect("https address in the banner"), lines: rx, banner }
}

pub fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

pub fn leaf_sha256(addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-tls1_2"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut x509.stdin.take().unwrap(), &out.stdout).unwrap();
    String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap()
}

pub fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            if l.contains(needle) {
                return true;
            }
        }
    }
    false
}

impl Running {
    /// The value of a banner line `label: value`.
    pub fn banner_value(&self, label: &str) -> Option<String> {
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim_start_matches(':').trim().to_owned()))
    }
}

/// Runs `opendps ARGS`, returning (success, stdout, stderr).
pub fn opendps(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run opendps");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The service connection string of the server with data directory `data_dir`, through the CLI
/// (the banner names the command instead of printing the key when stdout is not a terminal).
pub fn connection_string(data_dir: &str) -> String {
    let (ok, out, err) =
        opendps(&["dps", "connection-string", "--data-dir", data_dir, "--query", "connectionString", "-o", "tsv"]);
    assert!(ok, "opendps dps connection-string: {err}");
    out.trim().to_owned()
}
