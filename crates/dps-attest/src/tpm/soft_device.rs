//! A software stand-in for the device's TPM, for unit tests: RSA private keys play the EK and
//! the SRK, and the two TPM commands the clients run on a blob (ActivateCredential, Import) are
//! done in the open, with every check the TPM makes. It is checked against tpm2-tools' own
//! MakeCredential (a committed known-answer file), so the server and this device cannot share a
//! mistake unnoticed; the swtpm tests then check the server against a real TPM implementation.

#![cfg_attr(not(test), allow(dead_code))] // the testing feature uses only part of it

use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sha::Sha256;

use super::blob::{DUPLICATE_LABEL, IDENTITY_LABEL};
use super::marshal::{put_tpm2b, tpm2b, Reader};
use super::primitives::{cfb_decrypt, hmac, kdfa, oaep_decrypt};
use super::public::name_sha256;
use super::{alg, attr, parse_public, ActivationBlobFields, Parameters};

/// EK attributes of the SDK templates: fixedTPM | fixedParent | sensitiveDataOrigin |
/// adminWithPolicy | restricted | decrypt.
pub(crate) const EK_ATTRIBUTES: u32 = 0x0003_00B2;
/// SRK attributes of the SDK templates: fixedTPM | fixedParent | sensitiveDataOrigin |
/// userWithAuth | noDA | restricted | decrypt.
pub(crate) const SRK_ATTRIBUTES: u32 = 0x0003_0472;
/// The EK policy digest of the TCG template (PolicySecret(TPM_RH_ENDORSEMENT)).
pub(crate) const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7,
    0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// A `TPM2B_PUBLIC` for an RSA storage-type key.
pub(crate) fn rsa_public(modulus: &[u8], key_bits: u16, attributes: u32, policy: &[u8], sym_bits: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&alg::RSA.to_be_bytes());
    p.extend_from_slice(&alg::SHA256.to_be_bytes());
    p.extend_from_slice(&attributes.to_be_bytes());
    put_tpm2b(&mut p, policy);
    p.extend_from_slice(&alg::AES.to_be_bytes());
    p.extend_from_slice(&sym_bits.to_be_bytes());
    p.extend_from_slice(&alg::CFB.to_be_bytes());
    p.extend_from_slice(&alg::NULL.to_be_bytes());
    p.extend_from_slice(&key_bits.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes());
    put_tpm2b(&mut p, modulus);
    tpm2b(&p)
}

/// One software key standing in for a TPM-resident EK or SRK.
pub(crate) struct SoftKey {
    pub(crate) private: PKey<Private>,
    pub(crate) public: Vec<u8>,
    pub(crate) sym_bits: u16,
}

impl SoftKey {
    pub(crate) fn new(bits: u32, attributes: u32, policy: &[u8], sym_bits: u16) -> SoftKey {
        let rsa = Rsa::generate(bits).expect("rsa keygen");
        let n = rsa.n().to_vec();
        let public = rsa_public(&n, u16::try_from(bits).expect("bits"), attributes, policy, sym_bits);
        SoftKey { private: PKey::from_rsa(rsa).expect("pkey"), public, sym_bits }
    }

    pub(crate) fn from_pem(pem: &[u8], sym_bits: u16) -> SoftKey {
        let rsa = Rsa::private_key_from_pem(pem).expect("pem");
        let public = rsa_public(&rsa.n().to_vec(), 2048, EK_ATTRIBUTES, &EK_POLICY, sym_bits);
        SoftKey { private: PKey::from_rsa(rsa).expect("pkey"), public, sym_bits }
    }

    pub(crate) fn name(&self) -> Vec<u8> {
        name_sha256(self.public.get(2..).expect("tpm2b"))
    }
}

/// A software TPM holding an EK and an SRK.
pub(crate) struct SoftTpm {
    pub(crate) ek: SoftKey,
    pub(crate) srk: SoftKey,
}

impl SoftTpm {
    pub(crate) fn new() -> SoftTpm {
        SoftTpm {
            ek: SoftKey::new(2048, EK_ATTRIBUTES, &EK_POLICY, 128),
            srk: SoftKey::new(2048, SRK_ATTRIBUTES, &[], 128),
        }
    }

    /// Two software TPMs made once per test process (RSA key generation dominates test time).
    pub(crate) fn shared(which: usize) -> &'static SoftTpm {
        static TPMS: std::sync::OnceLock<[SoftTpm; 2]> = std::sync::OnceLock::new();
        &TPMS.get_or_init(|| [SoftTpm::new(), SoftTpm::new()])[which]
    }

    /// What a client does with a blob: ActivateCredential(SRK, EK), Import under the SRK with
    /// the credential as the inner key. Returns the imported HMAC key.
    pub(crate) fn activate(&self, blob: &[u8]) -> Result<Vec<u8>, String> {
        let f = ActivationBlobFields::parse(blob).ok_or("could not unmarshal activation data")?;
        let credential = activate_credential(&self.ek, &self.srk.name(), f.credential_blob, f.secret)?;
        if credential.len() != 16 {
            return Err(format!("TPM2_Import with AES-128-CFB refuses a {}-byte inner key", credential.len()));
        }
        import(&self.srk, &credential, f.public, f.duplicate, f.in_sym_seed)
    }
}

