//! The registration quota on PostgreSQL: one token bucket row per DPS instance, refilled and
//! taken from in one statement, so every node sharing the database counts against the same
//! quota. Time is the calling node's clock (seconds since the Unix epoch); a bucket's time
//! never goes backwards, so nodes whose clocks differ slightly cannot refill it twice.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use dps_core::service::{quota_wait, RegistrationQuota};
use dps_core::store::StoreError;

use crate::connect::driver;
use crate::{key, PgStore};

/// The shared registration quota (`per_minute` per instance; 0 = unlimited).
#[derive(Debug, Clone)]
pub struct PgQuota {
    store: PgStore,
    per_minute: u32,
}

impl PgStore {
    /// This database's shared registration quota.
    pub fn quota(&self, per_minute: u32) -> PgQuota {
        PgQuota { store: self.clone(), per_minute }
    }
}

#[async_trait]
impl RegistrationQuota for PgQuota {
    async fn take(&self, instance: &str, now: SystemTime) -> Result<Result<(), Duration>, StoreError> {
        if self.per_minute == 0 {
            return Ok(Ok(()));
        }
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let t = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let k = key(instance);
        self.store
            .timed(async {
                let c = self.store.client().await?;
                let taken = c
                    .query_opt(
                        "INSERT INTO quota AS q (key, tokens, at) VALUES ($1, $2::float8 - 1, $3::float8)
                         ON CONFLICT (key) DO UPDATE
                           SET tokens = LEAST($2, q.tokens + GREATEST($3 - q.at, 0) * $4) - 1, at = GREATEST(q.at, $3)
                           WHERE LEAST($2, q.tokens + GREATEST($3 - q.at, 0) * $4) >= 1
                         RETURNING tokens",
                        &[&k, &cap, &t, &rate],
                    )
                    .await
                    .map_err(driver)?;
                if taken.is_some() {
                    return Ok(Ok(()));
                }
                let row = c
                    .query_one(
                        "SELECT LEAST($2::float8, tokens + GREATEST($3::float8 - at, 0) * $4::float8) FROM quota WHERE key = $1",
                        &[&k, &cap, &t, &rate],
                    )
                    .await
                    .map_err(driver)?;
                Ok(Err(quota_wait(row.get(0), self.per_minute)))
            })
            .await
    }
}
