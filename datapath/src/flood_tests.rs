//! Broadcast, multicast and unknown unicast exactly once in a mesh that mixes fast (VXLAN),
//! sleeve and relayed connections, checked on a model of whole hosts.
//!
//! Each host has a bridge with its pods' ports, the sleeve's TAP port and the VXLAN port. The
//! model follows the design in `docs/datapaths.md`:
//! - the bridge knows its pods' MACs (learned on their ports) and holds the entries the FDB
//!   plan ([`crate::vxlan::plan`]) gives for every remote MAC weft knows: VXLAN port for an
//!   owner on a fast connection, TAP port otherwise;
//! - BUM frames (broadcast, multicast, unknown unicast) flood to every port except the one
//!   they came in on, but never out of the VXLAN port (`flood`, `mcast_flood`, `bcast_flood`
//!   off on it) and the VXLAN device has no default entry: a frame to a MAC it has no entry
//!   for goes nowhere;
//! - what the bridge sends to the TAP the router decides on with [`forward::from_bridge`];
//!   what arrives from the mesh with [`forward::from_mesh`], over the BFS trees of the links
//!   whose sleeve is established; frames for this host go into the TAP.
//!
//! So BUM traffic only ever travels the sleeve's broadcast tree, which reaches every host once,
//! whatever the mix of fast and sleeve connections; known unicast takes the owner's datapath.
//!
//! Except from Open vSwitch hosts (`ovs`), whose fast port is the datapath's local port with
//! `mcast_flood` and `bcast_flood` on (unknown unicast still off): a multicast or broadcast
//! frame from a local pod also goes to it, and the group flow sends one copy to each of the
//! host's *fast leaves* (its children in its own broadcast tree that have no children there,
//! on a fast connection); the sleeve, told that set, skips those leaves for such frames. Both
//! fast ports and the TAP are isolated: a frame that came in through one reaches pods only.
//! During changes the kernel's set and the sleeve's may differ: the sleeve's is always a
//! subset of the kernel's, which is what makes any change a brief duplicate, never a loss.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use proptest::prelude::*;

use crate::PeerId;
use crate::forward::tests::Bfs;
use crate::forward::{self, BROADCAST, Decision, Routing};
use crate::mac::{Mac, MacOwner, MacTable, is_multicast};
use crate::vxlan::plan::{self, BridgePort, Desired, KernelFdb, PeerPath};

/// A connection between two hosts (no entry: none, the hosts talk through others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// On the VXLAN fast path; `sleeve`: its sleeve part is established too (UDP on the mesh
    /// port works), so the broadcast trees may use it.
    Fast { sleeve: bool },
    /// On the sleeve.
    Sleeve,
}

impl Link {
    fn sleeve(self) -> bool {
        matches!(self, Link::Sleeve | Link::Fast { sleeve: true })
    }
}

#[derive(Debug, Clone)]
struct Topology {
    ids: Vec<PeerId>,
    /// Keyed by (lower index, higher index).
    links: BTreeMap<(usize, usize), Link>,
    /// Pods per host.
    pods: Vec<usize>,
    /// Hosts whose fast path is Open vSwitch (head-end replication of group frames).
    ovs: Vec<bool>,
}

fn pod_mac(host: usize, pod: usize) -> Mac {
    [0x0a, 0x58, 0, 0, host as u8, pod as u8]
}

fn underlay(host: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xc000_0201 + host as u32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Pod(usize),
    Tap,
    Vxlan,
}

enum Event {
    /// A frame enters `host`'s bridge through `ingress`.
    Bridge {
        host: usize,
        ingress: Port,
        dst_mac: Mac,
    },
    /// A sleeve frame arrives at `host` from `from`.
    Mesh {
        host: usize,
        from: usize,
        origin: PeerId,
        dst: PeerId,
        dst_mac: Mac,
    },
}

