//! Device authentication, one function per evidence type behind one entry point
//! ([`Services::attest`]), (docs/protocol.md, "Device SAS tokens").
//!
//! An unknown device and a wrong credential get the same answer, so enrollments cannot be
//! enumerated. Only this module makes an [`Attested`].

use std::time::SystemTime;

use super::Services;
use crate::device::{ConnectionFacts, Credential, TpmKeys};
use crate::error::{Error, Result};
use crate::model::{
    AttestationMechanism, AttestationType, EnrollmentGroup, IdScope, IndividualEnrollment, Instance, IssuedTpmKey,
    TpmIssuedKeys, X509CertificateInfo, MAX_ISSUED_TPM_KEYS,
};
use crate::ports::TpmKeyError;
use crate::store::{Precondition, StoreError};
use crate::tls::{PeerCertificates, TlsVersion};

/// The enrollment a device authenticated against.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one per connection; boxing buys nothing
pub(crate) enum EnrollmentSource {
    Individual(IndividualEnrollment),
    Group(EnrollmentGroup),
}

/// A device whose credential core has checked against its enrollment. Only core makes one.
#[derive(Clone, Debug)]
pub struct Attested {
    pub(crate) instance: Instance,
    pub(crate) registration_id: String,
    pub(crate) source: EnrollmentSource,
    pub(crate) kind: AttestationType,
    /// For X.509 devices, the leaf's info (returned in `registrationState.x509`).
    pub(crate) certificate: Option<X509CertificateInfo>,
    /// When the credential stops being valid (a SAS token's expiry).
    pub(crate) valid_until: Option<SystemTime>,
    /// For TPM devices, the issued key the device's SAS was signed with (and the EK/SRK it was
    /// wrapped for): the final result hands it over again (`tpm.authenticationKey`).
    pub(crate) tpm: Option<IssuedTpmKey>,
}

impl Attested {
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    pub fn registration_id(&self) -> &str {
        &self.registration_id
    }

    pub fn kind(&self) -> AttestationType {
        self.kind
    }

    /// The enrollment group the device came through, if any.
    pub fn group_id(&self) -> Option<&str> {
        match &self.source {
            EnrollmentSource::Group(g) => Some(&g.enrollment_group_id),
            EnrollmentSource::Individual(_) => None,
        }
    }
}

/// An attested device as an idle connection keeps it: the names needed to read its enrollment
/// again and a digest of the attestation it was checked against, not the enrollment and
/// instance records themselves (docs/performance.md, "Idle connections").
#[derive(Debug)]
pub(crate) struct Dormant {
    instance: String,
    registration_id: String,
    group_id: Option<String>,
    attestation: AttestationDigest,
    kind: AttestationType,
    certificate: Option<Box<X509CertificateInfo>>,
    valid_until: Option<SystemTime>,
    tpm: Option<Box<IssuedTpmKey>>,
}

/// SHA-256 of an attestation mechanism's JSON form: equal exactly when the mechanisms are (the
/// form is deterministic: fixed field order, absent fields left out), in 32 bytes instead of
/// the mechanism's kilobyte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AttestationDigest([u8; 32]);

impl AttestationDigest {
    fn of(a: &AttestationMechanism) -> Self {
        use sha2::Digest;
        let json = serde_json::to_vec(a).unwrap_or_default();
        AttestationDigest(sha2::Sha256::digest(&json).into())
    }
}

impl Attested {
    /// What an idle connection keeps of this device (see [`Dormant`]): a few names, not the
    /// records.
    pub(crate) fn dormant(&self) -> Dormant {
        let (group_id, attestation) = match &self.source {
            EnrollmentSource::Individual(e) => (None, &e.attestation),
            EnrollmentSource::Group(g) => (Some(g.enrollment_group_id.clone()), &g.attestation),
        };
        Dormant {
            instance: self.instance.name.clone(),
            registration_id: self.registration_id.clone(),
            group_id,
            attestation: AttestationDigest::of(attestation),
            kind: self.kind,
            certificate: self.certificate.clone().map(Box::new),
            valid_until: self.valid_until,
            tpm: self.tpm.clone().map(Box::new),
        }
    }
}

