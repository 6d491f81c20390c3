//! Readiness: what a policy would do to a client, from what the client offered.
//!
//! This mirrors the choices OpenSSL makes under our settings (server preference, the profile's
//! suites, the configured groups, an RSA certificate), so that an operator can ask "which of my
//! devices would be refused under `dps-recommended`, or with `minTlsVersion` 1.3?" before
//! changing anything.

use super::facts::Offered;
use super::profiles::{Profile, TLS13_SUITES};
use super::version::{MinTlsVersion, TlsVersion};

/// The policy to evaluate a client against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub profile: Profile,
    /// TLS 1.3 enabled on the listener.
    pub tls13: bool,
    /// Groups the server offers (wire codes), in preference order.
    pub groups: Vec<u16>,
    /// The instance floor, if any.
    pub min_tls_version: Option<MinTlsVersion>,
}

/// Why a client would be refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client offers neither TLS 1.2 nor (where enabled) TLS 1.3.
    NoCommonVersion,
    /// No suite of the profile is among the client's suites.
    NoCommonSuite,
    /// Only ECDHE suites match, and the client offers none of the server's groups.
    NoCommonGroup,
    /// Only ECDHE-RSA suites match, and the client accepts no RSA signature scheme.
    NoRsaSignature,
    /// The handshake would succeed, at a version below the instance's `minTlsVersion`.
    BelowMinTlsVersion { negotiated: TlsVersion, minimum: MinTlsVersion },
}

impl Refusal {
    /// One sentence for reports and error messages.
    pub fn describe(&self) -> String {
        match self {
            Refusal::NoCommonVersion => {
                "client offers no TLS version the server accepts (TLS 1.2 or enabled TLS 1.3)".into()
            }
            Refusal::NoCommonSuite => "client offers none of the profile's cipher suites".into(),
            Refusal::NoCommonGroup => {
                "client offers none of the server's key-exchange groups for the ECDHE suites it shares".into()
            }
            Refusal::NoRsaSignature => "client accepts no RSA signature scheme, which every DPS suite needs".into(),
            Refusal::BelowMinTlsVersion { negotiated, minimum } => {
                format!("negotiates {negotiated}, below the instance's minTlsVersion {}", minimum.as_str())
            }
        }
    }
}

/// The outcome of evaluating one client against one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted { version: TlsVersion, cipher_suite: u16 },
    Refused(Refusal),
}

const RSA_TLS12_SCHEMES: [u16; 7] = [0x0401, 0x0501, 0x0601, 0x0201, 0x0804, 0x0805, 0x0806];
const RSA_TLS13_SCHEMES: [u16; 3] = [0x0804, 0x0805, 0x0806];

fn accepts_rsa(offered: &Offered, schemes: &[u16]) -> bool {
    // Without the extension a TLS 1.2 client implies SHA-1 with the key's algorithm (RFC 5246 §7.4.1.4.1).
    offered.signature_algorithms.is_empty() || offered.signature_algorithms.iter().any(|s| schemes.contains(s))
}

fn shares_group(offered: &Offered, policy: &Policy) -> bool {
    // A client with no supported_groups extension may be sent any curve (RFC 8422 §4).
    offered.groups.is_empty() || offered.groups.iter().any(|g| policy.groups.contains(g))
}

/// Predicts the handshake: the version and suite the server would choose, or why it would refuse.
pub fn evaluate(offered: &Offered, policy: &Policy) -> Verdict {
    let verdict = negotiate(offered, policy);
    match (verdict, policy.min_tls_version) {
        (Verdict::Accepted { version, .. }, Some(minimum)) if !minimum.admits(version) => {
            Verdict::Refused(Refusal::BelowMinTlsVersion { negotiated: version, minimum })
        }
        (v, _) => v,
    }
}