/// What happened to one frame.
#[derive(Debug, Default)]
struct Outcome {
    /// Copies entering each host's bridge from outside (TAP or VXLAN port).
    arrivals: BTreeMap<usize, u32>,
    /// Copies handed to each pod (host, pod).
    delivered: BTreeMap<(usize, usize), u32>,
    /// Frames sent through a VXLAN device.
    vxlan_sent: u32,
    /// Sleeve frames sent (hops).
    sleeve_sent: u32,
    /// Anything that should never happen.
    faults: Vec<String>,
}

struct Model {
    topology: Topology,
    graph: BTreeMap<PeerId, BTreeSet<PeerId>>,
    /// Per host: the bridge's and the VXLAN device's entries from the FDB plan.
    fdb: Vec<KernelFdb>,
    /// Per host: the router's MAC table.
    macs: Vec<MacTable>,
    /// Pods whose MAC no other host knows yet (host, pod).
    quiet: BTreeSet<(usize, usize)>,
    /// Per Open vSwitch host: the hosts its group flow sends to, and the peers its sleeve is
    /// told the kernel serves.
    group_kernel: Vec<BTreeSet<usize>>,
    group_sleeve: Vec<BTreeSet<PeerId>>,
    now: Instant,
}

impl Model {
    fn new(topology: Topology, quiet: BTreeSet<(usize, usize)>) -> Self {
        let now = Instant::now();
        let n = topology.ids.len();
        let link = |a: usize, b: usize| topology.links.get(&(a.min(b), a.max(b))).copied();
        let mut graph: BTreeMap<PeerId, BTreeSet<PeerId>> = topology
            .ids
            .iter()
            .map(|id| (*id, BTreeSet::new()))
            .collect();
        for ((a, b), kind) in &topology.links {
            if kind.sleeve() {
                let (a, b) = (topology.ids[*a], topology.ids[*b]);
                graph.entry(a).or_default().insert(b);
                graph.entry(b).or_default().insert(a);
            }
        }
        let mut fdb = Vec::new();
        let mut macs = Vec::new();
        for host in 0..n {
            let mut desired = Desired::default();
            let mut table = MacTable::default();
            for other in 0..n {
                for pod in 0..topology.pods[other] {
                    if other == host {
                        table.learn(pod_mac(host, pod), MacOwner::Local, now);
                    } else if !quiet.contains(&(other, pod)) {
                        let owner = topology.ids[other];
                        desired.remote_macs.insert(pod_mac(other, pod), owner);
                        table.learn(pod_mac(other, pod), MacOwner::Remote(owner), now);
                    }
                }
                if other != host {
                    let path = match link(host, other) {
                        Some(Link::Fast { .. }) => PeerPath::Fast(underlay(other)),
                        _ => PeerPath::Sleeve,
                    };
                    desired.paths.insert(topology.ids[other], path);
                }
            }
            let mut held = KernelFdb::default();
            plan::apply(&plan::plan(&desired, &held), &mut held);
            fdb.push(held);
            macs.push(table);
        }
        let mut model = Model {
            topology,
            graph,
            fdb,
            macs,
            quiet,
            group_kernel: vec![BTreeSet::new(); n],
            group_sleeve: vec![BTreeSet::new(); n],
            now,
        };
        for host in 0..n {
            let leaves = model.fast_leaves(host);
            model.group_sleeve[host] = leaves.iter().map(|h| model.topology.ids[*h]).collect();
            model.group_kernel[host] = leaves;
        }
        model
    }

    /// What the router and the engine of an Open vSwitch host settle on: its children in its
    /// own tree that have no children of their own, on a fast connection.
    fn fast_leaves(&self, host: usize) -> BTreeSet<usize> {
        if !self.topology.ovs[host] {
            return BTreeSet::new();
        }
        let at = self.at(host);
        (0..self.hosts())
            .filter(|h| *h != host)
            .filter(|h| at.is_broadcast_leaf(self.topology.ids[*h]))
            .filter(|h| matches!(self.link(host, *h), Some(Link::Fast { .. })))
            .collect()
    }

