//! Which departed peers' address space to reclaim, sans-IO.
//!
//! A Node that disappears (deleted, or missing from a re-list) leaves its router's peer name
//! behind in its `weft.dev/peer-name` annotation. Each router remembers those names
//! ([`Departed`]); only the reclaim leader (the Lease holder) acts on them, through the same
//! path as `weft rmpeer`. A name is never reclaimed while its peer is reachable (a Node
//! deleted and registered again, or a router that still runs), while a listed Node carries it,
//! or when it is this router; it is forgotten once it owns no space in the ring (reclaimed by
//! whoever led, or it never had any).

use std::collections::{BTreeMap, BTreeSet};

use weft_gossip::PeerName;

use super::nodes::NodeInfo;

/// Peer names of departed Nodes, with the Node each came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Departed {
    peers: BTreeMap<PeerName, String>,
}

/// What the router knows of the ring and the mesh when the decision is made.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub local: Option<PeerName>,
    /// Peers reachable now (connected directly or through others).
    pub reachable: BTreeSet<PeerName>,
    /// Peers owning address space in the ring, as this router sees it.
    pub owners: BTreeSet<PeerName>,
    /// Whether this router has a ring at all (without one there is nothing to reclaim yet).
    pub has_ring: bool,
}

impl Departed {
    /// Remembers the peer names of Nodes that are gone.
    pub fn nodes_gone(&mut self, gone: &[NodeInfo]) {
        for node in gone {
            if let Some(peer) = node.peer_name() {
                self.peers.insert(peer, node.name.clone());
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&PeerName, &String)> {
        self.peers.iter()
    }

    /// Drops the names that need nothing any more: carried by a listed Node again, or owning
    /// no space in the ring (once there is one).
    pub fn prune(&mut self, live: &BTreeSet<PeerName>, view: &MeshView) {
        self.peers.retain(|peer, _| {
            !live.contains(peer) && (!view.has_ring || view.owners.contains(peer))
        });
    }

    /// The names to reclaim now (the caller is the leader): departed, owning space, neither
    /// reachable nor this router nor on a listed Node.
    pub fn to_reclaim(&self, live: &BTreeSet<PeerName>, view: &MeshView) -> Vec<PeerName> {
        if !view.has_ring {
            return Vec::new();
        }
        self.peers
            .keys()
            .copied()
            .filter(|p| Some(*p) != view.local)
            .filter(|p| !view.reachable.contains(p))
            .filter(|p| !live.contains(p))
            .filter(|p| view.owners.contains(p))
            .collect()
    }

    /// The leader reclaimed `peer`: nothing more to do for it (the ring's gossip tells the
    /// others).
    pub fn reclaimed(&mut self, peer: &PeerName) {
        self.peers.remove(peer);
    }

    /// The Node a departed name came from.
    pub fn node_of(&self, peer: &PeerName) -> Option<&str> {
        self.peers.get(peer).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(i: u8) -> PeerName {
        format!("aa:00:00:00:00:{i:02x}").parse().unwrap()
    }

    fn gone(name: &str, p: Option<PeerName>) -> NodeInfo {
        let mut n = NodeInfo::new(name, &[]);
        n.peer_annotation = p.map(|p| p.to_string());
        n
    }

    fn view(local: u8, reachable: &[u8], owners: &[u8]) -> MeshView {
        MeshView {
            local: Some(peer(local)),
            reachable: reachable.iter().map(|i| peer(*i)).collect(),
            owners: owners.iter().map(|i| peer(*i)).collect(),
            has_ring: true,
        }
    }

    #[test]
    fn a_dead_departed_owner_is_reclaimed() {
        let mut d = Departed::default();
        d.nodes_gone(&[gone("c", Some(peer(3))), gone("x", None)]);
        assert_eq!(d.len(), 1);
        let v = view(1, &[2], &[1, 2, 3]);
        assert_eq!(d.to_reclaim(&BTreeSet::new(), &v), vec![peer(3)]);
        assert_eq!(d.node_of(&peer(3)), Some("c"));
    }

    #[test]
    fn never_a_reachable_peer_a_listed_one_or_this_router() {
        let mut d = Departed::default();
        d.nodes_gone(&[
            gone("a", Some(peer(1))),
            gone("b", Some(peer(2))),
            gone("c", Some(peer(3))),
        ]);
        let v = view(1, &[2], &[1, 2, 3]);
        let live: BTreeSet<_> = [peer(3)].into();
        assert!(d.to_reclaim(&live, &v).is_empty());
        // Without a ring nothing is reclaimed, nor forgotten.
        let no_ring = MeshView {
            has_ring: false,
            ..view(1, &[], &[])
        };
        assert!(d.to_reclaim(&BTreeSet::new(), &no_ring).is_empty());
        d.prune(&BTreeSet::new(), &no_ring);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn names_that_own_nothing_or_came_back_are_forgotten() {
        let mut d = Departed::default();
        d.nodes_gone(&[
            gone("b", Some(peer(2))),
            gone("c", Some(peer(3))),
            gone("d", Some(peer(4))),
        ]);
        let live: BTreeSet<_> = [peer(4)].into();
        d.prune(&live, &view(1, &[], &[1, 3]));
        assert_eq!(d.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![peer(3)]);
    }

    proptest! {
        #[test]
        fn reclaim_is_safe(
            departed in proptest::collection::btree_set(0u8..8, 0..8),
            reachable in proptest::collection::btree_set(0u8..8, 0..8),
            owners in proptest::collection::btree_set(0u8..8, 0..8),
            live in proptest::collection::btree_set(0u8..8, 0..8),
            local in 0u8..8,
        ) {
            let mut d = Departed::default();
            let nodes: Vec<NodeInfo> = departed.iter().map(|i| gone(&format!("n{i}"), Some(peer(*i)))).collect();
            d.nodes_gone(&nodes);
            let reachable: Vec<u8> = reachable.into_iter().collect();
            let owners: Vec<u8> = owners.into_iter().collect();
            let v = view(local, &reachable, &owners);
            let live: BTreeSet<PeerName> = live.iter().map(|i| peer(*i)).collect();
            for p in d.to_reclaim(&live, &v) {
                prop_assert!(p != peer(local));
                prop_assert!(!v.reachable.contains(&p));
                prop_assert!(!live.contains(&p));
                prop_assert!(v.owners.contains(&p));
                prop_assert!(departed.iter().any(|i| peer(*i) == p));
            }
            // Pruning never drops a name that would still be reclaimed.
            let before = d.to_reclaim(&live, &v);
            d.prune(&live, &v);
            prop_assert_eq!(d.to_reclaim(&live, &v), before);
        }
    }
}
