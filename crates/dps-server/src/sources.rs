//! Per-source limits, applied at accept before TLS on every TLS listener together
//! (docs/limits.md, "Per source"): open connections per source, and new connections (each one
//! a handshake) per second per source with a burst (GCRA, `governor`). A source is an IPv4
//! address, or an IPv6 /64 (one host's usual allocation). A refused connection is closed at
//! once; refusals are logged once per source per interval, the rest counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A source: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => a.fmt(f),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Why a source's new connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The source has `max_connections_per_source` open.
    Connections,
    /// The source opened connections faster than its rate and burst.
    Rate,
}

impl Refusal {
    /// The `reason` label of `connections_refused`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections_per_source",
            Refusal::Rate => "handshakes_per_second_per_source",
        }
    }
}

/// The settings (`[limits]`); 0 turns a limit off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceSettings {
    pub max_connections: u32,
    pub per_second: u32,
    pub burst: u32,
    pub log_interval: Duration,
}

/// At most this many sources get their own refusal line per interval; the others are summed
/// into the summary line.
const LOGGED_SOURCES: usize = 64;
/// The rate limiter forgets sources whose bucket is full again this often (bounds its memory).
const FORGET_EVERY: Duration = Duration::from_secs(10);

/// The per-source state shared by every accept loop.
#[derive(Debug)]
pub(crate) struct SourceLimits {
    max_connections: u32,
    per_second: u32,
    rate: Option<DefaultKeyedRateLimiter<Source>>,
    state: Mutex<State>,
    log_interval: Duration,
}

#[derive(Debug)]
struct State {
    /// Open connections per source (a source with none has no entry).
    open: HashMap<Source, u32>,
    forgot_at: Instant,
    log: RefusalLog,
}

/// Refusal lines: one per source per interval, for at most [`LOGGED_SOURCES`] sources.
#[derive(Debug)]
struct RefusalLog {
    start: Instant,
    /// Refusals not logged in this interval, per logged source.
    sources: HashMap<Source, u64>,
    /// Refusals of sources beyond [`LOGGED_SOURCES`].
    others: u64,
}

/// A connection admitted for its source: counts as open until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    limits: Arc<SourceLimits>,
    source: Source,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.limits.max_connections == 0 {
            return;
        }
        if let Ok(mut s) = self.limits.state.lock() {
            if let Some(n) = s.open.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.open.remove(&self.source);
                }
            }
        }
    }
}

impl SourceLimits {
    pub(crate) fn new(s: SourceSettings) -> Arc<Self> {
        let rate = NonZeroU32::new(s.per_second).map(|per_second| {
            let burst = NonZeroU32::new(s.burst).unwrap_or(per_second);
            RateLimiter::hashmap(Quota::per_second(per_second).allow_burst(burst))
        });
        let now = Instant::now();
        Arc::new(SourceLimits {
            max_connections: s.max_connections,
            per_second: s.per_second,
            rate,
            state: Mutex::new(State {
                open: HashMap::new(),
                forgot_at: now,
                log: RefusalLog { start: now, sources: HashMap::new(), others: 0 },
            }),
            log_interval: s.log_interval,
        })
    }

