//! An address with its prefix length (`10.32.0.5/12`), as CNI results and the router protocol
//! write it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An interface address or a route destination: an address plus a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// `addr/prefix`, or `None` when the prefix is too long for the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(addr)).then_some(Self { addr, prefix })
    }

    /// The default route's destination for the family of `addr`.
    pub fn default_for(addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Self { addr, prefix: 0 }
    }

    /// A host route (`/32` or `/128`) to `addr`.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(addr),
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is inside this prefix (same family, same leading `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let other = Self {
            addr: ip,
            prefix: self.prefix,
        };
        self.is_ipv4() == ip.is_ipv4() && other.network().addr == self.network().addr
    }

    /// This prefix with the host bits cleared (`10.32.0.5/12` → `10.32.0.0/12`).
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Self {
            addr,
            prefix: self.prefix,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{s:?}: bad prefix length"))?;
        Self::new(addr, prefix).ok_or_else(|| format!("{s:?}: prefix length too long"))
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_contains() {
        let n: IpNet = "10.32.0.5/12".parse().unwrap();
        assert_eq!(n.to_string(), "10.32.0.5/12");
        assert!(n.contains("10.47.255.254".parse().unwrap()));
        assert!(!n.contains("10.48.0.1".parse().unwrap()));
        assert!(!n.contains("fd00::1".parse().unwrap()));
        assert_eq!(n.network().to_string(), "10.32.0.0/12");
        assert!(IpNet::default_for(n.addr).contains("1.2.3.4".parse().unwrap()));
        let v6: IpNet = "fd00::5/64".parse().unwrap();
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/3", "10.0.0.1/x", "fd00::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
