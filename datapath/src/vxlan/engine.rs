//! The VXLAN engine: one thread (`weft-vxlan`) that sends and receives fast-path heartbeats,
//! feeds each connection's [`Selector`] with their health, and keeps the kernel's FDB as the
//! [`plan`] says.
//!
//! Every 100 ms ([`TICK`]) the thread runs [`Engine::step`]:
//! 1. drain the heartbeats received (only frames that came in on the VXLAN port, addressed to
//!    us, for a connection we have; the rest are counted as rejected);
//! 2. feed each connection's heartbeat health to its selector; a change of datapath is logged
//!    and sent as a [`VxlanEvent::Selected`];
//! 3. rebuild the [`Desired`] FDB (MACs from [`VxlanEngine::set_macs`], each peer's path from
//!    its selector) and, when it changed or every [`REPAIR_INTERVAL`] (to repair drift), plan
//!    against what the kernel holds and apply;
//! 4. (Open vSwitch) keep the group flow replicating this host's own multicast and broadcast
//!    frames to its *fast leaves* ([`Engine::set_group_candidates`] among the connections on
//!    the fast path), and tell the sleeve which peers it serves ([`FastGroupPeers`]);
//! 5. send the heartbeats that are due (after the FDB step, so a new peer's heartbeat MAC entry
//!    exists before its first beat).
//!
//! After a restart the engine adopts what the kernel holds: [`Desired::adopting`] stays set
//! until [`VxlanEngine::set_macs`] brought a non-empty table or [`ADOPT_TIMEOUT`] passed, and a
//! connection still confirming its first choice keeps its peer's entries ([`PeerPath::Keep`]).
//!
//! The engine's state lives in [`Engine`], driven with explicit times so tests run it against
//! recording fakes of the kernel and the packet sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::forward::FastGroupPeers;
use crate::mac::Mac;
use crate::packet::{FramePort, PacketSocket};
use crate::select::{FastHealth, Policy, Selector, SelectorConfig};
use crate::vxlan::VxlanOffer;
use crate::vxlan::fastbeat::{self, FastConfig, FastLiveness};
use crate::vxlan::kernel::{BackendDetails, DeviceSpec, DeviceState, KernelError, VxlanKernel};
use crate::vxlan::plan::{self, Desired, FdbOp, KernelFdb, PeerPath, heartbeat_mac};
use crate::{DatapathKind, ETHERNET_HEADER_LEN, PeerId};

/// How often the engine thread wakes.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a restarted router keeps the kernel's entries while it has not learned the MAC
/// table again.
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The FDB is compared with the kernel's at least this often, even when nothing changed.
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(10);
/// How long a peer whose connection closed keeps its entries as they are, whatever the routes
/// say meanwhile: the mesh's view of who is reachable settles only after the peers' topology
/// updates arrive. A peer still reachable then (relayed) moves to the sleeve; one that is not
/// (its router died) keeps them, so pod traffic to its host goes on in the kernel.
pub const CLOSE_GRACE: Duration = Duration::from_secs(15);
/// Received frames handled per step at most (the rest wait for the next tick).
const MAX_RECEIVE_PER_STEP: usize = 1024;

/// What the engine needs to know about this router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub local: PeerId,
    /// The fast path's backend: [`DatapathKind::Vxlan`] (the device `{bridge}-vxlan`) or
    /// [`DatapathKind::Ovs`] (the datapath `{bridge}-ovs`, whose own port joins the bridge).
    pub kind: DatapathKind,
    /// The bridge pods attach to.
    pub bridge: String,
    /// The sleeve's TAP port on the bridge.
    pub tap: String,
    pub port: u16,
    pub vni: u32,
    pub underlay_mtu: u16,
}

