use std::path::PathBuf;

/// Errors of the TLS layer. Messages name the file or the check that failed; the OpenSSL
/// error stack is the source, never repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a valid PEM {what}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("server credentials rejected: {0}")]
    Invalid(String),
    #[error("OpenSSL refused the TLS settings: {what}")]
    OpenSsl {
        what: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
}

impl TlsError {
    pub(crate) fn openssl(what: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> TlsError {
        move |source| TlsError::OpenSsl { what, source }
    }
}
