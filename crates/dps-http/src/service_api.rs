//! The DPS service API (data plane, docs/protocol.md, "Service API"): enrollments, enrollment groups,
//! registration states. Routes match case-insensitively; ids are percent-decoded.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dps_core::model::{AccessRight, EnrollmentGroup, IndividualEnrollment, Instance, RegistrationRecord};
use dps_core::observe::Api;
use dps_core::service::query::Query;
use dps_core::service::{BulkMode, BulkResult, Role};
use dps_core::store::Page;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::{AppState, Request};

/// Service api-versions the SDKs send (docs/protocol.md, "Service API").
pub const SERVICE_API_VERSIONS: &[&str] = &[
    "2017-08-31-preview",
    "2017-11-15",
    "2018-04-01",
    "2018-09-01-preview",
    "2019-01-15",
    "2019-03-31",
    "2021-10-01",
    "2021-11-01-preview",
    "2025-07-01-preview",
    "2026-04-01",
    "2026-11-01",
];

pub(crate) fn check_api_version(req: &Request, known: &[&str]) -> ApiResult<()> {
    match req.query("api-version") {
        None => Err(ApiError::bad_request("the api-version query parameter is required")),
        Some(v) if known.iter().any(|k| k.eq_ignore_ascii_case(v)) => Ok(()),
        Some(v) if !well_formed_api_version(v) => Err(ApiError::bad_request(format!(
            "api-version {v:?} is not a valid api-version (YYYY-MM-DD or YYYY-MM-DD-preview); supported: {}",
            known.join(", ")
        ))),
        Some(v) => {
            Err(ApiError::bad_request(format!("api-version {v} is not supported; supported: {}", known.join(", "))))
        }
    }
}

/// `YYYY-MM-DD` or `YYYY-MM-DD-<letters and digits>` (no slicing: the text is the client's).
fn well_formed_api_version(v: &str) -> bool {
    let (date, tag) = match v.char_indices().nth(10) {
        None => (v, None),
        Some((i, '-')) => (v.get(..i).unwrap_or(""), v.get(i + 1..)),
        Some(_) => return false,
    };
    let date_ok = date.len() == 10
        && date.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
    date_ok && tag.is_none_or(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn json_body<T: serde::de::DeserializeOwned>(req: &Request, what: &str) -> ApiResult<T> {
    if req.body.is_empty() {
        return Err(ApiError::bad_request(format!("the request needs a JSON {what} body")));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(format!("the body is not a valid {what}: {e}")))
}

fn with_etag(mut r: Response, etag: Option<&str>) -> Response {
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        r.headers_mut().insert("etag", v);
    }
    r
}

fn page_response<T: serde::Serialize>(page: Page<T>, item_type: &'static str, max: usize) -> Response {
    let mut r = Json(page.items).into_response();
    let h = r.headers_mut();
    h.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    if let Ok(v) = HeaderValue::from_str(&max.to_string()) {
        h.insert("x-ms-max-item-count", v);
    }
    if let Some(v) = page.continuation.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert("x-ms-continuation", v);
    }
    r
}

fn paging(req: &Request) -> ApiResult<(Option<String>, usize)> {
    let max = match req.header("x-ms-max-item-count") {
        None => 100,
        Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("x-ms-max-item-count must be a positive whole number, got {v:?}"))
        })?,
    }
    .min(1000);
    Ok((req.header("x-ms-continuation").filter(|c| !c.is_empty()).map(str::to_owned), max))
}

/// The query of a query specification body (`{"query": "..."}`; no body or no `query` means
/// every item). Forms and `WHERE` support: `dps_core::service::query`.
fn parse_query(req: &Request) -> ApiResult<Query> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Query::parse("*")?);
    }
    let v: Value = json_body(req, "query specification")?;
    let q = match v.get("query") {
        None | Some(Value::Null) => "*",
        Some(Value::String(q)) => q.as_str(),
        Some(other) => return Err(ApiError::bad_request(format!("query must be a string, got {other}"))),
    };
    Ok(Query::parse(q)?)
}

/// The service view of a registration: its state plus the TLS facts of the connection that registered.
pub fn registration_view(r: &RegistrationRecord) -> Value {
    let mut v = serde_json::to_value(&r.state).unwrap_or(Value::Null);
    if let (Some(obj), Some(tls)) = (v.as_object_mut(), &r.tls) {
        obj.insert("tls".into(), tls.to_value());
    }
    if let (Some(obj), Some(g)) = (v.as_object_mut(), &r.enrollment_group_id) {
        obj.insert("enrollmentGroupId".into(), Value::String(g.clone()));
    }
    if let (Some(obj), Some(a)) = (v.as_object_mut(), &r.twin_action) {
        obj.insert("twinAction".into(), Value::String(a.clone()));
    }
    if let (Some(obj), Some(t)) = (v.as_object_mut(), &r.initial_twin) {
        obj.insert("initialTwin".into(), t.clone());
    }
    v
}

