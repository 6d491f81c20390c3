//! Individual enrollments, enrollment groups and registration states (docs/service-api.md).

use super::query::Query;
use super::Services;
use crate::error::{Error, Result};
use crate::model::{
    validate_group_id, validate_registration_id, AttestationMechanism, AttestationType, Capabilities, EnrollmentGroup,
    IndividualEnrollment, Instance, ProvisioningStatus, RegistrationRecord, ReprovisionPolicy, SymmetricKeyAttestation,
    X509CertificateInfo, X509Certificates,
};
use crate::store::{Page, Precondition, StoreError};

/// Bulk operation modes (docs/protocol.md, "Enrollments").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkMode {
    Create,
    Update,
    UpdateIfMatchETag,
    Delete,
}

impl BulkMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "create" => Ok(BulkMode::Create),
            "update" => Ok(BulkMode::Update),
            "updateifmatchetag" => Ok(BulkMode::UpdateIfMatchETag),
            "delete" => Ok(BulkMode::Delete),
            _ => Err(Error::Invalid(format!("bulk mode {s:?} is not create, update, updateIfMatchETag or delete"))),
        }
    }
}

/// One failed item of a bulk operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkError {
    pub id: String,
    pub error_code: u32,
    pub error_status: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkResult {
    pub is_successful: bool,
    pub errors: Vec<BulkError>,
}

/// Pages through a store collection, keeping the documents that match `query`, until `limit`
/// are found or the collection ends. The continuation is the store's: the (lower-cased) id of
/// the last document looked at, so the next page resumes right after it.
type PageFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<Page<T>, StoreError>> + Send + 'a>>;

async fn filtered<'a, T, F>(
    query: &Query,
    continuation: Option<&str>,
    limit: usize,
    id: impl Fn(&T) -> String,
    fetch: F,
) -> Result<Page<T>>
where
    T: serde::Serialize,
    F: Fn(Option<String>, usize) -> PageFuture<'a, T>,
{
    let limit = limit.clamp(1, 1000);
    if query.filter.is_none() {
        return Ok(fetch(continuation.map(str::to_owned), limit).await?);
    }
    let mut items = Vec::new();
    let mut cursor = continuation.map(str::to_owned);
    loop {
        let page = fetch(cursor.clone(), limit).await?;
        let count = page.items.len();
        for (i, item) in page.items.into_iter().enumerate() {
            let doc = serde_json::to_value(&item).unwrap_or(serde_json::Value::Null);
            if !query.matches(&doc) {
                continue;
            }
            let last = id(&item).to_ascii_lowercase();
            items.push(item);
            if items.len() == limit {
                let more = i + 1 < count || page.continuation.is_some();
                return Ok(Page { items, continuation: more.then_some(last) });
            }
        }
        match page.continuation {
            Some(c) => cursor = Some(c),
            None => return Ok(Page { items, continuation: None }),
        }
    }
}

/// Most items one bulk call may carry (docs/protocol.md, "Limits").
pub const BULK_MAX: usize = 10;

fn not_found_or<T>(e: StoreError, not_found: impl FnOnce() -> Error, what: &str) -> Result<T> {
    Err(match e {
        StoreError::NotFound => not_found(),
        StoreError::PreconditionFailed => Error::PreconditionFailed(what.to_owned()),
        StoreError::AlreadyExists => Error::Conflict(format!("{what} already exists")),
        other => Error::Store(other),
    })
}

fn precondition(if_match: Option<&str>) -> Precondition<'_> {
    match if_match {
        Some(e) => Precondition::IfMatch(e),
        None => Precondition::Any,
    }
}

pub(crate) fn validate_key(which: &str, key: &str) -> Result<()> {
    match crate::base64::decode(key) {
        Some(b) if (16..=64).contains(&b.len()) => Ok(()),
        Some(b) => {
            Err(Error::Invalid(format!("{which} must be 16 to 64 bytes once base64-decoded, got {} bytes", b.len())))
        }
        None => Err(Error::Invalid(format!("{which} is not valid base64"))),
    }
}

pub(crate) fn validate_device_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "deviceId {id:?} must be 1 to 128 letters, digits or - . % _ * ? ! ( ) , : = @ $ ' +"
        )))
    }
}

