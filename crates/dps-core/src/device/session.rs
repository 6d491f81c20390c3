//! One connection's view of the device API.

use std::time::{Duration, SystemTime};

use tracing::field::Empty;
use tracing::Instrument;

use super::{ApiVersion, ConnectionFacts, Credential, DeviceReply, Operation, RegisterBody, Transport};
use crate::error::{Error, Result, WireError};
use crate::model::RegistrationStatus;
use crate::observe::{Api, AttestationResult};
use crate::service::{Attestation, Attested, Device, Dormant, OperationStatus, Services};

/// An authentication this old is re-read from the store before a registration acts on it, so a
/// long-lived connection does not register through an enrollment that was disabled meanwhile.
const FRESH: Duration = Duration::from_secs(5);

/// The outcome of connection-level authentication.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthOutcome {
    /// The device is who it says; requests on this session act for it.
    Attested,
    /// A TPM device must answer this activation challenge (base64) with a SAS token.
    Challenge { authentication_key: String },
    /// Refused; requests on this session get this error (with a fresh tracking id).
    Refused(WireError),
}

/// A device authenticated on this connection (or the reason it was not).
#[derive(Debug)]
struct Identity {
    scope: String,
    registration_id: String,
    credential: CredentialKey,
    api_version: Option<ApiVersion>,
    outcome: Result<Held>,
}

/// An attested device as its connection keeps it: the whole record, as read at `at`, while the
/// connection is busy; only what reading it again needs once the connection rests
/// ([`DeviceSession::rest`]). Both boxed, so the session itself stays small.
#[derive(Debug)]
enum Held {
    Hot { attested: Box<Attested>, at: SystemTime },
    Dormant(Box<Dormant>),
}

impl Held {
    fn hot(attested: Attested, at: SystemTime) -> Self {
        Held::Hot { attested: Box::new(attested), at }
    }

    fn device(&self) -> Device<'_> {
        match self {
            Held::Hot { attested, .. } => attested.device(),
            Held::Dormant(d) => d.device(),
        }
    }
}

/// What a credential was, to tell whether a later request presents the same one. A SAS token is
/// kept as its SHA-256, not as text: the connection holds no copy of the secret (a few hundred
/// bytes less per idle connection too, docs/performance.md "Idle connections"), and two keys are
/// compared in constant time.
#[derive(Clone)]
enum CredentialKey {
    Sas([u8; 32]),
    ClientCertificate,
    Tpm,
}

impl PartialEq for CredentialKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CredentialKey::Sas(a), CredentialKey::Sas(b)) => crate::service::ct_eq(a, b),
            (CredentialKey::ClientCertificate, CredentialKey::ClientCertificate)
            | (CredentialKey::Tpm, CredentialKey::Tpm) => true,
            _ => false,
        }
    }
}

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialKey::Sas(_) => f.write_str("Sas(<redacted>)"),
            CredentialKey::ClientCertificate => f.write_str("ClientCertificate"),
            CredentialKey::Tpm => f.write_str("Tpm"),
        }
    }
}

impl CredentialKey {
    fn of(c: &Credential<'_>) -> Self {
        use sha2::Digest;
        match c {
            Credential::Sas(t) => CredentialKey::Sas(sha2::Sha256::digest(t.as_bytes()).into()),
            Credential::ClientCertificate => CredentialKey::ClientCertificate,
            Credential::Tpm(_) => CredentialKey::Tpm,
        }
    }
}

/// The device API on one connection. Made by [`Services::device_session`].
#[derive(Debug)]
pub struct DeviceSession {
    services: Services,
    conn: ConnectionFacts,
    identity: Option<Identity>,
    /// The instance the last request resolved to (for metrics; `""` before any).
    instance: String,
}

