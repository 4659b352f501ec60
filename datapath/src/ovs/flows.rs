//! The flows weft keeps in its Open vSwitch datapath, from the same table the VXLAN device's
//! FDB holds (MAC → the underlay address of the peer that owns it, for peers on the fast path
//! and the heartbeat MACs of peers being probed; see [`crate::vxlan::plan`]). Pure.
//!
//! The datapath's own port (its local internal port, a port of the pods' bridge) and one VXLAN
//! vport are all it has. Two kinds of flow:
//! - **outbound**, one per MAC: `in_port(local), eth(dst=MAC)` → set the tunnel (VNI, the
//!   peer's address, UDP port, DF) → output to the VXLAN vport;
//! - **inbound**, one per peer address in the table: `in_port(vxlan), tunnel(id=VNI,
//!   src=peer)` → output to the local port, into the bridge;
//! - **group**, always exactly one: `in_port(local), eth(dst=01:00:00:00:00:00/01:00:..)`
//!   (every multicast and broadcast frame this host's pods send; the bridge floods them to the
//!   local port, whose `mcast_flood` and `bcast_flood` are on) → for each *fast leaf* (see
//!   `docs/datapaths.md`) set the tunnel to it and output to the VXLAN vport: head-end
//!   replication. With no fast leaf its actions are empty: a drop, counted as a hit, where
//!   no flow would make every group frame a miss (an upcall).
//!
//! A frame matching neither (a MAC of a peer on the sleeve, a sender weft does not probe) is a
//! miss. The bridge sends the datapath only what its FDB steers there, so misses are rare.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{Flow, FlowAction, FlowMatch, MacMatch, PortNo, TunnelMatch, TunnelSet};
use crate::mac::Mac;

/// The outer TTL of tunnelled frames.
pub const TUNNEL_TTL: u8 = 64;

/// The most peers the group flow replicates to: its actions (about 70 bytes per peer) stay
/// well under the kernel's 32 KiB. Fast leaves beyond it get group frames over the sleeve.
pub const MAX_GROUP_DSTS: usize = 256;

/// What weft's flows are made of besides the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowParams {
    /// The datapath's port on the bridge.
    pub local: PortNo,
    /// The VXLAN vport.
    pub vxlan: PortNo,
    pub vni: u32,
    /// The peers' VXLAN UDP port (the same mesh-wide, as for the VXLAN device).
    pub tp_dst: u16,
}

/// One change to the datapath's flows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FlowOp {
    /// Create the flow, or replace the actions of the flow with its match.
    Put(Flow),
    Delete(FlowMatch),
}

impl FlowParams {
    /// Frames from the bridge to `mac` go to the peer at `dst`.
    pub fn outbound(&self, mac: Mac, dst: Ipv4Addr) -> Flow {
        Flow {
            matching: FlowMatch {
                in_port: self.local,
                eth_src: None,
                eth_dst: Some(MacMatch::exact(mac)),
                tunnel: None,
            },
            actions: self.tunnel_to(dst).to_vec(),
        }
    }

    /// Set the tunnel to the peer at `dst`, send out of the VXLAN vport.
    fn tunnel_to(&self, dst: Ipv4Addr) -> [FlowAction; 2] {
        [
            FlowAction::SetTunnel(TunnelSet {
                id: self.vni,
                dst,
                tp_dst: self.tp_dst,
                ttl: TUNNEL_TTL,
                dont_fragment: true,
            }),
            FlowAction::Output(self.vxlan),
        ]
    }

    /// The match of the group flow: every multicast or broadcast frame from the bridge.
    pub fn group_match(&self) -> FlowMatch {
        FlowMatch {
            in_port: self.local,
            eth_src: None,
            eth_dst: Some(MacMatch::GROUP),
            tunnel: None,
        }
    }

    /// Group frames from the bridge go to each peer of `dsts` (at most [`MAX_GROUP_DSTS`], the
    /// first in address order), one copy each; none: dropped.
    pub fn group(&self, dsts: &BTreeSet<Ipv4Addr>) -> Flow {
        Flow {
            matching: self.group_match(),
            actions: dsts
                .iter()
                .take(MAX_GROUP_DSTS)
                .flat_map(|dst| self.tunnel_to(*dst))
                .collect(),
        }
    }

