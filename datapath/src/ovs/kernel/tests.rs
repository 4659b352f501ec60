//! The flow side of [`OvsKernel`] against a fake datapath (the bridge side is the VXLAN
//! backend's, tested there).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use super::*;
use crate::ovs::miss::Unanswered;

/// An in-memory datapath: flows by match with packet counts, the vports' upcall pids, the
/// packets executed, with failures on demand.
#[derive(Debug, Default)]
struct FakeState {
    flows: BTreeMap<FlowMatch, (Flow, u64)>,
    /// Puts of flows to this underlay address fail with EINVAL.
    refuse_dst: Option<Ipv4Addr>,
    /// Port number → upcall pid, for the local port (0) and the VXLAN vport (2).
    upcall_pids: BTreeMap<PortNo, u32>,
    /// The datapath's per-CPU upcall pid, once set.
    per_cpu_pid: Option<u32>,
    /// Whether the datapath exists (else `create_datapath` makes it).
    exists: bool,
    /// Every put, in order.
    puts: Vec<Flow>,
    /// Every execute: in_port and actions.
    executed: Vec<(PortNo, Vec<crate::ovs::FlowAction>)>,
}

#[derive(Clone, Default)]
struct FakeOvs(Arc<Mutex<FakeState>>);

impl FakeOvs {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    fn flows(&self) -> BTreeSet<Flow> {
        self.state()
            .flows
            .values()
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// `n` packets matched the flow with this match.
    fn traffic(&self, matching: &FlowMatch, n: u64) {
        if let Some((_, packets)) = self.state().flows.get_mut(matching) {
            *packets += n;
        }
    }
}

fn refused(what: &str) -> KernelError {
    KernelError::io(what, io::Error::from_raw_os_error(libc::EINVAL))
}

impl OvsOps for FakeOvs {
    fn datapath(&mut self, _name: &str) -> Result<Option<i32>, KernelError> {
        Ok(self.state().exists.then_some(7))
    }
    fn datapath_stats(&mut self, _name: &str) -> Result<(u64, u64, u64), KernelError> {
        Ok((0, 0, 0))
    }
    fn create_datapath(&mut self, _name: &str, upcall_pid: u32) -> Result<i32, KernelError> {
        let mut s = self.state();
        s.exists = true;
        s.upcall_pids.insert(0, upcall_pid);
        Ok(7)
    }
    fn delete_datapath(&mut self, _name: &str) -> Result<bool, KernelError> {
        Ok(std::mem::take(&mut self.state().exists))
    }
    fn vports(&mut self, _dp: i32) -> Result<Vec<Vport>, KernelError> {
        Ok(self
            .state()
            .upcall_pids
            .iter()
            .map(|(&port_no, &pid)| Vport {
                port_no,
                name: if port_no == 0 { "wt-ovs" } else { "wt-ovs-vx" }.into(),
                kind: if port_no == 0 { "internal" } else { "vxlan" }.into(),
                vxlan_port: (port_no != 0).then_some(PARAMS.tp_dst),
                upcall_pids: vec![pid],
            })
            .collect())
    }
    fn create_vxlan_vport(
        &mut self,
        _: i32,
        _: &str,
        _: u16,
        upcall_pid: u32,
    ) -> Result<PortNo, KernelError> {
        self.state().upcall_pids.insert(2, upcall_pid);
        Ok(2)
    }
    fn set_upcall_pid(&mut self, _: i32, port_no: PortNo, pid: u32) -> Result<(), KernelError> {
        self.state().upcall_pids.insert(port_no, pid);
        Ok(())
    }
    fn set_datapath_upcall_pid(&mut self, _: &str, pid: u32) -> Result<bool, KernelError> {
        self.state().per_cpu_pid = Some(pid);
        Ok(true)
    }
    fn delete_vport(&mut self, _: i32, port_no: PortNo) -> Result<bool, KernelError> {
        Ok(self.state().upcall_pids.remove(&port_no).is_some())
    }
    fn flows(&mut self, _dp: i32) -> Result<Vec<FlowEntry>, KernelError> {
        Ok(self
            .state()
            .flows
            .values()
            .map(|(flow, packets)| FlowEntry {
                flow: flow.clone(),
                packets: *packets,
                bytes: packets * 100,
                used: None,
            })
            .collect())
    }
    fn put_flow(&mut self, _dp: i32, flow: &Flow) -> Result<(), KernelError> {
        let mut s = self.state();
        let to = flow.actions.iter().find_map(|a| match a {
            crate::ovs::FlowAction::SetTunnel(t) => Some(t.dst),
            _ => None,
        });
        if to.is_some() && to == s.refuse_dst {
            return Err(refused("ovs_flow NEW"));
        }
        s.puts.push(flow.clone());
        // A put replaces the actions and keeps the counts (as the kernel's does).
        let packets = s.flows.get(&flow.matching).map_or(0, |(_, p)| *p);
        s.flows.insert(flow.matching, (flow.clone(), packets));
        Ok(())
    }
    fn delete_flow(&mut self, _dp: i32, matching: &FlowMatch) -> Result<bool, KernelError> {
        Ok(self.state().flows.remove(matching).is_some())
    }
    fn execute(
        &mut self,
        _dp: i32,
        _packet: &[u8],
        in_port: PortNo,
        actions: &[crate::ovs::FlowAction],
    ) -> Result<(), KernelError> {
        self.state().executed.push((in_port, actions.to_vec()));
        Ok(())
    }
}

const PARAMS: FlowParams = FlowParams {
    local: 0,
    vxlan: 2,
    vni: 0x7766,
    tp_dst: 6784,
};

fn spec() -> DeviceSpec {
    DeviceSpec {
        name: "wt-ovs".into(),
        bridge: "wt".into(),
        vni: PARAMS.vni,
        port: PARAMS.tp_dst,
        mtu: 1450,
    }
}

/// An edge on the fake datapath 7, as `ensure_device` leaves it (without the bridge side).
fn kernel(fake: &FakeOvs) -> OvsKernel {
    let mut k = OvsKernel::new(
        Box::new(fake.clone()),
        NetlinkKernel::open().expect("an rtnetlink socket"),
    );
    k.active = Some(Active {
        spec: spec(),
        dp: 7,
    });
    lock(&k.shared).target = Some((7, PARAMS));
    k
}

const M1: Mac = [2, 0, 0, 0, 0, 1];
const M2: Mac = [2, 0, 0, 0, 0, 2];

#[test]
fn fdb_steps_become_flows_and_read_back_as_the_table() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let ops = [
        FdbOp::VxlanSet { mac: M1, dst: a },
        FdbOp::VxlanSet { mac: M2, dst: b },
    ];
    k.apply_flows(&ops);
    assert_eq!(
        fake.state().flows.len(),
        5,
        "two outbound, two inbound, the group flow (a drop)"
    );
    let table = k.load_flows(Instant::now(), false).unwrap();
    assert_eq!(table, BTreeMap::from([(M1, a), (M2, b)]));

