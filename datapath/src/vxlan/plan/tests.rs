use super::*;
use proptest::prelude::*;

const A: PeerId = [0x02, 0, 0, 0, 0, 0xa];
const B: PeerId = [0x02, 0, 0, 0, 0, 0xb];
const POD1: Mac = [0x0a, 0x58, 0, 0, 0, 1];
const POD2: Mac = [0x0a, 0x58, 0, 0, 0, 2];
const IP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

fn desired(macs: &[(Mac, PeerId)], paths: &[(PeerId, PeerPath)]) -> Desired {
    Desired {
        remote_macs: macs.iter().copied().collect(),
        paths: paths.iter().copied().collect(),
        ..Desired::default()
    }
}

fn applied(ops: &[FdbOp], mut fdb: KernelFdb) -> KernelFdb {
    apply(ops, &mut fdb);
    fdb
}

#[test]
fn heartbeat_macs_are_locally_administered_unicast_and_per_peer() {
    for peer in [A, B, [0xff; 6], [0; 6]] {
        let mac = heartbeat_mac(peer);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac[1..], peer[1..]);
    }
    assert_ne!(heartbeat_mac(A), heartbeat_mac(B));
}

#[test]
fn nothing_known_nothing_held_nothing_to_do() {
    assert_eq!(plan(&Desired::default(), &KernelFdb::default()), vec![]);
}

#[test]
fn a_fast_peer_gets_vxlan_entries_before_the_bridge_points_at_them() {
    let mut d = desired(
        &[(POD1, A), (POD2, B)],
        &[(A, PeerPath::Fast(IP_A)), (B, PeerPath::Sleeve)],
    );
    d.heartbeat_peers.insert(A, IP_A);
    d.heartbeat_peers.insert(B, IP_B);
    let ops = plan(&d, &KernelFdb::default());
    let (hb_a, hb_b) = (heartbeat_mac(A), heartbeat_mac(B));
    let mut vxlan_sets = vec![
        FdbOp::VxlanSet {
            mac: POD1,
            dst: IP_A,
        },
        FdbOp::VxlanSet {
            mac: hb_a,
            dst: IP_A,
        },
        FdbOp::VxlanSet {
            mac: hb_b,
            dst: IP_B,
        },
    ];
    vxlan_sets.sort_by_key(|op| match op {
        FdbOp::VxlanSet { mac, .. } => *mac,
        _ => unreachable!(),
    });
    let mut want = vxlan_sets;
    want.extend([
        FdbOp::BridgeSet {
            mac: POD1,
            port: BridgePort::Vxlan,
        },
        FdbOp::BridgeSet {
            mac: POD2,
            port: BridgePort::Tap,
        },
    ]);
    assert_eq!(ops, want);
    let fdb = applied(&ops, KernelFdb::default());
    assert_eq!(plan(&d, &fdb), vec![], "converged");
}

#[test]
fn a_peer_leaving_the_fast_path_is_pointed_at_the_tap_before_its_entry_goes() {
    let fast = desired(&[(POD1, A)], &[(A, PeerPath::Fast(IP_A))]);
    let held = applied(&plan(&fast, &KernelFdb::default()), KernelFdb::default());
    let sleeve = desired(&[(POD1, A)], &[(A, PeerPath::Sleeve)]);
    assert_eq!(
        plan(&sleeve, &held),
        vec![
            FdbOp::BridgeSet {
                mac: POD1,
                port: BridgePort::Tap
            },
            FdbOp::VxlanDel { mac: POD1 },
        ]
    );
    // A peer missing from the paths is on the sleeve too.
    assert_eq!(
        plan(&desired(&[(POD1, A)], &[]), &held),
        plan(&sleeve, &held)
    );
}

#[test]
fn a_mac_moving_between_fast_peers_is_repointed_in_place() {
    let on_a = desired(
        &[(POD1, A)],
        &[(A, PeerPath::Fast(IP_A)), (B, PeerPath::Fast(IP_B))],
    );
    let held = applied(&plan(&on_a, &KernelFdb::default()), KernelFdb::default());
    let on_b = desired(
        &[(POD1, B)],
        &[(A, PeerPath::Fast(IP_A)), (B, PeerPath::Fast(IP_B))],
    );
    assert_eq!(
        plan(&on_b, &held),
        vec![FdbOp::VxlanSet {
            mac: POD1,
            dst: IP_B
        }]
    );
}

#[test]
fn forgotten_macs_are_removed_bridge_first() {
    let d = desired(&[(POD1, A)], &[(A, PeerPath::Fast(IP_A))]);
    let held = applied(&plan(&d, &KernelFdb::default()), KernelFdb::default());
    assert_eq!(
        plan(&Desired::default(), &held),
        vec![
            FdbOp::BridgeDel { mac: POD1 },
            FdbOp::VxlanDel { mac: POD1 }
        ]
    );
}