fn bulk_response(r: BulkResult, id_field: &str) -> Response {
    let errors: Vec<Value> = r
        .errors
        .iter()
        .map(|e| serde_json::json!({ id_field: e.id, "errorCode": e.error_code, "errorStatus": e.error_status }))
        .collect();
    Json(serde_json::json!({ "isSuccessful": r.is_successful, "errors": errors })).into_response()
}

/// The header that marks a service-API answer read from a database that is not primary
/// (docs/failover.md, "The shape"): a standby's copy, at most the replication lag behind.
pub const STALE_HEADER: &str = "x-opendps-stale";

/// Routes `/enrollments…`, `/enrollmentGroups…`, `/registrations…`; `None` if the path is not
/// a service API path. On a node whose database is not primary, writes are refused (503 with
/// Retry-After) before they reach the store, and reads are served marked [`STALE_HEADER`].
pub async fn handle(state: &AppState, req: &Request) -> Option<ApiResult<Response>> {
    let seg: Vec<String> = req.segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let first = seg.first()?.as_str();
    if !matches!(first, "enrollments" | "enrollmentgroups" | "registrations") {
        return None;
    }
    let primary = state.services.role() == Role::Primary;
    if !primary && !is_read(&req.method, &seg) {
        if let Err(e) = state.services.serving() {
            return Some(Err(e.into()));
        }
    }
    let mut answer = route(state, req, &seg).await;
    if let (false, Ok(r)) = (primary, &mut answer) {
        r.headers_mut().insert(STALE_HEADER, HeaderValue::from_static("true"));
    }
    Some(answer)
}

/// Whether a service-API operation only reads: GETs, queries and `attestationmechanism`.
fn is_read(method: &Method, seg: &[String]) -> bool {
    *method == Method::GET
        || (*method == Method::POST
            && seg.len() > 1
            && seg.last().is_some_and(|s| s == "query" || s == "attestationmechanism"))
}

/// The instance a service API call addresses, once its SAS token holds `right` and the
/// instance's network rules admit the caller's address.
async fn caller(state: &AppState, req: &Request, host: &str, right: AccessRight) -> ApiResult<Instance> {
    let inst = state.services.service_caller(req.header("authorization"), host, right).await?;
    if let Some(conn) = &req.conn {
        state.services.check_network_access(&inst, conn.facts.peer.ip(), Api::Service)?;
    }
    Ok(inst)
}