    // M2 moves to a: b's inbound flow goes with its last MAC.
    assert!(
        k.apply_flows(&[FdbOp::VxlanSet { mac: M2, dst: a }])
            .is_empty()
    );
    assert_eq!(
        PARAMS.flows(&BTreeMap::from([(M1, a), (M2, a)]), &BTreeSet::new()),
        fake.flows()
    );
    assert!(
        k.apply_flows(&[FdbOp::VxlanDel { mac: M1 }, FdbOp::VxlanDel { mac: M2 }])
            .is_empty()
    );
    let left: Vec<Flow> = fake.flows().into_iter().collect();
    assert_eq!(left, vec![PARAMS.group(&BTreeSet::new())]);
}

#[test]
fn the_group_flow_follows_its_peers_with_one_put_each_and_survives_the_fdb_steps() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    assert!(k.set_group_dsts(&BTreeSet::from([a, b])).unwrap());
    let group = |fake: &FakeOvs| {
        fake.state()
            .flows
            .get(&PARAMS.group_match())
            .map(|(f, _)| f.clone())
    };
    assert_eq!(group(&fake), Some(PARAMS.group(&BTreeSet::from([a, b]))));
    assert_eq!(fake.state().puts.len(), 1);
    // The same again: nothing to do.
    k.set_group_dsts(&BTreeSet::from([a, b])).unwrap();
    assert_eq!(fake.state().puts.len(), 1);
    // FDB steps keep it; reading the flows back does not take it for a foreign one.
    assert!(
        k.apply_flows(&[FdbOp::VxlanSet { mac: M1, dst: a }])
            .is_empty()
    );
    assert!(k.load_flows(Instant::now(), false).is_ok());
    assert_eq!(group(&fake), Some(PARAMS.group(&BTreeSet::from([a, b]))));
    // One leaves: one put; none left: a drop flow.
    k.set_group_dsts(&BTreeSet::from([b])).unwrap();
    assert_eq!(group(&fake), Some(PARAMS.group(&BTreeSet::from([b]))));
    k.set_group_dsts(&BTreeSet::new()).unwrap();
    assert_eq!(group(&fake).map(|f| f.actions), Some(vec![]));
    // Deleted behind weft's back: the next set (the engine's repair) puts it again.
    fake.state().flows.remove(&PARAMS.group_match());
    k.load_flows(Instant::now(), false).unwrap();
    k.set_group_dsts(&BTreeSet::new()).unwrap();
    assert_eq!(group(&fake).map(|f| f.actions), Some(vec![]));
}