/// Who a request acts for, as the store keys it: all that reading a device's registration
/// needs, from an [`Attested`] or a [`Dormant`] alike.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Device<'a> {
    pub(crate) instance: &'a str,
    pub(crate) registration_id: &'a str,
    /// A TPM device's issued key (its final result hands the key over again).
    pub(crate) tpm: Option<&'a IssuedTpmKey>,
}

impl Attested {
    pub(crate) fn device(&self) -> Device<'_> {
        Device { instance: &self.instance.name, registration_id: &self.registration_id, tpm: self.tpm.as_ref() }
    }
}

impl Dormant {
    pub(crate) fn device(&self) -> Device<'_> {
        Device { instance: &self.instance, registration_id: &self.registration_id, tpm: self.tpm.as_deref() }
    }
}

/// The outcome of checking a credential.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per authentication, moved once; boxing buys nothing
pub(crate) enum Attestation {
    Attested(Attested),
    /// The TPM activation challenge (base64 blob) the device must answer.
    Challenge {
        authentication_key: String,
    },
}

const DENIED: &str = "the device could not be authenticated";

/// A TPM key OpenDPS cannot use is the device's error (400); a server without TPM attestation
/// or a failed blob is the server's.
fn tpm_refusal(e: TpmKeyError) -> Error {
    match e {
        TpmKeyError::Unsupported(m) => Error::Invalid(m),
        TpmKeyError::Disabled => Error::Unauthorized(e.to_string()),
        other => Error::Internal(other.to_string()),
    }
}

fn denied() -> Error {
    Error::Unauthorized(DENIED.into())
}

impl Services {
    /// The instance with ID scope `scope`, for a device: an unknown scope is the same 401 as
    /// any other authentication failure. The connection's TLS version is checked against the
    /// instance's `minTlsVersion` as soon as the scope is known (docs/tls.md, "minTlsVersion per instance").
    pub(crate) async fn device_instance(&self, scope: &str, negotiated: Option<TlsVersion>) -> Result<Instance> {
        let scope = IdScope::parse(scope).map_err(|_| denied())?;
        let instance = self.instance_by_scope(&scope).await?.ok_or_else(denied)?;
        if let (Some(min), Some(v)) = (instance.min_tls_version, negotiated) {
            if !min.admits(v) {
                return Err(Error::Forbidden(format!(
                    "this DPS instance requires TLS {} or newer (minTlsVersion); the connection uses {v}",
                    min.as_str()
                )));
            }
        }
        Ok(instance)
    }

    /// The instance with ID scope `scope`: from the cache while the store's instances version
    /// says no instance changed (one small read instead of the instance's record read and its
    /// keys unsealed), else read again (docs/performance.md, "Instance cache").
    async fn instance_by_scope(&self, scope: &IdScope) -> Result<Option<Instance>> {
        // The version is read before the instance, as for groups.
        let version = self.store.instances_version().await?;
        if let Some(instance) = self.instance_cache.get(version, scope.as_str()) {
            return Ok(Some(instance));
        }
        let Some(instance) = self.store.instance_by_scope(scope).await? else { return Ok(None) };
        self.instance_cache.put(version, scope.as_str(), instance.clone());
        Ok(Some(instance))
    }

