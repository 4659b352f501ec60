//! Whole meshes of [`Mesh`] state machines wired together in memory: dials succeed instantly
//! unless the simulated network blocks them, messages are delivered in order per connection,
//! time is simulated. Checks convergence, discovery, restarts, duplicate connections and
//! routing around cut links without sockets or timing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use weft_gossip::PeerName;
use weft_gossip::maker::Retry;
use weft_gossip::mesh::{Action, ConnKey, Mesh, MeshConfig, NewConnection};
use weft_gossip::routes::LinkSet;
use weft_gossip::wire::{ControlMsg, Features};

const GOSSIP_INTERVAL: Duration = Duration::from_secs(30);

fn addr(node: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, node as u8 + 1)), 6783)
}

fn node_of(address: &str) -> Option<usize> {
    let addr: SocketAddr = address.parse().ok()?;
    match addr.ip() {
        IpAddr::V4(v4) => Some(v4.octets()[3] as usize - 1),
        IpAddr::V6(_) => None,
    }
}

struct Link {
    node: usize,
    peer_node: usize,
    peer_key: ConnKey,
}

struct Sim {
    meshes: Vec<Mesh>,
    uids: Vec<u64>,
    links: BTreeMap<ConnKey, Link>,
    /// Pairs of nodes that cannot reach each other.
    blocked: BTreeSet<(usize, usize)>,
    /// Nodes whose process is dead: they neither dial nor answer until they restart.
    down: BTreeSet<usize>,
    queue: VecDeque<(usize, Action)>,
    next_key: ConnKey,
    now: Instant,
    seed: u64,
    /// Every message delivered, as (encoded size, message).
    delivered: Vec<(usize, ControlMsg)>,
    /// Nodes added from now on announce links only once their data path is confirmed.
    confirm_data_path: bool,
    /// Every dial, as (node, address).
    dials: Vec<(usize, String)>,
}

fn name(node: usize) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + node as u64).unwrap()
}

impl Sim {
    fn new(n: usize) -> Self {
        let now = Instant::now();
        let mut sim = Sim {
            meshes: Vec::new(),
            uids: Vec::new(),
            links: BTreeMap::new(),
            blocked: BTreeSet::new(),
            down: BTreeSet::new(),
            queue: VecDeque::new(),
            next_key: 1,
            now,
            seed: 0x9e37_79b9_7f4a_7c15,
            delivered: Vec::new(),
            confirm_data_path: false,
            dials: Vec::new(),
        };
        for node in 0..n {
            sim.add_node(node);
        }
        sim
    }

    fn random(&mut self) -> u64 {
        // xorshift: deterministic runs, varied connection ids.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    fn config(&mut self, node: usize) -> MeshConfig {
        let uid = self.random() | 1;
        MeshConfig {
            name: name(node),
            nickname: format!("host{node}"),
            uid,
            conn_limit: 100,
            gossip_interval: GOSSIP_INTERVAL,
            confirm_data_path: self.confirm_data_path,
        }
    }

    /// Starts a node, or restarts it as a new incarnation with the same name.
    fn add_node(&mut self, node: usize) {
        self.down.remove(&node);
        let config = self.config(node);
        let uid = config.uid;
        let mesh = Mesh::new(config, self.now);
        if node < self.meshes.len() {
            self.meshes[node] = mesh;
            self.uids[node] = uid;
        } else {
            self.meshes.push(mesh);
            self.uids.push(uid);
        }
    }

    fn is_blocked(&self, a: usize, b: usize) -> bool {
        self.blocked.contains(&(a.min(b), a.max(b)))
            || self.down.contains(&a)
            || self.down.contains(&b)
    }

    fn tell(&mut self, node: usize, targets: &[usize]) {
        let targets: Vec<String> = targets.iter().map(|t| addr(*t).to_string()).collect();
        let mut out = Vec::new();
        self.meshes[node].add_direct(&targets, self.now, &mut out);
        self.enqueue(node, out);
    }

    fn enqueue(&mut self, node: usize, actions: Vec<Action>) {
        self.queue.extend(actions.into_iter().map(|a| (node, a)));
    }

    fn features(&mut self, node: usize) -> Features {
        Features {
            name: name(node),
            nickname: format!("host{node}"),
            uid: self.uids[node],
            conn_id: self.random(),
            listen_port: 6783,
            datapaths: None,
        }
    }

