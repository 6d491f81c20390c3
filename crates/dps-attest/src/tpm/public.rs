//! `TPM2B_PUBLIC`: parsing any public area, and the checks an endorsement key (EK) or storage
//! root key (SRK) must pass before OpenDPS encrypts anything to it (docs/tpm.md, "Keys the
//! server accepts").

use openssl::bn::BigNum;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;

use super::error::{KeyRole, TpmError};
use super::marshal::{Reader, Short};
use super::{alg, attr};

/// `TPMT_SYM_DEF_OBJECT`: `key_bits` and `mode` are 0 when `algorithm` is NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// The type-specific part of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parameters {
    Rsa {
        symmetric: SymDef,
        /// The `TPMT_RSA_SCHEME` algorithm (NULL for storage keys).
        scheme: u16,
        key_bits: u16,
        /// As marshalled: 0 means the default, 65537.
        exponent: u32,
        modulus: Vec<u8>,
    },
    KeyedHash {
        scheme: u16,
        /// The hash of an HMAC or XOR scheme.
        scheme_hash: Option<u16>,
        unique: Vec<u8>,
    },
    /// ECC keys are recognised (for a clear refusal) but not used.
    Ecc,
    /// Any other object type.
    Other,
}

/// A parsed `TPM2B_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    /// The marshalled `TPMT_PUBLIC` (the `TPM2B_PUBLIC` without its size).
    tpmt: Vec<u8>,
    pub object_type: u16,
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub parameters: Parameters,
}

fn short(s: Short) -> TpmError {
    TpmError::Truncated { role: KeyRole::PublicArea, field: s.0 }
}

/// Parses a `TPM2B_PUBLIC` (what `endorsementKey` and `storageRootKey` carry, base64-decoded).
/// Never panics; any input that is not exactly one well-formed public area is an error. RSA and
/// keyedHash areas are parsed completely; for other types only the common header is.
pub fn parse_public(tpm2b: &[u8]) -> Result<PublicArea, TpmError> {
    let mut outer = Reader::new(tpm2b);
    let tpmt = outer.tpm2b("size").map_err(short)?;
    if outer.remaining() > 0 {
        return Err(TpmError::TrailingBytes { role: KeyRole::PublicArea, extra: outer.remaining() });
    }
    let mut r = Reader::new(tpmt);
    let object_type = r.u16("type").map_err(short)?;
    let name_alg = r.u16("name algorithm").map_err(short)?;
    let attributes = r.u32("attributes").map_err(short)?;
    let auth_policy = r.tpm2b("authPolicy").map_err(short)?.to_vec();
    let parameters = match object_type {
        alg::RSA => {
            let symmetric = sym_def(&mut r)?;
            let scheme = r.u16("scheme").map_err(short)?;
            // Every RSA scheme but NULL and RSAES carries a hash algorithm.
            if scheme != alg::NULL && scheme != alg::RSAES {
                r.u16("scheme hash").map_err(short)?;
            }
            let key_bits = r.u16("keyBits").map_err(short)?;
            let exponent = r.u32("exponent").map_err(short)?;
            let modulus = r.tpm2b("modulus").map_err(short)?.to_vec();
            Parameters::Rsa { symmetric, scheme, key_bits, exponent, modulus }
        }
        alg::KEYEDHASH => {
            let scheme = r.u16("scheme").map_err(short)?;
            let scheme_hash = match scheme {
                alg::HMAC => Some(r.u16("scheme hash").map_err(short)?),
                alg::XOR => {
                    let h = r.u16("scheme hash").map_err(short)?;
                    r.u16("scheme kdf").map_err(short)?;
                    Some(h)
                }
                _ => None,
            };
            let unique = r.tpm2b("unique").map_err(short)?.to_vec();
            Parameters::KeyedHash { scheme, scheme_hash, unique }
        }
        alg::ECC => return Ok(header_only(tpmt, object_type, name_alg, attributes, auth_policy, Parameters::Ecc)),
        _ => return Ok(header_only(tpmt, object_type, name_alg, attributes, auth_policy, Parameters::Other)),
    };
    if r.remaining() > 0 {
        return Err(TpmError::TrailingBytes { role: KeyRole::PublicArea, extra: r.remaining() });
    }
    Ok(PublicArea { tpmt: tpmt.to_vec(), object_type, name_alg, attributes, auth_policy, parameters })
}

