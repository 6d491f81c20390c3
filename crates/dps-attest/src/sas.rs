//! SAS tokens: `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`, fields in any order.
//!
//! The signature is HMAC-SHA256 over the `sr` value *exactly as written in the token* (each SDK
//! encodes it differently and signs what it sends) + `\n` + `se`. `sig` is percent-decoded
//! (either hex case, `+` stays `+`) and base64-decoded, then compared in constant time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{ct_eq, hmac_sha256};

pub use dps_core::ports::SasError;

/// A parsed token. Fields are the raw text from the token.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    pub sr_raw: String,
    sig: Vec<u8>,
    pub se: u64,
    se_raw: String,
    /// `skn`: absent, empty, `registration`, or a policy name.
    pub skn: Option<String>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.sr_raw)
            .field("se", &self.se)
            .field("skn", &self.skn)
            .finish_non_exhaustive()
    }
}

/// Percent-decodes `s` into UTF-8; `+` is kept (every SDK encodes a literal plus as %2B).
/// `None` when an escape is malformed (`%` not followed by two hex digits, e.g. `%zz`, `%+F`,
/// a trailing `%`) or the result is not UTF-8: such text is refused, never passed through.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let escapes_well_formed =
        b.iter().enumerate().filter(|(_, c)| **c == b'%').all(
            |(i, _)| matches!(b.get(i + 1..i + 3), Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()),
        );
    if !escapes_well_formed {
        // The crate passes malformed escapes through unchanged; we refuse them instead.
        return None;
    }
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

impl SasToken {
    /// Parses an Authorization header value or a bare token (MQTT password).
    pub fn parse(text: &str) -> Result<SasToken, SasError> {
        let text = text.trim();
        let body = text
            .get(..22)
            .filter(|p| p.eq_ignore_ascii_case("SharedAccessSignature "))
            .map(|_| &text[22..])
            .ok_or(SasError::NotSas)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in body.trim().split('&') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k.to_ascii_lowercase().as_str() {
                "sr" => sr = Some(v.to_owned()),
                "sig" => sig = Some(v.to_owned()),
                "se" => se = Some(v.to_owned()),
                "skn" => skn = Some(v.to_owned()),
                _ => {}
            }
        }
        let sr_raw = sr.filter(|s| !s.is_empty()).ok_or(SasError::Missing("sr"))?;
        let sig_text = percent_decode(&sig.ok_or(SasError::Missing("sig"))?).ok_or(SasError::Malformed("sig"))?;
        let sig = dps_core::base64::decode(&sig_text).ok_or(SasError::Malformed("sig"))?;
        let se_raw = se.ok_or(SasError::Missing("se"))?;
        let se = se_raw.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or(SasError::Malformed("se"))?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let se = se.ceil() as u64;
        Ok(SasToken { sr_raw, sig, se, se_raw, skn })
    }

    /// When the token expires.
    pub fn expires(&self) -> SystemTime {
        // Absurd expiries are capped at the end of year 9999.
        UNIX_EPOCH + Duration::from_secs(self.se.min(253_402_300_799))
    }

    /// The resource, percent-decoded.
    pub fn resource(&self) -> Option<String> {
        percent_decode(&self.sr_raw)
    }

    /// Checks expiry (with `skew` of tolerance for device clocks) at `now`.
    pub fn check_expiry(&self, now: SystemTime, skew: Duration) -> Result<(), SasError> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if self.se + skew.as_secs() < now {
            return Err(SasError::Expired(now - self.se));
        }
        Ok(())
    }

    /// Whether the decoded resource equals `expected`, ignoring case.
    pub fn check_resource(&self, expected: &str) -> Result<(), SasError> {
        let actual = self.resource().ok_or(SasError::Malformed("sr"))?;
        if actual.trim_end_matches('/').eq_ignore_ascii_case(expected) {
            Ok(())
        } else {
            Err(SasError::WrongResource { expected: expected.to_owned(), actual })
        }
    }

    /// Whether the signature was made with base64 key `key_b64` (constant-time).
    pub fn signed_with(&self, key_b64: &str) -> bool {
        let Some(key) = dps_core::base64::decode(key_b64) else { return false };
        let mac = hmac_sha256(&key, format!("{}\n{}", self.sr_raw, self.se_raw).as_bytes());
        ct_eq(&mac, &self.sig)
    }
}

