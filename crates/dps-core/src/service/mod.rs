//! Application services: what adapters call. Each operation validates, decides, and writes
//! through the [`Store`] port with a precondition, so concurrent writers never lose an update.

mod allocation;
mod certificates;
mod deploy;
mod enrollments;
mod registration;
mod throttle;

use std::sync::Arc;

use crate::ports::{Clock, DeviceCrypto, Entropy, X509Inspector};
use crate::store::Store;

pub use allocation::weighted_choice;
pub use deploy::{
    parse_hub_connection_string, parse_linked_hub, DeployOutcome, InstanceDefaults, ResourceChange, DPS_RESOURCE_TYPE,
    OWNER_POLICY,
};
pub use enrollments::{BulkError, BulkMode, BulkResult};
pub use registration::{Attested, EnrollmentSource, Evidence, OperationStatus};
pub use throttle::Throttle;

/// The domain's entry point, holding its ports.
#[derive(Clone, Debug)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    pub x509: Arc<dyn X509Inspector>,
    pub crypto: Arc<dyn DeviceCrypto>,
    /// Registration quota per instance (unlimited unless configured).
    pub throttle: Arc<Throttle>,
}

impl Services {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        x509: Arc<dyn X509Inspector>,
        crypto: Arc<dyn DeviceCrypto>,
    ) -> Self {
        Services { store, clock, entropy, x509, crypto, throttle: Arc::new(Throttle::new(0)) }
    }

    /// Sets the per-instance registration quota (registrations per minute; 0 = unlimited).
    #[must_use]
    pub fn with_registration_quota(mut self, per_minute: u32) -> Self {
        self.throttle = Arc::new(Throttle::new(per_minute));
        self
    }

    fn now(&self) -> String {
        crate::time::format_utc(self.clock.now())
    }

    fn etag(&self) -> String {
        crate::ports::new_etag(self.entropy.as_ref())
    }
}
