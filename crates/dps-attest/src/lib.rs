//! `dps-attest`: the cryptography of attestation, with OpenSSL's crypto (never its TLS).
//!
//! - [`sas`]: SharedAccessSignature tokens in every form the SDKs produce (docs/protocol.md,
//!   "Device SAS tokens"), verified in constant time.
//! - [`derive_device_key`]: enrollment-group key derivation (docs/protocol.md, "Symmetric-key enrollment groups").
//! - [`OpensslX509`]: the `X509Inspector` port (certificate info, CA flag, issued-by checks).
//! - [`OpensslDeviceCrypto`]: the `DeviceCrypto` port; device chains are verified by OpenSSL's
//!   verifier ([`verify_chain`]: partial chains up to the enrollment's CA, the caller's time,
//!   purpose, key usage, path length, name constraints, no weak signatures).
//! - [`entropy`]: the `Entropy` port on OpenSSL's CSPRNG.
//! - [`tpm`]: TPM 2.0 attestation, the server's half: EK/SRK checks and activation blobs
//!   (docs/tpm.md).

mod device;
pub mod sas;
pub mod secret_box;
pub mod tpm;
mod x509;

pub use device::{check_leaf_usage, leaf_facts, verify_chain, ChainError, OpensslDeviceCrypto, MAX_CHAIN, SAS_SKEW};
pub use x509::{chain_issued_by, OpensslX509};

/// HMAC-SHA256, with the RustCrypto `hmac` and `sha2` crates: through OpenSSL's EVP API each
/// call built a key object and fetched the algorithm again, ~8× the instructions of the MAC
/// itself (bench/results/2026-12-01-hmac.md).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    // HMAC takes a key of any length: this never fails.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else { return Vec::new() };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time equality (lengths compared first, which leaks only the length).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// The device key of `registration_id` in an enrollment group with key `group_key_b64`:
/// base64(HMAC-SHA256(base64decode(group key), registration id)).
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Option<String> {
    let key = dps_core::base64::decode(group_key_b64)?;
    Some(dps_core::base64::encode(&hmac_sha256(&key, registration_id.as_bytes())))
}

/// The `Entropy` port on OpenSSL's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpensslEntropy;

impl dps_core::ports::Entropy for OpensslEntropy {
    fn fill(&self, buf: &mut [u8]) {
        if openssl::rand::rand_bytes(buf).is_err() {
            // The CSPRNG failing is unrecoverable: never hand out predictable keys.
            std::process::abort();
        }
    }
}

/// The `Clock` port on the system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl dps_core::ports::Clock for SystemClock {
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_key_derivation_matches_the_documented_algorithm() {
        // The DPS docs' sample: group key and registration id -> device key.
        let k = derive_device_key(
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
            "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6",
        )
        .expect("valid key");
        assert_eq!(k, "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
        assert!(derive_device_key("not base64!", "x").is_none());
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // Test case 2: a short key.
        assert_eq!(
            hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block, hashed first.
        assert_eq!(
            hex(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
