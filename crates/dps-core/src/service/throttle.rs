//! Optional per-instance registration quota (a token bucket per DPS instance). Excess
//! registrations get `Throttled { retry_after }`: 429 with `Retry-After` over HTTP, the 429
//! response topic over MQTT. [`Throttle`] keeps the buckets on this node; a shared store keeps
//! them in the database for all nodes (the [`RegistrationQuota`] port).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::store::StoreError;

/// A per-key token bucket: `per_minute` tokens refilled continuously, burst of the same size.
#[derive(Debug)]
pub struct Throttle {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, SystemTime)>>,
}

impl Throttle {
    /// `per_minute` = 0 means unlimited.
    pub fn new(per_minute: u32) -> Self {
        Throttle { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key` at `now`; `Err(wait)` when the bucket is empty.
    pub fn take(&self, key: &str, now: SystemTime) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let mut b = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = b.entry(key.to_ascii_lowercase()).or_insert((cap, now));
        let elapsed = now.duration_since(*last).unwrap_or_default().as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(quota_wait(*tokens, self.per_minute))
        }
    }
}

/// Where the registration quota's buckets live: this node ([`Throttle`]) or a shared store,
/// so that nodes sharing a database share each instance's quota.
#[async_trait::async_trait]
pub trait RegistrationQuota: Send + Sync + std::fmt::Debug {
    /// Takes one registration for `instance` at `now`: `Ok(Err(wait))` when the quota is spent.
    async fn take(&self, instance: &str, now: SystemTime) -> Result<Result<(), Duration>, StoreError>;
}

#[async_trait::async_trait]
impl RegistrationQuota for Throttle {
    async fn take(&self, instance: &str, now: SystemTime) -> Result<Result<(), Duration>, StoreError> {
        Ok(Throttle::take(self, instance, now))
    }
}

/// The wait until one token is back, for a bucket holding `tokens` refilled at `per_minute`.
pub fn quota_wait(tokens: f64, per_minute: u32) -> Duration {
    let rate = f64::from(per_minute.max(1)) / 60.0;
    Duration::from_secs_f64(((1.0 - tokens) / rate).ceil().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_and_refills() {
        let t = Throttle::new(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert!(t.take("a", t0).is_ok());
        assert!(t.take("a", t0).is_ok());
        let wait = t.take("a", t0).expect_err("third within the minute is throttled");
        assert_eq!(wait, Duration::from_secs(30));
        assert!(t.take("b", t0).is_ok(), "instances are independent");
        assert!(t.take("a", t0 + Duration::from_secs(30)).is_ok(), "refilled after 30 s");
        assert!(Throttle::new(0).take("x", t0).is_ok());
    }
}
