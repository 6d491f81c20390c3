//! DPS requests and answers as AMQP messages (docs/amqp.md, "Messages"). Pure; fuzzed.
//!
//! Requests: application property `iotdps-operation-type` = `iotdps-register` (body: the
//! register JSON, normally one data section) or `iotdps-get-operationstatus` with
//! `iotdps-operation-id` (body ignored: Node sends amqp-value `""`, C# a string, C a data
//! section). Answers: one data section of JSON, the request's `correlation-id` echoed with its
//! AMQP type (Node matches on it), `retry-after` and `Retry-After` as strings (Node and C read
//! the first, C# the second). Errors: a rejected disposition whose description is the DPS
//! error JSON; never `released` or `modified` (Node takes those for success and waits).

use bytes::Bytes;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Fields, LinkError};
use fe2o3_amqp::types::messaging::{
    message::DecodeIntoMessage, ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};

use dps_core::device::{DeviceReply, MAX_MESSAGE};
use dps_core::error::{Error, WireError};

pub const OPERATION_TYPE: &str = "iotdps-operation-type";
pub const OPERATION_ID: &str = "iotdps-operation-id";
pub const REGISTER: &str = "iotdps-register";
pub const GET_OPERATION_STATUS: &str = "iotdps-get-operationstatus";
/// DPS's maximum message size (96 KB, the core's limit), applied while the body is gathered.
pub const MAX_BODY: usize = MAX_MESSAGE;
/// Longest operation id accepted (the server issues UUID-based ids).
pub const MAX_OPERATION_ID: usize = 256;
/// Condition for throttling; Node and C# retry it after `info.retry-after`.
pub const THROTTLED: &str = "com.microsoft:device-container-throttled";

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Register { body: Bytes },
    OperationStatus { operation_id: String },
}

/// One request message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Echoed, with its type, on the response.
    pub correlation_id: Option<MessageId>,
    pub operation: Operation,
}

/// Why a message is not a DPS request. Answered with a rejected disposition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the message has no {OPERATION_TYPE} application property")]
    MissingOperationType,
    #[error("{OPERATION_TYPE} {0:?} is not supported (iotdps-register, iotdps-get-operationstatus)")]
    UnknownOperationType(String),
    #[error(
        "iotdps-get-operationstatus needs an {OPERATION_ID} application property (a string of 1 to 256 characters)"
    )]
    MissingOperationId,
    #[error("the request body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    #[error("the register body must be a data section or a string, not {0}")]
    BodyType(&'static str),
    #[error("the message does not decode: {0}")]
    Decode(String),
}

impl RequestError {
    /// The domain error this is reported as (`Services::wire_error` makes the DPS body).
    pub fn error(&self) -> Error {
        match self {
            RequestError::TooLarge(_) => Error::TooLarge(self.to_string()),
            _ => Error::Invalid(self.to_string()),
        }
    }
}

fn property<'a>(msg: &'a Message<Body<Value>>, key: &str) -> Option<&'a SimpleValue> {
    msg.application_properties.as_ref().and_then(|p| p.0.get(key))
}

/// Reads a request from a received message.
pub fn parse_request(msg: &Message<Body<Value>>) -> Result<Request, RequestError> {
    let correlation_id = msg.properties.as_ref().and_then(|p| p.correlation_id.clone());
    let operation = match property(msg, OPERATION_TYPE) {
        Some(SimpleValue::String(t)) if t == REGISTER => Operation::Register { body: register_body(&msg.body)? },
        Some(SimpleValue::String(t)) if t == GET_OPERATION_STATUS => match property(msg, OPERATION_ID) {
            Some(SimpleValue::String(id)) if !id.is_empty() && id.len() <= MAX_OPERATION_ID => {
                Operation::OperationStatus { operation_id: id.clone() }
            }
            _ => return Err(RequestError::MissingOperationId),
        },
        Some(SimpleValue::String(t)) => {
            return Err(RequestError::UnknownOperationType(t.chars().take(64).collect()));
        }
        Some(SimpleValue::Symbol(t)) => {
            return Err(RequestError::UnknownOperationType(t.as_str().chars().take(64).collect()))
        }
        _ => return Err(RequestError::MissingOperationType),
    };
    Ok(Request { correlation_id, operation })
}

