//! TPM 2.0 attestation, the server's half (docs/tpm.md): no TPM, no private key, only public-key
//! encryption to the device's keys and symmetric crypto, all with OpenSSL's crypto.
//!
//! 1. [`TpmRsaKey::endorsement_key`] / [`TpmRsaKey::storage_root_key`] parse and check the
//!    `TPM2B_PUBLIC`s a device sends (RSA-2048 restricted decryption keys, SHA-256, AES-CFB).
//! 2. [`challenge`] issues a fresh HMAC key `K` and wraps it in an activation blob that only that
//!    TPM can open ([`activation_blob`] wraps a given key, e.g. the IoT Hub device key).
//! 3. The device's SAS tokens are HMAC-SHA256 under `K`: verify them like any SAS with
//!    [`IdentityKey::to_base64`] as the key.
//!
//! Everything here is bytes in, bytes out: no I/O, no state.

mod activator;
mod blob;
mod error;
mod marshal;
mod primitives;
mod public;
pub mod sasl;
#[cfg(any(test, feature = "testing"))]
mod soft_device;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use activator::OpensslTpm;
pub use blob::{
    activation_blob, challenge, Challenge, IdentityKey, CREDENTIAL_LEN, IDENTITY_KEY_ATTRIBUTES, IDENTITY_KEY_LEN,
    MAX_IDENTITY_KEY_LEN,
};
pub use error::{KeyRole, TpmError};
pub use public::{parse_public, Parameters, PublicArea, SymDef, TpmRsaKey};

use marshal::Reader;

/// TPM algorithm identifiers (TPM 2.0 Part 2, `TPM_ALG_ID`) used here.
pub mod alg {
    pub const RSA: u16 = 0x0001;
    pub const SHA1: u16 = 0x0004;
    pub const HMAC: u16 = 0x0005;
    pub const AES: u16 = 0x0006;
    pub const KEYEDHASH: u16 = 0x0008;
    pub const XOR: u16 = 0x000A;
    pub const SHA256: u16 = 0x000B;
    pub const NULL: u16 = 0x0010;
    pub const RSAES: u16 = 0x0015;
    pub const ECC: u16 = 0x0023;
    pub const CFB: u16 = 0x0043;
}

/// Object attributes (TPM 2.0 Part 2, `TPMA_OBJECT`) used here.
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// The six fields of an activation blob, each still with its `u16` size prefix (the form
/// tpm2-tools reads from files). For diagnostics and tests; the server only writes blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationBlobFields<'a> {
    /// 1: `TPM2B_ID_OBJECT` credentialBlob.
    pub credential_blob: &'a [u8],
    /// 2: `TPM2B_ENCRYPTED_SECRET` for ActivateCredential (to the EK).
    pub secret: &'a [u8],
    /// 3: `TPM2B_PRIVATE` duplicate of the issued key.
    pub duplicate: &'a [u8],
    /// 4: `TPM2B_ENCRYPTED_SECRET` inSymSeed (to the SRK).
    pub in_sym_seed: &'a [u8],
    /// 5: `TPM2B_PUBLIC` of the issued key.
    pub public: &'a [u8],
    /// 6: `TPM2B_DATA` encUriData.
    pub uri_data: &'a [u8],
}

impl<'a> ActivationBlobFields<'a> {
    /// Splits a blob the way the clients read it; `None` when a field is cut off or bytes trail.
    pub fn parse(blob: &'a [u8]) -> Option<ActivationBlobFields<'a>> {
        let mut r = Reader::new(blob);
        let mut field = || -> Option<&'a [u8]> {
            let start = blob.len() - r.remaining();
            let body = r.tpm2b("field").ok()?;
            blob.get(start..start + 2 + body.len())
        };
        let fields = ActivationBlobFields {
            credential_blob: field()?,
            secret: field()?,
            duplicate: field()?,
            in_sym_seed: field()?,
            public: field()?,
            uri_data: field()?,
        };
        (r.remaining() == 0).then_some(fields)
    }
}

#[cfg(test)]
mod tests;
