//! Application services: what adapters call. Each operation validates, decides, and writes
//! through the [`Store`] port with a precondition, so concurrent writers never lose an update.

mod allocation;
mod attest;
mod callers;
mod certificates;
mod deploy;
mod enrollments;
mod hub;
mod hub_sync;
mod network;
mod offers;
pub mod query;
mod readiness;
mod regions;
mod registration;
mod role;
mod throttle;

use std::sync::Arc;

use crate::observe::{NoObserver, Observer};
use crate::ports::{
    AllocationWebhook, Clock, DeviceCrypto, Entropy, HubRegistry, NoHubRegistry, NoTpm, NoWebhook, TpmActivator,
    X509Inspector,
};
use crate::store::Store;

pub use allocation::weighted_choice;
pub use attest::Attested;
pub(crate) use attest::{Attestation, Device, Dormant};
pub use callers::ct_eq;
pub use deploy::{
    parse_hub_connection_string, parse_linked_hub, DeployOutcome, InstanceDefaults, ResourceChange, DPS_RESOURCE_TYPE,
    OWNER_POLICY,
};
pub use enrollments::{BulkError, BulkMode, BulkResult};
pub use hub::{check_hub_api_version, device_json, twin_json, HubAccess, HubError};
pub use hub_sync::HUB_REFUSED;
pub use readiness::{ReadinessReport, Refused};
pub use regions::{distance_km, is_known as is_known_region, REGIONS};
pub use registration::OperationStatus;
pub use role::{Role, ROLE_RETRY_AFTER};
pub use throttle::{quota_wait, RegistrationQuota, Throttle};

/// The domain's entry point, holding its ports. A handle: cloning it (once per connection)
/// takes one reference count, not a copy of every port and setting (docs/performance.md,
/// "Idle connections").
#[derive(Clone, Debug)]
pub struct Services {
    inner: Arc<ServicesInner>,
}

impl std::ops::Deref for Services {
    type Target = ServicesInner;
    fn deref(&self) -> &ServicesInner {
        &self.inner
    }
}

/// Not the admin token, which is a secret.
impl std::fmt::Debug for ServicesInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicesInner")
            .field("region", &self.region)
            .field("host_names", &self.host_names)
            .finish_non_exhaustive()
    }
}

/// What a [`Services`] handle shares; its fields are the domain's own.
#[doc(hidden)]
#[derive(Clone)]
pub struct ServicesInner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
    pub(crate) x509: Arc<dyn X509Inspector>,
    pub(crate) crypto: Arc<dyn DeviceCrypto>,
    /// Registration quota per instance (unlimited unless configured).
    pub(crate) throttle: Arc<dyn RegistrationQuota>,
    /// Custom allocation webhook client.
    pub(crate) webhook: Arc<dyn AllocationWebhook>,
    /// TPM activation (challenges and the final result's key blob).
    pub(crate) tpm: Arc<dyn TpmActivator>,
    /// The IoT hub registry client (devices written into their hubs).
    pub(crate) hubs: Arc<dyn HubRegistry>,
    /// This node's region (geoLatency allocation; location of instances that name none).
    pub(crate) region: String,
    /// Whether webhook URLs may be plain `http://` to localhost (tests, local development).
    pub(crate) allow_http_localhost_webhooks: bool,
    /// The host names clients address this server by (service SAS tokens must name one).
    pub(crate) host_names: Vec<String>,
    /// The management API's bearer credential.
    pub(crate) admin_token: Option<String>,
    /// The database's role (shared by every clone).
    pub(crate) role: Arc<role::RoleCell>,
    /// Where metrics go.
    pub(crate) observer: Arc<dyn Observer>,
    /// Sources whose network refusal was logged (each is logged once).
    pub(crate) refusals_logged: Arc<network::LoggedOnce>,
    /// Every instance's shared access policies by name, for service tokens that name no
    /// instance (kept current by the store's instances version).
    pub(crate) policy_index: Arc<callers::PolicyIndexCell>,
    /// Each instance's enrollment groups, for device authentication (kept current by the
    /// store's groups version).
    pub(crate) group_cache: Arc<attest::GroupCache>,
    /// Instances by ID scope, for device authentication (kept current by the store's
    /// instances version).
    pub(crate) instance_cache: Arc<attest::InstanceCache>,
    /// ClientHello offers registration records name, by id (docs/performance.md, "Offers
    /// stored once").
    pub(crate) offers: Arc<offers::OfferCache>,
}

