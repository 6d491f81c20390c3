//! What a backend implements: instances, and JSON documents keyed by (kind, instance, id).
//! Every [`DocumentStore`] is a [`Store`] through the blanket impl below, so the per-entity
//! mapping (which key, which parent, which etag) is written once, here, for every backend.

use serde::de::DeserializeOwned;

use super::{from_doc, to_doc, InstanceWrite, Page, Precondition, SharedDoc, Store, StoreError, SHARED};
use crate::model::{
    CaCertificate, EnrollmentGroup, Hub, HubDevice, IdScope, IndividualEnrollment, Instance, RegistrationRecord,
    TpmIssuedKeys,
};
use crate::tls::StoredOffer;

/// The kinds of document, with their stable numbers (stored in the database).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Enrollment = 1,
    Group = 2,
    Registration = 3,
    Certificate = 4,
    /// The keys issued to a TPM device (secret; docs/tpm.md, "Secrets").
    TpmKeys = 5,
    /// Embedded hubs, all under the pseudo-instance [`HUBS`].
    Hub = 6,
    /// Device identities of an embedded hub, under the pseudo-instance [`hub_space`].
    HubDevice = 7,
    /// Filed under no instance: what every node of a deployment shares ([`SharedDoc`]).
    Shared = 8,
    /// A ClientHello offer that registration records name by id, all under the pseudo-instance
    /// [`OFFERS`] (docs/performance.md, "Offers stored once").
    Offer = 9,
}

/// The pseudo-instance offers are filed under: one set for every instance, since an offer's id
/// is its content's hash and fleets in different instances often share a TLS stack.
pub const OFFERS: &str = "$offers";

/// The pseudo-instance embedded hubs are filed under (`$` is never in an instance name).
pub const HUBS: &str = "$hubs";

/// The pseudo-instance the devices of hub `hub` are filed under.
pub fn hub_space(hub: &str) -> String {
    format!("$hub:{}", hub.to_ascii_lowercase())
}

/// A page of raw documents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawPage {
    pub docs: Vec<String>,
    pub continuation: Option<String>,
}

/// A backend's primitives. Keys given here are as callers wrote them; backends compare them
/// case-insensitively (lower-cased).
#[async_trait::async_trait]
pub trait DocumentStore: Send + Sync + std::fmt::Debug {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError>;
    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError>;
    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError>;
    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError>;
    async fn delete_instance(&self, name: &str) -> Result<(), StoreError>;
    /// See [`Store::instances_version`].
    async fn instances_version(&self) -> Result<u64, StoreError>;
    /// See [`Store::groups_version`]: every write of a [`Kind::Group`] document changes it.
    async fn groups_version(&self) -> Result<u64, StoreError>;