    /// Checks `credential` for `registration_id` of `instance` on connection `conn` (its TLS
    /// client chain, leaf first, is used for [`Credential::ClientCertificate`]).
    pub(crate) async fn attest(
        &self,
        instance: Instance,
        registration_id: &str,
        credential: Credential<'_>,
        conn: &ConnectionFacts,
    ) -> Result<Attestation> {
        crate::model::validate_registration_id(registration_id).map_err(Error::Invalid)?;
        // The individual enrollment, when read here already: the checks below use it rather
        // than read it again.
        let mut read = None;
        if !conn.transport.offers_tpm() {
            // DPS has no TPM exchange over MQTT: a TPM enrollment's device is told so (the
            // one refusal that names the kind of an enrollment; docs/tpm.md, "Transports").
            let individual = self.store.enrollment(&instance.name, registration_id).await?;
            if individual.as_ref().is_some_and(|e| e.attestation.kind == AttestationType::Tpm) {
                return Err(Error::Unauthorized(format!(
                    "{registration_id} has a TPM enrollment, and TPM attestation is not available over MQTT: \
                     register over HTTPS or AMQP (as with Azure DPS)"
                )));
            }
            read = Some(individual);
        }
        let chain = conn.peer_certificates.as_ref();
        match credential {
            Credential::Sas(token) => self.attest_sas(instance, registration_id, token, read).await,
            Credential::ClientCertificate if chain.0.is_empty() => {
                Err(Error::Unauthorized("the device presented no credential (SAS token or X.509 certificate)".into()))
            }
            Credential::ClientCertificate => self.attest_x509(instance, registration_id, chain, read).await,
            Credential::Tpm(keys) => self.attest_tpm(instance, registration_id, keys).await,
        }
    }

    /// The individual enrollment of `registration_id`: the one `read` already, else from the store.
    async fn individual(
        &self,
        instance: &Instance,
        registration_id: &str,
        read: Option<Option<IndividualEnrollment>>,
    ) -> Result<Option<IndividualEnrollment>> {
        match read {
            Some(e) => Ok(e),
            None => Ok(self.store.enrollment(&instance.name, registration_id).await?),
        }
    }

    async fn attest_sas(
        &self,
        instance: Instance,
        registration_id: &str,
        token: &str,
        read: Option<Option<IndividualEnrollment>>,
    ) -> Result<Attestation> {
        let now = self.clock.now();
        let resource = format!("{}/registrations/{registration_id}", instance.id_scope.as_str());
        let check = |keys: Vec<String>| self.crypto.verify_sas(token, &resource, &keys, now);
        let attested = |source, valid_until| {
            Attestation::Attested(Attested {
                instance: instance.clone(),
                registration_id: registration_id.to_owned(),
                source,
                kind: AttestationType::SymmetricKey,
                certificate: None,
                valid_until,
                tpm: None,
            })
        };
        // Token-level problems (expired, wrong resource) are said; which key failed is not.
        if let Some(e) = self.individual(&instance, registration_id, read).await? {
            if e.attestation.kind == AttestationType::Tpm {
                // A TPM device signs with the key it was issued in its last challenges.
                if let Some((issued, until)) = self.check_tpm_sas(&instance, &e, registration_id, token).await? {
                    return Ok(Attestation::Attested(Attested {
                        instance: instance.clone(),
                        registration_id: registration_id.to_owned(),
                        source: EnrollmentSource::Individual(e),
                        kind: AttestationType::Tpm,
                        certificate: None,
                        valid_until: Some(until),
                        tpm: Some(issued),
                    }));
                }
            }
            if let Some(k) =
                e.attestation.symmetric_key.as_ref().filter(|_| e.attestation.kind == AttestationType::SymmetricKey)
            {
                let keys = [&k.primary_key, &k.secondary_key].into_iter().flatten().cloned().collect();
                if let Some(until) = check(keys).map_err(|e| Error::Unauthorized(e.to_string()))? {
                    return Ok(attested(EnrollmentSource::Individual(e), Some(until)));
                }
            }
        }
        let mut token_error = None;
        for g in self.device_groups(&instance).await?.iter() {
            let Some(k) =
                g.attestation.symmetric_key.as_ref().filter(|_| g.attestation.kind == AttestationType::SymmetricKey)
            else {
                continue;
            };
            let keys: Vec<String> = [&k.primary_key, &k.secondary_key]
                .into_iter()
                .flatten()
                .filter_map(|gk| self.crypto.derive_key(gk, registration_id))
                .collect();
            match check(keys) {
                Ok(Some(until)) => return Ok(attested(EnrollmentSource::Group(g.clone()), Some(until))),
                Ok(None) => {}
                Err(e) => token_error = Some(e),
            }
        }
        if let Some(e) = token_error {
            return Err(Error::Unauthorized(e.to_string()));
        }
        // One more check so a malformed token is named even with no enrollments at all.
        check(Vec::new()).map_err(|e| Error::Unauthorized(e.to_string()))?;
        Err(denied())
    }