impl Services {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        x509: Arc<dyn X509Inspector>,
        crypto: Arc<dyn DeviceCrypto>,
    ) -> Self {
        let inner = ServicesInner {
            store,
            clock,
            entropy,
            x509,
            crypto,
            throttle: Arc::new(Throttle::new(0)),
            webhook: Arc::new(NoWebhook),
            tpm: Arc::new(NoTpm),
            hubs: Arc::new(NoHubRegistry),
            region: "local".into(),
            allow_http_localhost_webhooks: false,
            host_names: Vec::new(),
            admin_token: None,
            role: Arc::default(),
            observer: Arc::new(NoObserver),
            refusals_logged: Arc::default(),
            policy_index: Arc::default(),
            group_cache: Arc::default(),
            instance_cache: Arc::default(),
            offers: Arc::default(),
        };
        Services { inner: Arc::new(inner) }
    }

    /// The settings, to change while the handle is being built (a copy if it is shared).
    fn settings(&mut self) -> &mut ServicesInner {
        Arc::make_mut(&mut self.inner)
    }

    /// Sets where the domain reports what it does (metrics).
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.settings().observer = observer;
        self
    }

    /// The observer, for adapters that report requests (latency) themselves.
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// Sets the host names clients use for this server (the public host name, listen
    /// addresses): a service SAS token's resource must be one of them or `{instance}.{…}`.
    #[must_use]
    pub fn with_host_names(mut self, names: Vec<String>) -> Self {
        self.settings().host_names = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    /// Sets the management API's bearer credential.
    #[must_use]
    pub fn with_admin_token(mut self, token: String) -> Self {
        self.settings().admin_token = Some(token);
        self
    }

    /// The time, from the Clock port.
    pub fn now_time(&self) -> std::time::SystemTime {
        self.clock.now()
    }

    /// A tracking id for an error body (a random UUID).
    pub fn tracking_id(&self) -> String {
        let g = crate::ports::random_hex(self.entropy.as_ref(), 16);
        format!("{}-{}-{}-{}-{}", &g[0..8], &g[8..12], &g[12..16], &g[16..20], &g[20..32])
    }

    /// The wire form of a domain error (docs/protocol.md, "Error bodies and codes"): built once here for
    /// every transport. A server-side failure (5xx) is logged here, once, with its whole chain,
    /// and the caller gets a message without internal detail.
    pub fn wire_error(&self, e: &crate::error::Error) -> crate::error::WireError {
        let status = e.kind().status();
        let message = if let crate::error::Error::NotServing { .. } = e {
            // Expected during a failover, and says nothing internal: the device sees why.
            e.to_string()
        } else if status >= 500 {
            tracing::error!(status, error = %crate::error::DisplayChain(e), "request failed");
            "the service failed to complete the request; try again".to_owned()
        } else {
            e.to_string()
        };
        let mut w = self.wire(status, e.code(), message);
        w.retry_after = e.retry_after().map(|s| u32::try_from(s).unwrap_or(u32::MAX));
        w
    }

    /// A wire error an adapter decides itself (an unknown route, an unreadable request).
    pub fn wire(&self, status: u16, error_code: u32, message: String) -> crate::error::WireError {
        crate::error::WireError {
            status,
            error_code,
            message,
            tracking_id: self.tracking_id(),
            timestamp_utc: self.now(),
            retry_after: None,
        }
    }

    /// Sets the per-instance registration quota (registrations per minute; 0 = unlimited).
    #[must_use]
    pub fn with_registration_quota(mut self, per_minute: u32) -> Self {
        self.settings().throttle = Arc::new(Throttle::new(per_minute));
        self
    }

    /// Keeps the registration quota's buckets in `quota` (a shared store's, so that every node
    /// counts against one quota per instance) instead of on this node.
    #[must_use]
    pub fn with_quota(mut self, quota: Arc<dyn RegistrationQuota>) -> Self {
        self.settings().throttle = quota;
        self
    }

    /// Sets the webhook client for custom allocation.
    #[must_use]
    pub fn with_webhook(mut self, webhook: Arc<dyn AllocationWebhook>) -> Self {
        self.settings().webhook = webhook;
        self
    }

    /// Sets the TPM activation (without it, TPM devices are refused).
    #[must_use]
    pub fn with_tpm(mut self, tpm: Arc<dyn TpmActivator>) -> Self {
        self.settings().tpm = tpm;
        self
    }

    /// Sets the IoT hub registry client registration writes devices through.
    #[must_use]
    pub fn with_hub_registry(mut self, hubs: Arc<dyn HubRegistry>) -> Self {
        self.settings().hubs = hubs;
        self
    }

    /// Allows plain-http webhook URLs to localhost.
    #[must_use]
    pub fn with_http_localhost_webhooks(mut self, allow: bool) -> Self {
        self.settings().allow_http_localhost_webhooks = allow;
        self
    }

    /// Sets this node's region.
    #[must_use]
    pub fn with_region(mut self, region: &str) -> Self {
        self.settings().region = region.to_owned();
        self
    }

    fn now(&self) -> String {
        crate::time::format_utc(self.clock.now())
    }

    fn etag(&self) -> String {
        crate::ports::new_etag(self.entropy.as_ref())
    }
}