fn negotiate(offered: &Offered, policy: &Policy) -> Verdict {
    if policy.tls13 && offered.offers_version(TlsVersion::Tls13) {
        let suite = TLS13_SUITES.iter().find(|(_, code)| offered.cipher_suites.contains(code));
        // A TLS 1.3 client with no shared group or no RSA-PSS scheme falls back to 1.2 if it can.
        if let Some((_, code)) = suite {
            if !offered.groups.is_empty() && shares_group(offered, policy) && accepts_rsa(offered, &RSA_TLS13_SCHEMES) {
                return Verdict::Accepted { version: TlsVersion::Tls13, cipher_suite: *code };
            }
        }
    }
    if !offered.offers_version(TlsVersion::Tls12) {
        return Verdict::Refused(Refusal::NoCommonVersion);
    }
    let mut refusal = Refusal::NoCommonSuite;
    for suite in policy.profile.suites() {
        if !offered.cipher_suites.contains(&suite.code) {
            continue;
        }
        if suite.ecdhe {
            if !shares_group(offered, policy) {
                refusal = Refusal::NoCommonGroup;
                continue;
            }
            if !accepts_rsa(offered, &RSA_TLS12_SCHEMES) {
                refusal = Refusal::NoRsaSignature;
                continue;
            }
        }
        return Verdict::Accepted { version: TlsVersion::Tls12, cipher_suite: suite.code };
    }
    Verdict::Refused(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ProfileName;

    const P256: u16 = 0x0017;
    const P384: u16 = 0x0018;
    const X25519: u16 = 0x001D;

    fn policy(name: ProfileName) -> Policy {
        Policy { profile: name.profile(), tls13: false, groups: vec![P256, P384], min_tls_version: None }
    }

    fn client(suites: &[u16]) -> Offered {
        Offered {
            legacy_version: 0x0303,
            cipher_suites: suites.to_vec(),
            groups: vec![X25519, P256],
            signature_algorithms: vec![0x0804, 0x0401],
            ..Offered::default()
        }
    }

    #[test]
    fn server_order_wins_over_client_order() {
        let c = client(&[0x002F, 0xC013, 0xC02F]);
        assert_eq!(
            evaluate(&c, &policy(ProfileName::LegacySecurity)),
            Verdict::Accepted { version: TlsVersion::Tls12, cipher_suite: 0xC02F }
        );
        let c = client(&[0xC013, 0xC014]);
        assert_eq!(
            evaluate(&c, &policy(ProfileName::LegacySecurity)),
            Verdict::Accepted { version: TlsVersion::Tls12, cipher_suite: 0xC014 }
        );
        assert_eq!(
            evaluate(&c, &policy(ProfileName::LegacyPerformance)),
            Verdict::Accepted { version: TlsVersion::Tls12, cipher_suite: 0xC013 }
        );
    }

    #[test]
    fn legacy_only_device_is_locked_out_by_recommended() {
        let c = client(&[0x002F, 0x0035]);
        assert!(matches!(evaluate(&c, &policy(ProfileName::LegacySecurity)), Verdict::Accepted { .. }));
        assert_eq!(evaluate(&c, &policy(ProfileName::Recommended)), Verdict::Refused(Refusal::NoCommonSuite));
    }

    #[test]
    fn foreign_suites_and_old_versions_are_refused() {
        let chacha = client(&[0xCCA8, 0x009E]);
        assert_eq!(evaluate(&chacha, &policy(ProfileName::LegacySecurity)), Verdict::Refused(Refusal::NoCommonSuite));
        let tls10 = Offered { legacy_version: 0x0301, ..client(&[0xC013]) };
        assert_eq!(evaluate(&tls10, &policy(ProfileName::LegacySecurity)), Verdict::Refused(Refusal::NoCommonVersion));
    }

    #[test]
    fn ecdhe_needs_a_shared_group_but_rsa_kx_does_not() {
        let mut c = client(&[0xC02F, 0x009C]);
        c.groups = vec![X25519];
        assert_eq!(
            evaluate(&c, &policy(ProfileName::LegacySecurity)),
            Verdict::Accepted { version: TlsVersion::Tls12, cipher_suite: 0x009C }
        );
        assert_eq!(evaluate(&c, &policy(ProfileName::Recommended)), Verdict::Refused(Refusal::NoCommonGroup));
    }

    #[test]
    fn tls13_only_when_enabled_and_min_version_applies() {
        let mut c = client(&[0x1301, 0xC02F]);
        c.supported_versions = Some(vec![0x0304, 0x0303]);
        let mut p = policy(ProfileName::Recommended);
        assert_eq!(evaluate(&c, &p), Verdict::Accepted { version: TlsVersion::Tls12, cipher_suite: 0xC02F });
        p.min_tls_version = Some(MinTlsVersion::Tls13);
        assert_eq!(
            evaluate(&c, &p),
            Verdict::Refused(Refusal::BelowMinTlsVersion {
                negotiated: TlsVersion::Tls12,
                minimum: MinTlsVersion::Tls13
            })
        );
        p.tls13 = true;
        assert_eq!(evaluate(&c, &p), Verdict::Accepted { version: TlsVersion::Tls13, cipher_suite: 0x1301 });
    }

    #[test]
    fn rsa_signature_required_for_ecdhe() {
        let mut c = client(&[0xC02F]);
        c.signature_algorithms = vec![0x0403];
        assert_eq!(evaluate(&c, &policy(ProfileName::Recommended)), Verdict::Refused(Refusal::NoRsaSignature));
    }
}