fn body<'a>(tpm2b: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let mut r = Reader::new(tpm2b);
    let b = r.tpm2b("x").map_err(|_| format!("{what}: truncated"))?;
    if r.remaining() != 0 {
        return Err(format!("{what}: trailing bytes"));
    }
    Ok(b)
}

/// TPM2_ActivateCredential: the credential, if `id_object` was made for this EK and an object
/// named `object_name`.
pub(crate) fn activate_credential(
    ek: &SoftKey,
    object_name: &[u8],
    id_object: &[u8],
    secret: &[u8],
) -> Result<Vec<u8>, String> {
    let seed = oaep_decrypt(&ek.private, IDENTITY_LABEL, body(secret, "secret")?)
        .map_err(|_| "TPM_RC_VALUE: the secret does not decrypt with this EK".to_owned())?;
    let mut r = Reader::new(body(id_object, "credentialBlob")?);
    let integrity = r.tpm2b("integrity").map_err(|_| "credentialBlob: no integrity")?;
    let enc_identity = r.bytes(r.remaining(), "encIdentity").map_err(|_| "credentialBlob")?;
    let hmac_key = kdfa(&seed, b"INTEGRITY", b"", b"", 256).map_err(|e| e.to_string())?;
    let expected = hmac(&hmac_key, &[enc_identity, object_name]).map_err(|e| e.to_string())?;
    if !crate::ct_eq(&expected, integrity) {
        return Err("TPM_RC_INTEGRITY: credential integrity check failed".into());
    }
    let sym = kdfa(&seed, b"STORAGE", object_name, b"", ek.sym_bits).map_err(|e| e.to_string())?;
    let plain = cfb_decrypt(&sym, enc_identity).map_err(|e| e.to_string())?;
    Ok(body(&plain, "credential")?.to_vec())
}

/// TPM2_Import of a duplicate with an inner and an outer wrapper: the sensitive value (the key).
pub(crate) fn import(
    parent: &SoftKey,
    inner_key: &[u8],
    public: &[u8],
    duplicate: &[u8],
    in_sym_seed: &[u8],
) -> Result<Vec<u8>, String> {
    let area = parse_public(public).map_err(|e| e.to_string())?;
    if area.attributes & (attr::FIXED_TPM | attr::FIXED_PARENT) != 0 {
        return Err("TPM_RC_ATTRIBUTES: fixedTPM/fixedParent set on an imported object".into());
    }
    let Parameters::KeyedHash { unique, .. } = &area.parameters else {
        return Err("not a keyedHash object".into());
    };
    let name = area.name().ok_or("name algorithm is not SHA-256")?;
    let seed = oaep_decrypt(&parent.private, DUPLICATE_LABEL, body(in_sym_seed, "inSymSeed")?)
        .map_err(|_| "TPM_RC_VALUE: the seed does not decrypt with this SRK".to_owned())?;
    let mut r = Reader::new(body(duplicate, "duplicate")?);
    let outer_hmac = r.tpm2b("outer").map_err(|_| "duplicate: no outer HMAC")?;
    let dup_sensitive = r.bytes(r.remaining(), "dupSensitive").map_err(|_| "duplicate")?;
    let hmac_key = kdfa(&seed, b"INTEGRITY", b"", b"", 256).map_err(|e| e.to_string())?;
    let expected = hmac(&hmac_key, &[dup_sensitive, &name]).map_err(|e| e.to_string())?;
    if !crate::ct_eq(&expected, outer_hmac) {
        return Err("TPM_RC_INTEGRITY: outer integrity check failed".into());
    }
    let sym = kdfa(&seed, b"STORAGE", &name, b"", parent.sym_bits).map_err(|e| e.to_string())?;
    let inner = cfb_decrypt(&sym, dup_sensitive).map_err(|e| e.to_string())?;
    let plain = cfb_decrypt(inner_key, &inner).map_err(|e| e.to_string())?;
    let mut r = Reader::new(&plain);
    let inner_integrity = r.tpm2b("inner").map_err(|_| "no inner integrity")?;
    let sensitive = r.bytes(r.remaining(), "sensitive").map_err(|_| "sensitive")?;
    let mut h = Sha256::new();
    h.update(sensitive);
    h.update(&name);
    if !crate::ct_eq(&h.finish(), inner_integrity) {
        return Err("TPM_RC_INTEGRITY: inner integrity check failed".into());
    }
    let mut r = Reader::new(body(sensitive, "TPM2B_SENSITIVE")?);
    let kind = r.u16("type").map_err(|_| "sensitive type")?;
    let _auth = r.tpm2b("auth").map_err(|_| "authValue")?;
    let obfuscation = r.tpm2b("seed").map_err(|_| "seedValue")?;
    let key = r.tpm2b("key").map_err(|_| "sensitive data")?;
    if kind != alg::KEYEDHASH || r.remaining() != 0 {
        return Err("malformed sensitive area".into());
    }
    if key.len() > 64 {
        return Err("TPM_RC_KEY_SIZE: HMAC key longer than the hash block".into());
    }
    let mut h = Sha256::new();
    h.update(obfuscation);
    h.update(key);
    if h.finish()[..] != unique[..] {
        return Err("TPM_RC_BINDING: unique does not match the sensitive area".into());
    }
    Ok(key.to_vec())
}