    /// A dial from `from` to `to` that reached the other side and completed its handshake.
    fn connect(&mut self, from: usize, to: usize, target: String) {
        let (from_key, to_key) = (self.next_key, self.next_key + 1);
        self.next_key += 2;
        let (f_from, f_to) = (self.features(from), self.features(to));
        let conn_uid = f_from.conn_id ^ f_to.conn_id;
        let mut out_from = Vec::new();
        let mut out_to = Vec::new();
        let ok_from = self.meshes[from].register(
            from_key,
            NewConnection {
                features: f_to,
                outbound: true,
                remote_tcp: addr(to),
                target: Some(target),
                conn_uid,
                encrypted: true,
            },
            self.now,
            &mut out_from,
        );
        let inbound_port = SocketAddr::new(addr(from).ip(), 40000 + from_key as u16);
        let ok_to = self.meshes[to].register(
            to_key,
            NewConnection {
                features: f_from,
                outbound: false,
                remote_tcp: inbound_port,
                target: None,
                conn_uid,
                encrypted: true,
            },
            self.now,
            &mut out_to,
        );
        match (ok_from.is_ok(), ok_to.is_ok()) {
            (true, true) => {
                self.links.insert(
                    from_key,
                    Link {
                        node: from,
                        peer_node: to,
                        peer_key: to_key,
                    },
                );
                self.links.insert(
                    to_key,
                    Link {
                        node: to,
                        peer_node: from,
                        peer_key: from_key,
                    },
                );
            }
            // One side refused: the other sees the TCP connection close.
            (true, false) => out_from.push(Action::Close {
                conn: from_key,
                reason: "refused".into(),
            }),
            (false, true) => out_to.push(Action::Close {
                conn: to_key,
                reason: "refused".into(),
            }),
            (false, false) => {}
        }
        self.enqueue(from, out_from);
        self.enqueue(to, out_to);
    }

    fn close(&mut self, key: ConnKey, reason: &str) {
        if let Some(link) = self.links.remove(&key) {
            self.meshes[link.node].connection_closed(key, reason, self.now);
            if self.links.remove(&link.peer_key).is_some() {
                self.meshes[link.peer_node].connection_closed(link.peer_key, reason, self.now);
            }
        }
    }

    /// Delivers everything queued, including what the deliveries cause.
    fn settle(&mut self) {
        let mut steps = 0;
        while let Some((node, action)) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 1_000_000, "the mesh does not settle: gossip loops");
            match action {
                Action::Send { conn, msg } => self.deliver(conn, msg),
                Action::Close { conn, reason } => self.close(conn, &reason),
                Action::Dial { address } => {
                    self.dials.push((node, address.clone()));
                    let to = node_of(&address).filter(|to| *to < self.meshes.len());
                    match to {
                        Some(to) if !self.is_blocked(node, to) => self.connect(node, to, address),
                        _ => self.meshes[node].dial_failed(
                            &address,
                            "unreachable".into(),
                            Retry::Later,
                            self.now,
                        ),
                    }
                }
                Action::EchoReply { .. } | Action::TargetsChanged => {}
            }
        }
    }

    fn deliver(&mut self, conn: ConnKey, msg: ControlMsg) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let (peer_node, peer_key) = (link.peer_node, link.peer_key);
        // A message encodes and decodes on the real wire; keep that honest here.
        let bytes = weft_gossip::wire::encode(&msg);
        let msg: ControlMsg = weft_gossip::wire::decode(&bytes).unwrap();
        self.delivered.push((bytes.len(), msg.clone()));
        let mut out = Vec::new();
        self.meshes[peer_node].on_message(peer_key, msg, self.now, &mut out);
        self.enqueue(peer_node, out);
    }

    /// Advances simulated time by `by`, ticking every mesh, and settles.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        for node in 0..self.meshes.len() {
            let mut out = Vec::new();
            self.meshes[node].tick(self.now, &mut out);
            self.enqueue(node, out);
        }
        self.settle();
    }

    /// Runs rounds of time until `done` holds; panics with the state if it never does.
    fn run_until(&mut self, what: &str, done: impl Fn(&Sim) -> bool) {
        self.settle();
        for _ in 0..200 {
            if done(self) {
                // Let coalesced work (routes, announcements) happen before the caller looks.
                self.advance(weft_gossip::mesh::COALESCE);
                return;
            }
            self.advance(Duration::from_secs(5));
        }
        let summary: Vec<String> = self
            .meshes
            .iter()
            .map(|m| {
                format!(
                    "{}: {} peers, {} conns",
                    m.name(),
                    m.topology().len(),
                    m.connections(self.now).len()
                )
            })
            .collect();
        panic!("never reached: {what}\n{}", summary.join("\n"));
    }

    fn full_mesh(&self) -> bool {
        let n = self.meshes.len();
        let hash = self.meshes[0].topology().digest_hash();
        self.meshes.iter().all(|m| {
            m.topology().len() == n
                && m.connections(self.now).len() == n - 1
                && m.topology().digest_hash() == hash
        })
    }

    /// The node's process dies: its connections reset and it answers nothing until restarted.
    fn kill(&mut self, node: usize) {
        self.down.insert(node);
        let keys: Vec<ConnKey> = self
            .links
            .iter()
            .filter(|(_, l)| l.node == node)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.close(key, "connection reset");
        }
        self.settle();
    }
}

#[test]
fn a_chain_of_introductions_becomes_a_full_mesh() {
    let mut sim = Sim::new(10);
    for node in 1..10 {
        sim.tell(node, &[node - 1]);
    }
    sim.run_until("full mesh", Sim::full_mesh);
    // Every peer computes the same routes: all direct.
    for mesh in &sim.meshes {
        for (peer, via) in mesh.routes().table(LinkSet::All) {
            assert_eq!(peer, via);
        }
    }
}

