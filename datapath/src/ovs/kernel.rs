//! [`VxlanKernel`] over an Open vSwitch datapath: the VXLAN engine's heartbeats, selectors and
//! FDB plan stay as they are; what the VXLAN device's own FDB holds (MAC → peer underlay) is
//! kept as flows ([`super::flows`]) instead.
//!
//! The datapath `<bridge>-ovs` has two ports: its own local (internal) port, which is a port of
//! the pods' bridge like the VXLAN device would be (same flags: no learning, no flooding,
//! isolated from the sleeve's TAP), and one VXLAN vport on the fast path's UDP port. The bridge's
//! side (its FDB entries steering each remote MAC to the fast port or the TAP) is the same
//! rtnetlink code as for the VXLAN device ([`NetlinkKernel`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::flows::{self, FlowOp, FlowParams};
use super::{Flow, FlowMatch, OvsError, OvsSocket, PortNo, VportSpec, VportType};
use crate::mac::Mac;
use crate::vxlan::kernel::{
    ApplyErrors, BackendDetails, DeviceSpec, DeviceState, KernelError, NetlinkKernel, OpFailure,
    VxlanKernel,
};
use crate::vxlan::plan::{self, FdbOp, KernelFdb};
use weft_netlink::vxlan::PortFlags;

/// One vport of a datapath, as weft needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vport {
    pub port_no: PortNo,
    pub name: String,
    /// `internal`, `netdev`, `vxlan`, ...
    pub kind: String,
    /// The UDP port, for a VXLAN vport.
    pub vxlan_port: Option<u16>,
}

/// The generic-netlink calls [`OvsKernel`] makes (the socket implements it; tests fake it).
/// Errors carry the request and the kernel's errno ([`KernelError::Io`]).
pub trait OvsOps: Send {
    /// The ifindex of the datapath called `name`, if there is one.
    fn datapath(&mut self, name: &str) -> Result<Option<i32>, KernelError>;
    /// Its lookup counters (`OVS_DP_ATTR_STATS`): hits, misses, lost.
    fn datapath_stats(&mut self, name: &str) -> Result<(u64, u64, u64), KernelError>;
    fn create_datapath(&mut self, name: &str) -> Result<i32, KernelError>;
    /// `false` if there was none.
    fn delete_datapath(&mut self, name: &str) -> Result<bool, KernelError>;
    fn vports(&mut self, dp: i32) -> Result<Vec<Vport>, KernelError>;
    fn create_vxlan_vport(&mut self, dp: i32, name: &str, port: u16)
    -> Result<PortNo, KernelError>;
    fn delete_vport(&mut self, dp: i32, port_no: PortNo) -> Result<bool, KernelError>;
    /// The datapath's flows that weft's model holds; flows it cannot hold (another
    /// program's actions or key fields) are deleted on the way.
    fn flows(&mut self, dp: i32) -> Result<Vec<Flow>, KernelError>;
    /// Creates the flow or replaces the actions of the flow with its match.
    fn put_flow(&mut self, dp: i32, flow: &Flow) -> Result<(), KernelError>;
    /// `false` if there was none.
    fn delete_flow(&mut self, dp: i32, matching: &FlowMatch) -> Result<bool, KernelError>;
}

/// The datapath weft works on.
#[derive(Debug, Clone)]
struct Active {
    spec: DeviceSpec,
    dp: i32,
    params: FlowParams,
    /// The flows the datapath holds, as last read or written.
    flows: BTreeSet<Flow>,
    /// The peers the group flow replicates to ([`VxlanKernel::set_group_dsts`]).
    group: BTreeSet<std::net::Ipv4Addr>,
}

/// The Open vSwitch fast path's kernel edge.
pub struct OvsKernel {
    ovs: Box<dyn OvsOps>,
    bridge: NetlinkKernel,
    active: Option<Active>,
}

/// Deletes the datapath `name` (`weft reset`); `false` if there was none.
pub fn delete_datapath(name: &str) -> Result<bool, KernelError> {
    match OvsSocket::open() {
        // No module, no datapath.
        Err(OvsError::NoOvs) => Ok(false),
        Err(e) => Err(kernel_error(e)),
        Ok(mut ovs) => OvsOps::delete_datapath(&mut ovs, name),
    }
}

/// The kernel edge's error for a socket's: the request and the errno stay in the message.
fn kernel_error(e: OvsError) -> KernelError {
    match e {
        OvsError::NoOvs => KernelError::Unavailable(e.to_string()),
        OvsError::Kernel { request, errno } => {
            KernelError::io(request, io::Error::from_raw_os_error(errno))
        }
        OvsError::Io { request, source } => KernelError::io(request, source),
        OvsError::Decode { request, source } => {
            KernelError::io(request, io::Error::other(source.to_string()))
        }
    }
}

