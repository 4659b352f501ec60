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

use std::collections::{BTreeMap, BTreeSet};
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
    VxlanSet {
        mac: Mac,
        dst: Ipv4Addr,
    },
    VxlanDel {
        mac: Mac,
    },
    /// Add or move the bridge's static entry for `mac`.
    BridgeSet {
        mac: Mac,
        port: BridgePort,
    },
    BridgeDel {
        mac: Mac,
    },
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

/// The entries `desired` asks for, and the MACs whose entries are kept as the kernel has them.
///
/// A MAC is *kept* when its owner's path is [`PeerPath::Keep`]; so is the heartbeat MAC of a
/// Keep peer that is not in [`Desired::heartbeat_peers`]. A heartbeat entry wins over a pod MAC
/// that happens to be equal to it (the engine never lets one be learned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub fdb: KernelFdb,
    pub kept: BTreeSet<Mac>,
}

impl Desired {
    /// The path of `peer` (a peer missing from [`paths`](Self::paths) is on the sleeve).
    pub fn path(&self, peer: &PeerId) -> PeerPath {
        self.paths.get(peer).copied().unwrap_or(PeerPath::Sleeve)
    }

    /// The entries this asks for (see [`Target`]).
    pub fn target(&self) -> Target {
        let mut target = Target::default();
        for (mac, owner) in &self.remote_macs {
            match self.path(owner) {
                PeerPath::Fast(dst) => {
                    target.fdb.vxlan.insert(*mac, dst);
                    target.fdb.bridge.insert(*mac, BridgePort::Vxlan);
                }
                PeerPath::Sleeve => {
                    target.fdb.bridge.insert(*mac, BridgePort::Tap);
                }
                PeerPath::Keep => {
                    target.kept.insert(*mac);
                }
            }
        }
        for (peer, path) in &self.paths {
            if *path == PeerPath::Keep && !self.heartbeat_peers.contains_key(peer) {
                target.kept.insert(heartbeat_mac(*peer));
            }
        }
        for (peer, dst) in &self.heartbeat_peers {
            let mac = heartbeat_mac(*peer);
            target.kept.remove(&mac);
            target.fdb.vxlan.insert(mac, *dst);
        }
        target
    }
}

/// The steps from `current` to `desired`. Ordered so that no frame is lost or looped on the
/// way: a MAC moving to the fast path gets its VXLAN entry before the bridge points at the
/// VXLAN port, one leaving it is pointed at the TAP before its VXLAN entry goes.
///
/// Precisely: all [`FdbOp::VxlanSet`] first, then [`FdbOp::BridgeSet`], then
/// [`FdbOp::BridgeDel`], then [`FdbOp::VxlanDel`], each group in MAC order. Entries of kept
/// MACs (see [`Target`]) are neither added, moved nor removed; entries for MACs weft no longer
/// knows are removed, unless [`Desired::adopting`] (then nothing is ever removed). Planning
/// again after applying the plan yields nothing.
pub fn plan(desired: &Desired, current: &KernelFdb) -> Vec<FdbOp> {
    let Target { fdb: want, kept } = desired.target();
    let removable = |mac: &Mac| !desired.adopting && !kept.contains(mac);
    let mut ops = Vec::new();
    ops.extend(
        want.vxlan
            .iter()
            .filter(|(mac, dst)| current.vxlan.get(*mac) != Some(*dst))
            .map(|(mac, dst)| FdbOp::VxlanSet {
                mac: *mac,
                dst: *dst,
            }),
    );
    ops.extend(
        want.bridge
            .iter()
            .filter(|(mac, port)| current.bridge.get(*mac) != Some(*port))
            .map(|(mac, port)| FdbOp::BridgeSet {
                mac: *mac,
                port: *port,
            }),
    );
    ops.extend(
        current
            .bridge
            .keys()
            .filter(|mac| !want.bridge.contains_key(*mac) && removable(mac))
            .map(|mac| FdbOp::BridgeDel { mac: *mac }),
    );
    ops.extend(
        current
            .vxlan
            .keys()
            .filter(|mac| !want.vxlan.contains_key(*mac) && removable(mac))
            .map(|mac| FdbOp::VxlanDel { mac: *mac }),
    );
    ops
}

/// What the kernel does with `ops`, as a pure model (for tests and the recording fake).
pub fn apply(ops: &[FdbOp], fdb: &mut KernelFdb) {
    for op in ops {
        match *op {
            FdbOp::VxlanSet { mac, dst } => {
                fdb.vxlan.insert(mac, dst);
            }
            FdbOp::VxlanDel { mac } => {
                fdb.vxlan.remove(&mac);
            }
            FdbOp::BridgeSet { mac, port } => {
                fdb.bridge.insert(mac, port);
            }
            FdbOp::BridgeDel { mac } => {
                fdb.bridge.remove(&mac);
            }
        }
    }
}

#[cfg(test)]
mod tests;
