//! Unicast next hops and broadcast trees, computed from the topology.
//!
//! Every peer must compute the same routes from the same topology, or hop-by-hop forwarding
//! loops and broadcasts duplicate. So routes are plain breadth-first searches over a graph that
//! does not depend on who computes it, each BFS level processed in [`PeerName`] order: a node's
//! parent is the first node, in that order, that reaches it, so ties break identically
//! everywhere. Unicast follows shortest paths (each hop is strictly closer to the destination,
//! hence no loops); a broadcast from `src` follows the BFS tree rooted at `src`, each node
//! forwarding to its own children in it (hence exactly one copy per reachable peer).
//!
//! # The two link sets
//!
//! * [`LinkSet::EstablishedSymmetric`]: undirected edge A–B iff A's entry lists B as established
//!   and B's entry lists A as established. Both sides vouch for a working data path.
//! * [`LinkSet::All`]: directed edge A→B iff A's entry lists B, in any state. Directed on
//!   purpose: a peer can only send on connections it has, and the only statement about A's
//!   connections that A acts upon is A's own entry. The tempting alternative — the undirected
//!   union of listed edges, with only the local peer restricted to its own connections for its
//!   first hop — is not the same graph at every peer and loops: if H routes to D via H' using
//!   an edge H'–N that only N lists, H' cannot take it and may route back through H, which
//!   again picks H'. Applying "you may send on what you list" to every peer, not only the local
//!   one, keeps the graph shared, the hops sendable, and the tree consistent. Peers listed by
//!   someone but without an entry of their own are leaves: reachable, but never relays.
//!
//! Entries are keyed by their map key; a connection of a peer to itself is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::peer::PeerName;
use crate::topology::{PeerEntry, Topology};

/// Which edges a route may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSet {
    /// A–B usable only if BOTH A's entry lists B as established AND B's entry lists A as
    /// established (data frames).
    EstablishedSymmetric,
    /// A→B usable if A's entry lists B, in any state (gossip and control relays). See the
    /// module docs for why this is directed.
    All,
}

impl LinkSet {
    fn index(self) -> usize {
        match self {
            LinkSet::EstablishedSymmetric => 0,
            LinkSet::All => 1,
        }
    }
}

/// Adjacency over node indices; indices follow name order, and each list is sorted, so
/// iterating in index order is iterating in name order.
#[derive(Debug, Clone, Default)]
struct Graph {
    adjacency: Vec<Vec<usize>>,
}

/// A BFS tree: `parent[v]` is `None` for the root and for unreached nodes.
struct BfsTree {
    order: Vec<usize>,
    parent: Vec<Option<usize>>,
}

impl Graph {
    fn bfs(&self, root: usize) -> BfsTree {
        let node_count = self.adjacency.len();
        let mut parent = vec![None; node_count];
        let mut visited = vec![false; node_count];
        let mut order = Vec::new();
        if root >= node_count {
            return BfsTree { order, parent };
        }
        visited[root] = true;
        let mut level = vec![root];
        while !level.is_empty() {
            order.extend_from_slice(&level);
            let mut next = Vec::new();
            for &node in &level {
                for &neighbour in self.adjacency.get(node).map_or(&[][..], Vec::as_slice) {
                    if let Some(seen) = visited.get_mut(neighbour).filter(|seen| !**seen) {
                        *seen = true;
                        parent[neighbour] = Some(node);
                        next.push(neighbour);
                    }
                }
            }
            // Parents were assigned in name order; the next level is processed in name order too.
            next.sort_unstable();
            level = next;
        }
        BfsTree { order, parent }
    }
}

/// Routes as seen from one peer over one topology, for both link sets.
#[derive(Debug, Clone)]
pub struct Routes {
    local: PeerName,
    /// Every peer that has an entry or is listed by one, sorted; a node's index is its position.
    names: Vec<PeerName>,
    /// Indexed by [`LinkSet::index`].
    graphs: [Graph; 2],
    /// Destination => first hop from `local`, per link set.
    first_hops: [BTreeMap<PeerName, PeerName>; 2],
    /// Our children in the broadcast tree of each source (by node index), per link set;
    /// computed on first use.
    broadcast_children: Vec<[OnceLock<Vec<PeerName>>; 2]>,
}

