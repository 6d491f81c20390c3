//! The figures of one load: counts, failures by cause, latency percentiles, CPU and memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Nearest-rank percentile `p` (0..=100) of ascending `sorted` microseconds.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Milliseconds with two decimals, or "-" for nothing.
pub fn ms(micros: Option<u64>) -> String {
    micros.map_or_else(|| "-".to_owned(), |u| format!("{:.2}", u as f64 / 1000.0))
}

/// What a process group (OpenDPS, or nginx master + workers) used during a load.
#[derive(Clone, Debug, Default)]
pub struct ServerUsage {
    /// User + system CPU seconds during the load.
    pub cpu_seconds: f64,
    /// Peak resident memory sampled during the load (KiB).
    pub peak_rss_kib: u64,
}

/// The outcome of one load.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub label: String,
    /// Devices (or connections) started.
    pub attempted: u64,
    pub ok: u64,
    pub failures: BTreeMap<String, u64>,
    /// From the first start to the last completion.
    pub wall: Duration,
    /// Whole device: TCP connect to closed (µs), ascending.
    pub latency: Vec<u64>,
    /// TCP connect + TLS handshake (µs), ascending.
    pub handshake: Vec<u64>,
    pub server: ServerUsage,
    /// CPU seconds the load generator itself used.
    pub client_cpu_seconds: f64,
    /// Whether `--max-seconds` stopped the load before every device ran.
    pub stopped_by_time: bool,
    /// The cipher suite of the first successful connection.
    pub cipher: Option<String>,
}

impl LoadResult {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Successes per second of wall time.
    pub fn rate(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// Server CPU milliseconds per success: the figure least moved by a noisy neighbour.
    pub fn server_cpu_ms_per_op(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.server.cpu_seconds * 1000.0 / self.ok as f64)
    }

    pub fn client_cpu_ms_per_op(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.client_cpu_seconds * 1000.0 / self.ok as f64)
    }

    pub fn p(&self, q: f64) -> Option<u64> {
        percentile(&self.latency, q)
    }

    pub fn failures_text(&self) -> String {
        if self.failures.is_empty() {
            return "none".to_owned();
        }
        let mut s = String::new();
        for (cause, n) in &self.failures {
            if !s.is_empty() {
                s.push_str("; ");
            }
            let _ = write!(s, "{n} × {cause}");
        }
        s
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "{}: {}/{} ok in {:.1} s = {:.1}/s; latency ms p50 {} p90 {} p99 {} max {}; handshake p50 {} ms; \
             server CPU {:.2} s ({} ms/op), peak RSS {:.1} MiB; client CPU {:.2} s; failures: {}{}",
            self.label,
            self.ok,
            self.attempted,
            self.wall.as_secs_f64(),
            self.rate(),
            ms(self.p(50.0)),
            ms(self.p(90.0)),
            ms(self.p(99.0)),
            ms(self.latency.last().copied()),
            ms(percentile(&self.handshake, 50.0)),
            self.server.cpu_seconds,
            self.server_cpu_ms_per_op().map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            self.server.peak_rss_kib as f64 / 1024.0,
            self.client_cpu_seconds,
            self.failures_text(),
            if self.stopped_by_time { " (stopped by --max-seconds)" } else { "" },
        )
    }
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn medians_and_rates() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let r = LoadResult { ok: 50, wall: Duration::from_secs(2), ..LoadResult::default() };
        assert!((r.rate() - 25.0).abs() < 1e-9);
        assert_eq!(r.failures_text(), "none");
    }
}
