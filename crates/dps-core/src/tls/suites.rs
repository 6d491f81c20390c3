/// Why a suite is in the DPS set (docs/tls.md, "Cipher suites").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SuiteClass {
    /// ECDHE with SHA-2: the four suites DPS recommends.
    Recommended,
    /// ECDHE with SHA-1 MAC.
    LegacySha1,
    /// RSA key exchange (no forward secrecy).
    LegacyNoPfs,
    /// RSA key exchange and SHA-1 MAC.
    LegacySha1NoPfs,
}

impl SuiteClass {
    /// A short label for tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            SuiteClass::Recommended => "recommended",
            SuiteClass::LegacySha1 => "legacy (SHA-1)",
            SuiteClass::LegacyNoPfs => "legacy (no PFS)",
            SuiteClass::LegacySha1NoPfs => "legacy (SHA-1, no PFS)",
        }
    }
}

/// One TLS 1.2 cipher suite of the DPS set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSuite {
    /// Row number in docs/tls.md, "Cipher suites" (1..=12); profiles are written in these numbers.
    pub number: u8,
    /// IANA name, as scanners print it.
    pub iana: &'static str,
    /// Two-byte wire code.
    pub code: u16,
    /// OpenSSL's name, used to build the cipher string.
    pub openssl: &'static str,
    /// Uses ECDHE key exchange (and therefore needs a shared group).
    pub ecdhe: bool,
    pub class: SuiteClass,
}

const fn suite(
    number: u8,
    iana: &'static str,
    code: u16,
    openssl: &'static str,
    ecdhe: bool,
    class: SuiteClass,
) -> CipherSuite {
    CipherSuite { number, iana, code, openssl, ecdhe, class }
}

use SuiteClass::{LegacyNoPfs, LegacySha1, LegacySha1NoPfs, Recommended};

/// The twelve TLS 1.2 suites DPS enforces, in the numbering of docs/tls.md, "Cipher suites".
/// Nothing outside this table is ever configured on a listener.
pub const DPS_SUITES: [CipherSuite; 12] = [
    suite(1, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xC030, "ECDHE-RSA-AES256-GCM-SHA384", true, Recommended),
    suite(2, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC02F, "ECDHE-RSA-AES128-GCM-SHA256", true, Recommended),
    suite(3, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", 0xC028, "ECDHE-RSA-AES256-SHA384", true, Recommended),
    suite(4, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 0xC027, "ECDHE-RSA-AES128-SHA256", true, Recommended),
    suite(5, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", 0xC014, "ECDHE-RSA-AES256-SHA", true, LegacySha1),
    suite(6, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xC013, "ECDHE-RSA-AES128-SHA", true, LegacySha1),
    suite(7, "TLS_RSA_WITH_AES_256_GCM_SHA384", 0x009D, "AES256-GCM-SHA384", false, LegacyNoPfs),
    suite(8, "TLS_RSA_WITH_AES_128_GCM_SHA256", 0x009C, "AES128-GCM-SHA256", false, LegacyNoPfs),
    suite(9, "TLS_RSA_WITH_AES_256_CBC_SHA256", 0x003D, "AES256-SHA256", false, LegacyNoPfs),
    suite(10, "TLS_RSA_WITH_AES_128_CBC_SHA256", 0x003C, "AES128-SHA256", false, LegacyNoPfs),
    suite(11, "TLS_RSA_WITH_AES_256_CBC_SHA", 0x0035, "AES256-SHA", false, LegacySha1NoPfs),
    suite(12, "TLS_RSA_WITH_AES_128_CBC_SHA", 0x002F, "AES128-SHA", false, LegacySha1NoPfs),
];

impl CipherSuite {
    /// The suite with row number `n` of docs/tls.md, "Cipher suites".
    pub fn by_number(n: u8) -> Option<&'static CipherSuite> {
        DPS_SUITES.iter().find(|s| s.number == n)
    }

    /// The DPS suite with this wire code, if it is one.
    pub fn by_code(code: u16) -> Option<&'static CipherSuite> {
        DPS_SUITES.iter().find(|s| s.code == code)
    }

    /// The DPS suite with this OpenSSL or IANA name, if it is one.
    pub fn by_name(name: &str) -> Option<&'static CipherSuite> {
        DPS_SUITES.iter().find(|s| s.openssl == name || s.iana == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_numbered_one_to_twelve_with_unique_codes() {
        for (i, s) in DPS_SUITES.iter().enumerate() {
            assert_eq!(usize::from(s.number), i + 1);
            assert_eq!(DPS_SUITES.iter().filter(|o| o.code == s.code).count(), 1);
            assert_eq!(s.ecdhe, s.iana.starts_with("TLS_ECDHE_RSA_"));
            assert!(s.iana.contains("_RSA_"), "every DPS suite authenticates with RSA");
        }
    }

    #[test]
    fn lookups_agree() {
        let s = CipherSuite::by_code(0xC02F).expect("known");
        assert_eq!(s.number, 2);
        assert_eq!(CipherSuite::by_name("ECDHE-RSA-AES128-GCM-SHA256"), Some(s));
        assert_eq!(CipherSuite::by_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"), Some(s));
        assert_eq!(CipherSuite::by_code(0xCCA8), None, "CHACHA20 is not a DPS suite");
    }
}
