//! Throwaway PostgreSQL clusters for tests (feature `test-cluster`): `initdb` into a temp
//! directory, `pg_ctl start` on a loopback address and a port of 55400–55499, trust
//! authentication, and `pg_ctl stop -m immediate` plus removal of the directory on drop. It never
//! touches a packaged cluster (port 5432, `/etc/postgresql`).
//!
//! The server binaries are looked up under `OPENDPS_PG_BIN` or `/usr/lib/postgresql/<newest>/bin`;
//! when none are there and the process runs as root with `apt-get`, Debian's `postgresql` package
//! is installed, otherwise the error says what to install. PostgreSQL refuses to run as root, so
//! a root process runs the server binaries as the OS user `postgres` (`runuser`), which owns the
//! temp directory.
//!
//! A cluster can also be a streaming standby of another one ([`TestCluster::standby_of`]), be
//! promoted, and be killed hard, for the failover tests.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The ports throwaway clusters may use.
pub const PORTS: std::ops::RangeInclusive<u16> = 55400..=55499;

/// What went wrong while making or driving a throwaway cluster (the message says what to do).
#[derive(Debug)]
pub struct ClusterError(String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn err(msg: impl Into<String>) -> ClusterError {
    ClusterError(msg.into())
}

/// How to set a cluster up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The loopback address it listens on (default 127.0.0.1).
    pub host: IpAddr,
    /// Extra `postgresql.conf` lines (appended last, so they win).
    pub conf: Vec<String>,
    /// Extra `pg_hba.conf` lines, placed before the trust lines.
    pub hba: Vec<String>,
    /// Files copied into the data directory before start (name, contents), e.g. a certificate
    /// and key for `ssl = on`; written 0600.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Default for Options {
    fn default() -> Options {
        Options { host: IpAddr::from([127, 0, 0, 1]), conf: Vec::new(), hba: Vec::new(), files: Vec::new() }
    }
}

/// One running throwaway cluster; stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    host: IpAddr,
    port: u16,
    running: bool,
}

/// Where the server binaries are (found once per process; installed if missing and possible).
pub fn binaries() -> Result<PathBuf, ClusterError> {
    static BIN: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let cell = BIN.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = guard.as_ref() {
        return Ok(b.clone());
    }
    let found = match find_binaries() {
        Some(b) => b,
        None => {
            install_postgresql()?;
            find_binaries()
                .ok_or_else(|| err("PostgreSQL was installed but no initdb under /usr/lib/postgresql/*/bin"))?
        }
    };
    *guard = Some(found.clone());
    Ok(found)
}

fn find_binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OPENDPS_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let bin = entry.path().join("bin");
        let version = entry.file_name().to_str().and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        if let (Some(v), true) = (version, bin.join("initdb").exists()) {
            if best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, b)| b)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn install_postgresql() -> Result<(), ClusterError> {
    let hint = "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): install Debian's \
                `postgresql` package (apt-get install postgresql), set OPENDPS_PG_BIN to a directory holding initdb \
                and pg_ctl, or point OPENDPS_TEST_POSTGRES_URL at a database";
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(err(hint));
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let install = ["install", "-y", "-q", "--no-install-recommends", "postgresql"];
    if apt(&install) || (apt(&["update", "-q"]) && apt(&install)) {
        Ok(())
    } else {
        Err(err(format!("{hint} (apt-get install postgresql failed)")))
    }
}

/// Runs a server binary, as `postgres` when this process is root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> Result<Output, ClusterError> {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).env_remove("PGDATA").env("LC_ALL", "C");
    cmd.output().map_err(|e| err(format!("cannot run {}: {e}", exe.display())))
}

fn check(out: Output, what: &str) -> Result<Output, ClusterError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn temp_dir() -> Result<tempfile::TempDir, ClusterError> {
    let dir = tempfile::Builder::new()
        .prefix("opendps-pg-")
        .tempdir()
        .map_err(|e| err(format!("cannot create a temp directory: {e}")))?;
    if is_root() {
        check(
            Command::new("chown")
                .args(["postgres:", &dir.path().to_string_lossy()])
                .output()
                .map_err(|e| err(format!("chown: {e}")))?,
            "chown postgres: (the OS user `postgres` comes with Debian's postgresql package)",
        )?;
    }
    Ok(dir)
}