    /// The peers a group flow of ours sends to; None if `flow` is no group flow of ours.
    pub fn group_dsts(&self, flow: &Flow) -> Option<BTreeSet<Ipv4Addr>> {
        if flow.matching != self.group_match() || !flow.actions.len().is_multiple_of(2) {
            return None;
        }
        let dsts: BTreeSet<Ipv4Addr> = flow
            .actions
            .chunks(2)
            .map(|pair| match pair {
                [FlowAction::SetTunnel(set), FlowAction::Output(_)] => Some(set.dst),
                _ => None,
            })
            .collect::<Option<_>>()?;
        (*flow == self.group(&dsts)).then_some(dsts)
    }

    /// Frames the peer at `src` sends are delivered into the bridge.
    pub fn inbound(&self, src: Ipv4Addr) -> Flow {
        Flow {
            matching: FlowMatch {
                in_port: self.vxlan,
                eth_src: None,
                eth_dst: None,
                tunnel: Some(TunnelMatch { id: self.vni, src }),
            },
            actions: vec![FlowAction::Output(self.local)],
        }
    }

    /// Every flow `table` and the group's peers `group` ask for.
    pub fn flows(
        &self,
        table: &BTreeMap<Mac, Ipv4Addr>,
        group: &BTreeSet<Ipv4Addr>,
    ) -> BTreeSet<Flow> {
        let peers: BTreeSet<Ipv4Addr> = table.values().copied().collect();
        table
            .iter()
            .map(|(&mac, &dst)| self.outbound(mac, dst))
            .chain(peers.into_iter().map(|src| self.inbound(src)))
            .chain([self.group(group)])
            .collect()
    }

    /// The table that weft's flows among `flows` stand for, and the flows that are not
    /// weft's (another program's, or of other parameters): the caller removes or reports them.
    /// The group flow is weft's ([`Self::group_dsts`] reads it).
    pub fn table<'a>(
        &self,
        flows: impl IntoIterator<Item = &'a Flow>,
    ) -> (BTreeMap<Mac, Ipv4Addr>, Vec<Flow>) {
        let mut table = BTreeMap::new();
        let mut foreign = Vec::new();
        for flow in flows {
            match self.outbound_entry(flow) {
                Some((mac, dst)) => {
                    table.insert(mac, dst);
                }
                None if self.is_inbound(flow) || self.group_dsts(flow).is_some() => {}
                None => foreign.push(flow.clone()),
            }
        }
        (table, foreign)
    }

    fn outbound_entry(&self, flow: &Flow) -> Option<(Mac, Ipv4Addr)> {
        let m = &flow.matching;
        let mac = m
            .eth_dst
            .and_then(|d| d.as_exact())
            .filter(|_| m.in_port == self.local && m.eth_src.is_none())?;
        if m.tunnel.is_some() {
            return None;
        }
        match flow.actions.as_slice() {
            [FlowAction::SetTunnel(set), FlowAction::Output(_)]
                if *flow == self.outbound(mac, set.dst) =>
            {
                Some((mac, set.dst))
            }
            _ => None,
        }
    }

    fn is_inbound(&self, flow: &Flow) -> bool {
        flow.matching
            .tunnel
            .is_some_and(|t| *flow == self.inbound(t.src))
    }

    /// The steps from `current` (the flows the datapath holds) to the flows of `table` and
    /// `group`: puts first (new peers' inbound flows before the outbound ones that make them
    /// answer), then deletions. A change of the group's peers is one put (the kernel replaces
    /// a flow's actions at once).
    pub fn plan(
        &self,
        current: &BTreeSet<Flow>,
        table: &BTreeMap<Mac, Ipv4Addr>,
        group: &BTreeSet<Ipv4Addr>,
    ) -> Vec<FlowOp> {
        let wanted = self.flows(table, group);
        let wanted_matches: BTreeSet<FlowMatch> = wanted.iter().map(|f| f.matching).collect();
        let mut puts: Vec<&Flow> = wanted.difference(current).collect();
        // Inbound (tunnel matches) first.
        puts.sort_by_key(|f| f.matching.tunnel.is_none());
        let deletes = current
            .iter()
            .filter(|f| !wanted_matches.contains(&f.matching))
            .map(|f| FlowOp::Delete(f.matching));
        puts.into_iter()
            .map(|f| FlowOp::Put(f.clone()))
            .chain(deletes)
            .collect()
    }
}

/// Applies `ops` to `flows` as the kernel does (a put replaces the flow with the same match).
pub fn apply(ops: &[FlowOp], flows: &mut BTreeSet<Flow>) {
    for op in ops {
        match op {
            FlowOp::Put(flow) => {
                flows.retain(|f| f.matching != flow.matching);
                flows.insert(flow.clone());
            }
            FlowOp::Delete(matching) => flows.retain(|f| f.matching != *matching),
        }
    }
}

#[cfg(test)]
mod tests;