impl Services {
    /// Opens the device API for one connection.
    pub fn device_session(&self, conn: ConnectionFacts) -> DeviceSession {
        DeviceSession { services: self.clone(), conn, identity: None, instance: String::new() }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl DeviceSession {
    pub fn transport(&self) -> Transport {
        self.conn.transport
    }

    /// The registration id this connection authenticated as, if it did.
    pub fn registration_id(&self) -> Option<&str> {
        self.identity.as_ref().filter(|i| i.outcome.is_ok()).map(|i| i.registration_id.as_str())
    }

    /// The ID scope this connection authenticated under, if it did.
    pub fn id_scope(&self) -> Option<&str> {
        self.identity.as_ref().filter(|i| i.outcome.is_ok()).map(|i| i.scope.as_str())
    }

    /// Connection-level authentication (MQTT CONNECT, AMQP SASL or the TLS client chain):
    /// later [`DeviceSession::handle`] calls act for this device, or get this refusal.
    pub async fn authenticate(
        &mut self,
        scope: &str,
        registration_id: &str,
        api_version: Option<&str>,
        credential: Credential<'_>,
    ) -> AuthOutcome {
        let span = self.span("device_authenticate");
        span.record("registration_id", crate::device::excerpt(registration_id, 130).as_str());
        async {
            if let Err(e) = self.services.serving() {
                return self.refuse_connection(scope, registration_id, None, &credential, e);
            }
            let api_version = match api_version.map(ApiVersion::parse).transpose() {
                Ok(v) => v,
                Err(e) => return self.refuse_connection(scope, registration_id, None, &credential, e),
            };
            match self.attest(scope, registration_id, credential.clone()).await {
                Ok(Attestation::Attested(a)) => {
                    tracing::Span::current().record("instance", a.instance.name.as_str());
                    tracing::debug!(attestation = a.kind.as_str(), "device authenticated");
                    let now = self.services.clock.now();
                    self.identity = Some(Identity {
                        scope: scope.to_owned(),
                        registration_id: registration_id.to_owned(),
                        credential: CredentialKey::of(&credential),
                        api_version,
                        outcome: Ok(Held::hot(a, now)),
                    });
                    AuthOutcome::Attested
                }
                Ok(Attestation::Challenge { authentication_key }) => {
                    tracing::info!("device challenged (TPM activation)");
                    self.identity = None;
                    AuthOutcome::Challenge { authentication_key }
                }
                Err(e) => self.refuse_connection(scope, registration_id, api_version, &credential, e),
            }
        }
        .instrument(span)
        .await
    }

    fn refuse_connection(
        &mut self,
        scope: &str,
        registration_id: &str,
        api_version: Option<ApiVersion>,
        credential: &Credential<'_>,
        e: Error,
    ) -> AuthOutcome {
        let wire = self.services.wire_error(&e);
        tracing::info!(status = wire.status, code = wire.error_code, error = %crate::device::excerpt(&wire.message, 300), "device not authenticated; its requests will be refused");
        self.identity = Some(Identity {
            scope: scope.to_owned(),
            registration_id: registration_id.to_owned(),
            credential: CredentialKey::of(credential),
            api_version,
            outcome: Err(e),
        });
        AuthOutcome::Refused(wire)
    }

    /// A request on a connection that authenticated at connect (MQTT, AMQP).
    /// Its latency is reported here (HTTPS requests are timed by their adapter).
    pub async fn handle(&mut self, op: Operation<'_>) -> DeviceReply {
        let started = self.services.clock.now();
        let span = self.span("device_request");
        let reply = async {
            if let Err(e) = self.services.serving() {
                return self.reply_error(e);
            }
            let Some(id) = &self.identity else {
                return self.reply_error(Error::Unauthorized("the connection has not authenticated a device".into()));
            };
            tracing::Span::current().record("registration_id", id.registration_id.as_str());
            let api_version = id.api_version.clone();
            // A status read needs only the device's names: a resting connection is not woken.
            let read = match op {
                Operation::OperationStatus { operation_id } => Some(Some(operation_id)),
                Operation::StatusLookup => Some(None),
                Operation::Register { .. } => None,
            };
            if let (Ok(held), Some(operation)) = (&id.outcome, read) {
                return self.lookup(held.device(), operation).await;
            }
            if let Ok(Held::Dormant(d)) = &id.outcome {
                match self.wake(d).await {
                    Ok(a) => {
                        let now = self.services.clock.now();
                        if let Some(id) = self.identity.as_mut() {
                            id.outcome = Ok(Held::hot(a, now));
                        }
                    }
                    Err(e) => return self.reply_error(e),
                }
            }
            // The device as the session holds it, borrowed (not copied) for the request.
            match self.identity.as_ref().map(|i| &i.outcome) {
                Some(Ok(Held::Hot { attested, at })) => self.run(attested, *at, api_version.as_ref(), op).await,
                // Attestation failed at connect: every request gets that error.
                Some(Err(e)) => DeviceReply::Error(self.services.wire_error(e)),
                // Woken just above; nothing else leaves an identity without a device.
                _ => self.reply_error(Error::Unauthorized("the connection has not authenticated a device".into())),
            }
        }
        .instrument(span)
        .await;
        self.count_refused_registration(op, &reply);
        let elapsed = self.services.clock.now().duration_since(started).unwrap_or_default();
        self.services.observer.request(self.conn.transport, Api::Device, reply.status(), elapsed);
        reply
    }

    fn count_refused_registration(&self, op: Operation<'_>, reply: &DeviceReply) {
        if matches!(op, Operation::Register { .. }) && matches!(reply, DeviceReply::Error(_)) {
            self.count_registration(None);
        }
    }

    /// A self-contained request (HTTPS): the device's address, api-version and credential
    /// (`authorization`: the SAS token of the `Authorization` header, if any) with the
    /// operation. The connection's earlier authentication is reused when the same device
    /// presents the same credential again.
    pub async fn request(
        &mut self,
        scope: &str,
        registration_id: &str,
        api_version: Option<&str>,
        authorization: Option<&str>,
        op: Operation<'_>,
    ) -> DeviceReply {
        let span = self.span("device_request");
        span.record("registration_id", crate::device::excerpt(registration_id, 130).as_str());
        // Metrics name the instance this request resolves to, not an earlier request's.
        self.instance.clear();
        let reply = async {
            // A standby (or unreachable) database: nothing is served, so nothing is written.
            if let Err(e) = self.services.serving() {
                return self.reply_error(e);
            }
            let api_version = match api_version {
                None => return self.reply_error(Error::Invalid("the api-version query parameter is required".into())),
                Some(v) => match ApiVersion::parse(v) {
                    Ok(v) => v,
                    Err(e) => return self.reply_error(e),
                },
            };
            // The credential: the SAS token if there is one; else a TPM device's keys from the
            // register body (asking for the challenge); else the TLS client chain.
            let parsed_body = match op {
                Operation::Register { body } => match RegisterBody::parse(body) {
                    Ok(b) => Some(b),
                    Err(e) => return self.reply_error(e),
                },
                _ => None,
            };
            if let Some(b) = &parsed_body {
                if let Err(e) = b.check_registration_id(registration_id) {
                    return self.reply_error(e);
                }
            }
            let tpm = parsed_body.as_ref().and_then(|b| b.tpm.as_ref());
            let credential = match (authorization, tpm) {
                (Some(token), _) => Credential::Sas(token),
                (None, Some(keys)) => Credential::Tpm(keys),
                (None, None) => Credential::ClientCertificate,
            };
            let key = CredentialKey::of(&credential);
            let now = self.services.clock.now();
            let cached = self.identity.as_ref().and_then(|i| {
                let hit = same(&i.scope, scope) && same(&i.registration_id, registration_id) && i.credential == key;
                match &i.outcome {
                    Ok(Held::Hot { attested: a, .. }) if hit && a.valid_until.is_none_or(|u| u >= now) => {
                        Some(a.instance.name.clone())
                    }
                    _ => None,
                }
            });
            match cached {
                Some(instance) => self.instance = instance,
                None => match self.attest(scope, registration_id, credential.clone()).await {
                    Ok(Attestation::Attested(a)) => {
                        self.identity = Some(Identity {
                            scope: scope.to_owned(),
                            registration_id: registration_id.to_owned(),
                            credential: key,
                            api_version: Some(api_version.clone()),
                            outcome: Ok(Held::hot(a, now)),
                        });
                    }
                    Ok(Attestation::Challenge { authentication_key }) => {
                        tracing::info!("device challenged (TPM activation)");
                        return DeviceReply::tpm_challenge(authentication_key);
                    }
                    // A TPM device whose SAS is refused (expired, signed with a key issued
                    // before, by a server that has forgotten it) is challenged again: the C#
                    // client takes every 401 on register as a challenge (docs/tpm.md, "In the request path").
                    Err(Error::Unauthorized(why)) if matches!(credential, Credential::Sas(_)) => match tpm {
                        Some(keys) => {
                            tracing::info!(error = %why, "TPM device's SAS refused; challenging it again");
                            return self.challenge(scope, registration_id, keys).await;
                        }
                        None => return self.reply_error(Error::Unauthorized(why)),
                    },
                    Err(e) => return self.reply_error(e),
                },
            }
            // The device as the session now holds it, borrowed (not copied) for the request.
            let Some(Identity { outcome: Ok(Held::Hot { attested, at }), .. }) = &self.identity else {
                return self.reply_error(Error::Unauthorized("the device could not be authenticated".into()));
            };
            let (attested, at) = (&**attested, *at);
            match (op, parsed_body) {
                (Operation::Register { .. }, Some(body)) => {
                    self.register(attested, at, Some(&api_version), body).await.unwrap_or_else(|e| self.reply_error(e))
                }
                (op, _) => self.run(attested, at, Some(&api_version), op).await,
            }
        }
        .instrument(span)
        .await;
        self.count_refused_registration(op, &reply);
        reply
    }

    /// Asks for a TPM activation challenge for `keys`.
    async fn challenge(&mut self, scope: &str, registration_id: &str, keys: &super::TpmKeys) -> DeviceReply {
        match self.attest(scope, registration_id, Credential::Tpm(keys)).await {
            Ok(Attestation::Challenge { authentication_key }) => {
                tracing::info!("device challenged (TPM activation)");
                DeviceReply::tpm_challenge(authentication_key)
            }
            Ok(Attestation::Attested(_)) => {
                self.reply_error(Error::Unauthorized("the device could not be authenticated".into()))
            }
            Err(e) => self.reply_error(e),
        }
    }

    fn span(&self, name: &'static str) -> tracing::Span {
        match name {
            "device_authenticate" => tracing::info_span!(
                "device_authenticate",
                transport = self.conn.transport.as_str(),
                peer = %self.conn.peer,
                instance = Empty,
                registration_id = Empty,
            ),
            _ => tracing::info_span!(
                "device_request",
                transport = self.conn.transport.as_str(),
                peer = %self.conn.peer,
                instance = Empty,
                registration_id = Empty,
                operation_id = Empty,
            ),
        }
    }

    async fn attest(&mut self, scope: &str, registration_id: &str, credential: Credential<'_>) -> Result<Attestation> {
        let observer = self.services.observer.clone();
        let instance = match self.services.device_instance(scope, Some(self.conn.tls.negotiated.version)).await {
            Ok(i) => i,
            Err(e) => {
                self.instance.clear();
                observer.attestation_attempt("", self.conn.transport, AttestationResult::Failure);
                return Err(e);
            }
        };
        tracing::Span::current().record("instance", instance.name.as_str());
        self.instance.clone_from(&instance.name);
        self.services.check_network_access(&instance, self.conn.peer.ip(), Api::Device)?;
        let result = self.services.attest(instance, registration_id, credential, &self.conn).await;
        let outcome = match &result {
            Ok(Attestation::Attested(_)) => AttestationResult::Success,
            Ok(Attestation::Challenge { .. }) => AttestationResult::Challenge,
            Err(_) => AttestationResult::Failure,
        };
        observer.attestation_attempt(&self.instance, self.conn.transport, outcome);
        result
    }

    /// Counts a register request (Azure DPS's registration attempts and device assignments):
    /// `None` for one answered with an error.
    fn count_registration(&self, status: Option<&OperationStatus>) {
        let o = self.services.observer.as_ref();
        let t = self.conn.transport;
        let Some(op) = status else {
            o.registration_attempt(&self.instance, t, "refused");
            return;
        };
        let result = match op.status {
            RegistrationStatus::Assigned => "assigned",
            RegistrationStatus::Failed => "failed",
            RegistrationStatus::Disabled => "disabled",
            RegistrationStatus::Assigning => "assigning",
            RegistrationStatus::Unassigned => "unassigned",
        };
        o.registration_attempt(&self.instance, t, result);
        if op.status == RegistrationStatus::Assigned {
            if let Some(hub) = op.registration_state.as_ref().and_then(|s| s.assigned_hub.as_deref()) {
                o.device_assignment(&self.instance, t, hub);
            }
        }
    }

    async fn run(
        &self,
        attested: &Attested,
        at: SystemTime,
        api_version: Option<&ApiVersion>,
        op: Operation<'_>,
    ) -> DeviceReply {
        tracing::Span::current().record("instance", attested.instance.name.as_str());
        let result = match op {
            Operation::Register { body } => match RegisterBody::parse(body) {
                Ok(body) => match body.check_registration_id(&attested.registration_id) {
                    Ok(()) => {
                        return self
                            .register(attested, at, api_version, body)
                            .await
                            .unwrap_or_else(|e| self.reply_error(e))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Operation::OperationStatus { operation_id } => {
                return self.lookup(attested.device(), Some(operation_id)).await
            }
            Operation::StatusLookup => return self.lookup(attested.device(), None).await,
        };
        result.unwrap_or_else(|e| self.reply_error(e))
    }

    /// The status of operation `operation_id` of `device`, or (`None`) its registration.
    async fn lookup(&self, device: Device<'_>, operation_id: Option<&str>) -> DeviceReply {
        tracing::Span::current().record("instance", device.instance);
        let result = match operation_id {
            Some(operation_id) => {
                tracing::Span::current().record("operation_id", crate::device::excerpt(operation_id, 100).as_str());
                self.services.operation_status(device, operation_id).await.map(DeviceReply::Operation)
            }
            None => self.services.device_registration(device).await.map(DeviceReply::Registration),
        };
        result.unwrap_or_else(|e| self.reply_error(e))
    }

    async fn register(
        &self,
        attested: &Attested,
        at: SystemTime,
        api_version: Option<&ApiVersion>,
        body: RegisterBody,
    ) -> Result<DeviceReply> {
        let now = self.services.clock.now();
        let fresh;
        let attested = if now.duration_since(at).unwrap_or_default() > FRESH {
            // The instance's network rules may have changed since the connection authenticated.
            fresh = self.wake(&attested.dormant()).await?;
            &fresh
        } else {
            attested
        };
        let tls = crate::tls::facts_for_record(&self.conn.tls, &self.conn.peer_certificates);
        let legacy = api_version.is_some_and(ApiVersion::reports_legacy_substatus);
        let op = self.services.register(attested, body.payload, Some(tls), legacy).await?;
        tracing::Span::current().record("operation_id", op.operation_id.as_str());
        tracing::info!(
            attestation = attested.kind.as_str(),
            status = ?op.status,
            hub = op.registration_state.as_ref().and_then(|s| s.assigned_hub.as_deref()).unwrap_or("-"),
            "device registered"
        );
        self.count_registration(Some(&op));
        Ok(DeviceReply::Accepted { operation_id: op.operation_id })
    }

    /// The device read again (instance, network rules, enrollment): for a resting connection,
    /// and for a busy one whose records are older than [`FRESH`].
    async fn wake(&self, d: &Dormant) -> Result<Attested> {
        let instance = match self.services.instance(d.device().instance).await {
            Err(Error::InstanceNotFound(_)) => {
                return Err(Error::Unauthorized("the device's DPS instance is gone; connect again".into()))
            }
            other => other?,
        };
        self.services.check_network_access(&instance, self.conn.peer.ip(), Api::Device)?;
        self.services
            .revive(instance, d)
            .await?
            .ok_or_else(|| Error::Unauthorized("the device's enrollment changed; connect again".into()))
    }

    /// How long a transport lets a connection go without a request before it calls
    /// [`DeviceSession::rest`]. Devices register right after they connect and then poll (which
    /// a resting session answers without reading the device again), so a second is long enough
    /// to keep a registration from reading its enrollment twice, and short enough that a fleet
    /// of idle connections holds no enrollment records.
    pub const REST_AFTER: Duration = Duration::from_secs(1);

    /// The connection is idle: keep only what reading the device again needs, not its
    /// enrollment and instance records (a few KiB per idle connection; docs/performance.md,
    /// "Idle connections"). A later registration reads them again (instance, network rules,
    /// enrollment), as it would once they were 5 s old anyway; status reads need none of them.
    pub fn rest(&mut self) {
        if let Some(Identity { outcome: Ok(held), .. }) = self.identity.as_mut() {
            if let Held::Hot { attested, .. } = held {
                *held = Held::Dormant(Box::new(attested.dormant()));
            }
        }
    }

    /// The api-version a transport learns only after connection-level authentication (AMQP:
    /// the links' `com.microsoft:api-version` property, after SASL). Later requests act under
    /// it; an invalid one is refused and the earlier one kept.
    pub fn set_api_version(&mut self, api_version: &str) -> std::result::Result<(), WireError> {
        let parsed = ApiVersion::parse(api_version).map_err(|e| self.services.wire_error(&e))?;
        if let Some(id) = self.identity.as_mut() {
            id.api_version = Some(parsed);
        }
        Ok(())
    }

    /// A request the transport could not read (a malformed topic, say), refused in the DPS
    /// error shape and logged once.
    pub fn bad_request(&self, message: String) -> WireError {
        let wire = self.services.wire(400, 400_000, message);
        tracing::info!(status = wire.status, code = wire.error_code, error = %crate::device::excerpt(&wire.message, 300), "device request refused");
        wire
    }

    /// The reply for a refusal, logged once (5xx with its chain, by `wire_error`; the rest
    /// briefly at info).
    fn reply_error(&self, e: Error) -> DeviceReply {
        let wire = self.services.wire_error(&e);
        if wire.status < 500 {
            tracing::info!(status = wire.status, code = wire.error_code, error = %crate::device::excerpt(&wire.message, 300), "device request refused");
        }
        DeviceReply::Error(wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_credential_is_kept_as_a_digest_and_compared_whole() {
        let token =
            "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fdev-1&sig=abc%3D&se=1900000000&skn=registration";
        let key = CredentialKey::of(&Credential::Sas(token));
        assert_eq!(key, CredentialKey::of(&Credential::Sas(token)));
        assert_ne!(key, CredentialKey::of(&Credential::Sas(&token[..token.len() - 1])));
        assert_ne!(key, CredentialKey::ClientCertificate);
        assert_eq!(CredentialKey::ClientCertificate, CredentialKey::of(&Credential::ClientCertificate));
        assert_eq!(format!("{key:?}"), "Sas(<redacted>)");
    }
}