#[test]
fn a_refused_flow_names_the_fdb_step_it_served_and_the_others_take_effect() {
    let fake = FakeOvs::default();
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    fake.state().refuse_dst = Some(b);
    let mut k = kernel(&fake);
    let ops = [
        FdbOp::VxlanSet { mac: M1, dst: a },
        FdbOp::VxlanSet { mac: M2, dst: b },
    ];
    let failures = k.apply_flows(&ops);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].op, ops[1]);
    assert_eq!(failures[0].errno, Some(libc::EINVAL));
    assert!(failures[0].message.contains("ovs_flow NEW"));
    // What worked is there, and what failed is retried by the engine's next plan.
    assert_eq!(
        k.load_flows(Instant::now(), false).unwrap(),
        BTreeMap::from([(M1, a)])
    );
}

#[test]
fn flows_weft_did_not_make_are_deleted_when_read() {
    let fake = FakeOvs::default();
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let mut foreign = PARAMS.outbound(M1, a);
    foreign.actions.truncate(1);
    fake.state().flows.insert(foreign.matching, (foreign, 0));
    let mut k = kernel(&fake);
    assert!(k.load_flows(Instant::now(), true).unwrap().is_empty());
    assert!(fake.state().flows.is_empty());
}

fn miss_to(dst: Mac) -> crate::ovs::Upcall {
    crate::ovs::Upcall {
        kind: crate::ovs::UpcallKind::Miss,
        dp_ifindex: 7,
        packet: vec![0xab; 60],
        in_port: Some(PARAMS.local),
        eth_src: Some([2, 9, 9, 9, 9, 9]),
        eth_dst: Some(dst),
        tunnel: None,
    }
}

fn miss_from(src: Ipv4Addr) -> crate::ovs::Upcall {
    crate::ovs::Upcall {
        in_port: Some(PARAMS.vxlan),
        tunnel: Some(crate::ovs::TunnelMatch {
            id: PARAMS.vni,
            src,
        }),
        ..miss_to(M1)
    }
}

#[test]
fn a_miss_is_answered_with_a_put_and_an_execute_of_the_packet() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    let a = Ipv4Addr::new(10, 0, 0, 2);
    assert!(
        k.apply_flows(&[FdbOp::VxlanSet { mac: M1, dst: a }])
            .is_empty()
    );
    // Someone flushed the datapath (`ovs-dpctl del-flows`).
    fake.state().flows.clear();
    let mut handler = k.miss_handler(Box::new(fake.clone()));
    let now = Instant::now();
    let out = PARAMS.outbound(M1, a);
    assert_eq!(
        handler.handle(&miss_to(M1), now),
        MissOutcome::Answered(out.clone())
    );
    assert_eq!(
        handler.handle(&miss_from(a), now),
        MissOutcome::Answered(PARAMS.inbound(a))
    );
    assert_eq!(
        fake.flows(),
        BTreeSet::from([out.clone(), PARAMS.inbound(a)])
    );
    assert_eq!(
        fake.state().executed,
        vec![
            (PARAMS.local, out.actions.clone()),
            (PARAMS.vxlan, PARAMS.inbound(a).actions)
        ]
    );
    // Not in the table: not answered, nothing put or executed.
    let b = Ipv4Addr::new(10, 0, 0, 3);
    assert_eq!(
        handler.handle(&miss_to(M2), now),
        MissOutcome::Unanswered(Unanswered::UnknownMac)
    );
    assert_eq!(
        handler.handle(&miss_from(b), now),
        MissOutcome::Unanswered(Unanswered::UnknownPeer)
    );
    assert_eq!(fake.state().executed.len(), 2);
    let counters = k.miss_counters();
    assert_eq!(counters.answered, 2);
    assert_eq!(counters.unanswered[&Unanswered::UnknownMac], 1);
    assert_eq!(counters.unanswered[&Unanswered::UnknownPeer], 1);
    // The answered flows are in the cache the status counts.
    let cache = lock(&k.shared).flows.clone();
    assert!(cache.contains(&out) && cache.contains(&PARAMS.inbound(a)));
}

