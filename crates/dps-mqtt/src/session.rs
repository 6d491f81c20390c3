//! The MQTT side of DPS as pure functions.

/// The largest MQTT packet accepted: the 96 KB DPS message limit plus headers and topic.
pub const MAX_PACKET: usize = 96 * 1024 + 1024;

/// The topic devices subscribe to for responses.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// The parts of a DPS MQTT username:
/// `{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion=…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username {
    pub id_scope: String,
    pub registration_id: String,
    pub api_version: Option<String>,
}

/// Parses the CONNECT username.
pub fn parse_username(u: &str) -> Result<Username, String> {
    let mut parts = u.splitn(4, '/');
    let (Some(scope), Some(reg), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("username {u:?} is not {{idScope}}/registrations/{{registrationId}}/api-version=…"));
    };
    if !reg.eq_ignore_ascii_case("registrations") || scope.is_empty() || id.is_empty() {
        return Err(format!("username {u:?} is not {{idScope}}/registrations/{{registrationId}}/api-version=…"));
    }
    let api_version =
        parts.next().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("api-version=")).map(str::to_owned));
    Ok(Username { id_scope: scope.to_owned(), registration_id: id.to_owned(), api_version })
}

/// What a device publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Register { rid: String },
    Poll { rid: String, operation_id: String },
}

/// Parses a request topic; `Err((rid, message))` when the topic is not a DPS request (the
/// `rid`, if any, lets the answer reach the device).
pub fn parse_topic(topic: &str) -> Result<Request, (Option<String>, String)> {
    let (path, query) = topic.split_once('?').unwrap_or((topic, ""));
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| (*v).to_owned());
    let rid = get("$rid");
    let path = path.trim_end_matches('/').to_ascii_lowercase();
    let rid_or = |rid: Option<String>| rid.ok_or((None, format!("topic {topic:?} has no $rid")));
    match path.as_str() {
        "$dps/registrations/put/iotdps-register" => Ok(Request::Register { rid: rid_or(rid)? }),
        "$dps/registrations/get/iotdps-get-operationstatus" => {
            let rid = rid_or(rid)?;
            match get("operationId") {
                Some(op) if !op.is_empty() => Ok(Request::Poll { rid, operation_id: op }),
                _ => Err((Some(rid), "the operation status request has no operationId".into())),
            }
        }
        _ => Err((rid, format!("topic {topic:?} is not a DPS request topic"))),
    }
}

/// The response topic for `status`.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    match retry_after {
        Some(n) => format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={n}"),
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

/// Whether a SUBSCRIBE filter is one the server answers on.
pub fn accepts_filter(filter: &str) -> bool {
    filter == RESPONSE_FILTER || filter == "$dps/registrations/res/+/#" || filter.starts_with("$dps/registrations/res/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_from_every_sdk() {
        let u = parse_username(
            "0ne00000A0A/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-device%2F2.14.0",
        )
        .expect("parses");
        assert_eq!(u.id_scope, "0ne00000A0A");
        assert_eq!(u.registration_id, "dev-1");
        assert_eq!(u.api_version.as_deref(), Some("2019-03-31"));
        assert!(parse_username("0ne00000A0A/registrations/dev-1").is_ok());
        assert!(parse_username("0ne00000A0A/devices/dev-1/api-version=1").is_err());
        assert!(parse_username("garbage").is_err());
    }

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("$dps/registrations/PUT/iotdps-register/?$rid=7"),
            Ok(Request::Register { rid: "7".into() })
        );
        assert_eq!(
            parse_topic("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId=4.abc.def"),
            Ok(Request::Poll { rid: "8".into(), operation_id: "4.abc.def".into() })
        );
        assert_eq!(
            parse_topic("$dps/registrations/PUT/iotdps-register/"),
            Err((None, "topic \"$dps/registrations/PUT/iotdps-register/\" has no $rid".into()))
        );
        assert!(matches!(parse_topic("$dps/other/?$rid=9"), Err((Some(r), _)) if r == "9"));
        assert_eq!(response_topic(202, "7", Some(3)), "$dps/registrations/res/202/?$rid=7&retry-after=3");
        assert_eq!(response_topic(401, "x", None), "$dps/registrations/res/401/?$rid=x");
    }
}
