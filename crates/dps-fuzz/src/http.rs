//! The device API's HTTPS routing: a request's method, target and headers to a device
//! `Operation`, and what the device session reads from the rest (api-version, the
//! Authorization header's SAS token, the register body, the path's scope and registration id).

use dps_attest::sas::SasToken;
use dps_core::device::{ApiVersion, Operation, RegisterBody};
use dps_core::model::{validate_registration_id, IdScope};
use dps_http::device_api::route;
use dps_http::{is_device_path, request_target, Request};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// Longest error message these may give (they quote at most 200 characters of untrusted text,
/// Debug-escaped: up to 10 bytes a character).
const MAX_MESSAGE: usize = 4096;

/// The input is a request head and body as on the wire: `METHOD target [HTTP/1.1]`, header
/// lines `name: value`, an empty line, the body (line ends `\n` or `\r\n`). What hyper would refuse (a bad method, target or
/// header line) never reaches the router: such a line is dropped, or the input skipped.
pub fn http_device_route(data: &[u8]) {
    let (head, body) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => match data.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (data, &[][..]),
        },
    };
    let mut lines = head.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(first) = lines.next() else { return };
    let mut words = first.split(|b| *b == b' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else { return };
    let Ok(method) = Method::from_bytes(method) else { return };
    let Ok(uri) = Uri::try_from(target) else { return };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }

    let (segments, query) = request_target(uri.path(), uri.query());
    assert!(segments.iter().all(|s| !s.is_empty()), "an empty path segment: {segments:?}");
    assert!(segments.len() <= uri.path().split('/').count());
    for s in &segments {
        segment_round_trips(s);
    }
    let req = Request {
        method: method.clone(),
        segments,
        query,
        headers,
        body: bytes::Bytes::copy_from_slice(body),
        conn: None,
    };
    let seg = &req.segments;
    let Some(routed) = route(&req.method, seg, &req.body) else {
        assert!(!is_device_path(seg), "a device path was not routed: {seg:?}");
        return;
    };
    assert!(is_device_path(seg));
    let op = match routed {
        Ok(op) => op,
        Err(message) => {
            assert!(message.len() < MAX_MESSAGE, "a 405 message grows with the path ({} bytes)", message.len());
            return;
        }
    };
    match op {
        Operation::Register { body: b } => {
            assert!(method == Method::PUT && seg.len() == 4 && seg[3].eq_ignore_ascii_case("register"), "{seg:?}");
            assert_eq!(b, body, "the register body is not the request's");
        }
        Operation::OperationStatus { operation_id } => {
            assert!(method == Method::GET && seg.len() == 5 && seg[3].eq_ignore_ascii_case("operations"), "{seg:?}");
            assert_eq!(operation_id, seg[4]);
        }
        Operation::StatusLookup => assert!(method == Method::POST && seg.len() == 3, "{seg:?}"),
    }

    // What the device session reads, in its order.
    if let Some(v) = req.query("api-version") {
        match ApiVersion::parse(v) {
            Ok(parsed) => {
                assert_eq!(parsed.as_str(), v);
                assert!(v.is_ascii() && v.len() >= 10 && v.as_bytes()[4] == b'-' && v.as_bytes()[7] == b'-', "{v:?}");
            }
            Err(e) => bounded("api-version", &e.to_string()),
        }
    }
    if let Operation::Register { body } = op {
        match RegisterBody::parse(body) {
            Ok(parsed) => {
                if let Err(e) = parsed.check_registration_id(&seg[2]) {
                    bounded("registrationId", &e.to_string());
                }
            }
            Err(e) => bounded("register body", &e.to_string()),
        }
    }
    if let Some(auth) = req.header("authorization") {
        if let Err(e) = SasToken::parse(auth) {
            bounded("Authorization", &e.to_string());
        }
    }
    if let Err(e) = IdScope::parse(&seg[0]) {
        bounded("ID scope", &e);
    }
    if let Err(e) = validate_registration_id(&seg[2]) {
        bounded("registration id", &e);
    }
}

fn bounded(what: &str, message: &str) {
    assert!(message.len() < MAX_MESSAGE, "a {what} error grows with the input ({} bytes)", message.len());
}

/// A segment, percent-encoded as a client would, is read back as itself.
fn segment_round_trips(s: &str) {
    let path = format!("/{}", utf8_percent_encode(s, NON_ALPHANUMERIC));
    let (again, _) = request_target(&path, None);
    assert_eq!(again, [s], "segment {s:?} does not round-trip");
}