#[test]
fn simultaneous_dials_settle_on_one_connection_at_both_ends() {
    let mut sim = Sim::new(2);
    sim.tell(0, &[1]);
    sim.tell(1, &[0]);
    sim.run_until("one connection each", Sim::full_mesh);
    let a = sim.meshes[0].connections(sim.now);
    let b = sim.meshes[1].connections(sim.now);
    assert_eq!((a.len(), b.len()), (1, 1));
    // Both ends kept the same TCP connection: one side outbound, the other inbound.
    assert_ne!(a[0].outbound, b[0].outbound);
    assert_eq!(sim.links.len(), 2);
}

#[test]
fn a_restarted_peer_keeps_its_name_and_its_new_incarnation_wins() {
    let mut sim = Sim::new(5);
    for node in 1..5 {
        sim.tell(node, &[0]);
    }
    sim.run_until("full mesh", Sim::full_mesh);
    let old_uid = sim.uids[3];
    sim.kill(3);
    sim.run_until("peer 3 forgotten", |s| {
        (0..5)
            .filter(|n| *n != 3)
            .all(|n| s.meshes[n].connection_to(name(3)).is_none())
    });
    sim.add_node(3);
    assert_ne!(sim.uids[3], old_uid);
    // It comes back knowing one address; the others know its address and redial too.
    sim.tell(3, &[1]);
    sim.run_until("full mesh after restart", Sim::full_mesh);
    let new_uid = sim.uids[3];
    for mesh in &sim.meshes {
        assert_eq!(mesh.topology().get(name(3)).unwrap().uid, new_uid);
    }
}

#[test]
fn a_peer_that_redials_after_its_restart_is_not_dialled_again_so_its_connection_stays() {
    // Both ends name each other (Kubernetes Nodes do): when one restarts and dials first, the
    // other's target must count as connected. Dialled again once its backoff ran out, the
    // duplicate could replace the working connection and cut the data path meanwhile.
    let mut sim = Sim::new(3);
    for node in 0..3 {
        let others: Vec<usize> = (0..3).filter(|o| *o != node).collect();
        sim.tell(node, &others);
    }
    sim.run_until("full mesh", Sim::full_mesh);
    sim.kill(1);
    // The others' dials fail while it is down, so their next ones are a while off.
    for _ in 0..4 {
        sim.advance(Duration::from_secs(5));
    }
    sim.add_node(1);
    sim.tell(1, &[0, 2]);
    sim.advance(Duration::ZERO);
    for peer in [0, 2] {
        assert!(
            sim.meshes[1].connection_to(name(peer)).is_some(),
            "the restarted node dialled {peer} at once"
        );
    }
    let links: BTreeSet<ConnKey> = sim.links.keys().copied().collect();
    let dials = sim.dials.len();
    for _ in 0..20 {
        sim.advance(Duration::from_secs(30));
    }
    assert_eq!(
        sim.links.keys().copied().collect::<BTreeSet<_>>(),
        links,
        "a working connection was replaced"
    );
    assert_eq!(sim.dials[dials..], [], "dials to a connected peer");
    assert!(sim.full_mesh());
    for node in [0, 2] {
        let target = addr(1).to_string();
        let status = sim.meshes[node].targets(sim.now);
        let state = status.iter().find(|t| t.address == target).unwrap();
        assert_eq!(state.state, "connected", "node {node}: {state:?}");
    }
}

#[test]
fn a_blocked_pair_is_routed_through_the_others_and_reconnects_when_healed() {
    let mut sim = Sim::new(4);
    sim.blocked.insert((0, 1));
    for node in 1..4 {
        sim.tell(node, &[3]);
    }
    sim.tell(0, &[3]);
    sim.run_until("everyone but the blocked pair connected", |s| {
        s.meshes.iter().all(|m| m.topology().len() == 4)
            && s.meshes[0].connections(s.now).len() == 2
            && s.meshes[1].connections(s.now).len() == 2
            && s.meshes[2].connections(s.now).len() == 3
    });
    let via = sim.meshes[0]
        .routes()
        .unicast(LinkSet::All, name(1))
        .unwrap();
    assert!(
        via == name(2) || via == name(3),
        "0 reaches 1 through a third peer, got {via}"
    );
    // A control-plane echo travels the relay and comes back.
    let mut out = Vec::new();
    sim.meshes[0].echo(name(1), 42, &mut out).unwrap();
    sim.enqueue(0, out);
    let mut replies = Vec::new();
    while let Some((node, action)) = sim.queue.pop_front() {
        match action {
            Action::EchoReply { id, from } => replies.push((node, id, from)),
            Action::Send { conn, msg } => sim.deliver(conn, msg),
            other => sim.queue.push_back((node, other)),
        }
        if !replies.is_empty() {
            break;
        }
    }
    assert_eq!(replies, vec![(0, 42, name(1))]);

    sim.blocked.clear();
    sim.run_until("healed to a full mesh", Sim::full_mesh);
    assert_eq!(
        sim.meshes[0].routes().unicast(LinkSet::All, name(1)),
        Some(name(1))
    );
}

/// Sets the data path of every connection `node` has to `peer` (by the simulated link).
fn set_data_path(sim: &mut Sim, node: usize, peer: usize, up: bool) {
    let keys: Vec<ConnKey> = sim
        .links
        .iter()
        .filter(|(_, l)| l.node == node && l.peer_node == peer)
        .map(|(k, _)| *k)
        .collect();
    for key in keys {
        sim.meshes[node].set_data_path(key, up, sim.now);
    }
}

