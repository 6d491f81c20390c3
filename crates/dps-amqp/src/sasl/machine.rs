//! The server side of SASL as a state machine: frames and device-API answers in, steps out.
//! No I/O and no clock; the driver sends what it is told, asks the device API when told, and
//! enforces the time limit.
//!
//! Mechanisms (docs/amqp.md, "SASL"):
//! - `PLAIN` (symmetric keys): initial response `authzid NUL authcid NUL password`, authcid
//!   `{idScope}/registrations/{registrationId}`, password the SAS token. One round.
//! - `TPM`: init `0x00 idScope 0x00 registrationId 0x00 EK`; challenge `0x00`; response
//!   `0x00 SRK`; then the activation blob in at most four segments, control byte `0x80|seq`
//!   (more follow) or `0xC0|seq` (last); the device answers `0x00` to each but the last, and
//!   `0x00 SAS` to the last, the SAS signed with the key it just imported.

use std::collections::VecDeque;

use base64::Engine as _;
use fe2o3_amqp::frames::sasl::Frame;
use fe2o3_amqp::types::primitives::Symbol;
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms};

use dps_core::device::{excerpt, AuthOutcome};

/// The mechanisms offered, in preference order (a client takes the first it knows).
pub const MECHANISMS: [&str; 2] = ["PLAIN", "TPM"];
/// Longest ID scope accepted (generated scopes are 11 characters).
pub const MAX_ID_SCOPE: usize = 64;
/// Longest registration id DPS allows.
pub const MAX_REGISTRATION_ID: usize = 128;
/// Largest EK or SRK accepted (an RSA-2048 TPM2B_PUBLIC is 316 bytes).
pub const MAX_TPM_KEY: usize = 1024;
/// Most segments of an activation blob (C# counts the 2-bit sequence number without masking).
pub const MAX_SEGMENTS: usize = 4;
/// Preferred and largest blob bytes per segment: a challenge frame stays within 512 bytes.
pub const SEGMENT_PREFERRED: usize = 400;
pub const SEGMENT_MAX: usize = 480;

/// What the client presented, for the device API (the driver lends it to
/// `DeviceSession::authenticate` as a `dps_core::device::Credential`).
#[derive(Clone, PartialEq, Eq)]
pub enum SaslCredential {
    /// A SAS token (PLAIN password, or the TPM exchange's final response).
    Sas(String),
    /// The TPM's public keys (TPM2B_PUBLIC bytes): asks for the activation challenge.
    Tpm { endorsement_key: Vec<u8>, storage_root_key: Vec<u8> },
}

impl std::fmt::Debug for SaslCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaslCredential::Sas(_) => f.write_str("Sas(<redacted>)"),
            SaslCredential::Tpm { endorsement_key, storage_root_key } => f
                .debug_struct("Tpm")
                .field("endorsement_key_len", &endorsement_key.len())
                .field("storage_root_key_len", &storage_root_key.len())
                .finish(),
        }
    }
}

/// Who the SASL exchange authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id_scope: String,
    pub registration_id: String,
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send a sasl-challenge with these bytes; the client's response goes to [`SaslServer::on_frame`].
    Challenge(Vec<u8>),
    /// Ask the device API; its answer goes to [`SaslServer::on_auth`].
    Authenticate { id_scope: String, registration_id: String, credential: SaslCredential },
    /// Send sasl-outcome `ok`: the connection is authenticated as this identity.
    Succeeded(Identity),
    /// Send sasl-outcome `code` and close. `reason` is for the log; it is never sent.
    Failed { code: SaslCode, reason: String },
    /// The device API refused the device (and logged why): send sasl-outcome `code` and close.
    Refused { code: SaslCode },
}

#[derive(Debug)]
enum State {
    AwaitInit,
    PlainAuth(Identity),
    TpmAwaitSrk {
        id: Identity,
        ek: Vec<u8>,
    },
    TpmAuth(Identity),
    /// A non-final segment is out; `rest` are still to send.
    TpmSegments {
        id: Identity,
        rest: VecDeque<Vec<u8>>,
    },
    /// The final segment is out; the SAS comes next.
    TpmAwaitSas(Identity),
    TpmSasAuth(Identity),
    Done,
}