impl VxlanConfig {
    /// The device (the bridge's fast port) this configuration asks for.
    pub fn device_spec(&self) -> Result<DeviceSpec, VxlanError> {
        let mtu = self
            .kind
            .overlay_mtu(self.underlay_mtu, false)
            .ok_or(VxlanError::Mtu(self.underlay_mtu))?;
        let suffix = match self.kind {
            DatapathKind::Ovs => "ovs",
            _ => "vxlan",
        };
        Ok(DeviceSpec {
            name: format!("{}-{suffix}", self.bridge),
            bridge: self.bridge.clone(),
            vni: self.vni,
            port: self.port,
            mtu,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error("an underlay MTU of {0} leaves no room for VXLAN")]
    Mtu(u16),
    #[error("VXLAN device {device}: {source}")]
    Device {
        device: String,
        #[source]
        source: KernelError,
    },
    #[error("local heartbeat MAC on the bridge: {0}")]
    HeartbeatMac(#[source] KernelError),
    #[error("isolating the VXLAN and TAP bridge ports from each other: {0}")]
    Isolate(#[source] KernelError),
    #[error("reading the FDB: {0}")]
    ReadFdb(#[source] KernelError),
    #[error("packet socket for heartbeats on {what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the weft-vxlan thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the engine tells the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VxlanEvent {
    /// A connection changed datapath.
    Selected {
        peer: PeerId,
        conn: u64,
        kind: DatapathKind,
        reason: String,
    },
}

pub type VxlanEventSink = Box<dyn Fn(VxlanEvent) + Send + Sync>;

/// One connection's datapath, for `/report` and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPath {
    pub peer: PeerId,
    pub conn: u64,
    pub datapath: DatapathKind,
    pub reason: String,
    pub in_state: Duration,
    pub transitions: u64,
    /// `starting`, `up`, `down`, or `off` (fast heartbeats not sent on this connection).
    pub fast_health: String,
    pub fast_reason: Option<String>,
    pub heartbeat_age: Option<Duration>,
    pub underlay: SocketAddr,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
}

/// The engine's state, for `/report` (`datapath.vxlan`, as serialized here) and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VxlanReport {
    /// The device (`weft-vxlan`), or "" when the fast path is off.
    pub device: String,
    pub port: u16,
    pub vni: u32,
    pub mtu: u16,
    /// Whether the device was there already (a restart adopting it).
    pub adopted: bool,
    /// Still keeping what the kernel held (after a restart, until the MAC table is learned).
    pub adopting: bool,
    /// Entries weft holds in the VXLAN device's and the bridge's FDB (as last read, with the
    /// steps applied since).
    pub fdb_vxlan: usize,
    pub fdb_bridge: usize,
    /// FDB operations applied, and those that failed.
    pub fdb_ops: u64,
    pub fdb_errors: u64,
    /// Why the fast path is off, or the last error applying forwarding entries.
    #[serde(rename = "error")]
    pub last_error: Option<String>,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Frames on the heartbeat socket that were not a beat for one of our connections.
    pub heartbeats_rejected: u64,
    pub heartbeat_send_errors: u64,
    /// The backend: `vxlan` or `ovs`.
    pub backend: String,
    /// The backend's own state (Open vSwitch: ports, flows, hits, misses), as of the last
    /// repair.
    pub details: Option<BackendDetails>,
    /// The peers (underlay addresses) the kernel sends this host's own group frames to
    /// (Open vSwitch's head-end replication), as last set.
    #[serde(default)]
    pub group_dsts: Vec<Ipv4Addr>,
}

/// One peer connection.
struct Conn {
    conn: u64,
    underlay: Ipv4Addr,
    selector: Selector,
    /// Present while fast heartbeats are sent on this connection.
    live: Option<FastLiveness>,
    health: FastHealth,
}

/// The engine's state and its step, with the time passed in.
pub struct Engine {
    config: VxlanConfig,
    spec: DeviceSpec,
    device: DeviceState,
    kernel: Box<dyn VxlanKernel>,
    send: Box<dyn FramePort>,
    recv: Box<dyn FramePort>,
    events: VxlanEventSink,
    started: Instant,
    conns: BTreeMap<PeerId, Conn>,
    reachable: BTreeSet<PeerId>,
    /// Peers whose connection closed, and when (see [`CLOSE_GRACE`]).
    closed: BTreeMap<PeerId, Instant>,
    macs: BTreeMap<Mac, PeerId>,
    macs_learned: bool,
    /// The MAC table changed since the last reconcile.
    macs_changed: bool,
    last_shape: Option<Shape>,
    last_reconcile: Option<Instant>,
    /// What the kernel holds: as read at the last repair, with our applied steps since. Read
    /// again only for the repair (every [`REPAIR_INTERVAL`]) or after a step failed, not for
    /// every change: a dump of the bridge's FDB costs as much as the table is large.
    kernel_fdb: KernelFdb,
    kernel_fdb_read: Instant,
    kernel_fdb_stale: bool,
    details: Option<BackendDetails>,
    group: group::Group,
    buf: Vec<u8>,
    fdb_ops: u64,
    fdb_errors: u64,
    last_error: Option<String>,
    sent: u64,
    received: u64,
    rejected: u64,
    send_errors: u64,
}

impl Engine {
    /// Sets up the device and the local heartbeat MAC and reads the FDB; `open_ports` opens
    /// the sending (on the VXLAN device) and receiving (on the bridge) heartbeat sockets.
    pub fn new(
        config: VxlanConfig,
        mut kernel: Box<dyn VxlanKernel>,
        open_ports: impl FnOnce(&DeviceState) -> Result<Ports, VxlanError>,
        events: VxlanEventSink,
        now: Instant,
    ) -> Result<Self, VxlanError> {
        let spec = config.device_spec()?;
        let device = kernel
            .ensure_device(&spec)
            .map_err(|source| VxlanError::Device {
                device: spec.name.clone(),
                source,
            })?;
        kernel
            .set_local_heartbeat_mac(heartbeat_mac(config.local))
            .map_err(VxlanError::HeartbeatMac)?;
        kernel.isolate(&config.tap).map_err(VxlanError::Isolate)?;
        let fdb = kernel.read_fdb(&config.tap).map_err(VxlanError::ReadFdb)?;
        let details = kernel.details();
        info!(
            backend = config.kind.as_str(),
            device = %spec.name,
            port = spec.port,
            vni = spec.vni,
            mtu = spec.mtu,
            adopted = device.adopted,
            fdb_vxlan = fdb.vxlan.len(),
            fdb_bridge = fdb.bridge.len(),
            "kernel fast path ready"
        );
        let (send, recv) = open_ports(&device)?;
        let buf = vec![0; usize::from(spec.mtu) + ETHERNET_HEADER_LEN + 64];
        Ok(Engine {
            config,
            spec,
            device,
            kernel,
            send,
            recv,
            events,
            started: now,
            conns: BTreeMap::new(),
            reachable: BTreeSet::new(),
            closed: BTreeMap::new(),
            macs: BTreeMap::new(),
            macs_learned: false,
            macs_changed: false,
            last_shape: None,
            last_reconcile: None,
            kernel_fdb: fdb,
            kernel_fdb_read: now,
            kernel_fdb_stale: false,
            details,
            group: group::Group::default(),
            buf,
            fdb_ops: 0,
            fdb_errors: 0,
            last_error: None,
            sent: 0,
            received: 0,
            rejected: 0,
            send_errors: 0,
        })
    }

    pub fn offer(&self) -> VxlanOffer {
        VxlanOffer {
            port: self.config.port,
            vni: self.config.vni,
        }
    }

    pub fn device(&self) -> &DeviceState {
        &self.device
    }

    /// A connection to `peer` (replacing an older one to the same peer).
    pub fn add_connection(
        &mut self,
        peer: PeerId,
        conn: u64,
        underlay: Ipv4Addr,
        peer_offer: Option<VxlanOffer>,
        mut policy: Policy,
        now: Instant,
    ) {
        self.closed.remove(&peer);
        let ours = self.offer();
        let peer_offers = peer_offer.is_some();
        if let Some(offer) = peer_offer.filter(|offer| *offer != ours) {
            // The kernel sends to one port and VNI for all peers; a peer on others cannot be
            // reached through this device.
            if policy.local_fast.is_ok() {
                policy.local_fast = Err(format!(
                    "the peer's VXLAN is udp/{} VNI {}, ours udp/{} VNI {}",
                    offer.port, offer.vni, ours.port, ours.vni
                ));
            }
        }
        let selector = Selector::new(SelectorConfig::default(), policy, peer_offers, now);
        let live = selector.probes_fast().then(|| {
            FastLiveness::new(
                FastConfig {
                    local: self.config.local,
                    peer,
                    conn,
                    port: self.config.port,
                    mtu: self.spec.mtu,
                },
                now,
            )
        });
        let health = if live.is_some() {
            FastHealth::Starting
        } else {
            FastHealth::Down {
                reason: selector.current().reason.clone(),
            }
        };
        info!(
            peer = %PeerFmt(peer),
            conn,
            %underlay,
            datapath = ?selector.current().kind,
            reason = %selector.current().reason,
            probes_fast = selector.probes_fast(),
            "connection added to the VXLAN engine"
        );
        if let Some(old) = self.conns.insert(
            peer,
            Conn {
                conn,
                underlay,
                selector,
                live,
                health,
            },
        ) {
            debug!(peer = %PeerFmt(peer), old = old.conn, new = conn, "connection replaced");
        }
    }

    /// Forgets a connection (only if it is still the current one for `peer`).
    pub fn remove_connection(&mut self, peer: PeerId, conn: u64, now: Instant) {
        if self.conns.get(&peer).is_some_and(|c| c.conn == conn) {
            self.conns.remove(&peer);
            self.closed.insert(peer, now);
            debug!(peer = %PeerFmt(peer), conn, "connection removed from the VXLAN engine");
        }
    }

    /// Peers reachable through the mesh (directly or relayed).
    pub fn set_reachable(&mut self, peers: Vec<PeerId>) {
        self.reachable = peers.into_iter().collect();
    }

    /// Every remote MAC and its owner, from MAC gossip.
    pub fn set_macs(&mut self, remote: BTreeMap<Mac, PeerId>) {
        if !remote.is_empty() {
            self.macs_learned = true;
        }
        if remote != self.macs {
            self.macs = remote;
            self.macs_changed = true;
        }
    }

    /// The leaves of this host's own broadcast tree (from the routes): the peers that may get
    /// its group frames from the kernel (see [`Engine::group_wanted`]).
    pub fn set_group_candidates(&mut self, peers: BTreeSet<PeerId>) {
        self.group.candidates = peers;
    }

    /// Where to publish the peers the kernel sends this host's group frames to (the sleeve's
    /// set); published again at the next step.
    pub fn set_group_out(&mut self, out: FastGroupPeers) {
        self.group.out = out;
        self.group.published = None;
    }

    /// One round: heartbeats in, selectors, FDB, group flow, heartbeats out.
    pub fn step(&mut self, now: Instant) {
        self.receive(now);
        self.select(now);
        self.reconcile(now);
        self.replicate(now);
        self.send_due(now);
    }

    fn receive(&mut self, now: Instant) {
        // The sending socket sees the device's heartbeat frames too; nobody reads them there.
        for _ in 0..MAX_RECEIVE_PER_STEP {
            if !matches!(self.send.recv(&mut self.buf), Ok(Some(_))) {
                break;
            }
        }
        for _ in 0..MAX_RECEIVE_PER_STEP {
            let (len, orig) = match self.recv.recv(&mut self.buf) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) => {
                    self.note_error(format!("receiving heartbeats: {e}"));
                    break;
                }
            };
            if orig != self.device.index {
                self.rejected += 1;
                continue;
            }
            let Some(frame) = self.buf.get(..len) else {
                self.rejected += 1;
                continue;
            };
            let beat = match fastbeat::decode(frame) {
                Ok(beat) if beat.receiver == self.config.local => beat,
                Ok(_) | Err(_) => {
                    self.rejected += 1;
                    continue;
                }
            };
            let accepted = self
                .conns
                .get_mut(&beat.sender)
                .and_then(|c| c.live.as_mut())
                .is_some_and(|live| live.on_receive(&beat, now));
            if accepted {
                self.received += 1;
            } else {
                self.rejected += 1;
            }
        }
    }

    fn select(&mut self, now: Instant) {
        for (peer, c) in &mut self.conns {
            let Some(live) = &c.live else { continue };
            c.health = live.health(now);
            if let Some(t) = c.selector.update(&c.health, now) {
                info!(
                    peer = %PeerFmt(*peer),
                    conn = c.conn,
                    from = ?t.from,
                    to = ?t.to,
                    reason = %t.reason,
                    "connection changed datapath"
                );
                (self.events)(VxlanEvent::Selected {
                    peer: *peer,
                    conn: c.conn,
                    kind: t.to,
                    reason: t.reason,
                });
            }
        }
    }

    /// What the FDB should hold now.
    /// What the FDB should hold now.
    pub fn desired(&self, now: Instant) -> Desired {
        self.shape(now).desired(self.macs.clone())
    }

    /// Each peer's path and the heartbeated peers: what decides the FDB besides the MACs.
    fn shape(&self, now: Instant) -> Shape {
        let mut paths = BTreeMap::new();
        let mut heartbeat_peers = BTreeMap::new();
        for (peer, c) in &self.conns {
            let path = if c.selector.current().kind != DatapathKind::Sleeve {
                PeerPath::Fast(c.underlay)
            } else if c.selector.is_starting() {
                PeerPath::Keep
            } else {
                PeerPath::Sleeve
            };
            paths.insert(*peer, path);
            if c.selector.probes_fast() {
                heartbeat_peers.insert(*peer, c.underlay);
            }
        }
        for peer in self.macs.values().chain(&self.reachable) {
            let just_closed = self
                .closed
                .get(peer)
                .is_some_and(|at| now.saturating_duration_since(*at) < CLOSE_GRACE);
            paths
                .entry(*peer)
                .or_insert(if self.reachable.contains(peer) && !just_closed {
                    PeerPath::Sleeve
                } else {
                    PeerPath::Keep
                });
        }
        Shape {
            paths,
            heartbeat_peers,
            adopting: !self.macs_learned
                && now.saturating_duration_since(self.started) < ADOPT_TIMEOUT,
        }
    }

    fn reconcile(&mut self, now: Instant) {
        let shape = self.shape(now);
        let changed = self.macs_changed || self.last_shape.as_ref() != Some(&shape);
        let due = self
            .last_reconcile
            .is_none_or(|at| now.saturating_duration_since(at) >= REPAIR_INTERVAL);
        if !changed && !due {
            return;
        }
        self.last_reconcile = Some(now);
        self.macs_changed = false;
        self.last_shape = Some(shape.clone());
        let read_due = now.saturating_duration_since(self.kernel_fdb_read) >= REPAIR_INTERVAL;
        if read_due || self.kernel_fdb_stale {
            match self.kernel.read_fdb(&self.config.tap) {
                Ok(fdb) => {
                    self.kernel_fdb = fdb;
                    self.kernel_fdb_read = now;
                    self.kernel_fdb_stale = false;
                    self.details = self.kernel.details();
                }
                Err(e) => {
                    self.fdb_errors += 1;
                    self.note_error(format!("reading the FDB: {e}"));
                    return;
                }
            }
        }
        // The MAC table is cloned only here, when something changed (or for the repair).
        let desired = shape.desired(self.macs.clone());
        let ops = plan::plan(&desired, &self.kernel_fdb);
        if ops.is_empty() {
            return;
        }
        let failures = match self.kernel.apply(&self.config.tap, &ops) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.failures,
        };
        let done: Vec<FdbOp> = ops
            .iter()
            .filter(|op| !failures.iter().any(|f| f.op == **op))
            .copied()
            .collect();
        self.fdb_ops += done.len() as u64;
        self.fdb_errors += failures.len() as u64;
        plan::apply(&done, &mut self.kernel_fdb);
        // What a failed step left is not known: read it again next time.
        self.kernel_fdb_stale = !failures.is_empty();
        debug!(ops = ops.len(), failed = failures.len(), "FDB reconciled");
        if let Some(f) = failures.first() {
            self.note_error(format!(
                "{} of {} FDB operations failed, e.g. {}: {}",
                failures.len(),
                ops.len(),
                crate::vxlan::kernel::format_op(&f.op),
                f.message
            ));
        }
    }

