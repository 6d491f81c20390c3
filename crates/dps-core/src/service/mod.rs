//! Application services: what adapters call. Each operation validates, decides, and writes
//! through the [`Store`] port with a precondition, so concurrent writers never lose an update.

mod certificates;
mod deploy;
mod enrollments;

use std::sync::Arc;

use crate::ports::{Clock, Entropy, X509Inspector};
use crate::store::Store;

pub use deploy::{
    parse_hub_connection_string, parse_linked_hub, DeployOutcome, InstanceDefaults, ResourceChange, DPS_RESOURCE_TYPE,
    OWNER_POLICY,
};
pub use enrollments::{BulkError, BulkMode, BulkResult};

/// The domain's entry point, holding its ports.
#[derive(Clone, Debug)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    pub x509: Arc<dyn X509Inspector>,
}

impl Services {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        x509: Arc<dyn X509Inspector>,
    ) -> Self {
        Services { store, clock, entropy, x509 }
    }

    fn now(&self) -> String {
        crate::time::format_utc(self.clock.now())
    }

    fn etag(&self) -> String {
        crate::ports::new_etag(self.entropy.as_ref())
    }
}