/// One connection's SASL exchange.
#[derive(Debug)]
pub struct SaslServer {
    state: State,
    tpm: bool,
}

impl Default for SaslServer {
    fn default() -> Self {
        SaslServer::new()
    }
}

fn failed(code: SaslCode, reason: impl Into<String>) -> Step {
    Step::Failed { code, reason: reason.into() }
}

impl SaslServer {
    pub fn new() -> SaslServer {
        SaslServer { state: State::AwaitInit, tpm: false }
    }

    /// The sasl-mechanisms frame the server opens with.
    pub fn mechanisms() -> Frame {
        Frame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: MECHANISMS.iter().map(|m| Symbol::from(*m)).collect::<Vec<_>>().into(),
        })
    }

    /// Whether the client chose TPM (its exchange may take longer: the device does TPM work).
    pub fn is_tpm(&self) -> bool {
        self.tpm
    }

    /// A frame from the client.
    pub fn on_frame(&mut self, frame: Frame) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        let step = match (state, frame) {
            (State::AwaitInit, Frame::Init(init)) => {
                let response = init.initial_response.map(|b| b.into_vec()).unwrap_or_default();
                match init.mechanism.as_str() {
                    "PLAIN" => self.plain(&response),
                    "TPM" => self.tpm_init(response),
                    other => failed(SaslCode::Auth, format!("mechanism {:?} is not offered", excerpt(other, 64))),
                }
            }
            (State::TpmAwaitSrk { id, ek }, Frame::Response(r)) => match r.response.split_first() {
                Some((0, srk)) if !srk.is_empty() && srk.len() <= MAX_TPM_KEY => {
                    let step = Step::Authenticate {
                        id_scope: id.id_scope.clone(),
                        registration_id: id.registration_id.clone(),
                        credential: SaslCredential::Tpm { endorsement_key: ek, storage_root_key: srk.to_vec() },
                    };
                    self.state = State::TpmAuth(id);
                    step
                }
                _ => failed(
                    SaslCode::Auth,
                    "TPM response is not 0x00 followed by a storage root key of at most 1024 bytes",
                ),
            },
            (State::TpmSegments { id, mut rest }, Frame::Response(r)) => {
                if r.response.first() != Some(&0) {
                    return failed(SaslCode::Auth, "TPM segment acknowledgement does not start with 0x00");
                }
                match rest.pop_front() {
                    Some(segment) => {
                        self.state =
                            if rest.is_empty() { State::TpmAwaitSas(id) } else { State::TpmSegments { id, rest } };
                        Step::Challenge(segment)
                    }
                    None => failed(SaslCode::Sys, "no TPM segment left to send"),
                }
            }
            (State::TpmAwaitSas(id), Frame::Response(r)) => match r.response.split_first() {
                Some((0, sas)) => match std::str::from_utf8(sas) {
                    Ok(sas) if !sas.is_empty() => {
                        let step = Step::Authenticate {
                            id_scope: id.id_scope.clone(),
                            registration_id: id.registration_id.clone(),
                            credential: SaslCredential::Sas(sas.to_owned()),
                        };
                        self.state = State::TpmSasAuth(id);
                        step
                    }
                    _ => failed(SaslCode::Auth, "TPM final response carries no UTF-8 SAS token"),
                },
                _ => failed(SaslCode::Auth, "TPM final response does not start with 0x00"),
            },
            (State::AwaitInit, other) => failed(SaslCode::SysPerm, format!("expected sasl-init, got {}", name(&other))),
            (State::Done, other) => {
                failed(SaslCode::SysPerm, format!("{} after the SASL exchange ended", name(&other)))
            }
            (State::PlainAuth(_) | State::TpmAuth(_) | State::TpmSasAuth(_), other) => {
                failed(SaslCode::SysPerm, format!("{} while the server had not answered", name(&other)))
            }
            (_, other) => failed(SaslCode::SysPerm, format!("expected sasl-response, got {}", name(&other))),
        };
        step
    }

    /// The device API's answer to the last [`Step::Authenticate`].
    pub fn on_auth(&mut self, outcome: AuthOutcome) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, outcome) {
            (State::PlainAuth(id) | State::TpmSasAuth(id), AuthOutcome::Attested) => Step::Succeeded(id),
            (State::TpmAuth(id), AuthOutcome::Challenge { authentication_key }) => {
                let blob = match base64::engine::general_purpose::STANDARD.decode(authentication_key.as_bytes()) {
                    Ok(b) => b,
                    Err(_) => return failed(SaslCode::Sys, "the activation blob is not base64"),
                };
                let mut segments = match segment(&blob) {
                    Ok(s) => VecDeque::from(s),
                    Err(why) => return failed(SaslCode::Sys, why),
                };
                let Some(first) = segments.pop_front() else {
                    return failed(SaslCode::Sys, "empty activation blob");
                };
                self.state = if segments.is_empty() {
                    State::TpmAwaitSas(id)
                } else {
                    State::TpmSegments { id, rest: segments }
                };
                Step::Challenge(first)
            }
            (_, AuthOutcome::Refused(e)) => Step::Refused {
                code: if e.status == 429 || e.status >= 500 { SaslCode::SysTemp } else { SaslCode::Auth },
            },
            (State::TpmAuth(_), AuthOutcome::Attested) => {
                failed(SaslCode::Sys, "the device API attested a TPM without a challenge")
            }
            (State::PlainAuth(_) | State::TpmSasAuth(_), AuthOutcome::Challenge { .. }) => {
                failed(SaslCode::Sys, "the device API asked for a TPM challenge on a SAS token")
            }
            (_, _) => failed(SaslCode::Sys, "authentication answer without a question"),
        }
    }

    fn plain(&mut self, response: &[u8]) -> Step {
        let mut parts = response.splitn(3, |b| *b == 0);
        let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
            return failed(SaslCode::Auth, "PLAIN response is not authzid NUL authcid NUL password");
        };
        let (Ok(authzid), Ok(authcid), Ok(password)) =
            (std::str::from_utf8(authzid), std::str::from_utf8(authcid), std::str::from_utf8(password))
        else {
            return failed(SaslCode::Auth, "PLAIN response is not UTF-8");
        };
        if !authzid.is_empty() && authzid != authcid {
            return failed(SaslCode::Auth, "PLAIN authzid differs from authcid");
        }
        let Some(id) = parse_username(authcid) else {
            return failed(
                SaslCode::Auth,
                format!(
                    "PLAIN username {:?} is not {{idScope}}/registrations/{{registrationId}}",
                    excerpt(authcid, 200)
                ),
            );
        };
        let step = Step::Authenticate {
            id_scope: id.id_scope.clone(),
            registration_id: id.registration_id.clone(),
            credential: SaslCredential::Sas(password.to_owned()),
        };
        self.state = State::PlainAuth(id);
        step
    }

    fn tpm_init(&mut self, response: Vec<u8>) -> Step {
        self.tpm = true;
        let Some((0, rest)) = response.split_first() else {
            return failed(SaslCode::Auth, "TPM init does not start with 0x00");
        };
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(scope), Some(reg), Some(ek)) = (parts.next(), parts.next(), parts.next()) else {
            return failed(SaslCode::Auth, "TPM init is not 0x00 idScope 0x00 registrationId 0x00 EK");
        };
        let (Ok(scope), Ok(reg)) = (std::str::from_utf8(scope), std::str::from_utf8(reg)) else {
            return failed(SaslCode::Auth, "TPM init names are not UTF-8");
        };
        let Some(id) = identity(scope, reg) else {
            return failed(SaslCode::Auth, "TPM init has an empty or too long ID scope or registration id");
        };
        if ek.is_empty() || ek.len() > MAX_TPM_KEY {
            return failed(
                SaslCode::Auth,
                format!("TPM endorsement key of {} bytes (1 to {MAX_TPM_KEY} accepted)", ek.len()),
            );
        }
        self.state = State::TpmAwaitSrk { id, ek: ek.to_vec() };
        Step::Challenge(vec![0])
    }
}