#[test]
fn data_routes_use_only_links_whose_data_path_both_ends_confirmed() {
    let mut sim = Sim::new(0);
    sim.confirm_data_path = true;
    for node in 0..3 {
        sim.add_node(node);
    }
    sim.tell(1, &[0]);
    sim.tell(2, &[0]);
    sim.run_until("full mesh", Sim::full_mesh);
    let data_route = |sim: &Sim, from: usize, to: usize| {
        sim.meshes[from]
            .routes()
            .unicast(LinkSet::EstablishedSymmetric, name(to))
    };
    // Control works at once; data waits for the data path.
    assert_eq!(
        sim.meshes[0].routes().unicast(LinkSet::All, name(1)),
        Some(name(1))
    );
    assert_eq!(data_route(&sim, 0, 1), None);

    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                set_data_path(&mut sim, a, b, true);
            }
        }
    }
    // One tick announces, the next recomputes what the announcements changed.
    sim.advance(Duration::from_secs(1));
    sim.advance(Duration::from_secs(1));
    assert_eq!(data_route(&sim, 0, 1), Some(name(1)));
    assert_eq!(data_route(&sim, 2, 1), Some(name(1)));

    // UDP between 0 and 1 dies while TCP stays up: data goes through 2, control stays direct.
    // One end noticing is enough: the link is no longer symmetric.
    set_data_path(&mut sim, 0, 1, false);
    sim.advance(Duration::from_secs(1));
    sim.advance(Duration::from_secs(1));
    assert_eq!(data_route(&sim, 0, 1), Some(name(2)));
    assert_eq!(data_route(&sim, 1, 0), Some(name(2)));
    assert_eq!(
        sim.meshes[0].routes().unicast(LinkSet::All, name(1)),
        Some(name(1))
    );

    set_data_path(&mut sim, 0, 1, true);
    sim.advance(Duration::from_secs(1));
    sim.advance(Duration::from_secs(1));
    assert_eq!(data_route(&sim, 1, 0), Some(name(0)));
}

#[test]
fn two_meshes_that_grew_apart_merge_when_joined() {
    let mut sim = Sim::new(6);
    // Two groups that do not know of each other…
    sim.tell(1, &[0]);
    sim.tell(2, &[0]);
    sim.tell(4, &[3]);
    sim.tell(5, &[3]);
    sim.run_until("two separate meshes", |s| {
        s.meshes.iter().all(|m| m.topology().len() == 3)
    });
    // …until one peer is told about the other group.
    sim.tell(2, &[5]);
    sim.run_until("one full mesh", Sim::full_mesh);
}

#[test]
fn the_connection_limit_is_respected() {
    let mut sim = Sim::new(5);
    for node in 0..5 {
        sim.meshes[node] = Mesh::new(
            MeshConfig {
                conn_limit: 2,
                ..sim.config(node)
            },
            sim.now,
        );
    }
    // Keep uids consistent with the meshes just built.
    for node in 0..5 {
        sim.uids[node] = sim.meshes[node].topology().local_entry().uid;
    }
    // A chain of introductions: each peer can keep its two neighbours and no more.
    for node in 1..5 {
        sim.tell(node, &[node - 1]);
    }
    for _ in 0..20 {
        sim.advance(Duration::from_secs(5));
    }
    for mesh in &sim.meshes {
        assert!(
            mesh.connections(sim.now).len() <= 2,
            "{} has too many connections",
            mesh.name()
        );
        assert_eq!(
            mesh.topology().len(),
            5,
            "everyone still learns the whole topology"
        );
        assert_eq!(
            mesh.routes().table(LinkSet::All).len(),
            4,
            "and reaches everyone, relayed"
        );
    }
}

/// A minimal second channel: a map from key to the largest value anyone wrote (a CRDT).
#[derive(Default)]
struct MaxMap(BTreeMap<String, u64>);

type MaxUpdate = Vec<(String, u64)>;

