//! Hex text of bytes: lower case for ids, tokens and log values, upper case for certificate
//! thumbprints and serials (as DPS shows them). Thin wrapper over the `hex` crate so callers share
//! one encoder instead of a `format!` a byte.

pub fn lower(data: &[u8]) -> String {
    hex::encode(data)
}

pub fn upper(data: &[u8]) -> String {
    hex::encode_upper(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_cases_two_digits_a_byte() {
        assert_eq!(super::lower(&[0x00, 0x0a, 0xff]), "000aff");
        assert_eq!(super::upper(&[0x00, 0x0a, 0xff]), "000AFF");
        assert_eq!(super::lower(&[]), "");
    }
}