fn register_body(body: &Body<Value>) -> Result<Bytes, RequestError> {
    let bytes = match body {
        Body::Data(sections) => {
            let total: usize = sections.iter().map(|d| d.0.len()).sum();
            if total > MAX_BODY {
                return Err(RequestError::TooLarge(total));
            }
            let mut all = Vec::with_capacity(total);
            for d in sections.iter() {
                all.extend_from_slice(&d.0);
            }
            all
        }
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Binary(b) => b.to_vec(),
            Value::Null => Vec::new(),
            _ => return Err(RequestError::BodyType("an amqp-value of another type")),
        },
        Body::Empty => Vec::new(),
        Body::Sequence(_) => return Err(RequestError::BodyType("an amqp-sequence")),
    };
    if bytes.len() > MAX_BODY {
        return Err(RequestError::TooLarge(bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

/// Decodes a message payload (the bytes of one delivery) and reads the request from it.
pub fn decode_request(payload: &[u8]) -> Result<Request, RequestError> {
    crate::encoding::check_values(payload).map_err(|e| RequestError::Decode(e.to_string()))?;
    let reader = serde_amqp::read::SliceReader::new(payload);
    let msg = Body::<Value>::decode_message_from_reader(reader).map_err(|e| RequestError::Decode(e.to_string()))?;
    parse_request(&msg)
}

/// How a request is answered.
#[derive(Debug)]
pub enum Answer {
    /// Accept the request delivery, then send this message on the sender link.
    Respond(Box<Message<Data>>),
    /// Reject the request delivery with this error.
    Reject(definitions::Error),
}

/// The answer to a request, from the device API's reply: an error is a rejection, anything
/// else a response with the reply's JSON body and retry-after.
pub fn answer(reply: &DeviceReply, correlation_id: Option<MessageId>) -> Answer {
    match reply {
        DeviceReply::Error(e) => Answer::Reject(rejection(e)),
        other => Answer::Respond(Box::new(response(correlation_id, &other.body(), other.retry_after()))),
    }
}

/// A response message: one data section of JSON, the correlation id, retry-after.
pub fn response(
    correlation_id: Option<MessageId>,
    body: &serde_json::Value,
    retry_after: Option<u32>,
) -> Message<Data> {
    let properties = Properties { correlation_id, ..Properties::default() };
    let mut app = ApplicationProperties::builder();
    if let Some(secs) = retry_after {
        app = app.insert("retry-after", secs.to_string()).insert("Retry-After", secs.to_string());
    }
    let json = serde_json::to_vec(body).unwrap_or_default();
    Message::builder().properties(properties).application_properties(app.build()).data(Binary::from(json)).build()
}

/// The AMQP error a DPS error is reported as: the condition the clients understand, the JSON
/// body in `description` (C# parses it), `retry-after` in `info` for retryable errors.
pub fn rejection(e: &WireError) -> definitions::Error {
    let condition = match e.status {
        401 | 403 => ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
        404 => ErrorCondition::AmqpError(AmqpError::NotFound),
        409 | 412 => ErrorCondition::Custom(Symbol::from("com.microsoft:precondition-failed")),
        413 => ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
        429 => ErrorCondition::Custom(Symbol::from(THROTTLED)),
        s if s >= 500 => ErrorCondition::AmqpError(AmqpError::InternalError),
        _ => ErrorCondition::Custom(Symbol::from("com.microsoft:argument-error")),
    };
    let info = e.retry_after.map(|secs| {
        let mut f = Fields::new();
        f.insert(Symbol::from("retry-after"), Value::String(secs.to_string()));
        f.insert(Symbol::from("Retry-After"), Value::String(secs.to_string()));
        Box::new(f)
    });
    definitions::Error { condition, description: Some(e.body().to_string()), info }
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::messaging::AmqpValue;

    use super::*;
    use crate::fuzz::wire;

    fn request(props: &[(&str, &str)], body: Body<Value>, correlation: Option<MessageId>) -> Message<Body<Value>> {
        let mut app = ApplicationProperties::builder();
        for (k, v) in props {
            app = app.insert(*k, *v);
        }
        let p = Properties { correlation_id: correlation, ..Properties::default() };
        Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(p),
            application_properties: Some(app.build()),
            body,
            footer: None,
        }
    }

    fn data(bytes: &[u8]) -> Body<Value> {
        Body::Data(vec![Data(Binary::from(bytes.to_vec()))].into())
    }

    #[test]
    fn reads_register_and_poll_as_each_sdk_sends_them() {
        let corr = Some(MessageId::String("6c1f".into()));
        let m = request(&[(OPERATION_TYPE, REGISTER)], data(br#"{"registrationId":"d"}"#), corr.clone());
        assert_eq!(
            parse_request(&m),
            Ok(Request {
                correlation_id: corr,
                operation: Operation::Register { body: Bytes::from_static(br#"{"registrationId":"d"}"#) }
            })
        );
        // Node's poll: amqp-value "" ; C#'s: the operation type as a string; C's: a data section.
        for body in [
            Body::Value(AmqpValue(Value::String(String::new()))),
            Body::Value(AmqpValue(Value::String(GET_OPERATION_STATUS.into()))),
            data(b"{}"),
        ] {
            let m = request(&[(OPERATION_TYPE, GET_OPERATION_STATUS), (OPERATION_ID, "op-1")], body, None);
            assert_eq!(
                parse_request(&m).map(|r| r.operation),
                Ok(Operation::OperationStatus { operation_id: "op-1".into() })
            );
        }
        // C#'s TPM register: an empty body.
        let m = request(&[(OPERATION_TYPE, REGISTER)], Body::Empty, None);
        assert_eq!(parse_request(&m).map(|r| r.operation), Ok(Operation::Register { body: Bytes::new() }));
    }

    #[test]
    fn refuses_what_is_not_a_dps_request() {
        let m = request(&[], data(b"{}"), None);
        assert_eq!(parse_request(&m), Err(RequestError::MissingOperationType));
        let m = request(&[(OPERATION_TYPE, "iotdps-get-registration")], data(b"{}"), None);
        assert!(matches!(parse_request(&m), Err(RequestError::UnknownOperationType(_))));
        let m = request(&[(OPERATION_TYPE, GET_OPERATION_STATUS)], data(b"{}"), None);
        assert_eq!(parse_request(&m), Err(RequestError::MissingOperationId));
        let m = request(&[(OPERATION_TYPE, REGISTER)], data(&vec![b' '; MAX_BODY + 1]), None);
        assert_eq!(parse_request(&m), Err(RequestError::TooLarge(MAX_BODY + 1)));
        assert_eq!(RequestError::TooLarge(1).error().kind().status(), 413);
        assert!(matches!(decode_request(b"\x00\x53"), Err(RequestError::Decode(_))));
    }

    #[test]
    fn responses_echo_the_correlation_id_with_its_type() {
        for corr in [
            MessageId::String("5f0e6b0a-0000-4000-8000-000000000001".into()),
            MessageId::Ulong(7),
            MessageId::Binary(Binary::from(vec![1, 2, 3])),
        ] {
            let reply = DeviceReply::Accepted { operation_id: "op".into() };
            let Answer::Respond(m) = answer(&reply, Some(corr.clone())) else { panic!("not a response") };
            let m = *m;
            assert_eq!(m.properties.as_ref().and_then(|p| p.correlation_id.clone()), Some(corr));
            let app = &m.application_properties.as_ref().expect("app properties").0;
            assert_eq!(app.get("retry-after"), Some(&SimpleValue::String("1".into())));
            assert_eq!(app.get("Retry-After"), Some(&SimpleValue::String("1".into())));
            let json: serde_json::Value = serde_json::from_slice(&m.body.0).expect("json");
            assert_eq!(json, serde_json::json!({"operationId": "op", "status": "assigning"}));
        }
        let reply = DeviceReply::Error(wire(404, 404_202, "x"));
        assert!(matches!(answer(&reply, None), Answer::Reject(_)));
        let reply = DeviceReply::Challenge { authentication_key: "k".into(), key_name: "registration".into() };
        let Answer::Respond(m) = answer(&reply, None) else { panic!("not a response") };
        assert!(m.application_properties.as_ref().is_none_or(|a| a.0.is_empty()));
    }

    #[test]
    fn errors_become_rejections_with_the_json_body() {
        let mut e = wire(429, 429_001, "slow down");
        e.retry_after = Some(2);
        let Answer::Reject(r) = answer(&DeviceReply::Error(e), None) else { panic!("not a rejection") };
        assert_eq!(r.condition, ErrorCondition::Custom(Symbol::from(THROTTLED)));
        let info = r.info.expect("info");
        assert_eq!(info.get(&Symbol::from("retry-after")), Some(&Value::String("2".into())));
        let body: serde_json::Value = serde_json::from_str(r.description.as_deref().unwrap_or("")).expect("json");
        assert_eq!(body["errorCode"], 429_001);
        assert_eq!(body["message"], "slow down");
        for (status, cond) in [
            (401, ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)),
            (404, ErrorCondition::AmqpError(AmqpError::NotFound)),
            (500, ErrorCondition::AmqpError(AmqpError::InternalError)),
            (503, ErrorCondition::AmqpError(AmqpError::InternalError)),
        ] {
            assert_eq!(rejection(&wire(status, u32::from(status) * 1000, "x")).condition, cond);
        }
    }
}
