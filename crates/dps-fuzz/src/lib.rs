//! The fuzz targets' bodies. Each target is a `fn(&[u8])` that feeds arbitrary bytes to a parser
//! or evaluator of untrusted input, through the same public API the server uses, and panics if an
//! invariant breaks (a panic or abort inside the code under test is a finding too).
//!
//! Two runners share these functions:
//! - `fuzz/fuzz_targets/<name>.rs`, one cargo-fuzz (libFuzzer) binary per target, a one-liner;
//! - `tests/corpus.rs`, which replays every file of `fuzz/corpus/<name>/` on stable Rust as part of
//!   `cargo test`.
//!
//! Adding a target (see `docs/fuzzing.md`): a function in a module here, a line in [`TARGETS`],
//! `fuzz/fuzz_targets/<name>.rs`, a `[[bin]]` in `fuzz/Cargo.toml`, and a seed corpus in
//! `fuzz/corpus/<name>/`. The replay test fails if any of these is missing for a target.

mod amqp;
mod arm;
mod http;
mod ids;
mod mqtt;
mod sas;
mod x509;

pub use amqp::{amqp_header, amqp_mapping, amqp_sasl};
pub use arm::{arm_expression, arm_template};
pub use http::http_device_route;
pub use ids::ids;
pub use mqtt::mqtt_connect;
pub use sas::sas_token;
pub use x509::x509_evidence;

/// The input format of [`x509_evidence`], for writing seeds: chunks, and the time chains are
/// checked at.
pub mod x509_input {
    pub use crate::x509::{chunks, fuzz_now, join};
}

/// A fuzz target: arbitrary bytes in, a panic if something is wrong.
pub type Target = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("sas_token", sas_token),
    ("ids", ids),
    ("arm_expression", arm_expression),
    ("arm_template", arm_template),
    ("x509_evidence", x509_evidence),
    ("mqtt_connect", mqtt_connect),
    ("http_device_route", http_device_route),
    ("amqp_header", amqp_header),
    ("amqp_sasl", amqp_sasl),
    ("amqp_mapping", amqp_mapping),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