/// The socket is the real [`OvsOps`]. Datapaths and vports send no upcalls (pid 0): weft
/// installs its flows from gossip, and the datapath counts the misses as lost.
impl OvsOps for OvsSocket {
    fn datapath(&mut self, name: &str) -> Result<Option<i32>, KernelError> {
        Ok(OvsSocket::datapath(self, name)
            .map_err(kernel_error)?
            .map(|d| d.ifindex))
    }
    fn datapath_stats(&mut self, name: &str) -> Result<(u64, u64, u64), KernelError> {
        let info = OvsSocket::datapath(self, name)
            .map_err(kernel_error)?
            .ok_or(KernelError::NoDevice)?;
        Ok((info.stats.hit, info.stats.missed, info.stats.lost))
    }
    fn create_datapath(&mut self, name: &str) -> Result<i32, KernelError> {
        Ok(OvsSocket::create_datapath(self, name, 0)
            .map_err(kernel_error)?
            .ifindex)
    }
    fn delete_datapath(&mut self, name: &str) -> Result<bool, KernelError> {
        OvsSocket::delete_datapath(self, name).map_err(kernel_error)
    }
    fn vports(&mut self, dp: i32) -> Result<Vec<Vport>, KernelError> {
        Ok(OvsSocket::vports(self, dp)
            .map_err(kernel_error)?
            .into_iter()
            .map(|v| Vport {
                port_no: v.port_no,
                name: v.name,
                kind: format!("{:?}", v.kind).to_lowercase(),
                vxlan_port: v.dst_port.filter(|_| v.kind == VportType::Vxlan),
            })
            .collect())
    }
    fn create_vxlan_vport(
        &mut self,
        dp: i32,
        name: &str,
        port: u16,
    ) -> Result<PortNo, KernelError> {
        let spec = VportSpec {
            name: name.to_owned(),
            kind: VportType::Vxlan,
            dst_port: Some(port),
            upcall_pid: 0,
        };
        Ok(OvsSocket::create_vport(self, dp, &spec)
            .map_err(kernel_error)?
            .port_no)
    }
    fn delete_vport(&mut self, dp: i32, port_no: PortNo) -> Result<bool, KernelError> {
        OvsSocket::delete_vport(self, dp, port_no).map_err(kernel_error)
    }
    fn flows(&mut self, dp: i32) -> Result<Vec<Flow>, KernelError> {
        let (entries, raw) = OvsSocket::dump_flows(self, dp).map_err(kernel_error)?;
        // A flow weft's model cannot even hold is not weft's: like any foreign flow in weft's
        // datapath it goes (it could send pod traffic anywhere).
        for flow in &raw {
            tracing::warn!(error = %flow.error, "deleting a flow weft cannot model");
            OvsSocket::delete_raw_flow(self, dp, flow).map_err(kernel_error)?;
        }
        Ok(entries.into_iter().map(|e| e.flow).collect())
    }
    fn put_flow(&mut self, dp: i32, flow: &Flow) -> Result<(), KernelError> {
        OvsSocket::put_flow(self, dp, flow).map_err(kernel_error)
    }
    fn delete_flow(&mut self, dp: i32, matching: &FlowMatch) -> Result<bool, KernelError> {
        OvsSocket::delete_flow(self, dp, matching).map_err(kernel_error)
    }
}

/// The name of the VXLAN vport of the datapath `dp_name` (at most 15 bytes, as any netdev's).
pub fn vxlan_vport_name(dp_name: &str) -> String {
    let mut name: String = dp_name.chars().take(12).collect();
    name.push_str("-vx");
    name
}

impl OvsKernel {
    /// The real edge, in the calling thread's network namespace; `Unavailable("no openvswitch
    /// module")` on a kernel without Open vSwitch.
    pub fn open() -> Result<Self, KernelError> {
        let ovs = OvsSocket::open().map_err(kernel_error)?;
        let bridge =
            NetlinkKernel::open().map_err(|e| KernelError::io("open an rtnetlink socket", e))?;
        Ok(Self::new(Box::new(ovs), bridge))
    }

    /// An edge over `ovs` (the generic-netlink socket, or a fake) and `bridge`.
    pub fn new(ovs: Box<dyn OvsOps>, bridge: NetlinkKernel) -> Self {
        Self {
            ovs,
            bridge,
            active: None,
        }
    }

    fn active(&mut self) -> Result<&mut Active, KernelError> {
        self.active.as_mut().ok_or(KernelError::NoDevice)
    }

