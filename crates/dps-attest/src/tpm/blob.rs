//! The activation blob (`authenticationKey`): MakeCredential to the EK around a 16-byte inner
//! wrap key, plus the Duplicate of a keyedHash HMAC object holding the issued key, wrapped with
//! that inner key and an outer seed encrypted to the SRK (docs/tpm.md, "The activation blob").

use openssl::rand::rand_bytes;
use openssl::sha::Sha256;
use zeroize::Zeroizing;

use super::alg;
use super::attr;
use super::error::TpmError;
use super::marshal::{put_tpm2b, tpm2b};
use super::primitives::{cfb_encrypt, hmac, kdfa, oaep_encrypt, DIGEST};
use super::public::{name_sha256, TpmRsaKey};

/// The credential (the inner wrap key) is 16 bytes: the C, C# and iot-identity-service clients
/// import with a hard-coded AES-128-CFB.
pub const CREDENTIAL_LEN: usize = 16;
/// The length of the keys OpenDPS issues.
pub const IDENTITY_KEY_LEN: usize = 32;
/// The longest HMAC key `TPM2_Import` accepts (the SHA-256 block size).
pub const MAX_IDENTITY_KEY_LEN: usize = 64;

/// Label of the seed encrypted to the EK (with its NUL).
pub(crate) const IDENTITY_LABEL: &[u8] = b"IDENTITY\0";
/// Label of the seed encrypted to the SRK (with its NUL).
pub(crate) const DUPLICATE_LABEL: &[u8] = b"DUPLICATE\0";

/// The attributes of the issued key's object: userWithAuth | noDA | sign. fixedTPM and
/// fixedParent must be clear (the object is imported), restricted and decrypt must be clear
/// (`TPM2_HMAC` refuses those).
pub const IDENTITY_KEY_ATTRIBUTES: u32 = attr::USER_WITH_AUTH | attr::NO_DA | attr::SIGN;

/// A key OpenDPS issues to a TPM (the HMAC key the device's SAS tokens are signed with), or the
/// IoT Hub device key it hands over the same way. Secret: `Debug` shows only the length, and
/// the bytes are zeroed when dropped.
#[derive(Clone)]
pub struct IdentityKey(Zeroizing<Vec<u8>>);

/// Constant-time (only the length can leak).
impl PartialEq for IdentityKey {
    fn eq(&self, other: &Self) -> bool {
        crate::ct_eq(&self.0, &other.0)
    }
}
impl Eq for IdentityKey {}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey(<{} bytes redacted>)", self.0.len())
    }
}

impl IdentityKey {
    /// A fresh random key of [`IDENTITY_KEY_LEN`] bytes.
    pub fn generate() -> Result<IdentityKey, TpmError> {
        let mut k = Zeroizing::new(vec![0u8; IDENTITY_KEY_LEN]);
        rand_bytes(&mut k)?;
        Ok(IdentityKey(k))
    }

    /// A key from its bytes (1 to [`MAX_IDENTITY_KEY_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<IdentityKey, TpmError> {
        if bytes.is_empty() || bytes.len() > MAX_IDENTITY_KEY_LEN {
            return Err(TpmError::KeyLength(bytes.len()));
        }
        Ok(IdentityKey(Zeroizing::new(bytes.to_vec())))
    }

    /// A key from base64 (as stored, and as a hub device key is written).
    pub fn from_base64(b64: &str) -> Result<IdentityKey, TpmError> {
        let bytes = Zeroizing::new(dps_core::base64::decode(b64.trim()).ok_or(TpmError::KeyBase64)?);
        Self::from_bytes(&bytes)
    }

    /// The raw key bytes (the HMAC key).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key in base64: the form SAS verification takes (a SAS is HMAC-SHA256 under the raw
    /// bytes, i.e. under base64-decode of this text).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(dps_core::base64::encode(&self.0))
    }

    /// HMAC-SHA256 of `data` under this key: what the device's TPM computes with the imported key.
    pub fn hmac_sha256(&self, data: &[u8]) -> Result<Vec<u8>, TpmError> {
        hmac(&self.0, &[data])
    }
}

/// A challenge for one registration: the blob for the device and the key it wraps, which the
/// server keeps (as a secret) to verify the device's SAS tokens.
#[derive(Debug)]
pub struct Challenge {
    /// The activation blob (binary; [`Challenge::blob_base64`] for `authenticationKey`).
    pub blob: Vec<u8>,
    /// The issued key.
    pub key: IdentityKey,
}

impl Challenge {
    /// The blob as it goes in `authenticationKey`.
    pub fn blob_base64(&self) -> String {
        dps_core::base64::encode(&self.blob)
    }
}

/// Issues a fresh random key to the TPM that owns `ek`, to be imported under `srk`.
pub fn challenge(ek: &TpmRsaKey, srk: &TpmRsaKey) -> Result<Challenge, TpmError> {
    let key = IdentityKey::generate()?;
    let blob = activation_blob(ek, srk, &key)?;
    Ok(Challenge { blob, key })
}

