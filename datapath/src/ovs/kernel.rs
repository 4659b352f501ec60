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
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::flows::{self, FlowOp, FlowParams};
use super::miss::{IdleExpiry, MissLimiter};
use super::{Flow, FlowAction, FlowEntry, FlowMatch, OvsError, OvsSocket, PortNo, UpcallSocket};
use crate::mac::Mac;
use crate::vxlan::kernel::{
    ApplyErrors, BackendDetails, DeviceSpec, DeviceState, KernelError, NetlinkKernel, OpFailure,
    VxlanKernel,
};
use crate::vxlan::plan::{self, FdbOp, KernelFdb};
use weft_netlink::vxlan::PortFlags;

mod socket_ops;
mod upcall;

use socket_ops::kernel_error;
pub use upcall::{MissCounters, MissHandler, MissOutcome};
use upcall::{Shared, SharedState, UpcallThread, lock};

/// One vport of a datapath, as weft needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vport {
    pub port_no: PortNo,
    pub name: String,
    /// `internal`, `netdev`, `vxlan`, ...
    pub kind: String,
    /// The UDP port, for a VXLAN vport.
    pub vxlan_port: Option<u16>,
    /// Where its misses go (netlink port ids; 0: nowhere).
    pub upcall_pids: Vec<u32>,
}

/// The generic-netlink calls [`OvsKernel`] makes (the socket implements it; tests fake it).
/// Errors carry the request and the kernel's errno ([`KernelError::Io`]).
pub trait OvsOps: Send {
    /// The ifindex of the datapath called `name`, if there is one.
    fn datapath(&mut self, name: &str) -> Result<Option<i32>, KernelError>;
    /// Its lookup counters (`OVS_DP_ATTR_STATS`): hits, misses, lost.
    fn datapath_stats(&mut self, name: &str) -> Result<(u64, u64, u64), KernelError>;
    /// Misses of its local port go to `upcall_pid` (0: nowhere).
    fn create_datapath(&mut self, name: &str, upcall_pid: u32) -> Result<i32, KernelError>;
    /// `false` if there was none.
    fn delete_datapath(&mut self, name: &str) -> Result<bool, KernelError>;
    fn vports(&mut self, dp: i32) -> Result<Vec<Vport>, KernelError>;
    fn create_vxlan_vport(
        &mut self,
        dp: i32,
        name: &str,
        port: u16,
        upcall_pid: u32,
    ) -> Result<PortNo, KernelError>;
    /// Sends the datapath's misses to `upcall_pid` in per-CPU dispatch mode (or sets per-vport
    /// dispatch where the kernel has no per-CPU mode); `true` if per-CPU.
    fn set_datapath_upcall_pid(&mut self, name: &str, upcall_pid: u32)
    -> Result<bool, KernelError>;
    /// Sends the vport's misses to `upcall_pid` from now on.
    fn set_upcall_pid(
        &mut self,
        dp: i32,
        port_no: PortNo,
        upcall_pid: u32,
    ) -> Result<(), KernelError>;
    fn delete_vport(&mut self, dp: i32, port_no: PortNo) -> Result<bool, KernelError>;
    /// Every flow weft's model holds, with its packet counts; flows it cannot hold (another
    /// program's actions or key fields) are deleted on the way.
    fn flows(&mut self, dp: i32) -> Result<Vec<FlowEntry>, KernelError>;
    /// Creates the flow or replaces the actions of the flow with its match.
    fn put_flow(&mut self, dp: i32, flow: &Flow) -> Result<(), KernelError>;
    /// `false` if there was none.
    fn delete_flow(&mut self, dp: i32, matching: &FlowMatch) -> Result<bool, KernelError>;
    /// Runs `actions` on `packet` as if it came in on `in_port` (`OVS_PACKET_CMD_EXECUTE`).
    fn execute(
        &mut self,
        dp: i32,
        packet: &[u8],
        in_port: PortNo,
        actions: &[FlowAction],
    ) -> Result<(), KernelError>;
}

/// The datapath weft works on.
#[derive(Debug, Clone)]
struct Active {
    spec: DeviceSpec,
    dp: i32,
}

/// The Open vSwitch fast path's kernel edge.
///
/// The MAC table the engine sets is the authority and the datapath's flows a cache of it:
/// flows are put when the engine sets an entry, a flow idle for the idle timeout is deleted,
/// and a packet that misses comes up to the upcall thread, which puts the flow the table asks
/// for (within [`super::miss::MISS_RATE_PER_SEC`]) and sends the packet on. What
/// [`VxlanKernel::read_fdb`] reports is the table, not the flows, so the engine's repair does
/// not put back a flow expired for idleness.
pub struct OvsKernel {
    ovs: Box<dyn OvsOps>,
    bridge: NetlinkKernel,
    active: Option<Active>,
    shared: SharedState,
    /// Where the datapath's and vports' misses go: the upcall socket's port id (0: nowhere).
    upcall_pid: u32,
    upcalls: Upcalls,
}

