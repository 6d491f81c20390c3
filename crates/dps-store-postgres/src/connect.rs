//! How a node reaches PostgreSQL: the URL (with libpq's `sslmode` and `sslrootcert`), TLS
//! through `dps-tls`'s OpenSSL settings, and the bounds that make an unreachable database an
//! answer (503) instead of a hang: connect timeout, TCP keepalives and user timeout, pool wait,
//! and one deadline per store operation.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use dps_core::store::StoreError;
use dps_tls::client::ServerCheck;
use percent_encoding::percent_decode_str;
use tokio_postgres::config::SslMode as DriverSslMode;

/// PostgreSQL's `sslmode` (libpq's meaning; `allow` is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, certificate not checked (libpq's default).
    Prefer,
    /// TLS required, certificate not checked (checked like `verify-ca` when `sslrootcert` is
    /// given, as libpq does).
    Require,
    /// TLS, chain checked against `sslrootcert` (or the system roots).
    VerifyCa,
    /// TLS, chain and host name (or address) checked.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<SslMode, StoreError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(message(format!(
                    "sslmode={other} is not supported (use disable, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }
}

/// The bounds of every database call.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect plus the TLS and startup handshake (unless the URL sets `connect_timeout`).
    pub connect: Duration,
    /// One store operation, waiting for a pooled connection included: past it the caller gets
    /// `StoreError::Unavailable` (503). The database may still finish a commit that was in
    /// flight: a commit is never cancelled, its outcome is then unknown to the caller.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { connect: Duration::from_secs(2), operation: Duration::from_secs(5) }
    }
}

/// A flat error: the driver's whole text once (its message and causes, or the server's severity,
/// SQLSTATE and message), no source, so no log line or error body repeats a part of it; and the
/// SQLSTATE when the server sent one.
#[derive(Debug)]
pub struct PgError {
    pub(crate) text: String,
    pub(crate) code: Option<String>,
    /// The connection was lost or the server is shutting down or starting up (SQLSTATE class
    /// 08, 57P01–57P03): idempotent work may be retried on a fresh connection.
    pub(crate) retryable: bool,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for PgError {}

impl PgError {
    /// Whether `e` is a lost connection or a server going down or coming up.
    pub fn is_retryable(e: &StoreError) -> bool {
        match e {
            StoreError::Unavailable(inner) => inner.downcast_ref::<PgError>().is_some_and(|p| p.retryable),
            _ => false,
        }
    }

    /// The SQLSTATE (`25006`, `57P01`, …) when the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

/// A store error from a message of our own.
pub(crate) fn message(text: String) -> StoreError {
    StoreError::unavailable(PgError { text, code: None, retryable: false })
}

/// A store error from the driver's error, its text once.
pub(crate) fn driver(e: tokio_postgres::Error) -> StoreError {
    let code = e.code().map(|c| c.code().to_owned());
    let retryable = match &code {
        Some(c) => c.starts_with("08") || matches!(c.as_str(), "57P01" | "57P02" | "57P03"),
        None => e.is_closed() || e.to_string().starts_with("error communicating"),
    };
    let text = match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => dps_core::error::DisplayChain(&e).to_string(),
    };
    StoreError::unavailable(PgError { text, code, retryable })
}

/// A pool error (wait timeout, connect failure), its text once.
pub(crate) fn pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => driver(e),
        deadpool_postgres::PoolError::Timeout(_) => message("no database connection became free in time".into()),
        deadpool_postgres::PoolError::Closed => message("the connection pool is closed".into()),
        other => message(other.to_string()),
    }
}

/// The URL split into what the driver parses and what this crate handles (TLS).
struct Parsed {
    driver_url: String,
    mode: SslMode,
    root_cert: Option<PathBuf>,
}

fn parse(url: &str) -> Result<Parsed, StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root_cert, mut kept) = (SslMode::Prefer, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || percent_decode_str(v).decode_utf8_lossy().into_owned();
        match k {
            "sslmode" => mode = value().parse()?,
            "sslrootcert" => root_cert = Some(PathBuf::from(value())),
            _ => kept.push(pair),
        }
    }
    let driver_url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok(Parsed { driver_url, mode, root_cert })
}

/// A pool for `url` (at most `max_connections`), TLS as its `sslmode` says, bounded by `t`.
pub(crate) fn pool_for(url: &str, max_connections: usize, t: Timeouts) -> Result<Pool, StoreError> {
    let p = parse(url)?;
    let mut cfg = tokio_postgres::Config::from_str(&p.driver_url)
        .map_err(|e| message(format!("the store URL is not valid: {}", driver(e))))?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(t.connect);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        // Unacknowledged data on a dead link fails the connection instead of waiting for TCP's
        // retransmission limit (minutes).
        cfg.tcp_user_timeout(t.operation);
    }
    cfg.keepalives(true).keepalives_idle(Duration::from_secs(5)).keepalives_interval(Duration::from_secs(1));
    cfg.keepalives_retries(3);
    let check = match (p.mode, &p.root_cert) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => ServerCheck::Nothing,
        (SslMode::Require | SslMode::VerifyCa, _) => ServerCheck::Chain,
        (SslMode::VerifyFull, _) => ServerCheck::ChainAndName,
    };
    cfg.ssl_mode(match p.mode {
        SslMode::Disable => DriverSslMode::Disable,
        SslMode::Prefer => DriverSslMode::Prefer,
        _ => DriverSslMode::Require,
    });
    let mgr_cfg = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let mgr = if p.mode == SslMode::Disable {
        Manager::from_config(cfg, tokio_postgres::NoTls, mgr_cfg)
    } else {
        let roots = match &p.root_cert {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| message(format!("cannot read sslrootcert {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let connector = dps_tls::client::library_connector(check, roots.as_deref())
            .map_err(|e| message(format!("PostgreSQL TLS settings: {}", dps_tls::DisplayChain(&e))))?;
        let mut tls = postgres_openssl::MakeTlsConnector::new(connector);
        tls.set_callback(dps_tls::client::per_connection(check));
        Manager::from_config(cfg, tls, mgr_cfg)
    };
    Pool::builder(mgr)
        .max_size(max_connections.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(t.operation))
        .create_timeout(Some(t.operation))
        .recycle_timeout(Some(t.operation))
        .build()
        .map_err(|e| message(format!("PostgreSQL pool: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let p =
            parse("postgres://u@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(p.driver_url, "postgres://u@h:5/db?application_name=x");
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let p = parse("postgres://u@h/db").unwrap();
        assert_eq!((p.driver_url.as_str(), p.mode, p.root_cert), ("postgres://u@h/db", SslMode::Prefer, None));
        let e = parse("postgres://u@h/db?sslmode=allow").err().unwrap();
        assert!(dps_core::error::DisplayChain(&e).to_string().contains("sslmode=allow is not supported"));
    }

    #[test]
    fn driver_errors_are_said_once() {
        let e = tokio_postgres::Config::from_str("postgres://u@h/db?bogus=1").err().unwrap();
        let text = dps_core::error::DisplayChain(&driver(e)).to_string();
        assert_eq!(text.matches("bogus").count(), 1, "{text}");
    }
}