fn header_only(
    tpmt: &[u8],
    object_type: u16,
    name_alg: u16,
    attributes: u32,
    auth_policy: Vec<u8>,
    parameters: Parameters,
) -> PublicArea {
    PublicArea { tpmt: tpmt.to_vec(), object_type, name_alg, attributes, auth_policy, parameters }
}

fn sym_def(r: &mut Reader<'_>) -> Result<SymDef, TpmError> {
    let algorithm = r.u16("symmetric algorithm").map_err(short)?;
    if algorithm == alg::NULL {
        return Ok(SymDef { algorithm, key_bits: 0, mode: 0 });
    }
    let key_bits = r.u16("symmetric keyBits").map_err(short)?;
    let mode = r.u16("symmetric mode").map_err(short)?;
    Ok(SymDef { algorithm, key_bits, mode })
}

impl PublicArea {
    /// The marshalled `TPMT_PUBLIC`.
    pub fn tpmt(&self) -> &[u8] {
        &self.tpmt
    }

    /// The object's Name: `nameAlg ‖ H(TPMT_PUBLIC)`, or `None` for a name algorithm other than
    /// SHA-256 (the only one OpenDPS uses).
    pub fn name(&self) -> Option<Vec<u8>> {
        (self.name_alg == alg::SHA256).then(|| name_sha256(&self.tpmt))
    }
}

/// `0x000B ‖ SHA-256(tpmt)`: the Name of an object whose nameAlg is SHA-256 (34 bytes).
pub(crate) fn name_sha256(tpmt: &[u8]) -> Vec<u8> {
    let mut n = alg::SHA256.to_be_bytes().to_vec();
    n.extend_from_slice(&openssl::sha::sha256(tpmt));
    n
}

/// An RSA-2048 restricted decryption key (an EK or an SRK) that passed every check, ready to
/// have seeds encrypted to it.
#[derive(Clone)]
pub struct TpmRsaKey {
    role: KeyRole,
    /// The `TPM2B_PUBLIC` as received.
    tpm2b: Vec<u8>,
    area: PublicArea,
    name: Vec<u8>,
    /// AES key size of the key's symmetric protection (128 or 256).
    sym_bits: u16,
    modulus: Vec<u8>,
    exponent: u32,
    pkey: PKey<Public>,
}

impl std::fmt::Debug for TpmRsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmRsaKey")
            .field("role", &self.role)
            .field("attributes", &format_args!("0x{:08x}", self.area.attributes))
            .field("sym_bits", &self.sym_bits)
            .field("name", &dps_core::hex::lower(&self.name))
            .finish_non_exhaustive()
    }
}

impl PartialEq for TpmRsaKey {
    fn eq(&self, other: &Self) -> bool {
        self.role == other.role && self.tpm2b == other.tpm2b
    }
}
impl Eq for TpmRsaKey {}

impl TpmRsaKey {
    /// Parses and checks an endorsement key: RSA-2048, nameAlg SHA-256, AES-128/256-CFB,
    /// NULL scheme, restricted + decrypt (not sign), fixedTPM + fixedParent.
    pub fn endorsement_key(tpm2b: &[u8]) -> Result<TpmRsaKey, TpmError> {
        Self::check(tpm2b, KeyRole::EndorsementKey)
    }

    /// Parses and checks a storage root key: as an EK, except that fixedTPM/fixedParent are not
    /// required (the server cannot verify anything about the SRK; the TPM checks it on import).
    pub fn storage_root_key(tpm2b: &[u8]) -> Result<TpmRsaKey, TpmError> {
        Self::check(tpm2b, KeyRole::StorageRootKey)
    }

    /// [`Self::endorsement_key`] of base64 text (the enrollment's and the device's form).
    pub fn endorsement_key_base64(b64: &str) -> Result<TpmRsaKey, TpmError> {
        let bytes = dps_core::base64::decode(b64.trim()).ok_or(TpmError::Base64(KeyRole::EndorsementKey))?;
        Self::endorsement_key(&bytes)
    }

