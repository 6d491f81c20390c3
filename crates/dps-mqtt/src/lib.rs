//! `dps-mqtt`: the DPS device API over MQTT 3.1.1 (docs/protocol.md, "MQTT connection").
//!
//! - `session`: pure — packet framing with the codec, the CONNECT checks, the username and topic
//!   grammar, response topics, and what to answer;
//!   unit-tested without sockets.
//! - `connection`: the driver — owns the socket and buffer, frames packets with `mqttbytes`
//!   (the codec: a maintained crate, not ours), enforces the size limit and keep-alive, and
//!   turns CONNECT into the device session's authentication and each request PUBLISH into one
//!   `dps_core::device` operation.
//!
//! Behaviour the SDKs rely on: CONNACK with session-present 0; QoS capped at 1; PUBACK
//! before the response (C# v1 ordering); responses on
//! `$dps/registrations/res/{status}/?$rid={rid}&retry-after={n}`.

mod connection;
pub mod session;

pub use connection::{serve_connection, ConnectionContext, Limits};
