//! A walk over AMQP 1.0 encoded values that every byte a peer sends goes through before
//! `serde_amqp` decodes it (docs/amqp.md, "Encoded values"). Pure; fuzzed.
//!
//! `serde_amqp` 0.18.0 trusts what compounds declare: it recurses once per nesting level (a
//! 32 KB frame of nested lists overflows a thread's stack, which aborts the process), decodes up
//! to 65,536 zero-width array elements from a 10-byte array that declares a large size (an
//! array of such arrays turns a 10 KB frame into gigabytes of decoded values), and ignores a
//! compound's size (a size smaller than its own count field wraps around). This walk refuses
//! all three before the decoder runs, and costs one pass over the bytes.

/// How deep values may nest: lists, maps, arrays and described values each count one. DPS's
/// messages and performatives need fewer than ten.
pub const MAX_DEPTH: usize = 32;

/// Why bytes are not well-formed AMQP values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("an encoded value ends before the size it declares")]
    Truncated,
    #[error("encoded values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("a compound value declares a size of {0} bytes, too small for its own header")]
    SizeTooSmall(usize),
    #[error("a compound value's elements do not fill the size it declares")]
    SizeMismatch,
    #[error("an array declares {count} elements in {size} bytes")]
    TooManyElements { count: usize, size: usize },
    #[error("format code {0:#04x} is not an AMQP type")]
    BadCode(u8),
    #[error("a frame body must be a described value")]
    NotDescribed,
}

/// Checks the described value at the front of `bytes` (a frame body: the performative, which a
/// payload may follow); returns its length. It must be described (start with `0x00`): the
/// decoder also reads a descriptor without it, and would then read on past the value walked.
pub fn check_described(bytes: &[u8]) -> Result<usize, EncodingError> {
    if bytes.first() != Some(&0x00) {
        return Err(EncodingError::NotDescribed);
    }
    check_value(bytes)
}

/// Checks the one value at the front of `bytes`; returns its length.
pub fn check_value(bytes: &[u8]) -> Result<usize, EncodingError> {
    let mut w = Walk { bytes, pos: 0 };
    w.value(0)?;
    Ok(w.pos)
}

/// Checks that `bytes` is nothing but whole values, back to back (a message's sections).
pub fn check_values(bytes: &[u8]) -> Result<(), EncodingError> {
    let mut w = Walk { bytes, pos: 0 };
    while w.pos < bytes.len() {
        w.value(0)?;
    }
    Ok(())
}

struct Walk<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn deeper(depth: usize) -> Result<usize, EncodingError> {
    if depth >= MAX_DEPTH {
        return Err(EncodingError::TooDeep);
    }
    Ok(depth + 1)
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EncodingError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(EncodingError::Truncated)?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, EncodingError> {
        Ok(self.take(1)?[0])
    }

