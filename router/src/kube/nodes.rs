//! The Node view (`--kube-peers`), sans-IO: the Nodes the API lists, kept from the watch's
//! events, and what they mean for the mesh: the other Nodes' addresses are connect targets,
//! Nodes that disappear are forgotten (and their peers' space may be reclaimed, see
//! [`super::reclaim`]).
//!
//! A (re-)list is an `InitStart`, the listed Nodes, an `InitDone`: only at `InitDone` does the
//! new list replace the old one, so a re-list after `410 Gone` neither forgets Nodes it has not
//! reached yet nor misses the ones deleted while the watch was down (they are missing from the
//! new list).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use weft_gossip::PeerName;

/// The Node annotation where each router records its peer name.
pub const PEER_NAME_ANNOTATION: &str = "weft.dev/peer-name";

/// One Node as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The Node's `InternalIP` addresses, in the order the kubelet reports them.
    pub internal_ips: Vec<IpAddr>,
    /// The [`PEER_NAME_ANNOTATION`] as written (it may not parse).
    pub peer_annotation: Option<String>,
    /// The `NetworkUnavailable` condition's status (`Some(true)` = unavailable).
    pub network_unavailable: Option<bool>,
    /// The `Ready` condition's status.
    pub ready: Option<bool>,
    /// The `kubernetes.io/os` label, if set.
    pub os: Option<String>,
}

impl NodeInfo {
    pub fn new(name: &str, internal_ips: &[IpAddr]) -> Self {
        NodeInfo {
            name: name.to_owned(),
            internal_ips: internal_ips.to_vec(),
            peer_annotation: None,
            network_unavailable: None,
            ready: None,
            os: None,
        }
    }

    /// The peer name its router recorded, if it parses.
    pub fn peer_name(&self) -> Option<PeerName> {
        self.peer_annotation.as_deref()?.trim().parse().ok()
    }

    /// The address this router dials for the Node: its first IPv4 InternalIP (the mesh
    /// listens on IPv4 by default), else its first InternalIP, with the mesh port. One
    /// address per Node: two would be two connections to one peer, one of them refused as a
    /// duplicate over and over. None for a Node labelled with another OS than Linux (weft
    /// runs on Linux only, and the chart selects `kubernetes.io/os: linux`): a peer that can
    /// never answer must not be an initial peer the first ring waits for.
    pub fn target(&self, port: u16) -> Option<String> {
        if self.os.as_deref().is_some_and(|os| os != "linux") {
            return None;
        }
        let ip = self
            .internal_ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| self.internal_ips.first())?;
        Some(SocketAddr::new(*ip, port).to_string())
    }
}

/// An event of the Node watch (kube-runtime's `watcher::Event`, without the API types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A Node was added or changed.
    Applied(NodeInfo),
    /// A Node was deleted (its last state).
    Deleted(NodeInfo),
    /// A (re-)list begins.
    InitStart,
    /// One Node of the list.
    InitNode(NodeInfo),
    /// The list is complete: it replaces the Nodes known before.
    InitDone,
}

/// What an event changes for the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    /// Addresses to dial now.
    pub connect: Vec<String>,
    /// Addresses no Node has any more: forget them.
    pub forget: Vec<String>,
    /// Nodes that are gone (deleted, or missing from a re-list), in their last known state.
    pub gone: Vec<NodeInfo>,
    /// This event completed the first list.
    pub first_list: bool,
}

impl NodeChange {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.connect.is_empty()
            && self.forget.is_empty()
            && self.gone.is_empty()
            && !self.first_list
    }
}

/// The Nodes as this router knows them.
#[derive(Debug, Clone)]
pub struct NodeSet {
    /// This router's Node: never a target of its own.
    local: String,
    port: u16,
    nodes: BTreeMap<String, NodeInfo>,
    /// A list in progress.
    listing: Option<BTreeMap<String, NodeInfo>>,
    listed: bool,
    lists: u64,
}

impl NodeSet {
    pub fn new(local: &str, port: u16) -> Self {
        NodeSet {
            local: local.to_owned(),
            port,
            nodes: BTreeMap::new(),
            listing: None,
            listed: false,
            lists: 0,
        }
    }

