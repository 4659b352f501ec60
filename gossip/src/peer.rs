//! Peer identity: a 48-bit peer name, written like a MAC address.
//!
//! A name is stable across restarts of a host (it keys IPAM ownership later), while the
//! incarnation uid changes on every start so that peers can tell a restart from old gossip.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A peer's stable 48-bit name. Shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerName(u64);

/// Random, non-zero per-process-start id of a peer (its incarnation).
pub type PeerUid = u64;

const NAME_MASK: u64 = (1 << 48) - 1;

impl PeerName {
    /// Takes the low 48 bits; `None` if any higher bit is set.
    pub fn from_u64(value: u64) -> Option<Self> {
        (value & !NAME_MASK == 0).then_some(Self(value))
    }

    pub fn from_bytes(bytes: [u8; 6]) -> Self {
        let mut wide = [0u8; 8];
        wide[2..].copy_from_slice(&bytes);
        Self(u64::from_be_bytes(wide))
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn to_bytes(self) -> [u8; 6] {
        let wide = self.0.to_be_bytes();
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(&wide[2..]);
        bytes
    }

    /// A name derived from arbitrary seed bytes (e.g. a hash): the multicast bit is cleared
    /// and the locally-administered bit set, so the name is also a valid unicast MAC.
    pub fn from_seed(seed: [u8; 6]) -> Self {
        let mut bytes = seed;
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Self::from_bytes(bytes)
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected six hex bytes like 02:00:00:00:00:01")]
pub struct ParsePeerNameError(pub String);

impl FromStr for PeerName {
    type Err = ParsePeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerNameError(s.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_and_parses_like_a_mac() {
        let name: PeerName = "02:0a:ff:00:10:01".parse().unwrap();
        assert_eq!(name.to_string(), "02:0a:ff:00:10:01");
        assert_eq!(name.as_u64(), 0x020aff001001);
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "02:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "002:0:0:0:0:0",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad}");
        }
        assert!(PeerName::from_u64(1 << 48).is_none());
    }

    #[test]
    fn seeded_names_are_unicast_and_local() {
        let name = PeerName::from_seed([0xff; 6]);
        assert_eq!(name.to_bytes()[0] & 0x01, 0);
        assert_eq!(name.to_bytes()[0] & 0x02, 0x02);
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 6]>()) {
            let name = PeerName::from_bytes(bytes);
            prop_assert_eq!(name.to_bytes(), bytes);
            prop_assert_eq!(name.to_string().parse::<PeerName>().unwrap(), name);
        }
    }
}