    /// Reads the datapath's flows; weft's become the table, any other flow is deleted (the
    /// datapath is weft's, and a flow it did not make could send pod traffic anywhere).
    fn load_flows(&mut self) -> Result<BTreeMap<Mac, std::net::Ipv4Addr>, KernelError> {
        let Active { dp, params, .. } = *self.active()?;
        let flows = self.ovs.flows(dp)?;
        let (table, foreign) = params.table(&flows);
        for flow in &foreign {
            tracing::warn!(?flow, "deleting a flow weft did not make");
            self.ovs.delete_flow(dp, &flow.matching)?;
        }
        let kept: BTreeSet<Flow> = flows.into_iter().filter(|f| !foreign.contains(f)).collect();
        self.active()?.flows = kept;
        Ok(table)
    }

    /// Creates or adopts the VXLAN vport on `spec.port`; a vport of that name on another port
    /// is made anew.
    fn ensure_vxlan_vport(&mut self, dp: i32, spec: &DeviceSpec) -> Result<PortNo, KernelError> {
        let name = vxlan_vport_name(&spec.name);
        let vports = self.ovs.vports(dp)?;
        if let Some(v) = vports.iter().find(|v| v.name == name) {
            if v.vxlan_port == Some(spec.port) {
                return Ok(v.port_no);
            }
            self.ovs.delete_vport(dp, v.port_no)?;
        }
        self.ovs.create_vxlan_vport(dp, &name, spec.port)
    }
}