    /// Whether a first list has arrived.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Complete lists so far (the first one, then one per re-list).
    #[cfg(test)]
    pub fn lists(&self) -> u64 {
        self.lists
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// This router's own Node, if listed.
    #[cfg(test)]
    pub fn local(&self) -> Option<&NodeInfo> {
        self.nodes.get(&self.local)
    }

    /// The addresses to dial: one per other Node that has an InternalIP.
    pub fn targets(&self) -> BTreeSet<String> {
        targets_of(&self.nodes, &self.local, self.port)
    }

    /// Peer names the listed Nodes carry.
    pub fn live_peer_names(&self) -> BTreeSet<PeerName> {
        self.nodes
            .values()
            .filter_map(NodeInfo::peer_name)
            .collect()
    }

    pub fn apply(&mut self, event: NodeEvent) -> NodeChange {
        let before = self.targets();
        let mut change = NodeChange::default();
        match event {
            NodeEvent::Applied(node) => {
                if let Some(listing) = self.listing.as_mut() {
                    // Not expected inside a list; kept for the list's end.
                    listing.insert(node.name.clone(), node.clone());
                }
                self.nodes.insert(node.name.clone(), node);
            }
            NodeEvent::Deleted(node) => {
                if let Some(listing) = self.listing.as_mut() {
                    listing.remove(&node.name);
                }
                // The delete event's state is the newest; keep an annotation only the old had.
                let old = self.nodes.remove(&node.name);
                let mut last = node;
                if last.peer_annotation.is_none() {
                    last.peer_annotation = old.and_then(|o| o.peer_annotation);
                }
                change.gone.push(last);
            }
            NodeEvent::InitStart => self.listing = Some(BTreeMap::new()),
            NodeEvent::InitNode(node) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(node.name.clone(), node);
            }
            NodeEvent::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.nodes, listed);
                change.gone = old
                    .into_values()
                    .filter(|n| !self.nodes.contains_key(&n.name))
                    .collect();
                change.first_list = !self.listed;
                self.listed = true;
                self.lists += 1;
            }
        }
        let after = self.targets();
        change.connect = after.difference(&before).cloned().collect();
        change.forget = before.difference(&after).cloned().collect();
        change
    }
}

