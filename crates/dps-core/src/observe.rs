//! The observer port: what the domain and the adapters report as they work, for metrics
//! (docs/operations.md, "Metrics"). The composition root plugs in an implementation (the
//! Prometheus registry); the domain only calls it. Every method is cheap, cannot fail and does
//! nothing by default ([`NoObserver`]).

use std::time::Duration;

use crate::device::Transport;

/// Which API a request concerns (also what an IP filter rule's `target` selects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    Device,
    Service,
    Management,
    /// The embedded IoT hub registry (docs/hub.md).
    Hub,
    /// Health, the OpenAPI document, unknown paths.
    Other,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Device => "device",
            Api::Service => "service",
            Api::Management => "management",
            Api::Hub => "hub",
            Api::Other => "other",
        }
    }
}

/// The outcome of checking a device's credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestationResult {
    Success,
    /// A TPM device was sent its activation challenge.
    Challenge,
    Failure,
}

impl AttestationResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationResult::Success => "success",
            AttestationResult::Challenge => "challenge",
            AttestationResult::Failure => "failure",
        }
    }
}

/// What happens, reported as it happens. `instance` is the DPS instance's name, or `""` when the
/// request named no instance of this server (an unknown ID scope).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A device's credential was checked (Azure DPS's "Attestation attempts").
    fn attestation_attempt(&self, _instance: &str, _transport: Transport, _result: AttestationResult) {}
    /// A device asked to register (Azure DPS's "Registration attempts"). `result` is the
    /// registration's status (`assigned`, `failed`, `disabled`), or `refused` when the request
    /// was answered with an error.
    fn registration_attempt(&self, _instance: &str, _transport: Transport, _result: &str) {}
    /// A device was assigned to `hub` (Azure DPS's "Device assignments").
    fn device_assignment(&self, _instance: &str, _transport: Transport, _hub: &str) {}
    /// The instance's network rules refused a request (`reason`: [`crate::model::NetworkRefusal::as_str`]).
    fn network_refusal(&self, _instance: &str, _api: Api, _reason: &str) {}
    /// A request was answered with `status` after `elapsed` (measured by the adapter).
    fn request(&self, _transport: Transport, _api: Api, _status: u16, _elapsed: Duration) {}
}

/// The observer that records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}
