//! Running OpenDPS as a daemon: the systemd unit (`systemd-analyze verify`), READY=1 and
//! STOPPING=1 through NOTIFY_SOCKET, the Dockerfile (built where a container runtime is
//! available), environment overrides, and output fit for a log: no ANSI codes and no secret
//! off a terminal, RFC 3339 timestamps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{serve, signal, BIN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze", "--version") {
        // CI starts from a clean machine: install the tool the test needs.
        let _ = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if !have("systemd-analyze", "--version") {
        eprintln!("SKIPPED systemd_unit_verifies: systemd-analyze is not installed and could not be installed here");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("packaging/opendps.service")).unwrap();
    for line in ["Type=notify", "ExecStart=/usr/local/bin/opendps serve", "NoNewPrivileges=yes", "ProtectSystem=strict"]
    {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    // Verified with the binary just built in place of the installed path (verify checks that
    // ExecStart exists); man pages are not installed here.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opendps.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/opendps", BIN)).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("opendps.service")).collect();
    assert!(problems.is_empty(), "systemd-analyze verify warns: {problems:#?}");
}

#[test]
fn dockerfile_builds_where_a_container_runtime_is_available() {
    let Some(runtime) = ["docker", "podman"].into_iter().find(|r| have(r, "info")) else {
        eprintln!("SKIPPED dockerfile_builds: no container runtime (docker or podman) is running on this machine");
        return;
    };
    let out = Command::new(runtime)
        .args(["build", "--tag", "opendps:test", "--file", "Dockerfile", "."])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{runtime} build: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(runtime).args(["run", "--rm", "opendps:test", "--version"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("opendps "), "the image runs opendps");
}

#[test]
fn ready_and_stopping_reach_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // Generous: first start makes RSA keys, and the machine may be busy.
    socket.set_read_timeout(Some(Duration::from_secs(240))).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--listen-address", "127.0.0.1", "--https-port", "0", "--mqtt-port", "0", "--amqp-port", "0"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("OPENDPS_ADMIN__PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 240 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(dir.path().join("data/endpoint").exists(), "READY=1 comes once the listeners are up");
    signal(&child, "-TERM");
    let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn environment_overrides_every_key_and_names_the_variable_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--data-dir", data])
        .env("OPENDPS_TLS__PROFILEX", "dps-recommended")
        .env("OPENDPS_HTTPS__PORT", "eighty")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OPENDPS_TLS__PROFILEX (tls.profilex)") && err.contains("OPENDPS_HTTPS__PORT"), "{err}");

    let mut s = Command::new(BIN)
        .args(["serve", "--data-dir", data])
        .env("OPENDPS_LISTEN__ADDRESS", "127.0.0.1")
        .env("OPENDPS_HTTPS__PORT", "0")
        .env("OPENDPS_ADMIN__PORT", "0")
        .env("OPENDPS_MQTT__ENABLED", "false")
        .env("OPENDPS_SERVICE__PUBLIC_HOST", "dps.from-env.example")
        .env("OPENDPS_TLS__BUILTIN__DNS_NAMES", "dps.from-env.example")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(s.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.trim().starts_with("service connection string:"))
        .collect();
    assert!(lines.iter().any(|l| l.trim() == "mqtt:                         off"), "{lines:#?}");
    let cs = common::connection_string(data);
    assert!(cs.starts_with("HostName=dps.from-env.example;"), "{cs}");
    signal(&s, "-TERM");
    assert!(s.wait().unwrap().success());
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() >= 20
        && b.get(4) == Some(&b'-')
        && b.get(10) == Some(&b'T')
        && s.ends_with('Z')
        && s.chars().filter(char::is_ascii_digit).count() >= 14
}

#[test]
fn log_output_has_no_colour_no_secret_and_rfc3339_times() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut s = serve(&["--data-dir", data, "--listen-address", "127.0.0.1", "--https-port", "0", "--mqtt-port", "0"]);
    assert!(s.banner.iter().all(|l| !l.contains("SharedAccessKey=")), "no key in a log: {:#?}", s.banner);
    signal(&s.child, "-TERM");
    s.child.wait().unwrap();
    let mut stderr_lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(l) = s.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        stderr_lines.push(l);
    }
    let all: Vec<&String> = s.banner.iter().chain(&stderr_lines).collect();
    assert!(all.iter().all(|l| !l.contains('\u{1b}')), "no ANSI codes off a terminal: {all:#?}");
    let logs: Vec<&&String> = all.iter().filter(|l| l.contains(" INFO ") || l.contains(" WARN ")).collect();
    assert!(!logs.is_empty(), "{all:#?}");
    for l in &logs {
        let ts = l.split_whitespace().next().unwrap();
        assert!(is_rfc3339_utc(ts), "RFC 3339 timestamp: {l}");
    }
    let loaded = logs.iter().find(|l| l.contains("server certificate loaded")).expect("certificate line");
    let not_after = loaded.split("not_after=").nth(1).unwrap().split_whitespace().next().unwrap();
    assert!(is_rfc3339_utc(not_after), "not_after is a date: {loaded}");
}

/// At a terminal (a pseudo-terminal from `script`), the banner shows the connection string.
#[test]
fn a_person_at_a_terminal_sees_the_connection_string() {
    if !have("script", "--version") {
        eprintln!("SKIPPED a_person_at_a_terminal: util-linux `script` is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("server.pid");
    // The server runs in the background of the pseudo-terminal's shell, its stdout the terminal;
    // its pid goes to a file so the test stops exactly that process.
    let cmd = format!(
        "{BIN} serve --data-dir {} --listen-address 127.0.0.1 --https-port 0 --mqtt-port 0 --amqp-port 0 & echo $! > {}; wait",
        dir.path().join("data").display(),
        pid_file.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("service connection string:"));
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    if !pid.trim().is_empty() {
        let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
    }
    let _ = child.wait();
    let line = line.expect("banner line");
    assert!(line.contains("SharedAccessKeyName=provisioningserviceowner;SharedAccessKey="), "{line}");
}