    /// A view in transition: the kernel sends to `kernel` (any fast neighbours, leaves or not)
    /// and the sleeve skips `sleeve`, a subset of it.
    fn in_transition(&mut self, host: usize, kernel: BTreeSet<usize>, sleeve: BTreeSet<usize>) {
        self.group_sleeve[host] = sleeve.iter().map(|h| self.topology.ids[*h]).collect();
        self.group_kernel[host] = kernel;
    }

    fn at(&self, host: usize) -> Bfs<'_> {
        Bfs {
            local: self.topology.ids[host],
            graph: &self.graph,
        }
    }

    fn host_of(&self, peer: PeerId) -> usize {
        self.topology
            .ids
            .iter()
            .position(|id| *id == peer)
            .expect("a known peer")
    }

    fn link(&self, a: usize, b: usize) -> Option<Link> {
        self.topology.links.get(&(a.min(b), a.max(b))).copied()
    }

    /// Where the bridge of `host` sends a unicast frame to `mac`, if it knows.
    fn bridge_lookup(&self, host: usize, mac: &Mac) -> Option<Port> {
        if is_multicast(mac) {
            return None;
        }
        if let Some(pod) = (0..self.topology.pods[host]).find(|pod| pod_mac(host, *pod) == *mac) {
            // Learned on the pod's port (quiet or not: the bridge learns from any frame).
            return Some(Port::Pod(pod));
        }
        self.fdb[host].bridge.get(mac).map(|port| match port {
            BridgePort::Vxlan => Port::Vxlan,
            BridgePort::Tap => Port::Tap,
        })
    }

    /// Pod `pod` on host `host` sends a frame to `dst_mac`; follows every copy.
    fn send(&self, host: usize, pod: usize, dst_mac: Mac) -> Outcome {
        let mut out = Outcome::default();
        let mut queue = VecDeque::from([Event::Bridge {
            host,
            ingress: Port::Pod(pod),
            dst_mac,
        }]);
        let mut steps = 0;
        while let Some(event) = queue.pop_front() {
            steps += 1;
            if steps > 10_000 {
                out.faults.push("a loop: more than 10000 steps".into());
                break;
            }
            match event {
                Event::Bridge {
                    host,
                    ingress,
                    dst_mac,
                } => self.bridge(host, ingress, dst_mac, &mut out, &mut queue),
                Event::Mesh {
                    host,
                    from,
                    origin,
                    dst,
                    dst_mac,
                } => {
                    if !self.link(from, host).is_some_and(Link::sleeve) {
                        out.faults
                            .push(format!("sleeve hop {from} -> {host} is no link"));
                    }
                    let decision = forward::from_mesh(origin, dst, &self.at(host));
                    self.router(host, origin, dst_mac, decision, &mut out, &mut queue);
                }
            }
        }
        out
    }

    fn bridge(
        &self,
        host: usize,
        ingress: Port,
        dst_mac: Mac,
        out: &mut Outcome,
        queue: &mut VecDeque<Event>,
    ) {
        if !matches!(ingress, Port::Pod(_)) {
            *out.arrivals.entry(host).or_default() += 1;
        }
        // The fast port (VXLAN device or Open vSwitch's local port) and the TAP are isolated
        // from each other; a bridge never sends a frame back out of its ingress port.
        let allowed = |port: &Port| {
            *port != ingress
                && !matches!(
                    (ingress, port),
                    (Port::Tap, Port::Vxlan) | (Port::Vxlan, Port::Tap)
                )
        };
        // Flooded to the fast port: never unknown unicast; group frames on Open vSwitch hosts.
        let fast_floods = self.topology.ovs[host] && is_multicast(&dst_mac);
        let egress: Vec<Port> = match self.bridge_lookup(host, &dst_mac) {
            Some(port) if port == ingress => vec![],
            Some(port) => vec![port],
            None => (0..self.topology.pods[host])
                .map(Port::Pod)
                .chain([Port::Tap])
                .chain(fast_floods.then_some(Port::Vxlan))
                .filter(allowed)
                .collect(),
        };
        for port in egress {
            match port {
                Port::Pod(pod) => *out.delivered.entry((host, pod)).or_default() += 1,
                Port::Tap => {
                    let decision = forward::from_bridge(
                        &dst_mac,
                        &self.macs[host],
                        &self.at(host),
                        &self.group_sleeve[host],
                        self.now,
                    );
                    let origin = self.topology.ids[host];
                    self.router(host, origin, dst_mac, decision, out, queue);
                }
                Port::Vxlan if is_multicast(&dst_mac) => {
                    // The group flow: one copy to each host of the set, none elsewhere.
                    for to in &self.group_kernel[host] {
                        out.vxlan_sent += 1;
                        if !matches!(self.link(host, *to), Some(Link::Fast { .. })) {
                            out.faults
                                .push(format!("group copy {host} -> {to} is no fast link"));
                        }
                        queue.push_back(Event::Bridge {
                            host: *to,
                            ingress: Port::Vxlan,
                            dst_mac,
                        });
                    }
                }
                Port::Vxlan => {
                    out.vxlan_sent += 1;
                    // No default entry: a MAC without an entry goes nowhere.
                    let Some(dst) = self.fdb[host].vxlan.get(&dst_mac) else {
                        out.faults
                            .push(format!("host {host}: no VXLAN entry for {dst_mac:?}"));
                        continue;
                    };
                    let Some(to) = (0..self.topology.ids.len()).find(|h| underlay(*h) == *dst)
                    else {
                        out.faults
                            .push(format!("host {host}: VXLAN to unknown {dst}"));
                        continue;
                    };
                    if !matches!(self.link(host, to), Some(Link::Fast { .. })) {
                        out.faults
                            .push(format!("VXLAN {host} -> {to} is no fast link"));
                    }
                    queue.push_back(Event::Bridge {
                        host: to,
                        ingress: Port::Vxlan,
                        dst_mac,
                    });
                }
            }
        }
    }

    fn router(
        &self,
        host: usize,
        origin: PeerId,
        dst_mac: Mac,
        decision: Decision,
        out: &mut Outcome,
        queue: &mut VecDeque<Event>,
    ) {
        let hop =
            |next_hop: PeerId, dst: PeerId, out: &mut Outcome, queue: &mut VecDeque<Event>| {
                out.sleeve_sent += 1;
                queue.push_back(Event::Mesh {
                    host: self.host_of(next_hop),
                    from: host,
                    origin,
                    dst,
                    dst_mac,
                });
            };
        match decision {
            Decision::Local => queue.push_back(Event::Bridge {
                host,
                ingress: Port::Tap,
                dst_mac,
            }),
            Decision::Unicast { next_hop, dst } => hop(next_hop, dst, out, queue),
            Decision::Flood {
                deliver_locally,
                hops,
            } => {
                if deliver_locally {
                    queue.push_back(Event::Bridge {
                        host,
                        ingress: Port::Tap,
                        dst_mac,
                    });
                }
                for next_hop in hops {
                    hop(next_hop, BROADCAST, out, queue);
                }
            }
            Decision::Drop(reason) => out.faults.push(format!("host {host} dropped: {reason:?}")),
        }
    }

    fn hosts(&self) -> usize {
        self.topology.ids.len()
    }

    /// Checks that a BUM frame to `dst` from (`host`, `pod`) reached every other host's bridge
    /// once, never came back to its origin, reached every other pod once and took VXLAN only
    /// from an Open vSwitch origin to its fast leaves.
    fn check_flood(&self, host: usize, pod: usize, dst: &Mac, out: &Outcome) -> Result<(), String> {
        if !out.faults.is_empty() {
            return Err(format!("faults: {:?}", out.faults));
        }
        let want: BTreeMap<usize, u32> = (0..self.hosts())
            .filter(|h| *h != host)
            .map(|h| (h, 1))
            .collect();
        if out.arrivals != want {
            return Err(format!("arrivals {:?}, want {want:?}", out.arrivals));
        }
        let want: BTreeMap<(usize, usize), u32> = (0..self.hosts())
            .flat_map(|h| (0..self.topology.pods[h]).map(move |p| (h, p)))
            .filter(|sender| *sender != (host, pod))
            .map(|pod| (pod, 1))
            .collect();
        if out.delivered != want {
            return Err(format!("delivered {:?}, want {want:?}", out.delivered));
        }
        let fast = if is_multicast(dst) {
            self.group_kernel[host].len()
        } else {
            0
        };
        if out.vxlan_sent as usize != fast {
            return Err(format!(
                "{} BUM copies took VXLAN, want {fast}",
                out.vxlan_sent
            ));
        }
        Ok(())
    }

    /// Checks that a BUM frame from (`host`, `pod`) reached every other host's bridge once or
    /// twice (a duplicate while views differ), every other pod at least once, and never came
    /// back.
    fn check_no_loss(&self, host: usize, pod: usize, out: &Outcome) -> Result<(), String> {
        if !out.faults.is_empty() {
            return Err(format!("faults: {:?}", out.faults));
        }
        for h in 0..self.hosts() {
            let got = out.arrivals.get(&h).copied().unwrap_or(0);
            let ok = if h == host {
                got == 0
            } else {
                (1..=2).contains(&got)
            };
            if !ok {
                return Err(format!("host {h} got {got} copies: {:?}", out.arrivals));
            }
            for p in 0..self.topology.pods[h] {
                if (h, p) != (host, pod) && !out.delivered.contains_key(&(h, p)) {
                    return Err(format!("pod {p} on host {h} got nothing"));
                }
            }
        }
        Ok(())
    }
}