/// The miss path's thread of a real edge: started with the first datapath the edge makes or
/// adopts, so an edge opened only to delete a datapath opens no upcall socket and no thread.
enum Upcalls {
    /// An edge over a fake: misses go nowhere.
    Off,
    NotStarted,
    /// Dropped (stopped and joined) with the edge.
    Running {
        _thread: UpcallThread,
    },
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

/// The name of the VXLAN vport of the datapath `dp_name` (at most 15 bytes, as any netdev's).
pub fn vxlan_vport_name(dp_name: &str) -> String {
    let mut name: String = dp_name.chars().take(12).collect();
    name.push_str("-vx");
    name
}

impl OvsKernel {
    /// The real edge, in the calling thread's network namespace; `Unavailable("no openvswitch
    /// module")` on a kernel without Open vSwitch. Misses go to an upcall thread with its own
    /// sockets, started by the first [`VxlanKernel::ensure_device`] (in the process's
    /// namespace, as the sockets opened here).
    pub fn open() -> Result<Self, KernelError> {
        let ovs = OvsSocket::open().map_err(kernel_error)?;
        let bridge =
            NetlinkKernel::open().map_err(|e| KernelError::io("open an rtnetlink socket", e))?;
        let mut kernel = Self::new(Box::new(ovs), bridge);
        kernel.upcalls = Upcalls::NotStarted;
        Ok(kernel)
    }

    /// Starts the upcall thread of a real edge, once; sets the pid misses are sent to.
    fn start_upcalls(&mut self) -> Result<(), KernelError> {
        if !matches!(self.upcalls, Upcalls::NotStarted) {
            return Ok(());
        }
        let socket =
            UpcallSocket::open().map_err(|e| KernelError::io("open the ovs upcall socket", e))?;
        let answering = OvsSocket::open().map_err(kernel_error)?;
        let pid = socket.pid();
        let thread = UpcallThread::spawn(socket, self.miss_handler(Box::new(answering)))
            .map_err(|e| KernelError::io("start the ovs upcall thread", e))?;
        self.upcall_pid = pid;
        self.upcalls = Upcalls::Running { _thread: thread };
        Ok(())
    }

    /// An edge over `ovs` (the generic-netlink socket, or a fake) and `bridge`, without an
    /// upcall thread (upcall pid 0: the datapath drops misses, counted as lost).
    pub fn new(ovs: Box<dyn OvsOps>, bridge: NetlinkKernel) -> Self {
        Self {
            ovs,
            bridge,
            active: None,
            shared: Arc::new(Mutex::new(Shared::default())),
            upcall_pid: 0,
            upcalls: Upcalls::Off,
        }
    }

    /// A handler of upcalls that answers from this edge's table, over `ops`.
    pub fn miss_handler(&self, ops: Box<dyn OvsOps>) -> MissHandler {
        MissHandler::new(Arc::clone(&self.shared), ops)
    }

    /// How long a flow may carry no packet before the sweep deletes it (default
    /// [`super::miss::FLOW_IDLE_TIMEOUT`]).
    pub fn set_idle_timeout(&mut self, idle: Duration) {
        lock(&self.shared).expiry = IdleExpiry::new(idle);
    }

    /// The bound on answered misses (default [`super::miss::MISS_RATE_PER_SEC`] and
    /// [`super::miss::MISS_BURST`]).
    pub fn set_miss_limit(&mut self, per_sec: u32, burst: u32) {
        lock(&self.shared).limiter = MissLimiter::new(per_sec, burst);
    }

    /// The miss path's counters so far.
    pub fn miss_counters(&self) -> MissCounters {
        lock(&self.shared).counters.clone()
    }

