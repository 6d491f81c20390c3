//! The MQTT side of the device API as the server reads it: the packet framing over the
//! connection's buffer (`mqttbytes`, capped at `MAX_PACKET`), the CONNECT checks (username,
//! client id), and the request topics and SUBSCRIBE filters of the packets that follow.

use bytes::BytesMut;
use dps_mqtt::session::{
    accepts_filter, check_connect, decode, parse_topic, parse_username, response_topic, Decoded, Request, MAX_PACKET,
};
use mqttbytes::v4::{self, ConnectReturnCode, Packet, Publish};
use mqttbytes::QoS;

/// Longest error message any of these parsers may give (they quote at most 200 characters of
/// untrusted text, Debug-escaped: up to 10 bytes a character).
const MAX_MESSAGE: usize = 4096;

/// The bytes are what a client sends on a fresh connection, fed in two reads (split where the
/// first byte says, as a slow client would). Every packet the codec frames is checked as the
/// server handles it.
pub fn mqtt_connect(data: &[u8]) {
    let Some((&split, wire)) = data.split_first() else { return };
    let split = (usize::from(split) * 4).min(wire.len());
    let mut buf = BytesMut::new();
    let mut packets = 0usize;
    for piece in [&wire[..split], &wire[split..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Decoded::Packet(p) => {
                    assert!(buf.len() < before, "a packet was framed from no bytes");
                    assert!(before - buf.len() <= MAX_PACKET + 5, "a packet over the limit was framed");
                    packets += 1;
                    assert!(packets <= wire.len(), "more packets than bytes");
                    packet(&p);
                }
                Decoded::Incomplete => {
                    assert_eq!(buf.len(), before, "an incomplete packet consumed bytes");
                    break;
                }
                Decoded::Bad(why) => {
                    assert!(why.len() < MAX_MESSAGE, "a framing error grows with the input ({} bytes)", why.len());
                    return;
                }
                Decoded::BadLevel(_) => return,
            }
        }
    }
    // The grammar on its own, on the raw text too (what a username or topic could be).
    let text = String::from_utf8_lossy(wire);
    username(&text);
    topic(&text);
}

fn packet(p: &Packet) {
    match p {
        Packet::Connect(c) => match check_connect(c) {
            Ok(user) => {
                assert!(user.registration_id.eq_ignore_ascii_case(&c.client_id), "client id is not the device");
                let login = c.login.as_ref().map_or("", |l| l.username.as_str());
                assert_eq!(parse_username(login).as_ref(), Ok(&user), "CONNECT and username checks disagree");
            }
            Err((code, why)) => {
                assert!(
                    matches!(code, ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::BadClientId),
                    "{code:?}"
                );
                assert!(why.len() < MAX_MESSAGE, "a CONNECT error grows with the input ({} bytes)", why.len());
            }
        },
        Packet::Publish(p) => topic(&p.topic),
        Packet::Subscribe(s) => {
            for f in &s.filters {
                if accepts_filter(&f.path) {
                    assert!(f.path.starts_with("$dps/registrations/res/"), "{:?} accepted", f.path);
                }
            }
        }
        _ => {}
    }
}

fn username(text: &str) {
    match parse_username(text) {
        Ok(u) => {
            assert!(!u.id_scope.is_empty() && !u.registration_id.is_empty(), "{u:?}");
            assert!(!u.id_scope.contains('/') && !u.registration_id.contains('/'), "{u:?}");
            assert!(text.starts_with(&u.id_scope), "the scope is not the username's first part");
        }
        Err(e) => assert!(e.len() < MAX_MESSAGE, "a username error grows with the input ({} bytes)", e.len()),
    }
}

fn topic(t: &str) {
    let rid = match parse_topic(t) {
        Ok(Request::Register { rid }) => rid,
        Ok(Request::Poll { rid, operation_id }) => {
            assert!(!operation_id.is_empty());
            assert!(t.contains(&operation_id), "the operation id is not the topic's");
            rid
        }
        Err((rid, why)) => {
            assert!(why.len() < MAX_MESSAGE, "a topic error grows with the input ({} bytes)", why.len());
            match rid {
                Some(rid) => rid,
                None => return,
            }
        }
    };
    assert!(t.contains(&rid), "the $rid is not the topic's");
    // The answer goes back on a topic carrying the rid: it must read back as sent (the codec
    // writes a string's length as 16 bits, whatever its length).
    for retry in [None, Some(3)] {
        let answer = response_topic(202, &rid, retry);
        assert!(answer.starts_with("$dps/registrations/res/202/?$rid="));
        let publish = Publish::new(answer.clone(), QoS::AtMostOnce, b"{}".to_vec());
        let mut out = BytesMut::new();
        assert!(publish.write(&mut out).is_ok(), "a response PUBLISH does not encode");
        match v4::read(&mut out, MAX_PACKET * 2) {
            Ok(Packet::Publish(p)) => assert_eq!(p.topic, answer, "the response topic does not round-trip"),
            other => panic!("a response PUBLISH of {} bytes reads as {other:?}", answer.len()),
        }
    }
}