/// A random connected sleeve graph of 2..=8 hosts (a spanning tree of links whose sleeve is
/// established, plus random extra links of any kind), 1..=2 pods per host, shuffled ids.
fn arb_topology() -> impl Strategy<Value = Topology> {
    let sleeve_link = prop_oneof![Just(Link::Sleeve), Just(Link::Fast { sleeve: true })];
    let any_link = prop_oneof![
        Just(Link::Sleeve),
        Just(Link::Fast { sleeve: true }),
        Just(Link::Fast { sleeve: false }),
    ];
    (2usize..=8)
        .prop_flat_map(move |n| {
            let ids = prop::collection::btree_set(
                any::<PeerId>().prop_filter("not broadcast", |id| *id != BROADCAST),
                n,
            )
            .prop_map(|ids| ids.into_iter().collect::<Vec<_>>())
            .prop_shuffle();
            let tree: Vec<_> = (1..n).map(|i| (0..i, sleeve_link.clone())).collect();
            let extra = prop::collection::vec((0..n, 0..n, any_link.clone()), 0..2 * n);
            let pods = prop::collection::vec(1usize..=2, n);
            let ovs = prop::collection::vec(any::<bool>(), n);
            (ids, tree, extra, pods, ovs)
        })
        .prop_map(|(ids, tree, extra, pods, ovs)| {
            let mut links = BTreeMap::new();
            for (i, (parent, kind)) in tree.into_iter().enumerate() {
                links.insert((parent, i + 1), kind);
            }
            for (a, b, kind) in extra {
                if a != b {
                    links.entry((a.min(b), a.max(b))).or_insert(kind);
                }
            }
            Topology {
                ids,
                links,
                pods,
                ovs,
            }
        })
}