/// Whether two certificate infos describe the same certificate: same SHA-256 or SHA-1 thumbprint,
/// or the same serial number from the same issuer (compared without case and separators).
fn same_certificate(a: Option<&X509CertificateInfo>, b: Option<&X509CertificateInfo>) -> bool {
    let (Some(a), Some(b)) = (a, b) else { return false };
    let norm = |s: &str| s.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_uppercase();
    let same = |x: &str, y: &str| !norm(x).is_empty() && norm(x) == norm(y);
    same(&a.sha256_thumbprint, &b.sha256_thumbprint)
        || same(&a.sha1_thumbprint, &b.sha1_thumbprint)
        || (same(&a.serial_number, &b.serial_number) && a.issuer_name.eq_ignore_ascii_case(&b.issuer_name))
}

impl Services {
    /// Fills symmetric keys (carried over from `old`, or generated), validates given ones.
    fn prepare_symmetric(&self, a: &mut AttestationMechanism, old: Option<&AttestationMechanism>) -> Result<()> {
        let keys = a.symmetric_key.get_or_insert_with(SymmetricKeyAttestation::default);
        let old = old.and_then(|o| o.symmetric_key.as_ref());
        for (slot, old_key, name) in [
            (&mut keys.primary_key, old.and_then(|o| o.primary_key.clone()), "attestation.symmetricKey.primaryKey"),
            (
                &mut keys.secondary_key,
                old.and_then(|o| o.secondary_key.clone()),
                "attestation.symmetricKey.secondaryKey",
            ),
        ] {
            match slot {
                Some(k) => validate_key(name, k)?,
                None => *slot = Some(old_key.unwrap_or_else(|| crate::ports::new_key(self.entropy.as_ref(), 64))),
            }
        }
        a.tpm = None;
        a.x509 = None;
        Ok(())
    }

    /// Parses every certificate given, fills `info`, and carries certificates over from `old`
    /// when only their `info` came back (a GET-modify-PUT round trip).
    fn prepare_certs(
        &self,
        set: &mut X509Certificates,
        old: Option<&X509Certificates>,
        field: &str,
        need_ca: bool,
    ) -> Result<()> {
        let old_slots = old.map(|o| [o.primary.clone(), o.secondary.clone()]).unwrap_or_default();
        for (i, slot) in set.slots_mut().into_iter().enumerate() {
            let which = if i == 0 { "primary" } else { "secondary" };
            let Some(cert) = slot else { continue };
            if cert.certificate.is_none() {
                // A GET-modify-PUT sends back only `info`, often reformatted (timestamps with
                // fewer digits): the certificate is the same one if its identity matches.
                let prev = old_slots.iter().flatten().find(|p| same_certificate(p.info.as_ref(), cert.info.as_ref()));
                if let Some(prev) = prev {
                    cert.certificate.clone_from(&prev.certificate);
                }
            }
            let Some(text) = cert.certificate.as_deref() else {
                return Err(Error::Invalid(format!("attestation.x509.{field}.{which}.certificate is required")));
            };
            let parsed = self
                .x509
                .parse(text)
                .map_err(|e| Error::Invalid(format!("attestation.x509.{field}.{which}.certificate: {e}")))?;
            if need_ca && !parsed.is_ca {
                return Err(Error::Invalid(format!(
                    "attestation.x509.{field}.{which}.certificate ({}) is not a CA certificate (basicConstraints CA:TRUE is required for a signing certificate)",
                    parsed.info.subject_name
                )));
            }
            cert.certificate = Some(parsed.pem);
            cert.info = Some(parsed.info);
        }
        if set.primary.is_none() && set.secondary.is_none() {
            return Err(Error::Invalid(format!("attestation.x509.{field} needs a primary or a secondary certificate")));
        }
        Ok(())
    }