async fn route(state: &AppState, req: &Request, seg: &[String]) -> ApiResult<Response> {
    check_api_version(req, SERVICE_API_VERSIONS)?;
    let s = &state.services;
    let m = &req.method;
    let id = req.segments.get(1).map(String::as_str);
    let if_match = req.header("if-match");
    let host = crate::request_host(&req.headers);
    let right = |r| caller(state, req, &host, r);
    match (seg[0].as_str(), seg.len(), m) {
        // Individual enrollments.
        ("enrollments", 1, &Method::POST) => {
            let inst = right(AccessRight::EnrollmentWrite).await?;
            let v: Value = json_body(req, "bulk enrollment operation")?;
            let (mode, items) = bulk_items::<IndividualEnrollment>(&v, "enrollments")?;
            Ok(bulk_response(s.bulk_enrollments(&inst, mode, items).await?, "registrationId"))
        }
        ("enrollments", 2, &Method::POST) if seg[1] == "query" => {
            let inst = right(AccessRight::EnrollmentRead).await?;
            let query = parse_query(req)?;
            let (cont, max) = paging(req)?;
            let page = s.query_enrollments(&inst, &query, cont.as_deref(), max).await?;
            let page = Page {
                items: page.items.iter().map(IndividualEnrollment::redacted).collect(),
                continuation: page.continuation,
            };
            Ok(page_response(page, "enrollment", max))
        }
        ("enrollments", 2, &Method::GET) => {
            let inst = right(AccessRight::EnrollmentRead).await?;
            let e = s.enrollment(&inst, id.unwrap_or("")).await?;
            Ok(with_etag(Json(e.redacted()).into_response(), e.etag.as_deref()))
        }
        ("enrollments", 2, &Method::PUT) => {
            let inst = right(AccessRight::EnrollmentWrite).await?;
            let body: IndividualEnrollment = json_body(req, "individual enrollment")?;
            let e = s.put_enrollment(&inst, id.unwrap_or(""), body, if_match).await?;
            // As DPS: the PUT response carries the symmetric keys it stored (generated or given).
            Ok(with_etag(Json(e.written()).into_response(), e.etag.as_deref()))
        }
        ("enrollments", 2, &Method::DELETE) => {
            let inst = right(AccessRight::EnrollmentWrite).await?;
            s.delete_enrollment(&inst, id.unwrap_or(""), if_match).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("enrollments", 3, &Method::POST) if seg[2] == "attestationmechanism" => {
            let (inst, keys) = key_reader(state, req, &host).await?;
            let a = s.enrollment(&inst, id.unwrap_or("")).await?.attestation;
            Ok(Json(if keys { a } else { a.redacted() }).into_response())
        }
        // Enrollment groups.
        ("enrollmentgroups", 1, &Method::POST) => {
            let inst = right(AccessRight::EnrollmentWrite).await?;
            let v: Value = json_body(req, "bulk enrollment group operation")?;
            let (mode, items) = bulk_items::<EnrollmentGroup>(&v, "enrollmentGroups")?;
            Ok(bulk_response(s.bulk_groups(&inst, mode, items).await?, "enrollmentGroupId"))
        }
        ("enrollmentgroups", 2, &Method::POST) if seg[1] == "query" => {
            let inst = right(AccessRight::EnrollmentRead).await?;
            let query = parse_query(req)?;
            let (cont, max) = paging(req)?;
            let page = s.query_groups(&inst, &query, cont.as_deref(), max).await?;
            let page = Page {
                items: page.items.iter().map(EnrollmentGroup::redacted).collect(),
                continuation: page.continuation,
            };
            Ok(page_response(page, "enrollmentGroup", max))
        }
        ("enrollmentgroups", 2, &Method::GET) => {
            let inst = right(AccessRight::EnrollmentRead).await?;
            let g = s.group(&inst, id.unwrap_or("")).await?;
            Ok(with_etag(Json(g.redacted()).into_response(), g.etag.as_deref()))
        }
        ("enrollmentgroups", 2, &Method::PUT) => {
            let inst = right(AccessRight::EnrollmentWrite).await?;
            let body: EnrollmentGroup = json_body(req, "enrollment group")?;
            let g = s.put_group(&inst, id.unwrap_or(""), body, if_match).await?;
            Ok(with_etag(Json(g.written()).into_response(), g.etag.as_deref()))
        }
        ("enrollmentgroups", 2, &Method::DELETE) => {
            let inst = right(AccessRight::EnrollmentWrite).await?;
            s.delete_group(&inst, id.unwrap_or(""), if_match).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("enrollmentgroups", 3, &Method::POST) if seg[2] == "attestationmechanism" => {
            let (inst, keys) = key_reader(state, req, &host).await?;
            let a = s.group(&inst, id.unwrap_or("")).await?.attestation;
            Ok(Json(if keys { a } else { a.redacted() }).into_response())
        }
        // Registration states.
        ("registrations", 2, &Method::POST) if seg[1] == "query" => {
            let inst = right(AccessRight::RegistrationStatusRead).await?;
            registrations_page(state, req, &inst, None).await
        }
        ("registrations", 2, &Method::GET) => {
            let inst = right(AccessRight::RegistrationStatusRead).await?;
            let r = s.registration(&inst, id.unwrap_or("")).await?;
            Ok(with_etag(Json(registration_view(&r)).into_response(), r.state.etag.as_deref()))
        }
        ("registrations", 2, &Method::DELETE) => {
            let inst = right(AccessRight::RegistrationStatusWrite).await?;
            s.delete_registration(&inst, id.unwrap_or(""), if_match).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("registrations", 3, &Method::POST) if seg[2] == "query" => {
            let inst = right(AccessRight::RegistrationStatusRead).await?;
            let group = s.group(&inst, id.unwrap_or("")).await?;
            registrations_page(state, req, &inst, Some(&group.enrollment_group_id)).await
        }
        _ => Err(ApiError::new(
            405,
            format!("{} /{} is not an operation of the service API", req.method, req.segments.join("/")),
        )),
    }
}

/// The caller of `attestationmechanism` (EnrollmentRead), and whether it may see keys: only a
/// policy that may also write enrollments (and so could set the keys) reads them; a read-only
/// policy gets the mechanism without secrets (docs/service-api.md, "Rights").
async fn key_reader(state: &AppState, req: &Request, host: &str) -> ApiResult<(Instance, bool)> {
    let (inst, rights) =
        state.services.service_caller_rights(req.header("authorization"), host, AccessRight::EnrollmentRead).await?;
    Ok((inst, rights.contains(&AccessRight::EnrollmentWrite)))
}

async fn registrations_page(
    state: &AppState,
    req: &Request,
    inst: &Instance,
    group: Option<&str>,
) -> ApiResult<Response> {
    let (cont, max) = paging(req)?;
    let page = state.services.registrations(inst, group, cont.as_deref(), max).await?;
    let page = Page { items: page.items.iter().map(registration_view).collect(), continuation: page.continuation };
    Ok(page_response(page, "deviceRegistration", max))
}

fn bulk_items<T: serde::de::DeserializeOwned>(v: &Value, field: &str) -> ApiResult<(BulkMode, Vec<T>)> {
    let mode = v
        .get("mode")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("the bulk operation needs a mode"))?;
    let mode = BulkMode::parse(mode)?;
    let items = v
        .get(field)
        .or_else(|| v.get("enrollments"))
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("the bulk operation needs {field}")))?;
    let items: Vec<T> = serde_json::from_value(items).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
    Ok((mode, items))
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_version_shape() {
        for ok in ["2021-10-01", "2025-07-01-preview", "2026-11-01"] {
            assert!(super::well_formed_api_version(ok), "{ok}");
        }
        for bad in ["", "2021-10-1", "2021/10/01", "2021-10-01-", "2021-10-01x", "2021-10-0é-preview", "éééééééééééé"]
        {
            assert!(!super::well_formed_api_version(bad), "{bad}");
        }
    }
}