#[test]
fn a_mac_the_engine_removed_is_no_longer_answered_and_its_flow_goes() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    let a = Ipv4Addr::new(10, 0, 0, 2);
    k.apply_flows(&[FdbOp::VxlanSet { mac: M1, dst: a }]);
    assert!(k.apply_flows(&[FdbOp::VxlanDel { mac: M1 }]).is_empty());
    // The group flow (a drop, no fast leaves) is all that is left.
    assert_eq!(
        fake.flows(),
        BTreeSet::from([PARAMS.group(&BTreeSet::new())])
    );
    let mut handler = k.miss_handler(Box::new(fake.clone()));
    let now = Instant::now();
    assert_eq!(
        handler.handle(&miss_to(M1), now),
        MissOutcome::Unanswered(Unanswered::UnknownMac)
    );
    assert_eq!(
        handler.handle(&miss_from(a), now),
        MissOutcome::Unanswered(Unanswered::UnknownPeer)
    );
    assert_eq!(
        fake.flows(),
        BTreeSet::from([PARAMS.group(&BTreeSet::new())])
    );
}

#[test]
fn a_flood_of_misses_is_answered_at_the_limit_and_the_rest_counted() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    k.set_miss_limit(100, 10);
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let macs: Vec<Mac> = (0..200u8).map(|i| [2, 0, 0, 0, 1, i]).collect();
    let sets: Vec<FdbOp> = macs
        .iter()
        .map(|&mac| FdbOp::VxlanSet { mac, dst: a })
        .collect();
    assert!(k.apply_flows(&sets).is_empty());
    fake.state().flows.clear();
    let mut handler = k.miss_handler(Box::new(fake.clone()));
    let t0 = Instant::now();
    // 200 known MACs and 1000 new (unknown) ones, all within one instant.
    for &mac in &macs {
        handler.handle(&miss_to(mac), t0);
    }
    for i in 0..1000u32 {
        let b = i.to_be_bytes();
        handler.handle(&miss_to([2, 1, b[0], b[1], b[2], b[3]]), t0);
    }
    let c = k.miss_counters();
    assert_eq!(c.answered, 10, "the burst");
    assert_eq!(c.rate_limited, 190);
    assert_eq!(c.unanswered[&Unanswered::UnknownMac], 1000);
    assert_eq!(fake.flows().len(), 10);
    assert_eq!(fake.state().executed.len(), 10);
    // The dropped packets' next packets miss again: 100 per second, spread over the second,
    // are all answered.
    let mut now = t0;
    for &mac in &macs[10..110] {
        now += Duration::from_millis(10);
        assert!(matches!(
            handler.handle(&miss_to(mac), now),
            MissOutcome::Answered(_)
        ));
    }
    assert_eq!(k.miss_counters().answered, 110);
    // Never more than the burst at once, however long the quiet before.
    let later = now + Duration::from_secs(60);
    for &mac in &macs[110..] {
        handler.handle(&miss_to(mac), later);
    }
    assert_eq!(k.miss_counters().answered, 120);
    assert_eq!(k.miss_counters().rate_limited, 190 + 80);
}

