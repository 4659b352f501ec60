//! The engine against the recording kernel and fake packet ports: two (or three) engines wired
//! back to back, the wire emulating what the kernel's VXLAN device does with a frame (sent only
//! to a MAC its FDB knows, to that entry's underlay address).

use std::sync::{Arc, Mutex};

use super::*;
use crate::packet::FakeFramePort;
use crate::select::REASON_ESP;
use crate::vxlan::DEFAULT_VNI;
use crate::vxlan::kernel::{KernelCall, RecordingKernel};
use crate::vxlan::plan::{BridgePort, KernelFdb};

const A: PeerId = [0x02, 0, 0, 0, 0, 0x0a];
const B: PeerId = [0x02, 0, 0, 0, 0, 0x0b];
const C: PeerId = [0x02, 0, 0, 0, 0, 0x0c];
const POD_A: Mac = [0x0a, 0x58, 0, 0, 0, 0x0a];
const POD_B: Mac = [0x0a, 0x58, 0, 0, 0, 0x0b];
const POD_C: Mac = [0x0a, 0x58, 0, 0, 0, 0x0c];
const UP: &str = "fast path up: heartbeats both ways on udp/6784";

fn underlay(peer: PeerId) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, peer[5])
}

fn config(local: PeerId) -> VxlanConfig {
    VxlanConfig {
        kind: DatapathKind::Vxlan,
        local,
        bridge: "weft".into(),
        tap: "weft-tap".into(),
        port: 6784,
        vni: DEFAULT_VNI,
        underlay_mtu: 1500,
    }
}

fn policy() -> Policy {
    Policy {
        local_fast: Ok(()),
        encrypted: false,
        esp: false,
        vxlan_port: 6784,
        fast: DatapathKind::Vxlan,
    }
}

struct Host {
    id: PeerId,
    engine: Engine,
    kernel: RecordingKernel,
    send: FakeFramePort,
    recv: FakeFramePort,
    events: Arc<Mutex<Vec<VxlanEvent>>>,
}

impl Host {
    fn new(id: PeerId, kernel: RecordingKernel, now: Instant) -> Host {
        let edge = Box::new(kernel.clone());
        Host::with(config(id), kernel, edge, now)
    }

    /// A host of `config` whose engine drives `edge` (over `kernel`'s state).
    fn with(
        config: VxlanConfig,
        kernel: RecordingKernel,
        edge: Box<dyn VxlanKernel>,
        now: Instant,
    ) -> Host {
        let id = config.local;
        let (send, recv) = (FakeFramePort::new(), FakeFramePort::new());
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let ports = (send.clone(), recv.clone());
        let engine = Engine::new(
            config,
            edge,
            move |_| {
                Ok((
                    Box::new(ports.0) as Box<dyn FramePort>,
                    Box::new(ports.1) as _,
                ))
            },
            Box::new(move |e| sink.lock().unwrap().push(e)),
            now,
        )
        .expect("engine starts");
        Host {
            id,
            engine,
            kernel,
            send,
            recv,
            events,
        }
    }

    fn connect(&mut self, peer: PeerId, conn: u64, policy: Policy, now: Instant) {
        let offer = self.engine.offer();
        self.engine
            .add_connection(peer, conn, underlay(peer), Some(offer), policy, now);
    }

    fn path(&self, peer: PeerId, now: Instant) -> ConnectionPath {
        self.engine
            .paths(now)
            .into_iter()
            .find(|p| p.peer == peer)
            .expect("a connection to the peer")
    }

    fn kind(&self, peer: PeerId, now: Instant) -> DatapathKind {
        self.path(peer, now).datapath
    }

    fn fdb(&self) -> KernelFdb {
        self.kernel.fdb()
    }
}

/// Which frames the underlay lets through, per direction.
type Filter = Box<dyn Fn(PeerId, PeerId, &[u8]) -> bool>;

struct Mesh {
    now: Instant,
    hosts: Vec<Host>,
    filter: Filter,
    /// When a frame last crossed from one host (by its heartbeat MAC) to another.
    delivered: BTreeMap<(Mac, PeerId), Instant>,
}

impl Mesh {
    fn new(ids: &[PeerId]) -> Mesh {
        let t0 = Instant::now();
        Mesh {
            now: t0,
            hosts: ids
                .iter()
                .map(|id| Host::new(*id, RecordingKernel::new(), t0))
                .collect(),
            filter: Box::new(|_, _, _| true),
            delivered: BTreeMap::new(),
        }
    }

