//! Where one frame goes: the local bridge, one next hop, or the next hops of a broadcast tree.
//!
//! Pure decisions over the MAC table and the router's routes, handed in through [`Routing`]
//! as plain peer lists. Unicast follows the router's shortest paths hop by hop; broadcast,
//! multicast and unknown unicast follow the BFS tree rooted at the frame's origin, each peer
//! forwarding to its children in it, so every peer gets exactly one copy when all peers agree
//! on the topology. The frame header's `src` is always the origin peer, never the relay.
//!
//! One exception, for the Open vSwitch fast path's head-end replication (`docs/datapaths.md`):
//! this host's own multicast and broadcast frames are not sent over the sleeve to the peers
//! the kernel sent a copy to already ([`FastGroupPeers`]), as long as they are leaves of our
//! tree ([`Routing::is_broadcast_leaf`]): a relay must still get the sleeve's copy to pass on.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use crate::PeerId;
use crate::mac::{Mac, MacOwner, MacTable, is_multicast};

/// The `dst` peer of a frame that follows the origin's broadcast tree (all ones).
pub const BROADCAST: PeerId = [0xff; 6];

/// What the router knows, passed in as plain data (the datapath never sees gossip).
pub trait Routing {
    /// This peer.
    fn local(&self) -> PeerId;
    /// First hop towards `dst` over established, symmetric connections; None if unreachable.
    fn next_hop(&self, dst: PeerId) -> Option<PeerId>;
    /// Next hops for a broadcast that entered the mesh at `origin` and reached us (our children
    /// in origin's broadcast tree).
    fn broadcast_hops(&self, origin: PeerId) -> Vec<PeerId>;
    /// Whether `peer` is a leaf of our own broadcast tree: our child in it, with no child of
    /// its own. A copy of our broadcast that reaches it by another way needs no relaying.
    /// Without this knowledge: no peer is (every group frame then takes the whole tree).
    fn is_broadcast_leaf(&self, peer: PeerId) -> bool {
        let _ = peer;
        false
    }
}

/// The peers that get this host's own multicast and broadcast frames from the kernel fast
/// path (head-end replication): written by the fast path's engine, only ever a subset of the
/// peers its kernel replicates to; read by the sleeve for each group frame from the bridge.
/// Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct FastGroupPeers(Arc<RwLock<BTreeSet<PeerId>>>);

