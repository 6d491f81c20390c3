use dps_core::model::X509CertificateInfo;
use dps_core::ports::{CertificateError, ParsedCertificate, X509Inspector};
use openssl::x509::X509;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The `X509Inspector` port: parsing with `x509-parser`, signatures with OpenSSL.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpensslX509;

/// Reads PEM, base64 DER without armour, or base64 of the PEM text (what the Node and Python
/// service SDKs send when handed a PEM file): all three appear in DPS APIs.
pub fn load(text: &str) -> Result<X509, CertificateError> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return X509::from_pem(t.as_bytes()).map_err(|_| CertificateError::BadPem);
    }
    let compact: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    let der = dps_core::base64::decode(&compact).ok_or(CertificateError::NotEncoded)?;
    if der.trim_ascii_start().starts_with(b"-----BEGIN") {
        return X509::from_pem(der.trim_ascii()).map_err(|_| CertificateError::BadPem);
    }
    X509::from_der(&der).map_err(|_| CertificateError::BadDer)
}

pub(crate) fn info(cert: &X509) -> Result<(X509CertificateInfo, bool), CertificateError> {
    let der = cert.to_der().map_err(|_| CertificateError::BadDer)?;
    let (_, parsed) = X509Certificate::from_der(&der).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    let is_ca = parsed.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    Ok((info_of(&der, &parsed), is_ca))
}

/// The info of a certificate from its DER and its parse. The thumbprints are digests of the DER
/// (what `X509_digest` hashes: the certificate's encoding).
pub(crate) fn info_of(der: &[u8], parsed: &X509Certificate<'_>) -> X509CertificateInfo {
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        dps_core::time::format_utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    };
    X509CertificateInfo {
        subject_name: parsed.subject().to_string(),
        sha1_thumbprint: dps_core::hex::upper(&openssl::sha::sha1(der)),
        sha256_thumbprint: dps_core::hex::upper(&openssl::sha::sha256(der)),
        issuer_name: parsed.issuer().to_string(),
        not_before_utc: time(parsed.validity().not_before),
        not_after_utc: time(parsed.validity().not_after),
        serial_number: dps_core::hex::upper(parsed.raw_serial()),
        version: i64::from(parsed.version().0) + 1,
    }
}

impl X509Inspector for OpensslX509 {
    fn parse(&self, pem_or_base64: &str) -> Result<ParsedCertificate, CertificateError> {
        let cert = load(pem_or_base64)?;
        let (info, is_ca) = info(&cert)?;
        let pem = String::from_utf8(cert.to_pem().map_err(|_| CertificateError::BadDer)?)
            .map_err(|_| CertificateError::BadDer)?;
        Ok(ParsedCertificate { info, is_ca, pem })
    }

    fn is_signed_by(&self, leaf_pem: &str, issuer_pem: &str) -> bool {
        match (load(leaf_pem), load(issuer_pem)) {
            (Ok(leaf), Ok(issuer)) => chain_issued_by(&leaf, &issuer),
            _ => false,
        }
    }
}

/// Whether `cert` carries a valid signature by `issuer`'s key and names it as issuer.
pub fn chain_issued_by(cert: &X509, issuer: &X509) -> bool {
    let names_match = cert.issuer_name().to_der().ok() == issuer.subject_name().to_der().ok();
    names_match && issuer.public_key().and_then(|k| cert.verify(&k)).unwrap_or(false)
}
