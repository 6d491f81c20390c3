//! Standard base64 (RFC 4648, padded), as DPS keys and certificates use it. Thin wrapper over
//! the `base64` crate so callers share one strict engine.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes standard base64; `None` if it is not valid (characters, length or padding).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    STANDARD.decode(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_strict() {
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(decode("Zm9vYg=="), Some(b"foob".to_vec()));
        assert_eq!(decode("Zm9v YmFy"), None);
        assert_eq!(decode("Zm=v"), None);
        assert_eq!(decode("abc"), None);
        assert_eq!(decode(""), None);
    }
}
