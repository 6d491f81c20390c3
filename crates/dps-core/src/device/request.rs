//! The parts of a device request every transport shares: the api-version and the register body.

use serde_json::Value;

use crate::error::{Error, Result};

/// The largest device message (DPS's 96 KB limit).
pub const MAX_MESSAGE: usize = 96 * 1024;

/// A device api-version (`2019-03-31`, `2021-11-01-preview`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiVersion(String);

impl ApiVersion {
    /// Parses an api-version: `YYYY-MM-DD`, optionally followed by `-` and letters or digits.
    pub fn parse(v: &str) -> Result<ApiVersion> {
        let bad = || Error::Invalid(format!("api-version {:?} is not a valid api-version", excerpt(v, 40)));
        let (date, rest) = match v.char_indices().nth(10) {
            Some((i, _)) => (v.get(..i).ok_or_else(bad)?, v.get(i..).ok_or_else(bad)?),
            None => (v, ""),
        };
        let date_ok = date.len() == 10
            && date.chars().enumerate().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
        let rest_ok = rest.is_empty()
            || rest.strip_prefix('-').is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
        if date_ok && rest_ok {
            Ok(ApiVersion(v.to_owned()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Before 2019-04-15 a re-provision to the same hub reports `initialAssignment`
    /// (docs/protocol.md, "Registration operations").
    pub fn reports_legacy_substatus(&self) -> bool {
        self.0.as_str() < "2019-04-15"
    }
}

/// A TPM device's public keys, as base64 `TPM2B_PUBLIC` (docs/protocol.md, "TPM attestation").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmKeys {
    pub endorsement_key: String,
    pub storage_root_key: Option<String>,
}

/// The register body, read leniently (docs/protocol.md, "Register request body"): absent, empty, `{}`,
/// `payload: null`, no `registrationId` (C# over MQTT and AMQP) are all fine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RegisterBody {
    pub registration_id: Option<String>,
    pub payload: Option<Value>,
    pub tpm: Option<TpmKeys>,
}

impl RegisterBody {
    pub fn parse(body: &[u8]) -> Result<RegisterBody> {
        if body.len() > MAX_MESSAGE {
            return Err(Error::TooLarge(format!(
                "the request body is larger than the {MAX_MESSAGE}-byte DPS message limit"
            )));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(RegisterBody::default());
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Error::Invalid(format!("the register body is not valid JSON: {e}")))?;
        let tpm = match v.get("tpm") {
            None | Some(Value::Null) => None,
            Some(t) => Some(TpmKeys {
                endorsement_key: t
                    .get("endorsementKey")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| Error::Invalid("tpm.endorsementKey is required when tpm is present".into()))?
                    .to_owned(),
                storage_root_key: t.get("storageRootKey").and_then(Value::as_str).map(str::to_owned),
            }),
        };
        Ok(RegisterBody {
            registration_id: v.get("registrationId").and_then(Value::as_str).map(str::to_owned),
            payload: v.get("payload").filter(|p| !p.is_null()).cloned(),
            tpm,
        })
    }

    /// Refuses a body whose `registrationId` is not the request's.
    pub fn check_registration_id(&self, registration_id: &str) -> Result<()> {
        match &self.registration_id {
            Some(id) if !id.eq_ignore_ascii_case(registration_id) => Err(Error::Invalid(format!(
                "registrationId {:?} in the body is not the request's registration id {:?}",
                excerpt(id, 130),
                excerpt(registration_id, 130)
            ))),
            _ => Ok(()),
        }
    }
}

/// At most `max` characters of untrusted text, for messages and logs.
pub fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in ["2019-03-31", "2021-06-01", "2021-11-01-preview", "2025-07-01-preview"] {
            assert!(ApiVersion::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2019",
            "2019-3-31",
            "latest",
            "2019-03-31-",
            "2019-03-31x",
            "2019-03-3é",
            "é019-03-31-x",
            "2019-03-31-é",
        ] {
            assert!(ApiVersion::parse(bad).is_err(), "{bad}");
        }
        assert!(ApiVersion::parse("2018-09-01-preview").expect("ok").reports_legacy_substatus());
        assert!(!ApiVersion::parse("2019-04-15").expect("ok").reports_legacy_substatus());
    }

    /// Found by the `http_device_route` fuzz target: the message quoted the whole registration id
    /// of the request path (tens of KB on HTTPS).
    #[test]
    fn a_registration_id_mismatch_quotes_excerpts() {
        let body = RegisterBody::parse(br#"{"registrationId":"dev"}"#).expect("body");
        let e = body.check_registration_id(&"d".repeat(60_000)).expect_err("mismatch");
        assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
    }

    #[test]
    fn bodies_are_lenient() {
        assert_eq!(RegisterBody::parse(b"").expect("empty"), RegisterBody::default());
        assert_eq!(RegisterBody::parse(b" \n").expect("blank"), RegisterBody::default());
        let b = RegisterBody::parse(br#"{"payload":null,"registrationId":"dev"}"#).expect("python");
        assert_eq!(b.registration_id.as_deref(), Some("dev"));
        assert!(b.payload.is_none());
        let b = RegisterBody::parse(br#"{"payload":{"a":1}}"#).expect("c#");
        assert!(b.registration_id.is_none() && b.payload.is_some());
        assert!(RegisterBody::parse(b"{").is_err());
        assert!(b.check_registration_id("any").is_ok());
        let b = RegisterBody::parse(br#"{"registrationId":"Dev"}"#).expect("ok");
        assert!(b.check_registration_id("dev").is_ok());
        assert!(b.check_registration_id("other").is_err());
        let t = RegisterBody::parse(br#"{"tpm":{"endorsementKey":"AAE=","storageRootKey":"AAI="}}"#).expect("tpm");
        assert_eq!(t.tpm.expect("tpm").endorsement_key, "AAE=");
        assert!(RegisterBody::parse(br#"{"tpm":{}}"#).is_err());
        assert!(matches!(RegisterBody::parse(&vec![b' '; MAX_MESSAGE + 1]), Err(Error::TooLarge(_))));
    }

    #[test]
    fn excerpts_respect_characters() {
        assert_eq!(excerpt("ééé", 2), "éé…");
        assert_eq!(excerpt("ab", 2), "ab");
    }
}
