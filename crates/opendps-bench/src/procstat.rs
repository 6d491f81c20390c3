//! What a process costs, read from /proc: CPU seconds, resident memory, open descriptors, and a
//! sampler thread that keeps the peak resident memory of a group of processes during a run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Clock ticks per second of the /proc/PID/stat CPU fields (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of /proc/PID/stat after the command name, so index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds used so far by `pid` (its own threads, not its children).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime is field 14 and stime field 15: indexes 11 and 12 here.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck())
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Resident memory now (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory over the process's life (VmHWM), in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The direct children of `pid` (nginx workers of their master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// A process and its children, measured together (nginx is a master and its workers; OpenDPS
/// is one process).
#[derive(Clone, Debug)]
pub struct Group {
    pub root: u32,
}

impl Group {
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.root];
        p.extend(children(self.root));
        p
    }
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().filter_map(cpu_seconds).sum()
    }
    pub fn rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(rss_kib).sum()
    }
}

/// Samples the resident memory of a group every 100 ms on its own thread; `stop` returns the
/// peak it saw.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(group: Group) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(group.rss_kib()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(group.rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            p.fetch_max(group.rss_kib(), Ordering::Relaxed);
        });
        RssSampler { stop, peak, thread: Some(thread) }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Raises this process's soft open-files limit to `n` (at most the hard limit: raising that
/// needs CAP_SYS_RESOURCE, which a sandbox may withhold) with util-linux's `prlimit --pid`: no
/// `unsafe` setrlimit here. Returns the soft limit in force afterwards.
pub fn raise_own_nofile(n: u64) -> u64 {
    let (soft, hard) = own_nofile();
    let want = n.min(hard);
    if soft >= want {
        return soft;
    }
    let pid = std::process::id();
    let _ = std::process::Command::new("prlimit")
        .args([format!("--pid={pid}"), format!("--nofile={want}:{hard}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    own_nofile().0
}

/// The (soft, hard) open-files limits of this process, from /proc/self/limits.
pub fn own_nofile() -> (u64, u64) {
    nofile_of("self").unwrap_or((1024, 1024))
}

/// The (soft, hard) open-files limits of process `pid` ("self" for this one).
pub fn nofile_of(pid: &str) -> Option<(u64, u64)> {
    let parse = |t: String| -> Option<(u64, u64)> {
        let rest = t.lines().find_map(|l| l.strip_prefix("Max open files"))?.to_owned();
        let mut w = rest.split_whitespace();
        let num = |s: Option<&str>| match s? {
            "unlimited" => Some(u64::MAX),
            v => v.parse().ok(),
        };
        Some((num(w.next())?, num(w.next())?))
    };
    std::fs::read_to_string(format!("/proc/{pid}/limits")).ok().and_then(parse)
}

/// One line of a file under /proc/sys (a kernel setting), trimmed; "?" when unreadable.
pub fn sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}")).map_or_else(|_| "?".to_owned(), |t| t.trim().to_owned())
}

/// The open-files limit to give a child: `n`, at most this process's hard limit (which a
/// child may take without privileges).
pub fn child_nofile(n: u64) -> u64 {
    n.min(own_nofile().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(hwm_kib(me).is_some_and(|k| k > 0));
        assert!(fd_count(me).is_some_and(|n| n >= 3));
        let (soft, hard) = own_nofile();
        assert!(soft > 0 && hard >= soft);
        assert!(child_nofile(1) == 1 && child_nofile(u64::MAX) == hard);
    }
}
