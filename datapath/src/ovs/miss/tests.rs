use proptest::prelude::*;

use super::*;
use crate::ovs::TunnelMatch;

const PARAMS: FlowParams = FlowParams {
    local: 0,
    vxlan: 2,
    vni: 0x7766,
    tp_dst: 6784,
};

const M1: Mac = [2, 0, 0, 0, 0, 1];
const M2: Mac = [2, 0, 0, 0, 0, 2];
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

fn from_bridge(dst: Mac) -> Upcall {
    Upcall {
        kind: UpcallKind::Miss,
        dp_ifindex: 7,
        packet: vec![0; 60],
        in_port: Some(PARAMS.local),
        eth_src: Some([2, 9, 9, 9, 9, 9]),
        eth_dst: Some(dst),
        tunnel: None,
    }
}

fn from_tunnel(id: u32, src: Ipv4Addr) -> Upcall {
    Upcall {
        in_port: Some(PARAMS.vxlan),
        tunnel: Some(TunnelMatch { id, src }),
        ..from_bridge(M1)
    }
}

#[test]
fn a_group_miss_from_the_bridge_is_answered_with_the_group_flow() {
    let table = BTreeMap::from([(M1, A)]);
    let leaves = BTreeSet::from([A]);
    for group in [
        [0xff; 6],
        [0x01, 0x00, 0x5e, 0, 0, 1],
        [0x33, 0x33, 0, 0, 0, 1],
    ] {
        assert_eq!(
            answer(&PARAMS, &table, &leaves, &from_bridge(group)),
            Ok(PARAMS.group(&leaves))
        );
        // No fast leaves: the drop flow.
        assert_eq!(
            answer(&PARAMS, &table, &BTreeSet::new(), &from_bridge(group)),
            Ok(PARAMS.group(&BTreeSet::new()))
        );
    }
}

#[test]
fn a_miss_is_answered_with_the_flow_the_plan_makes() {
    let table = BTreeMap::from([(M1, A)]);
    assert_eq!(
        answer(&PARAMS, &table, &BTreeSet::new(), &from_bridge(M1)),
        Ok(PARAMS.outbound(M1, A))
    );
    assert_eq!(
        answer(
            &PARAMS,
            &table,
            &BTreeSet::new(),
            &from_tunnel(PARAMS.vni, A)
        ),
        Ok(PARAMS.inbound(A))
    );
}

#[test]
fn a_miss_outside_the_table_is_not_answered_and_says_why() {
    let table = BTreeMap::from([(M1, A)]);
    let cases = [
        (from_bridge(M2), Unanswered::UnknownMac),
        (from_tunnel(PARAMS.vni, B), Unanswered::UnknownPeer),
        (from_tunnel(PARAMS.vni + 1, A), Unanswered::WrongVni),
        (
            Upcall {
                tunnel: None,
                ..from_tunnel(PARAMS.vni, A)
            },
            Unanswered::UnknownPeer,
        ),
        (
            Upcall {
                in_port: Some(9),
                ..from_bridge(M1)
            },
            Unanswered::UnknownPort,
        ),
        (
            Upcall {
                in_port: None,
                ..from_bridge(M1)
            },
            Unanswered::Incomplete,
        ),
        (
            Upcall {
                eth_dst: None,
                ..from_bridge(M1)
            },
            Unanswered::Incomplete,
        ),
        (
            Upcall {
                kind: UpcallKind::Action,
                ..from_bridge(M1)
            },
            Unanswered::NotAMiss,
        ),
    ];
    for (upcall, why) in cases {
        assert_eq!(
            answer(&PARAMS, &table, &BTreeSet::new(), &upcall),
            Err(why),
            "{upcall:?}"
        );
    }
}

#[test]
fn the_reasons_have_distinct_names() {
    let names: std::collections::BTreeSet<_> = Unanswered::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Unanswered::ALL.len());
}

#[test]
fn the_limiter_allows_a_burst_then_the_rate() {
    let t0 = Instant::now();
    let mut l = MissLimiter::new(100, 10);
    assert_eq!((0..50).filter(|_| l.allow(t0)).count(), 10);
    // 100 ms later: 10 more.
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!((0..50).filter(|_| l.allow(t1)).count(), 10);
    // After a long quiet spell, no more than the burst.
    let t2 = t1 + Duration::from_secs(3600);
    assert_eq!((0..50).filter(|_| l.allow(t2)).count(), 10);
}