    fn host(&mut self, id: PeerId) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.id == id).unwrap()
    }

    fn h(&self, id: PeerId) -> &Host {
        self.hosts.iter().find(|h| h.id == id).unwrap()
    }

    /// Connects every pair with the same policy, and tells each host the others' pod MACs.
    fn full_mesh(&mut self, policy: Policy) {
        let now = self.now;
        let ids: Vec<PeerId> = self.hosts.iter().map(|h| h.id).collect();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                let conn = u64::from(a[5]) << 8 | u64::from(b[5]);
                self.host(*a).connect(*b, conn, policy.clone(), now);
                self.host(*b).connect(*a, conn, policy.clone(), now);
            }
        }
        for h in &mut self.hosts {
            let macs = ids
                .iter()
                .filter(|id| **id != h.id)
                .map(|id| (pod(*id), *id))
                .collect();
            h.engine.set_macs(macs);
            h.engine
                .set_reachable(ids.iter().copied().filter(|id| *id != h.id).collect());
        }
    }

    /// One tick: every engine steps, then the frames they sent cross the emulated underlay.
    fn tick(&mut self) {
        self.now += TICK;
        let now = self.now;
        for h in &mut self.hosts {
            h.engine.step(now);
        }
        let mut deliveries = Vec::new();
        for from in &self.hosts {
            let fdb = from.fdb();
            for frame in from.send.take_sent() {
                let dst: Mac = frame[..6].try_into().unwrap();
                // The VXLAN device sends only to MACs it has an entry for.
                let Some(ip) = fdb.vxlan.get(&dst) else {
                    continue;
                };
                let Some(to) = self.hosts.iter().find(|h| underlay(h.id) == *ip) else {
                    continue;
                };
                if (self.filter)(from.id, to.id, &frame) {
                    deliveries.push((to.id, frame));
                }
            }
        }
        for (to, frame) in deliveries {
            let from: PeerId = frame[6..12].try_into().unwrap();
            self.delivered.insert((from, to), now);
            let host = self.host(to);
            let index = host.engine.device().index;
            host.recv.push_incoming(&frame, index);
        }
    }

    /// Ticks until `done` holds; panics after `limit` of simulated time.
    fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&Mesh) -> bool) -> Duration {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start < limit,
                "{what}: not within {limit:?}; paths: {:#?}",
                self.hosts
                    .iter()
                    .map(|h| (h.id[5], h.engine.paths(self.now)))
                    .collect::<Vec<_>>()
            );
            self.tick();
        }
        self.now - start
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.tick();
        }
    }

    fn all_on(&self, kind: DatapathKind) -> bool {
        self.hosts.iter().all(|h| {
            let paths = h.engine.paths(self.now);
            !paths.is_empty() && paths.iter().all(|p| p.datapath == kind)
        })
    }
}