#[test]
fn an_idle_flow_expires_stays_out_of_the_repair_and_comes_back_on_its_miss() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    let idle = Duration::from_secs(60);
    k.set_idle_timeout(idle);
    let a = Ipv4Addr::new(10, 0, 0, 2);
    assert!(
        k.apply_flows(&[
            FdbOp::VxlanSet { mac: M1, dst: a },
            FdbOp::VxlanSet { mac: M2, dst: a }
        ])
        .is_empty()
    );
    let table = BTreeMap::from([(M1, a), (M2, a)]);
    let t0 = Instant::now();
    assert_eq!(k.load_flows(t0, false).unwrap(), table);
    // M1 and the inbound flow carry traffic, M2's flow none.
    let (busy, quiet) = (PARAMS.outbound(M1, a), PARAMS.outbound(M2, a));
    for step in 1..=6u32 {
        fake.traffic(&busy.matching, 3);
        fake.traffic(&PARAMS.inbound(a).matching, 3);
        let read = k
            .load_flows(t0 + Duration::from_secs(10) * step, false)
            .unwrap();
        // The table keeps M2 whatever the cache holds: the engine sees no drift to repair.
        assert_eq!(read, table);
    }
    assert_eq!(k.miss_counters().expired, 1);
    assert_eq!(
        fake.flows(),
        BTreeSet::from([
            busy.clone(),
            PARAMS.inbound(a),
            PARAMS.group(&BTreeSet::new())
        ]),
        "only the idle flow went (the group flow never idles out)"
    );
    assert_eq!(lock(&k.shared).flows.len(), 3);
    // An engine step for another MAC puts that MAC's flow, not the expired one.
    let b = Ipv4Addr::new(10, 0, 0, 3);
    let m3: Mac = [2, 0, 0, 0, 0, 3];
    assert!(
        k.apply_flows(&[FdbOp::VxlanSet { mac: m3, dst: b }])
            .is_empty()
    );
    assert!(!fake.flows().contains(&quiet));
    // M2's next frame misses, and its flow is back.
    let mut handler = k.miss_handler(Box::new(fake.clone()));
    assert_eq!(
        handler.handle(&miss_to(M2), t0 + Duration::from_secs(70)),
        MissOutcome::Answered(quiet.clone())
    );
    assert!(fake.flows().contains(&quiet));
    // A flow that carries traffic is never expired, however long.
    for step in 8..30u32 {
        fake.traffic(&busy.matching, 1);
        fake.traffic(&quiet.matching, 1);
        fake.traffic(&PARAMS.inbound(a).matching, 1);
        fake.traffic(&PARAMS.inbound(b).matching, 1);
        fake.traffic(&PARAMS.outbound(m3, b).matching, 1);
        k.load_flows(t0 + Duration::from_secs(10) * step, false)
            .unwrap();
    }
    assert_eq!(k.miss_counters().expired, 1);
}

#[test]
fn flows_left_in_the_datapath_are_adopted_and_stale_ones_deleted_later() {
    let fake = FakeOvs::default();
    let a = Ipv4Addr::new(10, 0, 0, 2);
    for flow in PARAMS.flows(&BTreeMap::from([(M1, a)]), &BTreeSet::new()) {
        fake.state().flows.insert(flow.matching, (flow, 0));
    }
    let mut k = kernel(&fake);
    let now = Instant::now();
    assert_eq!(k.load_flows(now, true).unwrap(), BTreeMap::from([(M1, a)]));
    // A flow that appears behind the table's back (a put racing a failed step) goes.
    let stray = PARAMS.outbound(M2, a);
    fake.state()
        .flows
        .insert(stray.matching, (stray.clone(), 0));
    assert_eq!(k.load_flows(now, false).unwrap(), BTreeMap::from([(M1, a)]));
    assert!(!fake.flows().contains(&stray));
}

#[test]
fn an_adopted_datapath_s_upcalls_are_pointed_at_this_edge() {
    let fake = FakeOvs::default();
    {
        let mut s = fake.state();
        s.exists = true;
        // The router that made it is gone, and so is its socket.
        s.upcall_pids = BTreeMap::from([(0, 4242), (2, 4242)]);
    }
    let mut k = kernel(&fake);
    k.upcall_pid = 99;
    let vxlan = k.ensure_vxlan_vport(7, &spec()).unwrap();
    assert_eq!(vxlan, 2, "adopted");
    k.point_upcalls("wt-ovs", 7, vxlan).unwrap();
    assert_eq!(fake.state().upcall_pids, BTreeMap::from([(0, 99), (2, 99)]));
    assert_eq!(fake.state().per_cpu_pid, Some(99));
}

#[test]
fn the_upcall_thread_stops_when_the_edge_is_dropped() {
    let fake = FakeOvs::default();
    let k = kernel(&fake);
    // A generic-netlink socket opens without the openvswitch module; nothing comes up on it.
    let socket = UpcallSocket::open().expect("a netlink socket");
    let thread = UpcallThread::spawn(socket, k.miss_handler(Box::new(fake.clone()))).unwrap();
    let started = Instant::now();
    drop(thread);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn the_vxlan_vport_name_fits_a_netdev_name() {
    assert_eq!(vxlan_vport_name("weft-ovs"), "weft-ovs-vx");
    assert!(vxlan_vport_name("a-very-long-bridge-ovs").len() <= 15);
}
