//! The device API as one use case for every transport (docs/protocol.md, "HTTPS device API").
//!
//! A transport adapter (HTTPS, MQTT, AMQP, and their WebSocket forms) opens a [`DeviceSession`]
//! per connection with the [`ConnectionFacts`] it established (transport, peer, TLS facts, the
//! client's certificate chain), hands it typed requests, and turns the typed [`DeviceReply`]
//! into bytes. Everything between — api-version rules, registration-id and ID-scope checks, the
//! lenient register body, authentication per evidence type, allocation, the operation model, the
//! error body — exists here, once.
//!
//! Transports that authenticate at connect (MQTT CONNECT, AMQP SASL or the TLS client chain)
//! call [`DeviceSession::authenticate`] once and then [`DeviceSession::handle`] per request;
//! HTTPS, where each request carries its credential, calls [`DeviceSession::request`], which
//! reuses the connection's earlier authentication when the same device presents the same
//! credential again (a keep-alive connection parses and checks its client chain once).

mod request;
mod session;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};

pub use request::{excerpt, ApiVersion, RegisterBody, TpmKeys, MAX_MESSAGE};
pub use session::{AuthOutcome, DeviceSession};

use crate::error::WireError;
use crate::model::{DeviceRegistrationState, RegistrationStatus};
use crate::service::OperationStatus;
use crate::tls::{HandshakeFacts, PeerCertificates};

/// How a device reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Https,
    Mqtt,
    MqttWs,
    Amqp,
    AmqpWs,
}

impl Transport {
    /// Whether DPS offers TPM attestation on this transport (HTTPS and AMQP; not MQTT).
    pub fn offers_tpm(self) -> bool {
        !matches!(self, Transport::Mqtt | Transport::MqttWs)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Https => "https",
            Transport::Mqtt => "mqtt",
            Transport::MqttWs => "mqtt-ws",
            Transport::Amqp => "amqp",
            Transport::AmqpWs => "amqp-ws",
        }
    }
}

/// What a connection established before its first request.
#[derive(Clone, Debug)]
pub struct ConnectionFacts {
    pub transport: Transport,
    pub peer: SocketAddr,
    pub tls: Arc<HandshakeFacts>,
    /// The client's chain: possession proved by the handshake, trust not yet decided.
    pub peer_certificates: Arc<PeerCertificates>,
}

/// The credential a device presents at connect (MQTT, AMQP).
#[derive(Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A SAS token (MQTT password, AMQP SASL PLAIN password, or the SAS a TPM device signed
    /// with the key it was issued).
    Sas(&'a str),
    /// The TLS client certificate chain of the connection (X.509), if any.
    ClientCertificate,
    /// A TPM device's public keys, asking for the activation challenge.
    Tpm(&'a TpmKeys),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Sas(_) => f.write_str("Sas(<redacted>)"),
            Credential::ClientCertificate => f.write_str("ClientCertificate"),
            Credential::Tpm(_) => f.write_str("Tpm"),
        }
    }
}

/// One device request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// Register (HTTPS `PUT …/register`, MQTT `iotdps-register`, AMQP `iotdps-register`), with
    /// the raw body (lenient JSON, possibly empty).
    Register { body: &'a [u8] },
    /// Poll an operation.
    OperationStatus { operation_id: &'a str },
    /// The registration status lookup (HTTPS `POST /{scope}/registrations/{id}`).
    StatusLookup,
}

/// Seconds a device is told to wait before polling.
pub const RETRY_AFTER_SECS: u32 = 1;

/// What the device gets back, before a transport turns it into bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceReply {
    /// 202: the registration is accepted; the result comes on the first poll (C# and
    /// iot-identity-service accept nothing but 202 from register).
    Accepted { operation_id: String },
    /// An operation's status: 202 while assigning, 200 when final.
    Operation(OperationStatus),
    /// 200: the registration status lookup.
    Registration(DeviceRegistrationState),
    /// 401 with the TPM activation challenge.
    Challenge { authentication_key: String, key_name: String },
    /// A refusal or failure, in the DPS error shape.
    Error(WireError),
}

impl DeviceReply {
    /// The TPM activation challenge: the key sealed to the device's EK, for the key named
    /// `registration` (docs/tpm.md, "The activation blob").
    pub fn tpm_challenge(authentication_key: String) -> Self {
        DeviceReply::Challenge { authentication_key, key_name: "registration".into() }
    }

    /// The HTTP-style status (also the MQTT response topic's status).
    pub fn status(&self) -> u16 {
        match self {
            DeviceReply::Accepted { .. } => 202,
            DeviceReply::Operation(op) if op.status == RegistrationStatus::Assigning => 202,
            DeviceReply::Operation(_) | DeviceReply::Registration(_) => 200,
            DeviceReply::Challenge { .. } => 401,
            DeviceReply::Error(e) => e.status,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        match self {
            DeviceReply::Accepted { operation_id } => json!({ "operationId": operation_id, "status": "assigning" }),
            DeviceReply::Operation(op) => op.to_json(),
            DeviceReply::Registration(state) => serde_json::to_value(state).unwrap_or(Value::Null),
            DeviceReply::Challenge { authentication_key, key_name } => json!({
                "message": "the device must prove possession of its TPM: activate authenticationKey and sign a SAS token with it",
                "authenticationKey": authentication_key,
                "keyName": key_name,
            }),
            DeviceReply::Error(e) => e.body(),
        }
    }

    /// The body as bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    /// Seconds before the device should try again, where the reply says so.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            DeviceReply::Accepted { .. } => Some(RETRY_AFTER_SECS),
            DeviceReply::Operation(op) if op.status == RegistrationStatus::Assigning => Some(RETRY_AFTER_SECS),
            DeviceReply::Error(e) => e.retry_after,
            _ => None,
        }
    }
}
