//! The 8-byte AMQP protocol header that opens the byte stream (after TLS): which layer comes
//! next. Pure; the driver feeds it the bytes read so far.

/// `AMQP 3 1 0 0`: a SASL layer follows (symmetric key: PLAIN; TPM).
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// `AMQP 0 1 0 0`: AMQP at once, no SASL (X.509: the identity is the TLS client chain).
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// Still a prefix of a header we serve; read more.
    NeedMore,
    Sasl,
    Amqp,
    /// Not a header we serve (another protocol id or version, or not AMQP at all). The answer
    /// is `reply` (the header we would speak instead), then close.
    Unsupported {
        reply: [u8; 8],
    },
}

/// Classifies the bytes read so far (only the first 8 matter). Garbage is recognised as soon as
/// it can no longer become a header we serve, so a client is not left waiting.
pub fn sniff(bytes: &[u8]) -> Sniff {
    let head = bytes.get(..8).unwrap_or(bytes);
    if head.len() == 8 {
        if head == SASL_HEADER {
            return Sniff::Sasl;
        }
        if head == AMQP_HEADER {
            return Sniff::Amqp;
        }
    } else if SASL_HEADER.starts_with(head) || AMQP_HEADER.starts_with(head) {
        return Sniff::NeedMore;
    }
    // A client that asked for plain AMQP hears the plain header; everyone else the SASL one
    // (what symmetric-key and TPM devices, the common case, speak).
    let plain = head.get(..5) == Some(&AMQP_HEADER[..5]);
    Sniff::Unsupported { reply: if plain { AMQP_HEADER } else { SASL_HEADER } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_headers_and_waits_on_their_prefixes() {
        assert_eq!(sniff(&SASL_HEADER), Sniff::Sasl);
        assert_eq!(sniff(&AMQP_HEADER), Sniff::Amqp);
        for n in 0..8 {
            assert_eq!(sniff(&SASL_HEADER[..n]), Sniff::NeedMore, "{n}");
            assert_eq!(sniff(&AMQP_HEADER[..n]), Sniff::NeedMore, "{n}");
        }
        // Bytes after the header are the next layer's, not the header's.
        let mut more = SASL_HEADER.to_vec();
        more.extend_from_slice(b"\x00\x00\x00\x20");
        assert_eq!(sniff(&more), Sniff::Sasl);
    }

    #[test]
    fn refuses_other_protocols_and_versions_early() {
        assert_eq!(sniff(b"G"), Sniff::Unsupported { reply: SASL_HEADER });
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniff::Unsupported { reply: SASL_HEADER });
        // TLS inside TLS (protocol id 2) and unknown versions.
        assert_eq!(sniff(b"AMQP\x02\x01\x00\x00"), Sniff::Unsupported { reply: SASL_HEADER });
        assert_eq!(sniff(b"AMQP\x03\x01\x00\x01"), Sniff::Unsupported { reply: SASL_HEADER });
        assert_eq!(sniff(b"AMQP\x00\x02\x00\x00"), Sniff::Unsupported { reply: AMQP_HEADER });
        assert_eq!(sniff(b"AMQP\x00\x01\x01"), Sniff::Unsupported { reply: AMQP_HEADER });
        // AMQP 0-9-1 clients send "AMQP\0\0\9\1".
        assert_eq!(sniff(b"AMQP\x00\x00\x09\x01"), Sniff::Unsupported { reply: AMQP_HEADER });
    }
}
