//! The TPM's symmetric building blocks on OpenSSL: KDFa, AES-CFB with a zero IV, HMAC and
//! RSA-OAEP with a label. SHA-256 throughout (the nameAlg of every key OpenDPS accepts).

use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPrivate, HasPublic, PKey, PKeyRef};
use openssl::rsa::Padding;
use openssl::sign::Signer;
use openssl::symm::{Cipher, Crypter, Mode};
use zeroize::Zeroizing;

use super::error::TpmError;

/// SHA-256 digest size: the size of seeds and HMAC keys.
pub(crate) const DIGEST: usize = 32;

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, TpmError> {
    let k = PKey::hmac(key)?;
    let mut s = Signer::new(MessageDigest::sha256(), &k)?;
    for p in parts {
        s.update(p)?;
    }
    Ok(s.sign_to_vec()?)
}

/// KDFa with SHA-256 (TPM 2.0 Part 1, SP800-108 counter mode):
/// `HMAC(key, u32(i) ‖ label ‖ 0x00 ‖ context_u ‖ context_v ‖ u32(bits))` for i = 1, 2, …,
/// truncated to `bits / 8` bytes. `label` is given without its terminating NUL.
pub(crate) fn kdfa(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u16,
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let len = usize::from(bits / 8);
    let mut out = Zeroizing::new(Vec::with_capacity(len + DIGEST));
    let mut counter: u32 = 1;
    while out.len() < len {
        let block =
            hmac(key, &[&counter.to_be_bytes(), label, &[0], context_u, context_v, &u32::from(bits).to_be_bytes()])?;
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(len);
    Ok(out)
}

fn aes_cfb(key: &[u8]) -> Result<Cipher, TpmError> {
    match key.len() {
        16 => Ok(Cipher::aes_128_cfb128()),
        32 => Ok(Cipher::aes_256_cfb128()),
        n => Err(TpmError::Crypto(format!("no AES-CFB for a {n}-byte key"))),
    }
}

fn cfb(mode: Mode, key: &[u8], data: &[u8]) -> Result<Vec<u8>, TpmError> {
    let cipher = aes_cfb(key)?;
    let mut c = Crypter::new(cipher, mode, key, Some(&[0u8; 16]))?;
    c.pad(false);
    let mut out = vec![0u8; data.len() + cipher.block_size()];
    let n = c.update(data, &mut out)?;
    let m = c.finalize(out.get_mut(n..).unwrap_or_default())?;
    out.truncate(n + m);
    Ok(out)
}

/// AES-CFB128 encryption with IV = 0 (AES-128 or AES-256 by key length), as the TPM uses it
/// for credential and duplication wrapping.
pub(crate) fn cfb_encrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>, TpmError> {
    cfb(Mode::Encrypt, key, data)
}

/// The inverse of [`cfb_encrypt`] (for the software device in tests).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn cfb_decrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>, TpmError> {
    cfb(Mode::Decrypt, key, data)
}

/// RSA-OAEP (SHA-256, MGF1-SHA-256) with `label`, which includes its terminating NUL
/// (`IDENTITY\0`, `DUPLICATE\0`).
pub(crate) fn oaep_encrypt<T: HasPublic>(key: &PKeyRef<T>, label: &[u8], data: &[u8]) -> Result<Vec<u8>, TpmError> {
    let mut e = Encrypter::new(key)?;
    e.set_rsa_padding(Padding::PKCS1_OAEP)?;
    e.set_rsa_oaep_md(MessageDigest::sha256())?;
    e.set_rsa_mgf1_md(MessageDigest::sha256())?;
    e.set_rsa_oaep_label(label)?;
    let mut out = vec![0u8; e.encrypt_len(data)?];
    let n = e.encrypt(data, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// The inverse of [`oaep_encrypt`] (for the software device in tests).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn oaep_decrypt<T: HasPrivate>(key: &PKeyRef<T>, label: &[u8], data: &[u8]) -> Result<Vec<u8>, TpmError> {
    let mut d = Decrypter::new(key)?;
    d.set_rsa_padding(Padding::PKCS1_OAEP)?;
    d.set_rsa_oaep_md(MessageDigest::sha256())?;
    d.set_rsa_mgf1_md(MessageDigest::sha256())?;
    d.set_rsa_oaep_label(label)?;
    let mut out = vec![0u8; d.decrypt_len(data)?];
    let n = d.decrypt(data, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_follows_the_counter_mode_definition() {
        // Computed by hand from the definition: two HMAC blocks for 320 bits, truncated.
        let key = [7u8; 32];
        let out = kdfa(&key, b"STORAGE", b"name", b"", 320).expect("kdfa");
        assert_eq!(out.len(), 40);
        let block = |i: u32| hmac(&key, &[&i.to_be_bytes(), b"STORAGE\0name", &320u32.to_be_bytes()]).expect("hmac");
        let mut expected = block(1);
        expected.extend_from_slice(&block(2));
        assert_eq!(&out[..], &expected[..40]);
        // The bit count is part of every block: a shorter output is not a prefix.
        let short = kdfa(&key, b"STORAGE", b"name", b"", 128).expect("kdfa");
        assert_ne!(&short[..], &out[..16]);
    }

    #[test]
    fn cfb_has_a_zero_iv_and_no_padding() {
        let key = [1u8; 16];
        let ct = cfb_encrypt(&key, b"eighteen bytes!!!!").expect("enc");
        assert_eq!(ct.len(), 18);
        let direct = openssl::symm::encrypt(Cipher::aes_128_cfb128(), &key, Some(&[0; 16]), b"eighteen bytes!!!!")
            .expect("openssl");
        assert_eq!(ct, direct);
        assert_eq!(cfb_decrypt(&key, &ct).expect("dec"), b"eighteen bytes!!!!");
        assert!(cfb_encrypt(&[0; 24], b"x").is_err(), "only AES-128 and AES-256");
    }
}
