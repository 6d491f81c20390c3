//! The ID scope, registration id, group id and instance name grammars.

use dps_core::model::{validate_group_id, validate_instance_name, validate_registration_id, IdScope};

/// Runs every validator on the bytes (as text, lossily), and checks what an accepted value must be.
/// Errors quote at most 140 characters of the input, escaped (`\u{1e}` is 6 bytes), so they stay
/// under 2 KB.
pub fn ids(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match IdScope::parse(&text) {
        Ok(scope) => {
            let s = scope.as_str();
            assert!(s.len() == 11 && s.starts_with("0ne") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{s}");
            assert_eq!(IdScope::parse(s).as_ref(), Ok(&scope), "an ID scope parses to itself");
            assert!(text.eq_ignore_ascii_case(s));
        }
        Err(e) => assert!(e.len() < 2048, "an ID scope error grows with the input ({} bytes)", e.len()),
    }
    for validate in [validate_registration_id, validate_group_id] {
        match validate(&text) {
            Ok(()) => {
                assert!(!text.is_empty() && text.len() <= 128 && text.is_ascii(), "{text:?} accepted");
            }
            Err(e) => assert!(e.len() < 2048, "an id error grows with the input ({} bytes)", e.len()),
        }
    }
    if validate_instance_name(&text).is_ok() {
        assert!((3..=64).contains(&text.len()) && text.is_ascii(), "{text:?} accepted as a DPS name");
    }
}
