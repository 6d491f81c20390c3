//! The fuzz entry points (`dps_amqp::fuzz`, also the `fuzz/` targets of `cargo fuzz`) run in
//! `cargo test` over seed inputs and a bounded number of deterministic mutations of them, so
//! every test run checks that hostile bytes never panic the header sniff, the SASL machine, the
//! DPS message mapping or the frame guard.

use dps_amqp::codec;
use dps_amqp::fuzz;
use dps_amqp::sasl::frame;
use fe2o3_amqp::frames::sasl::Frame;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Body, Data, Message, MessageId, Properties};
use fe2o3_amqp::types::performatives::{Begin, Detach, Flow};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslInit, SaslResponse};

/// Mutations per seed set; bounded so the test takes well under a second.
const ROUNDS: usize = 3000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            3 => v.truncate(rng.below(v.len() + 1)),
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0x00, 0xFF, 0x7F, 0x80, 0x40, 0xA0, 0xB0, 0xD0][rng.below(8)];
            }
            _ => {
                let a = rng.below(v.len() + 1);
                let b = (a + rng.below(16)).min(v.len());
                let chunk = v[a..b].to_vec();
                v.splice(a..a, chunk);
            }
        }
    }
    v
}

fn run(seeds: &[Vec<u8>], target: fn(&[u8]), salt: u64) {
    for s in seeds {
        target(s);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ salt);
    for _ in 0..ROUNDS {
        let seed = &seeds[rng.below(seeds.len())];
        target(&mutate(&mut rng, seed));
    }
}

fn sasl(f: Frame) -> Vec<u8> {
    frame::encode(&f).expect("encode")
}

#[test]
fn header_sniff_survives_hostile_bytes() {
    let seeds = vec![
        b"AMQP\x03\x01\x00\x00".to_vec(),
        b"AMQP\x00\x01\x00\x00".to_vec(),
        b"GET / HTTP/1.1\r\n".to_vec(),
        Vec::new(),
    ];
    run(&seeds, fuzz::header_sniff, 1);
}

#[test]
fn sasl_machine_survives_hostile_exchanges() {
    let init = |m: &str, r: &[u8]| {
        sasl(Frame::Init(SaslInit {
            mechanism: Symbol::from(m),
            initial_response: Some(Binary::from(r.to_vec())),
            hostname: None,
        }))
    };
    let response = |r: &[u8]| sasl(Frame::Response(SaslResponse { response: Binary::from(r.to_vec()) }));
    let mut plain = init("PLAIN", b"\x000ne00000001/registrations/dev\x00SharedAccessSignature sr=x&sig=y&se=1");
    plain.push(0);
    let mut tpm = init("TPM", b"\x000ne00000001\x00tpm-1\x00EKEKEKEK");
    tpm.extend(response(b"\x00SRKSRK"));
    tpm.push(2); // a challenge
    for _ in 0..4 {
        tpm.extend(response(b"\x00"));
    }
    tpm.extend(response(b"\x00SharedAccessSignature sr=x"));
    tpm.push(0);
    let seeds = vec![plain, tpm, response(b"\x00"), init("EXTERNAL", b""), vec![0, 0, 0, 8, 2, 1, 0, 0]];
    run(&seeds, fuzz::sasl_exchange, 2);
}

#[test]
fn message_mapping_survives_hostile_messages() {
    let msg = |op: &str, id: Option<&str>, body: Body<Value>, corr: MessageId| {
        let mut app = ApplicationProperties::builder().insert("iotdps-operation-type", op);
        if let Some(id) = id {
            app = app.insert("iotdps-operation-id", id);
        }
        let p = Properties { correlation_id: Some(corr), ..Properties::default() };
        let m = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(p),
            application_properties: Some(app.build()),
            body,
            footer: None,
        };
        serde_amqp::to_vec(&Serializable(m)).expect("encode")
    };
    let seeds = vec![
        msg(
            "iotdps-register",
            None,
            Body::Data(vec![Data(Binary::from(br#"{"registrationId":"d","payload":{"a":1}}"#.to_vec()))].into()),
            MessageId::String("c".into()),
        ),
        msg(
            "iotdps-get-operationstatus",
            Some("4.abc.d"),
            Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(String::new()))),
            MessageId::Ulong(9),
        ),
        msg("iotdps-register", None, Body::Empty, MessageId::Binary(Binary::from(vec![1, 2]))),
        b"0ne00000001/registrations/dev-1".to_vec(),
    ];
    for s in &seeds[..3] {
        assert!(dps_amqp::mapping::decode_request(s).is_ok(), "seed decodes");
    }
    run(&seeds, fuzz::message_mapping, 3);
}

#[test]
fn frame_guard_survives_hostile_streams() {
    let mut stream = vec![20u8];
    stream.extend_from_slice(b"AMQP\x00\x01\x00\x00");
    stream.extend_from_slice(&[0, 0, 0, 8, 2, 0, 0, 0]);
    stream.extend_from_slice(&[0, 0, 0, 12, 2, 0, 0, 0, 0, 0x53, 0x10, 0x45]);
    // The engine's frames, as the codec reads them after the header: what a device sends.
    let mut frames = vec![40u8];
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 1,
        incoming_window: 10,
        outgoing_window: 10,
        handle_max: 3.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    codec::encode(&mut frames, 0, &begin, &[]).expect("begin");
    let flow = Flow {
        next_incoming_id: Some(0),
        incoming_window: 10,
        next_outgoing_id: 1,
        outgoing_window: 10,
        handle: Some(1.into()),
        delivery_count: Some(0),
        link_credit: Some(5),
        available: None,
        drain: true,
        echo: true,
        properties: None,
    };
    codec::encode(&mut frames, 0, &flow, &[]).expect("flow");
    codec::encode(&mut frames, 0, &Detach { handle: 1.into(), closed: true, error: None }, &[]).expect("detach");
    frames.extend_from_slice(&codec::EMPTY_FRAME);
    let seeds = vec![stream, frames, vec![0], vec![3, b'A', b'M']];
    run(&seeds, fuzz::frame_guard, 4);
}
