//! TPM 2.0 marshalling: big-endian integers and `TPM2B_*` (a `u16` size, then that many bytes).
//!
//! The reader never panics: every read is bounds-checked and reports what was missing.

/// A read ran past the end of the input; `.0` names the field that was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Short(pub &'static str);

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Short> {
        let end = self.pos.checked_add(n).ok_or(Short(what))?;
        let out = self.buf.get(self.pos..end).ok_or(Short(what))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Short> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Short> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B_*`: its content, without the size.
    pub(crate) fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], Short> {
        let n = self.u16(what)?;
        self.bytes(usize::from(n), what)
    }
}

/// Appends `TPM2B(data)`. Callers only marshal bounded, self-made data (< 64 KiB).
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, data: &[u8]) {
    let n = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(data.get(..usize::from(n)).unwrap_or(data));
}

/// `TPM2B(data)` as a new buffer.
pub(crate) fn tpm2b(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2);
    put_tpm2b(&mut out, data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_and_reports_what_is_short() {
        let mut r = Reader::new(&[0x00, 0x02, 0xAB, 0xCD, 0x01]);
        assert_eq!(r.tpm2b("field"), Ok(&[0xAB, 0xCD][..]));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.u16("tail"), Err(Short("tail")));
        let mut r = Reader::new(&[0xFF, 0xFF, 0x00]);
        assert_eq!(r.tpm2b("big"), Err(Short("big")));
        let mut r = Reader::new(&[]);
        assert_eq!(r.u32("x"), Err(Short("x")));
    }

    #[test]
    fn writer_prefixes_the_size() {
        assert_eq!(tpm2b(&[1, 2, 3]), vec![0, 3, 1, 2, 3]);
        assert_eq!(tpm2b(&[]), vec![0, 0]);
    }
}
