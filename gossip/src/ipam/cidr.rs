//! The cluster range (`--ipalloc-range`) and how it is cut into the ring's chunks.

use super::*;

/// An IPv4 network in CIDR notation, aligned (no host bits set), prefix at most 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        let bad = |why: &str| IpamError::BadRange(format!("{addr}/{prefix}"), why.to_owned());
        if prefix > 30 {
            return Err(bad("the prefix must be at most 30"));
        }
        let host_mask = (1u64 << (32 - u32::from(prefix))) - 1;
        if u64::from(u32::from(addr)) & host_mask != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(Cidr { addr, prefix })
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let (start, a) = (u64::from(u32::from(self.addr)), u64::from(u32::from(addr)));
        a >= start && a < start + self.size()
    }

    pub(super) fn valid(&self) -> bool {
        Cidr::new(self.addr, self.prefix).is_ok()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::BadRange(s.to_owned(), "expected a.b.c.d/prefix".to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        Cidr::new(
            addr.parse().map_err(|_| bad())?,
            prefix.parse().map_err(|_| bad())?,
        )
    }
}

/// How the range is cut into chunks; a function of the range alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) start: u64,
    pub(super) size: u64,
    pub(super) chunk_bits: u32,
    pub(super) chunks: u32,
}

impl Geometry {
    pub(super) fn new(range: Cidr) -> Self {
        let host_bits = 32 - u32::from(range.prefix);
        let chunk_bits = host_bits.saturating_sub(CHUNK_INDEX_BITS);
        Geometry {
            start: u64::from(u32::from(range.addr)),
            size: range.size(),
            chunk_bits,
            chunks: 1 << (host_bits - chunk_bits),
        }
    }

    /// `[lo, hi)` of chunk `i`.
    pub(super) fn bounds(&self, i: u32) -> (u64, u64) {
        let lo = self.start + (u64::from(i) << self.chunk_bits);
        (lo, lo + (1u64 << self.chunk_bits))
    }

    pub(super) fn chunk_of(&self, addr: u32) -> Option<u32> {
        let a = u64::from(addr);
        (a >= self.start && a < self.start + self.size)
            .then(|| ((a - self.start) >> self.chunk_bits) as u32)
    }

    /// In range and neither the network nor the broadcast address.
    pub(super) fn usable_addr(&self, addr: u32) -> bool {
        let a = u64::from(addr);
        a > self.start && a < self.start + self.size - 1
    }

    pub(super) fn usable(&self, i: u32) -> u32 {
        let whole = 1u32 << self.chunk_bits;
        whole - u32::from(i == 0) - u32::from(i == self.chunks - 1)
    }
}
