//! `opendps-bench decode`: what decoding one device certificate costs the OpenSSL this binary is
//! linked with, on one thread and on several at once. No server: it isolates the cost every X.509
//! handshake pays inside OpenSSL, and shows whether threads slow each other down (docs/tls.md,
//! "Which OpenSSL"). Build the bench with `--features dps-tls/vendored-openssl` to measure the
//! OpenSSL 3.5 that feature builds in.

use std::time::Instant;

use anyhow::{anyhow, bail};
use clap::Args;
use openssl::x509::X509;

use crate::pki::Ca;

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Decodes per thread and per row (at most 100 000).
    #[arg(long, default_value_t = 3000)]
    pub count: u32,
    /// The most threads decoding at once (at most 8); every count from 1 up to it is a row.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Write the Markdown report here too.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

/// One row: threads decoding at once, µs per decode on each, decodes/s of all together.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub threads: usize,
    pub micros: f64,
    pub per_second: f64,
}

/// The bounds of [`measure`]: at most 8 × 4.4 M decodes in all (minutes, not days, even with
/// OpenSSL 3.0's contention).
pub const MAX_COUNT: u32 = 100_000;
pub const MAX_THREADS: usize = 8;

/// Decodes `count` times on 1, 2, .. `threads` threads at once (after `count / 10` untimed each).
pub fn measure(der: &[u8], count: u32, threads: usize) -> anyhow::Result<Vec<Row>> {
    if !(1..=MAX_COUNT).contains(&count) || !(1..=MAX_THREADS).contains(&threads) {
        bail!("the count must be 1..={MAX_COUNT} and the threads 1..={MAX_THREADS}");
    }
    let mut rows = Vec::new();
    for n in 1..=threads {
        let started = Instant::now();
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let der = der.to_vec();
                std::thread::spawn(move || -> anyhow::Result<f64> {
                    for _ in 0..count / 10 {
                        X509::from_der(&der)?;
                    }
                    let t = Instant::now();
                    for _ in 0..count {
                        X509::from_der(&der)?;
                    }
                    Ok(t.elapsed().as_secs_f64())
                })
            })
            .collect();
        // Every thread is joined before any error is returned: none is left running.
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        let mut secs = Vec::new();
        for j in joined {
            secs.push(j.map_err(|_| anyhow!("a decoding thread panicked"))??);
        }
        let wall = started.elapsed().as_secs_f64();
        let mean = secs.iter().sum::<f64>() / secs.len() as f64;
        let decodes = f64::from(count + count / 10) * n as f64;
        rows.push(Row { threads: n, micros: mean * 1e6 / f64::from(count), per_second: decodes / wall });
    }
    Ok(rows)
}

/// A device certificate to decode (DER).
pub fn device_certificate() -> anyhow::Result<Vec<u8>> {
    let ca = Ca::new("opendps-bench decode CA")?;
    Ok(ca.issue("decode-device")?.certificate().to_der()?)
}

/// The table of `rows`.
pub fn report(rep: &mut crate::report::Report, der_len: usize, count: u32, rows: &[Row]) {
    rep.line(format!(
        "\nOne P-256 device certificate ({der_len} bytes of DER) decoded with `X509::from_der` (`d2i_X509`, \
         as OpenSSL's handshake decodes a client certificate), {count} times per thread after {} untimed; \
         OpenSSL of this run: {}.\n",
        count / 10,
        openssl::version::version()
    ));
    rep.line("| threads at once | µs per decode, per thread | decodes/s, all threads |");
    rep.line("|---|---|---|");
    for r in rows {
        rep.line(format!("| {} | {:.1} | {:.0} |", r.threads, r.micros, r.per_second));
    }
}

pub fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    let der = device_certificate()?;
    let rows = measure(&der, a.count, a.threads)?;
    let mut rep = crate::report::Report::new("Decoding a device certificate (X509 from DER)");
    report(&mut rep, der.len(), a.count, &rows);
    rep.finish(a.report.as_deref())
}