    /// Reads the datapath's flows with their packet counts at `now`:
    /// - a flow weft did not make is deleted (the datapath is weft's, and a foreign flow could
    ///   send pod traffic anywhere);
    /// - when `adopt`ing (the datapath was found at start), weft's flows become the table;
    ///   otherwise a flow the table does not ask for (left by a step that failed) is deleted;
    /// - a flow that carried no packet for the idle timeout is deleted: the cache shrinks, the
    ///   table keeps its entry, and the flow's next packet brings it back through a miss.
    ///
    /// Returns the table.
    fn load_flows(
        &mut self,
        now: Instant,
        adopt: bool,
    ) -> Result<BTreeMap<Mac, Ipv4Addr>, KernelError> {
        let mut guard = lock(&self.shared);
        let s = &mut *guard;
        let (dp, params) = s.target.ok_or(KernelError::NoDevice)?;
        let entries = self.ovs.flows(dp)?;
        let (found, foreign) = params.table(entries.iter().map(|e| &e.flow));
        for flow in &foreign {
            tracing::warn!(?flow, "deleting a flow weft did not make");
            self.ovs.delete_flow(dp, &flow.matching)?;
        }
        if adopt {
            s.table = found;
            // The group flow an earlier run left, until the engine sets the peers it knows.
            if let Some(group) = entries.iter().find_map(|e| params.group_dsts(&e.flow)) {
                s.group = group;
            }
        }
        let wanted = params.flows(&s.table, &s.group);
        let mut kept = BTreeSet::new();
        let mut counts = Vec::new();
        for entry in entries {
            if foreign.contains(&entry.flow) {
                continue;
            }
            if !wanted.contains(&entry.flow) {
                tracing::debug!(flow = %super::key::describe(&entry.flow.matching), "deleting a flow the table does not ask for");
                self.ovs.delete_flow(dp, &entry.flow.matching)?;
                continue;
            }
            // The group flow never idles out: without it every group frame would miss, and
            // a miss has no table entry to answer a group address from.
            if entry.flow.matching != params.group_match() {
                counts.push((entry.flow.matching, entry.packets));
            }
            kept.insert(entry.flow);
        }
        for matching in s.expiry.observe(now, counts) {
            match self.ovs.delete_flow(dp, &matching) {
                Ok(_) => {
                    kept.retain(|f| f.matching != matching);
                    s.counters.expired += 1;
                    tracing::debug!(flow = %super::key::describe(&matching), "idle flow expired");
                }
                Err(e) => {
                    tracing::warn!(flow = %super::key::describe(&matching), error = %e, "deleting an idle flow")
                }
            }
        }
        s.flows = kept;
        Ok(s.table.clone())
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
        self.ovs
            .create_vxlan_vport(dp, &name, spec.port, self.upcall_pid)
    }

