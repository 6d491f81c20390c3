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