#[test]
fn a_flow_idle_for_the_timeout_is_expired_and_one_in_use_is_not() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(60);
    let mut e = IdleExpiry::new(idle);
    let busy = PARAMS.outbound(M1, A).matching;
    let quiet = PARAMS.outbound(M2, A).matching;
    assert!(e.observe(t0, [(busy, 5), (quiet, 5)]).is_empty());
    let t1 = t0 + Duration::from_secs(30);
    assert!(e.observe(t1, [(busy, 9), (quiet, 5)]).is_empty());
    let t2 = t0 + idle;
    assert_eq!(e.observe(t2, [(busy, 12), (quiet, 5)]), vec![quiet]);
    // Put again by a miss, it starts over (its count restarts too).
    assert!(e.observe(t2, [(busy, 12), (quiet, 1)]).is_empty());
    assert!(
        e.observe(t2 + idle / 2, [(busy, 20), (quiet, 1)])
            .is_empty()
    );
    assert_eq!(e.observe(t2 + idle, [(busy, 21), (quiet, 1)]), vec![quiet]);
}

fn table() -> impl Strategy<Value = BTreeMap<Mac, Ipv4Addr>> {
    prop::collection::btree_map(
        (0u8..12).prop_map(|i| [2, 0, 0, 0, 0, i]),
        (1u8..5).prop_map(|i| Ipv4Addr::new(10, 0, 0, i)),
        0..10,
    )
}

fn upcall() -> impl Strategy<Value = Upcall> {
    (
        prop::sample::select(vec![PARAMS.local, PARAMS.vxlan, 5]),
        (0u8..14).prop_map(|i| [2, 0, 0, 0, 0, i]),
        prop::option::of((
            prop::sample::select(vec![PARAMS.vni, 1]),
            (0u8..6).prop_map(|i| Ipv4Addr::new(10, 0, 0, i)),
        )),
    )
        .prop_map(|(in_port, dst, tunnel)| Upcall {
            in_port: Some(in_port),
            tunnel: tunnel.map(|(id, src)| TunnelMatch { id, src }),
            ..from_bridge(dst)
        })
}

proptest! {
    /// An answer is always one of the flows the plan makes for the table, and a miss the plan
    /// has a flow for is always answered (with that flow).
    #[test]
    fn answers_are_the_plans_flows_and_nothing_else(table in table(), upcall in upcall()) {
        let planned = PARAMS.flows(&table, &BTreeSet::new());
        match answer(&PARAMS, &table, &BTreeSet::new(), &upcall) {
            Ok(flow) => prop_assert!(planned.contains(&flow), "{flow:?} is not planned"),
            Err(_) => {
                let wanted = planned.iter().any(|f| {
                    let m = f.matching;
                    m.in_port == upcall.in_port.unwrap_or(u32::MAX)
                        && m.eth_dst.is_none_or(|d| upcall.eth_dst.is_some_and(|u| d.matches(&u)))
                        && m.tunnel.is_none_or(|t| Some(t) == upcall.tunnel)
                });
                prop_assert!(!wanted, "a planned flow matches {upcall:?}");
            }
        }
    }

    /// Over any stretch of time, answered misses stay within the burst plus the rate.
    #[test]
    fn the_limiter_bounds_answers(gaps in prop::collection::vec(0u64..20_000, 1..400)) {
        let (per_sec, burst) = (100u32, 10u32);
        let mut l = MissLimiter::new(per_sec, burst);
        let t0 = Instant::now();
        let mut now = t0;
        let mut allowed = 0u64;
        for gap in gaps {
            now += Duration::from_micros(gap);
            allowed += u64::from(l.allow(now));
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        prop_assert!(allowed as f64 <= f64::from(burst) + elapsed * f64::from(per_sec) + 1e-6);
    }

    /// A flow whose count moves between every two dumps never expires; one that stops moving
    /// expires once the timeout passed since its last move, and not before.
    #[test]
    fn a_flow_that_carries_traffic_is_never_expired(
        steps in prop::collection::vec((1u64..40, any::<bool>()), 1..60),
    ) {
        let idle = Duration::from_secs(60);
        let mut e = IdleExpiry::new(idle);
        let busy = PARAMS.outbound(M1, A).matching;
        let other = PARAMS.outbound(M2, A).matching;
        let t0 = Instant::now();
        let (mut now, mut busy_count, mut other_count) = (t0, 0u64, 0u64);
        let mut other_moved = t0;
        let mut other_present = true;
        e.observe(now, [(busy, 0), (other, 0)]);
        for (secs, other_moves) in steps {
            now += Duration::from_secs(secs);
            busy_count += 1;
            let mut dump = vec![(busy, busy_count)];
            if !other_present {
                // Put again by its next miss.
                other_present = true;
                other_count = 0;
                other_moved = now;
            } else if other_moves {
                other_count += 1;
                other_moved = now;
            }
            dump.push((other, other_count));
            let expired = e.observe(now, dump);
            prop_assert!(!expired.contains(&busy));
            let due = now.duration_since(other_moved) >= idle;
            prop_assert_eq!(expired.contains(&other), due);
            if due {
                other_present = false;
            }
        }
    }
}
