use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::channel::GossipChannel;
use crate::ipam::{AllocKey, IpamChannel, IpamConfig, IpamError, IpamMsg, RingId};
use crate::wire;

const SEC: Duration = Duration::from_secs(1);

fn name(n: u64) -> PeerName {
    PeerName::from_u64(n).unwrap()
}

fn set(peers: &[u64]) -> BTreeSet<PeerName> {
    peers.iter().map(|p| name(*p)).collect()
}

#[test]
fn a_lone_router_may_create_at_once() {
    let a = RingAgreement::new(name(5));
    assert_eq!(a.decide(), Decision::Create);
}

#[test]
fn an_unreached_initial_peer_is_named_with_its_failure() {
    let mut a = RingAgreement::new(name(1));
    a.set_initial(vec![InitialPeer::unreached(
        "10.0.0.1:6783",
        "handshake timed out",
    )]);
    let Decision::Wait(reason) = a.decide() else {
        panic!("must wait");
    };
    assert_eq!(
        reason.to_string(),
        "no ring yet: 0 of 1 initial peers reachable: 10.0.0.1:6783 (handshake timed out)"
    );
    // Reachable peers do not help while an initial peer is missing.
    a.set_reachable(&set(&[2, 3]));
    assert!(matches!(
        a.decide(),
        Decision::Wait(WaitReason::InitialPeers { reached: 0, .. })
    ));
}

#[test]
fn a_router_waits_for_answers_and_for_smaller_names() {
    let mut a = RingAgreement::new(name(2));
    a.set_initial(vec![
        InitialPeer::reached("h1:6783", name(3)),
        // An address that turned out to be this router itself counts as reached.
        InitialPeer::reached("me:6783", name(2)),
    ]);
    assert!(
        matches!(a.decide(), Decision::Wait(WaitReason::InitialPeers { reached: 1, total: 2, ref unreached }) if unreached[0].1.contains("no route yet")),
        "connected but not routed yet: {:?}",
        a.decide()
    );
    a.set_reachable(&set(&[1, 3]));
    let t = Instant::now();
    assert_eq!(a.queries(t, 5 * SEC), vec![name(1), name(3)]);
    assert!(a.queries(t + SEC, 5 * SEC).is_empty(), "not asked twice");
    assert_eq!(
        a.decide(),
        Decision::Wait(WaitReason::Unanswered(vec![name(1), name(3)]))
    );
    a.answered_ringless(name(3));
    a.answered_ringless(name(9)); // not reachable: ignored
    assert_eq!(a.queries(t + 5 * SEC, 5 * SEC), vec![name(1)], "resent");
    a.answered_ringless(name(1));
    assert_eq!(a.decide(), Decision::Wait(WaitReason::SmallerPeer(name(1))));
    assert!(
        a.decide().ne(&Decision::Create)
            && matches!(a.decide(), Decision::Wait(r) if r.to_string().contains("waiting for 00:00:00:00:00:01"))
    );
    // 1 leaves: its answer is forgotten; 2 is now the smallest and may create.
    a.set_reachable(&set(&[3]));
    assert_eq!(a.decide(), Decision::Create);
    // 1 returns: it must answer again.
    a.set_reachable(&set(&[1, 3]));
    assert_eq!(
        a.decide(),
        Decision::Wait(WaitReason::Unanswered(vec![name(1)]))
    );
}

#[test]
fn initial_peers_come_from_the_direct_targets() {
    let target = |address: &str, source, state, last_error: Option<&str>| TargetStatus {
        address: address.to_owned(),
        source,
        state,
        attempts: 1,
        retry_in_secs: None,
        last_error: last_error.map(str::to_owned),
    };
    let targets = vec![
        target("a:1", TargetSource::Direct, "connected", None),
        target(
            "b:1",
            TargetSource::Direct,
            "retrying",
            Some("handshake timed out"),
        ),
        target("c:1", TargetSource::Discovered, "retrying", Some("refused")),
        target(
            "me:1",
            TargetSource::Direct,
            "failed",
            Some("cannot connect to ourself"),
        ),
        target("d:1", TargetSource::Direct, "waiting", None),
        // Led to peer 4 once, but the connection is down now.
        target(
            "e:1",
            TargetSource::Direct,
            "retrying",
            Some("connection reset"),
        ),
    ];
    let peer_of = |a: &str| match a {
        "a:1" => Some(name(2)),
        "me:1" => Some(name(1)),
        "e:1" => Some(name(4)),
        _ => None,
    };
    assert_eq!(
        initial_peers(name(1), &targets, peer_of),
        vec![
            InitialPeer::reached("a:1", name(2)),
            InitialPeer::unreached("b:1", "handshake timed out"),
            InitialPeer::reached("me:1", name(1)),
            InitialPeer::unreached("d:1", "not dialled yet"),
            InitialPeer::unreached("e:1", "connection reset"),
        ]
    );
}