    fn send_due(&mut self, now: Instant) {
        for c in self.conns.values_mut() {
            let Some(live) = &mut c.live else { continue };
            while let Some(out) = live.poll_send(now) {
                match fastbeat::encode(&out.beat, out.len, &mut self.buf) {
                    Ok(len) => match self.send.send(&self.buf[..len]) {
                        Ok(()) => self.sent += 1,
                        Err(e) => {
                            self.send_errors += 1;
                            if self.send_errors.is_power_of_two() {
                                warn!(error = %e, len, "sending a fast heartbeat failed");
                            }
                        }
                    },
                    Err(e) => {
                        self.send_errors += 1;
                        self.last_error = Some(format!("encoding a heartbeat: {e}"));
                    }
                }
            }
        }
    }

    fn note_error(&mut self, error: String) {
        if self.last_error.as_ref() != Some(&error) {
            warn!(%error, "VXLAN engine");
        }
        self.last_error = Some(error);
    }

    pub fn paths(&self, now: Instant) -> Vec<ConnectionPath> {
        self.conns
            .iter()
            .map(|(peer, c)| {
                let sel = c.selector.current();
                let (fast_health, fast_reason) = match (&c.live, &c.health) {
                    (None, _) => ("off", None),
                    (Some(_), FastHealth::Starting) => ("starting", None),
                    (Some(_), FastHealth::Up) => ("up", None),
                    (Some(_), FastHealth::Down { reason }) => ("down", Some(reason.clone())),
                };
                ConnectionPath {
                    peer: *peer,
                    conn: c.conn,
                    datapath: sel.kind,
                    reason: sel.reason.clone(),
                    in_state: now.saturating_duration_since(sel.since),
                    transitions: sel.transitions,
                    fast_health: fast_health.to_string(),
                    fast_reason,
                    heartbeat_age: c.live.as_ref().and_then(|l| l.heartbeat_age(now)),
                    underlay: SocketAddr::V4(SocketAddrV4::new(c.underlay, self.config.port)),
                    heartbeats_sent: c.live.as_ref().map_or(0, FastLiveness::sent_count),
                    heartbeats_received: c.live.as_ref().map_or(0, FastLiveness::received_count),
                }
            })
            .collect()
    }