#[test]
fn keep_leaves_a_peers_entries_exactly_as_the_kernel_has_them() {
    let mut held = KernelFdb::default();
    held.vxlan.insert(POD1, IP_B); // even a stale one
    held.bridge.insert(POD1, BridgePort::Vxlan);
    held.vxlan.insert(heartbeat_mac(A), IP_A);
    // POD2 is A's too but the kernel has nothing for it: nothing is added.
    let d = desired(&[(POD1, A), (POD2, A)], &[(A, PeerPath::Keep)]);
    assert_eq!(plan(&d, &held), vec![]);
    // Once A is heartbeated again, its heartbeat entry is managed, the rest still kept.
    let mut d = d;
    d.heartbeat_peers.insert(A, IP_B);
    assert_eq!(
        plan(&d, &held),
        vec![FdbOp::VxlanSet {
            mac: heartbeat_mac(A),
            dst: IP_B
        }]
    );
}

#[test]
fn adopting_removes_nothing_but_still_sets() {
    let mut held = KernelFdb::default();
    held.vxlan.insert(POD2, IP_B);
    held.bridge.insert(POD2, BridgePort::Vxlan);
    held.vxlan.insert(heartbeat_mac(B), IP_B);
    let mut d = desired(&[(POD1, A)], &[(A, PeerPath::Fast(IP_A))]);
    d.adopting = true;
    assert_eq!(
        plan(&d, &held),
        vec![
            FdbOp::VxlanSet {
                mac: POD1,
                dst: IP_A
            },
            FdbOp::BridgeSet {
                mac: POD1,
                port: BridgePort::Vxlan
            },
        ]
    );
    d.adopting = false;
    let ops = plan(&d, &held);
    assert!(ops.contains(&FdbOp::BridgeDel { mac: POD2 }));
    assert!(ops.contains(&FdbOp::VxlanDel { mac: POD2 }));
    assert!(ops.contains(&FdbOp::VxlanDel {
        mac: heartbeat_mac(B)
    }));
}

// Small pools, so that random tables overlap a lot.
fn peer(i: u8) -> PeerId {
    [0x02, 0, 0, 0, 0, i]
}

fn arb_peer() -> impl Strategy<Value = PeerId> {
    (1u8..=5).prop_map(peer)
}

fn arb_pod_mac() -> impl Strategy<Value = Mac> {
    (0u8..12).prop_map(|i| [0x0a, 0x58, 0, 0, 0, i])
}

/// A pod MAC or the heartbeat MAC of a pool peer (or of one that left: 6..=7).
fn arb_any_mac() -> impl Strategy<Value = Mac> {
    prop_oneof![
        3 => arb_pod_mac(),
        1 => (1u8..=7).prop_map(|i| heartbeat_mac(peer(i))),
    ]
}

fn arb_ip() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..=6).prop_map(|i| Ipv4Addr::new(192, 0, 2, i))
}

fn arb_path() -> impl Strategy<Value = PeerPath> {
    prop_oneof![
        arb_ip().prop_map(PeerPath::Fast),
        Just(PeerPath::Sleeve),
        Just(PeerPath::Keep),
    ]
}

fn arb_desired() -> impl Strategy<Value = Desired> {
    (
        prop::collection::btree_map(arb_pod_mac(), arb_peer(), 0..12),
        prop::collection::btree_map(arb_peer(), arb_path(), 0..5),
        prop::collection::btree_map(arb_peer(), arb_ip(), 0..5),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(remote_macs, paths, heartbeat_peers, adopting)| Desired {
            remote_macs,
            paths,
            heartbeat_peers,
            adopting,
        })
}

fn arb_port() -> impl Strategy<Value = BridgePort> {
    prop_oneof![Just(BridgePort::Vxlan), Just(BridgePort::Tap)]
}

fn arb_kernel() -> impl Strategy<Value = KernelFdb> {
    (
        prop::collection::btree_map(arb_any_mac(), arb_ip(), 0..14),
        prop::collection::btree_map(arb_any_mac(), arb_port(), 0..14),
    )
        .prop_map(|(vxlan, bridge)| KernelFdb { vxlan, bridge })
}

/// A kernel state in which no bridge entry points at the VXLAN port without a VXLAN entry.
fn arb_consistent_kernel() -> impl Strategy<Value = KernelFdb> {
    arb_kernel().prop_map(|mut fdb| {
        for (mac, port) in fdb.bridge.iter_mut() {
            if *port == BridgePort::Vxlan && !fdb.vxlan.contains_key(mac) {
                *port = BridgePort::Tap;
            }
        }
        fdb
    })
}

fn consistent(fdb: &KernelFdb) -> bool {
    fdb.bridge
        .iter()
        .all(|(mac, port)| *port == BridgePort::Tap || fdb.vxlan.contains_key(mac))
}

