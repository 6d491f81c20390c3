//! Reading what a client offered, inside OpenSSL's ClientHello callback.
//!
//! The extension bodies are parsed here by small pure functions (RFC 8446 §4.2 layouts); a
//! malformed extension yields an empty list, never a failed handshake: OpenSSL itself decides
//! whether the ClientHello is acceptable.

use dps_core::tls::{is_grease, Offered};
use openssl::ssl::SslRef;

use crate::ffi::client_hello_ext;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// Captures the offer of the ClientHello being processed.
pub(crate) fn capture(ssl: &SslRef) -> Offered {
    let legacy_version = ssl
        .client_hello_legacy_version()
        .map(|v| match v {
            openssl::ssl::SslVersion::SSL3 => 0x0300,
            openssl::ssl::SslVersion::TLS1 => 0x0301,
            openssl::ssl::SslVersion::TLS1_1 => 0x0302,
            openssl::ssl::SslVersion::TLS1_2 => 0x0303,
            _ => 0x0304,
        })
        .unwrap_or(0);
    Offered {
        legacy_version,
        supported_versions: client_hello_ext(ssl, EXT_SUPPORTED_VERSIONS).map(u16_list_u8len),
        cipher_suites: ssl.client_hello_ciphers().map(u16_pairs).unwrap_or_default(),
        groups: client_hello_ext(ssl, EXT_SUPPORTED_GROUPS).map(u16_list_u16len).unwrap_or_default(),
        signature_algorithms: client_hello_ext(ssl, EXT_SIGNATURE_ALGORITHMS).map(u16_list_u16len).unwrap_or_default(),
        sni: client_hello_ext(ssl, EXT_SERVER_NAME).and_then(server_name),
        alpn: client_hello_ext(ssl, EXT_ALPN).map(alpn).unwrap_or_default(),
    }
}

fn u16_pairs(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).filter(|c| !is_grease(*c)).collect()
}

/// `uint16 list<2..2^16-2>` with a two-byte length.
fn u16_list_u16len(b: &[u8]) -> Vec<u16> {
    match b {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => u16_pairs(rest),
        _ => Vec::new(),
    }
}

/// `ProtocolVersion versions<2..254>` with a one-byte length (supported_versions).
fn u16_list_u8len(b: &[u8]) -> Vec<u16> {
    match b {
        [len, rest @ ..] if usize::from(*len) == rest.len() => u16_pairs(rest),
        _ => Vec::new(),
    }
}

/// The first host_name of a server_name extension.
fn server_name(b: &[u8]) -> Option<String> {
    let [l0, l1, body @ ..] = b else { return None };
    if usize::from(u16::from_be_bytes([*l0, *l1])) != body.len() {
        return None;
    }
    let mut rest: &[u8] = body;
    while let [kind, n0, n1, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*n0, *n1]));
        let (name, next) = (tail.get(..n)?, tail.get(n..)?);
        if *kind == 0 {
            return std::str::from_utf8(name).ok().map(str::to_owned);
        }
        rest = next;
    }
    None
}

/// ALPN protocol names (RFC 7301).
fn alpn(b: &[u8]) -> Vec<String> {
    let [l0, l1, rest @ ..] = b else { return Vec::new() };
    if usize::from(u16::from_be_bytes([*l0, *l1])) != rest.len() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = rest;
    while let [n, tail @ ..] = rest {
        let n = usize::from(*n);
        let (Some(name), Some(next)) = (tail.get(..n), tail.get(n..)) else { break };
        out.push(String::from_utf8_lossy(name).into_owned());
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_drops_grease() {
        assert_eq!(u16_list_u16len(&[0, 6, 0x2a, 0x2a, 0, 0x17, 0, 0x18]), vec![0x17, 0x18]);
        assert_eq!(u16_list_u16len(&[0, 9, 0, 0x17]), Vec::<u16>::new(), "bad length");
        assert_eq!(u16_list_u16len(&[]), Vec::<u16>::new());
    }

    #[test]
    fn parses_supported_versions() {
        assert_eq!(u16_list_u8len(&[4, 3, 4, 3, 3]), vec![0x0304, 0x0303]);
        assert_eq!(u16_list_u8len(&[5, 3, 4]), Vec::<u16>::new());
    }

    #[test]
    fn parses_server_name() {
        let mut b = vec![0, 14, 0, 0, 11];
        b.extend_from_slice(b"example.org");
        assert_eq!(server_name(&b).as_deref(), Some("example.org"));
        assert_eq!(server_name(&b[..8]), None, "truncated");
        assert_eq!(server_name(&[0, 4, 0, 0, 9, b'a']), None, "name longer than the extension");
    }

    #[test]
    fn parses_alpn() {
        let b = [0, 12, 2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1'];
        assert_eq!(alpn(&b), vec!["h2".to_owned(), "http/1.1".to_owned()]);
        assert_eq!(alpn(&[0, 3, 5, b'a', b'b']), Vec::<String>::new(), "truncated entry stops the list");
    }
}