    pub fn report(&self, now: Instant) -> VxlanReport {
        VxlanReport {
            device: self.spec.name.clone(),
            port: self.spec.port,
            vni: self.spec.vni,
            mtu: self.spec.mtu,
            adopted: self.device.adopted,
            adopting: self
                .last_shape
                .as_ref()
                .map_or_else(|| self.shape(now).adopting, |s| s.adopting),
            fdb_vxlan: self.kernel_fdb.vxlan.len(),
            fdb_bridge: self.kernel_fdb.bridge.len(),
            fdb_ops: self.fdb_ops,
            fdb_errors: self.fdb_errors,
            last_error: self.last_error.clone(),
            heartbeats_sent: self.sent,
            heartbeats_received: self.received,
            heartbeats_rejected: self.rejected,
            heartbeat_send_errors: self.send_errors,
            backend: self.config.kind.as_str().to_owned(),
            details: self.details.clone(),
            group_dsts: self
                .group
                .kernel
                .iter()
                .flatten()
                .map(|(_, dst)| *dst)
                .collect(),
        }
    }
}

/// The two heartbeat sockets: sending on the VXLAN device, receiving on the bridge.
pub type Ports = (Box<dyn FramePort>, Box<dyn FramePort>);

/// A [`Desired`] without its MAC table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    paths: BTreeMap<PeerId, PeerPath>,
    heartbeat_peers: BTreeMap<PeerId, Ipv4Addr>,
    adopting: bool,
}

