//! The kernel side of the VXLAN fast path: the VXLAN device on the weft bridge and the two
//! forwarding tables weft manages (the device's own entries, and the bridge's static entries on
//! the VXLAN and TAP ports), behind [`VxlanKernel`] so that the engine can be tested with
//! [`RecordingKernel`]. The real edge is [`NetlinkKernel`] (rtnetlink, no `ip` binary).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::plan::{BridgePort, FdbOp, KernelFdb};
use crate::mac::Mac;

mod netlink;

pub use netlink::NetlinkKernel;

/// The VXLAN device weft wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// `{bridge}-vxlan`.
    pub name: String,
    /// The bridge it is a port of.
    pub bridge: String,
    pub vni: u32,
    /// Its UDP port (local and remote).
    pub port: u16,
    /// The VXLAN overlay MTU.
    pub mtu: u16,
}

/// The device as `ensure_device` left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceState {
    pub index: u32,
    pub bridge_index: u32,
    /// It was there already (left by an earlier router), with the same kind, VNI and port.
    pub adopted: bool,
}

/// A kernel operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel (or the socket) refused: what was being done, and its error.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The bridge the device should be a port of does not exist.
    #[error("no bridge {0}")]
    NoBridge(String),
    /// No VXLAN device has been set up yet (or it has been removed).
    #[error("no VXLAN device: ensure_device first")]
    NoDevice,
    /// This kernel has no such backend (e.g. `no openvswitch module`).
    #[error("{0}")]
    Unavailable(String),
}

impl KernelError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        KernelError::Io {
            what: what.into(),
            source,
        }
    }

    /// The errno, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Io { source, .. } => source.raw_os_error(),
            KernelError::NoBridge(_) | KernelError::NoDevice => Some(libc::ENODEV),
            KernelError::Unavailable(_) => Some(libc::ENOENT),
        }
    }
}

/// One FDB step that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    pub op: FdbOp,
    /// The kernel's errno, when it gave one.
    pub errno: Option<i32>,
    pub message: String,
}

/// The steps of one `apply` that failed (every step is tried; the others took effect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} of {attempted} FDB operations failed: {}", failures.len(), describe(failures))]
pub struct ApplyErrors {
    /// How many steps were tried (all of them).
    pub attempted: usize,
    pub failures: Vec<OpFailure>,
}

impl ApplyErrors {
    /// `Ok` when no step of the `attempted` failed.
    pub fn check(attempted: usize, failures: Vec<OpFailure>) -> Result<(), ApplyErrors> {
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ApplyErrors {
                attempted,
                failures,
            })
        }
    }
}

