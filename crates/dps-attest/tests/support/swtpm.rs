//! A software TPM per test: one `swtpm` process on its own loopback address, ports and state
//! directory, driven with tpm2-tools (docs/tpm.md, "Testing with a software TPM").
//!
//! - Installs Debian's `swtpm`, `swtpm-tools` and `tpm2-tools` on first use when missing.
//! - Addresses come from 127.0.0.120–138 (the TPM tests' range); the ports are free ones.
//! - swtpm has three transient object slots and no resource manager: every helper here flushes
//!   what it leaves behind (`tpm2_flushcontext -t` / `-s`).
//! - The process is killed and the state directory removed when the `Swtpm` is dropped.
//!
//! Other crates' tests can include this file with `#[path = ".../swtpm.rs"] mod swtpm;`.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Persistent handles the SDKs use (Node, C, C#).
pub const EK_HANDLE: &str = "0x81010001";
pub const SRK_HANDLE: &str = "0x81000001";
pub const ID_KEY_HANDLE: &str = "0x81000100";

/// How long one tool call may take (swtpm answers in milliseconds; RSA key generation in a
/// debug libtpms can take a few seconds on a busy machine).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The output of a finished command.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `cmd` to completion within `timeout` (killed after it), capturing its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Ran {
    let mut child = match cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return Ran { ok: false, stdout: Vec::new(), stderr: format!("cannot start {cmd:?}: {e}") },
    };
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = t_out.join().unwrap_or_default();
    let mut stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    Ran { ok: status.is_some_and(|s| s.success()), stdout, stderr }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs swtpm and tpm2-tools when missing (once per process; apt runs under a file lock
/// so parallel test processes do not collide). Panics with apt's output when it fails.
pub fn ensure_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        if have("swtpm") && have("tpm2_createek") && have("tpm2_activatecredential") {
            return Ok(());
        }
        let script = "export DEBIAN_FRONTEND=noninteractive; \
            apt-get install -y -qq swtpm swtpm-tools tpm2-tools \
            || { apt-get update -qq && apt-get install -y -qq swtpm swtpm-tools tpm2-tools; }";
        let ran =
            run(Command::new("flock").args(["/tmp/opendps-apt.lock", "sh", "-c", script]), Duration::from_secs(900));
        if ran.ok && have("swtpm") && have("tpm2_createek") {
            Ok(())
        } else {
            Err(format!("installing swtpm and tpm2-tools failed:\n{}", ran.stderr))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// A free (address, port) where port + 1 is free too (swtpm's control channel).
fn free_address() -> (Ipv4Addr, u16) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for _ in 0..200 {
        // Spread processes and tests over 127.0.0.120–138.
        let n = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(std::process::id());
        let ip = Ipv4Addr::new(127, 0, 0, 120 + u8::try_from(n % 19).expect("< 19"));
        let Ok(a) = TcpListener::bind((ip, 0)) else { continue };
        let Ok(port) = a.local_addr().map(|x| x.port()) else { continue };
        if port == u16::MAX || TcpListener::bind((ip, port + 1)).is_err() {
            continue;
        }
        return (ip, port);
    }
    panic!("no free loopback port pair for swtpm");
}

/// One running software TPM.
#[derive(Debug)]
pub struct Swtpm {
    pub host: Ipv4Addr,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Swtpm {
    /// A fresh TPM (fresh state, so a fresh endorsement seed and EK), started up and listening.
    pub fn start() -> Swtpm {
        ensure_installed();
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("opendps-swtpm-").tempdir().expect("state dir");
            let (host, port) = free_address();
            let log = dir.path().join("swtpm.log");
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr={host}"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr={host}", port + 1))
                // swtpm sends TPM2_Startup(CLEAR) itself: the clients never do.
                .args(["--flags", "not-need-init,startup-clear"])
                .arg("--log")
                .arg(format!("file={},level=1", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start swtpm");
            let mut tpm = Swtpm { host, port, dir, child };
            if tpm.wait_listening(Duration::from_secs(10)) {
                return tpm;
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
            // Dropping `tpm` kills it; the port may have been taken meanwhile: try another.
        }
        panic!("swtpm did not start: {last}");
    }

    fn wait_listening(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let addr = SocketAddr::from((self.host, self.port));
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            // swtpm serves one client at a time; this probe connection is closed at once.
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The TCTI string for tpm2-tools (`TPM2TOOLS_TCTI`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host={},port={}", self.host, self.port)
    }

    /// The state directory (also a scratch directory for tool files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tpm2-tools command against this TPM.
    pub fn tool(&self, program: &str, args: &[&str]) -> Ran {
        run(Command::new(program).args(args).current_dir(self.dir()).env("TPM2TOOLS_TCTI", self.tcti()), TOOL_TIMEOUT)
    }

    /// Like [`Swtpm::tool`], panicking with the tool's message on failure.
    pub fn must(&self, program: &str, args: &[&str]) -> Vec<u8> {
        let r = self.tool(program, args);
        assert!(r.ok, "{program} {args:?} failed: {}", r.stderr);
        r.stdout
    }

    /// Flushes every transient object and loaded session (no resource manager here).
    pub fn flush(&self) {
        self.must("tpm2_flushcontext", &["-t"]);
        self.must("tpm2_flushcontext", &["-s"]);
    }

    /// Creates the EK (TCG/tpm2-tools template) at 0x81010001 and an SRK (RSA-2048,
    /// AES-128-CFB) at 0x81000001, as the SDKs find them; returns their `TPM2B_PUBLIC`s.
    pub fn provision_ek_srk(&self) -> (Vec<u8>, Vec<u8>) {
        self.must("tpm2_createek", &["-c", EK_HANDLE, "-G", "rsa", "-u", "ek.pub"]);
        self.flush();
        self.must(
            "tpm2_createprimary",
            &[
                "-C",
                "o",
                "-G",
                "rsa2048:aes128cfb",
                "-g",
                "sha256",
                "-c",
                "srk.ctx",
                "-a",
                "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
            ],
        );
        self.must("tpm2_evictcontrol", &["-C", "o", "-c", "srk.ctx", SRK_HANDLE]);
        self.flush();
        self.must("tpm2_readpublic", &["-c", SRK_HANDLE, "-o", "srk.pub"]);
        let ek = std::fs::read(self.path("ek.pub")).expect("ek.pub");
        let srk = std::fs::read(self.path("srk.pub")).expect("srk.pub");
        (ek, srk)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