proptest! {
    #[test]
    fn bum_frames_reach_every_other_host_exactly_once_whatever_the_mix(
        topology in arb_topology(),
        sender in any::<prop::sample::Index>(),
        dst_mac in prop_oneof![
            Just([0xff; 6]),
            any::<Mac>().prop_map(|mut mac| { mac[0] |= 1; mac }),
            // Unicast nobody has.
            any::<Mac>().prop_map(|mut mac| { mac[0] = 0x06; mac }),
        ],
    ) {
        let model = Model::new(topology, BTreeSet::new());
        let host = sender.index(model.hosts());
        let out = model.send(host, 0, dst_mac);
        prop_assert_eq!(model.check_flood(host, 0, &dst_mac, &out), Ok(()), "{:?}", model.topology);
    }

    #[test]
    fn while_the_kernels_and_the_sleeves_sets_change_no_group_frame_is_lost(
        topology in arb_topology(),
        sender in any::<prop::sample::Index>(),
        kernel_bits in any::<u16>(),
        sleeve_bits in any::<u16>(),
        dst_mac in prop_oneof![
            Just([0xff; 6]),
            any::<Mac>().prop_map(|mut mac| { mac[0] |= 1; mac }),
        ],
    ) {
        // Any fast neighbours in the kernel's set (stale leaves, relays, links whose sleeve is
        // down), any subset of it in the sleeve's: a copy may be doubled, never lost.
        let mut model = Model::new(topology, BTreeSet::new());
        let host = sender.index(model.hosts());
        prop_assume!(model.topology.ovs[host]);
        let fast: Vec<usize> = (0..model.hosts())
            .filter(|h| matches!(model.link(host, *h), Some(Link::Fast { .. })))
            .collect();
        let pick = |bits: u16, from: &[usize]| -> BTreeSet<usize> {
            from.iter().enumerate().filter(|(i, _)| bits >> i & 1 == 1).map(|(_, h)| *h).collect()
        };
        let kernel = pick(kernel_bits, &fast);
        let sleeve = pick(sleeve_bits, &kernel.iter().copied().collect::<Vec<_>>());
        model.in_transition(host, kernel, sleeve);
        let out = model.send(host, 0, dst_mac);
        prop_assert_eq!(model.check_no_loss(host, 0, &out), Ok(()), "{:?}", model.topology);
    }

    #[test]
    fn in_a_full_mesh_of_fast_ovs_hosts_group_frames_never_take_the_sleeve(
        n in 2usize..=8,
        sender in any::<prop::sample::Index>(),
        dst_mac in any::<Mac>().prop_map(|mut mac| { mac[0] |= 1; mac }),
    ) {
        let ids: Vec<PeerId> = (0..n).map(|i| [0x02, 0, 0, 0, 1, i as u8]).collect();
        let links = (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| ((a, b), Link::Fast { sleeve: true })))
            .collect();
        let model = Model::new(Topology { ids, links, pods: vec![1; n], ovs: vec![true; n] }, BTreeSet::new());
        let host = sender.index(n);
        let out = model.send(host, 0, dst_mac);
        prop_assert_eq!(model.check_flood(host, 0, &dst_mac, &out), Ok(()));
        prop_assert_eq!((out.vxlan_sent as usize, out.sleeve_sent), (n - 1, 0));
    }

    #[test]
    fn known_unicast_takes_the_owners_datapath_and_arrives_once(
        topology in arb_topology(),
        sender in any::<prop::sample::Index>(),
        owner in any::<prop::sample::Index>(),
        pod in 0usize..2,
    ) {
        let model = Model::new(topology, BTreeSet::new());
        let (host, owner) = (sender.index(model.hosts()), owner.index(model.hosts()));
        let pod = pod.min(model.topology.pods[owner] - 1);
        prop_assume!(host != owner);
        let out = model.send(host, 0, pod_mac(owner, pod));
        prop_assert!(out.faults.is_empty(), "{:?}", out.faults);
        prop_assert_eq!(out.arrivals, BTreeMap::from([(owner, 1)]));
        prop_assert_eq!(out.delivered, BTreeMap::from([((owner, pod), 1)]));
        let fast = matches!(model.link(host, owner), Some(Link::Fast { .. }));
        prop_assert_eq!(out.vxlan_sent, u32::from(fast));
        prop_assert_eq!(out.sleeve_sent == 0, fast);
    }
}

