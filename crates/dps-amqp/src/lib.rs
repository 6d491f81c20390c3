//! `dps-amqp`: the DPS device API over AMQP 1.0, on 5671 after TLS and over WebSockets
//! (`AMQPWSB10`) on 443. docs/amqp.md describes the wire.
//!
//! Layers, each testable on its own:
//! - pure, fuzzed: [`header`] (which protocol header opened the stream), [`sasl::frame`] and
//!   [`sasl::machine`] (SASL PLAIN and TPM as a state machine), [`address`] (link addresses),
//!   [`mapping`] (DPS requests and answers as AMQP messages), [`codec`] (AMQP frames over bytes,
//!   with `fe2o3-amqp`'s types and decoder as the only use of that crate), [`encoding`] (the
//!   walk every peer's AMQP value passes before that decoder sees it), [`replay::FrameGuard`]
//!   (the same frame-boundary checks byte by byte);
//! - the driver, [`serve_connection`]: sniff → our async SASL around the machine, or no SASL
//!   (X.509: the TLS client chain) → our engine: one task, one read buffer, no channels, the
//!   connection, one session and the device's two links as plain state → the connection's
//!   `dps_core::device::DeviceSession`: authenticated once (SASL PLAIN:
//!   `Credential::Sas`; no SASL: `Credential::ClientCertificate` when the first link names the
//!   device), then one `Operation` per request message.
//!
//! Over WebSockets (sub-protocol [`WEBSOCKET_PROTOCOL`]) the composition root hands
//! [`serve_connection`] the byte stream dps-http makes of the WebSocket.
//!
//! Invariants: a connection is bounded in time and memory before it authenticates (header and
//! SASL timeouts, capped SASL frames, capped AMQP frames, one session, a deadline for the first
//! attach without SASL); every attach and request must name the authenticated registration id
//! under the connection's ID scope; every failure gets an answer in AMQP's terms and one log line.

pub mod address;
pub mod codec;
mod connection;
pub mod encoding;
#[doc(hidden)]
pub mod fuzz;
pub mod header;
pub mod mapping;
pub mod replay;
pub mod sasl;

pub use connection::{serve_connection, AmqpSettings, ConnectionContext};

/// The WebSocket sub-protocol of AMQP over WebSockets; the upgrade must echo it exactly.
pub const WEBSOCKET_PROTOCOL: &str = "AMQPWSB10";
