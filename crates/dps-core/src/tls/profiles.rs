use std::fmt;
use std::str::FromStr;

use super::suites::CipherSuite;

/// The name of a server-preference profile (docs/tls.md, "Profiles").
///
/// Profiles are versioned data: a new profile gets a new name, an existing profile never
/// changes its suites or their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ProfileName {
    /// Suites 1-4: only the ECDHE suites DPS recommends.
    Recommended,
    /// All twelve, legacy suites in DPS "Option #1 (better security)" order. The default.
    #[default]
    LegacySecurity,
    /// All twelve, legacy suites in DPS "Option #2 (better performance)" order.
    LegacyPerformance,
}

/// A profile name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TLS profile {0:?} (expected dps-recommended, dps-legacy-security or dps-legacy-performance)")]
pub struct UnknownProfile(pub String);

impl ProfileName {
    pub const ALL: [ProfileName; 3] =
        [ProfileName::Recommended, ProfileName::LegacySecurity, ProfileName::LegacyPerformance];

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Recommended => "dps-recommended",
            ProfileName::LegacySecurity => "dps-legacy-security",
            ProfileName::LegacyPerformance => "dps-legacy-performance",
        }
    }

    /// The profile this name stands for.
    pub fn profile(self) -> Profile {
        Profile::of(self)
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProfileName {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProfileName::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// TLS 1.3 suites offered when a listener enables TLS 1.3, in server-preference order.
pub const TLS13_SUITES: [(&str, u16); 2] = [("TLS_AES_256_GCM_SHA384", 0x1302), ("TLS_AES_128_GCM_SHA256", 0x1301)];

const RECOMMENDED: [u8; 4] = [1, 2, 3, 4];
const LEGACY_SECURITY: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const LEGACY_PERFORMANCE: [u8; 12] = [1, 2, 3, 4, 6, 5, 8, 7, 10, 9, 12, 11];

/// A server-preference profile: which of the twelve suites a listener accepts under TLS 1.2,
/// and in which order the server picks among those a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: ProfileName,
    order: &'static [u8],
}

impl Profile {
    /// The profile with this name.
    pub fn of(name: ProfileName) -> Self {
        let order: &'static [u8] = match name {
            ProfileName::Recommended => &RECOMMENDED,
            ProfileName::LegacySecurity => &LEGACY_SECURITY,
            ProfileName::LegacyPerformance => &LEGACY_PERFORMANCE,
        };
        Profile { name, order }
    }

    /// The suites of this profile in server-preference order.
    pub fn suites(&self) -> impl Iterator<Item = &'static CipherSuite> + '_ {
        self.order.iter().filter_map(|n| CipherSuite::by_number(*n))
    }

    /// Row numbers (docs/tls.md, "Profiles") in server-preference order.
    pub fn order(&self) -> &'static [u8] {
        self.order
    }

    /// The OpenSSL TLS 1.2 cipher string: the suites in order, nothing else, with the security
    /// level pinned so a distribution `openssl.cnf` cannot drop any of them.
    ///
    /// Level 1 is the highest that keeps every suite and an RSA-2048 certificate usable under
    /// OpenSSL 3 (level 2 and above refuse SHA-1 in places some legacy devices still need).
    pub fn openssl_cipher_list(&self) -> String {
        let mut s: Vec<&str> = self.suites().map(|c| c.openssl).collect();
        s.push("@SECLEVEL=1");
        s.join(":")
    }

    /// Whether this profile accepts the suite with wire code `code` under TLS 1.2.
    pub fn accepts(&self, code: u16) -> bool {
        self.suites().any(|s| s.code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(p: ProfileName) -> Vec<u8> {
        p.profile().suites().map(|s| s.number).collect()
    }

    #[test]
    fn profiles_match_the_policy_tables() {
        assert_eq!(numbers(ProfileName::Recommended), vec![1, 2, 3, 4]);
        assert_eq!(numbers(ProfileName::LegacySecurity), (1..=12).collect::<Vec<_>>());
        assert_eq!(numbers(ProfileName::LegacyPerformance), vec![1, 2, 3, 4, 6, 5, 8, 7, 10, 9, 12, 11]);
        assert_eq!(ProfileName::default(), ProfileName::LegacySecurity);
    }

    #[test]
    fn cipher_string_pins_security_level_and_lists_only_dps_suites() {
        let s = ProfileName::LegacyPerformance.profile().openssl_cipher_list();
        assert!(s.starts_with("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"));
        assert!(s.ends_with(":@SECLEVEL=1"));
        assert_eq!(s.split(':').count(), 13);
        assert!(!s.contains("CHACHA") && !s.contains("ECDSA"));
        assert!(s.split(':').all(|c| !c.starts_with("DHE-")));
    }

    #[test]
    fn names_parse_and_print() {
        for p in ProfileName::ALL {
            assert_eq!(p.as_str().parse::<ProfileName>(), Ok(p));
        }
        assert!("modern".parse::<ProfileName>().is_err());
    }
}