/// Builds a token the way the Node SDK does (unencoded `sr`, `encodeURIComponent` signature).
/// For tests and for the CLI's own service calls.
pub fn make_token(resource: &str, key_b64: &str, expiry_unix: u64, skn: Option<&str>) -> Option<String> {
    let key = dps_core::base64::decode(key_b64)?;
    let sig = dps_core::base64::encode(&hmac_sha256(&key, format!("{resource}\n{expiry_unix}").as_bytes()));
    let sig = sig.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    let mut t = format!("SharedAccessSignature sr={resource}&sig={sig}&se={expiry_unix}");
    if let Some(n) = skn {
        t.push_str(&format!("&skn={n}"));
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ==";

    fn sign(sr: &str, se: &str) -> String {
        let key = dps_core::base64::decode(KEY).expect("key");
        dps_core::base64::encode(&hmac_sha256(&key, format!("{sr}\n{se}").as_bytes()))
    }

    #[test]
    fn accepts_every_sdk_encoding() {
        let se = "4102444800";
        for (sr, sig_enc, skn) in [
            ("0ne00000A0A%2Fregistrations%2Fdev-1", "upper", None), // Python
            ("0ne00000A0A/registrations/dev-1", "upper", Some("registration")), // Node
            ("0ne00000a0a%2fregistrations%2fdev-1", "lower", Some("registration")), // C
            ("0ne00000A0A/registrations/dev-1", "upper", Some("")), // Java
        ] {
            let sig = sign(sr, se);
            // Escapes in the SDK's case; the base64 itself keeps its case.
            let enc = if sig_enc == "lower" {
                sig.replace('+', "%2b").replace('/', "%2f").replace('=', "%3d")
            } else {
                sig.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
            };
            let mut t = format!("SharedAccessSignature se={se}&sig={enc}&sr={sr}");
            if let Some(n) = skn {
                t.push_str(&format!("&skn={n}"));
            }
            let tok = SasToken::parse(&t).expect("parses");
            assert!(tok.signed_with(KEY), "{t}");
            tok.check_resource("0ne00000A0A/registrations/dev-1").expect("resource");
            assert!(!tok.signed_with("b3RoZXIta2V5LW90aGVyLWtleS1vdGhlci1rZXk="), "wrong key refused");
        }
    }

    #[test]
    fn expiry_and_resource_are_checked() {
        let t = make_token("0ne00000A0A/registrations/dev", KEY, 1_000, Some("registration")).expect("token");
        let tok = SasToken::parse(&t).expect("parse");
        assert!(matches!(
            tok.check_expiry(UNIX_EPOCH + Duration::from_secs(2_000), Duration::from_secs(60)),
            Err(SasError::Expired(1000))
        ));
        assert!(
            tok.check_expiry(UNIX_EPOCH + Duration::from_secs(1_030), Duration::from_secs(60)).is_ok(),
            "skew tolerated"
        );
        assert!(tok.check_resource("0ne00000A0A/registrations/other").is_err());
    }

    #[test]
    fn percent_decoding_refuses_malformed_escapes() {
        assert_eq!(percent_decode("0ne%2Fregistrations%2fdev+1").as_deref(), Some("0ne/registrations/dev+1"));
        assert_eq!(percent_decode("100%25").as_deref(), Some("100%"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("caf\u{e9}"));
        // `%+F` once decoded to 0x0F (`from_str_radix` takes a sign); `%-1`, `% F`, `%zz`, a
        // lone or trailing `%`, and bytes that are not UTF-8 are all refused.
        for bad in ["%+F", "%-1", "% F", "%zz", "%", "ab%", "ab%4", "%%41", "%FF", "%C3"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
        assert_eq!(SasToken::parse("SharedAccessSignature sr=a&sig=YQ%+F&se=1"), Err(SasError::Malformed("sig")));
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        assert_eq!(SasToken::parse("Bearer abc"), Err(SasError::NotSas));
        assert_eq!(SasToken::parse("SharedAccessSignature sig=abc&se=1"), Err(SasError::Missing("sr")));
        assert_eq!(SasToken::parse("SharedAccessSignature sr=a&sig=%zz&se=1"), Err(SasError::Malformed("sig")));
        assert_eq!(SasToken::parse("SharedAccessSignature sr=a&sig=YQ==&se=soon"), Err(SasError::Malformed("se")));
        let e = SasToken::parse("SharedAccessSignature sr=a&sig=!!!&se=1").expect_err("bad sig");
        assert!(!e.to_string().contains("!!!"));
    }
}
