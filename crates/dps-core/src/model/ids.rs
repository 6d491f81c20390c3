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
    /// Multi-byte input is refused like any other bad input (no byte slicing of the text), and
    /// the error quotes at most [`ECHO_CHARS`] characters of it.
    pub fn parse(s: &str) -> Result<IdScope, String> {
        let digits = s
            .get(..3)
            .filter(|prefix| prefix.eq_ignore_ascii_case("0ne"))
            .and_then(|_| s.get(3..))
            .filter(|rest| rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        match digits {
            Some(digits) => Ok(IdScope(format!("0ne{}", digits.to_ascii_uppercase()))),
            None => Err(format!("{} is not an ID scope (expected 0ne followed by 8 hex digits)", echo(s))),
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
/// alphanumeric and ending with an alphanumeric or `-` (docs/protocol.md, "Registration ids").
pub fn validate_registration_id(id: &str) -> Result<(), String> {
    validate_id("registration id", id, 128)
}

/// Enrollment group ids follow the same grammar as registration ids.
pub fn validate_group_id(id: &str) -> Result<(), String> {
    validate_id("enrollment group id", id, 128)
}

/// How many characters of a refused id an error message quotes: ids come from devices, and an
/// error (which is logged) must not grow with whatever a peer sends.
pub(crate) const ECHO_CHARS: usize = 140;

/// `text` quoted for an error message, cut (on a character boundary) after [`ECHO_CHARS`]
/// characters.
pub(crate) fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} characters)", text.get(..cut).unwrap_or_default(), text.chars().count()),
        None => format!("{text:?}"),
    }
}

fn validate_id(what: &str, id: &str, max: usize) -> Result<(), String> {
    let length = id.chars().count();
    if id.is_empty() || length > max {
        return Err(format!("{what} must be 1 to {max} characters long, got {length}"));
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
        return Err(format!("DPS name {} must be 3 to 64 letters, digits or hyphens", echo(name)));
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
        assert!(IdScope::parse("0ne00000A0AA").is_err());
        assert!(IdScope::parse("0ne+0000A0A").is_err());
        assert!(IdScope::parse("0n\u{20ac}456789").is_err());
        assert!(IdScope::parse("0ne\u{20ac}45678").is_err());
    }

    #[test]
    fn id_scope_with_multibyte_characters_is_refused_not_a_panic() {
        // 11 bytes with a 2-byte character across byte 3 (the issue's `0n%C3%A9AAAAAAA`), across
        // byte 2 and at the end; 3- and 4-byte characters; 11 characters of more than 11 bytes.
        for bad in [
            "0n\u{e9}AAAAAAA",
            "0\u{e9}eAAAAAAA",
            "0neAAAAAA\u{e9}",
            "0ne\u{20ac}AAAAA",
            "0ne\u{1f600}AAAA",
            "\u{1f600}\u{1f600}\u{e9}",
            "0né0000000",
            "0ne0000000é",
            "\u{e9}",
            "",
        ] {
            let e = IdScope::parse(bad).expect_err(bad);
            assert!(e.contains("is not an ID scope"), "{e}");
        }
    }

    #[test]
    fn errors_quote_a_bounded_prefix() {
        let long = "é".repeat(100_000);
        let e = IdScope::parse(&long).expect_err("refused");
        assert!(e.len() < 600, "{} bytes", e.len());
        assert!(e.contains("(100000 characters)"), "{e}");
        assert_eq!(echo("ab"), "\"ab\"");
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
    fn registration_ids_with_multibyte_characters_are_refused_not_a_panic() {
        for bad in ["é", "\u{1f600}", "dev-\u{20ac}", "\u{e9}dev", "dev\u{e9}", &"é".repeat(64), &"é".repeat(200)] {
            assert!(validate_registration_id(bad).is_err(), "{bad}");
            assert!(validate_group_id(bad).is_err(), "{bad}");
        }
        // Lengths count characters: 100 two-byte characters are 100 characters, not 200.
        let e = validate_registration_id(&"é".repeat(100)).expect_err("refused for the character");
        assert!(e.contains("contains 'é'"), "{e}");
        let e = validate_registration_id(&"é".repeat(129)).expect_err("too long");
        assert!(e.contains("got 129"), "{e}");
        assert!(validate_instance_name("dé-ps").is_err());
        assert!(validate_instance_name(&"é".repeat(30)).is_err());
    }

    #[test]
    fn instance_name_grammar() {
        assert!(validate_instance_name("my-dps").is_ok());
        for bad in ["ab", "-abc", "abc-", "12345", "a_b_c", &"a".repeat(65)] {
            assert!(validate_instance_name(bad).is_err(), "{bad}");
        }
    }
}