fn pod(peer: PeerId) -> Mac {
    match peer {
        A => POD_A,
        B => POD_B,
        C => POD_C,
        _ => [0x0a, 0x58, 0, 0, 1, peer[5]],
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn two_engines_converge_on_vxlan_and_program_both_tables() {
    let mut m = Mesh::new(&[A, B]);
    m.full_mesh(policy());
    let took = m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    assert!(took <= secs(3), "took {took:?}");
    let now = m.now;
    let a = m.h(A);
    let path = a.path(B, now);
    assert_eq!(path.reason, UP);
    assert_eq!(path.fast_health, "up");
    assert_eq!(path.underlay, "192.168.0.11:6784".parse().unwrap());
    assert!(path.heartbeats_sent > 0 && path.heartbeats_received > 0);
    // A's kernel: B's pod and B's heartbeat MAC on the VXLAN device, the pod on its port.
    let fdb = a.fdb();
    assert_eq!(fdb.vxlan.get(&POD_B), Some(&underlay(B)));
    assert_eq!(fdb.vxlan.get(&heartbeat_mac(B)), Some(&underlay(B)));
    assert_eq!(fdb.vxlan.len(), 2);
    assert_eq!(fdb.bridge.get(&POD_B), Some(&BridgePort::Vxlan));
    assert_eq!(fdb.bridge.len(), 1);
    assert!(a.kernel.local_macs().contains(&heartbeat_mac(A)));
    let spec = a.kernel.device().unwrap();
    assert_eq!(
        (spec.name.as_str(), spec.port, spec.mtu),
        ("weft-vxlan", 6784, 1450)
    );
    assert_eq!(
        *a.events.lock().unwrap(),
        vec![VxlanEvent::Selected {
            peer: B,
            conn: 0x0a0b,
            kind: DatapathKind::Vxlan,
            reason: UP.into()
        }]
    );
    let report = a.engine.report(now);
    assert_eq!(
        (report.device.as_str(), report.port, report.vni, report.mtu),
        ("weft-vxlan", 6784, DEFAULT_VNI, 1450)
    );
    assert_eq!(
        (report.fdb_vxlan, report.fdb_bridge, report.fdb_errors),
        (2, 1, 0)
    );
    assert!(report.fdb_ops >= 3);
    assert_eq!(report.heartbeats_rejected, 0);
    assert!(!report.adopting);
}

#[test]
fn a_dead_direction_moves_both_ends_to_the_sleeve_and_back_after_the_hold_down() {
    let mut m = Mesh::new(&[A, B]);
    m.full_mesh(policy());
    m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    m.run(secs(10));

    // A's VXLAN packets no longer reach B (a firewall on B dropping udp/6784 from A).
    m.filter = Box::new(|from, _, _| from != A);
    let took = m.until(secs(6), "both on the sleeve", |m| {
        m.all_on(DatapathKind::Sleeve)
    });
    assert!(took <= secs(5), "fell back after {took:?}");
    let now = m.now;
    let b_reason = m.h(B).path(A, now).reason;
    assert!(
        b_reason.starts_with("fast path: no heartbeat for ")
            && b_reason.ends_with(" s on udp/6784"),
        "{b_reason}"
    );
    let a_path = m.h(A).path(B, now);
    assert_eq!(
        a_path.reason,
        "fast path: we hear the peer but it does not hear us on udp/6784"
    );
    assert_eq!(a_path.fast_health, "down");
    assert_eq!(a_path.transitions, 2);
    // The pod MAC goes through the TAP and leaves the VXLAN device; heartbeats keep probing.
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.bridge.get(&POD_B), Some(&BridgePort::Tap));
    assert_eq!(fdb.vxlan.get(&POD_B), None);
    assert_eq!(fdb.vxlan.get(&heartbeat_mac(B)), Some(&underlay(B)));
    let events = m.h(B).events.lock().unwrap().clone();
    assert!(
        matches!(
            events.last(),
            Some(VxlanEvent::Selected { kind: DatapathKind::Sleeve, reason, .. })
                if reason.starts_with("fast path: no heartbeat for ")
        ),
        "{events:?}"
    );

    // Works again: back on vxlan, but only after the hold-down.
    m.filter = Box::new(|_, _, _| true);
    m.until(secs(3), "holding down", |m| {
        m.h(A).path(B, m.now).reason == "fast path: up again, holding down for 5 s"
    });
    let took = m.until(secs(10), "back on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    assert!(took >= secs(4), "returned after only {took:?}");
    assert_eq!(m.h(A).fdb().bridge.get(&POD_B), Some(&BridgePort::Vxlan));
    assert_eq!(m.h(A).path(B, m.now).transitions, 3);
}

#[test]
fn fdb_entries_follow_mac_moves_and_each_owners_path() {
    let mut m = Mesh::new(&[A, B, C]);
    m.full_mesh(policy());
    // C's fast path to A is blocked both ways: A reaches C's pods through the sleeve.
    m.filter = Box::new(|from, to, _| !matches!((from, to), (A, C) | (C, A)));
    m.until(secs(10), "A-B on vxlan, A-C on the sleeve", |m| {
        m.h(A).kind(B, m.now) == DatapathKind::Vxlan
            && m.h(A).kind(C, m.now) == DatapathKind::Sleeve
            && !m.h(A).path(C, m.now).reason.contains("waiting")
    });
    m.tick();
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.bridge.get(&POD_B), Some(&BridgePort::Vxlan));
    assert_eq!(fdb.bridge.get(&POD_C), Some(&BridgePort::Tap));
    assert_eq!(fdb.vxlan.get(&POD_C), None);

    // The pod on C moves to B: A points it at B's underlay, through the VXLAN port.
    let moved = BTreeMap::from([(POD_B, B), (POD_C, B)]);
    m.host(A).engine.set_macs(moved);
    m.tick();
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.vxlan.get(&POD_C), Some(&underlay(B)));
    assert_eq!(fdb.bridge.get(&POD_C), Some(&BridgePort::Vxlan));

    // And back to C; then it expires: gone from both tables.
    m.host(A)
        .engine
        .set_macs(BTreeMap::from([(POD_B, B), (POD_C, C)]));
    m.tick();
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.vxlan.get(&POD_C), None);
    assert_eq!(fdb.bridge.get(&POD_C), Some(&BridgePort::Tap));
    m.host(A).engine.set_macs(BTreeMap::from([(POD_B, B)]));
    m.tick();
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.bridge.get(&POD_C), None);
    assert_eq!(fdb.bridge.len(), 1);
}

