//! X.509 for the bench's devices: one CA (the enrollment group's signing certificate) and a
//! leaf per device with subject CN = registration id. EC P-256 keys, made in-process.

use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509};

use crate::tlsclient::DeviceCert;

/// A certificate authority for device certificates.
#[derive(Debug)]
pub struct Ca {
    pub cert: X509,
    key: PKey<Private>,
}

fn ec_key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn cn_name(cn: &str) -> anyhow::Result<X509Name> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(name.build())
}

fn builder(cn: &str, key: &PKey<Private>) -> anyhow::Result<X509Builder> {
    let name = cn_name(cn)?;
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(120, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    // Valid from a day ago (clock skew) for 30 days.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let (from, to) = (Asn1Time::from_unix(now - 86_400)?, Asn1Time::from_unix(now + 30 * 86_400)?);
    b.set_not_before(&from)?;
    b.set_not_after(&to)?;
    Ok(b)
}

impl Ca {
    pub fn new(cn: &str) -> anyhow::Result<Ca> {
        let key = ec_key()?;
        let mut b = builder(cn, &key)?;
        let issuer = cn_name(cn)?;
        b.set_issuer_name(&issuer)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok(Ca { cert: b.build(), key })
    }

    /// A device leaf for `registration_id`, signed by this CA.
    pub fn issue(&self, registration_id: &str) -> anyhow::Result<Arc<DeviceCert>> {
        let key = ec_key()?;
        let mut b = builder(registration_id, &key)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
        b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        Ok(Arc::new(DeviceCert::new(b.build(), Vec::new(), key)))
    }

    pub fn pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.cert.to_pem()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_verify_against_their_ca() -> anyhow::Result<()> {
        let ca = Ca::new("opendps-bench test CA")?;
        let leaf = ca.issue("device-1")?;
        let ca_key = ca.cert.public_key()?;
        assert!(leaf.certificate().verify(&ca_key)?);
        assert!(dps_attest::chain_issued_by(leaf.certificate(), &ca.cert));
        let cn = leaf
            .certificate()
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .map(|e| e.data().as_slice().to_vec());
        assert_eq!(cn.as_deref(), Some(&b"device-1"[..]));
        Ok(())
    }
}
