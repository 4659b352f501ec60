//! Netlink attributes (TLVs): a writer and a reader that never panics.
//!
//! An attribute is `u16 len` (header included, padding excluded), `u16 type` (the top two bits
//! are the `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` flags), the payload, then padding to 4 bytes.
//! The reader takes any bytes (replies from the kernel, or fuzz input) and returns errors.

use thiserror::Error;

/// Set on the type of an attribute whose payload is more attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Set on the type of an attribute whose payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
const NLA_HEADER_LEN: usize = 4;

/// Rounds up to the netlink alignment (4 bytes).
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Why attribute bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NlaError {
    #[error("attribute header truncated at offset {offset}")]
    Truncated { offset: usize },
    #[error("attribute {kind} at offset {offset} says {len} bytes, {left} are left")]
    BadLength {
        kind: u16,
        offset: usize,
        len: usize,
        left: usize,
    },
    #[error("attribute {kind}: payload of {len} bytes, expected {expected}")]
    BadPayload {
        kind: u16,
        len: usize,
        expected: usize,
    },
    #[error("attribute {kind}: not a NUL-terminated UTF-8 string")]
    BadString { kind: u16 },
    #[error("attribute {kind} missing")]
    Missing { kind: u16 },
}

/// Appends attributes to a buffer, padding each to 4 bytes.
#[derive(Debug, Default, Clone)]
pub struct NlaWriter {
    buf: Vec<u8>,
}

impl NlaWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = NLA_HEADER_LEN + payload.len();
        // An attribute longer than u16 cannot exist; callers write small fixed fields and
        // packets bounded by the MTU, so saturating keeps the writer total.
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
    }

    pub fn put_flag(&mut self, kind: u16) {
        self.put(kind, &[]);
    }

    pub fn put_u8(&mut self, kind: u16, v: u8) {
        self.put(kind, &[v]);
    }

    pub fn put_u32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_ne_bytes());
    }

    pub fn put_be16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }

    pub fn put_be64(&mut self, kind: u16, v: u64) {
        self.put(kind, &v.to_be_bytes());
    }

    /// A NUL-terminated string.
    pub fn put_str(&mut self, kind: u16, s: &str) {
        let mut bytes = Vec::with_capacity(s.len() + 1);
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
        self.put(kind, &bytes);
    }

    /// A nested attribute holding what `fill` writes. The kernel's OVS families take nested
    /// attributes without `NLA_F_NESTED` (as `ovs-dpctl` sends them), so the flag is not set.
    pub fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut NlaWriter)) {
        let mut inner = NlaWriter::new();
        fill(&mut inner);
        self.put(kind, &inner.buf);
    }
}

/// One attribute read from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nla<'a> {
    /// The type without the flag bits.
    pub kind: u16,
    pub nested_flag: bool,
    pub payload: &'a [u8],
}

impl<'a> Nla<'a> {
    fn fixed<const N: usize>(&self) -> Result<[u8; N], NlaError> {
        self.payload.try_into().map_err(|_| NlaError::BadPayload {
            kind: self.kind,
            len: self.payload.len(),
            expected: N,
        })
    }

    pub fn u8(&self) -> Result<u8, NlaError> {
        Ok(self.fixed::<1>()?[0])
    }

    pub fn u32(&self) -> Result<u32, NlaError> {
        Ok(u32::from_ne_bytes(self.fixed()?))
    }

    pub fn u64(&self) -> Result<u64, NlaError> {
        Ok(u64::from_ne_bytes(self.fixed()?))
    }

    pub fn be16(&self) -> Result<u16, NlaError> {
        Ok(u16::from_be_bytes(self.fixed()?))
    }

    pub fn be32(&self) -> Result<u32, NlaError> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }

    pub fn be64(&self) -> Result<u64, NlaError> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }

    pub fn array<const N: usize>(&self) -> Result<[u8; N], NlaError> {
        self.fixed()
    }

    /// A string, NUL-terminated or not (the kernel writes the NUL).
    pub fn str(&self) -> Result<&'a str, NlaError> {
        let bytes = match self.payload.iter().position(|b| *b == 0) {
            Some(end) => &self.payload[..end],
            None => self.payload,
        };
        std::str::from_utf8(bytes).map_err(|_| NlaError::BadString { kind: self.kind })
    }

    /// The attributes inside this one.
    pub fn nested(&self) -> NlaIter<'a> {
        NlaIter::new(self.payload)
    }
}

/// Iterates the attributes in a buffer; after the first error it yields nothing more.
#[derive(Debug, Clone)]
pub struct NlaIter<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> NlaIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            offset: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for NlaIter<'a> {
    type Item = Result<Nla<'a>, NlaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.offset..];
        let Some(header) = rest.get(..NLA_HEADER_LEN) else {
            self.failed = true;
            return Some(Err(NlaError::Truncated {
                offset: self.offset,
            }));
        };
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let raw_kind = u16::from_ne_bytes([header[2], header[3]]);
        let kind = raw_kind & NLA_TYPE_MASK;
        if len < NLA_HEADER_LEN || len > rest.len() {
            self.failed = true;
            return Some(Err(NlaError::BadLength {
                kind,
                offset: self.offset,
                len,
                left: rest.len(),
            }));
        }
        let payload = &rest[NLA_HEADER_LEN..len];
        // The last attribute may come without its padding (OVS_DP_F_UNALIGNED).
        self.offset = self.offset.saturating_add(align(len));
        Some(Ok(Nla {
            kind,
            nested_flag: raw_kind & NLA_F_NESTED != 0,
            payload,
        }))
    }
}

/// Every attribute in `buf`, or the first error.
pub fn parse(buf: &[u8]) -> Result<Vec<Nla<'_>>, NlaError> {
    NlaIter::new(buf).collect()
}

/// The last attribute of type `kind` in a parsed list (the kernel sends each at most once).
pub fn find<'a>(attrs: &[Nla<'a>], kind: u16) -> Option<Nla<'a>> {
    attrs.iter().rev().find(|a| a.kind == kind).copied()
}

/// Like [`find`], but missing is an error.
pub fn require<'a>(attrs: &[Nla<'a>], kind: u16) -> Result<Nla<'a>, NlaError> {
    find(attrs, kind).ok_or(NlaError::Missing { kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writes_padded_and_reads_back() {
        let mut w = NlaWriter::new();
        w.put_str(3, "wkt");
        w.put_u8(5, 64);
        w.nested(4, |n| n.put_be16(1, 4789));
        let bytes = w.into_bytes();
        assert_eq!(bytes.len(), 8 + 8 + 12);
        let attrs = parse(&bytes).unwrap();
        assert_eq!(attrs[0].str().unwrap(), "wkt");
        assert_eq!(attrs[1].u8().unwrap(), 64);
        let inner: Vec<_> = attrs[2].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].be16().unwrap(), 4789);
    }

    #[test]
    fn flags_are_stripped_from_the_type() {
        let bytes = [8, 0, 0x04, 0x80, 1, 2, 3, 4];
        let a = parse(&bytes).unwrap()[0];
        assert_eq!(a.kind, 4);
        assert!(a.nested_flag);
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(parse(&[3, 0, 1, 0]).is_err());
        assert!(parse(&[9, 0, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(parse(&[8, 0]).is_err());
        assert_eq!(parse(&[]).unwrap(), vec![]);
    }

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for a in NlaIter::new(&bytes).flatten() {
                let _ = (a.u8(), a.u32(), a.u64(), a.be16(), a.be32(), a.str());
                for b in a.nested().flatten() {
                    let _ = b.nested().count();
                }
            }
        }
    }
}