#[test]
fn with_a_password_nothing_is_probed_and_nothing_goes_fast() {
    let mut m = Mesh::new(&[A, B]);
    m.full_mesh(Policy {
        encrypted: true,
        ..policy()
    });
    m.run(secs(20));
    let now = m.now;
    for (h, peer) in [(m.h(A), B), (m.h(B), A)] {
        let path = h.path(peer, now);
        assert_eq!(path.datapath, DatapathKind::Sleeve);
        assert_eq!(path.reason, REASON_ESP);
        assert_eq!(path.fast_health, "off");
        assert_eq!((path.heartbeats_sent, path.transitions), (0, 0));
        assert!(h.send.sent().is_empty(), "no heartbeat sent");
        let fdb = h.fdb();
        assert!(fdb.vxlan.is_empty(), "{fdb:?}");
        assert!(
            fdb.bridge.values().all(|p| *p == BridgePort::Tap),
            "{fdb:?}"
        );
        assert!(h.events.lock().unwrap().is_empty());
    }
}

#[test]
fn a_peer_without_the_fast_path_or_another_port_is_sleeve_with_the_reason() {
    let t = Instant::now();
    let mut a = Host::new(A, RecordingKernel::new(), t);
    a.engine
        .add_connection(B, 1, underlay(B), None, policy(), t);
    let other = VxlanOffer {
        port: 4789,
        vni: DEFAULT_VNI,
    };
    a.engine
        .add_connection(C, 2, underlay(C), Some(other), policy(), t);
    a.engine.step(t + TICK);
    assert_eq!(a.path(B, t).reason, "peer offers no fast datapath");
    assert!(
        a.path(C, t).reason.contains("the peer's VXLAN is udp/4789"),
        "{}",
        a.path(C, t).reason
    );
    assert!(a.send.sent().is_empty());
}

#[test]
fn a_restarted_engine_adopts_the_kernel_entries_until_it_knows_better() {
    let kernel = RecordingKernel::new();
    let spec = config(A).device_spec().unwrap();
    let left = KernelFdb {
        vxlan: BTreeMap::from([(POD_B, underlay(B)), (heartbeat_mac(B), underlay(B))]),
        bridge: BTreeMap::from([(POD_B, BridgePort::Vxlan), (POD_C, BridgePort::Tap)]),
    };
    kernel.preset(spec, left.clone());
    let t = Instant::now();
    let mut a = Host::new(A, kernel, t);
    assert!(a.engine.device().adopted);
    a.connect(B, 1, policy(), t);
    // No MAC table yet, the connection still confirming: everything stays.
    for i in 1..=20 {
        a.engine.step(t + TICK * i);
    }
    assert_eq!(a.fdb(), left);
    assert!(a.engine.report(t + TICK * 20).adopting);
    // The MAC table arrives (C is gone): B's entries stay while its connection confirms, and
    // C's, unknown to the table now, go.
    a.engine.set_macs(BTreeMap::from([(POD_B, B)]));
    a.engine.step(t + TICK * 21);
    let fdb = a.fdb();
    assert_eq!(fdb.vxlan.get(&POD_B), Some(&underlay(B)));
    assert_eq!(fdb.bridge.get(&POD_B), Some(&BridgePort::Vxlan));
    assert_eq!(fdb.bridge.get(&POD_C), None);
    assert!(!a.engine.report(t + TICK * 21).adopting);
}

#[test]
fn adoption_ends_after_the_timeout_even_without_a_mac_table() {
    let kernel = RecordingKernel::new();
    let left = KernelFdb {
        vxlan: BTreeMap::from([(POD_B, underlay(B))]),
        bridge: BTreeMap::from([(POD_B, BridgePort::Vxlan)]),
    };
    kernel.preset(config(A).device_spec().unwrap(), left.clone());
    let t = Instant::now();
    let mut a = Host::new(A, kernel, t);
    a.engine.step(t + secs(59));
    assert_eq!(a.fdb(), left);
    a.engine.step(t + secs(61));
    assert_eq!(a.fdb(), KernelFdb::default());
}

