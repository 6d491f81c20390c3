//! Bounded logging of events a client can cause at will (refused connections, failed
//! handshakes): at most `per_window` lines per `window`; the rest are counted and the count is
//! reported with the next line. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// A log-line budget for one kind of event.
#[derive(Debug)]
pub struct LogLimit {
    per_window: u32,
    window: Duration,
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimit { per_window: per_window.max(1), window, start: None, logged: 0, suppressed: 0 }
    }

    /// One event at `now`: `Some(n)` if it is to be logged, `n` being the events left unlogged
    /// since the previous line; `None` if it is only counted.
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        self.roll(now);
        if self.logged < self.per_window {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// The events left unlogged, once their window is over (`None` while it lasts or if there
    /// are none): call it when something else happens, so a burst that ended is still reported.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 || self.start.is_some_and(|s| now.saturating_duration_since(s) < self.window) {
            return None;
        }
        self.roll(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    fn roll(&mut self, now: Instant) {
        if self.start.is_none_or(|s| now.saturating_duration_since(s) >= self.window) {
            self.start = Some(now);
            self.logged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_costs_the_budget_and_one_count() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(2, Duration::from_secs(10));
        let lines: Vec<Option<u64>> = (0..10_000).map(|_| l.event(t0)).collect();
        assert_eq!(lines.iter().filter(|x| x.is_some()).count(), 2, "two lines for 10 000 events");
        assert_eq!(l.flush(t0 + Duration::from_secs(1)), None, "still in the window");
        assert_eq!(l.flush(t0 + Duration::from_secs(10)), Some(9_998), "the rest reported once");
        assert_eq!(l.flush(t0 + Duration::from_secs(30)), None);
        assert_eq!(l.event(t0 + Duration::from_secs(31)), Some(0));
    }

    #[test]
    fn the_count_rides_on_the_next_line() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(1, Duration::from_secs(1));
        assert_eq!(l.event(t0), Some(0));
        assert_eq!(l.event(t0), None);
        assert_eq!(l.event(t0), None);
        assert_eq!(l.event(t0 + Duration::from_secs(2)), Some(2));
    }
}
