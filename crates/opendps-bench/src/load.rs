//! Runs N devices with at most C at once, bounded in count (N) and in time (`max`): after `max`
//! no device starts, and those in flight get a few seconds more before they are cut and counted
//! as such. Shows progress on stderr once a second.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::{Failure, Timing};
use crate::procstat::{self, Group, RssSampler};
use crate::stats::{LoadResult, ServerUsage};

/// How a load runs.
#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub n: usize,
    pub concurrency: usize,
    /// No device starts after this.
    pub max: Duration,
    /// One device longer than this fails with a timeout.
    pub device_timeout: Duration,
    /// Print progress lines.
    pub progress: bool,
}

/// After `max`, how long devices already started may still finish.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Worker {
    latency: Vec<u64>,
    handshake: Vec<u64>,
    failures: BTreeMap<String, u64>,
    cipher: Option<&'static str>,
    last_done: Option<Instant>,
}

/// Runs `device(i)` for i in 0..n; `server` is measured (CPU, peak RSS) meanwhile.
pub async fn run<F, Fut>(spec: &Spec, server: &Group, device: F) -> LoadResult
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Timing, Failure>> + Send + 'static,
{
    let device = Arc::new(device);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let sampler = RssSampler::start(server.clone());
    let cpu0 = server.cpu_seconds();
    let me = std::process::id();
    let client0 = procstat::cpu_seconds(me).unwrap_or(0.0);
    let start = Instant::now();
    let deadline = start + spec.max;

    let progress = spec.progress.then(|| {
        let (ok, failed, label, n) = (ok.clone(), failed.clone(), spec.label.clone(), spec.n);
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let (o, f) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
                eprintln!(
                    "  [{label}] {:>6.1} s  {}/{n} done  ok {o}  failed {f}  {}/s in the last second",
                    start.elapsed().as_secs_f64(),
                    o + f,
                    o - last
                );
                last = o;
            }
        })
    });

    let mut workers = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let (device, next, ok, failed) = (device.clone(), next.clone(), ok.clone(), failed.clone());
        let (n, device_timeout) = (spec.n, spec.device_timeout);
        workers.push(tokio::spawn(async move {
            let mut w = Worker::default();
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let left = (deadline + GRACE).saturating_duration_since(now);
                let outcome = tokio::time::timeout(device_timeout.min(left), device(i)).await;
                w.last_done = Some(Instant::now());
                match outcome {
                    Ok(Ok(t)) => {
                        w.latency.push(t.total.as_micros() as u64);
                        w.handshake.push(t.handshake.as_micros() as u64);
                        w.cipher = w.cipher.or(t.cipher);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(Failure(cause))) => {
                        *w.failures.entry(cause).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        let cause = if device_timeout <= left {
                            format!("timeout (one device over {} s)", device_timeout.as_secs())
                        } else {
                            "cut at the --max-seconds bound".to_owned()
                        };
                        *w.failures.entry(cause).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            w
        }));
    }

    let mut r = LoadResult { label: spec.label.clone(), ..LoadResult::default() };
    let mut last_done = start;
    for h in workers {
        match h.await {
            Ok(w) => {
                r.latency.extend(w.latency);
                r.handshake.extend(w.handshake);
                for (k, v) in w.failures {
                    *r.failures.entry(k).or_default() += v;
                }
                r.cipher = r.cipher.take().or(w.cipher.map(str::to_owned));
                last_done = last_done.max(w.last_done.unwrap_or(start));
            }
            Err(e) => *r.failures.entry(format!("bench worker died: {e}")).or_default() += 1,
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    r.wall = last_done - start;
    r.server = ServerUsage { cpu_seconds: server.cpu_seconds() - cpu0, peak_rss_kib: sampler.stop() };
    r.client_cpu_seconds = procstat::cpu_seconds(me).unwrap_or(0.0) - client0;
    r.latency.sort_unstable();
    r.handshake.sort_unstable();
    r.ok = r.latency.len() as u64;
    r.attempted = r.ok + r.failed();
    r.stopped_by_time = next.load(Ordering::Relaxed) < spec.n;
    r
}