impl Shape {
    fn desired(self, remote_macs: BTreeMap<Mac, PeerId>) -> Desired {
        Desired {
            remote_macs,
            paths: self.paths,
            heartbeat_peers: self.heartbeat_peers,
            adopting: self.adopting,
        }
    }
}

/// A peer name as `aa:bb:cc:dd:ee:ff` in logs.
struct PeerFmt(PeerId);

impl std::fmt::Display for PeerFmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            p[0], p[1], p[2], p[3], p[4], p[5]
        )
    }
}

struct Shared {
    engine: Mutex<Engine>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The engine on its thread. Dropping it stops the thread and leaves the device and the FDB
/// as they are (pod traffic on fast connections keeps flowing; the next router adopts them).
pub struct VxlanEngine {
    shared: Arc<Shared>,
    offer: VxlanOffer,
    thread: Option<JoinHandle<()>>,
}

impl VxlanEngine {
    /// Creates or adopts the VXLAN device, opens the heartbeat sockets and starts the thread.
    pub fn start(
        config: VxlanConfig,
        kernel: Box<dyn VxlanKernel>,
        events: VxlanEventSink,
    ) -> Result<Self, VxlanError> {
        let local = config.local;
        Self::start_with(
            config,
            kernel,
            move |device| {
                let send = PacketSocket::open(device.index, fastbeat::ETHERTYPE, false).map_err(
                    |source| VxlanError::Socket {
                        what: "the VXLAN device",
                        source,
                    },
                )?;
                // Incoming on the VXLAN port, before the bridge takes them: `recv` names the
                // VXLAN device (on the bridge, PACKET_ORIGDEV would name the bridge).
                let recv = PacketSocket::open_incoming(
                    device.index,
                    fastbeat::ETHERTYPE,
                    heartbeat_mac(local),
                )
                .map_err(|source| VxlanError::Socket {
                    what: "the VXLAN device (incoming)",
                    source,
                })?;
                Ok((Box::new(send) as Box<dyn FramePort>, Box::new(recv) as _))
            },
            events,
        )
    }

