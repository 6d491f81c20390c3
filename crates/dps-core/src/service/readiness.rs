//! The TLS readiness report (docs/tls.md, "Readiness report"): which registered devices a stricter policy
//! would lock out, computed from the TLS facts each registration keeps — before anyone changes
//! anything.

use std::collections::BTreeMap;

use super::Services;
use crate::error::Result;
use crate::model::Instance;
use crate::tls::readiness::{evaluate, Policy, Verdict};
use crate::tls::{cipher_suite_name, Offered, StoredFacts};

/// One device the policy would refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub registration_id: String,
    pub reason: String,
}

/// The report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadinessReport {
    /// Registrations whose last connection's offer was evaluated.
    pub evaluated: usize,
    pub refused: Vec<Refused>,
    /// Registrations with no recorded offer (registered before capture, or no ClientHello data).
    pub without_tls_facts: Vec<String>,
    /// How the accepted devices would connect: "TLSv1.2 TLS_ECDHE_…" → count.
    pub accepted: BTreeMap<String, usize>,
}

impl Services {
    /// Evaluates every registration of `instance` against `policy`.
    pub async fn tls_readiness(&self, instance: &Instance, policy: &Policy) -> Result<ReadinessReport> {
        let mut report = ReadinessReport::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.registrations(instance, None, token.as_deref(), 1000).await?;
            for r in &page.items {
                let offered = r.tls.as_ref().map(StoredFacts::to_value);
                let offered = offered.as_ref().and_then(|t| t.get("offered")).and_then(Offered::from_json);
                let Some(offered) = offered else {
                    report.without_tls_facts.push(r.state.registration_id.clone());
                    continue;
                };
                report.evaluated += 1;
                match evaluate(&offered, policy) {
                    Verdict::Accepted { version, cipher_suite } => {
                        *report
                            .accepted
                            .entry(format!("{version} {}", cipher_suite_name(cipher_suite)))
                            .or_default() += 1;
                    }
                    Verdict::Refused(why) => {
                        report
                            .refused
                            .push(Refused { registration_id: r.state.registration_id.clone(), reason: why.describe() });
                    }
                }
            }
            match page.continuation {
                Some(t) => token = Some(t),
                None => return Ok(report),
            }
        }
    }
}
