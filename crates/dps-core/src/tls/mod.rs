//! The TLS contract of docs/tls.md, as plain data.
//!
//! `dps-tls` turns a [`Profile`] into OpenSSL settings; the readiness evaluator in
//! [`readiness`] uses the same data to predict what a handshake would do. Keeping both on one
//! table is what makes the readiness report trustworthy.

mod facts;
mod group;
mod names;
mod profiles;
pub mod readiness;
mod suites;
mod version;

#[cfg(test)]
pub use facts::facts_record;
pub use facts::{
    facts_for_record, facts_json, Decoded, HandshakeFacts, Negotiated, Offered, PeerCertificates, RecordFacts,
    StoredFacts, StoredOffer,
};
pub use group::{Group, UnknownGroup};
pub use names::{cipher_suite_name, group_name, is_grease, signature_scheme_name};
pub use profiles::{Profile, ProfileName, UnknownProfile, TLS13_SUITES};
pub use suites::{CipherSuite, SuiteClass, DPS_SUITES};
pub use version::{InvalidMinTlsVersion, MinTlsVersion, TlsVersion};