fn targets_of(nodes: &BTreeMap<String, NodeInfo>, local: &str, port: u16) -> BTreeSet<String> {
    nodes
        .values()
        .filter(|n| n.name != local)
        .filter_map(|n| n.target(port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, addr: &str) -> NodeInfo {
        NodeInfo::new(name, &[ip(addr)])
    }

    fn list(set: &mut NodeSet, nodes: &[NodeInfo]) -> NodeChange {
        assert!(set.apply(NodeEvent::InitStart).is_empty());
        for n in nodes {
            assert!(set.apply(NodeEvent::InitNode(n.clone())).is_empty());
        }
        set.apply(NodeEvent::InitDone)
    }

    #[test]
    fn the_first_list_gives_the_other_nodes_as_targets() {
        let mut set = NodeSet::new("a", 6783);
        assert!(!set.listed());
        let change = list(
            &mut set,
            &[
                node("a", "10.0.0.1"),
                node("b", "10.0.0.2"),
                node("c", "10.0.0.3"),
            ],
        );
        assert!(change.first_list);
        assert_eq!(change.connect, vec!["10.0.0.2:6783", "10.0.0.3:6783"]);
        assert!(change.forget.is_empty() && change.gone.is_empty());
        assert!(set.listed());
        assert_eq!(set.local().unwrap().name, "a");
    }

    #[test]
    fn a_lone_node_lists_no_targets() {
        let mut set = NodeSet::new("a", 6783);
        let change = list(&mut set, &[node("a", "10.0.0.1")]);
        assert!(change.first_list && change.connect.is_empty());
        assert!(set.targets().is_empty());
    }

    #[test]
    fn nodes_join_and_leave() {
        let mut set = NodeSet::new("a", 6783);
        list(&mut set, &[node("a", "10.0.0.1"), node("b", "10.0.0.2")]);
        let change = set.apply(NodeEvent::Applied(node("d", "10.0.0.4")));
        assert_eq!(change.connect, vec!["10.0.0.4:6783"]);
        assert!(!change.first_list);
        // A status update changes nothing for the mesh.
        let mut b = node("b", "10.0.0.2");
        b.ready = Some(true);
        assert!(set.apply(NodeEvent::Applied(b)).is_empty());
        let mut b = node("b", "10.0.0.2");
        b.peer_annotation = Some("aa:00:00:00:00:02".into());
        let change = set.apply(NodeEvent::Deleted(b.clone()));
        assert_eq!(change.forget, vec!["10.0.0.2:6783"]);
        assert_eq!(change.gone, vec![b]);
    }

    #[test]
    fn a_relist_forgets_the_nodes_deleted_while_the_watch_was_down() {
        let mut set = NodeSet::new("a", 6783);
        let mut c = node("c", "10.0.0.3");
        c.peer_annotation = Some("aa:00:00:00:00:03".into());
        list(
            &mut set,
            &[node("a", "10.0.0.1"), node("b", "10.0.0.2"), c.clone()],
        );
        let change = list(&mut set, &[node("a", "10.0.0.1"), node("b", "10.0.0.2")]);
        assert!(!change.first_list);
        assert_eq!(change.forget, vec!["10.0.0.3:6783"]);
        assert!(change.connect.is_empty());
        assert_eq!(change.gone, vec![c]);
        assert_eq!(set.lists(), 2);
    }

    #[test]
    fn a_relist_keeps_the_old_nodes_until_it_is_complete() {
        let mut set = NodeSet::new("a", 6783);
        list(&mut set, &[node("a", "10.0.0.1"), node("b", "10.0.0.2")]);
        set.apply(NodeEvent::InitStart);
        set.apply(NodeEvent::InitNode(node("a", "10.0.0.1")));
        assert_eq!(set.targets().len(), 1, "b is still a target mid-list");
    }

    #[test]
    fn one_address_per_node_ipv4_first() {
        let n = NodeInfo::new("b", &[ip("fd00::2"), ip("10.0.0.2")]);
        assert_eq!(n.target(6783).as_deref(), Some("10.0.0.2:6783"));
        let n = NodeInfo::new("b", &[ip("fd00::2")]);
        assert_eq!(n.target(7000).as_deref(), Some("[fd00::2]:7000"));
        assert_eq!(NodeInfo::new("b", &[]).target(6783), None);
        let mut windows = NodeInfo::new("w", &[ip("10.0.0.9")]);
        windows.os = Some("windows".into());
        assert_eq!(windows.target(6783), None, "weft does not run there");
        windows.os = Some("linux".into());
        assert!(windows.target(6783).is_some());
    }

    #[test]
    fn peer_names_parse_or_are_ignored() {
        let mut n = node("b", "10.0.0.2");
        n.peer_annotation = Some("aa:00:00:00:00:02".into());
        assert_eq!(n.peer_name(), "aa:00:00:00:00:02".parse().ok());
        n.peer_annotation = Some("not a name".into());
        assert_eq!(n.peer_name(), None);
    }

    fn arb_event() -> impl Strategy<Value = NodeEvent> {
        let node = (0u8..6, 0u8..4)
            .prop_map(|(n, a)| NodeInfo::new(&format!("n{n}"), &[IpAddr::from([10, 0, a, n])]));
        prop_oneof![
            node.clone().prop_map(NodeEvent::Applied),
            node.clone().prop_map(NodeEvent::Deleted),
            Just(NodeEvent::InitStart),
            node.prop_map(NodeEvent::InitNode),
            Just(NodeEvent::InitDone),
        ]
    }

    proptest! {
        /// Applying the changes to a target set tracks the Node set exactly, this router's own
        /// Node is never a target, and a Node that leaves is reported gone exactly when it
        /// leaves.
        #[test]
        fn the_changes_track_the_targets(events in proptest::collection::vec(arb_event(), 0..60)) {
            let mut set = NodeSet::new("n0", 6783);
            let mut targets = BTreeSet::new();
            for event in events {
                let names_before: BTreeSet<String> = set.nodes().map(|n| n.name.clone()).collect();
                let change = set.apply(event);
                for t in &change.forget {
                    prop_assert!(targets.remove(t));
                }
                for t in &change.connect {
                    prop_assert!(targets.insert(t.clone()));
                }
                prop_assert_eq!(&targets, &set.targets());
                let names_after: BTreeSet<String> = set.nodes().map(|n| n.name.clone()).collect();
                let left: BTreeSet<String> = names_before.difference(&names_after).cloned().collect();
                let gone: BTreeSet<String> = change.gone.iter().map(|n| n.name.clone()).collect();
                prop_assert!(left.is_subset(&gone));
                prop_assert!(gone.iter().all(|g| !names_after.contains(g)));
                // This router's own Node is never a target (unless another Node shares its address).
                if let Some(own) = set.nodes().find(|n| n.name == "n0").and_then(|n| n.target(6783)) {
                    prop_assert!(!set.targets().contains(&own) || set.nodes().any(|n| n.name != "n0" && n.target(6783) == Some(own.clone())));
                }
            }
        }
    }
}
