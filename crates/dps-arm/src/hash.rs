//! Deterministic hashing for `uniqueString()` and `guid()`, without dependencies: two 64-bit
//! FNV-1a passes with different seeds, each finished with the SplitMix64 mixer, give 128 bits.
//!
//! The results are stable across runs, platforms and versions of this crate, but they are NOT the
//! values Azure computes (Azure's algorithm is not public): a name built with `uniqueString()` here
//! differs from the one the same template gets in Azure.

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const SECOND_SEED: u64 = FNV_OFFSET ^ 0x9e37_79b9_7f4a_7c15;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    data.iter().fold(seed, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 128 bits from the parts; each part is length-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
pub(crate) fn hash128(parts: &[&str]) -> u128 {
    let mut data = Vec::new();
    for part in parts {
        data.extend_from_slice(&(part.len() as u64).to_le_bytes());
        data.extend_from_slice(part.as_bytes());
    }
    let high = mix(fnv1a(FNV_OFFSET, &data));
    let low = mix(fnv1a(SECOND_SEED, &data));
    (u128::from(high) << 64) | u128::from(low)
}

/// 13 characters of lowercase base32 (`a`-`z`, `2`-`7`), like Azure's `uniqueString()` in shape.
pub(crate) fn unique_string(parts: &[&str]) -> String {
    let hash = hash128(parts);
    (1..=13).map(|i| char::from(BASE32[((hash >> (128 - 5 * i)) & 31) as usize])).collect()
}

/// A UUID-shaped string (version 5 and RFC 4122 variant bits set), lowercase.
pub(crate) fn guid(parts: &[&str]) -> String {
    let mut bytes = hash128(parts).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::{guid, unique_string};

    #[test]
    fn unique_string_is_stable_and_shaped() {
        let a = unique_string(&["/subscriptions/x/resourceGroups/rg"]);
        assert_eq!(a, unique_string(&["/subscriptions/x/resourceGroups/rg"]));
        assert_eq!(a.len(), 13);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        assert_ne!(a, unique_string(&["/subscriptions/x/resourceGroups/rg2"]));
        assert_ne!(unique_string(&["ab", "c"]), unique_string(&["a", "bc"]));
    }

    #[test]
    fn guid_is_stable_and_shaped() {
        let g = guid(&["a", "b"]);
        assert_eq!(g, guid(&["a", "b"]));
        assert_ne!(g, guid(&["a", "c"]));
        let groups: Vec<usize> = g.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(g.as_bytes()[14], b'5');
        assert!(matches!(g.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
    }
}