/// The next candidate port: spread by process id so parallel test binaries rarely collide.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = PORTS.end() - PORTS.start() + 1;
    let base = u16::try_from(std::process::id() % u32::from(span)).unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PORTS.start() + (base + n) % span
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    f.write_all(data).map_err(|e| err(format!("{}: {e}", path.display())))?;
    if is_root() {
        check(
            Command::new("chown")
                .args(["postgres:", &path.to_string_lossy()])
                .output()
                .map_err(|e| err(e.to_string()))?,
            "chown",
        )?;
    }
    Ok(())
}

fn append(path: &Path, lines: &[String]) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    for l in lines {
        writeln!(f, "{l}").map_err(|e| err(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

impl TestCluster {
    /// A fresh cluster on 127.0.0.1 with the default options.
    pub fn start() -> Result<TestCluster, ClusterError> {
        TestCluster::start_with(&Options::default())
    }

    /// A fresh cluster with `opts`.
    pub fn start_with(opts: &Options) -> Result<TestCluster, ClusterError> {
        let bin = binaries()?;
        let dir = temp_dir()?;
        let data = dir.path().join("data");
        let data_s = data.to_string_lossy().into_owned();
        check(
            run(
                &bin,
                "initdb",
                &[
                    "-D",
                    &data_s,
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=trust",
                    "--no-sync",
                ],
            )?,
            "initdb",
        )?;
        let mut conf = vec![
            String::new(),
            "# ---- opendps test cluster ----".into(),
            "unix_socket_directories = ''".into(),
            "fsync = off".into(),
            "wal_level = replica".into(),
            "max_wal_senders = 5".into(),
            "wal_log_hints = on".into(),
            "hot_standby = on".into(),
            "wal_retrieve_retry_interval = 200ms".into(),
            "wal_receiver_status_interval = 1s".into(),
        ];
        conf.extend(opts.conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf)?;
        let hba_path = data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba_path).map_err(|e| err(format!("pg_hba.conf: {e}")))?;
        let mut hba: String = opts.hba.iter().map(|l| format!("{l}\n")).collect();
        hba += "host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n";
        hba += &old;
        write_private(&hba_path, hba.as_bytes())?;
        for (name, contents) in &opts.files {
            write_private(&data.join(name), contents)?;
        }
        let mut c = TestCluster { dir, bin, host: opts.host, port: 0, running: false };
        c.boot()?;
        Ok(c)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`, physical slot `name`), listening on
    /// `host`. With `synchronous`, the primary waits for it on every commit
    /// (`synchronous_commit = on`), and this returns once it is the synchronous standby.
    pub fn standby_of(
        primary: &TestCluster,
        host: IpAddr,
        name: &str,
        synchronous: bool,
    ) -> Result<TestCluster, ClusterError> {
        let dir = temp_dir()?;
        let data = dir.path().join("data");
        let (ph, pp) = (primary.host.to_string(), primary.port.to_string());
        check(
            run(
                &primary.bin,
                "pg_basebackup",
                &[
                    "-h",
                    &ph,
                    "-p",
                    &pp,
                    "-U",
                    "postgres",
                    "-D",
                    &data.to_string_lossy(),
                    "-R",
                    "-X",
                    "stream",
                    "-C",
                    "-S",
                    name,
                    "--checkpoint=fast",
                    "--no-sync",
                ],
            )?,
            "pg_basebackup",
        )?;
        append(
            &data.join("postgresql.auto.conf"),
            &[format!(
                "primary_conninfo = 'host={ph} port={pp} user=postgres application_name={name} connect_timeout=2'"
            )],
        )?;
        let mut c = TestCluster { dir, bin: primary.bin.clone(), host, port: 0, running: false };
        c.boot()?;
        if synchronous {
            primary.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'"))?;
            primary.psql("SELECT pg_reload_conf()")?;
        }
        let want = if synchronous { "streaming/sync" } else { "streaming/async" };
        for _ in 0..600 {
            let st = primary.psql(&format!(
                "SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
            ))?;
            if st == want {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(err(format!("standby {name} is not {want} after 30 s")))
    }

    /// Starts the server on a free port of [`PORTS`] (retrying the next one when taken).
    fn boot(&mut self) -> Result<(), ClusterError> {
        let data = self.data_dir().to_string_lossy().into_owned();
        let log = self.dir.path().join("server.log");
        let mut last = String::new();
        for _ in 0..20 {
            let port = next_port();
            if TcpListener::bind((self.host, port)).is_err() {
                continue;
            }
            let opts = format!("-p {port} -h {}", self.host);
            let out = run(
                &self.bin,
                "pg_ctl",
                &["-D", &data, "-l", &log.to_string_lossy(), "-w", "-t", "60", "-o", &opts, "start"],
            )?;
            if out.status.success() {
                self.port = port;
                self.running = true;
                return Ok(());
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
            if !last.contains("already in use") {
                break;
            }
        }
        let tail: Vec<&str> = last.lines().rev().take(8).collect();
        Err(err(format!(
            "PostgreSQL did not start on {}: {}",
            self.host,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )))
    }

    /// `postgres://postgres@host:port/db` (trust authentication, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@{}:{}/{db}", self.host, self.port)
    }

    /// The address it listens on.
    pub fn host(&self) -> IpAddr {
        self.host
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one statement with `psql` on database `postgres`; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        let (h, p) = (self.host.to_string(), self.port.to_string());
        let out = check(
            run(
                &self.bin,
                "psql",
                &[
                    "-X",
                    "-q",
                    "-At",
                    "-h",
                    &h,
                    "-p",
                    &p,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ],
            )?,
            "psql",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Kills the server hard (`pg_ctl stop -m immediate`: no shutdown checkpoint, clients cut).
    pub fn kill(&mut self) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        // A stopped (black-holed) server would not see the stop signal.
        let _ = self.signal("CONT");
        self.running = false;
        let data = self.data_dir().to_string_lossy().into_owned();
        check(run(&self.bin, "pg_ctl", &["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"])?, "pg_ctl stop")?;
        Ok(())
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, …) to the server and every process it started:
    /// `STOP` makes the database a black hole (connections open, nothing answered).
    pub fn signal(&self, signal: &str) -> Result<(), ClusterError> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .map_err(|e| err(format!("postmaster.pid: {e}")))?;
        let pid = pid_file.lines().next().unwrap_or_default().trim().to_owned();
        let children = Command::new("pgrep").args(["-P", &pid]).output().map_err(|e| err(format!("pgrep: {e}")))?;
        let mut pids = vec![pid];
        pids.extend(String::from_utf8_lossy(&children.stdout).split_whitespace().map(str::to_owned));
        let out = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .output()
            .map_err(|e| err(format!("kill: {e}")))?;
        check(out, "kill")?;
        Ok(())
    }

    /// Starts a killed server again, on a free port (its URL may change): crash recovery, and
    /// whatever role its data directory says (an old primary comes back as a primary).
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        self.kill()?;
        self.boot()
    }

    /// Promotes a standby (`pg_ctl promote`, waiting until it is out of recovery).
    pub fn promote(&self) -> Result<(), ClusterError> {
        let data = self.data_dir().to_string_lossy().into_owned();
        check(run(&self.bin, "pg_ctl", &["-D", &data, "-w", "-t", "60", "promote"])?, "pg_ctl promote")?;
        Ok(())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The database a test should use: `OPENDPS_TEST_POSTGRES_URL` when set, else a fresh cluster's
/// `postgres` database (keep the returned cluster alive for as long as the URL is used).
pub fn test_database() -> Result<(String, Option<TestCluster>), ClusterError> {
    if let Ok(url) = std::env::var("OPENDPS_TEST_POSTGRES_URL") {
        return Ok((url, None));
    }
    let c = TestCluster::start()?;
    Ok((c.url("postgres"), Some(c)))
}