#[test]
fn an_unreachable_peer_keeps_its_entries_and_a_reachable_one_goes_to_the_sleeve() {
    let t = Instant::now();
    let mut a = Host::new(A, RecordingKernel::new(), t);
    a.engine.set_macs(BTreeMap::from([(POD_B, B), (POD_C, C)]));
    a.engine.set_reachable(vec![C]);
    a.engine.step(t);
    let fdb = a.fdb();
    assert_eq!(fdb.bridge.get(&POD_C), Some(&BridgePort::Tap));
    assert_eq!(fdb.bridge.get(&POD_B), None, "B unreachable: left as it is");
}

#[test]
fn failed_fdb_steps_are_counted_and_repaired() {
    let t = Instant::now();
    let mut a = Host::new(A, RecordingKernel::new(), t);
    a.engine.set_macs(BTreeMap::from([(POD_C, C)]));
    a.engine.set_reachable(vec![C]);
    a.kernel.fail_next_ops(1, libc::EPERM);
    a.engine.step(t);
    let report = a.engine.report(t);
    assert_eq!(report.fdb_errors, 1);
    assert!(
        report.last_error.as_deref().unwrap().contains("bridge set"),
        "{report:?}"
    );
    assert_eq!(a.fdb().bridge.get(&POD_C), None);
    // Nothing changed since: retried on the repair interval, not every tick.
    a.engine.step(t + TICK);
    assert_eq!(a.fdb().bridge.get(&POD_C), None);
    a.engine.step(t + REPAIR_INTERVAL);
    assert_eq!(a.fdb().bridge.get(&POD_C), Some(&BridgePort::Tap));
    // Drift (someone deleted the entry) is repaired too.
    let mut k = a.kernel.clone();
    k.apply("weft-tap", &[FdbOp::BridgeDel { mac: POD_C }])
        .unwrap();
    a.engine.step(t + REPAIR_INTERVAL * 2);
    assert_eq!(a.fdb().bridge.get(&POD_C), Some(&BridgePort::Tap));
    assert_eq!(a.engine.report(t).fdb_errors, 1);
}

#[test]
fn stray_frames_are_rejected_and_counted() {
    let mut m = Mesh::new(&[A, B]);
    m.full_mesh(policy());
    m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    let now = m.now;
    let mut beat = [0u8; 60];
    let b = fastbeat::Beat {
        sender: B,
        receiver: A,
        conn: 0x0a0b,
        seq: 1,
        echo: 0,
        full: false,
        sender_ok: true,
    };
    fastbeat::encode(&b, 60, &mut beat).unwrap();
    let a = m.host(A);
    let index = a.engine.device().index;
    a.recv.push_incoming(&beat, index + 1); // came in on another port
    a.recv.push_incoming(&beat, index); // an old sequence number
    a.recv.push_incoming(&beat[..30], index); // truncated
    let other = fastbeat::Beat { conn: 9, ..b };
    fastbeat::encode(&other, 60, &mut beat).unwrap();
    a.recv.push_incoming(&beat, index); // not our connection
    let before = a.engine.report(now).heartbeats_rejected;
    a.engine.step(now + TICK);
    assert_eq!(a.engine.report(now).heartbeats_rejected, before + 4);
}

#[test]
fn a_new_connection_replaces_the_old_one_of_the_same_peer() {
    let mut m = Mesh::new(&[A, B]);
    m.full_mesh(policy());
    m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    let now = m.now;
    m.host(A).connect(B, 77, policy(), now);
    m.host(B).connect(A, 77, policy(), now);
    // Removing the old one changes nothing.
    m.host(A).engine.remove_connection(B, 0x0a0b, now);
    let paths = m.h(A).engine.paths(now);
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].conn, 77);
    m.until(secs(5), "the new connection on vxlan", |m| {
        m.all_on(DatapathKind::Vxlan)
    });
    let now = m.now;
    m.host(A).engine.remove_connection(B, 77, now);
    assert!(m.h(A).engine.paths(m.now).is_empty());
}

