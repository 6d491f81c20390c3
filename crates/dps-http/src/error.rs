//! One mapping from domain outcomes to HTTP: status, DPS error body, one log line.

use axum::http::StatusCode;
use axum::response::Response;
use dps_core::error::{Error, ErrorKind};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: u32::from(status) * 1000,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError { code: 401_002, ..Self::new(401, message) }
    }

    /// Builds the response and logs the failure once (5xx at error, the rest at info).
    pub fn into_response_logged(self, method: &str, path: &str) -> Response {
        if self.status.is_server_error() {
            tracing::error!(%method, %path, status = self.status.as_u16(), code = self.code, error = %self.message, "request failed");
        } else {
            tracing::info!(%method, %path, status = self.status.as_u16(), code = self.code, error = %self.message, "request refused");
        }
        let mut r = crate::error_response(self.status, self.code, self.message);
        r.headers_mut().insert("x-ms-error-code", self_code_header(self.code));
        if let Some(v) = self.retry_after.and_then(|s| axum::http::HeaderValue::from_str(&s.to_string()).ok()) {
            r.headers_mut().insert("retry-after", v);
        }
        r
    }
}

fn self_code_header(code: u32) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&code.to_string()).unwrap_or(axum::http::HeaderValue::from_static("500000"))
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = e.kind().status();
        let message = match e.kind() {
            // Never send internal detail; the chain is logged by the caller.
            ErrorKind::Internal | ErrorKind::Unavailable => {
                let mut chain = e.to_string();
                let mut s = std::error::Error::source(&e);
                while let Some(x) = s {
                    chain.push_str(&format!(": {x}"));
                    s = x.source();
                }
                tracing::error!(error = %chain, "internal failure");
                "the service failed to complete the request; try again".to_owned()
            }
            _ => e.to_string(),
        };
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code(),
            retry_after: e.retry_after(),
            message,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
