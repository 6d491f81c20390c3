//! Application services: what adapters call. Each operation validates, decides, and writes
//! through the [`Store`] port with a precondition, so concurrent writers never lose an update.

mod allocation;
mod certificates;
mod deploy;
mod enrollments;
pub mod query;
mod readiness;
mod regions;
mod registration;
mod throttle;

use std::sync::Arc;

use crate::ports::{AllocationWebhook, Clock, DeviceCrypto, Entropy, NoWebhook, X509Inspector};
use crate::store::Store;

pub use allocation::weighted_choice;
pub use deploy::{
    parse_hub_connection_string, parse_linked_hub, DeployOutcome, InstanceDefaults, ResourceChange, DPS_RESOURCE_TYPE,
    OWNER_POLICY,
};
pub use enrollments::{BulkError, BulkMode, BulkResult};
pub use readiness::{ReadinessReport, Refused};
pub use regions::{distance_km, is_known as is_known_region, REGIONS};
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
    /// Custom allocation webhook client.
    pub webhook: Arc<dyn AllocationWebhook>,
    /// This node's region (geoLatency allocation; location of instances that name none).
    pub region: String,
    /// Whether webhook URLs may be plain `http://` to localhost (tests, local development).
    pub allow_http_localhost_webhooks: bool,
}

impl Services {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        x509: Arc<dyn X509Inspector>,
        crypto: Arc<dyn DeviceCrypto>,
    ) -> Self {
        Services {
            store,
            clock,
            entropy,
            x509,
            crypto,
            throttle: Arc::new(Throttle::new(0)),
            webhook: Arc::new(NoWebhook),
            region: "local".into(),
            allow_http_localhost_webhooks: false,
        }
    }

    /// Sets the per-instance registration quota (registrations per minute; 0 = unlimited).
    #[must_use]
    pub fn with_registration_quota(mut self, per_minute: u32) -> Self {
        self.throttle = Arc::new(Throttle::new(per_minute));
        self
    }

    /// Sets the webhook client for custom allocation.
    #[must_use]
    pub fn with_webhook(mut self, webhook: Arc<dyn AllocationWebhook>) -> Self {
        self.webhook = webhook;
        self
    }

    /// Allows plain-http webhook URLs to localhost.
    #[must_use]
    pub fn with_http_localhost_webhooks(mut self, allow: bool) -> Self {
        self.allow_http_localhost_webhooks = allow;
        self
    }

    /// Sets this node's region.
    #[must_use]
    pub fn with_region(mut self, region: &str) -> Self {
        self.region = region.to_owned();
        self
    }

    fn now(&self) -> String {
        crate::time::format_utc(self.clock.now())
    }

    fn etag(&self) -> String {
        crate::ports::new_etag(self.entropy.as_ref())
    }
}
