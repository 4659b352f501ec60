use proptest::prelude::*;

use super::*;

const PARAMS: FlowParams = FlowParams {
    local: 0,
    vxlan: 2,
    vni: 0x7766,
    tp_dst: 6784,
};

fn table() -> impl Strategy<Value = BTreeMap<Mac, Ipv4Addr>> {
    // Few MACs and peers, so tables overlap and moves happen.
    prop::collection::btree_map(
        (0u8..12).prop_map(|i| [2, 0, 0, 0, 0, i]),
        (1u8..5).prop_map(|i| Ipv4Addr::new(10, 0, 0, i)),
        0..10,
    )
}

#[test]
fn a_mac_gets_one_outbound_flow_and_its_peer_one_inbound_flow() {
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let table = BTreeMap::from([([2, 0, 0, 0, 0, 1], a), ([2, 0, 0, 0, 0, 2], a)]);
    let flows = PARAMS.flows(&table, &BTreeSet::new());
    assert_eq!(flows.len(), 4, "two outbound, one inbound, the group flow");
    assert!(flows.contains(&PARAMS.group(&BTreeSet::new())));
    let out = PARAMS.outbound([2, 0, 0, 0, 0, 1], a);
    assert_eq!(
        out.actions,
        vec![
            FlowAction::SetTunnel(TunnelSet {
                id: 0x7766,
                dst: a,
                tp_dst: 6784,
                ttl: TUNNEL_TTL,
                dont_fragment: true,
            }),
            FlowAction::Output(2),
        ]
    );
    assert!(flows.contains(&out));
    let inbound = PARAMS.inbound(a);
    assert_eq!(inbound.matching.in_port, 2);
    assert_eq!(inbound.actions, vec![FlowAction::Output(0)]);
    assert!(flows.contains(&inbound));
}

#[test]
fn flows_of_another_program_or_other_parameters_are_foreign() {
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let other = FlowParams { vni: 1, ..PARAMS };
    let mut drop_all = PARAMS.outbound([2, 0, 0, 0, 0, 1], a);
    drop_all.actions.clear();
    let flows = vec![
        PARAMS.outbound([2, 0, 0, 0, 0, 1], a),
        other.outbound([2, 0, 0, 0, 0, 2], a),
        other.inbound(a),
        drop_all.clone(),
    ];
    let (table, foreign) = PARAMS.table(&flows);
    assert_eq!(table, BTreeMap::from([([2, 0, 0, 0, 0, 1], a)]));
    assert_eq!(
        foreign,
        vec![
            other.outbound([2, 0, 0, 0, 0, 2], a),
            other.inbound(a),
            drop_all
        ]
    );
}

#[test]
fn a_moved_mac_is_one_put_and_a_peer_left_loses_its_inbound_flow() {
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let mac = [2, 0, 0, 0, 0, 1];
    let none = BTreeSet::new();
    let before = PARAMS.flows(&BTreeMap::from([(mac, a)]), &none);
    let ops = PARAMS.plan(&before, &BTreeMap::from([(mac, b)]), &none);
    assert_eq!(
        ops,
        vec![
            FlowOp::Put(PARAMS.inbound(b)),
            FlowOp::Put(PARAMS.outbound(mac, b)),
            FlowOp::Delete(PARAMS.inbound(a).matching),
        ]
    );
}

fn group() -> impl Strategy<Value = BTreeSet<Ipv4Addr>> {
    prop::collection::btree_set((1u8..5).prop_map(|i| Ipv4Addr::new(10, 0, 0, i)), 0..4)
}