fn describe(failures: &[OpFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("{}: {}", format_op(&f.op), f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn mac_str(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `vxlan set 02:..:01 dst 10.0.0.2`, as in error messages and logs.
pub fn format_op(op: &FdbOp) -> String {
    match *op {
        FdbOp::VxlanSet { mac, dst } => format!("vxlan set {} dst {dst}", mac_str(mac)),
        FdbOp::VxlanDel { mac } => format!("vxlan del {}", mac_str(mac)),
        FdbOp::BridgeSet { mac, port } => format!("bridge set {} port {port:?}", mac_str(mac)),
        FdbOp::BridgeDel { mac } => format!("bridge del {}", mac_str(mac)),
    }
}

/// What a backend shows of itself beyond the FDB (Open vSwitch: its ports, flows, counters).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendDetails {
    /// The datapath's ports, as `<port_no>: <name> (<kind>)`.
    pub ports: Vec<String>,
    pub flows: usize,
    /// Packets that matched a flow, that matched none (misses, sent up as upcalls), and misses
    /// lost (no reader, or its queue full).
    pub hits: u64,
    pub misses: u64,
    pub lost: u64,
    /// Misses weft answered (the flow put, the packet sent on).
    #[serde(default)]
    pub upcalls_answered: u64,
    /// Misses not answered, by why (`unknown_mac`, `unknown_peer`, `wrong_vni`, ...).
    #[serde(default)]
    pub upcalls_unanswered: BTreeMap<String, u64>,
    /// Answerable misses over the rate limit (dropped, counted).
    #[serde(default)]
    pub upcalls_rate_limited: u64,
    /// Answered, but the flow's put or the packet's execute failed.
    #[serde(default)]
    pub upcalls_failed: u64,
    /// Flows deleted after carrying no packet for the idle timeout.
    #[serde(default)]
    pub flows_expired: u64,
}

/// The kernel edge of the VXLAN fast path.
pub trait VxlanKernel: Send {
    /// Creates the device (kind vxlan, VNI, UDP port, learning off, outer DF set, MTU, on the
    /// bridge, up, with the bridge-port flags learning/flood/mcast_flood/bcast_flood off), or
    /// adopts one of that name with the same kind, VNI and port (MTU, master, up and the port
    /// flags set again). A device of that name that differs is deleted and made anew.
    fn ensure_device(&mut self, spec: &DeviceSpec) -> Result<DeviceState, KernelError>;
    /// Only weft's entries: the VXLAN device's own entries (MAC → underlay), and the bridge's
    /// static entries on the VXLAN port or on the TAP port named `tap`.
    fn read_fdb(&mut self, tap: &str) -> Result<KernelFdb, KernelError>;
    /// Tries every step in order; lists those that failed. Deleting an entry that is already
    /// gone is no failure.
    fn apply(&mut self, tap: &str, ops: &[FdbOp]) -> Result<(), ApplyErrors>;
    /// The bridge's local entry (`bridge fdb add <mac> dev <bridge> self permanent`) for this
    /// router's heartbeat MAC, so heartbeats go up to the bridge device and never to pods.
    /// Idempotent.
    fn set_local_heartbeat_mac(&mut self, mac: Mac) -> Result<(), KernelError>;
    /// Makes `port` (the sleeve's TAP) and the VXLAN device *isolated* bridge ports: neither
    /// forwards to the other. A frame that came in through VXLAN for a MAC the bridge does not
    /// know (a pod that just left) is flooded to pods only, never into the sleeve, which would
    /// take its sender for a local pod; and the sleeve never sends into VXLAN. Idempotent.
    fn isolate(&mut self, port: &str) -> Result<(), KernelError>;
    /// Deletes the device (and with it its entries); `false` if there was none.
    fn remove_device(&mut self, spec: &DeviceSpec) -> Result<bool, KernelError>;
    /// Head-end replication: the multicast and broadcast frames this host's bridge floods to
    /// the fast port go, one copy each, to the peers at `dsts` and nowhere else (none: they
    /// are dropped there). `Ok(false)`: this backend does not replicate (the VXLAN device,
    /// whose port floods nothing: the sleeve carries every group frame). Idempotent.
    fn set_group_dsts(&mut self, dsts: &BTreeSet<Ipv4Addr>) -> Result<bool, KernelError> {
        let _ = dsts;
        Ok(false)
    }
    /// The backend's own state, for status (the VXLAN device has nothing beyond its FDB).
    fn details(&mut self) -> Option<BackendDetails> {
        None
    }
}

/// A call made on a [`RecordingKernel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelCall {
    EnsureDevice(DeviceSpec),
    ReadFdb { tap: String },
    Apply { tap: String, ops: Vec<FdbOp> },
    SetLocalHeartbeatMac(Mac),
    Isolate(String),
    RemoveDevice(DeviceSpec),
    SetGroupDsts(BTreeSet<Ipv4Addr>),
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<KernelCall>,
    device: Option<(DeviceSpec, u32)>,
    bridge_index: u32,
    next_index: u32,
    fdb: KernelFdb,
    local_macs: BTreeSet<Mac>,
    /// The group's peers, once set (a backend that replicates, as Open vSwitch).
    group: Option<BTreeSet<Ipv4Addr>>,
    fail_ops: Vec<(usize, i32)>,
    fail_ensure: Option<(usize, i32)>,
    fail_read: Option<(usize, i32)>,
}

/// Takes one from a "fail the next n" budget; the errno if this call fails.
fn take(budget: &mut Option<(usize, i32)>) -> Option<i32> {
    let (n, errno) = (*budget)?;
    *budget = (n > 1).then_some((n - 1, errno));
    Some(errno)
}

/// An in-memory kernel: holds one device and the two tables, applies steps the way the kernel
/// does, records every call, and fails on demand. Clones share the same state, so a test can
/// keep one while the engine owns another.
#[derive(Debug, Clone, Default)]
pub struct RecordingKernel {
    inner: Arc<Mutex<Recorded>>,
}

impl RecordingKernel {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<KernelCall> {
        self.lock().calls.clone()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The tables as they are now.
    pub fn fdb(&self) -> KernelFdb {
        self.lock().fdb.clone()
    }

    /// The device as it is now.
    pub fn device(&self) -> Option<DeviceSpec> {
        self.lock().device.as_ref().map(|(s, _)| s.clone())
    }

    /// The bridge's local (heartbeat) entries.
    pub fn local_macs(&self) -> BTreeSet<Mac> {
        self.lock().local_macs.clone()
    }

    /// The peers group frames are replicated to, once set.
    pub fn group(&self) -> Option<BTreeSet<Ipv4Addr>> {
        self.lock().group.clone()
    }

    /// As left by an earlier router: this device, with these entries.
    pub fn preset(&self, spec: DeviceSpec, fdb: KernelFdb) {
        let mut r = self.lock();
        r.next_index += 1;
        let index = 100 + r.next_index;
        r.device = Some((spec, index));
        r.fdb = fdb;
    }

    /// The next `n` FDB steps fail with `errno` (and change nothing).
    pub fn fail_next_ops(&self, n: usize, errno: i32) {
        if n > 0 {
            self.lock().fail_ops.push((n, errno));
        }
    }

    /// The next `n` `ensure_device` calls fail with `errno`.
    pub fn fail_next_ensure(&self, n: usize, errno: i32) {
        self.lock().fail_ensure = (n > 0).then_some((n, errno));
    }

    /// The next `n` `read_fdb` calls fail with `errno`.
    pub fn fail_next_reads(&self, n: usize, errno: i32) {
        self.lock().fail_read = (n > 0).then_some((n, errno));
    }
}

fn errno_error(what: &str, errno: i32) -> KernelError {
    KernelError::io(what, io::Error::from_raw_os_error(errno))
}

impl VxlanKernel for RecordingKernel {
    fn ensure_device(&mut self, spec: &DeviceSpec) -> Result<DeviceState, KernelError> {
        let mut r = self.lock();
        r.calls.push(KernelCall::EnsureDevice(spec.clone()));
        if let Some(errno) = take(&mut r.fail_ensure) {
            return Err(errno_error(&format!("create {}", spec.name), errno));
        }
        if r.bridge_index == 0 {
            r.bridge_index = 2;
        }
        let bridge_index = r.bridge_index;
        let same = |s: &DeviceSpec| s.name == spec.name && s.vni == spec.vni && s.port == spec.port;
        if let Some((existing, index)) = r.device.clone() {
            if same(&existing) {
                r.device = Some((spec.clone(), index));
                return Ok(DeviceState {
                    index,
                    bridge_index,
                    adopted: true,
                });
            }
            // Deleted with its own entries and the bridge's entries on its port.
            r.fdb.vxlan.clear();
            r.fdb.bridge.retain(|_, p| *p != BridgePort::Vxlan);
        }
        r.next_index += 1;
        let index = 100 + r.next_index;
        r.device = Some((spec.clone(), index));
        Ok(DeviceState {
            index,
            bridge_index,
            adopted: false,
        })
    }

    fn read_fdb(&mut self, tap: &str) -> Result<KernelFdb, KernelError> {
        let mut r = self.lock();
        r.calls.push(KernelCall::ReadFdb { tap: tap.into() });
        if let Some(errno) = take(&mut r.fail_read) {
            return Err(errno_error("dump the FDB", errno));
        }
        if r.device.is_none() {
            return Err(KernelError::NoDevice);
        }
        Ok(r.fdb.clone())
    }

    fn apply(&mut self, tap: &str, ops: &[FdbOp]) -> Result<(), ApplyErrors> {
        let mut r = self.lock();
        r.calls.push(KernelCall::Apply {
            tap: tap.into(),
            ops: ops.to_vec(),
        });
        let mut failures = Vec::new();
        let r = &mut *r;
        for op in ops {
            let no_device = r.device.is_none();
            let failed = match r.fail_ops.first_mut() {
                Some((n, errno)) => {
                    let errno = *errno;
                    *n -= 1;
                    if *n == 0 {
                        r.fail_ops.remove(0);
                    }
                    Some(errno)
                }
                None if no_device => Some(libc::ENODEV),
                None => None,
            };
            match failed {
                Some(errno) => failures.push(OpFailure {
                    op: *op,
                    errno: Some(errno),
                    message: io::Error::from_raw_os_error(errno).to_string(),
                }),
                None => crate::vxlan::plan::apply(std::slice::from_ref(op), &mut r.fdb),
            }
        }
        ApplyErrors::check(ops.len(), failures)
    }

    fn set_local_heartbeat_mac(&mut self, mac: Mac) -> Result<(), KernelError> {
        let mut r = self.lock();
        r.calls.push(KernelCall::SetLocalHeartbeatMac(mac));
        if r.device.is_none() {
            return Err(KernelError::NoDevice);
        }
        r.local_macs.insert(mac);
        Ok(())
    }

    fn isolate(&mut self, port: &str) -> Result<(), KernelError> {
        let mut r = self.lock();
        r.calls.push(KernelCall::Isolate(port.to_owned()));
        if r.device.is_none() {
            return Err(KernelError::NoDevice);
        }
        Ok(())
    }

    /// Replicates, as the Open vSwitch backend does; fails with the next FDB step's failure.
    fn set_group_dsts(&mut self, dsts: &BTreeSet<Ipv4Addr>) -> Result<bool, KernelError> {
        let mut r = self.lock();
        r.calls.push(KernelCall::SetGroupDsts(dsts.clone()));
        if r.device.is_none() {
            return Err(KernelError::NoDevice);
        }
        if let Some((n, errno)) = r.fail_ops.first_mut() {
            let errno = *errno;
            *n -= 1;
            if *n == 0 {
                r.fail_ops.remove(0);
            }
            return Err(errno_error("put the group flow", errno));
        }
        r.group = Some(dsts.clone());
        Ok(true)
    }

    fn remove_device(&mut self, spec: &DeviceSpec) -> Result<bool, KernelError> {
        let mut r = self.lock();
        r.calls.push(KernelCall::RemoveDevice(spec.clone()));
        match &r.device {
            Some((s, _)) if s.name == spec.name => {
                r.device = None;
                r.fdb.vxlan.clear();
                r.fdb.bridge.retain(|_, p| *p != BridgePort::Vxlan);
                r.group = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 1];
    const B: Mac = [2, 0, 0, 0, 0, 2];

    fn spec() -> DeviceSpec {
        DeviceSpec {
            name: "weft-vxlan".into(),
            bridge: "weft".into(),
            vni: crate::vxlan::DEFAULT_VNI,
            port: 6784,
            mtu: 1450,
        }
    }

    #[test]
    fn the_fake_creates_then_adopts_and_recreates_a_device_that_differs() {
        let mut k = RecordingKernel::new();
        let first = k.ensure_device(&spec()).unwrap();
        assert!(!first.adopted);
        let again = k.ensure_device(&spec()).unwrap();
        assert!(again.adopted);
        assert_eq!(again.index, first.index);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        k.apply(
            "weft-tap",
            &[
                FdbOp::VxlanSet { mac: A, dst },
                FdbOp::BridgeSet {
                    mac: A,
                    port: BridgePort::Vxlan,
                },
                FdbOp::BridgeSet {
                    mac: B,
                    port: BridgePort::Tap,
                },
            ],
        )
        .unwrap();
        let other = DeviceSpec {
            port: 4789,
            ..spec()
        };
        let new = k.ensure_device(&other).unwrap();
        assert!(!new.adopted);
        assert_ne!(new.index, first.index);
        // The old device's entries went with it; the TAP's stayed.
        let fdb = k.read_fdb("weft-tap").unwrap();
        assert!(fdb.vxlan.is_empty());
        assert_eq!(
            fdb.bridge.into_iter().collect::<Vec<_>>(),
            vec![(B, BridgePort::Tap)]
        );
    }

    #[test]
    fn the_fake_tries_every_op_and_lists_the_failures_with_errnos() {
        let mut k = RecordingKernel::new();
        k.ensure_device(&spec()).unwrap();
        k.fail_next_ops(1, libc::EBUSY);
        let ops = [
            FdbOp::BridgeSet {
                mac: A,
                port: BridgePort::Tap,
            },
            FdbOp::BridgeSet {
                mac: B,
                port: BridgePort::Tap,
            },
        ];
        let err = k.apply("weft-tap", &ops).unwrap_err();
        assert_eq!(err.attempted, 2);
        assert_eq!(err.failures.len(), 1);
        assert_eq!(err.failures[0].op, ops[0]);
        assert_eq!(err.failures[0].errno, Some(libc::EBUSY));
        assert!(
            err.to_string().starts_with(
                "1 of 2 FDB operations failed: bridge set 02:00:00:00:00:01 port Tap: "
            ),
            "{err}"
        );
        assert_eq!(k.fdb().bridge.len(), 1);
        assert_eq!(
            k.calls().last(),
            Some(&KernelCall::Apply {
                tap: "weft-tap".into(),
                ops: ops.to_vec()
            })
        );
        // The budget is spent: the same steps now succeed.
        k.apply("weft-tap", &ops).unwrap();
        assert_eq!(k.fdb().bridge.len(), 2);
    }

    #[test]
    fn the_fake_fails_ensure_on_demand_and_ops_without_a_device() {
        let mut k = RecordingKernel::new();
        assert!(
            k.apply("t", &[FdbOp::VxlanDel { mac: A }])
                .unwrap_err()
                .failures[0]
                .errno
                == Some(libc::ENODEV)
        );
        k.fail_next_ensure(2, libc::EPERM);
        for _ in 0..2 {
            assert_eq!(
                k.ensure_device(&spec()).unwrap_err().errno(),
                Some(libc::EPERM)
            );
        }
        k.ensure_device(&spec()).unwrap();
        k.set_local_heartbeat_mac(A).unwrap();
        k.set_local_heartbeat_mac(A).unwrap();
        assert_eq!(k.local_macs().len(), 1);
        assert!(k.remove_device(&spec()).unwrap());
        assert!(!k.remove_device(&spec()).unwrap());
    }
}