    /// Points the datapath's misses at this edge's upcall socket in both of the kernel's
    /// dispatch modes, so that whichever mode the datapath is in they come here:
    /// - per vport: the local port's and the VXLAN vport's upcall pids. An adopted datapath
    ///   still names the socket of the router that made it (gone: the kernel counts its misses
    ///   as lost); a vport's upcall pid is set in place (`OVS_VPORT_CMD_SET`), the local
    ///   port's too, so nothing is made anew;
    /// - per CPU (`OVS_DP_CMD_SET` of the features and `OVS_DP_ATTR_PER_CPU_PIDS`), the mode
    ///   weft leaves the datapath in: any `ovs-dpctl` command that opens the datapath switches
    ///   it to per-CPU dispatch (Open vSwitch's own preference) without naming pids, which
    ///   would otherwise send every miss nowhere. Per-CPU pids it keeps.
    fn point_upcalls(&mut self, name: &str, dp: i32, vxlan: PortNo) -> Result<(), KernelError> {
        let pid = self.upcall_pid;
        if pid != 0 {
            let per_cpu = self.ovs.set_datapath_upcall_pid(name, pid)?;
            tracing::debug!(
                datapath = name,
                pid,
                per_cpu,
                "datapath upcalls pointed here"
            );
        }
        for v in self.ovs.vports(dp)? {
            if (v.port_no == 0 || v.port_no == vxlan) && v.upcall_pids != [pid] {
                tracing::info!(port = v.port_no, name = %v.name, from = ?v.upcall_pids, to = pid, "re-pointing a vport's upcalls");
                self.ovs.set_upcall_pid(dp, v.port_no, pid)?;
            }
        }
        Ok(())
    }
}

impl VxlanKernel for OvsKernel {
    fn ensure_device(&mut self, spec: &DeviceSpec) -> Result<DeviceState, KernelError> {
        let bridge_index = self.bridge.pinned_bridge(spec)?;
        self.start_upcalls()?;
        let (dp, adopted) = match self.ovs.datapath(&spec.name)? {
            Some(dp) => (dp, true),
            None => (
                self.ovs.create_datapath(&spec.name, self.upcall_pid)?,
                false,
            ),
        };
        let vxlan = self.ensure_vxlan_vport(dp, spec)?;
        self.point_upcalls(&spec.name, dp, vxlan)?;
        self.active = Some(Active {
            spec: spec.clone(),
            dp,
        });
        {
            let mut s = lock(&self.shared);
            s.target = Some((
                dp,
                FlowParams {
                    local: 0,
                    vxlan,
                    vni: spec.vni,
                    tp_dst: spec.port,
                },
            ));
            s.table.clear();
            s.flows.clear();
        }
        self.load_flows(Instant::now(), true)?;
        // The group flow before the port floods group frames into the datapath: as an earlier
        // run left it (adopted by `load_flows`; the engine replaces it once it knows its
        // peers), or a drop.
        let group = lock(&self.shared).group.clone();
        self.set_group_dsts(&group)?;
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
        // The bridge's entries; the local port holds no forwarding entries of its own. The
        // engine reads at its repair interval: that is when idle flows are swept.
        let mut fdb = self.bridge.read_fdb(tap)?;
        fdb.vxlan = self.load_flows(Instant::now(), false)?;
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

    fn set_group_dsts(&mut self, dsts: &BTreeSet<Ipv4Addr>) -> Result<bool, KernelError> {
        let mut guard = lock(&self.shared);
        let s = &mut *guard;
        let (dp, params) = s.target.ok_or(KernelError::NoDevice)?;
        let flow = params.group(dsts);
        if !s.flows.contains(&flow) {
            // Refused: the datapath holds the flow it held, and so does `group`.
            self.ovs.put_flow(dp, &flow)?;
            flows::apply(&[FlowOp::Put(flow)], &mut s.flows);
        }
        s.group = dsts.clone();
        Ok(true)
    }

    fn details(&mut self) -> Option<BackendDetails> {
        let Active { ref spec, dp } = *self.active.as_ref()?;
        let name = spec.name.clone();
        let (flows, counters) = {
            let s = lock(&self.shared);
            (s.flows.len(), s.counters.clone())
        };
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
            upcalls_answered: counters.answered,
            upcalls_unanswered: counters
                .unanswered
                .iter()
                .map(|(why, n)| (why.as_str().to_owned(), *n))
                .collect(),
            upcalls_rate_limited: counters.rate_limited,
            upcalls_failed: counters.failed,
            flows_expired: counters.expired,
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
            let mut s = lock(&self.shared);
            s.target = None;
            s.table.clear();
            s.flows.clear();
        }
        Ok(removed)
    }
}

impl OvsKernel {
    /// Takes the table where `ops` lead and the flows with it; the steps that failed, each
    /// named by the FDB step it served.
    ///
    /// Flows are put for the entries these steps set (so a new or moved MAC is fast from its
    /// first frame) and replaced where a cached flow's actions changed; cached flows the table
    /// no longer asks for are deleted. A flow expired for idleness is not put back here: its
    /// next miss does that.
    fn apply_flows(&mut self, ops: &[FdbOp]) -> Vec<OpFailure> {
        let mut guard = lock(&self.shared);
        let s = &mut *guard;
        let Some((dp, params)) = s.target else {
            return ops
                .iter()
                .map(|op| OpFailure {
                    op: *op,
                    errno: KernelError::NoDevice.errno(),
                    message: KernelError::NoDevice.to_string(),
                })
                .collect();
        };
        // What the table held for each MAC these steps touch, to put back where a step fails.
        let mut before: BTreeMap<Mac, Option<Ipv4Addr>> = BTreeMap::new();
        for op in ops {
            if let FdbOp::VxlanSet { mac, .. } | FdbOp::VxlanDel { mac } = *op {
                before
                    .entry(mac)
                    .or_insert_with(|| s.table.get(&mac).copied());
            }
        }
        let mut fdb = KernelFdb {
            vxlan: std::mem::take(&mut s.table),
            bridge: BTreeMap::new(),
        };
        plan::apply(ops, &mut fdb);
        s.table = fdb.vxlan;
        let set: BTreeSet<FlowMatch> = ops
            .iter()
            .filter_map(|op| match *op {
                FdbOp::VxlanSet { mac, dst } => Some([
                    params.outbound(mac, dst).matching,
                    params.inbound(dst).matching,
                ]),
                _ => None,
            })
            .flatten()
            .collect();
        let cached: BTreeSet<FlowMatch> = s.flows.iter().map(|f| f.matching).collect();
        let steps: Vec<FlowOp> = params
            .plan(&s.flows, &s.table, &s.group)
            .into_iter()
            .filter(|step| match step {
                FlowOp::Put(flow) => {
                    set.contains(&flow.matching)
                        || cached.contains(&flow.matching)
                        || flow.matching == params.group_match()
                }
                FlowOp::Delete(_) => true,
            })
            .collect();
        let mut failures = Vec::new();
        for step in &steps {
            let result = match step {
                FlowOp::Put(flow) => self.ovs.put_flow(dp, flow),
                FlowOp::Delete(matching) => self.ovs.delete_flow(dp, matching).map(drop),
            };
            match result {
                Ok(()) => flows::apply(std::slice::from_ref(step), &mut s.flows),
                Err(e) => failures.extend(blame(step, ops, &e)),
            }
        }
        // A failed step leaves its MAC as it was in the table, so that the table says what the
        // engine believes and its next plan tries again; a flow it left behind is deleted at
        // the next read.
        for failure in &failures {
            if let FdbOp::VxlanSet { mac, .. } | FdbOp::VxlanDel { mac } = failure.op {
                match before.get(&mac).copied().flatten() {
                    Some(dst) => s.table.insert(mac, dst),
                    None => s.table.remove(&mac),
                };
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