#[test]
fn the_group_flow_matches_every_group_address_and_no_unicast_one() {
    let g = PARAMS.group_match();
    assert_eq!(g.in_port, PARAMS.local);
    let dst = g.eth_dst.unwrap();
    for group in [
        [0xff; 6],
        [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
        [0x33, 0x33, 0xff, 0, 0, 1],
        [0x01, 0x80, 0xc2, 0, 0, 0],
    ] {
        assert!(dst.matches(&group), "{group:?}");
    }
    for unicast in [[0x02, 0, 0, 0, 0, 1], [0x0a, 0x58, 10, 32, 0, 5], [0; 6]] {
        assert!(!dst.matches(&unicast), "{unicast:?}");
        assert!(!dst.matches(&crate::vxlan::plan::heartbeat_mac([0x03; 6])));
    }
}

#[test]
fn the_group_flow_sends_one_copy_to_each_peer_and_drops_without_one() {
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let flow = PARAMS.group(&BTreeSet::from([b, a]));
    let mut want = PARAMS.outbound([2, 0, 0, 0, 0, 1], a).actions;
    want.extend(PARAMS.outbound([2, 0, 0, 0, 0, 1], b).actions);
    assert_eq!(flow.actions, want);
    assert!(PARAMS.group(&BTreeSet::new()).actions.is_empty());
    // Capped, the first addresses kept.
    let many: BTreeSet<Ipv4Addr> = (0..MAX_GROUP_DSTS as u32 + 10)
        .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
        .collect();
    let capped = PARAMS.group(&many);
    assert_eq!(capped.actions.len(), 2 * MAX_GROUP_DSTS);
    assert_eq!(
        PARAMS.group_dsts(&capped),
        Some(many.iter().copied().take(MAX_GROUP_DSTS).collect())
    );
}

#[test]
fn a_group_flow_of_other_parameters_or_actions_is_foreign() {
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let ours = PARAMS.group(&BTreeSet::from([a]));
    let other = FlowParams { vni: 1, ..PARAMS }.group(&BTreeSet::from([a]));
    let mut to_local = ours.clone();
    to_local.actions.push(FlowAction::Output(PARAMS.local));
    let mut other_mask = ours.clone();
    other_mask.matching.eth_dst = Some(crate::ovs::MacMatch::new(
        [3, 0, 0, 0, 0, 0],
        [3, 0, 0, 0, 0, 0],
    ));
    let (table, foreign) = PARAMS.table(&[
        ours.clone(),
        other.clone(),
        to_local.clone(),
        other_mask.clone(),
    ]);
    assert!(table.is_empty());
    assert_eq!(foreign, vec![other, to_local, other_mask]);
    assert_eq!(PARAMS.group_dsts(&ours), Some(BTreeSet::from([a])));
}

#[test]
fn a_change_of_the_groups_peers_is_one_put() {
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let table = BTreeMap::from([([2, 0, 0, 0, 0, 1], a)]);
    let before = PARAMS.flows(&table, &BTreeSet::new());
    let ops = PARAMS.plan(&before, &table, &BTreeSet::from([a]));
    assert_eq!(ops, vec![FlowOp::Put(PARAMS.group(&BTreeSet::from([a])))]);
}

proptest! {
    #[test]
    fn the_table_read_back_from_its_flows_is_the_table(t in table(), g in group()) {
        let flows: Vec<Flow> = PARAMS.flows(&t, &g).into_iter().collect();
        let (back, foreign) = PARAMS.table(&flows);
        prop_assert_eq!(back, t);
        prop_assert!(foreign.is_empty());
        let groups: Vec<_> = flows.iter().filter_map(|f| PARAMS.group_dsts(f)).collect();
        prop_assert_eq!(groups, vec![g]);
    }

    #[test]
    fn the_plan_takes_any_flows_to_the_wanted_ones(a in table(), ga in group(), b in table(), gb in group()) {
        let mut flows = PARAMS.flows(&a, &ga);
        let ops = PARAMS.plan(&flows, &b, &gb);
        apply(&ops, &mut flows);
        prop_assert_eq!(&flows, &PARAMS.flows(&b, &gb));
        // Nothing to do once there.
        prop_assert!(PARAMS.plan(&flows, &b, &gb).is_empty());
    }

    #[test]
    fn every_peer_in_the_table_has_one_inbound_flow_and_no_other_does(t in table(), g in group()) {
        let flows = PARAMS.flows(&t, &g);
        let inbound: Vec<Ipv4Addr> =
            flows.iter().filter_map(|f| f.matching.tunnel.map(|t| t.src)).collect();
        let peers: BTreeSet<Ipv4Addr> = t.values().copied().collect();
        prop_assert_eq!(inbound.len(), peers.len());
        prop_assert_eq!(inbound.into_iter().collect::<BTreeSet<_>>(), peers);
        // And no outbound flow sends anywhere but to its MAC's peer.
        for f in &flows {
            if let (Some(mac), [FlowAction::SetTunnel(set), _]) =
                (f.matching.eth_dst.and_then(|d| d.as_exact()), f.actions.as_slice())
            {
                prop_assert_eq!(Some(&set.dst), t.get(&mac));
            }
        }
    }

    #[test]
    fn each_frame_from_the_bridge_matches_at_most_one_flow(
        t in table(),
        g in group(),
        dst in any::<Mac>(),
    ) {
        // Megaflows must not overlap: the kernel would pick either.
        let flows = PARAMS.flows(&t, &g);
        let matching: Vec<&Flow> = flows
            .iter()
            .filter(|f| f.matching.in_port == PARAMS.local && f.matching.tunnel.is_none())
            .filter(|f| f.matching.eth_dst.is_none_or(|d| d.matches(&dst)))
            .collect();
        let group = crate::mac::is_multicast(&dst);
        prop_assert_eq!(matching.len(), usize::from(group || t.contains_key(&dst)));
        if group {
            prop_assert_eq!(matching[0], &PARAMS.group(&g));
        }
    }
}
