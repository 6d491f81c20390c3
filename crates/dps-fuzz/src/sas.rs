//! The SAS token parser: `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` from an Authorization
//! header or an MQTT password.

use std::time::{Duration, UNIX_EPOCH};

use dps_attest::sas::{percent_decode, SasToken};

/// Parses the bytes (as text, lossily) as a token; a parsed token is checked for expiry at a few
/// times and skews, for its resource, and for a signature with a fixed key. Errors never repeat
/// the token's signature.
pub fn sas_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = percent_decode(&text);
    match SasToken::parse(&text) {
        Ok(token) => {
            for (now, skew) in [(0, 0), (1_796_133_720, 300), (u64::MAX >> 2, u64::MAX), (u64::from(u32::MAX), 60)] {
                let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(UNIX_EPOCH);
                if let Err(e) = token.check_expiry(now, Duration::from_secs(skew)) {
                    let _ = e.to_string();
                }
            }
            let _ = token.resource();
            let _ = token.check_resource("0ne00000A0A/registrations/dev-1");
            let _ = token.signed_with("c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ==");
            let _ = format!("{token:?}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.len() < 200, "a SAS error grows with the input: {message}");
        }
    }
}