    /// [`start`](Self::start) with other heartbeat ports (tests).
    pub fn start_with(
        config: VxlanConfig,
        kernel: Box<dyn VxlanKernel>,
        open_ports: impl FnOnce(&DeviceState) -> Result<Ports, VxlanError>,
        events: VxlanEventSink,
    ) -> Result<Self, VxlanError> {
        let engine = Engine::new(config, kernel, open_ports, events, Instant::now())?;
        let offer = engine.offer();
        let shared = Arc::new(Shared {
            engine: Mutex::new(engine),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("weft-vxlan".into())
            .spawn(move || run(&thread_shared))
            .map_err(VxlanError::Thread)?;
        Ok(VxlanEngine {
            shared,
            offer,
            thread: Some(thread),
        })
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.shared
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn offer(&self) -> VxlanOffer {
        self.offer
    }

    pub fn add_connection(
        &self,
        peer: PeerId,
        conn: u64,
        underlay: Ipv4Addr,
        peer_offer: Option<VxlanOffer>,
        policy: Policy,
    ) {
        self.engine()
            .add_connection(peer, conn, underlay, peer_offer, policy, Instant::now());
    }

    pub fn remove_connection(&self, peer: PeerId, conn: u64) {
        self.engine().remove_connection(peer, conn, Instant::now());
    }

    pub fn set_reachable(&self, peers: Vec<PeerId>) {
        self.engine().set_reachable(peers);
    }

    pub fn set_macs(&self, remote: BTreeMap<Mac, PeerId>) {
        self.engine().set_macs(remote);
    }

    pub fn set_group_candidates(&self, peers: BTreeSet<PeerId>) {
        self.engine().set_group_candidates(peers);
    }

    pub fn set_group_out(&self, out: FastGroupPeers) {
        self.engine().set_group_out(out);
    }

    pub fn paths(&self) -> Vec<ConnectionPath> {
        self.engine().paths(Instant::now())
    }

    pub fn report(&self) -> VxlanReport {
        self.engine().report(Instant::now())
    }
}

fn run(shared: &Shared) {
    let mut stop = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
    while !*stop {
        drop(stop);
        shared
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .step(Instant::now());
        stop = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
        if !*stop {
            stop = shared
                .wake
                .wait_timeout(stop, TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for VxlanEngine {
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

mod group;
#[cfg(test)]
mod tests;
