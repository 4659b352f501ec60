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
    let flows = PARAMS.flows(&table);
    assert_eq!(flows.len(), 3);
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
    let before = PARAMS.flows(&BTreeMap::from([(mac, a)]));
    let ops = PARAMS.plan(&before, &BTreeMap::from([(mac, b)]));
    assert_eq!(
        ops,
        vec![
            FlowOp::Put(PARAMS.inbound(b)),
            FlowOp::Put(PARAMS.outbound(mac, b)),
            FlowOp::Delete(PARAMS.inbound(a).matching),
        ]
    );
}

proptest! {
    #[test]
    fn the_table_read_back_from_its_flows_is_the_table(t in table()) {
        let flows: Vec<Flow> = PARAMS.flows(&t).into_iter().collect();
        let (back, foreign) = PARAMS.table(&flows);
        prop_assert_eq!(back, t);
        prop_assert!(foreign.is_empty());
    }

    #[test]
    fn the_plan_takes_any_flows_to_the_wanted_ones(a in table(), b in table()) {
        let mut flows = PARAMS.flows(&a);
        let ops = PARAMS.plan(&flows, &b);
        apply(&ops, &mut flows);
        prop_assert_eq!(&flows, &PARAMS.flows(&b));
        // Nothing to do once there.
        prop_assert!(PARAMS.plan(&flows, &b).is_empty());
    }

    #[test]
    fn every_peer_in_the_table_has_one_inbound_flow_and_no_other_does(t in table()) {
        let flows = PARAMS.flows(&t);
        let inbound: Vec<Ipv4Addr> =
            flows.iter().filter_map(|f| f.matching.tunnel.map(|t| t.src)).collect();
        let peers: BTreeSet<Ipv4Addr> = t.values().copied().collect();
        prop_assert_eq!(inbound.len(), peers.len());
        prop_assert_eq!(inbound.into_iter().collect::<BTreeSet<_>>(), peers);
        // And no outbound flow sends anywhere but to its MAC's peer.
        for f in &flows {
            if let (Some(mac), [FlowAction::SetTunnel(set), _]) =
                (f.matching.eth_dst, f.actions.as_slice())
            {
                prop_assert_eq!(Some(&set.dst), t.get(&mac));
            }
        }
    }
}