#[test]
fn a_closed_connection_keeps_its_entries_through_the_grace_then_follows_reachability() {
    let mut m = Mesh::new(&[A, B, C]);
    m.full_mesh(policy());
    m.until(secs(5), "all on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    m.tick();
    let before = m.h(A).fdb();
    assert_eq!(before.bridge.get(&POD_C), Some(&BridgePort::Vxlan));
    // C's router dies: A's connection to it closes while the routes still say C is reachable
    // (the topology updates have not arrived yet).
    let now = m.now;
    let conn = u64::from(A[5]) << 8 | u64::from(C[5]);
    m.host(A).engine.remove_connection(C, conn, now);
    m.filter = Box::new(|from, to, _| from != C && to != C);
    m.run(CLOSE_GRACE - secs(1));
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.bridge.get(&POD_C), Some(&BridgePort::Vxlan), "{fdb:?}");
    assert_eq!(fdb.vxlan.get(&POD_C), Some(&underlay(C)));
    // Then C is unreachable: its entries stay, so traffic to its host goes on in the kernel.
    m.host(A).engine.set_reachable(vec![B]);
    m.run(secs(2));
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.vxlan.get(&POD_C), Some(&underlay(C)), "{fdb:?}");
    // Reachable again through B (a relay) without a connection of its own: the sleeve.
    m.host(A).engine.set_reachable(vec![B, C]);
    m.run(secs(1));
    let fdb = m.h(A).fdb();
    assert_eq!(fdb.bridge.get(&POD_C), Some(&BridgePort::Tap), "{fdb:?}");
    assert_eq!(fdb.vxlan.get(&POD_C), None);
}

#[test]
fn the_thread_sends_heartbeats_and_stops_on_drop() {
    let kernel = RecordingKernel::new();
    let send = FakeFramePort::new();
    let ports = (send.clone(), FakeFramePort::new());
    let engine = VxlanEngine::start_with(
        config(A),
        Box::new(kernel.clone()),
        move |_| {
            Ok((
                Box::new(ports.0) as Box<dyn FramePort>,
                Box::new(ports.1) as _,
            ))
        },
        Box::new(|_| {}),
    )
    .unwrap();
    assert_eq!(
        engine.offer(),
        VxlanOffer {
            port: 6784,
            vni: DEFAULT_VNI
        }
    );
    engine.add_connection(B, 1, underlay(B), Some(engine.offer()), policy());
    let deadline = Instant::now() + secs(10);
    while engine.report().heartbeats_sent == 0 {
        assert!(Instant::now() < deadline, "no heartbeat sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!send.sent().is_empty());
    assert_eq!(
        kernel.fdb().vxlan.get(&heartbeat_mac(B)),
        Some(&underlay(B))
    );
    assert_eq!(engine.paths().len(), 1);
    drop(engine);
}

mod convergence {
    use std::cell::Cell;
    use std::rc::Rc;

    use proptest::prelude::*;

    use super::*;
    use crate::vxlan::fastbeat::{ECHO_TIMEOUT, HEAR_TIMEOUT};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random loss per direction, changing every second (0: clean, 1: dead, 2: each frame
        /// lost with probability 1/2): a connection is on vxlan only while frames recently
        /// crossed both ways, the FDB always follows the choice, and after a clean stretch as
        /// long as the standby probing interval, confirmation and the hold-down, both ends are
        /// on vxlan.
        #[test]
        fn both_ends_use_vxlan_only_while_it_works_and_whenever_it_has_worked_for_long(
            chaos_ab in prop::collection::vec(prop_oneof![3 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)], 0..50),
            chaos_ba in prop::collection::vec(prop_oneof![3 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)], 0..50),
            coins in prop::collection::vec(any::<bool>(), 256),
        ) {
            let mut m = Mesh::new(&[A, B]);
            m.full_mesh(policy());
            let coin = Rc::new(Cell::new(0usize));
            // The chaos, then 16 s of a clean path both ways.
            let chaos = chaos_ab.len().max(chaos_ba.len());
            let clean_from = chaos;
            let mode = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
            let ab: Vec<u8> = (0..chaos + 16).map(|i| if i < clean_from { mode(&chaos_ab, i) } else { 0 }).collect();
            let ba: Vec<u8> = (0..chaos + 16).map(|i| if i < clean_from { mode(&chaos_ba, i) } else { 0 }).collect();
            for tick in 0..ab.len() * 10 {
                let (wab, wba) = (ab[tick / 10], ba[tick / 10]);
                let (coin, coins) = (Rc::clone(&coin), coins.clone());
                m.filter = Box::new(move |from, _, _| {
                    let mode = if from == A { wab } else { wba };
                    let i = coin.get();
                    coin.set(i + 1);
                    mode == 0 || (mode == 2 && coins[i % coins.len()])
                });
                m.tick();
                let now = m.now;
                for (me, peer) in [(A, B), (B, A)] {
                    let path = m.h(me).path(peer, now);
                    let fdb = m.h(me).fdb();
                    if path.datapath == DatapathKind::Vxlan {
                        let heard = m.delivered.get(&(heartbeat_mac(peer), me));
                        let echoed = m.delivered.get(&(heartbeat_mac(me), peer));
                        prop_assert!(heard.is_some_and(|at| now - *at <= HEAR_TIMEOUT + TICK));
                        prop_assert!(echoed.is_some_and(|at| now - *at <= ECHO_TIMEOUT + TICK));
                        prop_assert_eq!(fdb.bridge.get(&pod(peer)), Some(&BridgePort::Vxlan));
                        prop_assert_eq!(fdb.vxlan.get(&pod(peer)), Some(&underlay(peer)));
                    } else if path.transitions > 0 {
                        prop_assert_eq!(fdb.bridge.get(&pod(peer)), Some(&BridgePort::Tap));
                        prop_assert_eq!(fdb.vxlan.get(&pod(peer)), None);
                    }
                }
            }
            // Clean for 16 s: beyond a standby's 5 s probing, confirmation and the 5 s hold-down.
            let now = m.now;
            prop_assert!(m.all_on(DatapathKind::Vxlan), "after the chaos: {:?} / {:?}",
                m.h(A).path(B, now), m.h(B).path(A, now));
        }
    }
}

