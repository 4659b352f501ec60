//! weft's data plane: how frames cross from one host to another.
//!
//! Three datapaths are planned, chosen per peer connection with automatic fallback: the
//! kernel Open vSwitch fast datapath, a kernel VXLAN fast path for kernels without Open
//! vSwitch, and the userspace sleeve (Ethernet in encrypted UDP), which always works. This
//! crate never sees gossip: the router hands it plain decisions (which peer, which address,
//! which key).
//!
//! What exists so far is the vocabulary shared by status and by the datapaths to come: the
//! datapath kinds and their encapsulation overheads, from which the overlay MTU follows.

use serde::{Deserialize, Serialize};

/// A way of carrying frames to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// Open vSwitch kernel datapath with a VXLAN vport.
    Fastdp,
    /// Linux VXLAN device driven by forwarding-database entries.
    Vxlan,
    /// Userspace: Ethernet frames in UDP, sealed with XSalsa20-Poly1305 when encrypted.
    Sleeve,
}

/// Outer IPv4 + UDP headers.
const IPV4_UDP: u16 = 20 + 8;
/// VXLAN header plus the inner Ethernet header it carries.
const VXLAN: u16 = 8 + 14;
/// ESP in transport mode with AES-GCM: SPI, sequence, IV, ICV, padding and trailer at most.
const ESP_MAX: u16 = 4 + 4 + 8 + 16 + 3 + 2;
/// Sleeve framing per datagram (sender name, sequence) and per frame (length, inner Ethernet).
const SLEEVE: u16 = 6 + 8 + 2 + 14;
/// secretbox tag.
const SEAL_TAG: u16 = 16;

impl DatapathKind {
    /// Bytes the datapath adds around an inner IP packet on an IPv4 underlay.
    pub fn overhead(self, encrypted: bool) -> u16 {
        match (self, encrypted) {
            (DatapathKind::Fastdp | DatapathKind::Vxlan, false) => IPV4_UDP + VXLAN,
            (DatapathKind::Fastdp | DatapathKind::Vxlan, true) => IPV4_UDP + VXLAN + ESP_MAX,
            (DatapathKind::Sleeve, false) => IPV4_UDP + SLEEVE,
            (DatapathKind::Sleeve, true) => IPV4_UDP + SLEEVE + SEAL_TAG,
        }
    }

    /// The largest inner packet that fits an underlay path MTU, if any does.
    pub fn overlay_mtu(self, path_mtu: u16, encrypted: bool) -> Option<u16> {
        path_mtu
            .checked_sub(self.overhead(encrypted))
            .filter(|mtu| *mtu >= 576)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_on_a_1500_underlay_leaves_the_usual_1450() {
        assert_eq!(DatapathKind::Vxlan.overlay_mtu(1500, false), Some(1450));
    }

    #[test]
    fn encryption_costs_mtu_and_tiny_paths_fit_nothing() {
        for kind in [
            DatapathKind::Fastdp,
            DatapathKind::Vxlan,
            DatapathKind::Sleeve,
        ] {
            assert!(kind.overhead(true) > kind.overhead(false));
            assert_eq!(kind.overlay_mtu(600, true), None);
        }
    }
}