// ---- IPAM channels driven the way the router drives them ----

const RANGE: &str = "10.0.0.0/24";

fn gateway() -> AllocKey {
    AllocKey::new("weft:gateway", "weft")
}

enum Msg {
    Unicast(Vec<u8>),
    Gossip(Vec<u8>),
}

/// Routers in memory: who runs, who was told about whom, which direct connections are up,
/// and the messages in flight (delivered only if the destination is reachable then).
struct Sim {
    peers: Vec<Option<IpamChannel>>,
    told: Vec<BTreeSet<usize>>,
    links: BTreeSet<(usize, usize)>,
    queue: VecDeque<(usize, usize, Msg)>,
    /// Rings created, by creator.
    created: BTreeMap<usize, BTreeSet<RingId>>,
    now: Instant,
}

impl Sim {
    fn new(told: Vec<BTreeSet<usize>>) -> Self {
        Sim {
            peers: told.iter().map(|_| None).collect(),
            told,
            links: BTreeSet::new(),
            queue: VecDeque::new(),
            created: BTreeMap::new(),
            now: Instant::now(),
        }
    }

    fn n(&self) -> usize {
        self.peers.len()
    }

    fn pname(i: usize) -> PeerName {
        name(i as u64 + 1)
    }

    fn up(&self, i: usize) -> bool {
        self.peers[i].is_some()
    }

    fn p(&mut self, i: usize) -> &mut IpamChannel {
        self.peers[i].as_mut().unwrap()
    }