/// Each group flow put: the peers asked for, and the sleeve's set then.
type Puts = Arc<Mutex<Vec<(BTreeSet<Ipv4Addr>, BTreeSet<PeerId>)>>>;

/// The recording kernel, noting at each group flow put what the sleeve's set was.
struct GroupSpy {
    inner: RecordingKernel,
    sleeve: FastGroupPeers,
    puts: Puts,
}

impl VxlanKernel for GroupSpy {
    fn ensure_device(&mut self, spec: &DeviceSpec) -> Result<DeviceState, KernelError> {
        self.inner.ensure_device(spec)
    }
    fn read_fdb(&mut self, tap: &str) -> Result<KernelFdb, KernelError> {
        self.inner.read_fdb(tap)
    }
    fn apply(&mut self, tap: &str, ops: &[FdbOp]) -> Result<(), crate::vxlan::kernel::ApplyErrors> {
        self.inner.apply(tap, ops)
    }
    fn set_local_heartbeat_mac(&mut self, mac: Mac) -> Result<(), KernelError> {
        self.inner.set_local_heartbeat_mac(mac)
    }
    fn isolate(&mut self, port: &str) -> Result<(), KernelError> {
        self.inner.isolate(port)
    }
    fn remove_device(&mut self, spec: &DeviceSpec) -> Result<bool, KernelError> {
        self.inner.remove_device(spec)
    }
    fn set_group_dsts(&mut self, dsts: &BTreeSet<Ipv4Addr>) -> Result<bool, KernelError> {
        let before = self.inner.group().unwrap_or_default();
        let result = self.inner.set_group_dsts(dsts);
        let after = self.inner.group().unwrap_or_default();
        // The sleeve skips only peers the kernel serves before and after the put.
        let sleeve = self.sleeve.read().clone();
        for peer in &sleeve {
            assert!(
                before.contains(&underlay(*peer)) && after.contains(&underlay(*peer)),
                "the sleeve skips {peer:?} across a put from {before:?} to {after:?}"
            );
        }
        self.puts.lock().unwrap().push((dsts.clone(), sleeve));
        result
    }
}

/// A mesh of A (Open vSwitch, its kernel spied on), B and C (VXLAN devices).
fn ovs_mesh() -> (Mesh, FastGroupPeers, Puts) {
    let mut m = Mesh::new(&[A, B, C]);
    let kernel = RecordingKernel::new();
    let sleeve = FastGroupPeers::default();
    let puts = Arc::default();
    let spy = GroupSpy {
        inner: kernel.clone(),
        sleeve: sleeve.clone(),
        puts: Arc::clone(&puts),
    };
    let config = VxlanConfig {
        kind: DatapathKind::Ovs,
        ..config(A)
    };
    m.hosts[0] = Host::with(config, kernel, Box::new(spy), m.now);
    m.hosts[0].engine.set_group_out(sleeve.clone());
    (m, sleeve, puts)
}