    /// [`Self::storage_root_key`] of base64 text.
    pub fn storage_root_key_base64(b64: &str) -> Result<TpmRsaKey, TpmError> {
        let bytes = dps_core::base64::decode(b64.trim()).ok_or(TpmError::Base64(KeyRole::StorageRootKey))?;
        Self::storage_root_key(&bytes)
    }

    fn check(tpm2b: &[u8], role: KeyRole) -> Result<TpmRsaKey, TpmError> {
        let area = parse_public(tpm2b).map_err(|e| e.with_role(role))?;
        match area.object_type {
            alg::RSA => {}
            alg::ECC => return Err(TpmError::Ecc(role)),
            other => return Err(TpmError::NotRsa { role, alg: other }),
        }
        let Parameters::Rsa { symmetric, scheme, key_bits, exponent, ref modulus } = area.parameters else {
            return Err(TpmError::NotRsa { role, alg: area.object_type });
        };
        if key_bits != 2048 {
            return Err(TpmError::KeySize { role, bits: key_bits });
        }
        if area.name_alg != alg::SHA256 {
            return Err(TpmError::NameAlg { role, alg: area.name_alg });
        }
        let a = area.attributes;
        let storage = attr::RESTRICTED | attr::DECRYPT;
        if a & storage != storage || a & attr::SIGN != 0 {
            return Err(TpmError::Attributes { role, attributes: a, extra: "" });
        }
        if role == KeyRole::EndorsementKey
            && a & (attr::FIXED_TPM | attr::FIXED_PARENT) != attr::FIXED_TPM | attr::FIXED_PARENT
        {
            return Err(TpmError::Attributes {
                role,
                attributes: a,
                extra: " fixed to its TPM (fixedTPM, fixedParent)",
            });
        }
        if scheme != alg::NULL {
            return Err(TpmError::Scheme(role));
        }
        if symmetric.algorithm != alg::AES || symmetric.mode != alg::CFB || !matches!(symmetric.key_bits, 128 | 256) {
            return Err(TpmError::Symmetric(role));
        }
        let expected = usize::from(key_bits / 8);
        // A 2048-bit modulus has exactly 256 bytes and its top bit set.
        if modulus.len() != expected || modulus.first().is_none_or(|b| b & 0x80 == 0) {
            return Err(TpmError::Modulus { role, expected, actual: modulus.len() });
        }
        let e = match exponent {
            0 => 65_537,
            e if e >= 3 && e % 2 == 1 => e,
            e => return Err(TpmError::Exponent { role, exponent: e }),
        };
        let rsa = Rsa::from_public_components(BigNum::from_slice(modulus)?, BigNum::from_u32(e)?)?;
        let pkey = PKey::from_rsa(rsa)?;
        let name = name_sha256(area.tpmt());
        let modulus = modulus.clone();
        Ok(TpmRsaKey {
            role,
            tpm2b: tpm2b.to_vec(),
            sym_bits: symmetric.key_bits,
            exponent: e,
            modulus,
            name,
            area,
            pkey,
        })
    }

    /// Which key this is.
    pub fn role(&self) -> KeyRole {
        self.role
    }

    /// The `TPM2B_PUBLIC` as received.
    pub fn tpm2b(&self) -> &[u8] {
        &self.tpm2b
    }

    /// The parsed public area.
    pub fn public_area(&self) -> &PublicArea {
        &self.area
    }

    /// The TPM Name (`0x000B ‖ SHA-256(TPMT_PUBLIC)`, 34 bytes).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The RSA modulus (256 bytes, big-endian).
    pub fn modulus(&self) -> &[u8] {
        &self.modulus
    }

    /// Whether `other` is the same RSA key (modulus and exponent), whatever template made it:
    /// the SDKs' EK templates differ in `unique` (docs/tpm.md, "One TPM, several EKs"), so this
    /// is how a device's EK is matched against the enrollment's.
    pub fn same_key(&self, other: &TpmRsaKey) -> bool {
        self.exponent == other.exponent && crate::ct_eq(&self.modulus, &other.modulus)
    }

    /// AES key bits of the key's symmetric protection (used for the KDFa "STORAGE" key).
    pub(crate) fn sym_bits(&self) -> u16 {
        self.sym_bits
    }

    pub(crate) fn pkey(&self) -> &PKey<Public> {
        &self.pkey
    }
}