    async fn prepare_attestation(
        &self,
        instance: &Instance,
        a: &mut AttestationMechanism,
        old: Option<&AttestationMechanism>,
        group: bool,
    ) -> Result<()> {
        let old = old.filter(|o| o.kind == a.kind);
        match a.kind {
            AttestationType::SymmetricKey => self.prepare_symmetric(a, old),
            AttestationType::Tpm if group => {
                Err(Error::Invalid("enrollment groups support x509 and symmetricKey attestation, not tpm".into()))
            }
            AttestationType::Tpm => {
                let ek = a.tpm.as_ref().map(|t| t.endorsement_key.clone()).unwrap_or_default();
                if crate::base64::decode(&ek).is_none() {
                    return Err(Error::Invalid("attestation.tpm.endorsementKey is required and must be base64".into()));
                }
                // An EK no device could ever attest with is refused now, not at registration.
                match self.tpm.check_endorsement_key(&ek) {
                    Ok(()) | Err(crate::ports::TpmKeyError::Disabled) => {}
                    Err(e) => return Err(Error::Invalid(format!("attestation.tpm.endorsementKey: {e}"))),
                }
                if let Some(srk) = a.tpm.as_ref().and_then(|t| t.storage_root_key.as_deref()) {
                    if crate::base64::decode(srk).is_none() {
                        return Err(Error::Invalid("attestation.tpm.storageRootKey must be base64".into()));
                    }
                }
                a.x509 = None;
                a.symmetric_key = None;
                Ok(())
            }
            AttestationType::X509 => {
                let x = a.x509.get_or_insert_with(Default::default);
                let old_x = old.and_then(|o| o.x509.as_ref());
                a.tpm = None;
                a.symmetric_key = None;
                if group {
                    x.client_certificates = None;
                    match (&mut x.signing_certificates, &x.ca_references) {
                        (Some(set), None) => self.prepare_certs(set, old_x.and_then(|o| o.signing_certificates.as_ref()), "signingCertificates", true),
                        (None, Some(refs)) => {
                            if refs.primary.is_none() && refs.secondary.is_none() {
                                return Err(Error::Invalid(
                                    "attestation.x509.caReferences needs a primary or a secondary CA name".into(),
                                ));
                            }
                            for name in refs.primary.iter().chain(refs.secondary.iter()) {
                                if self.store.certificate(&instance.name, name).await?.is_none() {
                                    return Err(Error::Invalid(format!(
                                        "attestation.x509.caReferences names CA certificate {name:?}, which this instance does not have (upload it first)"
                                    )));
                                }
                            }
                            Ok(())
                        }
                        _ => Err(Error::Invalid(
                            "an X.509 enrollment group needs exactly one of attestation.x509.signingCertificates or attestation.x509.caReferences".into(),
                        )),
                    }
                } else {
                    x.signing_certificates = None;
                    x.ca_references = None;
                    let set = x.client_certificates.as_mut().ok_or_else(|| {
                        Error::Invalid(
                            "an X.509 individual enrollment needs attestation.x509.clientCertificates (primary or secondary)".into(),
                        )
                    })?;
                    self.prepare_certs(
                        set,
                        old_x.and_then(|o| o.client_certificates.as_ref()),
                        "clientCertificates",
                        false,
                    )
                }
            }
            AttestationType::None => Err(Error::Invalid("attestation.type must be symmetricKey, x509 or tpm".into())),
        }
    }

    fn check_hubs(instance: &Instance, hubs: Option<&Vec<String>>, single: Option<&String>) -> Result<()> {
        for h in hubs.into_iter().flatten().chain(single) {
            if !instance.iot_hubs.iter().any(|l| l.name.eq_ignore_ascii_case(h)) {
                return Err(Error::Invalid(format!("IoT hub {h:?} is not linked to DPS instance {}", instance.name)));
            }
        }
        Ok(())
    }

    fn check_common(
        &self,
        instance: &Instance,
        twin: Option<&serde_json::Value>,
        hubs: Option<&Vec<String>>,
        single: Option<&String>,
        custom: Option<&crate::model::CustomAllocationDefinition>,
        policy: Option<crate::model::AllocationPolicy>,
    ) -> Result<()> {
        if let Some(t) = twin {
            if !t.is_object() && !t.is_null() {
                return Err(Error::Invalid("initialTwin must be an object".into()));
            }
        }
        Self::check_hubs(instance, hubs, single)?;
        if policy == Some(crate::model::AllocationPolicy::Custom) && custom.is_none() {
            return Err(Error::Invalid(
                "allocationPolicy custom needs customAllocationDefinition {webhookUrl, apiVersion}".into(),
            ));
        }
        if let Some(c) = custom {
            let url = c.webhook_url.to_ascii_lowercase();
            let local = url.starts_with("http://localhost")
                || url.starts_with("http://127.")
                || url.starts_with("http://[::1]");
            if !(url.starts_with("https://") || (local && self.allow_http_localhost_webhooks)) {
                let hint = if local {
                    " (plain http to localhost needs [allocation] allow_http_localhost = true)"
                } else {
                    ""
                };
                return Err(Error::Invalid(format!(
                    "customAllocationDefinition.webhookUrl must be an https:// URL{hint}"
                )));
            }
            if c.api_version.is_empty() {
                return Err(Error::Invalid("customAllocationDefinition.apiVersion is required".into()));
            }
        }
        Ok(())
    }