/// Hosts 0, 1, 2, 3: 0–1 fast (sleeve too), 1–2 sleeve, 2–3 fast without a working sleeve,
/// 1–3 sleeve, 0–2 and 0–3 absent (relayed).
fn mixed() -> Topology {
    Topology {
        ids: vec![
            [0x02, 0, 0, 0, 0, 4],
            [0x02, 0, 0, 0, 0, 2],
            [0x02, 0, 0, 0, 0, 3],
            [0x02, 0, 0, 0, 0, 1],
        ],
        links: BTreeMap::from([
            ((0, 1), Link::Fast { sleeve: true }),
            ((1, 2), Link::Sleeve),
            ((2, 3), Link::Fast { sleeve: false }),
            ((1, 3), Link::Sleeve),
        ]),
        pods: vec![2, 1, 2, 1],
        ovs: vec![false; 4],
    }
}

#[test]
fn multicast_reaches_every_other_pod_once_over_the_sleeve_tree() {
    let model = Model::new(mixed(), BTreeSet::new());
    for dst in [
        [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
        [0x33, 0x33, 0x00, 0x00, 0x00, 0x01],
        [0xff; 6],
    ] {
        for host in 0..model.hosts() {
            let out = model.send(host, 0, dst);
            assert_eq!(
                model.check_flood(host, 0, &dst, &out),
                Ok(()),
                "{dst:?} from {host}"
            );
            assert!(out.sleeve_sent >= 3, "over the sleeve: {out:?}");
        }
    }
}

#[test]
fn unknown_unicast_floods_once_and_reaches_its_pod_once() {
    // Pod 1 on host 2 has not been heard of yet (only its own bridge knows it).
    let quiet = (2, 1);
    let model = Model::new(mixed(), BTreeSet::from([quiet]));
    for host in [0, 1, 3] {
        let out = model.send(host, 0, pod_mac(quiet.0, quiet.1));
        assert!(out.faults.is_empty(), "{:?}", out.faults);
        let want: BTreeMap<usize, u32> = (0..4).filter(|h| *h != host).map(|h| (h, 1)).collect();
        assert_eq!(out.arrivals, want, "from {host}");
        // Host 2's bridge knows the pod: it alone gets the frame there; elsewhere the flood
        // reaches every pod but the sender.
        assert_eq!(out.delivered.get(&quiet), Some(&1));
        assert_eq!(out.delivered.get(&(2, 0)), None);
        assert_eq!(out.vxlan_sent, 0);
        for (at, pods) in model
            .topology
            .pods
            .iter()
            .enumerate()
            .filter(|(h, _)| *h != 2)
        {
            for pod in 0..*pods {
                let want = u32::from((at, pod) != (host, 0));
                assert_eq!(out.delivered.get(&(at, pod)).copied().unwrap_or(0), want);
            }
        }
    }
    assert!(model.quiet.contains(&quiet));
}

#[test]
fn known_unicast_to_a_fast_peer_takes_vxlan_and_to_others_the_sleeve() {
    let model = Model::new(mixed(), BTreeSet::new());
    // 0 -> 1: fast.
    let out = model.send(0, 0, pod_mac(1, 0));
    assert_eq!((out.vxlan_sent, out.sleeve_sent), (1, 0));
    assert_eq!(out.delivered, BTreeMap::from([((1, 0), 1)]));
    // 0 -> 3: no connection, relayed over the sleeve through 1.
    let out = model.send(0, 1, pod_mac(3, 0));
    assert_eq!((out.vxlan_sent, out.sleeve_sent), (0, 2));
    assert_eq!(out.delivered, BTreeMap::from([((3, 0), 1)]));
    // 3 -> 2: fast although its sleeve is down.
    let out = model.send(3, 0, pod_mac(2, 1));
    assert_eq!((out.vxlan_sent, out.sleeve_sent), (1, 0));
    assert_eq!(out.delivered, BTreeMap::from([((2, 1), 1)]));
}
