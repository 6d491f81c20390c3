use std::fmt;

/// A TLS protocol version as it appears on the wire (`ProtocolVersion`, two bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// The wire code (`0x0303` for TLS 1.2).
    pub fn code(self) -> u16 {
        match self {
            TlsVersion::Ssl3 => 0x0300,
            TlsVersion::Tls10 => 0x0301,
            TlsVersion::Tls11 => 0x0302,
            TlsVersion::Tls12 => 0x0303,
            TlsVersion::Tls13 => 0x0304,
        }
    }

    /// The version for a wire code, if it is one we know (GREASE and drafts are `None`).
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            0x0300 => TlsVersion::Ssl3,
            0x0301 => TlsVersion::Tls10,
            0x0302 => TlsVersion::Tls11,
            0x0303 => TlsVersion::Tls12,
            0x0304 => TlsVersion::Tls13,
            _ => return None,
        })
    }

    /// The name OpenSSL and most scanners print (`TLSv1.2`).
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Ssl3 => "SSLv3",
            TlsVersion::Tls10 => "TLSv1",
            TlsVersion::Tls11 => "TLSv1.1",
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }

    /// Parses the names OpenSSL reports (`TLSv1.2`, `TLSv1`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "SSLv3" => TlsVersion::Ssl3,
            "TLSv1" | "TLSv1.0" => TlsVersion::Tls10,
            "TLSv1.1" => TlsVersion::Tls11,
            "TLSv1.2" => TlsVersion::Tls12,
            "TLSv1.3" => TlsVersion::Tls13,
            _ => return None,
        })
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A DPS instance's `properties.minTlsVersion` (docs/tls.md, "minTlsVersion per instance"): `"1.2"` or `"1.3"`.
///
/// Absent means "no floor beyond the server's", which is TLS 1.2. Every other value, including
/// `"1.0"` and `"1.1"`, is refused when parsed, so an instance can never hold one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MinTlsVersion {
    Tls12,
    Tls13,
}

/// The value given for `minTlsVersion` is not one OpenDPS accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("minTlsVersion must be \"1.2\" or \"1.3\", got {0:?}")]
pub struct InvalidMinTlsVersion(pub String);

impl MinTlsVersion {
    /// Parses the ARM property value.
    pub fn parse(value: &str) -> Result<Self, InvalidMinTlsVersion> {
        match value {
            "1.2" => Ok(MinTlsVersion::Tls12),
            "1.3" => Ok(MinTlsVersion::Tls13),
            other => Err(InvalidMinTlsVersion(other.to_owned())),
        }
    }

    /// The ARM property value (`"1.2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            MinTlsVersion::Tls12 => "1.2",
            MinTlsVersion::Tls13 => "1.3",
        }
    }

    /// The protocol version this floor stands for.
    pub fn version(self) -> TlsVersion {
        match self {
            MinTlsVersion::Tls12 => TlsVersion::Tls12,
            MinTlsVersion::Tls13 => TlsVersion::Tls13,
        }
    }

    /// Whether a connection that negotiated `negotiated` meets this floor.
    pub fn admits(self, negotiated: TlsVersion) -> bool {
        negotiated >= self.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_tls_version_accepts_only_12_and_13() {
        assert_eq!(MinTlsVersion::parse("1.2"), Ok(MinTlsVersion::Tls12));
        assert_eq!(MinTlsVersion::parse("1.3"), Ok(MinTlsVersion::Tls13));
        for bad in ["1.0", "1.1", "banana", "", "1.2 ", "TLS1.2"] {
            assert!(MinTlsVersion::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn floor_admits_equal_or_newer() {
        assert!(MinTlsVersion::Tls12.admits(TlsVersion::Tls12));
        assert!(MinTlsVersion::Tls12.admits(TlsVersion::Tls13));
        assert!(!MinTlsVersion::Tls13.admits(TlsVersion::Tls12));
    }

    #[test]
    fn version_codes_round_trip() {
        for v in [TlsVersion::Ssl3, TlsVersion::Tls10, TlsVersion::Tls11, TlsVersion::Tls12, TlsVersion::Tls13] {
            assert_eq!(TlsVersion::from_code(v.code()), Some(v));
            assert_eq!(TlsVersion::from_name(v.name()), Some(v));
        }
        assert_eq!(TlsVersion::from_code(0x7a7a), None);
    }
}