    pub async fn enrollment(&self, instance: &Instance, id: &str) -> Result<IndividualEnrollment> {
        self.store.enrollment(&instance.name, id).await?.ok_or_else(|| Error::EnrollmentNotFound(id.to_owned()))
    }

    /// Create or replace (`PUT /enrollments/{id}`). Returns the stored enrollment (with secrets:
    /// the adapter decides what to show).
    pub async fn put_enrollment(
        &self,
        instance: &Instance,
        path_id: &str,
        mut e: IndividualEnrollment,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment> {
        validate_registration_id(path_id).map_err(Error::Invalid)?;
        if e.registration_id.is_empty() {
            e.registration_id = path_id.to_owned();
        }
        if !e.registration_id.eq_ignore_ascii_case(path_id) {
            return Err(Error::Invalid(format!(
                "registrationId {:?} in the body does not match {path_id:?} in the path",
                e.registration_id
            )));
        }
        if let Some(d) = &e.device_id {
            validate_device_id(d)?;
        }
        self.check_common(
            instance,
            e.initial_twin.as_ref(),
            e.iot_hubs.as_ref(),
            e.iot_hub_host_name.as_ref(),
            e.custom_allocation_definition.as_ref(),
            e.allocation_policy,
        )?;
        let old = self.store.enrollment(&instance.name, path_id).await?;
        if let (Some(_), None) = (if_match, &old) {
            // HTTP: If-Match (even `*`) on a missing resource is a failed precondition.
            return Err(Error::PreconditionFailed(format!("enrollment {path_id} (it does not exist)")));
        }
        self.prepare_attestation(instance, &mut e.attestation, old.as_ref().map(|o| &o.attestation), false).await?;
        let now = self.now();
        e.created_date_time_utc =
            Some(old.as_ref().and_then(|o| o.created_date_time_utc.clone()).unwrap_or_else(|| now.clone()));
        e.last_updated_date_time_utc = Some(now);
        e.etag = Some(self.etag());
        e.registration_state = None;
        e.capabilities.get_or_insert_with(Capabilities::default);
        e.provisioning_status.get_or_insert(ProvisioningStatus::Enabled);
        e.reprovision_policy
            .get_or_insert(ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: true });
        match self.store.put_enrollment(&instance.name, &e, precondition(if_match)).await {
            Ok(()) => Ok(e),
            Err(err) => {
                not_found_or(err, || Error::EnrollmentNotFound(path_id.to_owned()), &format!("enrollment {path_id}"))
            }
        }
    }

