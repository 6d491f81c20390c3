//! CA certificates with proof of possession (docs/service-api.md, "Certificates").

use super::Services;
use crate::error::{Error, Result};
use crate::model::{CaCertificate, Instance};
use crate::store::{Precondition, StoreError};

fn map(e: StoreError, name: &str) -> Error {
    match e {
        StoreError::NotFound => Error::CertificateNotFound(name.to_owned()),
        StoreError::PreconditionFailed => Error::PreconditionFailed(format!("certificate {name}")),
        StoreError::AlreadyExists => Error::Conflict(format!("certificate {name} already exists")),
        other => Error::Store(other),
    }
}

/// `If-Match` against the current etag (`*` matches; quotes are optional, as in the stores).
fn check_if_match(if_match: Option<&str>, current: &str, name: &str) -> Result<()> {
    match if_match {
        Some(tag) if tag != "*" && !crate::store::etag_matches(current, tag) => {
            Err(Error::PreconditionFailed(format!("certificate {name}")))
        }
        _ => Ok(()),
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("certificate name {name:?} must be letters, digits, - _ .")))
    }
}

impl Services {
    pub async fn certificate(&self, instance: &Instance, name: &str) -> Result<CaCertificate> {
        self.store.certificate(&instance.name, name).await?.ok_or_else(|| Error::CertificateNotFound(name.to_owned()))
    }

    pub async fn certificates(&self, instance: &Instance) -> Result<Vec<CaCertificate>> {
        Ok(self.store.certificates(&instance.name).await?)
    }

    /// Uploads (or replaces) a CA certificate. `verified` = "verify on upload".
    pub async fn put_certificate(
        &self,
        instance: &Instance,
        name: &str,
        pem_or_base64: &str,
        verified: bool,
        if_match: Option<&str>,
    ) -> Result<CaCertificate> {
        validate_name(name)?;
        let parsed = self.x509.parse(pem_or_base64).map_err(|e| Error::Invalid(format!("certificate: {e}")))?;
        if !parsed.is_ca {
            return Err(Error::Invalid(format!(
                "certificate {} is not a CA certificate (basicConstraints CA:TRUE is required)",
                parsed.info.subject_name
            )));
        }
        let old = self.store.certificate(&instance.name, name).await?;
        let now = crate::time::format_rfc1123(self.clock.now());
        let same = old.as_ref().is_some_and(|o| o.info.sha256_thumbprint == parsed.info.sha256_thumbprint);
        let cert = CaCertificate {
            name: name.to_owned(),
            certificate: parsed.pem,
            info: parsed.info,
            is_verified: verified || (same && old.as_ref().is_some_and(|o| o.is_verified)),
            verification_code: None,
            created: old.as_ref().map_or_else(|| now.clone(), |o| o.created.clone()),
            updated: now,
            etag: self.etag(),
        };
        let pre = match if_match {
            Some(e) => Precondition::IfMatch(e),
            None => Precondition::Any,
        };
        self.store.put_certificate(&instance.name, &cert, pre).await.map_err(|e| map(e, name))?;
        Ok(cert)
    }

    /// Issues a verification code; the owner proves possession by signing a certificate with
    /// CN = code.
    pub async fn generate_verification_code(
        &self,
        instance: &Instance,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<CaCertificate> {
        let mut cert = self.certificate(instance, name).await?;
        let old_etag = cert.etag.clone();
        check_if_match(if_match, &old_etag, name)?;
        cert.verification_code = Some(crate::ports::random_hex(self.entropy.as_ref(), 24).to_ascii_uppercase());
        cert.updated = crate::time::format_rfc1123(self.clock.now());
        cert.etag = self.etag();
        self.store
            .put_certificate(&instance.name, &cert, Precondition::IfMatch(&old_etag))
            .await
            .map_err(|e| map(e, name))?;
        Ok(cert)
    }

    /// Completes proof of possession with a certificate whose CN is the verification code and
    /// which the CA signed.
    pub async fn verify_certificate(
        &self,
        instance: &Instance,
        name: &str,
        proof: &str,
        if_match: Option<&str>,
    ) -> Result<CaCertificate> {
        let mut cert = self.certificate(instance, name).await?;
        let old_etag = cert.etag.clone();
        check_if_match(if_match, &old_etag, name)?;
        let code = cert.verification_code.clone().ok_or_else(|| {
            Error::Invalid(format!("certificate {name} has no verification code: generate one first"))
        })?;
        let parsed = self.x509.parse(proof).map_err(|e| Error::Invalid(format!("verification certificate: {e}")))?;
        let cn = parsed.info.subject_name.split(',').find_map(|p| p.trim().strip_prefix("CN=")).unwrap_or("");
        if !cn.eq_ignore_ascii_case(&code) {
            return Err(Error::Invalid(format!(
                "the verification certificate's subject CN is {cn:?}, not the verification code {code}"
            )));
        }
        if !self.x509.is_signed_by(&parsed.pem, &cert.certificate) {
            return Err(Error::Invalid(format!("the verification certificate is not signed by CA certificate {name}")));
        }
        cert.is_verified = true;
        cert.verification_code = None;
        cert.updated = crate::time::format_rfc1123(self.clock.now());
        cert.etag = self.etag();
        self.store
            .put_certificate(&instance.name, &cert, Precondition::IfMatch(&old_etag))
            .await
            .map_err(|e| map(e, name))?;
        Ok(cert)
    }

    pub async fn delete_certificate(&self, instance: &Instance, name: &str, if_match: Option<&str>) -> Result<()> {
        let pre = match if_match {
            Some(e) => Precondition::IfMatch(e),
            None => Precondition::Any,
        };
        self.store.delete_certificate(&instance.name, name, pre).await.map_err(|e| map(e, name))
    }
}
