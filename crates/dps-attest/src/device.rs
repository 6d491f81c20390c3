//! The `DeviceCrypto` port: SAS checks and X.509 chain checks for device attestation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_core::ports::{CertificateError, DeviceCrypto, LeafFacts, SasClaims, SasError, X509Inspector};
use openssl::x509::X509;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::sas::SasToken;
use crate::x509::{chain_issued_by, load, OpensslX509};

/// Device tokens may come from clocks this far ahead or behind.
pub const SAS_SKEW: Duration = Duration::from_secs(300);

/// OpenSSL-backed device crypto.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpensslDeviceCrypto;

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
}

/// Validity window and CA flag of a DER certificate.
fn window(der: &[u8]) -> Option<(i64, i64, bool)> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let ca = c.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
    Some((c.validity().not_before.timestamp(), c.validity().not_after.timestamp(), ca))
}

fn valid_at(der: &[u8], now: i64) -> bool {
    window(der).is_some_and(|(nb, na, _)| nb <= now && now <= na)
}

impl DeviceCrypto for OpensslDeviceCrypto {
    fn verify_sas(
        &self,
        token: &str,
        resource: &str,
        keys: &[String],
        now: SystemTime,
    ) -> Result<Option<SystemTime>, SasError> {
        let t = SasToken::parse(token)?;
        t.check_expiry(now, SAS_SKEW)?;
        t.check_resource(resource)?;
        // `skn` may be absent, empty or "registration" for devices (docs/protocol.md, "SAS tokens").
        if let Some(skn) = t.skn.as_deref().filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("registration")) {
            let shown: String = skn.chars().take(64).collect();
            return Err(SasError::WrongKeyName(shown));
        }
        // Every key is tried, so timing does not tell which one (or whether any) matched.
        let mut ok = false;
        for k in keys {
            ok |= t.signed_with(k);
        }
        Ok(ok.then(|| t.expires().checked_add(SAS_SKEW).unwrap_or(t.expires())))
    }

    fn sas_claims(&self, token: &str, now: SystemTime) -> Result<SasClaims, SasError> {
        let t = SasToken::parse(token)?;
        t.check_expiry(now, SAS_SKEW)?;
        Ok(SasClaims {
            resource: t.resource().ok_or(SasError::Malformed("sr"))?,
            key_name: t.skn.clone(),
            expires: t.expires(),
        })
    }

    fn sas_signed_with(&self, token: &str, key: &str) -> bool {
        SasToken::parse(token).is_ok_and(|t| t.signed_with(key))
    }

    fn derive_key(&self, group_key: &str, registration_id: &str) -> Option<String> {
        crate::derive_device_key(group_key, registration_id)
    }

    fn leaf(&self, der: &[u8], now: SystemTime) -> Result<LeafFacts, CertificateError> {
        let cert = X509::from_der(der).map_err(|_| CertificateError::BadDer)?;
        let pem = String::from_utf8(cert.to_pem().map_err(|_| CertificateError::BadDer)?)
            .map_err(|_| CertificateError::BadDer)?;
        let parsed = OpensslX509.parse(&pem)?;
        let cn = X509Certificate::from_der(der)
            .ok()
            .and_then(|(_, c)| c.subject().iter_common_name().next().and_then(|n| n.as_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        Ok(LeafFacts {
            common_name: cn,
            sha256_thumbprint: parsed.info.sha256_thumbprint.clone(),
            sha1_thumbprint: parsed.info.sha1_thumbprint.clone(),
            time_valid: valid_at(der, unix(now)),
            info: parsed.info,
        })
    }

    fn chain_depth(&self, chain: &[Vec<u8>], anchor_pem: &str, now: SystemTime) -> Option<usize> {
        let now = unix(now);
        let anchor = load(anchor_pem).ok()?;
        let anchor_der = anchor.to_der().ok()?;
        if !valid_at(&anchor_der, now) {
            return None;
        }
        let certs: Vec<X509> = chain.iter().map(|d| X509::from_der(d)).collect::<Result<_, _>>().ok()?;
        // The device must present the path from its leaf up to a certificate the anchor issued
        // (or the anchor itself); unpresented intermediates are never assumed.
        let top = certs.iter().enumerate().find_map(|(i, c)| {
            if i > 0 && chain[i] == anchor_der {
                Some(i - 1)
            } else if chain_issued_by(c, &anchor) {
                Some(i)
            } else {
                None
            }
        });
        let top = top?;
        for k in 0..=top {
            if !valid_at(&chain[k], now) {
                return None;
            }
            if k > 0 && !window(&chain[k]).is_some_and(|(_, _, ca)| ca) {
                return None; // an intermediate must be a CA
            }
            if k < top && !chain_issued_by(&certs[k], &certs[k + 1]) {
                return None;
            }
        }
        Some(top)
    }
}
