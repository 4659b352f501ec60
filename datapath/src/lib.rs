//! weft's data plane: how frames cross from one host to another.
//!
//! Three datapaths are planned, chosen per peer connection with automatic fallback: the
//! kernel Open vSwitch fast datapath, a kernel VXLAN fast path for kernels without Open
//! vSwitch, and the userspace sleeve (Ethernet in encrypted UDP), which always works. This
//! crate never sees gossip: the router hands it plain values (peer ids `[u8; 6]`, connection
//! ids `u64`, socket addresses, keys, routes through [`forward::Routing`], MAC hints) and gets
//! plain events and reports back; its adapter (`router/src/dataplane/`) converts.
//!
//! What exists so far: the datapath kinds and their encapsulation overheads (from which the
//! overlay MTU follows), and the sleeve (see `docs/sleeve.md`). Its sans-IO core:
//! - [`sleeve`]: the datagram format, sealing and replay protection, batches, offloads,
//!   fragments;
//! - [`mac`]: which peer owns each MAC address, bounded in size;
//! - [`forward`]: where one frame goes;
//! - [`icmp`]: "packet too big" answers to pods whose packets exceed the overlay MTU;
//! - [`pmtu`]: path-MTU discovery per peer, by probes the peer acknowledges;
//! - [`heartbeat`]: whether the UDP path to a peer is alive, and if not, why;
//! - [`select`]: which datapath each peer connection uses, and why, with fallback and return;
//! - [`vxlan::plan`]: the kernel FDB entries the VXLAN fast path needs, and the steps to them.
//!
//! Everything above decides without IO and without reading a clock (callers pass `now`); the
//! thin kernel edges are [`tap`], [`udp`] and [`packet`]. [`sleeve::engine`] runs the sleeve on them: the
//! TAP port on the pods' bridge, the UDP socket, per-peer links and their threads (TAP reader,
//! UDP reader, housekeeping: heartbeats, liveness, path-MTU probes, MAC expiry), counters.
//! [`vxlan`] is the kernel VXLAN fast path (in progress, issue 11).
//! [`ovs`] programs the kernel Open vSwitch datapath over generic netlink (in progress,
//! issue 12): pure codecs of the four `ovs_*` families and one synchronous socket.

pub mod forward;
pub mod heartbeat;
pub mod icmp;
pub mod mac;
pub mod ovs;
pub mod packet;
pub mod pmtu;
pub mod select;
pub mod sleeve;
pub mod tap;
pub mod udp;
pub mod vxlan;

#[cfg(test)]
mod flood_tests;

use serde::{Deserialize, Serialize};

/// A peer's 48-bit name as it appears on the wire. The datapath never sees gossip, so it works
/// with the raw bytes; the router converts from `weft_gossip::PeerName`.
pub type PeerId = [u8; 6];

/// A way of carrying frames to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// Open vSwitch kernel datapath with a VXLAN vport (`--datapath fastdp`).
    Ovs,
    /// Linux VXLAN device driven by forwarding-database entries.
    Vxlan,
    /// Userspace: Ethernet frames in UDP, sealed with XSalsa20-Poly1305 when encrypted.
    Sleeve,
}

/// An Ethernet header without VLAN tag: destination, source, ethertype.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// Outer IPv4 + UDP headers.
const IPV4_UDP: u16 = 20 + 8;
/// VXLAN header plus the inner Ethernet header it carries.
const VXLAN: u16 = 8 + ETHERNET_HEADER_LEN as u16;
/// ESP in transport mode with AES-GCM: SPI, sequence, IV, ICV, padding and trailer at most.
const ESP_MAX: u16 = 4 + 4 + 8 + 16 + 3 + 2;
/// Sleeve datagram header and one frame header (taken from the codec, so they cannot drift),
/// and the inner Ethernet header, carried whole by the sleeve.
const SLEEVE_PLAIN: u16 = (sleeve::codec::PLAIN_HEADER_LEN
    + sleeve::codec::FRAME_HEADER_LEN
    + ETHERNET_HEADER_LEN) as u16;
const SLEEVE_SEALED: u16 = (sleeve::codec::SEALED_HEADER_LEN
    + sleeve::codec::FRAME_HEADER_LEN
    + ETHERNET_HEADER_LEN) as u16;

impl DatapathKind {
    /// The name status, metrics and the report use (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathKind::Ovs => "ovs",
            DatapathKind::Vxlan => "vxlan",
            DatapathKind::Sleeve => "sleeve",
        }
    }

    /// Bytes the datapath adds around an inner IP packet on an IPv4 underlay.
    pub fn overhead(self, encrypted: bool) -> u16 {
        match (self, encrypted) {
            (DatapathKind::Ovs | DatapathKind::Vxlan, false) => IPV4_UDP + VXLAN,
            (DatapathKind::Ovs | DatapathKind::Vxlan, true) => IPV4_UDP + VXLAN + ESP_MAX,
            (DatapathKind::Sleeve, false) => IPV4_UDP + SLEEVE_PLAIN,
            (DatapathKind::Sleeve, true) => IPV4_UDP + SLEEVE_SEALED,
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
    fn a_full_size_inner_packet_fits_the_sleeve_overlay_mtu() {
        use sleeve::codec::{Encapsulator, Frame, FrameKind};
        let path_mtu = 1500u16;
        let mtu = DatapathKind::Sleeve.overlay_mtu(path_mtu, true).unwrap();
        // An Ethernet frame carrying an inner packet of exactly the overlay MTU.
        let frame = vec![0u8; usize::from(mtu) + 14];
        let key = || weft_crypto::SecretKey::from_bytes([1; 32]);
        let mut enc = Encapsulator::sealed([2, 0, 0, 0, 0, 1], Box::new(move |_| key()));
        let frames = [Frame {
            kind: FrameKind::Ethernet,
            src: [2; 6],
            dst: [3; 6],
            payload: &frame,
        }];
        let mut out = Vec::new();
        let udp_payload = usize::from(path_mtu) - usize::from(IPV4_UDP);
        assert_eq!(
            enc.encapsulate(&frames, udp_payload, &mut out).unwrap(),
            udp_payload
        );
    }

    #[test]
    fn encryption_costs_mtu_and_tiny_paths_fit_nothing() {
        for kind in [DatapathKind::Ovs, DatapathKind::Vxlan, DatapathKind::Sleeve] {
            assert!(kind.overhead(true) > kind.overhead(false));
            assert_eq!(kind.overlay_mtu(600, true), None);
        }
    }
}
