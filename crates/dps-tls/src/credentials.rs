use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509StoreContext, X509};

use crate::error::TlsError;

/// What a listener presents: an RSA leaf, its intermediates, the leaf's key.
///
/// `Debug` prints the leaf's subject, fingerprint and expiry, never the key.
#[derive(Clone)]
pub struct ServerCredentials {
    pub leaf: X509,
    /// Intermediates (and optionally the root), in order, leaf excluded.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

impl std::fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("leaf_sha256", &self.fingerprint())
            .field("not_after", &self.not_after_unix())
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Operator-supplied PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFiles {
    /// Leaf first, then intermediates.
    pub chain: PathBuf,
    pub key: PathBuf,
    /// If set, the chain must verify to this root.
    pub root: Option<PathBuf>,
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

pub(crate) fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<X509>, TlsError> {
    let certs = X509::stack_from_pem(pem).map_err(|source| TlsError::Pem {
        path: path.to_owned(),
        what: "certificate",
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

pub(crate) fn key_from_pem(path: &Path, pem: &[u8]) -> Result<PKey<Private>, TlsError> {
    PKey::private_key_from_pem(pem).map_err(|source| TlsError::Pem {
        path: path.to_owned(),
        what: "private key",
        source,
    })
}

/// Seconds since the Unix epoch of an ASN.1 time.
pub(crate) fn unix(t: &Asn1TimeRef) -> i64 {
    Asn1Time::from_unix(0)
        .and_then(|epoch| epoch.diff(t))
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
        .unwrap_or(0)
}

impl CredentialFiles {
    /// Reads the files. Errors name the file that is missing or malformed.
    pub fn load(&self) -> Result<(ServerCredentials, Option<X509>), TlsError> {
        let mut certs = certs_from_pem(&self.chain, &read(&self.chain)?)?;
        let key = key_from_pem(&self.key, &read(&self.key)?)?;
        let root = match &self.root {
            Some(p) => Some(certs_from_pem(p, &read(p)?)?.remove(0)),
            None => None,
        };
        let leaf = certs.remove(0);
        Ok((ServerCredentials { leaf, chain: certs, key }, root))
    }
}

impl ServerCredentials {
    /// SHA-256 of the leaf, hex: how logs tell one certificate from the next.
    pub fn fingerprint(&self) -> String {
        self.leaf.digest(MessageDigest::sha256()).map(|d| dps_core::hex::lower(&d)).unwrap_or_default()
    }

    /// The leaf's notAfter, Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        unix(self.leaf.not_after())
    }

    /// The checks every roll goes through before a swap (docs/tls.md, "Rolling credentials"): the key matches the
    /// leaf, the leaf is RSA of at least 2048 bits (every DPS suite is `*_RSA_*`), every
    /// certificate is inside its validity window at `now`, and the chain verifies to `root`
    /// (or, without one, to its own last certificate).
    pub fn validate(&self, root: Option<&X509>, now: i64) -> Result<(), TlsError> {
        let leaf_key = self.leaf.public_key().map_err(TlsError::openssl("reading the leaf's public key"))?;
        if !leaf_key.public_eq(&self.key) {
            return Err(TlsError::Invalid("the private key does not match the leaf certificate".into()));
        }
        if self.key.id() != Id::RSA {
            return Err(TlsError::Invalid(
                "the leaf key is not RSA; every DPS cipher suite needs an RSA certificate".into(),
            ));
        }
        if self.key.bits() < 2048 {
            return Err(TlsError::Invalid(format!(
                "the RSA key has {} bits; at least 2048 are required",
                self.key.bits()
            )));
        }
        for (i, cert) in std::iter::once(&self.leaf).chain(&self.chain).enumerate() {
            let (nb, na) = (unix(cert.not_before()), unix(cert.not_after()));
            let what = if i == 0 { "the leaf".to_owned() } else { format!("chain certificate {i}") };
            if now < nb {
                return Err(TlsError::Invalid(format!("{what} is not valid yet (notBefore is {} s ahead)", nb - now)));
            }
            if now >= na {
                return Err(TlsError::Invalid(format!("{what} has expired ({} s ago)", now - na)));
            }
        }
        self.verify_chain(root, now)
    }

    fn verify_chain(&self, root: Option<&X509>, now: i64) -> Result<(), TlsError> {
        let os = TlsError::openssl("building the verification store");
        let mut store = X509StoreBuilder::new().map_err(os)?;
        let mut untrusted = Stack::new().map_err(TlsError::openssl("building the chain"))?;
        let anchor = match root {
            Some(r) => r.clone(),
            None => self.chain.last().cloned().unwrap_or_else(|| self.leaf.clone()),
        };
        store.add_cert(anchor).map_err(TlsError::openssl("adding the trust anchor"))?;
        let mut param = X509VerifyParam::new().map_err(TlsError::openssl("verification time"))?;
        param.set_time(now as _);
        if root.is_none() {
            // Without a configured root, the chain's own top certificate is the anchor.
            param.set_flags(X509VerifyFlags::PARTIAL_CHAIN).map_err(TlsError::openssl("verification flags"))?;
        }
        store.set_param(&param).map_err(TlsError::openssl("verification time"))?;
        for c in &self.chain {
            untrusted.push(c.clone()).map_err(TlsError::openssl("building the chain"))?;
        }
        let store = store.build();
        let mut ctx = X509StoreContext::new().map_err(TlsError::openssl("verification context"))?;
        let verdict = ctx
            .init(&store, &self.leaf, &untrusted, |c| {
                let ok = c.verify_cert()?;
                Ok((ok, c.error()))
            })
            .map_err(TlsError::openssl("verifying the chain"))?;
        match verdict {
            (true, _) => Ok(()),
            (false, err) => Err(TlsError::Invalid(format!("the chain does not verify: {}", err.error_string()))),
        }
    }
}
