//! The byte formats of the AMQP SASL `TPM` mechanism (docs/tpm.md, "AMQP SASL TPM messages"):
//! the client's init and responses, and the activation blob cut into challenges. Framing and
//! the exchange itself belong to the AMQP listener.

/// The first challenge: exactly one zero byte (the Node client answers with its SRK only when
/// the challenge is one byte long).
pub const FIRST_CHALLENGE: [u8; 1] = [0x00];
/// Blob bytes per challenge: C's limit for a frame's data is 470 bytes.
pub const SEGMENT_LEN: usize = 400;
/// C# keeps a two-bit sequence number, so at most four segments.
pub const MAX_SEGMENTS: usize = 4;

const SEGMENT: u8 = 0x80;
const LAST: u8 = 0x40;

/// A malformed SASL `TPM` message from a client, or a blob too long to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslTpmError {
    #[error("the SASL TPM init must be 0x00, ID scope, 0x00, registration ID, 0x00, endorsement key")]
    Init,
    #[error("the SASL TPM {0} response must start with 0x00")]
    Response(&'static str),
    #[error("the SASL TPM {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("an activation blob of {0} bytes does not fit in {MAX_SEGMENTS} SASL challenges")]
    BlobTooLong(usize),
}

/// What a client's `sasl-init` initial response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInit<'a> {
    pub id_scope: &'a str,
    pub registration_id: &'a str,
    /// The EK's `TPM2B_PUBLIC` (check it with `TpmRsaKey::endorsement_key`).
    pub endorsement_key: &'a [u8],
}

/// Parses `0x00 ‖ idScope ‖ 0x00 ‖ registrationId ‖ 0x00 ‖ EK` (Node and C# send exactly this).
pub fn parse_init(data: &[u8]) -> Result<SaslInit<'_>, SaslTpmError> {
    let rest = data.strip_prefix(&[0x00]).ok_or(SaslTpmError::Init)?;
    let mut parts = rest.splitn(3, |b| *b == 0);
    let (Some(scope), Some(rid), Some(ek)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslTpmError::Init);
    };
    if scope.is_empty() || rid.is_empty() || ek.is_empty() {
        return Err(SaslTpmError::Init);
    }
    Ok(SaslInit {
        id_scope: std::str::from_utf8(scope).map_err(|_| SaslTpmError::NotUtf8("ID scope"))?,
        registration_id: std::str::from_utf8(rid).map_err(|_| SaslTpmError::NotUtf8("registration ID"))?,
        endorsement_key: ek,
    })
}

/// The answer to [`FIRST_CHALLENGE`]: `0x00 ‖ SRK` → the SRK's `TPM2B_PUBLIC`.
pub fn parse_srk_response(data: &[u8]) -> Result<&[u8], SaslTpmError> {
    data.strip_prefix(&[0x00]).filter(|s| !s.is_empty()).ok_or(SaslTpmError::Response("storage root key"))
}

/// The answer to the last segment: `0x00 ‖ SAS token`.
pub fn parse_sas_response(data: &[u8]) -> Result<&str, SaslTpmError> {
    let sas = data.strip_prefix(&[0x00]).ok_or(SaslTpmError::Response("final"))?;
    std::str::from_utf8(sas).map_err(|_| SaslTpmError::NotUtf8("SAS token"))
}

/// The activation blob as SASL challenges: each is a control byte (`0x80 | seq`, or
/// `0xC0 | seq` for the last) and at most [`SEGMENT_LEN`] blob bytes. The client answers each
/// but the last with `0x00`.
pub fn challenge_segments(blob: &[u8]) -> Result<Vec<Vec<u8>>, SaslTpmError> {
    let chunks: Vec<&[u8]> = blob.chunks(SEGMENT_LEN).collect();
    if chunks.is_empty() || chunks.len() > MAX_SEGMENTS {
        return Err(SaslTpmError::BlobTooLong(blob.len()));
    }
    let last = chunks.len() - 1;
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(seq, chunk)| {
            let last_flag = if seq == last { LAST } else { 0 };
            let control = SEGMENT | last_flag | (u8::try_from(seq).unwrap_or(0) & 0x03);
            let mut c = Vec::with_capacity(1 + chunk.len());
            c.push(control);
            c.extend_from_slice(chunk);
            c
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_carry_the_blob_in_at_most_four_numbered_challenges() {
        let blob: Vec<u8> = (0..766u32).map(|i| (i % 251) as u8).collect();
        let segs = challenge_segments(&blob).expect("fits");
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0][0], 0x80);
        assert_eq!(segs[1][0], 0xC1);
        assert!(segs.iter().all(|s| s.len() <= SEGMENT_LEN + 1));
        let joined: Vec<u8> = segs.iter().flat_map(|s| s[1..].to_vec()).collect();
        assert_eq!(joined, blob);
        let one = challenge_segments(&[1, 2, 3]).expect("fits");
        assert_eq!(one, vec![vec![0xC0, 1, 2, 3]]);
        let four = challenge_segments(&vec![0; 4 * SEGMENT_LEN]).expect("fits");
        assert_eq!(four.iter().map(|s| s[0]).collect::<Vec<_>>(), [0x80, 0x81, 0x82, 0xC3]);
        assert_eq!(challenge_segments(&vec![0; 4 * SEGMENT_LEN + 1]), Err(SaslTpmError::BlobTooLong(1601)));
        assert_eq!(challenge_segments(&[]), Err(SaslTpmError::BlobTooLong(0)));
    }

    #[test]
    fn client_messages_parse_and_garbage_is_refused() {
        let mut init = vec![0];
        init.extend_from_slice(b"0ne00000A0A\0tpm-dev\0");
        init.extend_from_slice(&[0x01, 0x3A, 0x00, 0x00]); // EK bytes may contain zeros
        let i = parse_init(&init).expect("init");
        assert_eq!((i.id_scope, i.registration_id), ("0ne00000A0A", "tpm-dev"));
        assert_eq!(i.endorsement_key, &[0x01, 0x3A, 0x00, 0x00]);
        for bad in
            [&b""[..], b"\0", b"x0ne\0id\0ek", b"\0scope\0id", b"\0scope\0id\0", b"\0\0id\0ek", b"\0\xff\0id\0ek"]
        {
            assert!(parse_init(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_srk_response(&[0, 1, 2]), Ok(&[1, 2][..]));
        assert!(parse_srk_response(&[0]).is_err());
        assert!(parse_srk_response(&[1, 2]).is_err());
        assert_eq!(parse_sas_response(b"\0SharedAccessSignature sr=x"), Ok("SharedAccessSignature sr=x"));
        assert!(parse_sas_response(b"SharedAccessSignature").is_err());
        assert!(parse_sas_response(b"\0\xff").is_err());
    }
}