impl VxlanKernel for OvsKernel {
    fn ensure_device(&mut self, spec: &DeviceSpec) -> Result<DeviceState, KernelError> {
        let bridge_index = self.bridge.pinned_bridge(spec)?;
        let (dp, adopted) = match self.ovs.datapath(&spec.name)? {
            Some(dp) => (dp, true),
            None => (self.ovs.create_datapath(&spec.name)?, false),
        };
        let vxlan = self.ensure_vxlan_vport(dp, spec)?;
        self.active = Some(Active {
            spec: spec.clone(),
            dp,
            params: FlowParams {
                local: 0,
                vxlan,
                vni: spec.vni,
                tp_dst: spec.port,
            },
            flows: BTreeSet::new(),
            group: BTreeSet::new(),
        });
        self.load_flows()?;
        // The group flow before the port floods group frames into the datapath: as an earlier
        // run left it (the engine replaces it once it knows its peers), or a drop.
        let active = self.active()?;
        let adopted_group = active
            .flows
            .iter()
            .find_map(|f| active.params.group_dsts(f));
        self.set_group_dsts(&adopted_group.unwrap_or_default())?;
        // The datapath's local port is a netdev of the datapath's name.
        let (index, is_port) = self
            .bridge
            .port_of(&spec.name, bridge_index)?
            .ok_or_else(|| {
                KernelError::io(
                    format!("look up {} (the datapath's own port)", spec.name),
                    io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
        self.bridge
            .attach_fast_port(spec, index, bridge_index, is_port, GROUP_FLOOD)?;
        Ok(DeviceState {
            index,
            bridge_index,
            adopted,
        })
    }

    fn read_fdb(&mut self, tap: &str) -> Result<KernelFdb, KernelError> {
        // The bridge's entries; the local port holds no forwarding entries of its own.
        let mut fdb = self.bridge.read_fdb(tap)?;
        fdb.vxlan = self.load_flows()?;
        Ok(fdb)
    }

    fn apply(&mut self, tap: &str, ops: &[FdbOp]) -> Result<(), ApplyErrors> {
        let (fast, bridge): (Vec<FdbOp>, Vec<FdbOp>) = ops
            .iter()
            .partition(|op| matches!(op, FdbOp::VxlanSet { .. } | FdbOp::VxlanDel { .. }));
        let mut failures = Vec::new();
        if let Err(e) = self.bridge.apply(tap, &bridge) {
            failures.extend(e.failures);
        }
        if !fast.is_empty() {
            failures.extend(self.apply_flows(&fast));
        }
        ApplyErrors::check(ops.len(), failures)
    }

    fn set_local_heartbeat_mac(&mut self, mac: Mac) -> Result<(), KernelError> {
        self.bridge.set_local_heartbeat_mac(mac)
    }

    fn isolate(&mut self, port: &str) -> Result<(), KernelError> {
        self.bridge.isolate(port)
    }

    fn set_group_dsts(&mut self, dsts: &BTreeSet<std::net::Ipv4Addr>) -> Result<bool, KernelError> {
        let active = self.active()?;
        let flow = active.params.group(dsts);
        if !active.flows.contains(&flow) {
            let dp = active.dp;
            // Refused: the datapath holds the flow it held, and so does `group`.
            self.ovs.put_flow(dp, &flow)?;
            flows::apply(&[FlowOp::Put(flow)], &mut self.active()?.flows);
        }
        self.active()?.group = dsts.clone();
        Ok(true)
    }

    fn details(&mut self) -> Option<BackendDetails> {
        let Active {
            ref spec,
            dp,
            ref flows,
            ..
        } = *self.active.as_ref()?;
        let name = spec.name.clone();
        let flows = flows.len();
        let ports = self.ovs.vports(dp).ok()?;
        let (hits, misses, lost) = self.ovs.datapath_stats(&name).ok()?;
        Some(BackendDetails {
            ports: ports
                .iter()
                .map(|v| match v.vxlan_port {
                    Some(port) => format!("{}: {} ({} udp/{port})", v.port_no, v.name, v.kind),
                    None => format!("{}: {} ({})", v.port_no, v.name, v.kind),
                })
                .collect(),
            flows,
            hits,
            misses,
            lost,
        })
    }

    fn remove_device(&mut self, spec: &DeviceSpec) -> Result<bool, KernelError> {
        // Its ports and flows go with it.
        let removed = self.ovs.delete_datapath(&spec.name)?;
        self.bridge.forget(&spec.name);
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.spec.name == spec.name)
        {
            self.active = None;
        }
        Ok(removed)
    }
}

impl OvsKernel {
    /// Takes the flows to the table `ops` leads to; the steps that failed, each named by the
    /// FDB step it served.
    fn apply_flows(&mut self, ops: &[FdbOp]) -> Vec<OpFailure> {
        let Some(active) = self.active.as_mut() else {
            return ops
                .iter()
                .map(|op| OpFailure {
                    op: *op,
                    errno: KernelError::NoDevice.errno(),
                    message: KernelError::NoDevice.to_string(),
                })
                .collect();
        };
        let (mut table, _) = active
            .params
            .table(&active.flows.iter().cloned().collect::<Vec<_>>());
        let mut fdb = KernelFdb {
            vxlan: std::mem::take(&mut table),
            bridge: BTreeMap::new(),
        };
        plan::apply(ops, &mut fdb);
        let steps = active.params.plan(&active.flows, &fdb.vxlan, &active.group);
        let mut failures = Vec::new();
        for step in &steps {
            let result = match step {
                FlowOp::Put(flow) => self.ovs.put_flow(active.dp, flow),
                FlowOp::Delete(matching) => self.ovs.delete_flow(active.dp, matching).map(drop),
            };
            match result {
                Ok(()) => flows::apply(std::slice::from_ref(step), &mut active.flows),
                Err(e) => failures.extend(blame(step, ops, &e)),
            }
        }
        failures
    }
}

/// The bridge-port flags of the datapath's local port: no learning, no unknown-unicast
/// flooding (unknown unicast travels the sleeve's tree only), but multicast and broadcast
/// flooded in, for the group flow's head-end replication (`docs/datapaths.md`).
const GROUP_FLOOD: PortFlags = PortFlags {
    learning: false,
    unicast_flood: false,
    mcast_flood: true,
    bcast_flood: true,
};

/// The FDB steps a failed flow step served: an outbound flow's MAC, or every step toward an
/// inbound flow's peer.
fn blame(step: &FlowOp, ops: &[FdbOp], error: &KernelError) -> Vec<OpFailure> {
    let matching = match step {
        FlowOp::Put(flow) => flow.matching,
        FlowOp::Delete(matching) => *matching,
    };
    let eth_dst = matching.eth_dst.and_then(|d| d.as_exact());
    let served = |op: &FdbOp| match (*op, eth_dst, matching.tunnel) {
        (FdbOp::VxlanSet { mac, .. } | FdbOp::VxlanDel { mac }, Some(dst), None) => mac == dst,
        (FdbOp::VxlanSet { dst, .. }, None, Some(t)) => dst == t.src,
        _ => false,
    };
    let mut blamed: Vec<OpFailure> = ops
        .iter()
        .filter(|op| served(op))
        .map(|op| OpFailure {
            op: *op,
            errno: error.errno(),
            message: error.to_string(),
        })
        .collect();
    if blamed.is_empty() {
        // A peer's inbound flow left over after its last MAC went: blame the first removal.
        if let Some(op) = ops.iter().find(|op| matches!(op, FdbOp::VxlanDel { .. })) {
            blamed.push(OpFailure {
                op: *op,
                errno: error.errno(),
                message: error.to_string(),
            });
        }
    }
    blamed
}

#[cfg(test)]
mod tests;