    async fn get_doc(&self, kind: Kind, instance: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// Writes a document under `pre`: `MustNotExist` fails with `AlreadyExists`, `IfMatch`
    /// with `NotFound` or `PreconditionFailed`.
    async fn put_doc(
        &self,
        kind: Kind,
        instance: &str,
        doc: DocWrite<'_>,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError>;
    /// Deletes under `pre`; `NotFound` if absent.
    async fn delete_doc(&self, kind: Kind, instance: &str, id: &str, pre: Precondition<'_>) -> Result<(), StoreError>;
    /// Documents in id order after `after`, optionally only those with `parent`.
    async fn page_docs(
        &self,
        kind: Kind,
        instance: &str,
        parent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RawPage, StoreError>;
}

/// One document to write.
#[derive(Clone, Copy, Debug)]
pub struct DocWrite<'a> {
    pub id: &'a str,
    /// The group a registration belongs to.
    pub parent: Option<&'a str>,
    pub etag: &'a str,
    pub json: &'a str,
}

/// How an entity is filed as a document: its kind, id, parent and etag. The one mapping every
/// backend shares: the blanket [`Store`] impl below and bulk writes ([`OwnedDoc::of`]) use it.
pub trait Document: serde::Serialize {
    const KIND: Kind;
    fn doc_id(&self) -> &str;
    /// The group a registration belongs to.
    fn doc_parent(&self) -> Option<&str> {
        None
    }
    fn doc_etag(&self) -> &str;
}

impl Document for IndividualEnrollment {
    const KIND: Kind = Kind::Enrollment;
    fn doc_id(&self) -> &str {
        &self.registration_id
    }
    fn doc_etag(&self) -> &str {
        self.etag.as_deref().unwrap_or("")
    }
}

impl Document for EnrollmentGroup {
    const KIND: Kind = Kind::Group;
    fn doc_id(&self) -> &str {
        &self.enrollment_group_id
    }
    fn doc_etag(&self) -> &str {
        self.etag.as_deref().unwrap_or("")
    }
}

impl Document for RegistrationRecord {
    const KIND: Kind = Kind::Registration;
    fn doc_id(&self) -> &str {
        &self.state.registration_id
    }
    fn doc_parent(&self) -> Option<&str> {
        self.enrollment_group_id.as_deref()
    }
    fn doc_etag(&self) -> &str {
        self.state.etag.as_deref().unwrap_or("")
    }
}

impl Document for CaCertificate {
    const KIND: Kind = Kind::Certificate;
    fn doc_id(&self) -> &str {
        &self.name
    }
    fn doc_etag(&self) -> &str {
        &self.etag
    }
}

impl Document for TpmIssuedKeys {
    const KIND: Kind = Kind::TpmKeys;
    fn doc_id(&self) -> &str {
        &self.registration_id
    }
    fn doc_etag(&self) -> &str {
        &self.etag
    }
}

impl Document for Hub {
    const KIND: Kind = Kind::Hub;
    fn doc_id(&self) -> &str {
        &self.name
    }
    fn doc_etag(&self) -> &str {
        &self.etag
    }
}

impl Document for SharedDoc {
    const KIND: Kind = Kind::Shared;
    fn doc_id(&self) -> &str {
        &self.name
    }
    fn doc_etag(&self) -> &str {
        &self.etag
    }
}

impl Document for HubDevice {
    const KIND: Kind = Kind::HubDevice;
    fn doc_id(&self) -> &str {
        &self.device_id
    }
    fn doc_etag(&self) -> &str {
        &self.doc_etag
    }
}

/// A document ready to write, owned: for bulk writes that a backend hands to another thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedDoc {
    pub kind: Kind,
    pub id: String,
    pub parent: Option<String>,
    pub etag: String,
    pub json: String,
}

impl OwnedDoc {
    /// `entity` as its document.
    pub fn of<D: Document>(entity: &D) -> Result<OwnedDoc, StoreError> {
        Ok(OwnedDoc {
            kind: D::KIND,
            id: entity.doc_id().to_owned(),
            parent: entity.doc_parent().map(str::to_owned),
            etag: entity.doc_etag().to_owned(),
            json: to_doc(entity)?,
        })
    }

    pub fn as_write(&self) -> DocWrite<'_> {
        DocWrite { id: &self.id, parent: self.parent.as_deref(), etag: &self.etag, json: &self.json }
    }
}

async fn put<S: DocumentStore + ?Sized, D: Document + Sync>(
    s: &S,
    instance: &str,
    entity: &D,
    pre: Precondition<'_>,
) -> Result<(), StoreError> {
    let json = to_doc(entity)?;
    let doc = DocWrite { id: entity.doc_id(), parent: entity.doc_parent(), etag: entity.doc_etag(), json: &json };
    s.put_doc(D::KIND, instance, doc, pre).await
}

async fn get<S: DocumentStore + ?Sized, T: DeserializeOwned>(
    s: &S,
    kind: Kind,
    instance: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    s.get_doc(kind, instance, id).await?.map(|d| from_doc(&d)).transpose()
}

async fn page<S: DocumentStore + ?Sized, T: DeserializeOwned>(
    s: &S,
    kind: Kind,
    instance: &str,
    parent: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Page<T>, StoreError> {
    let raw = s.page_docs(kind, instance, parent, after, limit).await?;
    Ok(Page { items: raw.docs.iter().map(|d| from_doc(d)).collect::<Result<_, _>>()?, continuation: raw.continuation })
}

#[async_trait::async_trait]
impl<S: DocumentStore> Store for S {
    async fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        DocumentStore::instances(self).await
    }
    async fn instance(&self, name: &str) -> Result<Option<Instance>, StoreError> {
        DocumentStore::instance(self, name).await
    }
    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>, StoreError> {
        DocumentStore::instance_by_scope(self, scope).await
    }
    async fn write_instances(&self, writes: &[InstanceWrite]) -> Result<(), StoreError> {
        DocumentStore::write_instances(self, writes).await
    }
    async fn delete_instance(&self, name: &str) -> Result<(), StoreError> {
        DocumentStore::delete_instance(self, name).await
    }
    async fn instances_version(&self) -> Result<u64, StoreError> {
        DocumentStore::instances_version(self).await
    }
    async fn groups_version(&self) -> Result<u64, StoreError> {
        DocumentStore::groups_version(self).await
    }

    async fn enrollment(
        &self,
        instance: &str,
        registration_id: &str,
    ) -> Result<Option<IndividualEnrollment>, StoreError> {
        get(self, Kind::Enrollment, instance, registration_id).await
    }
    async fn put_enrollment(
        &self,
        instance: &str,
        e: &IndividualEnrollment,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        put(self, instance, e, pre).await
    }
    async fn delete_enrollment(
        &self,
        instance: &str,
        registration_id: &str,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        self.delete_doc(Kind::Enrollment, instance, registration_id, pre).await
    }
    async fn enrollments(
        &self,
        instance: &str,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<IndividualEnrollment>, StoreError> {
        page(self, Kind::Enrollment, instance, None, continuation, limit).await
    }

    async fn group(&self, instance: &str, group_id: &str) -> Result<Option<EnrollmentGroup>, StoreError> {
        get(self, Kind::Group, instance, group_id).await
    }
    async fn put_group(&self, instance: &str, g: &EnrollmentGroup, pre: Precondition<'_>) -> Result<(), StoreError> {
        put(self, instance, g, pre).await
    }
    async fn delete_group(&self, instance: &str, group_id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.delete_doc(Kind::Group, instance, group_id, pre).await
    }
    async fn groups(
        &self,
        instance: &str,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<EnrollmentGroup>, StoreError> {
        page(self, Kind::Group, instance, None, continuation, limit).await
    }

    async fn registration(
        &self,
        instance: &str,
        registration_id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        get(self, Kind::Registration, instance, registration_id).await
    }
    async fn put_registration(
        &self,
        instance: &str,
        r: &RegistrationRecord,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        put(self, instance, r, pre).await
    }
    async fn delete_registration(
        &self,
        instance: &str,
        registration_id: &str,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        self.delete_doc(Kind::Registration, instance, registration_id, pre).await
    }
    async fn registrations(
        &self,
        instance: &str,
        group_id: Option<&str>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<RegistrationRecord>, StoreError> {
        page(self, Kind::Registration, instance, group_id, continuation, limit).await
    }

    async fn certificate(&self, instance: &str, name: &str) -> Result<Option<CaCertificate>, StoreError> {
        get(self, Kind::Certificate, instance, name).await
    }
    async fn put_certificate(
        &self,
        instance: &str,
        c: &CaCertificate,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        put(self, instance, c, pre).await
    }
    async fn delete_certificate(&self, instance: &str, name: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.delete_doc(Kind::Certificate, instance, name, pre).await
    }
    async fn certificates(&self, instance: &str) -> Result<Vec<CaCertificate>, StoreError> {
        Ok(page(self, Kind::Certificate, instance, None, None, 10_000).await?.items)
    }

    async fn tpm_keys(&self, instance: &str, registration_id: &str) -> Result<Option<TpmIssuedKeys>, StoreError> {
        get(self, Kind::TpmKeys, instance, registration_id).await
    }
    async fn put_tpm_keys(&self, instance: &str, k: &TpmIssuedKeys, pre: Precondition<'_>) -> Result<(), StoreError> {
        put(self, instance, k, pre).await
    }
    async fn delete_tpm_keys(
        &self,
        instance: &str,
        registration_id: &str,
        pre: Precondition<'_>,
    ) -> Result<(), StoreError> {
        self.delete_doc(Kind::TpmKeys, instance, registration_id, pre).await
    }
    async fn hub(&self, name: &str) -> Result<Option<Hub>, StoreError> {
        get(self, Kind::Hub, HUBS, name).await
    }
    async fn put_hub(&self, h: &Hub, pre: Precondition<'_>) -> Result<(), StoreError> {
        put(self, HUBS, h, pre).await
    }
    async fn delete_hub(&self, name: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.delete_doc(Kind::Hub, HUBS, name, pre).await
    }
    async fn hubs(&self) -> Result<Vec<Hub>, StoreError> {
        Ok(page(self, Kind::Hub, HUBS, None, None, 10_000).await?.items)
    }
    async fn hub_device(&self, hub: &str, device_id: &str) -> Result<Option<HubDevice>, StoreError> {
        get(self, Kind::HubDevice, &hub_space(hub), device_id).await
    }
    async fn put_hub_device(&self, hub: &str, d: &HubDevice, pre: Precondition<'_>) -> Result<(), StoreError> {
        put(self, &hub_space(hub), d, pre).await
    }
    async fn delete_hub_device(&self, hub: &str, device_id: &str, pre: Precondition<'_>) -> Result<(), StoreError> {
        self.delete_doc(Kind::HubDevice, &hub_space(hub), device_id, pre).await
    }
    async fn hub_devices(
        &self,
        hub: &str,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<HubDevice>, StoreError> {
        page(self, Kind::HubDevice, &hub_space(hub), None, continuation, limit).await
    }
    async fn shared(&self, name: &str) -> Result<Option<SharedDoc>, StoreError> {
        get(self, Kind::Shared, SHARED, name).await
    }
    async fn put_shared(&self, doc: &SharedDoc, pre: Precondition<'_>) -> Result<(), StoreError> {
        put(self, SHARED, doc, pre).await
    }
    async fn offer(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.get_doc(Kind::Offer, OFFERS, id).await
    }
    async fn put_offer(&self, offer: &StoredOffer) -> Result<(), StoreError> {
        let doc = DocWrite { id: &offer.id, parent: None, etag: &offer.id, json: &offer.json };
        match self.put_doc(Kind::Offer, OFFERS, doc, Precondition::MustNotExist).await {
            // Same id, same text: whoever wrote it first wrote this.
            Ok(()) | Err(StoreError::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
