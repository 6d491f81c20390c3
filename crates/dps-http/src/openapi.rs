//! The project's OpenAPI 3 document (`docs/openapi.yaml`): the service, device and management
//! APIs this server answers, served at `GET /openapi.yaml` and printed by `opendps openapi`.

/// The document, as shipped in the repository.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.yaml");

/// `GET /openapi.yaml`.
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "application/yaml; charset=utf-8")], DOCUMENT).into_response()
}