    /// Starts router `i` (a restart keeps nothing: a new host with the same name).
    fn start(&mut self, i: usize) {
        if self.up(i) {
            return;
        }
        let unix_ms = 1_000_000 + self.now.elapsed().as_millis() as u64;
        let c = IpamChannel::new(
            IpamConfig::new(RANGE.parse().unwrap()),
            Self::pname(i),
            100 + i as u64,
            self.now,
            unix_ms,
        );
        self.peers[i] = Some(c);
        self.sync(i);
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    fn component(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([i]);
        let mut todo = vec![i];
        while let Some(a) = todo.pop() {
            for b in 0..self.n() {
                if self.up(b) && self.linked(a, b) && seen.insert(b) {
                    todo.push(b);
                }
            }
        }
        seen
    }

    fn link(&mut self, a: usize, b: usize) {
        if a == b || !self.up(a) || !self.up(b) || self.linked(a, b) {
            return;
        }
        self.links.insert((a.min(b), a.max(b)));
        for (x, y) in [(a, b), (b, a)] {
            self.sync(x);
            // A new neighbour gets everything we know.
            for part in self.p(x).full_state(1 << 16) {
                self.queue.push_back((x, y, Msg::Gossip(part)));
            }
        }
    }

    fn unlink(&mut self, a: usize, b: usize) {
        self.links.remove(&(a.min(b), a.max(b)));
        for i in [a, b] {
            if self.up(i) {
                self.sync(i);
            }
        }
    }

    /// The router's step: reachability and initial peers in, outbox out.
    fn sync(&mut self, i: usize) {
        let reach = self.component(i);
        let initial = self.told[i]
            .iter()
            .map(|j| {
                let address = format!("10.1.0.{j}:6783");
                if self.up(*j) && self.linked(i, *j) {
                    InitialPeer::reached(address, Self::pname(*j))
                } else {
                    InitialPeer::unreached(address, "connection refused")
                }
            })
            .collect();
        let c = self.p(i);
        c.set_reachable(reach.iter().map(|j| Self::pname(*j)));
        c.set_initial_peers(initial);
        let out = c.take_outbox();
        if let Some(update) = out.publish {
            c.merge(c.local_name(), &update).unwrap();
            for j in reach.iter().filter(|j| **j != i) {
                self.queue.push_back((i, *j, Msg::Gossip(update.clone())));
            }
        }
        for (dst, payload) in out.unicasts {
            let j = dst.as_u64() as usize - 1;
            self.queue.push_back((i, j, Msg::Unicast(payload)));
        }
        if let Some(id) = self.p(i).ring_id()
            && id.genesis == Self::pname(i)
        {
            self.created.entry(i).or_default().insert(id);
        }
    }

    fn deliver_one(&mut self, k: usize) {
        if self.queue.is_empty() {
            return;
        }
        let k = k % self.queue.len();
        let Some((src, dst, msg)) = self.queue.remove(k) else {
            return;
        };
        if !self.up(dst) || !self.component(src).contains(&dst) {
            return;
        }
        match msg {
            Msg::Unicast(payload) => {
                let replies = self.p(dst).on_unicast(Self::pname(src), &payload).unwrap();
                for (to, reply) in replies {
                    let j = to.as_u64() as usize - 1;
                    self.queue.push_back((dst, j, Msg::Unicast(reply)));
                }
            }
            Msg::Gossip(update) => {
                if let Some(improved) = self.p(dst).merge(Self::pname(src), &update).unwrap() {
                    // Gossip floods: pass on what was new.
                    for j in self.component(dst) {
                        if j != dst && j != src {
                            self.queue
                                .push_back((dst, j, Msg::Gossip(improved.clone())));
                        }
                    }
                }
            }
        }
        self.sync(dst);
    }

    fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            if self.queue.is_empty() {
                return;
            }
            self.deliver_one(0);
        }
        panic!("messages do not settle");
    }

    fn tick(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        let now = self.now;
        self.p(i).tick(now);
        self.sync(i);
    }

    /// Like the router's bridge address at start: allocate, retried on later steps.
    fn alloc(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        let now = self.now;
        let _ = self.p(i).allocate(&gateway(), now);
        self.sync(i);
    }

    fn apply(&mut self, op: &Op) {
        let n = self.n();
        match *op {
            Op::Start(i) => self.start(i % n),
            Op::Link(a, b) => self.link(a % n, b % n),
            Op::Unlink(a, b) => self.unlink(a % n, b % n),
            Op::Deliver(k) => self.deliver_one(k),
            Op::Tick(i) => {
                self.now += SEC;
                self.tick(i % n);
            }
            Op::Alloc(i) => self.alloc(i % n),
        }
    }

    /// Everyone up, every pair linked, then rounds of ticks and deliveries.
    fn heal(&mut self) {
        for i in 0..self.n() {
            self.start(i);
        }
        for a in 0..self.n() {
            for b in 0..self.n() {
                self.link(a, b);
            }
        }
        for _ in 0..8 {
            self.now += 6 * SEC;
            for i in 0..self.n() {
                self.tick(i);
                self.alloc(i);
            }
            self.deliver_all();
        }
    }

    fn rings(&self) -> BTreeSet<Option<RingId>> {
        self.peers
            .iter()
            .flatten()
            .map(IpamChannel::ring_id)
            .collect()
    }

    fn creators(&self) -> Vec<usize> {
        self.created.keys().copied().collect()
    }

    fn mutually_told(&self, a: usize, b: usize) -> bool {
        self.told[a].contains(&b) && self.told[b].contains(&a)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Start(usize),
    Link(usize, usize),
    Unlink(usize, usize),
    Deliver(usize),
    Tick(usize),
    Alloc(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..8usize).prop_map(Op::Start),
        4 => (0..8usize, 0..8usize).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (0..8usize, 0..8usize).prop_map(|(a, b)| Op::Unlink(a, b)),
        6 => (0..64usize).prop_map(Op::Deliver),
        3 => (0..8usize).prop_map(Op::Tick),
        2 => (0..8usize).prop_map(Op::Alloc),
    ]
}

