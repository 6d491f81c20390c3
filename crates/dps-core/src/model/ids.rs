use std::fmt;

/// An instance's ID scope: `0ne` + 8 upper-case hex digits, generated, unique, immutable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct IdScope(String);

impl IdScope {
    /// The scope for 4 random bytes.
    pub fn from_bytes(b: [u8; 4]) -> IdScope {
        IdScope(format!("0ne{:08X}", u32::from_be_bytes(b)))
    }

    /// Parses an ID scope as devices send it (case-insensitive).
    pub fn parse(s: &str) -> Result<IdScope, String> {
        // `get`, not slicing: the text comes from peers and may have a multi-byte char at 3.
        match (s.len() == 11).then(|| s.get(..3).zip(s.get(3..))).flatten() {
            Some((prefix, hex)) if prefix.eq_ignore_ascii_case("0ne") && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
                Ok(IdScope(format!("0ne{}", hex.to_ascii_uppercase())))
            }
            _ => Err(format!("{s:?} is not an ID scope (expected 0ne followed by 8 hex digits)")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// DPS registration ids: ≤128 characters, alphanumerics and `- . _ :`, starting with an
/// alphanumeric and ending with an alphanumeric or `-` (dps-protocol.md §1.4).
pub fn validate_registration_id(id: &str) -> Result<(), String> {
    validate_id("registration id", id, 128)
}

/// Enrollment group ids follow the same grammar as registration ids.
pub fn validate_group_id(id: &str) -> Result<(), String> {
    validate_id("enrollment group id", id, 128)
}

fn validate_id(what: &str, id: &str, max: usize) -> Result<(), String> {
    if id.is_empty() || id.len() > max {
        return Err(format!("{what} must be 1 to {max} characters long, got {}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))) {
        return Err(format!("{what} {id:?} contains {c:?}; allowed are letters, digits and - . _ :"));
    }
    let (first, last) = (id.chars().next().unwrap_or('-'), id.chars().last().unwrap_or('-'));
    if !first.is_ascii_alphanumeric() {
        return Err(format!("{what} {id:?} must start with a letter or digit"));
    }
    if !(last.is_ascii_alphanumeric() || last == '-') {
        return Err(format!("{what} {id:?} must end with a letter, digit or -"));
    }
    Ok(())
}

/// DPS resource names: 3-64 alphanumerics and hyphens, not starting with a hyphen, ending with an
/// alphanumeric, not all digits.
pub fn validate_instance_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !(3..=64).contains(&name.len()) || !ok_chars {
        return Err(format!("DPS name {name:?} must be 3 to 64 letters, digits or hyphens"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("DPS name {name:?} must start and end with a letter or digit"));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("DPS name {name:?} must not be all digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_scope_format() {
        assert_eq!(IdScope::from_bytes([0, 0, 0x0a, 0x0a]).as_str(), "0ne00000A0A");
        assert_eq!(IdScope::parse("0NE00000a0a").map(|s| s.to_string()), Ok("0ne00000A0A".to_owned()));
        assert!(IdScope::parse("0ne0000").is_err());
        assert!(IdScope::parse("1ne00000A0A").is_err());
        // 11 bytes with a multi-byte char across byte 3: refused, no panic.
        assert!(IdScope::parse("0n\u{20ac}456789").is_err());
        assert!(IdScope::parse("0ne\u{20ac}45678").is_err());
    }

    #[test]
    fn registration_id_grammar() {
        for ok in ["dev-01", "a", "A.b_c:d-", "x".repeat(128).as_str()] {
            assert!(validate_registration_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-dev", "dev.", "dev/1", "dév", "x".repeat(129).as_str(), "a b"] {
            assert!(validate_registration_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_name_grammar() {
        assert!(validate_instance_name("my-dps").is_ok());
        for bad in ["ab", "-abc", "abc-", "12345", "a_b_c", &"a".repeat(65)] {
            assert!(validate_instance_name(bad).is_err(), "{bad}");
        }
    }
}
