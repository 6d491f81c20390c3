//! The device-API contract this adapter is written against.
//!
//! Every transport (HTTPS, MQTT, AMQP) calls one device-API use case of the core: one session per
//! connection, authenticated once at connection level, then any number of requests. Until that
//! use case exists in `dps-core`, this module states its shape so the adapter and its tests stand
//! on their own; wiring it to the core is an `impl DeviceApi` for the core's services (or a type
//! alias once the core exports the same types).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use dps_core::tls::{HandshakeFacts, PeerCertificates};

/// The transport a device session runs on (the core records it with the registration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Https,
    Mqtt,
    MqttWs,
    Amqp,
    AmqpWs,
}

/// What the device presented at connection level. X.509 is not here: it is the connection's TLS
/// client chain, given to the session when it is created.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Nothing beyond the TLS client chain (AMQP without SASL, X.509 devices).
    None,
    /// A SAS token (SASL PLAIN password, or the final TPM response).
    Sas(String),
    /// The TPM's public keys (TPM2B_PUBLIC bytes), first step of TPM attestation.
    Tpm { endorsement_key: Vec<u8>, storage_root_key: Vec<u8> },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Sas(_) => f.write_str("Sas(<redacted>)"),
            Credential::Tpm { endorsement_key, storage_root_key } => f
                .debug_struct("Tpm")
                .field("endorsement_key_len", &endorsement_key.len())
                .field("storage_root_key_len", &storage_root_key.len())
                .finish(),
        }
    }
}

/// The answer to [`DeviceSession::authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The device is who it says; requests may follow.
    Attested,
    /// TPM: prove possession by importing this key (base64 activation blob) and signing a SAS
    /// token with it; the SAS comes back in a second `authenticate` call.
    Challenge { authentication_key: String },
    /// Not authenticated; the error is what the device is told.
    Refused(DeviceError),
}

/// One request on an authenticated session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// Register; `body` is the request body as sent (lenient JSON: may be empty).
    Register { registration_id: String, body: Bytes },
    /// Poll a registration operation.
    OperationStatus { registration_id: String, operation_id: String },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceReply {
    /// 202, `{"operationId": …, "status": "assigning"}`.
    Accepted { operation_id: String, retry_after_secs: u32 },
    /// A `RegistrationOperationStatus` document with its HTTP status (200 or 202).
    Status { http_status: u16, body: serde_json::Value, retry_after_secs: Option<u32> },
    /// A DPS error.
    Error(DeviceError),
}

/// A DPS error as every transport reports it (the JSON error body plus its HTTP status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceError {
    pub status: u16,
    pub error_code: u32,
    pub message: String,
    pub tracking_id: String,
    pub timestamp_utc: String,
    pub retry_after_secs: Option<u32>,
}

impl DeviceError {
    /// An error raised by this adapter (bad AMQP input), with a fresh tracking id.
    pub fn new(status: u16, error_code: u32, message: impl Into<String>) -> DeviceError {
        DeviceError {
            status,
            error_code,
            message: message.into(),
            tracking_id: uuid::Uuid::new_v4().to_string(),
            timestamp_utc: dps_core::time::format_utc(SystemTime::now()),
            retry_after_secs: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> DeviceError {
        DeviceError::new(400, 400_000, message)
    }

    /// 401: the connection's identity does not allow this.
    pub fn unauthorized(message: impl Into<String>) -> DeviceError {
        DeviceError::new(401, 401_002, message)
    }

    /// 413: the message is larger than DPS accepts.
    pub fn too_large(message: impl Into<String>) -> DeviceError {
        DeviceError::new(413, 413_000, message)
    }

    /// 500: the service failed; nothing internal is said.
    pub fn internal() -> DeviceError {
        DeviceError::new(500, 500_000, "the service failed to complete the request; try again")
    }

    /// The DPS error body (`ProvisioningServiceErrorDetails`).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::json!({
            "errorCode": self.error_code,
            "trackingId": self.tracking_id,
            "message": self.message,
            "timestampUtc": self.timestamp_utc,
        })
    }
}

/// The device-API use case of one connection.
#[async_trait::async_trait]
pub trait DeviceSession: Send {
    /// Connection-level authentication: ID scope, registration id and credential (AMQP: SASL,
    /// or the first link attach without SASL).
    async fn authenticate(
        &mut self,
        id_scope: &str,
        registration_id: &str,
        api_version: Option<&str>,
        credential: Credential,
    ) -> AuthOutcome;

    /// One request on an authenticated session.
    async fn call(&mut self, request: DeviceRequest) -> DeviceReply;
}

/// Creates one [`DeviceSession`] per connection.
pub trait DeviceApi: Send + Sync + std::fmt::Debug {
    fn device_session(
        &self,
        transport: Transport,
        tls: Arc<HandshakeFacts>,
        peer_certificates: Arc<PeerCertificates>,
    ) -> Box<dyn DeviceSession>;
}