impl FastGroupPeers {
    pub fn set(&self, peers: BTreeSet<PeerId>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    pub fn read(&self) -> RwLockReadGuard<'_, BTreeSet<PeerId>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Deliver to the local bridge (inject into the TAP).
    Local,
    /// Send to one peer (which may relay it further), keeping `dst`.
    Unicast { next_hop: PeerId, dst: PeerId },
    /// Flood: deliver locally (if `deliver_locally`) and send to each of `hops`, keeping
    /// `origin` as the frame's src and [`BROADCAST`] as its dst.
    Flood {
        deliver_locally: bool,
        hops: Vec<PeerId>,
    },
    /// Nothing to do, with the reason (counted in status).
    Drop(DropReason),
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The destination peer is unreachable over established connections.
    NoRoute,
    /// Captured from the bridge for a local MAC: the bridge already delivered it.
    LocalDestination,
    /// A frame that entered the mesh here came back to us.
    SelfLoop,
}

/// A frame captured from the local bridge, with destination MAC `dst_mac`.
///
/// - dst multicast/broadcast → [`from_bridge_group`]
/// - unknown MAC → Flood along our own broadcast tree
/// - known remote owner P → Unicast towards P, or Drop(NoRoute)
/// - known local owner → Drop(LocalDestination) (the bridge already delivered it)
pub fn from_bridge(
    dst_mac: &Mac,
    macs: &MacTable,
    routing: &(impl Routing + ?Sized),
    fast_group: &BTreeSet<PeerId>,
    now: Instant,
) -> Decision {
    if is_multicast(dst_mac) {
        from_bridge_group(routing, fast_group)
    } else {
        from_bridge_to(macs.lookup(dst_mac, now), routing)
    }
}

/// A multicast or broadcast frame captured from the local bridge: Flood along our own
/// broadcast tree, except to the children that are leaves of it and in `fast_group` (the
/// kernel sent them a copy). Unknown unicast is not excepted: the fast path never floods it.
pub fn from_bridge_group(
    routing: &(impl Routing + ?Sized),
    fast_group: &BTreeSet<PeerId>,
) -> Decision {
    let mut decision = flood(false, routing.local(), routing);
    if let Decision::Flood { hops, .. } = &mut decision
        && !fast_group.is_empty()
    {
        hops.retain(|hop| !(fast_group.contains(hop) && routing.is_broadcast_leaf(*hop)));
    }
    decision
}

/// [`from_bridge`] for a caller that has looked up the destination MAC already: `owner` is
/// what the MAC table says (None for a multicast/broadcast or unknown MAC).
pub fn from_bridge_to(owner: Option<MacOwner>, routing: &(impl Routing + ?Sized)) -> Decision {
    let local = routing.local();
    match owner {
        Some(MacOwner::Local) => Decision::Drop(DropReason::LocalDestination),
        // An entry naming ourselves or the broadcast id cannot be a unicast destination (the
        // router should never learn one); treating the MAC as unknown still delivers it.
        Some(MacOwner::Remote(peer)) if peer != local && peer != BROADCAST => {
            unicast(peer, routing)
        }
        Some(MacOwner::Remote(_)) | None => flood(false, local, routing),
    }
}

/// A frame received from the mesh with header `src` = `origin` peer and `dst` = destination
/// peer or [`BROADCAST`].
///
/// - origin == local → Drop(SelfLoop): checked first, so that a broadcast of ours that comes
///   back while trees disagree (topology changing) is not delivered or flooded again
/// - dst == local → Local
/// - dst == BROADCAST → Flood, delivering locally, to our children in origin's tree
/// - otherwise relay: Unicast towards dst, or Drop(NoRoute)
pub fn from_mesh(origin: PeerId, dst: PeerId, routing: &(impl Routing + ?Sized)) -> Decision {
    let local = routing.local();
    if origin == local {
        Decision::Drop(DropReason::SelfLoop)
    } else if dst == local {
        Decision::Local
    } else if dst == BROADCAST {
        flood(true, origin, routing)
    } else {
        unicast(dst, routing)
    }
}

fn unicast(dst: PeerId, routing: &(impl Routing + ?Sized)) -> Decision {
    match routing.next_hop(dst) {
        // A hop back to ourselves would loop inside this host.
        Some(next_hop) if next_hop != routing.local() => Decision::Unicast { next_hop, dst },
        _ => Decision::Drop(DropReason::NoRoute),
    }
}

fn flood(deliver_locally: bool, origin: PeerId, routing: &(impl Routing + ?Sized)) -> Decision {
    let local = routing.local();
    let mut hops = routing.broadcast_hops(origin);
    // Neither we nor the origin is ever a child in the origin's tree; a copy sent there would
    // only be dropped or, worse, flooded again.
    hops.retain(|hop| *hop != local && *hop != origin && *hop != BROADCAST);
    Decision::Flood {
        deliver_locally,
        hops,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
    use std::time::Duration;

    use crate::mac::DEFAULT_EXPIRY;

    const A: PeerId = [0x02, 0, 0, 0, 0, 0xa];
    const B: PeerId = [0x02, 0, 0, 0, 0, 0xb];
    const C: PeerId = [0x02, 0, 0, 0, 0, 0xc];
    const D: PeerId = [0x02, 0, 0, 0, 0, 0xd];
    const POD: Mac = [0x0a, 0x58, 0, 0, 0, 1];

    /// Fixed answers, for the branch tests.
    struct Fixed {
        local: PeerId,
        next_hops: HashMap<PeerId, PeerId>,
        trees: HashMap<PeerId, Vec<PeerId>>,
        leaves: Vec<PeerId>,
    }

    impl Routing for Fixed {
        fn local(&self) -> PeerId {
            self.local
        }
        fn next_hop(&self, dst: PeerId) -> Option<PeerId> {
            self.next_hops.get(&dst).copied()
        }
        fn broadcast_hops(&self, origin: PeerId) -> Vec<PeerId> {
            self.trees.get(&origin).cloned().unwrap_or_default()
        }
        fn is_broadcast_leaf(&self, peer: PeerId) -> bool {
            self.leaves.contains(&peer)
        }
    }

    /// We are A; B is direct, C is behind B, D is unreachable. A's tree: A → B; B's tree:
    /// B → A → C (A relays B's broadcasts to C).
    fn routing_at_a() -> Fixed {
        Fixed {
            local: A,
            next_hops: HashMap::from([(B, B), (C, B)]),
            trees: HashMap::from([(A, vec![B]), (B, vec![C])]),
            leaves: vec![],
        }
    }

    fn table_with(mac: Mac, owner: MacOwner, now: Instant) -> MacTable {
        let mut table = MacTable::new(DEFAULT_EXPIRY);
        table.learn(mac, owner, now);
        table
    }

    #[test]
    fn bridge_broadcast_and_multicast_flood_our_tree_without_local_delivery() {
        let now = Instant::now();
        let table = MacTable::default();
        for dst in [
            [0xff; 6],
            [0x01, 0, 0x5e, 0, 0, 0xfb],
            [0x33, 0x33, 0, 0, 0, 1],
        ] {
            assert_eq!(
                from_bridge(&dst, &table, &routing_at_a(), &BTreeSet::new(), now),
                Decision::Flood {
                    deliver_locally: false,
                    hops: vec![B]
                }
            );
        }
    }

    #[test]
    fn our_group_frames_skip_the_fast_leaves_the_kernel_served_and_nothing_else() {
        let now = Instant::now();
        // A's tree: A → B, C, D; B relays to others, C and D are leaves.
        let routing = Fixed {
            local: A,
            next_hops: HashMap::from([(B, B), (C, C), (D, D)]),
            trees: HashMap::from([(A, vec![B, C, D])]),
            leaves: vec![C, D],
        };
        let flood = |hops: Vec<PeerId>| Decision::Flood {
            deliver_locally: false,
            hops,
        };
        // The kernel served B (a relay: stale), C (a leaf), and A itself (nonsense).
        let fast = BTreeSet::from([A, B, C]);
        for dst in [
            [0xff; 6],
            [0x01, 0, 0x5e, 0, 0, 0xfb],
            [0x33, 0x33, 0, 0, 0, 1],
        ] {
            assert_eq!(
                from_bridge(&dst, &MacTable::default(), &routing, &fast, now),
                flood(vec![B, D])
            );
        }
        // Unknown unicast takes the whole tree: the kernel never floods it.
        assert_eq!(
            from_bridge(&POD, &MacTable::default(), &routing, &fast, now),
            flood(vec![B, C, D])
        );
        // Without the set, or without leaf knowledge, nothing is skipped.
        assert_eq!(
            from_bridge_group(&routing, &BTreeSet::new()),
            flood(vec![B, C, D])
        );
        let unknowing = Fixed {
            leaves: vec![],
            ..routing
        };
        assert_eq!(from_bridge_group(&unknowing, &fast), flood(vec![B, C, D]));
        // Frames from the mesh are never affected.
        assert_eq!(
            from_mesh(B, BROADCAST, &unknowing),
            flood(vec![]).with_local()
        );
    }

    impl Decision {
        fn with_local(self) -> Self {
            match self {
                Decision::Flood { hops, .. } => Decision::Flood {
                    deliver_locally: true,
                    hops,
                },
                other => other,
            }
        }
    }

    #[test]
    fn bridge_unknown_and_expired_unicast_flood() {
        let now = Instant::now();
        let flood = Decision::Flood {
            deliver_locally: false,
            hops: vec![B],
        };
        assert_eq!(
            from_bridge(
                &POD,
                &MacTable::default(),
                &routing_at_a(),
                &BTreeSet::new(),
                now
            ),
            flood
        );
        let table = table_with(POD, MacOwner::Remote(C), now);
        assert_eq!(
            from_bridge(
                &POD,
                &table,
                &routing_at_a(),
                &BTreeSet::new(),
                now + DEFAULT_EXPIRY
            ),
            flood
        );
    }

    #[test]
    fn bridge_known_remote_goes_to_the_next_hop_keeping_the_destination() {
        let now = Instant::now();
        let table = table_with(POD, MacOwner::Remote(C), now);
        assert_eq!(
            from_bridge(&POD, &table, &routing_at_a(), &BTreeSet::new(), now),
            Decision::Unicast {
                next_hop: B,
                dst: C
            }
        );
    }

    #[test]
    fn bridge_unreachable_owner_is_no_route() {
        let now = Instant::now();
        let table = table_with(POD, MacOwner::Remote(D), now);
        assert_eq!(
            from_bridge(&POD, &table, &routing_at_a(), &BTreeSet::new(), now),
            Decision::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn bridge_local_destination_is_dropped() {
        let now = Instant::now();
        let table = table_with(POD, MacOwner::Local, now);
        assert_eq!(
            from_bridge(
                &POD,
                &table,
                &routing_at_a(),
                &BTreeSet::new(),
                now + Duration::from_secs(1)
            ),
            Decision::Drop(DropReason::LocalDestination)
        );
    }

    #[test]
    fn bridge_owner_that_cannot_be_a_destination_is_treated_as_unknown() {
        let now = Instant::now();
        for bogus in [A, BROADCAST] {
            let table = table_with(POD, MacOwner::Remote(bogus), now);
            assert_eq!(
                from_bridge(&POD, &table, &routing_at_a(), &BTreeSet::new(), now),
                Decision::Flood {
                    deliver_locally: false,
                    hops: vec![B]
                }
            );
        }
    }

    #[test]
    fn mesh_frame_for_us_is_delivered() {
        assert_eq!(from_mesh(C, A, &routing_at_a()), Decision::Local);
    }

    #[test]
    fn mesh_broadcast_is_delivered_and_relayed_down_the_origins_tree() {
        assert_eq!(
            from_mesh(B, BROADCAST, &routing_at_a()),
            Decision::Flood {
                deliver_locally: true,
                hops: vec![C]
            }
        );
        // A leaf in C's tree delivers but relays nothing.
        assert_eq!(
            from_mesh(C, BROADCAST, &routing_at_a()),
            Decision::Flood {
                deliver_locally: true,
                hops: vec![]
            }
        );
    }

    #[test]
    fn our_own_frames_coming_back_are_dropped() {
        for dst in [A, B, BROADCAST] {
            assert_eq!(
                from_mesh(A, dst, &routing_at_a()),
                Decision::Drop(DropReason::SelfLoop)
            );
        }
    }

    #[test]
    fn mesh_frames_for_others_are_relayed_or_dropped_without_route() {
        assert_eq!(
            from_mesh(B, C, &routing_at_a()),
            Decision::Unicast {
                next_hop: B,
                dst: C
            }
        );
        assert_eq!(
            from_mesh(B, D, &routing_at_a()),
            Decision::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn inconsistent_routes_never_send_to_ourselves_or_the_origin() {
        let confused = Fixed {
            local: A,
            next_hops: HashMap::from([(C, A)]),
            trees: HashMap::from([(B, vec![A, B, BROADCAST, C])]),
            leaves: vec![],
        };
        assert_eq!(
            from_mesh(B, C, &confused),
            Decision::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            from_mesh(B, BROADCAST, &confused),
            Decision::Flood {
                deliver_locally: true,
                hops: vec![C]
            }
        );
    }

    /// BFS routing over a shared undirected graph, as `weft_gossip::routes` computes it: each
    /// level in PeerId order, a node's parent the first node in that order that reaches it.
    /// (`flood_tests` routes its sleeve graphs with it too.)
    pub(crate) struct Bfs<'a> {
        pub(crate) local: PeerId,
        pub(crate) graph: &'a BTreeMap<PeerId, BTreeSet<PeerId>>,
    }

    impl Bfs<'_> {
        /// Parent of every node reached from `root` (the root itself excluded).
        pub(crate) fn tree(&self, root: PeerId) -> BTreeMap<PeerId, PeerId> {
            let mut parent = BTreeMap::new();
            let mut visited = BTreeSet::from([root]);
            let mut level = vec![root];
            while !level.is_empty() {
                level.sort_unstable();
                let mut next = Vec::new();
                for node in &level {
                    for neighbour in self.graph.get(node).into_iter().flatten() {
                        if visited.insert(*neighbour) {
                            parent.insert(*neighbour, *node);
                            next.push(*neighbour);
                        }
                    }
                }
                level = next;
            }
            parent
        }
    }

    impl Routing for Bfs<'_> {
        fn local(&self) -> PeerId {
            self.local
        }

        fn next_hop(&self, dst: PeerId) -> Option<PeerId> {
            let parent = self.tree(self.local);
            let mut at = dst;
            loop {
                let up = *parent.get(&at)?;
                if up == self.local {
                    return Some(at);
                }
                at = up;
            }
        }

        fn broadcast_hops(&self, origin: PeerId) -> Vec<PeerId> {
            self.tree(origin)
                .into_iter()
                .filter(|(_, parent)| *parent == self.local)
                .map(|(child, _)| child)
                .collect()
        }

        fn is_broadcast_leaf(&self, peer: PeerId) -> bool {
            let tree = self.tree(self.local);
            tree.get(&peer) == Some(&self.local) && !tree.values().any(|p| *p == peer)
        }
    }

    /// A random connected graph of 2..=12 peers with shuffled ids: a random spanning tree plus
    /// random extra edges.
    fn arb_topology() -> impl Strategy<Value = (Vec<PeerId>, BTreeMap<PeerId, BTreeSet<PeerId>>)> {
        (2usize..=12)
            .prop_flat_map(|n| {
                let ids = prop::collection::btree_set(
                    any::<PeerId>().prop_filter("not broadcast", |id| *id != BROADCAST),
                    n,
                )
                .prop_map(|ids| ids.into_iter().collect::<Vec<_>>())
                .prop_shuffle();
                let parents: Vec<_> = (1..n).map(|i| 0..i).collect();
                let extra = prop::collection::vec((0..n, 0..n), 0..2 * n);
                (ids, parents, extra)
            })
            .prop_map(|(ids, parents, extra)| {
                let mut graph: BTreeMap<PeerId, BTreeSet<PeerId>> =
                    ids.iter().map(|id| (*id, BTreeSet::new())).collect();
                let tree_edges = parents.into_iter().enumerate().map(|(i, p)| (i + 1, p));
                for (x, y) in tree_edges.chain(extra).filter(|(x, y)| x != y) {
                    graph.entry(ids[x]).or_default().insert(ids[y]);
                    graph.entry(ids[y]).or_default().insert(ids[x]);
                }
                (ids, graph)
            })
    }

    fn connected(graph: &BTreeMap<PeerId, BTreeSet<PeerId>>, a: PeerId, b: PeerId) -> bool {
        graph
            .get(&a)
            .is_some_and(|neighbours| neighbours.contains(&b))
    }

    proptest! {
        #[test]
        fn broadcast_fan_out_gives_each_peer_exactly_one_copy(
            (ids, graph) in arb_topology(),
            origin in any::<prop::sample::Index>(),
            dst_mac in prop_oneof![
                Just([0xff; 6]),
                any::<Mac>().prop_map(|mut mac| { mac[0] |= 1; mac }),
                any::<Mac>().prop_map(|mut mac| { mac[0] &= !1; mac }),
            ],
        ) {
            let now = Instant::now();
            let origin = *origin.get(&ids);
            let at = |local| Bfs { local, graph: &graph };
            // Nothing learned: unicast MACs are unknown and flood like broadcast.
            let decision = from_bridge(&dst_mac, &MacTable::default(), &at(origin), &BTreeSet::new(), now);
            let Decision::Flood { deliver_locally: false, hops } = decision else {
                return Err(TestCaseError::fail(format!("origin decided {decision:?}")));
            };

            let mut received: BTreeMap<PeerId, u32> = BTreeMap::new();
            let mut delivered: BTreeMap<PeerId, u32> = BTreeMap::new();
            let mut queue: VecDeque<(PeerId, PeerId)> =
                hops.into_iter().map(|hop| (origin, hop)).collect();
            while let Some((sender, peer)) = queue.pop_front() {
                prop_assert!(connected(&graph, sender, peer), "{sender:?} -> {peer:?} is no edge");
                let copies = received.entry(peer).or_default();
                *copies += 1;
                // Act on the first copy only, so that a failure shows as a count, not a hang.
                if *copies > 1 {
                    continue;
                }
                match from_mesh(origin, BROADCAST, &at(peer)) {
                    Decision::Flood { deliver_locally, hops } => {
                        if deliver_locally {
                            *delivered.entry(peer).or_default() += 1;
                        }
                        queue.extend(hops.into_iter().map(|hop| (peer, hop)));
                    }
                    Decision::Drop(DropReason::SelfLoop) if peer == origin => {}
                    other => prop_assert!(false, "{peer:?} decided {other:?}"),
                }
            }
            let everyone_else: BTreeMap<PeerId, u32> =
                ids.iter().filter(|id| **id != origin).map(|id| (*id, 1)).collect();
            prop_assert_eq!(&received, &everyone_else);
            prop_assert_eq!(&delivered, &everyone_else);
        }

        #[test]
        fn unicast_reaches_the_owner_in_at_most_n_hops_and_is_delivered_once(
            (ids, graph) in arb_topology(),
            src in any::<prop::sample::Index>(),
            owner in any::<prop::sample::Index>(),
            mac in any::<Mac>().prop_map(|mut mac| { mac[0] &= !1; mac[5] |= 1; mac }),
        ) {
            let now = Instant::now();
            let src = *src.get(&ids);
            let owner = *owner.get(&ids);
            prop_assume!(src != owner);
            let at = |local| Bfs { local, graph: &graph };
            let mut table = MacTable::default();
            prop_assert_eq!(table.learn(mac, MacOwner::Remote(owner), now), Some(crate::mac::Learned::New));

            let decision = from_bridge(&mac, &table, &at(src), &BTreeSet::new(), now);
            let Decision::Unicast { mut next_hop, dst } = decision else {
                return Err(TestCaseError::fail(format!("{src:?} decided {decision:?}")));
            };
            prop_assert_eq!(dst, owner);
            let mut sender = src;
            let mut hops = 0;
            let mut delivered_at = Vec::new();
            loop {
                prop_assert!(connected(&graph, sender, next_hop), "{sender:?} -> {next_hop:?} is no edge");
                hops += 1;
                prop_assert!(hops <= ids.len(), "loop from {src:?} to {owner:?}");
                match from_mesh(src, dst, &at(next_hop)) {
                    Decision::Local => {
                        delivered_at.push(next_hop);
                        break;
                    }
                    Decision::Unicast { next_hop: hop, dst: kept } => {
                        prop_assert_eq!(kept, dst);
                        sender = next_hop;
                        next_hop = hop;
                    }
                    other => prop_assert!(false, "{next_hop:?} decided {other:?}"),
                }
            }
            prop_assert_eq!(delivered_at, vec![owner]);
        }
    }
}