impl weft_gossip::channel::GossipChannel for MaxMap {
    fn digest_hash(&self) -> u64 {
        let bytes = weft_gossip::wire::encode(&self.0);
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    fn digest(&self) -> Vec<u8> {
        weft_gossip::wire::encode(&self.0)
    }

    fn full_state(&self, _budget: usize) -> Vec<Vec<u8>> {
        let all: MaxUpdate = self.0.iter().map(|(k, v)| (k.clone(), *v)).collect();
        vec![weft_gossip::wire::encode(&all)]
    }

    fn merge(
        &mut self,
        _from: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, weft_gossip::channel::ChannelError> {
        let update: MaxUpdate = weft_gossip::wire::decode(update)?;
        let mut improved = MaxUpdate::new();
        for (key, value) in update {
            let slot = self.0.entry(key.clone()).or_insert(0);
            if value > *slot {
                *slot = value;
                improved.push((key, value));
            }
        }
        Ok((!improved.is_empty()).then(|| weft_gossip::wire::encode(&improved)))
    }

    fn compare_digest(
        &self,
        digest: &[u8],
        _budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), weft_gossip::channel::ChannelError> {
        let theirs: BTreeMap<String, u64> = weft_gossip::wire::decode(digest)?;
        let newer: MaxUpdate = self
            .0
            .iter()
            .filter(|(k, v)| theirs.get(*k).is_none_or(|t| t < *v))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let they_know_more = theirs
            .iter()
            .any(|(k, v)| self.0.get(k).is_none_or(|o| o < v));
        let updates = if newer.is_empty() {
            vec![]
        } else {
            vec![weft_gossip::wire::encode(&newer)]
        };
        Ok((updates, they_know_more))
    }
}

const MAXMAP: weft_gossip::wire::ChannelId = weft_gossip::wire::ChannelId(100);

fn channel_hash(sim: &Sim, node: usize) -> u64 {
    sim.meshes[node].channel(MAXMAP).unwrap().digest_hash()
}

fn publish(sim: &mut Sim, node: usize, key: &str, value: u64) {
    let mut out = Vec::new();
    let update = weft_gossip::wire::encode(&vec![(key.to_owned(), value)]);
    sim.meshes[node].publish(MAXMAP, &update, &mut out).unwrap();
    sim.enqueue(node, out);
}

#[test]
fn a_hosted_channel_spreads_repairs_losses_and_reaches_late_joiners() {
    let mut sim = Sim::new(5);
    for node in 0..5 {
        sim.meshes[node].add_channel(MAXMAP, Box::new(MaxMap::default()));
    }
    for node in 1..5 {
        sim.tell(node, &[node - 1]);
    }
    sim.run_until("full mesh", Sim::full_mesh);

    publish(&mut sim, 0, "pods", 3);
    sim.settle();
    assert!(
        (1..5).all(|n| channel_hash(&sim, n) == channel_hash(&sim, 0)),
        "one broadcast reaches all"
    );

    // A change whose broadcast is lost on the way is repaired by digest exchange.
    publish(&mut sim, 2, "macs", 7);
    sim.queue.clear();
    assert_ne!(channel_hash(&sim, 0), channel_hash(&sim, 2));
    sim.run_until("anti-entropy repaired the loss", |s| {
        (0..5).all(|n| channel_hash(s, n) == channel_hash(s, 2))
    });

    // A peer that joins later receives the whole state from its first neighbour.
    sim.add_node(5);
    sim.meshes[5].add_channel(MAXMAP, Box::new(MaxMap::default()));
    sim.tell(5, &[4]);
    sim.run_until("late joiner caught up", |s| {
        s.full_mesh() && channel_hash(s, 5) == channel_hash(s, 0)
    });
}

#[test]
fn a_converged_mesh_gossips_only_digest_hashes() {
    let n = 50;
    let mut sim = Sim::new(n);
    for node in 1..n {
        sim.tell(node, &[node - 1]);
    }
    sim.run_until("full mesh", Sim::full_mesh);
    sim.advance(GOSSIP_INTERVAL);
    sim.delivered.clear();
    sim.advance(GOSSIP_INTERVAL);
    let digests_only = sim.delivered.iter().all(|(_, msg)| match msg {
        ControlMsg::Gossip { payload, .. } => matches!(
            weft_gossip::wire::decode(payload),
            Ok(weft_gossip::channel::GossipMsg::DigestHash(_))
        ),
        _ => false,
    });
    assert!(digests_only, "steady state sends nothing but digest hashes");
    assert_eq!(
        sim.delivered.len(),
        n * (n - 1),
        "one hash per neighbour per interval"
    );
    let bytes: usize = sim.delivered.iter().map(|(len, _)| len).sum();
    // Printed for the record: control bytes per peer per interval, before framing and sealing.
    println!(
        "steady state: {} bytes per peer per {}s interval",
        bytes / n,
        GOSSIP_INTERVAL.as_secs()
    );
}

// The MAC-to-peer channel, hosted the way the router hosts it: the mesh holds one handle of a
// shared channel and the router (here, the test) keeps a clone to claim, withdraw and look up
// owners. `Mesh::channel` only gives a `&dyn GossipChannel`, so the owners each mesh gossips
// are also read back from its hosted channel's digest.

fn host_macs(sim: &mut Sim, node: usize) -> weft_gossip::macs::SharedMacChannel {
    use weft_gossip::macs::{MAC_CHANNEL, MAX_ENTRIES, MacChannel, SharedMacChannel};
    let shared = SharedMacChannel::new(MacChannel::new(name(node), MAX_ENTRIES, sim.now));
    sim.meshes[node].add_channel(MAC_CHANNEL, Box::new(shared.clone()));
    shared
}

fn publish_macs(sim: &mut Sim, node: usize, change: Option<Vec<u8>>) {
    let change = change.expect("a local change to publish");
    let mut out = Vec::new();
    sim.meshes[node]
        .publish(weft_gossip::macs::MAC_CHANNEL, &change, &mut out)
        .unwrap();
    sim.enqueue(node, out);
}

fn gossiped_owner(sim: &Sim, node: usize, mac: &weft_gossip::macs::Mac) -> Option<PeerName> {
    let hosted = sim.meshes[node]
        .channel(weft_gossip::macs::MAC_CHANNEL)
        .unwrap();
    weft_gossip::macs::digest_owners(&hosted.digest())
        .unwrap()
        .get(mac)
        .copied()
}

/// Every listed node says `owner` owns `mac`, both in its router's view and in its digest.
fn macs_agree(
    sim: &Sim,
    macs: &[weft_gossip::macs::SharedMacChannel],
    nodes: impl IntoIterator<Item = usize>,
    mac: &weft_gossip::macs::Mac,
    owner: Option<PeerName>,
) -> bool {
    nodes.into_iter().all(|n| {
        // Release the router's lock before the mesh's handle takes it.
        let routers_view = macs[n].lock().owner(mac);
        routers_view == owner && gossiped_owner(sim, n, mac) == owner
    })
}

fn macs_hash(sim: &Sim, node: usize) -> u64 {
    sim.meshes[node]
        .channel(weft_gossip::macs::MAC_CHANNEL)
        .unwrap()
        .digest_hash()
}

#[test]
fn mac_claims_spread_move_withdraw_and_reach_late_joiners() {
    let mut sim = Sim::new(5);
    let mut macs: Vec<_> = (0..5).map(|node| host_macs(&mut sim, node)).collect();
    for node in 1..5 {
        sim.tell(node, &[node - 1]);
    }
    sim.run_until("full mesh", Sim::full_mesh);
    let pod = [0x02, 0x42, 0x0a, 0, 0, 1];

    // Peer 0 sees a pod: one broadcast tells everyone, before any frame to it is sent.
    let now = sim.now;
    let change = macs[0].lock().claim_local(pod, now);
    publish_macs(&mut sim, 0, change);
    sim.settle();
    assert!(macs_agree(&sim, &macs, 0..5, &pod, Some(name(0))));

    // The pod moves to peer 3, which claims it one version higher: corrected everywhere.
    let change = macs[3].lock().claim_local(pod, now);
    publish_macs(&mut sim, 3, change);
    sim.settle();
    assert!(macs_agree(&sim, &macs, 0..5, &pod, Some(name(3))));
    // When peer 0's table later expires the pod, it has nothing to withdraw.
    assert_eq!(macs[0].lock().withdraw_local(pod, now), None);

    // Peer 3's table expires it; the withdrawal's broadcast is lost on the way, and
    // anti-entropy carries the tombstone to everyone who still lists the claim.
    let change = macs[3].lock().withdraw_local(pod, now);
    publish_macs(&mut sim, 3, change);
    sim.queue.clear();
    assert!(macs_agree(&sim, &macs, [3], &pod, None));
    assert!(macs_agree(&sim, &macs, [0, 1, 2, 4], &pod, Some(name(3))));
    sim.run_until("the lost withdrawal repaired", |s| {
        macs_agree(s, &macs, 0..5, &pod, None)
    });

    // Another pod, on peer 1; a peer that joins later gets the live state from its first
    // neighbour, and no tombstones.
    let other = [0x02, 0x42, 0x0a, 0, 0, 2];
    let change = macs[1].lock().claim_local(other, sim.now);
    publish_macs(&mut sim, 1, change);
    sim.settle();
    sim.add_node(5);
    macs.push(host_macs(&mut sim, 5));
    sim.tell(5, &[4]);
    sim.run_until("late joiner caught up", |s| {
        s.full_mesh() && (0..6).all(|n| macs_hash(s, n) == macs_hash(s, 0))
    });
    assert!(macs_agree(&sim, &macs, 0..6, &other, Some(name(1))));
    assert!(macs_agree(&sim, &macs, 0..6, &pod, None));
    assert_eq!(macs[5].lock().len(), 1);

    // Peer 1 is cut off from everyone: once the others forget it, its pod's claim is withdrawn
    // everywhere (a tombstone, so no peer that forgets it later can bring the claim back).
    for node in [0, 2, 3, 4, 5] {
        sim.blocked.insert((node.min(1), node.max(1)));
    }
    let keys: Vec<ConnKey> = sim
        .links
        .iter()
        .filter(|(_, l)| l.node == 1)
        .map(|(k, _)| *k)
        .collect();
    for key in keys {
        sim.close(key, "connection reset");
    }
    let others = [0, 2, 3, 4, 5];
    sim.run_until("peer 1 forgotten and its MACs withdrawn", |s| {
        others
            .iter()
            .all(|&n| s.meshes[n].topology().get(name(1)).is_none())
            && macs_agree(s, &macs, others, &other, None)
    });
    assert!(
        others
            .iter()
            .all(|&n| macs_hash(&sim, n) == macs_hash(&sim, 0))
    );

    // It comes back still hosting the pod: told of the withdrawal in its name, it claims the
    // pod again, one version higher.
    sim.blocked.clear();
    sim.run_until("peer 1 back and its pod claimed again", |s| {
        s.full_mesh() && macs_agree(s, &macs, 0..6, &other, Some(name(1)))
    });
    assert!((0..6).all(|n| macs_hash(&sim, n) == macs_hash(&sim, 0)));
    let version = macs[0].lock().claim(&other).map(|c| c.version);
    assert_eq!(version, Some(2));
}

// IPAM, hosted the way the router hosts it: the mesh holds one handle of a shared channel and
// the router (here, these helpers) keeps a clone. After every event the router supplies
// reachability from the routes, takes the channel's outbox and publishes / unicasts it.

use weft_gossip::ipam::agreement::initial_peers;
use weft_gossip::ipam::{AllocKey, IPAM_CHANNEL, IpamChannel, IpamConfig, IpamError, SharedIpam};

fn host_ipam(sim: &mut Sim, node: usize) -> SharedIpam {
    let config = IpamConfig::new("10.40.0.0/24".parse().unwrap());
    let unix_ms = 1_000_000 + sim.now.elapsed().as_millis() as u64 + node as u64;
    let channel = IpamChannel::new(config, name(node), sim.uids[node], sim.now, unix_ms);
    let shared = SharedIpam::new(channel);
    sim.meshes[node].add_channel(IPAM_CHANNEL, Box::new(shared.clone()));
    shared
}

/// The router's loop for every live IPAM: reachability, outbox, until nothing is left to send.
fn pump_ipam(sim: &mut Sim, ipams: &[SharedIpam]) {
    for _ in 0..100 {
        sim.settle();
        let mut busy = false;
        for (node, ipam) in ipams.iter().enumerate() {
            if sim.down.contains(&node) {
                continue;
            }
            let reachable = sim.meshes[node].routes().reachable(LinkSet::All);
            ipam.lock().set_reachable(reachable);
            let mesh = &sim.meshes[node];
            let initial =
                initial_peers(mesh.name(), &mesh.targets(sim.now), |a| mesh.target_peer(a));
            ipam.lock().set_initial_peers(initial);
            let out = ipam.lock().take_outbox();
            let mut actions = Vec::new();
            if let Some(update) = out.publish {
                busy = true;
                sim.meshes[node]
                    .publish(IPAM_CHANNEL, &update, &mut actions)
                    .unwrap();
            }
            for (dst, payload) in out.unicasts {
                busy = true;
                let _ = sim.meshes[node].unicast(IPAM_CHANNEL, dst, payload, &mut actions);
            }
            sim.enqueue(node, actions);
        }
        if !busy {
            return;
        }
    }
    panic!("IPAM traffic does not settle");
}

fn advance_ipam(sim: &mut Sim, ipams: &[SharedIpam], by: Duration) {
    sim.advance(by);
    for (node, ipam) in ipams.iter().enumerate() {
        if !sim.down.contains(&node) {
            ipam.lock().tick(sim.now);
        }
    }
    pump_ipam(sim, ipams);
}

/// Allocates like the router: retries while the error says a request is under way.
fn allocate(
    sim: &mut Sim,
    ipams: &[SharedIpam],
    node: usize,
    key: &str,
) -> Result<Ipv4Addr, IpamError> {
    let key = AllocKey::new(key, "eth0");
    for _ in 0..20 {
        // Like the router's step: reachability and initial peers first.
        pump_ipam(sim, ipams);
        let now = sim.now;
        match ipams[node].lock().allocate(&key, now) {
            Err(e) if e.is_retryable() => {}
            other => return other,
        }
        pump_ipam(sim, ipams);
        advance_ipam(sim, ipams, Duration::from_secs(1));
    }
    Err(IpamError::WaitingForRing("still waiting".into()))
}

fn ring_hash(ipam: &SharedIpam) -> String {
    ipam.lock().status(Instant::now()).ring_hash
}

/// No address is held twice anywhere among the live peers.
fn assert_no_duplicates(sim: &Sim, ipams: &[SharedIpam]) -> usize {
    let mut seen = BTreeMap::new();
    for (node, ipam) in ipams.iter().enumerate() {
        if sim.down.contains(&node) {
            continue;
        }
        for (key, addr) in ipam.lock().allocations() {
            if let Some(other) = seen.insert(addr, (node, key.clone())) {
                panic!("{addr} held by {other:?} and by {:?}", (node, key));
            }
        }
    }
    seen.len()
}

fn rings_agree(sim: &Sim, ipams: &[SharedIpam]) -> bool {
    let live: Vec<&SharedIpam> = ipams
        .iter()
        .enumerate()
        .filter(|(n, _)| !sim.down.contains(n))
        .map(|(_, i)| i)
        .collect();
    live.iter().all(|i| ring_hash(i) == ring_hash(live[0]))
}

#[test]
fn ipam_over_the_mesh_joins_asks_partitions_heals_and_reclaims() {
    let mut sim = Sim::new(4);
    let ipams: Vec<SharedIpam> = (0..4).map(|node| host_ipam(&mut sim, node)).collect();
    // Node 0 is alone: it creates the ring at once, no quorum.
    let first = allocate(&mut sim, &ipams, 0, "pod-0").unwrap();
    assert_eq!(first, "10.40.0.1".parse::<Ipv4Addr>().unwrap());
    let ring = ipams[0].lock().ring_id().unwrap();

    // The others join one at a time; each receives the ring and asks for space.
    for node in 1..4 {
        sim.tell(node, &[node - 1]);
        sim.run_until("joined", |s| {
            (0..=node).all(|n| s.meshes[n].topology().len() == node + 1)
        });
        pump_ipam(&mut sim, &ipams);
        allocate(&mut sim, &ipams, node, &format!("pod-{node}")).unwrap();
        assert_eq!(
            ipams[node].lock().ring_id(),
            Some(ring),
            "one ring, never two"
        );
    }
    assert_no_duplicates(&sim, &ipams);

    // Node 1 runs out of its share and asks a peer for more.
    let mut asked = 0;
    for k in 0..100 {
        let now = sim.now;
        let key = AllocKey::new(format!("busy-{k}"), "eth0");
        if ipams[1].lock().allocate(&key, now).is_err() {
            asked += 1;
            allocate(&mut sim, &ipams, 1, &key.container).unwrap();
        }
    }
    assert!(asked > 0, "node 1 needed space from others");
    assert_eq!(assert_no_duplicates(&sim, &ipams), 104);
    sim.run_until("rings agree", |s| rings_agree(s, &ipams));

    // A partition: {0, 1} and {2, 3}. Both sides allocate from what they own.
    for a in [0, 1] {
        for b in [2, 3] {
            sim.blocked.insert((a, b));
        }
    }
    let cut: Vec<ConnKey> = sim
        .links
        .iter()
        .filter(|(_, l)| (l.node < 2) != (l.peer_node < 2))
        .map(|(k, _)| *k)
        .collect();
    for key in cut {
        sim.close(key, "partition");
    }
    for _ in 0..3 {
        advance_ipam(&mut sim, &ipams, Duration::from_secs(10));
    }
    for node in 0..4 {
        for k in 0..5 {
            allocate(&mut sim, &ipams, node, &format!("split-{node}-{k}")).unwrap();
        }
    }
    assert_no_duplicates(&sim, &ipams);

    // Healed: one ring again, still no duplicate.
    sim.blocked.clear();
    sim.run_until("healed", Sim::full_mesh);
    for _ in 0..3 {
        advance_ipam(&mut sim, &ipams, Duration::from_secs(30));
    }
    assert!(rings_agree(&sim, &ipams));
    assert_eq!(assert_no_duplicates(&sim, &ipams), 124);

    // Node 3 dies for good; once the others forget it, two hosts run `rmpeer` at once.
    let node3 = name(3);
    sim.kill(3);
    sim.run_until("node 3 forgotten", |s| {
        (0..3).all(|n| s.meshes[n].topology().get(node3).is_none())
    });
    for _ in 0..3 {
        advance_ipam(&mut sim, &ipams, Duration::from_secs(30));
    }
    let now = sim.now;
    let taken_0 = ipams[0].lock().reclaim(node3, false, now).unwrap();
    let taken_1 = ipams[1].lock().reclaim(node3, false, now).unwrap();
    assert_eq!(taken_0, taken_1);
    assert!(taken_0 > 0);
    for _ in 0..3 {
        advance_ipam(&mut sim, &ipams, Duration::from_secs(30));
    }
    assert!(rings_agree(&sim, &ipams));
    let status = ipams[2].lock().status(sim.now);
    assert_eq!(status.unowned, 0, "reclaimed space was adopted");
    assert!(status.owners.iter().all(|o| o.peer != node3 && o.reachable));
    assert_eq!(status.owners.iter().map(|o| o.addresses).sum::<u64>(), 256);
    assert!(status.conflicts.is_empty());
    // Node 3's pods are gone with it; its addresses can be handed out again, once.
    for k in 0..40 {
        allocate(&mut sim, &ipams, 2, &format!("after-{k}")).unwrap();
    }
    assert_no_duplicates(&sim, &ipams);
}

/// Three nodes booted together, each told about the other two, one of them late: with the real
/// mesh and connection maker deciding who counts as reached, nobody creates a ring while the
/// late one is missing (and says so), then exactly one ring forms, made by the smallest name.
#[test]
fn ipam_nodes_booted_together_with_a_late_one_agree_on_one_ring() {
    let mut sim = Sim::new(3);
    let mut ipams: Vec<SharedIpam> = (0..3).map(|node| host_ipam(&mut sim, node)).collect();
    sim.kill(2);
    sim.tell(0, &[1, 2]);
    sim.tell(1, &[0, 2]);
    sim.run_until("0 and 1 are connected", |s| {
        s.meshes[0].topology().len() == 2 && s.meshes[1].topology().len() == 2
    });
    for node in [0, 1] {
        let waited = allocate(&mut sim, &ipams, node, "early").unwrap_err();
        assert!(matches!(waited, IpamError::WaitingForRing(_)), "{waited}");
        let reason = ipams[node].lock().ring_wait_reason().unwrap().to_string();
        assert!(
            reason.starts_with("no ring yet: 1 of 2 initial peers reachable: ")
                && reason.contains(&addr(2).to_string()),
            "{reason}"
        );
        assert_eq!(ipams[node].lock().ring_id(), None);
    }
    sim.add_node(2);
    ipams[2] = host_ipam(&mut sim, 2);
    sim.tell(2, &[0, 1]);
    sim.run_until("full mesh", Sim::full_mesh);
    let mut addresses = BTreeSet::new();
    for node in 0..3 {
        addresses.insert(allocate(&mut sim, &ipams, node, "pod").unwrap());
    }
    assert_eq!(addresses.len(), 3);
    let rings: BTreeSet<_> = ipams.iter().map(|i| i.lock().ring_id()).collect();
    assert_eq!(rings.len(), 1, "{rings:?}");
    let ring = rings.into_iter().next().flatten().unwrap();
    assert_eq!(ring.genesis, name(0), "the smallest name created it");
    assert_no_duplicates(&sim, &ipams);
}
