//! The flow side of [`OvsKernel`] against a fake datapath (the bridge side is the VXLAN
//! backend's, tested there).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::*;

/// An in-memory datapath: flows by match, with failures on demand.
#[derive(Debug, Default)]
struct FakeState {
    flows: BTreeMap<FlowMatch, Flow>,
    /// Puts of flows to this underlay address fail with EINVAL.
    refuse_dst: Option<Ipv4Addr>,
    puts: usize,
}

#[derive(Clone, Default)]
struct FakeOvs(Arc<Mutex<FakeState>>);

impl FakeOvs {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

fn refused(what: &str) -> KernelError {
    KernelError::io(what, io::Error::from_raw_os_error(libc::EINVAL))
}

impl OvsOps for FakeOvs {
    fn datapath(&mut self, _name: &str) -> Result<Option<i32>, KernelError> {
        Ok(Some(7))
    }
    fn datapath_stats(&mut self, _name: &str) -> Result<(u64, u64, u64), KernelError> {
        Ok((0, 0, 0))
    }
    fn create_datapath(&mut self, _name: &str) -> Result<i32, KernelError> {
        Ok(7)
    }
    fn delete_datapath(&mut self, _name: &str) -> Result<bool, KernelError> {
        Ok(true)
    }
    fn vports(&mut self, _dp: i32) -> Result<Vec<Vport>, KernelError> {
        Ok(Vec::new())
    }
    fn create_vxlan_vport(&mut self, _: i32, _: &str, _: u16) -> Result<PortNo, KernelError> {
        Ok(2)
    }
    fn delete_vport(&mut self, _: i32, _: PortNo) -> Result<bool, KernelError> {
        Ok(true)
    }
    fn flows(&mut self, _dp: i32) -> Result<Vec<Flow>, KernelError> {
        Ok(self.state().flows.values().cloned().collect())
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
        s.flows.insert(flow.matching, flow.clone());
        s.puts += 1;
        Ok(())
    }
    fn delete_flow(&mut self, _dp: i32, matching: &FlowMatch) -> Result<bool, KernelError> {
        Ok(self.state().flows.remove(matching).is_some())
    }
}

const PARAMS: FlowParams = FlowParams {
    local: 0,
    vxlan: 2,
    vni: 0x7766,
    tp_dst: 6784,
};

fn kernel(fake: &FakeOvs) -> OvsKernel {
    let mut k = OvsKernel::new(
        Box::new(fake.clone()),
        NetlinkKernel::open().expect("an rtnetlink socket"),
    );
    k.active = Some(Active {
        spec: DeviceSpec {
            name: "wt-ovs".into(),
            bridge: "wt".into(),
            vni: PARAMS.vni,
            port: PARAMS.tp_dst,
            mtu: 1450,
        },
        dp: 7,
        params: PARAMS,
        flows: BTreeSet::new(),
        group: BTreeSet::new(),
    });
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
    let table = k.load_flows().unwrap();
    assert_eq!(table, BTreeMap::from([(M1, a), (M2, b)]));

    // M2 moves to a: b's inbound flow goes with its last MAC.
    assert!(
        k.apply_flows(&[FdbOp::VxlanSet { mac: M2, dst: a }])
            .is_empty()
    );
    let flows: Vec<Flow> = fake.state().flows.values().cloned().collect();
    assert_eq!(
        PARAMS.flows(&BTreeMap::from([(M1, a), (M2, a)]), &BTreeSet::new()),
        flows.into_iter().collect()
    );
    assert!(
        k.apply_flows(&[FdbOp::VxlanDel { mac: M1 }, FdbOp::VxlanDel { mac: M2 }])
            .is_empty()
    );
    let left: Vec<Flow> = fake.state().flows.values().cloned().collect();
    assert_eq!(left, vec![PARAMS.group(&BTreeSet::new())]);
}

#[test]
fn the_group_flow_follows_its_peers_with_one_put_each_and_survives_the_fdb_steps() {
    let fake = FakeOvs::default();
    let mut k = kernel(&fake);
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    assert!(k.set_group_dsts(&BTreeSet::from([a, b])).unwrap());
    let group = |fake: &FakeOvs| fake.state().flows.get(&PARAMS.group_match()).cloned();
    assert_eq!(group(&fake), Some(PARAMS.group(&BTreeSet::from([a, b]))));
    assert_eq!(fake.state().puts, 1);
    // The same again: nothing to do.
    k.set_group_dsts(&BTreeSet::from([a, b])).unwrap();
    assert_eq!(fake.state().puts, 1);
    // FDB steps keep it; reading the flows back does not take it for a foreign one.
    assert!(
        k.apply_flows(&[FdbOp::VxlanSet { mac: M1, dst: a }])
            .is_empty()
    );
    assert!(k.load_flows().is_ok());
    assert_eq!(group(&fake), Some(PARAMS.group(&BTreeSet::from([a, b]))));
    // One leaves: one put; none left: a drop flow.
    k.set_group_dsts(&BTreeSet::from([b])).unwrap();
    assert_eq!(group(&fake), Some(PARAMS.group(&BTreeSet::from([b]))));
    k.set_group_dsts(&BTreeSet::new()).unwrap();
    assert_eq!(group(&fake).map(|f| f.actions), Some(vec![]));
    // Deleted behind weft's back: the next set (the engine's repair) puts it again.
    fake.state().flows.remove(&PARAMS.group_match());
    k.load_flows().unwrap();
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
    assert_eq!(k.load_flows().unwrap(), BTreeMap::from([(M1, a)]));
}

#[test]
fn flows_weft_did_not_make_are_deleted_when_read() {
    let fake = FakeOvs::default();
    let a = Ipv4Addr::new(10, 0, 0, 2);
    let mut foreign = PARAMS.outbound(M1, a);
    foreign.actions.truncate(1);
    fake.state().flows.insert(foreign.matching, foreign);
    let mut k = kernel(&fake);
    assert!(k.load_flows().unwrap().is_empty());
    assert!(fake.state().flows.is_empty());
}

#[test]
fn the_vxlan_vport_name_fits_a_netdev_name() {
    assert_eq!(vxlan_vport_name("weft-ovs"), "weft-ovs-vx");
    assert!(vxlan_vport_name("a-very-long-bridge-ovs").len() <= 15);
}
