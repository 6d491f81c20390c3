//! Domain outcomes. Adapters map [`Error::kind`] to their wire format once, at the edge.

use crate::store::StoreError;

/// The closed set of outcome classes adapters map to status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    Throttled,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind maps to.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::Throttled => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// What can go wrong in a domain operation. Messages are written for the caller; internal
/// detail stays in `#[source]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("individual enrollment {0:?} not found")]
    EnrollmentNotFound(String),
    #[error("enrollment group {0:?} not found")]
    GroupNotFound(String),
    #[error("registration {0:?} not found")]
    RegistrationNotFound(String),
    #[error("DPS instance {0:?} not found")]
    InstanceNotFound(String),
    #[error("CA certificate {0:?} not found")]
    CertificateNotFound(String),
    #[error("IoT hub {0:?} not found")]
    HubNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the etag in If-Match does not match the current etag of {0}")]
    PreconditionFailed(String),
    #[error("{property} is read-only once the instance exists (it is {current}); {attempt}")]
    Immutable { property: &'static str, current: String, attempt: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("too many registrations for this DPS instance; retry after {} s", .retry_after.as_secs())]
    Throttled { retry_after: std::time::Duration },
    #[error("the store failed")]
    Store(#[source] StoreError),
    #[error("this node's database is {role}: it serves no devices now; retry after {} s", .retry_after.as_secs())]
    NotServing { role: &'static str, retry_after: std::time::Duration },
    /// A server-side failure outside the store (a port's crypto); logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::Immutable { .. } => ErrorKind::BadRequest,
            Error::TooLarge(_) => ErrorKind::PayloadTooLarge,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::EnrollmentNotFound(_)
            | Error::GroupNotFound(_)
            | Error::RegistrationNotFound(_)
            | Error::InstanceNotFound(_)
            | Error::CertificateNotFound(_)
            | Error::HubNotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::PreconditionFailed(_) => ErrorKind::PreconditionFailed,
            Error::Throttled { .. } => ErrorKind::Throttled,
            Error::Store(StoreError::Unavailable(_)) | Error::NotServing { .. } => ErrorKind::Unavailable,
            Error::Store(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The six-digit DPS error code (`status * 1000 + n`, docs/protocol.md, "Error bodies and codes").
    pub fn code(&self) -> u32 {
        match self {
            Error::EnrollmentNotFound(_) => 404_201,
            Error::RegistrationNotFound(_) => 404_202,
            Error::GroupNotFound(_) => 404_204,
            Error::Unauthorized(_) => 401_002,
            Error::Throttled { .. } => 429_001,
            other => u32::from(other.kind().status()) * 1000,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Seconds the client should wait before retrying, where the error says so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Throttled { retry_after } | Error::NotServing { retry_after, .. } => {
                Some(retry_after.as_secs().max(1))
            }
            _ => None,
        }
    }
}

/// An error as every DPS wire format carries it (docs/protocol.md, "Error bodies and codes"): the HTTP-style
/// status, the six-digit code (`status * 1000 + n`), a message for the caller, a tracking id and
/// a timestamp. Built once, by [`crate::service::Services::wire_error`], for every transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub status: u16,
    pub error_code: u32,
    pub message: String,
    pub tracking_id: String,
    pub timestamp_utc: String,
    /// Seconds before retrying (throttling, unavailability).
    pub retry_after: Option<u32>,
}

impl WireError {
    /// The DPS error body: `{errorCode, trackingId, message, timestampUtc}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "errorCode": self.error_code,
            "trackingId": self.tracking_id,
            "message": self.message,
            "timestampUtc": self.timestamp_utc,
        })
    }
}

/// Displays an error with its sources, `a: b: c`: the one log line of a failure. A source whose
/// text the previous one already shows is left out (some libraries, `tokio-postgres` among them,
/// repeat their source's text in their own).
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::DisplayChain;

    #[derive(Debug, thiserror::Error)]
    #[error("db error: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("ERROR: relation \"x\" does not exist")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("store unavailable")]
    struct Outer(#[source] Repeats);

    #[test]
    fn a_source_repeated_by_its_parent_is_shown_once() {
        let e = Outer(Repeats(Inner));
        assert_eq!(DisplayChain(&e).to_string(), "store unavailable: db error: ERROR: relation \"x\" does not exist");
    }
}
