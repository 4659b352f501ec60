//! Head-end replication of this host's own group frames (Open vSwitch): the engine's side.
//! See `docs/datapaths.md` ("Broadcast, multicast and unknown unicast").

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use tracing::{debug, info};

use super::{Engine, REPAIR_INTERVAL};
use crate::forward::FastGroupPeers;
use crate::ovs::flows::MAX_GROUP_DSTS;
use crate::{DatapathKind, PeerId};

/// Head-end replication of this host's group frames (Open vSwitch).
#[derive(Debug, Default)]
pub(super) struct Group {
    /// The leaves of our own broadcast tree, from the routes.
    pub(super) candidates: BTreeSet<PeerId>,
    /// The peers the kernel's group flow sends to, as last put (None: not known yet).
    pub(super) kernel: Option<BTreeMap<PeerId, Ipv4Addr>>,
    /// The sleeve's set, and what was last written to it.
    pub(super) out: FastGroupPeers,
    pub(super) published: Option<BTreeSet<PeerId>>,
    pub(super) repaired: Option<Instant>,
}

impl Engine {
    /// The fast leaves: the candidates whose connection is on the fast path (its selector
    /// says so only while heartbeats are fresh both ways, so the peer takes VXLAN from us), at
    /// most [`MAX_GROUP_DSTS`], by their underlay address. Peers sharing an address are left
    /// out (one copy could not serve both). Only Open vSwitch replicates.
    pub fn group_wanted(&self) -> BTreeMap<PeerId, Ipv4Addr> {
        if self.config.kind != DatapathKind::Ovs {
            return BTreeMap::new();
        }
        let fast: Vec<(PeerId, Ipv4Addr)> = self
            .group
            .candidates
            .iter()
            .filter_map(|peer| {
                let c = self.conns.get(peer)?;
                (c.selector.current().kind != DatapathKind::Sleeve).then_some((*peer, c.underlay))
            })
            .collect();
        let shared = |dst: &Ipv4Addr| fast.iter().filter(|(_, d)| d == dst).count() > 1;
        fast.iter()
            .filter(|(_, dst)| !dst.is_unspecified() && !shared(dst))
            .take(MAX_GROUP_DSTS)
            .copied()
            .collect()
    }

    /// Takes the group flow to [`Self::group_wanted`] (when it changed, and at each repair),
    /// ordered so that no peer misses a group frame: the sleeve stops skipping the peers that
    /// leave before the kernel stops sending to them, and starts skipping the ones that join
    /// only once the kernel sends to them. A peer moving gets a copy from both for that
    /// instant: a brief duplicate, never a loss.
    pub(super) fn replicate(&mut self, now: Instant) {
        if self.config.kind != DatapathKind::Ovs {
            return;
        }
        let wanted = self.group_wanted();
        let repair = self
            .group
            .repaired
            .is_none_or(|at| now.saturating_duration_since(at) >= REPAIR_INTERVAL);
        if self.group.kernel.as_ref() != Some(&wanted) || repair {
            self.publish_group(&wanted);
            let dsts: BTreeSet<Ipv4Addr> = wanted.values().copied().collect();
            match self.kernel.set_group_dsts(&dsts) {
                Ok(replicates) => {
                    self.group.repaired = Some(now);
                    if self.group.kernel.as_ref() != Some(&wanted) {
                        info!(
                            peers = wanted.len(),
                            ?dsts,
                            "group frames replicated in the kernel"
                        );
                    }
                    self.group.kernel = Some(if replicates {
                        wanted.clone()
                    } else {
                        BTreeMap::new()
                    });
                }
                Err(e) => {
                    // A refused put changed nothing: the kernel holds what it held.
                    self.fdb_errors += 1;
                    self.note_error(format!("putting the group flow: {e}"));
                }
            }
        }
        self.publish_group(&wanted);
    }

    /// Publishes to the sleeve the peers both wanted and served by the kernel.
    fn publish_group(&mut self, wanted: &BTreeMap<PeerId, Ipv4Addr>) {
        let served: BTreeSet<PeerId> = self
            .group
            .kernel
            .iter()
            .flatten()
            .filter(|(peer, dst)| wanted.get(*peer) == Some(*dst))
            .map(|(peer, _)| *peer)
            .collect();
        if self.group.published.as_ref() != Some(&served) {
            debug!(
                peers = served.len(),
                "sleeve skips the fast leaves for our group frames"
            );
            self.group.out.set(served.clone());
            self.group.published = Some(served);
        }
    }
}
