//! The X.509 evidence path: a device's leaf facts and its chain against a group's CA, on
//! arbitrary DER.
//!
//! Input: chunks, each a 2-byte big-endian length and that many bytes (a short last chunk takes
//! what is left). The first chunk is the group's CA (DER, handed over as base64 as the store keeps
//! it), the others the presented chain, leaf first. Time: 2030-01-01.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_attest::{leaf_facts, verify_chain, OpensslDeviceCrypto, OpensslX509, MAX_CHAIN};
use dps_core::ports::{DeviceCrypto, X509Inspector};

/// The time the fuzzer's chains are checked at (the seeds are valid 2025 to 2125).
pub fn fuzz_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

/// Splits the input into chunks (see the module documentation).
pub fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = data {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.push(chunk);
        data = tail;
    }
    out
}

/// Joins chunks in the input format (for writing seeds).
pub fn join(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks {
        let n = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&chunk[..usize::from(n)]);
    }
    out
}

pub fn x509_evidence(data: &[u8]) {
    let parts = chunks(data);
    let Some((anchor, chain)) = parts.split_first() else { return };
    let anchor_b64 = dps_core::base64::encode(anchor);
    let chain: Vec<Vec<u8>> = chain.iter().map(|c| c.to_vec()).collect();
    let now = fuzz_now();
    if let Some(leaf) = chain.first() {
        let facts = leaf_facts(leaf, now);
        assert_eq!(facts.is_ok(), OpensslDeviceCrypto.leaf(leaf, now).is_ok());
        if let Ok(facts) = facts {
            assert_eq!(facts.sha256_thumbprint.len(), 64);
        }
    }
    let depth = verify_chain(&chain, &anchor_b64, now);
    if let Ok(depth) = depth {
        assert!(depth < chain.len().max(1) && chain.len() <= MAX_CHAIN, "depth {depth} of {}", chain.len());
        assert!(leaf_facts(&chain[0], now).is_ok(), "a verified chain has a usable leaf");
    }
    assert_eq!(depth.ok(), OpensslDeviceCrypto.chain_depth(&chain.clone().into(), &anchor_b64, now));
    // The service API's certificate upload parses the same bytes.
    if let Ok(parsed) = OpensslX509.parse(&anchor_b64) {
        assert!(parsed.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        if let Some(leaf) = chain.first() {
            let _ = OpensslX509.is_signed_by(&dps_core::base64::encode(leaf), &parsed.pem);
        }
    }
}
