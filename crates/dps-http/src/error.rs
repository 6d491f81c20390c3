//! One mapping from outcomes to HTTP: status, DPS error body, one log line.

use axum::response::Response;
use dps_core::error::Error;

use crate::AppState;

/// An error on its way to the client: a domain outcome, or a refusal the adapter decided
/// itself (an unknown route, an unreadable body).
#[derive(Debug)]
pub enum ApiError {
    Domain(Error),
    Adapter { status: u16, code: u32, message: String },
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError::Adapter { status, code: u32::from(status) * 1000, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Adapter { status: 401, code: 401_002, message: message.into() }
    }

    /// The wire form; a 5xx domain error is logged (once, with its chain) by `wire_error`.
    pub fn wire(self, state: &AppState) -> dps_core::error::WireError {
        match self {
            ApiError::Domain(e) => state.services.wire_error(&e),
            ApiError::Adapter { status, code, message } => {
                if status >= 500 {
                    tracing::error!(status, error = %dps_core::device::excerpt(&message, 300), "request failed");
                }
                state.services.wire(status, code, message)
            }
        }
    }

    /// Builds the DPS error response and logs a refusal once, briefly.
    pub fn into_response(self, state: &AppState, method: &str, path: &str) -> Response {
        let wire = self.wire(state);
        log_refusal(&wire, method, path);
        crate::error_response(&wire)
    }
}

/// The one log line of a refused request (failures were logged where they were mapped).
pub(crate) fn log_refusal(wire: &dps_core::error::WireError, method: &str, path: &str) {
    if wire.status < 500 {
        let path = dps_core::device::excerpt(path, 200);
        let error = dps_core::device::excerpt(&wire.message, 300);
        tracing::info!(%method, %path, status = wire.status, code = wire.error_code, %error, "request refused");
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Domain(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
