use serde::{Deserialize, Serialize};

use super::enrollment::X509CertificateInfo;

/// A CA certificate uploaded to an instance, verified by proof of possession
/// (docs/service-api.md, "Certificates"): upload → verification code → a certificate with CN = code, signed by
/// the CA's key → verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificate {
    pub name: String,
    /// PEM.
    pub certificate: String,
    pub info: X509CertificateInfo,
    pub is_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_code: Option<String>,
    pub created: String,
    pub updated: String,
    pub etag: String,
}