    /// Deletes an individual enrollment and the registration record it made (as DPS does): a
    /// later registration of the same id through a group starts afresh.
    pub async fn delete_enrollment(&self, instance: &Instance, id: &str, if_match: Option<&str>) -> Result<()> {
        if let Err(err) = self.store.delete_enrollment(&instance.name, id, precondition(if_match)).await {
            return not_found_or(err, || Error::EnrollmentNotFound(id.to_owned()), &format!("enrollment {id}"));
        }
        match self.store.delete_tpm_keys(&instance.name, id, Precondition::Any).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(other) => return Err(Error::Store(other)),
        }
        if let Some(r) = self.store.registration(&instance.name, id).await? {
            if r.enrollment_group_id.is_none() {
                match self.store.delete_registration(&instance.name, id, Precondition::Any).await {
                    Ok(()) | Err(StoreError::NotFound) => {}
                    Err(other) => return Err(Error::Store(other)),
                }
            }
        }
        Ok(())
    }

    pub async fn enrollments(
        &self,
        instance: &Instance,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<IndividualEnrollment>> {
        Ok(self.store.enrollments(&instance.name, continuation, limit.clamp(1, 1000)).await?)
    }

    /// A page of the enrollments matching `query` (every one without `WHERE`).
    pub async fn query_enrollments(
        &self,
        instance: &Instance,
        query: &Query,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<IndividualEnrollment>> {
        query.check_collection("enrollments")?;
        filtered(
            query,
            continuation,
            limit,
            |e: &IndividualEnrollment| e.registration_id.clone(),
            |c, n| Box::pin(async move { self.store.enrollments(&instance.name, c.as_deref(), n).await }),
        )
        .await
    }

    /// A page of the enrollment groups matching `query` (every one without `WHERE`).
    pub async fn query_groups(
        &self,
        instance: &Instance,
        query: &Query,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<EnrollmentGroup>> {
        query.check_collection("enrollmentGroups")?;
        filtered(
            query,
            continuation,
            limit,
            |g: &EnrollmentGroup| g.enrollment_group_id.clone(),
            |c, n| Box::pin(async move { self.store.groups(&instance.name, c.as_deref(), n).await }),
        )
        .await
    }

    pub async fn group(&self, instance: &Instance, id: &str) -> Result<EnrollmentGroup> {
        self.store.group(&instance.name, id).await?.ok_or_else(|| Error::GroupNotFound(id.to_owned()))
    }

    pub async fn put_group(
        &self,
        instance: &Instance,
        path_id: &str,
        mut g: EnrollmentGroup,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup> {
        validate_group_id(path_id).map_err(Error::Invalid)?;
        if g.enrollment_group_id.is_empty() {
            g.enrollment_group_id = path_id.to_owned();
        }
        if !g.enrollment_group_id.eq_ignore_ascii_case(path_id) {
            return Err(Error::Invalid(format!(
                "enrollmentGroupId {:?} in the body does not match {path_id:?} in the path",
                g.enrollment_group_id
            )));
        }
        self.check_common(
            instance,
            g.initial_twin.as_ref(),
            g.iot_hubs.as_ref(),
            g.iot_hub_host_name.as_ref(),
            g.custom_allocation_definition.as_ref(),
            g.allocation_policy,
        )?;
        let old = self.store.group(&instance.name, path_id).await?;
        if let (Some(_), None) = (if_match, &old) {
            // HTTP: If-Match (even `*`) on a missing resource is a failed precondition.
            return Err(Error::PreconditionFailed(format!("enrollment group {path_id} (it does not exist)")));
        }
        self.prepare_attestation(instance, &mut g.attestation, old.as_ref().map(|o| &o.attestation), true).await?;
        let now = self.now();
        g.created_date_time_utc =
            Some(old.as_ref().and_then(|o| o.created_date_time_utc.clone()).unwrap_or_else(|| now.clone()));
        g.last_updated_date_time_utc = Some(now);
        g.etag = Some(self.etag());
        g.capabilities.get_or_insert_with(Capabilities::default);
        g.provisioning_status.get_or_insert(ProvisioningStatus::Enabled);
        g.reprovision_policy
            .get_or_insert(ReprovisionPolicy { update_hub_assignment: true, migrate_device_data: true });
        match self.store.put_group(&instance.name, &g, precondition(if_match)).await {
            Ok(()) => Ok(g),
            Err(err) => {
                not_found_or(err, || Error::GroupNotFound(path_id.to_owned()), &format!("enrollment group {path_id}"))
            }
        }
    }

    pub async fn delete_group(&self, instance: &Instance, id: &str, if_match: Option<&str>) -> Result<()> {
        match self.store.delete_group(&instance.name, id, precondition(if_match)).await {
            Ok(()) => Ok(()),
            Err(err) => not_found_or(err, || Error::GroupNotFound(id.to_owned()), &format!("enrollment group {id}")),
        }
    }

    pub async fn groups(
        &self,
        instance: &Instance,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<EnrollmentGroup>> {
        Ok(self.store.groups(&instance.name, continuation, limit.clamp(1, 1000)).await?)
    }

    /// A registration as the service API shows it: its TLS facts whole.
    pub async fn registration(&self, instance: &Instance, id: &str) -> Result<RegistrationRecord> {
        let r = self.store.registration(&instance.name, id).await?;
        self.whole_facts(r.ok_or_else(|| Error::RegistrationNotFound(id.to_owned()))?).await
    }

    pub async fn delete_registration(&self, instance: &Instance, id: &str, if_match: Option<&str>) -> Result<()> {
        match self.store.delete_registration(&instance.name, id, precondition(if_match)).await {
            Ok(()) => Ok(()),
            Err(err) => not_found_or(err, || Error::RegistrationNotFound(id.to_owned()), &format!("registration {id}")),
        }
    }

    pub async fn registrations(
        &self,
        instance: &Instance,
        group_id: Option<&str>,
        continuation: Option<&str>,
        limit: usize,
    ) -> Result<Page<RegistrationRecord>> {
        let page = self.store.registrations(&instance.name, group_id, continuation, limit.clamp(1, 1000)).await?;
        let mut items = Vec::with_capacity(page.items.len());
        for r in page.items {
            items.push(self.whole_facts(r).await?);
        }
        Ok(Page { items, continuation: page.continuation })
    }

    /// Bulk individual enrollments: each item applied on its own; failures reported per item.
    pub async fn bulk_enrollments(
        &self,
        instance: &Instance,
        mode: BulkMode,
        items: Vec<IndividualEnrollment>,
    ) -> Result<BulkResult> {
        if items.len() > BULK_MAX {
            return Err(Error::Invalid(format!(
                "a bulk operation takes at most {BULK_MAX} enrollments, got {}",
                items.len()
            )));
        }
        let mut errors = Vec::new();
        for e in items {
            let id = e.registration_id.clone();
            let r = match mode {
                BulkMode::Create => {
                    if self.store.enrollment(&instance.name, &id).await?.is_some() {
                        Err(Error::Conflict(format!("enrollment {id} already exists")))
                    } else {
                        self.put_enrollment(instance, &id, e, None).await.map(|_| ())
                    }
                }
                BulkMode::Update => self.put_enrollment(instance, &id, e, None).await.map(|_| ()),
                BulkMode::UpdateIfMatchETag => {
                    let tag = e.etag.clone();
                    self.put_enrollment(instance, &id, e, Some(tag.as_deref().unwrap_or("\"missing\"")))
                        .await
                        .map(|_| ())
                }
                BulkMode::Delete => {
                    let tag = e.etag.clone();
                    self.delete_enrollment(instance, &id, tag.as_deref()).await
                }
            };
            if let Err(err) = r {
                errors.push(BulkError { id, error_code: err.code(), error_status: err.to_string() });
            }
        }
        Ok(BulkResult { is_successful: errors.is_empty(), errors })
    }

    /// Bulk enrollment groups, as [`Services::bulk_enrollments`].
    pub async fn bulk_groups(
        &self,
        instance: &Instance,
        mode: BulkMode,
        items: Vec<EnrollmentGroup>,
    ) -> Result<BulkResult> {
        if items.len() > BULK_MAX {
            return Err(Error::Invalid(format!(
                "a bulk operation takes at most {BULK_MAX} enrollment groups, got {}",
                items.len()
            )));
        }
        let mut errors = Vec::new();
        for g in items {
            let id = g.enrollment_group_id.clone();
            let r = match mode {
                BulkMode::Create => {
                    if self.store.group(&instance.name, &id).await?.is_some() {
                        Err(Error::Conflict(format!("enrollment group {id} already exists")))
                    } else {
                        self.put_group(instance, &id, g, None).await.map(|_| ())
                    }
                }
                BulkMode::Update => self.put_group(instance, &id, g, None).await.map(|_| ()),
                BulkMode::UpdateIfMatchETag => {
                    let tag = g.etag.clone();
                    self.put_group(instance, &id, g, Some(tag.as_deref().unwrap_or("\"missing\""))).await.map(|_| ())
                }
                BulkMode::Delete => {
                    let tag = g.etag.clone();
                    self.delete_group(instance, &id, tag.as_deref()).await
                }
            };
            if let Err(err) = r {
                errors.push(BulkError { id, error_code: err.code(), error_status: err.to_string() });
            }
        }
        Ok(BulkResult { is_successful: errors.is_empty(), errors })
    }
}
