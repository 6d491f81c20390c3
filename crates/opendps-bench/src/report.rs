//! The report: a Markdown text with the date, the machine and the command, then the figures.
//! Printed at the end of every subcommand and written to `--report FILE` when asked.

use std::fmt::Write as _;
use std::path::Path;

use crate::stats::{ms, percentile, LoadResult};

/// A Markdown report being written.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// The machine, one item per line.
pub fn machine() -> Vec<String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kib: u64 =
        first_line("/proc/meminfo", "MemTotal").and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    vec![
        format!("cores (nproc): {cores} ({cpu})"),
        format!("memory: {:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
        format!("kernel: Linux {kernel}"),
        format!("OpenSSL of the load generator: {}", openssl::version::version()),
        format!(
            "the server, nginx and the load generator share these {cores} cores: every rate here is \
             the machine's, split between both sides"
        ),
    ]
}

impl Report {
    pub fn new(title: &str) -> Report {
        let mut r = Report::default();
        let now = dps_core::time::format_utc(std::time::SystemTime::now());
        let _ = writeln!(r.text, "# {title}\n");
        let _ = writeln!(r.text, "- date: {now}");
        for m in machine() {
            let _ = writeln!(r.text, "- {m}");
        }
        let args: Vec<String> = std::env::args().collect();
        let _ = writeln!(r.text, "- command: `{}`", args.join(" "));
        r.text.push('\n');
        r
    }

    pub fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    /// A table of loads.
    pub fn loads(&mut self, loads: &[&LoadResult]) {
        self.line(
            "| load | ok / started | wall s | per s | p50 ms | p90 ms | p99 ms | max ms | handshake p50 ms | \
             server CPU s | server CPU ms/op | client CPU ms/op | server peak RSS MiB | failures |",
        );
        self.line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in loads {
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            self.line(format!(
                "| {} | {}/{}{} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {:.1} | {} |",
                r.label,
                r.ok,
                r.attempted,
                if r.stopped_by_time { " (time bound)" } else { "" },
                r.wall.as_secs_f64(),
                r.rate(),
                ms(r.p(50.0)),
                ms(r.p(90.0)),
                ms(r.p(99.0)),
                ms(r.latency.last().copied()),
                ms(percentile(&r.handshake, 50.0)),
                r.server.cpu_seconds,
                opt(r.server_cpu_ms_per_op()),
                opt(r.client_cpu_ms_per_op()),
                r.server.peak_rss_kib as f64 / 1024.0,
                r.failures_text(),
            ));
        }
        self.line("");
    }

    /// Prints the report and writes it to `path` when given.
    pub fn finish(&self, path: Option<&Path>) -> anyhow::Result<()> {
        println!("\n{}", self.text);
        if let Some(p) = path {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(p, &self.text)?;
            eprintln!("report written to {}", p.display());
        }
        Ok(())
    }
}

/// `met` / `missed` for a target.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}