    /// A 1-byte or 4-byte (`wide`) unsigned size or count.
    fn len(&mut self, wide: bool) -> Result<usize, EncodingError> {
        if !wide {
            return Ok(usize::from(self.u8()?));
        }
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn value(&mut self, depth: usize) -> Result<(), EncodingError> {
        let code = self.constructor(depth)?;
        self.data(code, depth)
    }

    /// A constructor: a format code, or `0x00`, a descriptor and the described value's
    /// constructor.
    fn constructor(&mut self, depth: usize) -> Result<u8, EncodingError> {
        let code = self.u8()?;
        if code != 0 {
            return Ok(code);
        }
        let depth = deeper(depth)?;
        self.value(depth)?;
        self.constructor(depth)
    }

    /// The bytes after a constructor with format code `code`.
    fn data(&mut self, code: u8, depth: usize) -> Result<(), EncodingError> {
        match code >> 4 {
            0x4 if code <= 0x45 => Ok(()),
            0x5 => self.take(1).map(drop),
            0x6 => self.take(2).map(drop),
            0x7 => self.take(4).map(drop),
            0x8 => self.take(8).map(drop),
            0x9 => self.take(16).map(drop),
            0xa | 0xb => {
                let n = self.len(code >> 4 == 0xb)?;
                self.take(n).map(drop)
            }
            0xc | 0xd => self.compound(code >> 4 == 0xd, deeper(depth)?, false),
            0xe | 0xf => self.compound(code >> 4 == 0xf, deeper(depth)?, true),
            _ => Err(EncodingError::BadCode(code)),
        }
    }

    /// A list, map or array: size, count, (an array's element constructor,) the elements, which
    /// must fill the size exactly.
    fn compound(&mut self, wide: bool, depth: usize, array: bool) -> Result<(), EncodingError> {
        let size = self.len(wide)?;
        let count_width = if wide { 4 } else { 1 };
        if size < count_width {
            return Err(EncodingError::SizeTooSmall(size));
        }
        let end = self.pos.checked_add(size).filter(|&e| e <= self.bytes.len()).ok_or(EncodingError::Truncated)?;
        let mut inner = Walk { bytes: &self.bytes[..end], pos: self.pos };
        let count = inner.len(wide)?;
        if !array {
            for _ in 0..count {
                inner.value(depth)?;
            }
        } else if count > 0 {
            // Elements may be zero bytes wide (null, true, uint0, ...): the count is bounded by
            // the bytes the array really spans, as every other element costs at least a byte.
            if count > size {
                return Err(EncodingError::TooManyElements { count, size });
            }
            let code = inner.constructor(depth)?;
            for _ in 0..count {
                inner.data(code, depth)?;
            }
        }
        if inner.pos != end {
            return Err(EncodingError::SizeMismatch);
        }
        self.pos = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` list32s, each holding the next, around a null.
    pub(crate) fn nested_lists(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 * n + 1);
        for k in (1..=n).rev() {
            v.push(0xd0);
            v.extend_from_slice(&u32::try_from(9 * k - 4).expect("small").to_be_bytes());
            v.extend_from_slice(&1u32.to_be_bytes());
        }
        v.push(0x40);
        v
    }

    /// `serde_amqp` decodes each of these (or aborts on them); the walk refuses them first.
    #[test]
    fn refuses_what_the_decoder_trusts() {
        // Sizes smaller than the count field they contain (the decoder's size arithmetic wraps).
        assert_eq!(check_value(&[0xc0, 0x00, 0x00]), Err(EncodingError::SizeTooSmall(0)));
        assert_eq!(check_value(&[0xc1, 0x00, 0x02, 0x40, 0x40]), Err(EncodingError::SizeTooSmall(0)));
        assert_eq!(check_value(&[0xd0, 0, 0, 0, 3, 0, 0, 0, 1, 0x40]), Err(EncodingError::SizeTooSmall(3)));
        assert_eq!(check_value(&[0xe0, 0x01, 0x01, 0x40]), Err(EncodingError::Truncated));
        // 65,536 zero-width elements claimed in 10 bytes.
        let nulls = [0xf0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01, 0x00, 0x00, 0x40];
        assert_eq!(check_value(&nulls), Err(EncodingError::Truncated));
        let nulls = [0xf0, 0x00, 0x00, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x40];
        assert_eq!(check_value(&nulls), Err(EncodingError::TooManyElements { count: 65_536, size: 5 }));
        // Nesting that would exhaust the decoder's stack: 10,000 lists, each holding the next
        // (sizes exact), and 10,000 descriptors.
        assert_eq!(check_value(&nested_lists(10_000)), Err(EncodingError::TooDeep));
        assert_eq!(check_value(&nested_lists(MAX_DEPTH)), Ok(9 * MAX_DEPTH + 1));
        assert_eq!(check_value(&nested_lists(MAX_DEPTH + 1)), Err(EncodingError::TooDeep));
        let mut described = vec![0x00; 10_000];
        described.push(0x40);
        assert_eq!(check_value(&described), Err(EncodingError::TooDeep));
        // Elements spilling over the size a compound declares, and bytes left in it.
        assert_eq!(check_value(&[0xc0, 0x02, 0x01, 0xa1, 0x03, b'a', b'b', b'c']), Err(EncodingError::Truncated));
        assert_eq!(check_value(&[0xc0, 0x03, 0x01, 0x40, 0x40]), Err(EncodingError::SizeMismatch));
        assert_eq!(check_value(&[0x2f]), Err(EncodingError::BadCode(0x2f)));
        assert_eq!(check_value(&[0xa1, 0x05, b'a']), Err(EncodingError::Truncated));
    }

    /// The decoders peers reach refuse such values before `serde_amqp` sees them. Without the
    /// walk each of these aborts the test process (stack overflow) or takes gigabytes.
    #[test]
    fn the_entry_points_walk_first() {
        use bytes::BytesMut;
        let list32 = |items: &[&[u8]]| {
            let body = items.concat();
            let mut v = vec![0xd0];
            v.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
            v.extend_from_slice(&u32::try_from(items.len()).expect("small").to_be_bytes());
            v.extend_from_slice(&body);
            v
        };
        let deep = nested_lists(3_000);
        // An Open (decoded before any authentication without SASL) whose properties nest.
        let mut props = vec![0xd1];
        props.extend_from_slice(&u32::try_from(deep.len() + 3 + 4).expect("small").to_be_bytes());
        props.extend_from_slice(&2u32.to_be_bytes());
        props.extend_from_slice(&[0xa3, 0x01, b'k']);
        props.extend_from_slice(&deep);
        let mut open = vec![0x00, 0x53, 0x10];
        let nulls = [[0x40u8]; 8];
        let mut fields: Vec<&[u8]> = vec![&[0xa1, 0x01, b'c']];
        fields.extend(nulls.iter().map(|n| &n[..]));
        fields.push(&props);
        open.extend_from_slice(&list32(&fields));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&u32::try_from(open.len() + 8).expect("small").to_be_bytes());
        frame.extend_from_slice(&[2, 0, 0, 0]);
        frame.extend_from_slice(&open);
        let r = crate::codec::next_frame(&mut frame, 32 * 1024);
        assert!(matches!(&r, Err(crate::codec::FrameError::Decode(m)) if m.contains("nest")), "{r:?}");
        // A request message whose amqp-value body nests, or holds arrays of 65,536 nulls.
        let mut message = vec![0x00, 0x53, 0x77];
        message.extend_from_slice(&deep);
        let r = crate::mapping::decode_request(&message);
        assert!(matches!(&r, Err(crate::mapping::RequestError::Decode(m)) if m.contains("nest")), "{r:?}");
        let nulls = [0xf0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x01, 0x00, 0x00, 0x40];
        let mut message = vec![0x00, 0x53, 0x77];
        message.extend_from_slice(&list32(&[&nulls[..]; 30]));
        assert!(matches!(crate::mapping::decode_request(&message), Err(crate::mapping::RequestError::Decode(_))));
        // A SASL init whose hostname is a deeply nested list.
        let mut init = vec![0x00, 0x53, 0x41];
        init.extend_from_slice(&list32(&[&[0xa3, 0x05, b'P', b'L', b'A', b'I', b'N'], &[0x40], &nested_lists(40)]));
        let mut sasl = u32::try_from(init.len() + 8).expect("small").to_be_bytes().to_vec();
        sasl.extend_from_slice(&[2, 1, 0, 0]);
        sasl.extend_from_slice(&init);
        let r = crate::sasl::frame::decode(&sasl, 512);
        assert!(matches!(&r, Err(crate::sasl::frame::FrameError::Decode(m)) if m.contains("nest")), "{r:?}");
        // Found by the amqp_sasl fuzzer: a body that starts with the descriptor's code but not
        // `0x00` is still read as described by the decoder, which then takes a sym32's length
        // of 822 MB and allocates it before looking for the bytes.
        let oom = b"\x00\x00\x00\x36\x0a\x01\x00\x00\x00\x53\xc0\x41\x1f\x01\xa3\x05\x00\x00\x01\x94\x3e\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x84\x00\x00\x00\x00\x03\xa3\x00\x00\x53\x41\x00\xb3\x31\x00\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x74\xfe\x01\xfe\x67";
        let r = crate::sasl::frame::decode(oom, 512);
        assert!(matches!(&r, Err(crate::sasl::frame::FrameError::Decode(m)) if m.contains("described")), "{r:?}");
        // The same behind a well-formed first value, in an AMQP frame and a SASL frame.
        let mut body = vec![0x00, 0x53, 0x10, 0x45, 0x00, 0xb3];
        body.extend_from_slice(&0x3100_0000u32.to_be_bytes());
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&u32::try_from(body.len() + 8).expect("small").to_be_bytes());
        frame.extend_from_slice(&[2, 1, 0, 0]);
        frame.extend_from_slice(&body);
        let r = crate::sasl::frame::decode(&frame, 512);
        assert!(matches!(&r, Err(crate::sasl::frame::FrameError::Decode(_))), "{r:?}");
        frame[5] = 0;
        assert!(crate::codec::next_frame(&mut frame, 32 * 1024).is_err());
    }

    #[test]
    fn accepts_what_fe2o3_amqp_encodes() {
        use fe2o3_amqp::types::primitives::{Array, OrderedMap, Symbol, Value};
        let mut map = OrderedMap::new();
        map.insert(Value::Symbol(Symbol::from("k")), Value::List(vec![Value::Bool(true), Value::Null]));
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::Uint(0),
            Value::Ulong(1 << 40),
            Value::String("x".repeat(300)),
            Value::List(vec![]),
            Value::List(vec![Value::Int(-1); 300]),
            Value::Map(map),
            Value::Array(Array::from(vec![Value::Bool(false); 3])),
            Value::Array(Array::from(vec![Value::String("a".into()), Value::String("b".repeat(300))])),
            Value::Array(Array::from(Vec::<Value>::new())),
        ];
        for v in values {
            let bytes = serde_amqp::to_vec(&v).expect("encode");
            assert_eq!(check_value(&bytes), Ok(bytes.len()), "{v:?}");
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            assert_eq!(check_values(&two), Ok(()), "{v:?}");
            // Any proper prefix is refused.
            for cut in 0..bytes.len() {
                assert!(check_value(&bytes[..cut]).is_err(), "{v:?} cut at {cut}");
            }
        }
    }
}