#[test]
fn an_ovs_host_replicates_group_frames_to_its_fast_leaves_and_tells_the_sleeve_after() {
    let (mut m, sleeve, puts) = ovs_mesh();
    m.full_mesh(policy());
    m.tick();
    // No candidates yet: a drop flow, the sleeve skips nobody.
    assert_eq!(m.h(A).kernel.group(), Some(BTreeSet::new()));
    assert!(sleeve.read().is_empty());
    m.host(A)
        .engine
        .set_group_candidates(BTreeSet::from([B, C]));
    m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    m.tick();
    let both = BTreeSet::from([underlay(B), underlay(C)]);
    assert_eq!(m.h(A).kernel.group(), Some(both.clone()));
    assert_eq!(*sleeve.read(), BTreeSet::from([B, C]));
    assert_eq!(
        m.h(A).engine.report(m.now).group_dsts,
        both.iter().copied().collect::<Vec<_>>()
    );
    // VXLAN-device hosts never replicate.
    for h in [B, C] {
        assert!(
            !m.h(h)
                .kernel
                .calls()
                .iter()
                .any(|c| matches!(c, KernelCall::SetGroupDsts(_))),
            "{h:?}"
        );
    }

    // C stops being a leaf (the routes changed): the sleeve sends it our frames again first.
    m.host(A).engine.set_group_candidates(BTreeSet::from([B]));
    m.tick();
    assert_eq!(m.h(A).kernel.group(), Some(BTreeSet::from([underlay(B)])));
    assert_eq!(*sleeve.read(), BTreeSet::from([B]));

    // B's fast path dies: B leaves the group flow with its connection.
    m.filter = Box::new(|from, to, _| !(from == A && to == B));
    m.until(secs(6), "A to B on the sleeve", |m| {
        m.h(A).kind(B, m.now) == DatapathKind::Sleeve
    });
    m.tick();
    assert_eq!(m.h(A).kernel.group(), Some(BTreeSet::new()));
    assert!(sleeve.read().is_empty());
    // Every put above was checked by the spy: the sleeve never skipped a peer the kernel did
    // not serve on both sides of the put.
    assert!(puts.lock().unwrap().len() >= 4);
}

#[test]
fn a_refused_group_flow_leaves_the_sleeve_sending_and_is_retried() {
    let (mut m, sleeve, _) = ovs_mesh();
    m.full_mesh(policy());
    m.host(A)
        .engine
        .set_group_candidates(BTreeSet::from([B, C]));
    m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    // Settled: then the candidates change while the kernel refuses.
    m.run(REPAIR_INTERVAL);
    m.host(A).engine.set_group_candidates(BTreeSet::from([B]));
    m.h(A).kernel.fail_next_ops(1, libc::ENOMEM);
    m.tick();
    // The kernel still sends to both; the sleeve skips only B (wanted and served).
    assert_eq!(
        m.h(A).kernel.group(),
        Some(BTreeSet::from([underlay(B), underlay(C)]))
    );
    assert_eq!(*sleeve.read(), BTreeSet::from([B]));
    let report = m.h(A).engine.report(m.now);
    assert!(
        report
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("putting the group flow")),
        "{report:?}"
    );
    m.tick();
    assert_eq!(m.h(A).kernel.group(), Some(BTreeSet::from([underlay(B)])));
}

#[test]
fn the_group_flow_is_repaired_and_a_connection_still_confirming_is_no_fast_leaf() {
    let (mut m, sleeve, puts) = ovs_mesh();
    m.full_mesh(policy());
    m.host(A)
        .engine
        .set_group_candidates(BTreeSet::from([B, C]));
    m.until(secs(5), "both on vxlan", |m| m.all_on(DatapathKind::Vxlan));
    m.tick();
    let settled = puts.lock().unwrap().len();
    m.run(REPAIR_INTERVAL + TICK);
    // Put again on the repair interval (the kernel edge makes that a no-op when it holds it).
    assert!(puts.lock().unwrap().len() > settled);
    assert_eq!(*sleeve.read(), BTreeSet::from([B, C]));
    // C reconnects: until its new connection is confirmed fast, the sleeve serves it.
    let now = m.now;
    let offer = m.h(A).engine.offer();
    m.host(A)
        .engine
        .add_connection(C, 99, underlay(C), Some(offer), policy(), now);
    assert_eq!(
        m.h(A).engine.group_wanted(),
        BTreeMap::from([(B, underlay(B))])
    );
    m.tick();
    assert_eq!(*sleeve.read(), BTreeSet::from([B]));
}
