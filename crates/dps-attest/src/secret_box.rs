//! Secrets at rest under the operator's node key (the `SecretSealer` port): AES-256-GCM (OpenSSL), a fresh 96-bit nonce
//! per seal, and a context string bound in as associated data, so a sealed value cannot be
//! moved to another slot (the intermediate's key presented as the root's). Sealed text:
//! `v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`; the key id (8 hex digits of a hash of the
//! derived key) tells "another node key" apart from "damaged".
//!
//! The node key is operator material (a file or an environment variable): at least 32
//! characters, e.g. `openssl rand -base64 32`. The AES key is SHA-256 of a label and the
//! material, so any printable form works.

use openssl::hash::{hash, MessageDigest};
use openssl::rand::rand_bytes;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use zeroize::Zeroizing;

const NONCE: usize = 12;
const TAG: usize = 16;

/// Why sealing or opening failed (the port's error).
pub use dps_core::ports::SealError as SecretBoxError;

/// A symmetric box for secrets at rest. Its `Debug` shows only the key id.
pub struct SecretBox {
    key: Zeroizing<Vec<u8>>,
    id: String,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox").field("key_id", &self.id).finish_non_exhaustive()
    }
}

impl SecretBox {
    /// A box from the operator's key material (surrounding white space ignored).
    pub fn from_material(material: &[u8]) -> Result<SecretBox, SecretBoxError> {
        let m = material.trim_ascii();
        if m.len() < 32 {
            return Err(SecretBoxError::ShortKey(m.len()));
        }
        let mut input = Zeroizing::new(b"opendps node key v1\0".to_vec());
        input.extend_from_slice(m);
        let key = Zeroizing::new(
            hash(MessageDigest::sha256(), &input).map_err(|_| SecretBoxError::Crypto("deriving the key"))?.to_vec(),
        );
        let idh = hash(MessageDigest::sha256(), &[b"opendps key id\0".as_slice(), &key].concat())
            .map_err(|_| SecretBoxError::Crypto("deriving the key id"))?;
        let id = dps_core::hex::lower(&idh[..4]);
        Ok(SecretBox { key, id })
    }

    /// The key id written into every sealed value.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Seals `plain` for the slot `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, SecretBoxError> {
        let mut nonce = [0u8; NONCE];
        rand_bytes(&mut nonce).map_err(|_| SecretBoxError::Crypto("drawing a nonce"))?;
        let mut tag = [0u8; TAG];
        let ct = encrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(&nonce), context.as_bytes(), plain, &mut tag)
            .map_err(|_| SecretBoxError::Crypto("sealing"))?;
        let blob = [nonce.as_slice(), &ct, &tag].concat();
        Ok(format!("v1:{}:{}", self.id, dps_core::base64::encode(&blob)))
    }

    /// Opens what [`SecretBox::seal`] made for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SecretBoxError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretBoxError::Damaged);
        };
        if id != self.id {
            return Err(SecretBoxError::OtherKey { found: id.chars().take(8).collect(), ours: self.id.clone() });
        }
        let blob = dps_core::base64::decode(b64).ok_or(SecretBoxError::Damaged)?;
        if blob.len() < NONCE + TAG {
            return Err(SecretBoxError::Damaged);
        }
        let (nonce, rest) = blob.split_at(NONCE);
        let (ct, tag) = rest.split_at(rest.len() - TAG);
        decrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(nonce), context.as_bytes(), ct, tag)
            .map(Zeroizing::new)
            .map_err(|_| SecretBoxError::Damaged)
    }
}

impl dps_core::ports::SecretSealer for SecretBox {
    fn seal(&self, slot: &str, plain: &[u8]) -> Result<String, SecretBoxError> {
        SecretBox::seal(self, slot, plain)
    }
    fn open(&self, slot: &str, sealed: &str) -> Result<Vec<u8>, SecretBoxError> {
        SecretBox::open(self, slot, sealed).map(|z| z.to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn seals_and_opens_only_in_its_slot_and_with_its_key() {
        let b = SecretBox::from_material(KEY).unwrap();
        let s = b.seal("ca/root", b"secret").unwrap();
        assert!(!s.contains("secret"));
        assert_ne!(s, b.seal("ca/root", b"secret").unwrap(), "a fresh nonce each time");
        assert_eq!(&b.open("ca/root", &s).unwrap()[..], b"secret");
        assert!(matches!(b.open("ca/intermediate", &s), Err(SecretBoxError::Damaged)));
        let other = SecretBox::from_material(b"another key, also 32 characters long").unwrap();
        assert!(matches!(other.open("ca/root", &s), Err(SecretBoxError::OtherKey { .. })));
        let mut bad = s.clone();
        bad.pop();
        bad.push(if s.ends_with('A') { 'B' } else { 'A' });
        assert!(b.open("ca/root", &bad).is_err());
        assert!(matches!(SecretBox::from_material(b"  short \n"), Err(SecretBoxError::ShortKey(5))));
        assert!(!format!("{b:?}").contains("0123"));
    }
}