fn name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Mechanisms(_) => "sasl-mechanisms",
        Frame::Init(_) => "sasl-init",
        Frame::Challenge(_) => "sasl-challenge",
        Frame::Response(_) => "sasl-response",
        Frame::Outcome(_) => "sasl-outcome",
    }
}

fn identity(id_scope: &str, registration_id: &str) -> Option<Identity> {
    let ok =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.contains('/') && !s.chars().any(char::is_control);
    (ok(id_scope, MAX_ID_SCOPE) && ok(registration_id, MAX_REGISTRATION_ID))
        .then(|| Identity { id_scope: id_scope.to_owned(), registration_id: registration_id.to_owned() })
}

/// `{idScope}/registrations/{registrationId}` (the SASL PLAIN username).
pub fn parse_username(username: &str) -> Option<Identity> {
    let (scope, reg) = username.split_once("/registrations/")?;
    identity(scope, reg)
}

/// Splits an activation blob into TPM challenge segments (control byte, then the chunk).
pub fn segment(blob: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if blob.is_empty() {
        return Err("empty activation blob".into());
    }
    let chunk = SEGMENT_PREFERRED.max(blob.len().div_ceil(MAX_SEGMENTS));
    if chunk > SEGMENT_MAX {
        return Err(format!(
            "activation blob of {} bytes does not fit in {MAX_SEGMENTS} segments of {SEGMENT_MAX} bytes",
            blob.len()
        ));
    }
    let count = blob.len().div_ceil(chunk);
    Ok(blob
        .chunks(chunk)
        .enumerate()
        .map(|(seq, part)| {
            let last = seq + 1 == count;
            // seq < MAX_SEGMENTS = 4, so it fits the two low bits.
            let control = if last { 0xC0 } else { 0x80 } | (seq as u8 & 0x03);
            let mut s = Vec::with_capacity(part.len() + 1);
            s.push(control);
            s.extend_from_slice(part);
            s
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::primitives::Binary;
    use fe2o3_amqp::types::sasl::{SaslChallenge, SaslInit, SaslResponse};

    use super::*;
    use crate::fuzz::wire;
    use crate::sasl::frame;

    fn init(mechanism: &str, response: &[u8]) -> Frame {
        Frame::Init(SaslInit {
            mechanism: Symbol::from(mechanism),
            initial_response: Some(Binary::from(response.to_vec())),
            hostname: None,
        })
    }

    fn response(bytes: &[u8]) -> Frame {
        Frame::Response(SaslResponse { response: Binary::from(bytes.to_vec()) })
    }

    fn tpm_init_bytes(scope: &str, reg: &str, ek: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(scope.as_bytes());
        v.push(0);
        v.extend_from_slice(reg.as_bytes());
        v.push(0);
        v.extend_from_slice(ek);
        v
    }

    #[test]
    fn plain_asks_the_api_and_succeeds_on_attested() {
        let mut m = SaslServer::new();
        let step = m.on_frame(init("PLAIN", b"\x000ne00000001/registrations/dev-1\x00SharedAccessSignature sr=x"));
        assert_eq!(
            step,
            Step::Authenticate {
                id_scope: "0ne00000001".into(),
                registration_id: "dev-1".into(),
                credential: SaslCredential::Sas("SharedAccessSignature sr=x".into()),
            }
        );
        assert!(!m.is_tpm());
        let id = Identity { id_scope: "0ne00000001".into(), registration_id: "dev-1".into() };
        assert_eq!(m.on_auth(AuthOutcome::Attested), Step::Succeeded(id));
        // Nothing is accepted after the outcome.
        assert!(matches!(m.on_frame(response(b"x")), Step::Failed { code: SaslCode::SysPerm, .. }));
    }

    #[test]
    fn plain_refusals_map_to_auth_or_temporary_codes() {
        let mut m = SaslServer::new();
        m.on_frame(init("PLAIN", b"\x00s/registrations/d\x00pw"));
        let step = m.on_auth(AuthOutcome::Refused(wire(401, 401_002, "nope")));
        assert_eq!(step, Step::Refused { code: SaslCode::Auth });
        let mut m = SaslServer::new();
        m.on_frame(init("PLAIN", b"s/registrations/d\x00s/registrations/d\x00pw"));
        let step = m.on_auth(AuthOutcome::Refused(wire(429, 429_001, "slow down")));
        assert_eq!(step, Step::Refused { code: SaslCode::SysTemp });
    }

    #[test]
    fn plain_refuses_malformed_usernames_before_asking() {
        for bad in [
            &b"no-nuls"[..],
            b"\x00scope/devices/d\x00pw",
            b"\x00/registrations/d\x00pw",
            b"\x00s/registrations/\x00pw",
            b"\x00s/registrations/a/b\x00pw",
            b"other\x00s/registrations/d\x00pw",
            b"\x00s/registrations/\xff\x00pw",
        ] {
            let mut m = SaslServer::new();
            assert!(matches!(m.on_frame(init("PLAIN", bad)), Step::Failed { code: SaslCode::Auth, .. }), "{bad:?}");
        }
        let long = format!("\x00s/registrations/{}\x00pw", "a".repeat(129));
        assert!(matches!(SaslServer::new().on_frame(init("PLAIN", long.as_bytes())), Step::Failed { .. }));
    }

    #[test]
    fn unknown_mechanisms_and_out_of_order_frames_fail() {
        assert!(matches!(SaslServer::new().on_frame(init("EXTERNAL", b"")), Step::Failed { code: SaslCode::Auth, .. }));
        assert!(matches!(SaslServer::new().on_frame(response(b"\x00")), Step::Failed { code: SaslCode::SysPerm, .. }));
        let challenge = Frame::Challenge(SaslChallenge { challenge: Binary::from(vec![0]) });
        assert!(matches!(SaslServer::new().on_frame(challenge), Step::Failed { code: SaslCode::SysPerm, .. }));
        // A response while the server is still asking the device API.
        let mut m = SaslServer::new();
        m.on_frame(init("PLAIN", b"\x00s/registrations/d\x00pw"));
        assert!(matches!(m.on_frame(response(b"\x00")), Step::Failed { code: SaslCode::SysPerm, .. }));
        // An answer nobody asked for.
        assert!(matches!(SaslServer::new().on_auth(AuthOutcome::Attested), Step::Failed { code: SaslCode::Sys, .. }));
    }

    #[test]
    fn tpm_runs_challenge_srk_segments_and_sas() {
        let ek = vec![0xEE; 316];
        let srk = vec![0x55; 280];
        let blob: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut m = SaslServer::new();
        assert_eq!(m.on_frame(init("TPM", &tpm_init_bytes("0ne0000000A", "tpm-1", &ek))), Step::Challenge(vec![0]));
        assert!(m.is_tpm());
        let mut srk_response = vec![0];
        srk_response.extend_from_slice(&srk);
        assert_eq!(
            m.on_frame(response(&srk_response)),
            Step::Authenticate {
                id_scope: "0ne0000000A".into(),
                registration_id: "tpm-1".into(),
                credential: SaslCredential::Tpm { endorsement_key: ek, storage_root_key: srk },
            }
        );
        let key = base64::engine::general_purpose::STANDARD.encode(&blob);
        let mut got = Vec::new();
        let mut step = m.on_auth(AuthOutcome::Challenge { authentication_key: key });
        let mut seq = 0u8;
        loop {
            let Step::Challenge(c) = step else { panic!("expected a segment, got {step:?}") };
            let last = c[0] & 0x40 != 0;
            assert_eq!(c[0] & 0x80, 0x80);
            assert_eq!(c[0] & 0x03, seq);
            got.extend_from_slice(&c[1..]);
            if last {
                break;
            }
            seq += 1;
            step = m.on_frame(response(b"\x00"));
        }
        assert_eq!(got, blob);
        assert_eq!(seq, 2, "1000 bytes go in three segments of 400");
        let step = m.on_frame(response(b"\x00SharedAccessSignature sr=y"));
        assert!(
            matches!(step, Step::Authenticate { credential: SaslCredential::Sas(ref s), .. } if s == "SharedAccessSignature sr=y")
        );
        assert!(matches!(m.on_auth(AuthOutcome::Attested), Step::Succeeded(_)));
    }

    #[test]
    fn tpm_refuses_malformed_inits_and_responses() {
        for bad in [
            tpm_init_bytes("s", "r", b""),
            tpm_init_bytes("s", "r", &[1; 1025]),
            tpm_init_bytes("", "r", b"ek"),
            b"\x01s\x00r\x00ek".to_vec(),
            b"\x00s\x00r".to_vec(),
        ] {
            assert!(matches!(SaslServer::new().on_frame(init("TPM", &bad)), Step::Failed { code: SaslCode::Auth, .. }));
        }
        let mut m = SaslServer::new();
        m.on_frame(init("TPM", &tpm_init_bytes("s", "r", b"ek")));
        assert!(matches!(m.on_frame(response(b"\x01srk")), Step::Failed { .. }));
        let mut m = SaslServer::new();
        m.on_frame(init("TPM", &tpm_init_bytes("s", "r", b"ek")));
        m.on_frame(response(b"\x00srk"));
        assert!(matches!(m.on_auth(AuthOutcome::Attested), Step::Failed { code: SaslCode::Sys, .. }));
        let mut m = SaslServer::new();
        m.on_frame(init("TPM", &tpm_init_bytes("s", "r", b"ek")));
        m.on_frame(response(b"\x00srk"));
        let step = m.on_auth(AuthOutcome::Challenge { authentication_key: "not base64!".into() });
        assert!(matches!(step, Step::Failed { code: SaslCode::Sys, .. }));
    }

    #[test]
    fn segments_fit_server_frames_and_at_most_four() {
        for len in [1, 399, 400, 401, 800, 1600, 1601, 4 * SEGMENT_MAX] {
            let blob = vec![0xAB; len];
            let segs = segment(&blob).expect("fits");
            assert!(segs.len() <= MAX_SEGMENTS, "{len}");
            assert_eq!(segs.last().map(|s| s[0] & 0xC0), Some(0xC0));
            for s in &segs {
                let f = Frame::Challenge(SaslChallenge { challenge: Binary::from(s.clone()) });
                let bytes = frame::encode(&f).expect("encode");
                assert!(bytes.len() <= frame::MAX_SERVER_FRAME, "{len}: frame of {}", bytes.len());
            }
            assert_eq!(segs.iter().map(|s| s.len() - 1).sum::<usize>(), len);
        }
        assert!(segment(&vec![0; 4 * SEGMENT_MAX + 1]).is_err());
        assert!(segment(&[]).is_err());
    }

    /// Found by the `amqp_sasl` fuzz target: the reason (logged as is by the driver) quoted the
    /// whole PLAIN username, up to the 8 KB frame cap.
    #[test]
    fn failure_reasons_quote_at_most_an_excerpt() {
        let long = "é".repeat(3000);
        let mut m = SaslServer::new();
        let Step::Failed { reason, .. } = m.on_frame(init("PLAIN", format!("\0{long}\0pw").as_bytes())) else {
            panic!("a PLAIN username without /registrations/ was accepted")
        };
        assert!(reason.len() < 1024, "{} bytes", reason.len());
        let mut m = SaslServer::new();
        let Step::Failed { reason, .. } = m.on_frame(init(&long, b"")) else { panic!("an unknown mechanism") };
        assert!(reason.len() < 1024, "{} bytes", reason.len());
    }
}
