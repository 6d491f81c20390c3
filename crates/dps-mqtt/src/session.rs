//! The MQTT side of DPS as pure functions: packet framing over the connection's buffer, the
//! CONNECT checks, the username and topic grammar, response topics. Fuzzed (`mqtt_connect`,
//! docs/fuzzing.md).

use bytes::BytesMut;
use dps_core::device::excerpt;
use mqttbytes::v4::{self, ConnectReturnCode, Packet};

/// The largest MQTT packet accepted: the 96 KB DPS message limit plus headers and topic.
pub const MAX_PACKET: usize = 96 * 1024 + 1024;

/// The longest `$rid` answered. The SDKs send a counter or a UUID; the response topic carries the
/// rid back, and an MQTT topic is at most 65,535 bytes (`mqttbytes` would write a longer one with
/// a wrapped length, a malformed packet).
pub const MAX_RID: usize = 256;

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

/// What the front of a connection's buffer holds.
#[derive(Debug)]
pub enum Decoded {
    /// A whole packet (its bytes are gone from the buffer).
    Packet(Packet),
    /// Not all of the next packet is there yet.
    Incomplete,
    /// Not MQTT 3.1.1 framing, or over [`MAX_PACKET`]: close the connection.
    Bad(String),
    /// A CONNECT of another protocol level: refused with CONNACK "unacceptable protocol version".
    BadLevel(u8),
}

/// Takes the next packet off the front of `buf` with the `mqttbytes` codec, within [`MAX_PACKET`].
pub fn decode(buf: &mut BytesMut) -> Decoded {
    match v4::read(buf, MAX_PACKET) {
        Ok(p) => Decoded::Packet(p),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Decoded::Incomplete,
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => Decoded::Bad(format!(
            "packet of {n} bytes exceeds the {MAX_PACKET}-byte limit (DPS messages are at most 96 KB)"
        )),
        Err(mqttbytes::Error::InvalidProtocolLevel(l)) => Decoded::BadLevel(l),
        Err(e) => Decoded::Bad(format!("malformed MQTT packet: {e:?}")),
    }
}

/// The CONNECT checks that refuse the connection itself (username, client id); the
/// credential is the device API's business.
pub fn check_connect(connect: &v4::Connect) -> Result<Username, (ConnectReturnCode, String)> {
    let login =
        connect.login.as_ref().ok_or((ConnectReturnCode::BadUserNamePassword, "CONNECT has no username".to_owned()))?;
    let user = parse_username(&login.username).map_err(|e| (ConnectReturnCode::BadUserNamePassword, e))?;
    if !user.registration_id.eq_ignore_ascii_case(&connect.client_id) {
        return Err((
            ConnectReturnCode::BadClientId,
            format!(
                "client id {:?} is not the registration id {:?} of the username",
                excerpt(&connect.client_id, 130),
                excerpt(&user.registration_id, 130)
            ),
        ));
    }
    Ok(user)
}

/// Parses the CONNECT username. Errors quote at most 200 characters of it.
pub fn parse_username(u: &str) -> Result<Username, String> {
    let bad =
        || format!("username {:?} is not {{idScope}}/registrations/{{registrationId}}/api-version=…", excerpt(u, 200));
    let mut parts = u.splitn(4, '/');
    let (Some(scope), Some(reg), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !reg.eq_ignore_ascii_case("registrations") || scope.is_empty() || id.is_empty() {
        return Err(bad());
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
/// `rid`, if any, lets the answer reach the device). Messages quote at most 200 characters of
/// the topic.
pub fn parse_topic(topic: &str) -> Result<Request, (Option<String>, String)> {
    let (path, query) = topic.split_once('?').unwrap_or((topic, ""));
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| (*v).to_owned());
    let rid = get("$rid");
    if rid.as_ref().is_some_and(|r| r.len() > MAX_RID) {
        return Err((None, format!("the $rid of topic {:?} is longer than {MAX_RID} bytes", excerpt(topic, 200))));
    }
    // The rid is echoed into the response topic, where MQTT allows no wildcard and no NUL.
    if rid.as_ref().is_some_and(|r| r.contains(['#', '+', '\0'])) {
        return Err((None, format!("the $rid of topic {:?} has '#', '+' or NUL in it", excerpt(topic, 200))));
    }
    let path = path.trim_end_matches('/').to_ascii_lowercase();
    let quoted = || excerpt(topic, 200);
    let rid_or = |rid: Option<String>| rid.ok_or_else(|| (None, format!("topic {:?} has no $rid", quoted())));
    match path.as_str() {
        "$dps/registrations/put/iotdps-register" => Ok(Request::Register { rid: rid_or(rid)? }),
        "$dps/registrations/get/iotdps-get-operationstatus" => {
            let rid = rid_or(rid)?;
            match get("operationId") {
                Some(op) if !op.is_empty() => Ok(Request::Poll { rid, operation_id: op }),
                _ => Err((Some(rid), "the operation status request has no operationId".into())),
            }
        }
        _ => Err((rid, format!("topic {:?} is not a DPS request topic", quoted()))),
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

    /// Found by the `mqtt_connect` fuzz target: a $rid of 65,490 bytes made a response topic
    /// longer than an MQTT string can say, which the codec wrote with a wrapped length.
    #[test]
    fn a_rid_too_long_to_answer_is_refused() {
        let rid = "7".repeat(MAX_RID);
        assert_eq!(
            parse_topic(&format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}")),
            Ok(Request::Register { rid: rid.clone() })
        );
        let long = "7".repeat(65_490);
        let Err((None, why)) = parse_topic(&format!("$dps/registrations/PUT/iotdps-register/?$rid={long}")) else {
            panic!("a 65,490-byte $rid was accepted")
        };
        assert!(why.len() < 1024, "{} bytes", why.len());
        let Err(why) = parse_username(&"é".repeat(40_000)) else { panic!("garbage accepted") };
        assert!(why.len() < 1024, "{} bytes", why.len());
    }

    /// A rid is echoed into the response topic: a wildcard or NUL there would make our PUBLISH
    /// invalid MQTT, so such a request gets no answer on a topic (noticed by the fuzzing work).
    #[test]
    fn a_rid_that_cannot_be_a_topic_is_refused() {
        for rid in ["a#", "+", "x\0y"] {
            let topic = format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}");
            assert!(matches!(parse_topic(&topic), Err((None, _))), "{rid:?} accepted");
        }
    }
}
