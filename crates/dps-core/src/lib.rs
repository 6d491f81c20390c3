//! `dps-core` is the domain of OpenDPS, with no I/O: no sockets, no files, no OpenSSL, no clock,
//! no randomness of its own (those are ports, `ports`).
//!
//! - `tls`: the TLS contract as data (suites, profiles, versions), handshake facts, and the
//!   readiness evaluator.
//! - `model`: instances, enrollments, groups, registrations, CA certificates.
//! - `store`: the storage port (`Store`), with domain operations and typed errors.
//! - `service`: the application services the adapters call (`Instances`, `Enrollments`).
//! - `log_limit`: a log-line budget for events clients can cause at will.
//! - `error`: domain outcomes, each with an `ErrorKind` that adapters map to their wire format.
//!
//! Invariant: nothing here performs I/O or depends on a TLS, HTTP or SQL library.

pub mod base64;
pub mod device;
pub mod error;
pub mod hex;
pub mod log_limit;
pub mod model;
pub mod observe;
pub mod ports;
pub mod service;
pub mod store;
pub mod testing;
pub mod time;
pub mod tls;
