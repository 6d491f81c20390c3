//! The keys OpenDPS issued to a TPM device (docs/tpm.md, "Secrets"): kept in the store so that
//! any node can verify the SAS tokens that follow a challenge.

use serde::{Deserialize, Serialize};

/// How many issued keys are kept per registration id, newest first: a challenge someone else
/// asks for with the same (public) endorsement key does not at once void the key a device is
/// still signing with.
pub const MAX_ISSUED_TPM_KEYS: usize = 4;

/// One key issued in a TPM activation challenge, with the public keys it was wrapped for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTpmKey {
    /// The device's `TPM2B_PUBLIC` EK (base64) the challenge was made for.
    pub endorsement_key: String,
    /// The SRK (base64) the key was imported under.
    pub storage_root_key: String,
    /// The issued HMAC key, base64. Secret.
    pub key: String,
    pub issued_date_time_utc: String,
}

impl std::fmt::Debug for IssuedTpmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTpmKey")
            .field("key", &"<redacted>")
            .field("issued_date_time_utc", &self.issued_date_time_utc)
            .finish_non_exhaustive()
    }
}

/// The keys issued to the TPM of one registration id (newest first, at most
/// [`MAX_ISSUED_TPM_KEYS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmIssuedKeys {
    pub registration_id: String,
    pub etag: String,
    pub keys: Vec<IssuedTpmKey>,
}