fn group(op: &FdbOp) -> u8 {
    match op {
        FdbOp::VxlanSet { .. } => 0,
        FdbOp::BridgeSet { .. } => 1,
        FdbOp::BridgeDel { .. } => 2,
        FdbOp::VxlanDel { .. } => 3,
    }
}

fn mac_of(op: &FdbOp) -> Mac {
    match *op {
        FdbOp::VxlanSet { mac, .. }
        | FdbOp::VxlanDel { mac }
        | FdbOp::BridgeSet { mac, .. }
        | FdbOp::BridgeDel { mac } => mac,
    }
}

proptest! {
    #[test]
    fn planning_again_after_applying_yields_nothing(d in arb_desired(), k in arb_kernel()) {
        let ops = plan(&d, &k);
        let after = applied(&ops, k.clone());
        prop_assert_eq!(plan(&d, &after), vec![]);
        // Every op changes something (no redundant steps), each MAC at most once per table.
        prop_assert!(ops.iter().all(|op| applied(&[*op], k.clone()) != k), "{ops:?}");
        prop_assert!(ops.windows(2).all(|w| group(&w[0]) < group(&w[1])
            || (group(&w[0]) == group(&w[1]) && mac_of(&w[0]) < mac_of(&w[1]))), "{ops:?}");
    }

    #[test]
    fn after_applying_every_managed_mac_follows_its_owners_path(
        d in arb_desired(),
        k in arb_kernel(),
    ) {
        let after = applied(&plan(&d, &k), k.clone());
        for (mac, owner) in &d.remote_macs {
            match d.path(owner) {
                PeerPath::Fast(ip) => {
                    prop_assert_eq!(after.bridge.get(mac), Some(&BridgePort::Vxlan));
                    prop_assert_eq!(after.vxlan.get(mac), Some(&ip));
                }
                PeerPath::Sleeve => {
                    prop_assert_eq!(after.bridge.get(mac), Some(&BridgePort::Tap));
                    if !d.adopting {
                        prop_assert_eq!(after.vxlan.get(mac), None);
                    }
                }
                PeerPath::Keep => {}
            }
        }
        for (peer, ip) in &d.heartbeat_peers {
            prop_assert_eq!(after.vxlan.get(&heartbeat_mac(*peer)), Some(ip));
            // Heartbeat MACs never get a bridge entry (the heartbeat socket is bound to the
            // VXLAN device itself); a stray one stays only while adopting.
            let hb = heartbeat_mac(*peer);
            let left = k.bridge.get(&hb).filter(|_| d.adopting);
            prop_assert_eq!(after.bridge.get(&hb), left);
        }
        if !d.adopting {
            // Nothing else is left, except what is kept.
            let target = d.target();
            for mac in after.vxlan.keys().chain(after.bridge.keys()) {
                prop_assert!(
                    target.fdb.vxlan.contains_key(mac)
                        || target.fdb.bridge.contains_key(mac)
                        || target.kept.contains(mac),
                    "{mac:?} left over"
                );
            }
        }
    }

    #[test]
    fn keep_peers_entries_are_untouched(d in arb_desired(), k in arb_kernel()) {
        let ops = plan(&d, &k);
        let kept = d.target().kept;
        for op in &ops {
            prop_assert!(!kept.contains(&mac_of(op)), "{op:?} touches a kept MAC");
        }
        let after = applied(&ops, k.clone());
        for mac in &kept {
            prop_assert_eq!(after.vxlan.get(mac), k.vxlan.get(mac));
            prop_assert_eq!(after.bridge.get(mac), k.bridge.get(mac));
        }
    }

    #[test]
    fn adopting_never_deletes(d in arb_desired(), k in arb_kernel()) {
        let d = Desired { adopting: true, ..d };
        let ops = plan(&d, &k);
        let only_sets = ops
            .iter()
            .all(|op| matches!(op, FdbOp::VxlanSet { .. } | FdbOp::BridgeSet { .. }));
        prop_assert!(only_sets, "{:?}", ops);
        let after = applied(&ops, k.clone());
        prop_assert!(k.vxlan.keys().all(|mac| after.vxlan.contains_key(mac)));
        prop_assert!(k.bridge.keys().all(|mac| after.bridge.contains_key(mac)));
    }

    #[test]
    fn the_bridge_never_points_at_the_vxlan_port_without_an_entry_on_the_way(
        d in arb_desired(),
        k in arb_consistent_kernel(),
        more in arb_desired(),
    ) {
        // Two plans in a row (a second change arriving after the first was applied).
        let mut fdb = k;
        for d in [&d, &more] {
            for op in plan(d, &fdb) {
                apply(&[op], &mut fdb);
                prop_assert!(consistent(&fdb), "after {op:?}: {fdb:?}");
            }
        }
    }
}
