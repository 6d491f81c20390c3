//! `dps-mqtt`: the DPS device API over MQTT 3.1.1 (dps-protocol.md §2).
//!
//! - `session`: pure — the username and topic grammar, response topics, and what to answer;
//!   unit-tested without sockets.
//! - `connection`: the driver — owns the socket and buffer, frames packets with `mqttbytes`
//!   (the codec: a maintained crate, not ours), enforces the size limit and keep-alive, and
//!   calls the domain.
//!
//! Behaviour the SDKs rely on: CONNACK with session-present 0; QoS capped at 1; PUBACK
//! before the response (C# v1 ordering, §2.4); responses on
//! `$dps/registrations/res/{status}/?$rid={rid}&retry-after={n}`.

mod connection;
pub mod session;

pub use connection::{serve_connection, ConnectionContext};
