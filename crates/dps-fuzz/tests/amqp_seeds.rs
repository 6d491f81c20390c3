//! Writes the seed corpora of `amqp_sasl` and `amqp_mapping`
//! (`cargo test -p dps-fuzz --test amqp_seeds -- --ignored`): SASL frames and request messages
//! encoded by `fe2o3-amqp`, as the SDKs send them, and hostile variants. `amqp_header`'s seeds
//! are written by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use dps_amqp::sasl::frame;
use fe2o3_amqp::frames::sasl::Frame;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Data, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslInit, SaslResponse};

const SAS: &str = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fdev-1&sig=3Gq5YkS0b9o%2Bz7a7m3kKQ0C0pF2kqv2Vq0pPq2z1n8Y%3D&se=1796133720&skn=registration";

fn dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn init(mechanism: &str, response: &[u8], hostname: Option<&str>) -> Vec<u8> {
    frame::encode(&Frame::Init(SaslInit {
        mechanism: Symbol::from(mechanism),
        initial_response: Some(Binary::from(response.to_vec())),
        hostname: hostname.map(Into::into),
    }))
    .unwrap()
}

fn response(bytes: &[u8]) -> Vec<u8> {
    frame::encode(&Frame::Response(SaslResponse { response: Binary::from(bytes.to_vec()) })).unwrap()
}

fn plain(user: &str, password: &str) -> Vec<u8> {
    [b"\0", user.as_bytes(), b"\0", password.as_bytes()].concat()
}

#[test]
#[ignore = "writes fuzz/corpus/amqp_sasl; run by hand when the seeds change"]
fn write_sasl_seeds() {
    let host = Some("global.azure-devices-provisioning.net");
    // The byte after a frame that asks the device API picks its answer (0: attested,
    // 1: refused, 2 and 3: a TPM challenge).
    let mut tpm = init("TPM", &[b"\x000ne00000A0A\x00tpm-1\x00".as_slice(), &[0x01; 316]].concat(), host);
    tpm.extend(response(&[&[0u8][..], &[0x02; 280]].concat()));
    tpm.push(0x82); // a challenge of 0x82 * 8 = 1,040 bytes: three segments
    for _ in 0..3 {
        tpm.extend(response(b"\x00"));
    }
    tpm.extend(response(&[b"\x00".as_slice(), SAS.as_bytes()].concat()));
    tpm.push(0);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        // The Node SDK's init (rhea): empty authzid, the registration path, the SAS token.
        ("sdk-plain-attested", [init("PLAIN", &plain("0ne00000A0A/registrations/dev-1", SAS), host), vec![0]].concat()),
        ("sdk-plain-refused", [init("PLAIN", &plain("0ne00000A0A/registrations/dev-1", SAS), host), vec![1]].concat()),
        ("tpm-exchange", tpm),
        ("plain-authzid-differs", init("PLAIN", b"other\x00s/registrations/d\x00pw", None)),
        ("plain-utf8-scope", init("PLAIN", &plain("0né00000A0A/registrations/dév-ü", "pw"), None)),
        ("plain-control-character", init("PLAIN", &plain("s/registrations/d\u{7}", "pw"), None)),
        ("plain-long-username", init("PLAIN", &plain(&"é".repeat(3000), "pw"), None)),
        ("external-mechanism", init("EXTERNAL", b"", host)),
        ("response-before-init", response(b"\x00")),
        (
            "frame-after-success",
            [init("PLAIN", &plain("s/registrations/d", "pw"), None), vec![0], response(b"x")].concat(),
        ),
        ("tpm-ek-too-long", init("TPM", &[b"\x00s\x00r\x00".as_slice(), &[7; 1025]].concat(), None)),
        ("truncated-init", init("PLAIN", &plain("s/registrations/d", "pw"), None)[..20].to_vec()),
        ("oversized-frame-size", vec![0xff, 0xff, 0xff, 0xff, 2, 1, 0, 0]),
        ("frame-size-below-header", vec![0, 0, 0, 4, 2, 1, 0, 0]),
        ("bad-data-offset", vec![0, 0, 0, 12, 9, 1, 0, 0, 0, 0x53, 0x41, 0x45]),
        ("malformed-body", vec![0, 0, 0, 12, 2, 1, 0, 0, 0, 0x53, 0x41, 0xc1]),
    ];
    let d = dir("amqp_sasl");
    for (name, bytes) in seeds {
        std::fs::write(d.join(name), bytes).unwrap();
    }
}

fn message(props: &[(&str, &str)], body: Body<Value>, correlation: Option<MessageId>) -> Vec<u8> {
    let mut app = ApplicationProperties::builder();
    for (k, v) in props {
        app = app.insert(*k, *v);
    }
    let m = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties { correlation_id: correlation, ..Properties::default() }),
        application_properties: Some(app.build()),
        body,
        footer: None,
    };
    serde_amqp::to_vec(&Serializable(m)).unwrap()
}

fn data(bytes: &[u8]) -> Body<Value> {
    Body::Data(vec![Data(Binary::from(bytes.to_vec()))].into())
}

#[test]
#[ignore = "writes fuzz/corpus/amqp_mapping; run by hand when the seeds change"]
fn write_mapping_seeds() {
    let uuid = || Some(MessageId::String("5d7a8f0e-4b1c-4c5e-9a3e-2f6b8c1d0e7a".into()));
    let register = [("iotdps-operation-type", "iotdps-register"), ("iotdps-forceRegistration", "false")];
    let poll = [
        ("iotdps-operation-type", "iotdps-get-operationstatus"),
        ("iotdps-operation-id", "5.316aa5c3e45b1a8f.a1b2c3d4-0000-4000-8000-000000000001"),
    ];
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        // The Node SDK's register and poll (correlation id a UUID string; poll body amqp-value "").
        ("sdk-register", message(&register, data(br#"{"registrationId":"dev-1","payload":{"a":1}}"#), uuid())),
        ("sdk-poll", message(&poll, Body::Value(AmqpValue(Value::String(String::new()))), uuid())),
        ("poll-ulong-correlation", message(&poll, data(b"{}"), Some(MessageId::Ulong(7)))),
        (
            "register-empty-body-binary-correlation",
            message(&register, Body::Empty, Some(MessageId::Binary(Binary::from(vec![1, 2, 3])))),
        ),
        (
            "register-utf8-body",
            message(&register, Body::Value(AmqpValue(Value::String("{\"registrationId\":\"dév-ü\"}".into()))), None),
        ),
        ("register-sequence-body", message(&register, Body::Sequence(vec![].into()), None)),
        ("unknown-operation", message(&[("iotdps-operation-type", &"é".repeat(100))], data(b"{}"), None)),
        (
            "poll-operation-id-too-long",
            message(&[poll[0], ("iotdps-operation-id", &"x".repeat(257))], data(b"{}"), None),
        ),
        ("no-properties", message(&[], data(b"{}"), None)),
        ("link-address", b"0ne00000A0A/registrations/dev-1".to_vec()),
        (
            "link-address-c-sdk",
            b"amqps://global.azure-devices-provisioning.net/0ne00000A0A/registrations/dev-1".to_vec(),
        ),
        ("link-address-utf8", "AMQPS://hé/0né/registrations/dév".as_bytes().to_vec()),
        ("malformed-map-size", vec![0x00, 0x53, 0x74, 0xc1, 0x00, 0x00]),
        ("truncated-message", message(&register, data(br#"{"registrationId":"dev-1"}"#), uuid())[..40].to_vec()),
    ];
    let d = dir("amqp_mapping");
    for (name, bytes) in seeds {
        std::fs::write(d.join(name), bytes).unwrap();
    }
}
