//! IANA names for the code points a ClientHello carries, so logs and readiness reports speak
//! the names scanners and the DPS document use. Unknown codes print as `0xABCD`. Known names
//! are borrowed, not allocated: every handshake logs and records its whole offer.

/// Whether `code` is a GREASE value (RFC 8701): `0x?A?A` with both bytes equal.
pub fn is_grease(code: u16) -> bool {
    code & 0x0f0f == 0x0a0a && (code >> 8) == (code & 0xff)
}

use std::borrow::Cow;

fn hex(code: u16) -> Cow<'static, str> {
    Cow::Owned(format!("0x{code:04X}"))
}

/// IANA name of a cipher suite code.
pub fn cipher_suite_name(code: u16) -> Cow<'static, str> {
    if let Some(s) = super::CipherSuite::by_code(code) {
        return Cow::Borrowed(s.iana);
    }
    let name = match code {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0x1304 => "TLS_AES_128_CCM_SHA256",
        0x1305 => "TLS_AES_128_CCM_8_SHA256",
        0x00FF => "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
        0x5600 => "TLS_FALLBACK_SCSV",
        0xC02B => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xC02C => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xC023 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        0xC024 => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
        0xC009 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        0xC00A => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        0xC008 => "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA",
        0xCCA9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCA8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCAA => "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xC012 => "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        0xC011 => "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        0x009E => "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        0x009F => "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        0x0067 => "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256",
        0x006B => "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
        0x0033 => "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
        0x0039 => "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
        0x0016 => "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA",
        0x000A => "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        0x0005 => "TLS_RSA_WITH_RC4_128_SHA",
        0x0004 => "TLS_RSA_WITH_RC4_128_MD5",
        0x003B => "TLS_RSA_WITH_NULL_SHA256",
        0x0002 => "TLS_RSA_WITH_NULL_SHA",
        0x0001 => "TLS_RSA_WITH_NULL_MD5",
        0xC09C => "TLS_RSA_WITH_AES_128_CCM",
        0xC09D => "TLS_RSA_WITH_AES_256_CCM",
        0xC0AC => "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
        0xC0AD => "TLS_ECDHE_ECDSA_WITH_AES_256_CCM",
        c if is_grease(c) => "GREASE",
        c => return hex(c),
    };
    Cow::Borrowed(name)
}

/// IANA name of a supported-groups code.
pub fn group_name(code: u16) -> Cow<'static, str> {
    let name = match code {
        0x0017 => "secp256r1",
        0x0018 => "secp384r1",
        0x0019 => "secp521r1",
        0x001D => "x25519",
        0x001E => "x448",
        0x0100 => "ffdhe2048",
        0x0101 => "ffdhe3072",
        0x0102 => "ffdhe4096",
        0x0103 => "ffdhe6144",
        0x0104 => "ffdhe8192",
        0x11EC => "X25519MLKEM768",
        0x11EB => "SecP256r1MLKEM768",
        0x6399 => "X25519Kyber768Draft00",
        c if is_grease(c) => "GREASE",
        c => return hex(c),
    };
    Cow::Borrowed(name)
}

/// IANA name of a signature scheme code.
pub fn signature_scheme_name(code: u16) -> Cow<'static, str> {
    let name = match code {
        0x0201 => "rsa_pkcs1_sha1",
        0x0203 => "ecdsa_sha1",
        0x0401 => "rsa_pkcs1_sha256",
        0x0501 => "rsa_pkcs1_sha384",
        0x0601 => "rsa_pkcs1_sha512",
        0x0403 => "ecdsa_secp256r1_sha256",
        0x0503 => "ecdsa_secp384r1_sha384",
        0x0603 => "ecdsa_secp521r1_sha512",
        0x0804 => "rsa_pss_rsae_sha256",
        0x0805 => "rsa_pss_rsae_sha384",
        0x0806 => "rsa_pss_rsae_sha512",
        0x0807 => "ed25519",
        0x0808 => "ed448",
        0x0809 => "rsa_pss_pss_sha256",
        0x080A => "rsa_pss_pss_sha384",
        0x080B => "rsa_pss_pss_sha512",
        0x0301 => "rsa_sha224",
        0x0303 => "ecdsa_sha224",
        0x0202 => "dsa_sha1",
        0x0402 => "dsa_sha256",
        0x0302 => "dsa_sha224",
        0x0502 => "dsa_sha384",
        0x0602 => "dsa_sha512",
        c if is_grease(c) => "GREASE",
        c => return hex(c),
    };
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_is_recognised() {
        assert!(is_grease(0x0A0A));
        assert!(is_grease(0xFAFA));
        assert!(!is_grease(0x0A1A));
        assert!(!is_grease(0xC02F));
    }

    #[test]
    fn names_fall_back_to_hex() {
        assert_eq!(cipher_suite_name(0xC030), "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert_eq!(cipher_suite_name(0xCCA8), "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256");
        assert_eq!(cipher_suite_name(0x1234), "0x1234");
        assert_eq!(group_name(0x0017), "secp256r1");
        assert_eq!(signature_scheme_name(0x0804), "rsa_pss_rsae_sha256");
        assert_eq!(group_name(0x2A2A), "GREASE");
    }
}
