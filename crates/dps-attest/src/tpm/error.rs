//! Why a TPM key was refused or a blob could not be built. Messages are safe to return to the
//! device (they name the problem, never a secret).

use std::fmt;

/// Which key a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// `tpm.endorsementKey` (the device's identity; stored in the enrollment).
    EndorsementKey,
    /// `tpm.storageRootKey` (sent by the device with each registration).
    StorageRootKey,
    /// A public area parsed without a role.
    PublicArea,
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyRole::EndorsementKey => "endorsement key",
            KeyRole::StorageRootKey => "storage root key",
            KeyRole::PublicArea => "TPM public area",
        })
    }
}

/// A refused TPM key or a failed blob construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    #[error("the {0} is not valid base64")]
    Base64(KeyRole),
    #[error("the {role} is truncated: its {field} is cut off")]
    Truncated { role: KeyRole, field: &'static str },
    #[error("the {role} has {extra} unexpected bytes after its public area")]
    TrailingBytes { role: KeyRole, extra: usize },
    #[error("the {0} is an ECC key; OpenDPS accepts only RSA-2048 endorsement and storage root keys")]
    Ecc(KeyRole),
    #[error("the {role} is not an RSA key (TPM algorithm 0x{alg:04x}); OpenDPS accepts only RSA-2048 endorsement and storage root keys")]
    NotRsa { role: KeyRole, alg: u16 },
    #[error("the {role} is RSA-{bits}; OpenDPS accepts only RSA-2048 endorsement and storage root keys")]
    KeySize { role: KeyRole, bits: u16 },
    #[error("the {role}'s RSA modulus has {actual} bytes, not the {expected} its key size needs")]
    Modulus { role: KeyRole, expected: usize, actual: usize },
    #[error("the {role}'s RSA public exponent {exponent} is not usable")]
    Exponent { role: KeyRole, exponent: u32 },
    #[error("the {role}'s name algorithm is 0x{alg:04x}; OpenDPS accepts only SHA-256 (0x000b)")]
    NameAlg { role: KeyRole, alg: u16 },
    #[error("the {0}'s symmetric protection must be AES-128 or AES-256 in CFB mode")]
    Symmetric(KeyRole),
    #[error("the {0}'s scheme must be NULL (a storage key has no asymmetric scheme)")]
    Scheme(KeyRole),
    #[error("the {role} must be a restricted decryption key{extra} (its attributes are 0x{attributes:08x})")]
    Attributes { role: KeyRole, attributes: u32, extra: &'static str },
    #[error("an identity key must be 1 to 64 bytes long, not {0}")]
    KeyLength(usize),
    #[error("an identity key must be base64")]
    KeyBase64,
    #[error("OpenSSL failed while building the activation blob ({0})")]
    Crypto(String),
}

impl TpmError {
    /// The same error about a key in `role`.
    pub(crate) fn with_role(self, role: KeyRole) -> TpmError {
        use TpmError::*;
        match self {
            Base64(_) => Base64(role),
            Truncated { field, .. } => Truncated { role, field },
            TrailingBytes { extra, .. } => TrailingBytes { role, extra },
            Ecc(_) => Ecc(role),
            NotRsa { alg, .. } => NotRsa { role, alg },
            KeySize { bits, .. } => KeySize { role, bits },
            Modulus { expected, actual, .. } => Modulus { role, expected, actual },
            Exponent { exponent, .. } => Exponent { role, exponent },
            NameAlg { alg, .. } => NameAlg { role, alg },
            Symmetric(_) => Symmetric(role),
            Scheme(_) => Scheme(role),
            Attributes { attributes, extra, .. } => Attributes { role, attributes, extra },
            other @ (KeyLength(_) | KeyBase64 | Crypto(_)) => other,
        }
    }
}

impl From<openssl::error::ErrorStack> for TpmError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        // OpenSSL's reasons name the failing operation, never key material.
        let reason = e.errors().first().and_then(|x| x.reason()).unwrap_or("unknown error");
        TpmError::Crypto(reason.to_owned())
    }
}