/// Who was told about whom: everyone about everyone, or any directed graph.
fn arb_told() -> impl Strategy<Value = Vec<BTreeSet<usize>>> {
    (2..=5usize).prop_flat_map(|n| {
        prop_oneof![
            Just(
                (0..n)
                    .map(|i| (0..n).filter(|j| *j != i).collect())
                    .collect()
            ),
            proptest::collection::vec(proptest::collection::btree_set(0..n, 0..n), n).prop_map(
                |told: Vec<BTreeSet<usize>>| told
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| s.into_iter().filter(|j| *j != i).collect())
                    .collect()
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random start order, late starters, partitions and reorderings: no two peers told
    /// about each other both create a ring, so a group of peers all told about each other
    /// forms at most one; once everyone is up and connected there is exactly one ring.
    #[test]
    fn at_most_one_ring_forms_among_peers_told_about_each_other(
        told in arb_told(),
        ops in proptest::collection::vec(arb_op(), 0..80),
    ) {
        let mut sim = Sim::new(told);
        for op in &ops {
            sim.apply(op);
            let creators = sim.creators();
            for a in &creators {
                for b in &creators {
                    prop_assert!(
                        a == b || !sim.mutually_told(*a, *b),
                        "{} and {} were told about each other and both created a ring", a, b
                    );
                    prop_assert!(sim.created[a].len() == 1, "{} created two rings", a);
                }
            }
        }
        sim.heal();
        let rings = sim.rings();
        prop_assert_eq!(rings.len(), 1, "one ring once all are connected: {:?}", rings);
        prop_assert!(rings.iter().all(Option::is_some));
        let clique = (0..sim.n()).all(|a| (0..sim.n()).all(|b| a == b || sim.mutually_told(a, b)));
        if clique {
            prop_assert_eq!(sim.creators().len(), 1);
        }
    }

    /// A router told about nobody creates its ring on its first step, whoever else is around.
    #[test]
    fn a_lone_peer_forms_a_ring_immediately(others in 0..4usize, linked in any::<bool>()) {
        let mut told = vec![BTreeSet::new()];
        told.extend((0..others).map(|_| BTreeSet::from([0])));
        let mut sim = Sim::new(told);
        for i in 1..=others {
            sim.start(i);
        }
        sim.start(0);
        if linked {
            for i in 1..=others {
                sim.link(0, i);
            }
        }
        sim.alloc(0);
        prop_assert_eq!(sim.p(0).ring_id().map(|r| r.genesis), Some(Sim::pname(0)));
        prop_assert!(sim.p(0).address_of(&gateway()).is_some());
    }
}

/// Hosts that join one at a time, each told about the ones before it, get the first host's
/// ring as soon as they connect, before any timer, and never create one, even though each
/// newcomer has the smallest name and tries to allocate the moment it connects.
#[test]
fn hosts_joining_one_at_a_time_never_wait_and_never_split() {
    let n = 5;
    // Host n-1 comes first; each newcomer i is told about i+1..n and has the smallest name.
    let told = (0..n).map(|i| (i + 1..n).collect()).collect();
    let mut sim = Sim::new(told);
    sim.start(n - 1);
    sim.alloc(n - 1);
    let ring = sim.p(n - 1).ring_id().unwrap();
    for i in (0..n - 1).rev() {
        sim.start(i);
        // Before it reaches anyone it waits (it was told about peers), and says why.
        sim.alloc(i);
        assert_eq!(sim.p(i).ring_id(), None);
        assert!(
            sim.p(i)
                .ring_wait_reason()
                .unwrap()
                .to_string()
                .contains("0 of")
        );
        for j in i + 1..n {
            sim.link(i, j);
        }
        // Connected, the ring not delivered yet: it must not create one.
        sim.alloc(i);
        sim.tick(i);
        assert_eq!(sim.p(i).ring_id(), None, "host {i} waits for the answers");
        sim.deliver_all();
        assert_eq!(
            sim.p(i).ring_id(),
            Some(ring),
            "host {i} got the ring on connecting"
        );
        sim.alloc(i);
        sim.deliver_all();
        sim.alloc(i);
        assert!(
            sim.p(i).address_of(&gateway()).is_some(),
            "host {i} has space"
        );
    }
    assert_eq!(sim.creators(), vec![n - 1]);
}

/// Booted together, all told about each other, one of them late: nobody creates before the
/// late one is reached, then exactly one ring forms, created by the smallest name.
#[test]
fn hosts_booted_together_form_one_ring_even_with_a_late_starter() {
    for late in 0..3 {
        let told = (0..3)
            .map(|i| (0..3).filter(|j| *j != i).collect())
            .collect();
        let mut sim = Sim::new(told);
        for i in (0..3).filter(|i| *i != late) {
            sim.start(i);
        }
        for a in 0..3 {
            for b in 0..3 {
                sim.link(a, b);
            }
        }
        for _ in 0..5 {
            sim.now += 6 * SEC;
            for i in 0..3 {
                sim.tick(i);
                sim.alloc(i);
            }
            sim.deliver_all();
        }
        assert!(
            sim.creators().is_empty(),
            "nobody creates while {late} is missing"
        );
        let waiting = (0..3).find(|i| *i != late).unwrap();
        let reason = sim.p(waiting).ring_wait_reason().unwrap().to_string();
        assert!(
            reason.contains("1 of 2 initial peers reachable"),
            "{reason}"
        );
        sim.start(late);
        sim.heal();
        assert_eq!(sim.creators(), vec![0], "the smallest name creates");
        assert_eq!(sim.rings().len(), 1);
        let gateways: BTreeSet<_> = (0..3).map(|i| sim.p(i).address_of(&gateway())).collect();
        assert_eq!(
            gateways.len(),
            3,
            "three distinct bridge addresses: {gateways:?}"
        );
        assert!(gateways.iter().all(Option::is_some));
    }
}

/// A router whose initial peer never comes waits, until the operator forces a ring.
#[test]
fn an_unreachable_initial_peer_blocks_until_a_forced_ring() {
    let mut sim = Sim::new(vec![BTreeSet::from([1]), BTreeSet::new()]);
    sim.start(0);
    for _ in 0..10 {
        sim.now += 60 * SEC;
        sim.tick(0);
        sim.alloc(0);
    }
    assert_eq!(sim.p(0).ring_id(), None);
    let now = sim.now;
    let err = sim.p(0).allocate(&gateway(), now).unwrap_err();
    assert!(matches!(err, IpamError::WaitingForRing(_)), "{err}");
    assert_eq!(sim.p(0).status(now).state, "waiting for ring");
    let id = sim.p(0).force_ring(now).unwrap();
    assert_eq!(id.genesis, Sim::pname(0));
    assert!(sim.p(0).allocate(&gateway(), now).is_ok());
    assert_eq!(sim.p(0).status(now).state, "ready");
}

/// A forced ring that meets an older one: the loser's bridge address was also handed out by
/// the winner; the loser moves its bridge to an address of its own, and the duplicate is gone
/// on both sides.
#[test]
fn a_bridge_address_duplicated_by_a_ring_merge_is_moved() {
    let mut sim = Sim::new(vec![BTreeSet::new(), BTreeSet::from([0])]);
    sim.start(0);
    sim.alloc(0);
    sim.now += SEC;
    sim.start(1);
    let now = sim.now;
    sim.p(1).force_ring(now).unwrap();
    sim.alloc(1);
    let gw0 = sim.p(0).address_of(&gateway()).unwrap();
    let gw1 = sim.p(1).address_of(&gateway()).unwrap();
    assert_eq!(gw0, gw1, "both rings hand out the same first address");
    sim.link(0, 1);
    sim.deliver_all();
    assert_eq!(sim.rings().len(), 1, "host 0's older ring wins");
    // Reservations: host 1 learns its bridge address is a duplicate.
    for _ in 0..3 {
        sim.now += 6 * SEC;
        sim.tick(0);
        sim.tick(1);
        sim.deliver_all();
    }
    assert_eq!(sim.p(1).conflicts().len(), 1);
    assert_eq!(sim.p(0).conflicts().len(), 1);
    assert_eq!(
        sim.p(0).reallocate_conflicting(&gateway(), now),
        None,
        "the owner keeps its address"
    );
    let now = sim.now;
    let (old, new) = sim.p(1).reallocate_conflicting(&gateway(), now).unwrap();
    assert_eq!(old, gw1);
    assert!(
        matches!(new, Err(IpamError::WaitingForSpace(_))),
        "host 1 owns nothing in the winning ring: it asks for space ({new:?})"
    );
    sim.sync(1);
    sim.deliver_all();
    let now = sim.now;
    let moved = sim.p(1).allocate(&gateway(), now).unwrap();
    assert_ne!(moved, gw0);
    assert_eq!(sim.p(1).owner_of(moved), Some(Sim::pname(1)));
    sim.sync(1);
    sim.deliver_all();
    assert!(sim.p(0).conflicts().is_empty() && sim.p(1).conflicts().is_empty());
    assert_eq!(sim.p(0).address_of(&gateway()), Some(gw0));
}

#[test]
fn a_query_is_answered_with_the_ring_or_none() {
    let t = Instant::now();
    let config = || IpamConfig::new(RANGE.parse().unwrap());
    let mut a = IpamChannel::new(config(), name(1), 1, t, 1_000);
    a.set_initial_peers(vec![InitialPeer::unreached("x:1", "refused")]);
    let query = wire::encode(&IpamMsg::RingQuery);
    let answer = a.on_unicast(name(2), &query).unwrap();
    assert_eq!(
        answer,
        vec![(
            name(2),
            wire::encode(&IpamMsg::RingAnswer {
                range: RANGE.parse().unwrap(),
                ring: None
            })
        )],
        "no ring, and not allowed to make one"
    );
    // A peer allowed to create creates before answering, so it never says "no ring" while
    // it could make one at any moment.
    let mut lone = IpamChannel::new(config(), name(3), 3, t, 1_000);
    let answer = lone.on_unicast(name(2), &query).unwrap();
    let IpamMsg::RingAnswer {
        ring: Some(ring), ..
    } = crate::ipam::decode_msg(&answer[0].1).unwrap()
    else {
        panic!("expected the ring");
    };
    assert_eq!(Some(ring.ring), lone.ring_id());
    // The asker takes the ring.
    let mut b = IpamChannel::new(config(), name(2), 2, t, 1_000);
    b.set_initial_peers(vec![InitialPeer::reached("x:1", name(3))]);
    b.set_reachable([name(3)]);
    b.on_unicast(name(3), &answer[0].1).unwrap();
    assert_eq!(b.ring_id(), lone.ring_id());
    assert!(
        b.allocate(&gateway(), t).is_err(),
        "b owns nothing yet: asks for space"
    );
    // A peer of another range takes no part: c need not wait for it.
    let mut c = IpamChannel::new(config(), name(4), 4, t, 1_000);
    c.set_initial_peers(vec![InitialPeer::reached("y:1", name(1))]);
    c.set_reachable([name(1)]);
    let foreign = wire::encode(&IpamMsg::RingAnswer {
        range: "10.9.0.0/16".parse().unwrap(),
        ring: None,
    });
    assert!(c.ring_wait_reason().is_some());
    c.on_unicast(name(1), &foreign).unwrap();
    assert_eq!(c.ring_wait_reason(), None);
}

/// A router restarted with its persisted ring uses it at once, its initial peers all down.
#[test]
fn a_restarted_router_uses_its_persisted_ring_at_once() {
    let t = Instant::now();
    let config = || IpamConfig::new(RANGE.parse().unwrap());
    let mut a = IpamChannel::new(config(), name(1), 1, t, 1_000);
    let first = a.allocate(&gateway(), t).unwrap();
    let snapshot = a.snapshot();
    let mut b = IpamChannel::restore(config(), snapshot, 2, t + SEC, 2_000).unwrap();
    b.set_initial_peers(vec![
        InitialPeer::unreached("10.1.0.2:6783", "connection refused"),
        InitialPeer::unreached("10.1.0.3:6783", "handshake timed out"),
    ]);
    assert_eq!(b.ring_wait_reason(), None);
    assert_eq!(b.status(t).state, "ready");
    assert_eq!(b.allocate(&gateway(), t + SEC), Ok(first));
    assert!(b.allocate(&AllocKey::new("pod", "eth0"), t + SEC).is_ok());
}