    async fn attest_x509(
        &self,
        instance: Instance,
        registration_id: &str,
        chain: &PeerCertificates,
        read: Option<Option<IndividualEnrollment>>,
    ) -> Result<Attestation> {
        let now = self.clock.now();
        let leaf = chain.leaf().ok_or_else(denied)?;
        let facts = self.crypto.leaf(leaf, now).map_err(|_| denied())?;
        if !facts.common_name.eq_ignore_ascii_case(registration_id) {
            return Err(Error::Unauthorized(format!(
                "the certificate's subject CN {:?} is not the registration id {registration_id:?}",
                crate::device::excerpt(&facts.common_name, 130)
            )));
        }
        if !facts.time_valid {
            return Err(Error::Unauthorized("the device certificate is expired or not yet valid".into()));
        }
        let attested = |source, info| {
            Attestation::Attested(Attested {
                instance: instance.clone(),
                registration_id: registration_id.to_owned(),
                source,
                kind: AttestationType::X509,
                certificate: Some(info),
                valid_until: None,
                tpm: None,
            })
        };
        if let Some(e) = self.individual(&instance, registration_id, read).await? {
            let matches = e.attestation.kind == AttestationType::X509
                && e.attestation.x509.as_ref().and_then(|x| x.client_certificates.as_ref()).is_some_and(|set| {
                    set.slots().into_iter().flatten().any(|c| {
                        c.info
                            .as_ref()
                            .is_some_and(|i| i.sha256_thumbprint.eq_ignore_ascii_case(&facts.sha256_thumbprint))
                    })
                });
            if matches {
                return Ok(attested(EnrollmentSource::Individual(e), facts.info));
            }
        }
        // Groups: the one whose CA vouches for the certificate closest to the leaf wins (the
        // first intermediate, then the next one up; docs/protocol.md, "X.509 attestation").
        let mut best: Option<(usize, &EnrollmentGroup)> = None;
        let groups = self.device_groups(&instance).await?;
        for g in groups.iter() {
            if g.attestation.kind != AttestationType::X509 {
                continue;
            }
            let Some(x) = &g.attestation.x509 else { continue };
            let mut anchors: Vec<String> = Vec::new();
            if let Some(set) = &x.signing_certificates {
                anchors.extend(set.slots().into_iter().flatten().filter_map(|c| c.certificate.clone()));
            }
            if let Some(refs) = &x.ca_references {
                for name in [&refs.primary, &refs.secondary].into_iter().flatten() {
                    // Only CAs verified by proof of possession count.
                    if let Some(ca) = self.store.certificate(&instance.name, name).await?.filter(|c| c.is_verified) {
                        anchors.push(ca.certificate);
                    }
                }
            }
            let depth = anchors.iter().filter_map(|a| self.crypto.chain_depth(chain, a, now)).min();
            if let Some(d) = depth {
                if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
                    best = Some((d, g));
                }
            }
        }
        if let Some((_, g)) = best {
            return Ok(attested(EnrollmentSource::Group(g.clone()), facts.info));
        }
        Err(denied())
    }

    /// A TPM device asking for its challenge (docs/tpm.md, "In the request path"): its EK must be the
    /// enrollment's; the challenge issues a fresh key, kept in the store (so any node can check
    /// the SAS that follows) and handed to that TPM in the activation blob.
    ///
    /// An id with no TPM enrollment and an EK that is not the enrollment's get the same 404
    /// (404201, as DPS answers an unknown TPM device): a 401 would be taken for a challenge by
    /// the C# client.
    async fn attest_tpm(&self, instance: Instance, registration_id: &str, keys: &TpmKeys) -> Result<Attestation> {
        let not_enrolled = || Error::EnrollmentNotFound(registration_id.to_owned());
        // Keys OpenDPS cannot use are said before any enrollment is looked at (no enumeration).
        self.tpm.check_endorsement_key(&keys.endorsement_key).map_err(tpm_refusal)?;
        let srk = keys.storage_root_key.as_deref().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            Error::Invalid("tpm.storageRootKey is required: the issued key is imported under it".into())
        })?;
        self.tpm.check_storage_root_key(srk).map_err(tpm_refusal)?;
        let enrolled = self
            .store
            .enrollment(&instance.name, registration_id)
            .await?
            .filter(|e| e.attestation.kind == AttestationType::Tpm)
            .and_then(|e| e.attestation.tpm.map(|t| t.endorsement_key))
            .ok_or_else(not_enrolled)?;
        if !self.tpm.same_endorsement_key(&enrolled, &keys.endorsement_key) {
            return Err(not_enrolled());
        }
        let challenge = self.tpm.challenge(&keys.endorsement_key, srk).map_err(tpm_refusal)?;
        let issued = IssuedTpmKey {
            endorsement_key: keys.endorsement_key.clone(),
            storage_root_key: srk.to_owned(),
            key: challenge.issued_key.clone(),
            issued_date_time_utc: self.now(),
        };
        self.remember_tpm_key(&instance, registration_id, issued).await?;
        Ok(Attestation::Challenge { authentication_key: challenge.authentication_key })
    }

    /// Files a newly issued key first among the registration's issued keys (at most
    /// [`MAX_ISSUED_TPM_KEYS`]); a concurrent challenge of the same id is merged, not lost.
    async fn remember_tpm_key(&self, instance: &Instance, registration_id: &str, issued: IssuedTpmKey) -> Result<()> {
        for _attempt in 0..3 {
            let current = self.store.tpm_keys(&instance.name, registration_id).await?;
            let mut keys = vec![issued.clone()];
            if let Some(c) = &current {
                keys.extend(c.keys.iter().take(MAX_ISSUED_TPM_KEYS - 1).cloned());
            }
            let doc = TpmIssuedKeys { registration_id: registration_id.to_owned(), etag: self.etag(), keys };
            let pre = match &current {
                Some(c) => Precondition::IfMatch(&c.etag),
                None => Precondition::MustNotExist,
            };
            match self.store.put_tpm_keys(&instance.name, &doc, pre).await {
                Ok(()) => return Ok(()),
                Err(StoreError::AlreadyExists | StoreError::PreconditionFailed | StoreError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!("the TPM challenge of {registration_id} is being changed concurrently; retry")))
    }

    /// Whether `token` was signed with a key issued to the TPM of enrollment `e` (for its
    /// current EK). `Ok(None)` when none signed it; token-level problems are errors.
    async fn check_tpm_sas(
        &self,
        instance: &Instance,
        e: &IndividualEnrollment,
        registration_id: &str,
        token: &str,
    ) -> Result<Option<(IssuedTpmKey, SystemTime)>> {
        let Some(enrolled) = e.attestation.tpm.as_ref().map(|t| t.endorsement_key.as_str()) else {
            return Ok(None);
        };
        let Some(issued) = self.store.tpm_keys(&instance.name, registration_id).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let resource = format!("{}/registrations/{registration_id}", instance.id_scope.as_str());
        for k in issued.keys {
            if !self.tpm.same_endorsement_key(enrolled, &k.endorsement_key) {
                continue;
            }
            let verified = self
                .crypto
                .verify_sas(token, &resource, std::slice::from_ref(&k.key), now)
                .map_err(|e| Error::Unauthorized(e.to_string()))?;
            if let Some(until) = verified {
                return Ok(Some((k, until)));
            }
        }
        Ok(None)
    }

    /// The groups of `instance` a device may belong to: from the cache while the store's
    /// groups version says they are unchanged (one small read instead of every group read and
    /// its keys unsealed), else read again (docs/performance.md, "Group cache").
    async fn device_groups(&self, instance: &Instance) -> Result<std::sync::Arc<[EnrollmentGroup]>> {
        // The version is read before the groups: a write that lands in between leaves the
        // cache tagged with the older version, to be read again next time.
        let version = self.store.groups_version().await?;
        if let Some(groups) = self.group_cache.get(version, &instance.name) {
            return Ok(groups);
        }
        let groups: std::sync::Arc<[EnrollmentGroup]> = self.all_groups(instance).await?.into();
        if groups.len() <= GROUPS_CACHED_MAX {
            self.group_cache.put(version, &instance.name, groups.clone());
        }
        Ok(groups)
    }

    async fn all_groups(&self, instance: &Instance) -> Result<Vec<EnrollmentGroup>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Pages of 100: a store may answer pages that small on the calling thread.
            let page = self.store.groups(&instance.name, token.as_deref(), 100).await?;
            out.extend(page.items);
            match page.continuation {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// A device read again under `instance` (just read): its enrollment as it is now in the
    /// store (a connection may live longer than an enrollment stays unchanged), `None` when it
    /// is gone or no longer the one the device was checked against.
    pub(crate) async fn revive(&self, instance: Instance, d: &Dormant) -> Result<Option<Attested>> {
        let same = |a: &AttestationMechanism| AttestationDigest::of(a) == d.attestation;
        let source = match d.group_id.as_deref() {
            None => self
                .store
                .enrollment(&instance.name, &d.registration_id)
                .await?
                .filter(|e| same(&e.attestation))
                .map(EnrollmentSource::Individual),
            Some(id) => self
                .store
                .group(&instance.name, id)
                .await?
                .filter(|g| same(&g.attestation))
                .map(EnrollmentSource::Group),
        };
        Ok(source.map(|source| Attested {
            instance,
            registration_id: d.registration_id.clone(),
            source,
            kind: d.kind,
            certificate: d.certificate.as_deref().cloned(),
            valid_until: d.valid_until,
            tpm: d.tpm.as_deref().cloned(),
        }))
    }
}

/// Values read from the store for devices, tagged with the version counter the store had
/// when they were read (read *before* them): any write of that kind of record, on any node,
/// changes the version and so empties the cache (docs/performance.md, "Group cache" and
/// "Instance cache"). Used for each instance's enrollment groups (tagged with
/// [`crate::store::Store::groups_version`]) and for instances by ID scope (tagged with
/// [`crate::store::Store::instances_version`]).
#[derive(Debug)]
pub(crate) struct VersionedCache<V>(std::sync::Mutex<VersionedState<V>>);

#[derive(Debug)]
struct VersionedState<V> {
    version: Option<u64>,
    entries: std::collections::HashMap<String, V>,
}

impl<V> Default for VersionedCache<V> {
    fn default() -> Self {
        VersionedCache(std::sync::Mutex::new(VersionedState { version: None, entries: Default::default() }))
    }
}

/// Each instance's enrollment groups, keyed by the instance's name as its record spells it
/// (devices' instances always come from the store, so no case folding, and no allocation per
/// lookup). Instances with more than [`GROUPS_CACHED_MAX`] groups are not kept (they are read
/// every time).
pub(crate) type GroupCache = VersionedCache<std::sync::Arc<[EnrollmentGroup]>>;

/// Instances by the ID scope devices name, unsealed.
pub(crate) type InstanceCache = VersionedCache<Instance>;

/// Groups per instance beyond which an instance's groups are not cached.
const GROUPS_CACHED_MAX: usize = 1000;

impl<V: Clone> VersionedCache<V> {
    /// Entries kept at once; past it the cache starts again empty.
    const MAX_ENTRIES: usize = 256;

    fn lock(&self) -> std::sync::MutexGuard<'_, VersionedState<V>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, version: u64, key: &str) -> Option<V> {
        let state = self.lock();
        if state.version != Some(version) {
            return None;
        }
        state.entries.get(key).cloned()
    }

    fn put(&self, version: u64, key: &str, value: V) {
        let mut state = self.lock();
        if state.version != Some(version) || state.entries.len() >= Self::MAX_ENTRIES {
            state.entries.clear();
            state.version = Some(version);
        }
        state.entries.insert(key.to_owned(), value);
    }
}
