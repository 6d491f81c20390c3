//! The storage port. Backends (`dps-store-sqlite`, later PostgreSQL) implement [`Store`]; the
//! generic [`conformance`] suite (feature `conformance`) is what every backend must pass.
//!
//! Keys: registration ids, enrollment group ids and certificate names are case-insensitive
//! (compared lower-cased); instance names likewise. Every write carries a [`Precondition`], so
//! the check and the write happen in one transaction in the backend.

use crate::model::{
    CaCertificate, EnrollmentGroup, Hub, HubDevice, IdScope, IndividualEnrollment, Instance, RegistrationRecord,
    TpmIssuedKeys,
};
use crate::tls::StoredOffer;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod documents;
pub mod memory;
mod sealed;

pub use documents::{DocWrite, Document, DocumentStore, Kind, OwnedDoc, RawPage};
pub use sealed::{SealedStore, SEALED_PREFIX};

/// Condition for a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition<'a> {
    /// Create or replace.
    Any,
    /// Create only.
    MustNotExist,
    /// Replace only if the stored etag equals this one (`*` matches any existing entity).
    IfMatch(&'a str),
}

/// Storage failures the domain can decide on without string matching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("etag does not match")]
    PreconditionFailed,
    #[error("unique value taken: {0}")]
    Conflict(String),
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data is corrupt")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// The backend could not be reached or failed (I/O, driver).
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }

    /// Stored data does not decode.
    pub fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Corrupt(Box::new(e))
    }
}

/// Etags compare with or without their surrounding quotes (C# adds them, Node copies them
/// verbatim). Every backend and the domain use this one rule.
pub fn etag_matches(stored: &str, given: &str) -> bool {
    stored.trim_matches('"') == given.trim_matches('"')
}

/// JSON encoding of stored entities, shared by every backend.
pub fn to_doc<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(StoreError::corrupt)
}

/// Decodes a stored entity.
pub fn from_doc<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(StoreError::corrupt)
}

/// One page of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque token for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// An instance write inside an atomic deployment.
#[derive(Clone, Debug)]
pub enum InstanceWrite {
    Create(Instance),
    /// Replace, if the stored etag is still `expected_etag`.
    Update {
        instance: Instance,
        expected_etag: String,
    },
}

/// The storage port, grouped by aggregate.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError>;
    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError>;
    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError>;
    /// Applies every write or none (a deployment is all-or-nothing).
    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError>;
    /// Deletes the instance and everything it holds.
    async fn delete_instance(&self, name: &str) -> Result<(), StoreError>;
    /// A number that changes whenever an instance is created, updated or deleted, by this node
    /// or any other sharing the database: one cheap read that tells whether what was built from
    /// [`Store::instances`] is still current (docs/protocol.md, "Service API authentication").
    async fn instances_version(&self) -> Result<u64, StoreError>;
    /// A number that changes whenever an enrollment group of any instance is created, updated
    /// or deleted (an instance's deletion included), by this node or any other: one cheap read
    /// that tells whether groups read earlier are still current (docs/performance.md,
    /// "Group cache"). Only equality means anything: the database stores take a new random
    /// value at each change, so that a restored or failed-over database cannot come back to a
    /// value a node cached.
    async fn groups_version(&self) -> Result<u64, StoreError>;

    async fn enrollment(
        &self,
        instance: &str,
        registration_id: &str,
    ) -> Result<Option<IndividualEnrollment>, StoreError>;
    async fn put_enrollment(
        &self,
        instance: &str,
        e: &IndividualEnrollment,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError>;
    async fn delete_enrollment(
        &self,
        instance: &str,
        registration_id: &str,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError>;
    async fn enrollments(
        &self,
        instance: &str,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<IndividualEnrollment>, StoreError>;

    async fn group(&self, instance: &str, group_id: &str) -> Result<Option<EnrollmentGroup>, StoreError>;
    async fn put_group(&self, instance: &str, g: &EnrollmentGroup, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn delete_group(&self, instance: &str, group_id: &str, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn groups(
        &self,
        instance: &str,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<EnrollmentGroup>, StoreError>;

    async fn registration(
        &self,
        instance: &str,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError>;
    async fn put_registration(
        &self,
        instance: &str,
        r: &RegistrationRecord,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError>;
    async fn delete_registration(
        &self,
        instance: &str,
        registration_id: &str,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError>;
    /// Registrations made through `group_id`, or every registration when `None`.
    async fn registrations(
        &self,
        instance: &str,
        group_id: Option<&str>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<RegistrationRecord>, StoreError>;

    async fn certificate(&self, instance: &str, name: &str) -> Result<Option<CaCertificate>, StoreError>;
    async fn put_certificate(&self, instance: &str, c: &CaCertificate, pre: Precondition<'_>)
        -> Result<(), StoreError>;
    async fn delete_certificate(&self, instance: &str, name: &str, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn certificates(&self, instance: &str) -> Result<Vec<CaCertificate>, StoreError>;

    /// The keys issued to the TPM of `registration_id` (secret: never logged or returned).
    async fn tpm_keys(&self, instance: &str, registration_id: &str) -> Result<Option<TpmIssuedKeys>, StoreError>;
    async fn put_tpm_keys(&self, instance: &str, k: &TpmIssuedKeys, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn delete_tpm_keys(
        &self,
        instance: &str,
        registration_id: &str,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError>;
    /// Embedded hubs (docs/hub.md), outside every DPS instance.
    async fn hub(&self, name: &str) -> Result<Option<Hub>, StoreError>;
    async fn put_hub(&self, h: &Hub, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn delete_hub(&self, name: &str, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn hubs(&self) -> Result<Vec<Hub>, StoreError>;
    async fn hub_device(&self, hub: &str, device_id: &str) -> Result<Option<HubDevice>, StoreError>;
    async fn put_hub_device(&self, hub: &str, d: &HubDevice, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn delete_hub_device(&self, hub: &str, device_id: &str, pre: Precondition<'_>) -> Result<(), StoreError>;
    async fn hub_devices(
        &self,
        hub: &str,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<HubDevice>, StoreError>;

    /// What the nodes of a deployment share, by name; `None` if no node wrote it yet.
    async fn shared(&self, name: &str) -> Result<Option<SharedDoc>, StoreError>;
    /// Writes a shared document under `pre` (first writer wins with `MustNotExist`).
    async fn put_shared(&self, doc: &SharedDoc, pre: Precondition<'_>) -> Result<(), StoreError>;

    /// The JSON text of the ClientHello offer `id` that registration records name
    /// (docs/performance.md, "Offers stored once").
    async fn offer(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Stores an offer unless it is stored already (its id is its text's hash, so there is
    /// nothing to replace). Offers are shared by every instance and never deleted.
    async fn put_offer(&self, offer: &StoredOffer) -> Result<(), StoreError>;
}

/// The pseudo-instance shared documents are filed under (`$` is never in an instance name).
pub const SHARED: &str = "$shared";

/// A document every node of a deployment shares (the built-in CA, the admin credential),
/// filed under no instance. The caller seals the secrets in `body` before writing it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedDoc {
    pub name: String,
    pub etag: String,
    pub body: serde_json::Value,
}