impl Routes {
    /// Compute routes as seen from `local` over `peers` (the full set of entries). If `local`
    /// has no entry, nothing is reachable.
    pub fn compute(local: PeerName, peers: &BTreeMap<PeerName, PeerEntry>) -> Self {
        let names: Vec<PeerName> = peers
            .iter()
            .flat_map(|(&name, entry)| {
                std::iter::once(name).chain(entry.connections.keys().copied())
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index_of = |name: &PeerName| names.binary_search(name).ok();

        let mut symmetric = Graph {
            adjacency: vec![Vec::new(); names.len()],
        };
        let mut all = Graph {
            adjacency: vec![Vec::new(); names.len()],
        };
        for (&name, entry) in peers {
            let Some(from) = index_of(&name) else {
                continue;
            };
            for (&remote, info) in &entry.connections {
                let Some(to) = index_of(&remote).filter(|&to| to != from) else {
                    continue;
                };
                // `connections` iterates in name order, so each list comes out sorted.
                all.adjacency[from].push(to);
                let remote_lists_us_established = peers
                    .get(&remote)
                    .and_then(|remote_entry| remote_entry.connections.get(&name))
                    .is_some_and(|back| back.established);
                if info.established && remote_lists_us_established {
                    symmetric.adjacency[from].push(to);
                }
            }
        }

        let graphs = [symmetric, all];
        let local_index = index_of(&local);
        // Without an entry `local` has no edges, so nothing is reachable: no special case needed.
        let first_hops = graphs.each_ref().map(|graph| match local_index {
            Some(root) => first_hops(graph, root, &names),
            None => BTreeMap::new(),
        });
        let broadcast_children = names.iter().map(|_| Default::default()).collect();
        Self {
            local,
            names,
            graphs,
            first_hops,
            broadcast_children,
        }
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    /// First hop towards `dst`; `None` if unreachable or `dst` is us.
    pub fn unicast(&self, links: LinkSet, dst: PeerName) -> Option<PeerName> {
        self.first_hops[links.index()].get(&dst).copied()
    }

    /// Next hops for a broadcast that originated at `src` and has reached us: our children in
    /// the BFS tree rooted at `src`, sorted by name. When every peer applies this, every peer
    /// reachable from `src` receives exactly one copy. Empty if we are not in that tree.
    pub fn broadcast(&self, links: LinkSet, src: PeerName) -> Vec<PeerName> {
        let (Ok(root), Ok(local)) = (
            self.names.binary_search(&src),
            self.names.binary_search(&self.local),
        ) else {
            return Vec::new();
        };
        let Some(cache) = self.broadcast_children.get(root) else {
            return Vec::new();
        };
        cache[links.index()]
            .get_or_init(|| {
                let tree = self.graphs[links.index()].bfs(root);
                tree.order
                    .iter()
                    .filter(|&&node| tree.parent[node] == Some(local))
                    .map(|&node| self.names[node])
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .clone()
    }

    /// The leaves of our own broadcast tree: our children in the BFS tree rooted at us that
    /// have no children of their own, sorted by name. A copy of our broadcast that reaches one
    /// of them by another way (the kernel fast path's head-end replication) needs no relaying
    /// from it; a child with children must get the tree's copy, to pass on.
    pub fn broadcast_leaves(&self, links: LinkSet) -> Vec<PeerName> {
        let Ok(local) = self.names.binary_search(&self.local) else {
            return Vec::new();
        };
        let tree = self.graphs[links.index()].bfs(local);
        let mut has_children = vec![false; self.names.len()];
        for parent in tree.parent.iter().flatten() {
            has_children[*parent] = true;
        }
        tree.order
            .iter()
            .filter(|&&node| tree.parent[node] == Some(local) && !has_children[node])
            .map(|&node| self.names[node])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Peers reachable from us (excluding us), sorted.
    pub fn reachable(&self, links: LinkSet) -> Vec<PeerName> {
        self.first_hops[links.index()].keys().copied().collect()
    }

    /// Peers reachable from us (excluding us) with their first hop, sorted by peer; for status
    /// display.
    pub fn table(&self, links: LinkSet) -> Vec<(PeerName, PeerName)> {
        self.first_hops[links.index()]
            .iter()
            .map(|(&dst, &hop)| (dst, hop))
            .collect()
    }
}

fn first_hops(graph: &Graph, root: usize, names: &[PeerName]) -> BTreeMap<PeerName, PeerName> {
    let tree = graph.bfs(root);
    let mut first_hop: Vec<Option<usize>> = vec![None; names.len()];
    // BFS order visits each parent before its children.
    for &node in &tree.order {
        first_hop[node] = match tree.parent[node] {
            Some(parent) if parent == root => Some(node),
            Some(parent) => first_hop[parent],
            None => None,
        };
    }
    first_hop
        .iter()
        .enumerate()
        .filter_map(|(node, hop)| Some((names[node], names[(*hop)?])))
        .collect()
}

impl Topology {
    /// Routes from our own position over everything we know.
    pub fn routes(&self) -> Routes {
        Routes::compute(self.local_name(), self.peer_map())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;
    use crate::topology::ConnectionInfo;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    /// Entries from `(owner, remote, established)` listings.
    fn entries(listings: &[(u64, u64, bool)]) -> BTreeMap<PeerName, PeerEntry> {
        let mut peers = BTreeMap::new();
        for &(owner, remote, established) in listings {
            let entry = peers.entry(name(owner)).or_insert_with(|| PeerEntry {
                name: name(owner),
                nickname: format!("peer{owner}"),
                uid: owner,
                version: 1,
                connections: BTreeMap::new(),
            });
            let info = ConnectionInfo {
                remote_addr: None,
                outbound: owner < remote,
                established,
            };
            entry.connections.insert(name(remote), info);
        }
        peers
    }

    /// Both sides list each other as established.
    fn links(edges: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
        edges
            .iter()
            .flat_map(|&(a, b)| [(a, b, true), (b, a, true)])
            .collect()
    }

    const BOTH: [LinkSet; 2] = [LinkSet::EstablishedSymmetric, LinkSet::All];

    #[test]
    fn line_routes_through_the_middle() {
        let peers = entries(&links(&[(1, 2), (2, 3)]));
        let routes = Routes::compute(name(1), &peers);
        for set in BOTH {
            assert_eq!(routes.unicast(set, name(3)), Some(name(2)));
            assert_eq!(routes.unicast(set, name(2)), Some(name(2)));
            assert_eq!(routes.unicast(set, name(1)), None);
            assert_eq!(
                routes.table(set),
                vec![(name(2), name(2)), (name(3), name(2))]
            );
            assert_eq!(routes.broadcast(set, name(1)), vec![name(2)]);
            assert_eq!(
                Routes::compute(name(2), &peers).broadcast(set, name(1)),
                vec![name(3)]
            );
            assert!(
                Routes::compute(name(3), &peers)
                    .broadcast(set, name(1))
                    .is_empty()
            );
        }
    }

    #[test]
    fn the_leaves_of_our_tree_are_our_children_without_children() {
        // 1 - 2 - 3, 1 - 4, 1 - 5 - 6, 4 - 6: from 1, 2 relays to 3, 4 reaches 6 first (name
        // order), so 5 is a leaf and 4 is not.
        let peers = entries(&links(&[(1, 2), (2, 3), (1, 4), (1, 5), (5, 6), (4, 6)]));
        for set in BOTH {
            let routes = Routes::compute(name(1), &peers);
            assert_eq!(routes.broadcast_leaves(set), vec![name(5)]);
            // A full mesh: every peer is a leaf.
            let mesh = entries(&links(&[(1, 2), (1, 3), (2, 3)]));
            assert_eq!(
                Routes::compute(name(1), &mesh).broadcast_leaves(set),
                vec![name(2), name(3)]
            );
            // No entry of our own: no tree.
            assert!(
                Routes::compute(name(9), &peers)
                    .broadcast_leaves(set)
                    .is_empty()
            );
        }
        // A half-established edge counts in All only.
        let half = entries(&[(1, 2, true), (2, 1, false), (1, 3, true), (3, 1, true)]);
        let routes = Routes::compute(name(1), &half);
        assert_eq!(
            routes.broadcast_leaves(LinkSet::EstablishedSymmetric),
            vec![name(3)]
        );
        assert_eq!(
            routes.broadcast_leaves(LinkSet::All),
            vec![name(2), name(3)]
        );
    }

    proptest! {
        #[test]
        fn leaves_are_exactly_the_children_that_forward_nothing(
            edges in proptest::collection::vec((1u64..8, 1u64..8), 0..20),
        ) {
            let peers = entries(&links(&edges));
            let local = name(1);
            let routes = Routes::compute(local, &peers);
            let set = LinkSet::EstablishedSymmetric;
            let children = routes.broadcast(set, local);
            let want: Vec<PeerName> = children
                .iter()
                .copied()
                .filter(|c| Routes::compute(*c, &peers).broadcast(set, local).is_empty())
                .collect();
            prop_assert_eq!(routes.broadcast_leaves(set), want);
        }
    }

    #[test]
    fn half_established_edge_is_only_in_all() {
        // 1 says established, 2 lists 1 but not established yet.
        let peers = entries(&[(1, 2, true), (2, 1, false)]);
        let routes = Routes::compute(name(1), &peers);
        assert_eq!(routes.unicast(LinkSet::EstablishedSymmetric, name(2)), None);
        assert_eq!(routes.unicast(LinkSet::All, name(2)), Some(name(2)));
        assert_eq!(
            Routes::compute(name(2), &peers).unicast(LinkSet::All, name(1)),
            Some(name(1))
        );
    }

    #[test]
    fn all_only_sends_on_connections_the_sender_lists() {
        // Only 2 lists the connection: 2 can send to 1, 1 cannot send to 2.
        let peers = entries(&[(2, 1, true), (1, 3, true)]);
        assert_eq!(
            Routes::compute(name(1), &peers).unicast(LinkSet::All, name(2)),
            None
        );
        assert_eq!(
            Routes::compute(name(2), &peers).unicast(LinkSet::All, name(3)),
            Some(name(1))
        );
    }

    #[test]
    fn unreachable_and_unknown_peers_have_no_route() {
        let peers = entries(&links(&[(1, 2), (3, 4)]));
        let routes = Routes::compute(name(1), &peers);
        for set in BOTH {
            assert_eq!(routes.unicast(set, name(3)), None);
            assert_eq!(routes.unicast(set, name(99)), None);
            assert!(routes.broadcast(set, name(3)).is_empty());
            assert!(routes.broadcast(set, name(99)).is_empty());
        }
        // A local peer without an entry reaches nothing.
        let stranger = Routes::compute(name(7), &peers);
        assert_eq!(stranger.local(), name(7));
        assert!(stranger.table(LinkSet::All).is_empty());
    }

    #[test]
    fn ties_break_by_name() {
        // Square 1-2, 1-3, 2-4, 3-4: 4 is reached via 2 (< 3), from either side of the listing.
        let peers = entries(&links(&[(1, 3), (3, 4), (1, 2), (2, 4)]));
        for set in BOTH {
            assert_eq!(
                Routes::compute(name(1), &peers).unicast(set, name(4)),
                Some(name(2))
            );
            assert_eq!(
                Routes::compute(name(4), &peers).unicast(set, name(1)),
                Some(name(2))
            );
            assert_eq!(
                Routes::compute(name(2), &peers).broadcast(set, name(1)),
                vec![name(4)]
            );
            assert!(
                Routes::compute(name(3), &peers)
                    .broadcast(set, name(1))
                    .is_empty()
            );
        }
    }

    #[test]
    fn topology_routes_use_the_local_position() {
        let peers = entries(&links(&[(1, 2), (2, 3)]));
        let mut topology = Topology::new(peers[&name(1)].clone());
        topology.merge(crate::topology::TopologyUpdate {
            entries: peers.values().cloned().collect(),
        });
        let routes = topology.routes();
        assert_eq!(routes.local(), name(1));
        assert_eq!(
            routes.unicast(LinkSet::EstablishedSymmetric, name(3)),
            Some(name(2))
        );
    }

    /// The edges a link set allows, re-derived independently: `from -> to`.
    fn reference_edges(
        peers: &BTreeMap<PeerName, PeerEntry>,
        set: LinkSet,
    ) -> BTreeSet<(PeerName, PeerName)> {
        let mut edges = BTreeSet::new();
        for (&from, entry) in peers {
            for (&to, info) in &entry.connections {
                let usable = match set {
                    LinkSet::All => true,
                    LinkSet::EstablishedSymmetric => {
                        info.established
                            && peers
                                .get(&to)
                                .and_then(|e| e.connections.get(&from))
                                .is_some_and(|c| c.established)
                    }
                };
                if usable && from != to {
                    edges.insert((from, to));
                }
            }
        }
        edges
    }

    fn reachable(edges: &BTreeSet<(PeerName, PeerName)>, src: PeerName) -> BTreeSet<PeerName> {
        let mut seen = BTreeSet::from([src]);
        let mut queue = VecDeque::from([src]);
        while let Some(node) = queue.pop_front() {
            for &(_, to) in edges.range((node, name(0))..=(node, name((1 << 48) - 1))) {
                if seen.insert(to) {
                    queue.push_back(to);
                }
            }
        }
        seen.remove(&src);
        seen
    }

    /// How one side of an edge lists it: not at all, or with this `established` flag.
    fn arb_side() -> impl Strategy<Value = Option<bool>> {
        prop_oneof![Just(None), Just(Some(false)), Just(Some(true))]
    }

    /// Per unordered pair: mostly a full established link or nothing, sometimes a partial one.
    fn arb_pair() -> impl Strategy<Value = (Option<bool>, Option<bool>)> {
        prop_oneof![
            3 => Just((Some(true), Some(true))),
            4 => Just((None, None)),
            2 => (arb_side(), arb_side()),
        ]
    }

    /// Up to 10 peers 1..=n; some may lack an entry (listed by others only).
    fn arb_graph() -> impl Strategy<Value = (u64, BTreeMap<PeerName, PeerEntry>)> {
        (1u64..=10)
            .prop_flat_map(|n| {
                let pairs = (n * n.saturating_sub(1) / 2) as usize;
                (
                    Just(n),
                    prop::collection::vec(arb_pair(), pairs),
                    prop::collection::vec(prop::bool::weighted(0.1), n as usize),
                )
            })
            .prop_map(|(n, pairs, entryless)| {
                let mut listings = Vec::new();
                let mut pair = pairs.into_iter();
                for a in 1..=n {
                    for b in a + 1..=n {
                        let (a_side, b_side) = pair.next().unwrap_or((None, None));
                        listings.extend(a_side.map(|est| (a, b, est)));
                        listings.extend(b_side.map(|est| (b, a, est)));
                    }
                }
                let mut peers = entries(&listings);
                for a in 1..=n {
                    peers.entry(name(a)).or_insert_with(|| PeerEntry {
                        name: name(a),
                        nickname: String::new(),
                        uid: a,
                        version: 1,
                        connections: BTreeMap::new(),
                    });
                    if entryless[(a - 1) as usize] {
                        peers.remove(&name(a));
                    }
                }
                (n, peers)
            })
    }

    proptest! {
        #[test]
        fn unicast_hop_by_hop_reaches_reachable_peers((n, peers) in arb_graph()) {
            let routes: BTreeMap<PeerName, Routes> =
                (1..=n).map(|a| (name(a), Routes::compute(name(a), &peers))).collect();
            for set in BOTH {
                let edges = reference_edges(&peers, set);
                for src in 1..=n {
                    let reach = reachable(&edges, name(src));
                    let table: BTreeSet<PeerName> = routes[&name(src)].table(set).iter().map(|&(d, _)| d).collect();
                    prop_assert_eq!(&table, &reach);
                    for dst in 1..=n {
                        let dst = name(dst);
                        let first = routes[&name(src)].unicast(set, dst);
                        if !reach.contains(&dst) {
                            prop_assert_eq!(first, None);
                            continue;
                        }
                        let mut at = name(src);
                        let mut hops = 0;
                        while at != dst {
                            let next = routes[&at].unicast(set, dst);
                            prop_assert!(next.is_some(), "{:?}: {} has no hop to {}", set, at, dst);
                            let next = next.unwrap();
                            prop_assert!(edges.contains(&(at, next)), "{:?}: {} -> {} is no edge", set, at, next);
                            at = next;
                            hops += 1;
                            prop_assert!(hops <= n, "{:?}: loop from {} to {}", set, src, dst);
                        }
                    }
                }
            }
        }

        #[test]
        fn broadcast_reaches_every_reachable_peer_exactly_once((n, peers) in arb_graph()) {
            let routes: BTreeMap<PeerName, Routes> =
                (1..=n).map(|a| (name(a), Routes::compute(name(a), &peers))).collect();
            for set in BOTH {
                let edges = reference_edges(&peers, set);
                for src in (1..=n).map(name) {
                    let mut received: BTreeMap<PeerName, u64> = BTreeMap::new();
                    let mut queue = VecDeque::from([src]);
                    while let Some(at) = queue.pop_front() {
                        for next in routes[&at].broadcast(set, src) {
                            prop_assert!(edges.contains(&(at, next)), "{:?}: {} -> {} is no edge", set, at, next);
                            let count = received.entry(next).or_default();
                            *count += 1;
                            // Forward only the first copy so that a failure shows as a count, not a hang.
                            if *count == 1 {
                                queue.push_back(next);
                            }
                        }
                    }
                    let expected: BTreeMap<PeerName, u64> =
                        reachable(&edges, src).into_iter().map(|peer| (peer, 1)).collect();
                    prop_assert_eq!(received, expected, "{:?} from {}", set, src);
                }
            }
        }
    }
}
