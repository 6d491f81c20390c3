//! Deliberately client-breaking blobs (feature `testing`, for tests only): each shows, against
//! a real TPM or client, why the server's blob is built the way it is (docs/tpm.md, "Choices
//! the clients force").

use super::blob::build;
use super::error::TpmError;
use super::public::TpmRsaKey;

/// An activation blob wrapping `key` (any length, unchecked) with a random credential of
/// `credential_len` bytes, with or without field 6 (`encUriData`).
pub fn blob_variant(
    ek: &TpmRsaKey,
    srk: &TpmRsaKey,
    key: &[u8],
    credential_len: usize,
    with_uri_data: bool,
) -> Result<Vec<u8>, TpmError> {
    let mut credential = vec![0u8; credential_len];
    openssl::rand::rand_bytes(&mut credential)?;
    build(ek, srk, key, &credential, with_uri_data)
}

/// A software TPM (RSA private keys as its EK and SRK) for tests that need a device without a
/// TPM: it performs ActivateCredential and Import on a blob with the checks the TPM makes.
pub struct SoftwareTpm(super::soft_device::SoftTpm);

impl std::fmt::Debug for SoftwareTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftwareTpm(<private keys>)")
    }
}

impl Default for SoftwareTpm {
    fn default() -> Self {
        SoftwareTpm(super::soft_device::SoftTpm::new())
    }
}

impl SoftwareTpm {
    /// The EK's `TPM2B_PUBLIC` (the SDK template's attributes and policy).
    pub fn endorsement_key(&self) -> Vec<u8> {
        self.0.ek.public.clone()
    }

    /// The SRK's `TPM2B_PUBLIC`.
    pub fn storage_root_key(&self) -> Vec<u8> {
        self.0.srk.public.clone()
    }

    /// The key a blob hands over, as the device's TPM would import it; `Err` names the check
    /// that failed.
    pub fn activate(&self, blob: &[u8]) -> Result<Vec<u8>, String> {
        self.0.activate(blob)
    }
}