/// The activation blob that hands `key` to the TPM that owns `ek`, imported under `srk`
/// (fields 1–6; field 6, the encrypted URI data, present and empty).
pub fn activation_blob(ek: &TpmRsaKey, srk: &TpmRsaKey, key: &IdentityKey) -> Result<Vec<u8>, TpmError> {
    let mut credential = Zeroizing::new([0u8; CREDENTIAL_LEN]);
    rand_bytes(&mut credential[..])?;
    build(ek, srk, key.as_bytes(), &credential[..], true)
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, TpmError> {
    let mut b = Zeroizing::new([0u8; N]);
    rand_bytes(&mut b[..])?;
    Ok(b)
}

/// Fields 1–6 for any key and credential length (the public functions fix both).
pub(crate) fn build(
    ek: &TpmRsaKey,
    srk: &TpmRsaKey,
    key: &[u8],
    credential: &[u8],
    with_uri_data: bool,
) -> Result<Vec<u8>, TpmError> {
    let (id_object, secret) = make_credential(ek, srk.name(), credential)?;
    let dup = duplicate(srk, credential, key)?;
    let mut blob = Vec::with_capacity(800);
    blob.extend_from_slice(&id_object);
    blob.extend_from_slice(&secret);
    blob.extend_from_slice(&dup.private);
    blob.extend_from_slice(&dup.in_sym_seed);
    blob.extend_from_slice(&dup.public);
    if with_uri_data {
        put_tpm2b(&mut blob, &[]);
    }
    Ok(blob)
}

/// TPM2_MakeCredential in software: `(TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET)` that only the
/// TPM holding `ek`'s private key, with an object named `object_name` loaded, can open.
pub(crate) fn make_credential(
    ek: &TpmRsaKey,
    object_name: &[u8],
    credential: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
    let seed = random::<DIGEST>()?;
    let secret = oaep_encrypt(ek.pkey(), IDENTITY_LABEL, &seed[..])?;
    let sym_key = kdfa(&seed[..], b"STORAGE", object_name, b"", ek.sym_bits())?;
    // The size of the credential is encrypted with it.
    let plain = Zeroizing::new(tpm2b(credential));
    let enc_identity = cfb_encrypt(&sym_key, &plain)?;
    let hmac_key = kdfa(&seed[..], b"INTEGRITY", b"", b"", 256)?;
    let integrity = hmac(&hmac_key, &[&enc_identity, object_name])?;
    let mut id_object = tpm2b(&integrity);
    id_object.extend_from_slice(&enc_identity);
    Ok((tpm2b(&id_object), tpm2b(&secret)))
}

/// The `TPMT_PUBLIC` of the issued key: keyedHash, SHA-256, [`IDENTITY_KEY_ATTRIBUTES`], no
/// policy, scheme HMAC-SHA256 (the Node client reads the hash from it), `unique`.
pub(crate) fn identity_key_tpmt(unique: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(48);
    p.extend_from_slice(&alg::KEYEDHASH.to_be_bytes());
    p.extend_from_slice(&alg::SHA256.to_be_bytes());
    p.extend_from_slice(&IDENTITY_KEY_ATTRIBUTES.to_be_bytes());
    put_tpm2b(&mut p, &[]);
    p.extend_from_slice(&alg::HMAC.to_be_bytes());
    p.extend_from_slice(&alg::SHA256.to_be_bytes());
    put_tpm2b(&mut p, unique);
    p
}

/// Fields 3–5: the output of [`duplicate`], each marshalled as a TPM2B.
pub(crate) struct Duplicated {
    /// `TPM2B_PRIVATE`.
    pub(crate) private: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET` (the outer seed, to the SRK).
    pub(crate) in_sym_seed: Vec<u8>,
    /// `TPM2B_PUBLIC`.
    pub(crate) public: Vec<u8>,
}

/// TPM2_Duplicate in software, with both wrappers, of a keyedHash HMAC object holding `key`.
pub(crate) fn duplicate(srk: &TpmRsaKey, inner_key: &[u8], key: &[u8]) -> Result<Duplicated, TpmError> {
    // unique = H(seedValue ‖ key); the random seedValue keeps `unique` from revealing the key.
    let obfuscation = random::<DIGEST>()?;
    let mut h = Sha256::new();
    h.update(&obfuscation[..]);
    h.update(key);
    let tpmt = identity_key_tpmt(&h.finish());
    let name = name_sha256(&tpmt);

    // TPM2B_SENSITIVE: type ‖ authValue (empty) ‖ seedValue ‖ sensitive (the key).
    let mut s = Zeroizing::new(Vec::with_capacity(2 + 2 + 34 + 2 + key.len()));
    s.extend_from_slice(&alg::KEYEDHASH.to_be_bytes());
    put_tpm2b(&mut s, &[]);
    put_tpm2b(&mut s, &obfuscation[..]);
    put_tpm2b(&mut s, key);
    let sensitive = Zeroizing::new(tpm2b(&s));

    // Inner wrapper: H(sensitive ‖ Name) in front, then AES-CFB under the credential.
    let mut h = Sha256::new();
    h.update(&sensitive);
    h.update(&name);
    let mut inner_plain = Zeroizing::new(tpm2b(&h.finish()));
    inner_plain.extend_from_slice(&sensitive);
    let inner = cfb_encrypt(inner_key, &inner_plain)?;

    // Outer wrapper: a seed for the SRK, KDFa keys bound to the object's Name.
    let seed = random::<DIGEST>()?;
    let in_sym_seed = oaep_encrypt(srk.pkey(), DUPLICATE_LABEL, &seed[..])?;
    let sym_key = kdfa(&seed[..], b"STORAGE", &name, b"", srk.sym_bits())?;
    let dup_sensitive = cfb_encrypt(&sym_key, &inner)?;
    let hmac_key = kdfa(&seed[..], b"INTEGRITY", b"", b"", 256)?;
    let outer_hmac = hmac(&hmac_key, &[&dup_sensitive, &name])?;
    let mut private = tpm2b(&outer_hmac);
    private.extend_from_slice(&dup_sensitive);
    Ok(Duplicated { private: tpm2b(&private), in_sym_seed: tpm2b(&in_sym_seed), public: tpm2b(&tpmt) })
}
