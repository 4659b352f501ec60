//! The FDB plan: from the MAC-to-peer table and each peer's datapath, the forwarding entries
//! the kernel should hold, and the steps (`FdbOp`) that take what it holds there. Pure.
//!
//! Two tables are kept:
//! - the VXLAN device's own FDB (`bridge fdb ... dev weft-vxlan self`): MAC → the underlay
//!   address of the peer that owns it, for every MAC of a peer on the fast path, and each
//!   peer's heartbeat MAC ([`heartbeat_mac`]) for every peer whose fast path is probed;
//! - the bridge's FDB (`... master static sticky`): every remote MAC weft knows, on the VXLAN
//!   port when its owner is on the fast path, else on the sleeve's TAP port; so each
//!   destination takes the datapath chosen for the peer that owns it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::PeerId;
use crate::mac::Mac;

/// Which bridge port a remote MAC is steered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BridgePort {
    Vxlan,
    Tap,
}

/// How frames to one peer's MACs travel now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPath {
    /// The VXLAN fast path, to this underlay address.
    Fast(Ipv4Addr),
    /// The sleeve (direct or relayed).
    Sleeve,
    /// Undecided (a connection still confirming its path after a restart, or a peer that is
    /// unreachable now): whatever the kernel holds for its MACs stays as it is.
    Keep,
}

/// What weft wants, as plain values.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Every remote MAC weft knows and the peer that owns it (never a local MAC).
    pub remote_macs: BTreeMap<Mac, PeerId>,
    /// Each peer's path; a peer missing here counts as [`PeerPath::Sleeve`].
    pub paths: BTreeMap<PeerId, PeerPath>,
    /// Peers whose fast path is heartbeated, and their underlay address.
    pub heartbeat_peers: BTreeMap<PeerId, Ipv4Addr>,
    /// After a restart, until the MAC table has been learned again: remove nothing.
    pub adopting: bool,
}

/// What the kernel holds (only entries weft manages: static entries on its two ports, and the
/// VXLAN device's own entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFdb {
    pub vxlan: BTreeMap<Mac, Ipv4Addr>,
    pub bridge: BTreeMap<Mac, BridgePort>,
}

/// One step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbOp {
    /// Add or replace the VXLAN device's entry for `mac`.
    VxlanSet { mac: Mac, dst: Ipv4Addr },
    VxlanDel { mac: Mac },
    /// Add or move the bridge's static entry for `mac`.
    BridgeSet { mac: Mac, port: BridgePort },
    BridgeDel { mac: Mac },
}

/// The heartbeat MAC of a peer: the destination of fast-path heartbeats to it, a local entry
/// in its bridge's FDB (so they go up to its router, never to pods).
pub fn heartbeat_mac(peer: PeerId) -> Mac {
    // Locally administered, unicast; the rest from the peer's name.
    let mut mac = peer;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac[0] ^= 0x04;
    mac
}

/// The steps from `current` to `desired`. Ordered so that no frame is lost or looped on the
/// way: a MAC moving to the fast path gets its VXLAN entry before the bridge points at the
/// VXLAN port, one leaving it is pointed at the TAP before its VXLAN entry goes.
pub fn plan(desired: &Desired, current: &KernelFdb) -> Vec<FdbOp> {
    let _ = (desired, current);
    todo!("helper core: implement")
}