    /// Admits a new connection from `ip`, or says why not (and logs it within the budget).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, listener: &str) -> Result<Admitted, Refusal> {
        let source = Source::of(ip);
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else {
            return Ok(Admitted { limits: self.clone(), source });
        };
        self.summarize(&mut s.log, now);
        let open = s.open.get(&source).copied().unwrap_or(0);
        let refusal = if self.max_connections > 0 && open >= self.max_connections {
            Some(Refusal::Connections)
        } else if self.rate.as_ref().is_some_and(|r| r.check_key(&source).is_err()) {
            Some(Refusal::Rate)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.log_refusal(&mut s.log, source, r, listener);
            return Err(r);
        }
        if self.max_connections > 0 {
            *s.open.entry(source).or_insert(0) += 1;
        }
        if now.saturating_duration_since(s.forgot_at) >= FORGET_EVERY {
            s.forgot_at = now;
            if let Some(r) = &self.rate {
                r.retain_recent();
                r.shrink_to_fit();
            }
        }
        Ok(Admitted { limits: self.clone(), source })
    }

    /// Sources the rate limiter remembers (bounded by `retain_recent`).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.rate.as_ref().map_or(0, |r| r.len())
    }

    fn log_refusal(&self, log: &mut RefusalLog, source: Source, r: Refusal, listener: &str) {
        if let Some(n) = log.sources.get_mut(&source) {
            *n += 1;
        } else if log.sources.len() < LOGGED_SOURCES {
            log.sources.insert(source, 0);
            let (limit, what) = match r {
                Refusal::Connections => (self.max_connections, "open connections"),
                Refusal::Rate => (self.per_second, "new connections per second (with its burst)"),
            };
            tracing::warn!(
                listener,
                %source,
                reason = r.reason(),
                limit,
                "source over its limit of {what}; closing its new connection (its further refusals are counted, one line per {:?})",
                self.log_interval
            );
        } else {
            log.others += 1;
        }
    }

    /// Once an interval is over: one line with what was counted and not logged.
    fn summarize(&self, log: &mut RefusalLog, now: Instant) {
        if now.saturating_duration_since(log.start) < self.log_interval {
            return;
        }
        let counted: u64 = log.sources.values().sum::<u64>() + log.others;
        if counted > 0 {
            tracing::warn!(
                refused = counted,
                sources_logged = log.sources.len(),
                refused_from_other_sources = log.others,
                "connections refused by per-source limits in the last {:?}, beyond the lines logged",
                self.log_interval
            );
        }
        log.start = now;
        log.sources.clear();
        log.sources.shrink_to(LOGGED_SOURCES);
        log.others = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u32, per_second: u32, burst: u32) -> Arc<SourceLimits> {
        SourceLimits::new(SourceSettings { max_connections, per_second, burst, log_interval: Duration::from_secs(10) })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn open_connections_per_source_are_capped_and_freed() {
        let l = limits(2, 0, 0);
        let a = l.admit(ip("10.0.0.1"), "https").expect("first");
        let _b = l.admit(ip("10.0.0.1"), "mqtt").expect("second, on another listener");
        assert_eq!(l.admit(ip("10.0.0.1"), "amqp").err(), Some(Refusal::Connections));
        let _other = l.admit(ip("10.0.0.2"), "https").expect("another source is not affected");
        drop(a);
        let _c = l.admit(ip("10.0.0.1"), "https").expect("a slot freed");
    }

    #[test]
    fn new_connections_per_source_are_rate_limited_with_a_burst() {
        let l = limits(0, 1, 5);
        let admitted = (0..20).filter(|_| l.admit(ip("10.0.0.1"), "https").is_ok()).count();
        assert_eq!(admitted, 5, "the burst, then the rate (1/s)");
        assert_eq!(l.admit(ip("10.0.0.1"), "https").err(), Some(Refusal::Rate));
        assert!(l.admit(ip("10.0.0.2"), "https").is_ok(), "another source has its own bucket");
    }

    #[test]
    fn zero_turns_the_limits_off() {
        let l = limits(0, 0, 0);
        let held: Vec<_> = (0..5000).map(|_| l.admit(ip("127.0.0.1"), "https").expect("no limit")).collect();
        assert_eq!(held.len(), 5000);
    }

    #[test]
    fn ipv6_sources_are_slash_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(Source::of(ip("2001:db8:1:2:aaaa::1")), Source::of(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(Source::of(ip("2001:db8:1:2::1")), Source::of(ip("2001:db8:1:3::1")));
        assert_eq!(Source::of(ip("::ffff:10.0.0.1")), Source::of(ip("10.0.0.1")));
        assert_eq!(Source::of(ip("2001:db8:1:2:aaaa::1")).to_string(), "2001:db8:1:2::/64");
        let l = limits(1, 0, 0);
        let _a = l.admit(ip("2001:db8:1:2::1"), "https").expect("first");
        assert_eq!(l.admit(ip("2001:db8:1:2::2"), "https").err(), Some(Refusal::Connections), "same /64");
    }

    #[test]
    fn the_open_map_holds_only_sources_with_open_connections() {
        let l = limits(10, 0, 0);
        for n in 0..1000u32 {
            let a = l.admit(IpAddr::from(n.to_be_bytes()), "https").expect("admitted");
            drop(a);
        }
        assert!(l.state.lock().expect("lock").open.is_empty());
        let rated = limits(0, 1000, 1000);
        for n in 0..100u32 {
            let _ = rated.admit(IpAddr::from(n.to_be_bytes()), "https");
        }
        assert_eq!(rated.remembered(), 100);
    }
}
