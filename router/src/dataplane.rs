//! The sleeve dataplane: the router's TAP port on the bridge, one UDP socket, and per-peer
//! sealed links keyed from each control connection's session.
//!
//! Two threads move frames. One drains the TAP (frames local pods send), decides with
//! `forward::from_bridge_to`, packs the frames per next hop into datagrams (`DatagramBatch`),
//! seals them and sends each batch with UDP GSO. The other receives datagrams (recvmmsg with
//! GRO), authenticates them with the sender's link, and delivers each frame to the bridge,
//! relays it, or both (`forward::from_mesh`). The TAP hands over TCP super-segments of up to
//! 64 KiB with the kernel's offload header (`sleeve::offload`); they travel in pieces
//! (`sleeve::fragment`) and reach the destination's TAP whole, so per-packet costs are paid
//! per 64 KiB. Decisions are the datapath crate's pure functions; this module only wires them
//! to sockets. Not yet here (see `docs/sleeve.md`): UDP heartbeats, path-MTU discovery, the
//! MAC gossip channel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_datapath::forward::{self, Decision, Routing};
use weft_datapath::heartbeat::{Health, Liveness, LivenessConfig};
use weft_datapath::mac::{Learned, Mac, MacOwner, MacTable};
use weft_datapath::pmtu::{IPV4_FLOOR, PmtuConfig, PmtuPhase, PmtuProber};
use weft_datapath::sleeve::batch::DatagramBatch;
use weft_datapath::sleeve::codec::{
    BROADCAST, DecapError, Decapsulator, Encapsulator, Frame, FrameKind, KeySchedule,
    datagram_sender,
};
use weft_datapath::sleeve::fragment::{self, Reassembler};
use weft_datapath::sleeve::offload::{VNET_HDR_LEN, VnetHeader};
use weft_datapath::tap::Tap;
use weft_datapath::udp::{RECV_BUFFER_LEN, RecvMeta, UdpEdge};
use weft_datapath::{DatapathKind, ETHERNET_HEADER_LEN, PeerId};
use weft_gossip::PeerName;
use weft_gossip::macs::SharedMacChannel;
use weft_gossip::mesh::ConnKey;
use weft_gossip::routes::{LinkSet, Routes};

use crate::hostnet;

/// IPv4 + UDP headers around every datagram.
const IPV4_UDP: usize = 28;
pub const TAP_NAME_SUFFIX: &str = "-tap";
const RECV_BATCH: usize = 16;
/// A TAP reader sends what it has gathered after this many frames or bytes, whichever comes
/// first, even if more are queued: enough to amortise the syscalls, little enough to keep
/// latency and buffers small.
const TAP_BATCH_FRAMES: usize = 64;
const TAP_BATCH_BYTES: usize = 256 * 1024;
/// The TAP reader wakes up at least this often (for housekeeping) when no frame comes.
const TAP_POLL: Duration = Duration::from_secs(1);
/// How often the housekeeping thread runs: heartbeats, liveness, MAC expiry.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// Heartbeats on a link whose data path works, and on one still starting or down (faster, so
/// a new or healed link is confirmed quickly).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const HEARTBEAT_INTERVAL_UNCONFIRMED: Duration = Duration::from_millis(200);
/// A path-MTU probe unanswered this long is lost (hosts of one cluster are milliseconds
/// apart); three losses and its size counts as too big.
const PMTU_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often expired MAC entries are removed (and local ones withdrawn from gossip).
const MAC_EXPIRY_EVERY: Duration = Duration::from_secs(10);
/// The offload header the TAP gets with frames that need nothing from its kernel.
const NO_OFFLOAD: [u8; VNET_HDR_LEN] = VnetHeader::NONE.to_bytes();

/// Sealing keys of one link: (ours to the peer, the peer's to us).
pub type LinkKeys = (KeySchedule, KeySchedule);

/// What the dataplane tells the router actor.
#[derive(Debug)]
pub enum DataplaneEvent {
    /// A pod's MAC appeared on the local bridge (or came back after expiring): claim it in the
    /// MAC-to-peer gossip channel.
    LocalMac(Mac),
    /// Local MACs not seen for the expiry time: withdraw them.
    LocalMacsGone(Vec<Mac>),
    /// The data path of the link to `peer` (connection `conn`) started or stopped working.
    LinkHealth {
        peer: PeerName,
        conn: ConnKey,
        up: bool,
        reason: Option<String>,
    },
}

/// How the sleeve is set up on this host.
#[derive(Debug, Clone)]
pub struct SleeveConfig {
    /// The bridge pods attach to.
    pub bridge: String,
    /// UDP port, the same number as the mesh's TCP port.
    pub port: u16,
    /// MTU of the host's network; the path MTU to peers is at most this.
    pub underlay_mtu: u16,
    /// Seal every datagram (the mesh has a password).
    pub encrypted: bool,
}

/// Where the dataplane's events go; called from its threads, so it must not block.
pub type EventSink = Box<dyn Fn(DataplaneEvent) + Send + Sync>;

#[derive(Debug, Default)]
struct Counters {
    frames_out: AtomicU64,
    frames_in: AtomicU64,
    datagrams_out: AtomicU64,
    datagrams_in: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    relayed: AtomicU64,
    reassembled: AtomicU64,
    drop_no_route: AtomicU64,
    drop_too_big: AtomicU64,
    drop_auth: AtomicU64,
    drop_replay: AtomicU64,
    drop_malformed: AtomicU64,
    drop_unknown_sender: AtomicU64,
    /// Datagrams that failed before authentication (forgeries may name any peer).
    drop_unauthenticated: AtomicU64,
    drop_incomplete: AtomicU64,
    icmp_too_big: AtomicU64,
    send_errors: AtomicU64,
    tap_write_errors: AtomicU64,
}

/// The dataplane as shown in `/report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatapathReport {
    pub kind: String,
    pub bridge: String,
    /// MTU of the bridge and its ports: the largest packet a pod may send.
    pub mtu: u16,
    pub encrypted: bool,
    /// The TAP hands over super-segments and partial checksums (`IFF_VNET_HDR` offloads).
    pub offloads: bool,
    pub links: usize,
    pub macs: usize,
    /// Ethernet frames (super-segments count once) sent to peers / delivered to the bridge.
    pub frames_out: u64,
    pub frames_in: u64,
    /// UDP datagrams and their bytes, sent / received and authenticated.
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub relayed: u64,
    /// Super-segments put back together from pieces.
    pub reassembled: u64,
    pub drops: DropsReport,
    /// The MAC table: where each pod MAC seen lately lives.
    pub mac_table: Vec<MacReport>,
    /// Live claims in the MAC-to-peer gossip channel (all hosts' pods).
    pub gossiped_macs: usize,
    /// What keeps pods from claiming MACs that are not theirs.
    pub mac_guard: MacGuardReport,
    /// The bridge-port anti-spoofing rules (filled in by the router; None without them).
    pub port_guard: Option<crate::portguard::PortGuardReport>,
}

/// Pinned attachment MACs, the cap on other local MACs, and what they refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MacGuardReport {
    /// MACs of CNI attachments: local whatever data or gossip say.
    pub pinned: usize,
    /// Local MACs learned from data that are not attachments, and their cap.
    pub unattached_local: usize,
    pub max_unattached_local: usize,
    /// New local MACs not learned (nor gossiped) because the cap was reached.
    pub refused_unattached: u64,
    /// Frames from the mesh whose source was a MAC pinned here (not learned).
    pub conflicts: u64,
    /// Claims of learned local MACs not gossiped because they came too fast.
    pub gossip_rate_limited: u64,
    /// Other peers' claims for MACs pinned here, answered with our own.
    pub gossip_conflicts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MacReport {
    pub mac: String,
    /// `local`, or the name of the peer the MAC lives behind.
    pub owner: String,
    /// Seconds since a frame from the MAC was seen (or gossip said where it is).
    pub age_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropsReport {
    pub no_route: u64,
    pub too_big: u64,
    pub auth: u64,
    pub replay: u64,
    pub malformed: u64,
    pub unknown_sender: u64,
    /// Datagrams that failed before authentication (bad tag, stale epoch, malformed header):
    /// counted here only, never on the link their header names, which a forger chooses.
    pub unauthenticated: u64,
    /// Super-segments given up because a piece never came.
    pub incomplete: u64,
    /// Of the `too_big` drops, those answered with ICMP "fragmentation needed" / "packet too
    /// big" toward the pod.
    pub too_big_answered: u64,
    /// Datagrams the kernel refused to send, frames it refused from the TAP.
    pub send_errors: u64,
    pub tap_write_errors: u64,
}

impl DropsReport {
    /// The drops by reason, named as the `reason` label of the drop metric. Not in it:
    /// `too_big_answered`, which counts some of the `too_big` drops again.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("unauthenticated", self.unauthenticated),
            ("no_route", self.no_route),
            ("too_big", self.too_big),
            ("auth", self.auth),
            ("replay", self.replay),
            ("malformed", self.malformed),
            ("unknown_sender", self.unknown_sender),
            ("incomplete", self.incomplete),
            ("send_error", self.send_errors),
            ("tap_write_error", self.tap_write_errors),
        ]
    }
}

struct PeerLink {
    peer: PeerName,
    conn: ConnKey,
    addr: SocketAddr,
    /// The header every datagram to the peer starts with ([`Encapsulator::begin`]): it depends
    /// only on the sender and whether the link seals, so batches take it from here and lock
    /// `encap` only to seal.
    header: Box<[u8]>,
    encap: Mutex<Encapsulator>,
    decap: Mutex<Decapsulator>,
    /// When an authenticated datagram last came from the peer: nanoseconds since the
    /// dataplane's epoch, 0 for never. Written per datagram, so an atomic, not the lock.
    last_heard: AtomicU64,
    /// The largest UDP payload to the peer: the path MTU found by probing, less IP and UDP.
    max_datagram: AtomicUsize,
    state: Mutex<LinkState>,
    counters: LinkCounters,
}

/// What the housekeeping thread keeps per link.
struct LinkState {
    liveness: Liveness,
    last_heartbeat: Option<Instant>,
    pmtu: PmtuProber,
    /// The path MTU search has finished at least once; until then the link carries no data
    /// (a path MTU still rising from the floor would make pods cache a tiny one).
    pmtu_settled: bool,
    /// What the router was last told: the data path works.
    reported_up: bool,
}

impl LinkState {
    /// Whether [`data_path`](Self::data_path) is [`Health::Up`], without building a reason.
    fn data_path_up(&self, now: Instant) -> bool {
        self.pmtu_settled && self.liveness.is_up(now)
    }

    /// Whether the link carries data, and if not, why.
    fn data_path(&self, now: Instant) -> (Health, Option<String>) {
        match self.liveness.health(now) {
            Health::Up if !self.pmtu_settled => {
                let state = self.pmtu.state();
                let probing = match state.phase {
                    PmtuPhase::Probing {
                        probe: Some(size), ..
                    } => format!(", probing {size}"),
                    _ => String::new(),
                };
                let reason = format!("measuring the path MTU ({}{probing})", state.reason);
                (Health::Starting, Some(reason))
            }
            Health::Down { reason } => (
                Health::Down {
                    reason: reason.clone(),
                },
                Some(reason),
            ),
            health => (health, None),
        }
    }
}

#[derive(Debug, Default)]
struct LinkCounters {
    datagrams_out: AtomicU64,
    bytes_out: AtomicU64,
    datagrams_in: AtomicU64,
    bytes_in: AtomicU64,
    drop_auth: AtomicU64,
    drop_replay: AtomicU64,
    drop_malformed: AtomicU64,
    send_errors: AtomicU64,
}

/// One link (peer connection) as shown in `/report`, under its connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkReport {
    pub peer: String,
    /// `sleeve`.
    pub datapath: String,
    pub encrypted: bool,
    /// `starting`, `up` or `down`.
    pub health: String,
    /// Why the data path is down (or not yet up).
    pub reason: Option<String>,
    /// `confirmed`, or `probing` while the path MTU search runs.
    pub pmtu: String,
    /// Milliseconds since the last authenticated datagram from the peer.
    pub heartbeat_age_ms: Option<u64>,
    /// The largest UDP datagram (IP packet) sent to the peer, and the largest packet a pod can
    /// send through this link.
    pub path_mtu: u16,
    pub overlay_mtu: u16,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub drops: LinkDropsReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkDropsReport {
    /// Always 0 since datagrams failing authentication are counted globally
    /// (`datapath.drops.unauthenticated`); kept because report fields are never removed.
    pub auth: u64,
    pub replay: u64,
    pub malformed: u64,
    pub send_errors: u64,
}

impl LinkDropsReport {
    /// The drops by reason, named as the `reason` label of the per-link drop metric.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("auth", self.auth),
            ("replay", self.replay),
            ("malformed", self.malformed),
            ("send_error", self.send_errors),
        ]
    }
}

/// `gossip::Routes` seen through the datapath's `Routing` trait.
struct RouteSnapshot {
    local: PeerName,
    routes: Routes,
}

impl Routing for RouteSnapshot {
    fn local(&self) -> PeerId {
        self.local.to_bytes()
    }

    fn next_hop(&self, dst: PeerId) -> Option<PeerId> {
        let hop = self
            .routes
            .unicast(LinkSet::EstablishedSymmetric, PeerName::from_bytes(dst))?;
        Some(hop.to_bytes())
    }

    fn broadcast_hops(&self, origin: PeerId) -> Vec<PeerId> {
        let hops = self
            .routes
            .broadcast(LinkSet::EstablishedSymmetric, PeerName::from_bytes(origin));
        hops.into_iter().map(PeerName::to_bytes).collect()
    }
}

struct Shared {
    local: PeerName,
    bridge: String,
    mtu: u16,
    encrypted: bool,
    offloads: bool,
    /// MTU of the underlay: the largest path MTU probed.
    underlay_mtu: u16,
    tap: Tap,
    udp: UdpEdge,
    links: RwLock<HashMap<PeerId, Arc<PeerLink>>>,
    routes: RwLock<Arc<RouteSnapshot>>,
    macs: Mutex<MacTable>,
    /// Identifies the super-segments this router cuts into pieces.
    next_fragment_id: AtomicU32,
    counters: Counters,
    /// The MAC-to-peer gossip channel, consulted for destinations data has not taught yet.
    gossip_macs: SharedMacChannel,
    events: EventSink,
    /// Time origin of `PeerLink::last_heard`.
    epoch: Instant,
}

pub struct Dataplane {
    shared: Arc<Shared>,
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for the read side of an `RwLock`.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for the write side of an `RwLock`.
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Dataplane {
    /// Sets up the bridge and its TAP port, binds the UDP port, and starts the threads.
    pub fn start(
        local: PeerName,
        config: &SleeveConfig,
        routes: Routes,
        gossip_macs: SharedMacChannel,
        events: EventSink,
    ) -> io::Result<Dataplane> {
        let SleeveConfig {
            ref bridge,
            port,
            underlay_mtu,
            encrypted,
        } = *config;
        let bridge = bridge.as_str();
        let mtu = DatapathKind::Sleeve
            .overlay_mtu(underlay_mtu, encrypted)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("underlay MTU {underlay_mtu} is too small"),
                )
            })?;
        let tap_name = format!("{bridge}{TAP_NAME_SUFFIX}");
        hostnet::ensure_bridge(bridge, mtu)?;
        let tap = Tap::create(&tap_name, true)?;
        let offloads = match tap.enable_offloads() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "TAP offloads unavailable; the sleeve moves one packet at a time");
                false
            }
        };
        tap.set_nonblocking(true)?;
        hostnet::attach(&tap_name, bridge, mtu)?;
        let udp = UdpEdge::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
        // DF on every datagram: the path-MTU probes depend on it, and a datagram the path
        // cannot carry is better refused (and counted) than fragmented.
        if let Err(e) = udp.set_dont_fragment(true) {
            tracing::warn!(error = %e, "cannot set DF on sleeve datagrams; path-MTU probes may overestimate");
        }
        let shared = Arc::new(Shared {
            local,
            bridge: bridge.to_owned(),
            mtu,
            encrypted,
            offloads,
            underlay_mtu,
            tap,
            udp,
            links: RwLock::new(HashMap::new()),
            routes: RwLock::new(Arc::new(RouteSnapshot { local, routes })),
            macs: Mutex::new(MacTable::default()),
            next_fragment_id: AtomicU32::new(weft_crypto::random_u64() as u32),
            counters: Counters::default(),
            gossip_macs,
            events,
            epoch: Instant::now(),
        });
        for (name, work) in [
            ("weft-tap-rx", tap_loop as fn(&Shared)),
            ("weft-udp-rx", udp_loop),
            ("weft-sleeve-timer", timer_loop),
        ] {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&shared))?;
        }
        tracing::info!(bridge, tap = %tap_name, mtu, port, encrypted, offloads, "sleeve dataplane started");
        Ok(Dataplane { shared })
    }

    /// A connection to `peer` was established: frames to it go to `addr`, sealed with `keys`
    /// (None on a mesh without password). Replaces the link of an older connection.
    pub fn add_peer(
        &self,
        peer: PeerName,
        conn: ConnKey,
        addr: SocketAddr,
        keys: Option<LinkKeys>,
    ) {
        let id = peer.to_bytes();
        let local = self.shared.local.to_bytes();
        let (encap, decap) = match keys {
            Some((send, recv)) => (
                Encapsulator::sealed(local, send),
                Decapsulator::sealed(id, recv),
            ),
            None => (Encapsulator::plain(local), Decapsulator::plain(id)),
        };
        let mut header = Vec::new();
        encap.begin(&mut header);
        let link = PeerLink {
            peer,
            conn,
            addr,
            header: header.into_boxed_slice(),
            encap: Mutex::new(encap),
            decap: Mutex::new(decap),
            last_heard: AtomicU64::new(0),
            max_datagram: AtomicUsize::new(usize::from(IPV4_FLOOR) - IPV4_UDP),
            state: Mutex::new(LinkState {
                liveness: Liveness::new(LivenessConfig::default(), Instant::now()),
                last_heartbeat: None,
                pmtu: PmtuProber::new(PmtuConfig {
                    probe_timeout: PMTU_PROBE_TIMEOUT,
                    ..PmtuConfig::new(IPV4_FLOOR, self.shared.underlay_mtu)
                }),
                pmtu_settled: false,
                reported_up: false,
            }),
            counters: LinkCounters::default(),
        };
        write(&self.shared.links).insert(id, Arc::new(link));
    }

    /// The MAC-to-peer gossip channel the dataplane consults (the mesh hosts it).
    pub fn gossip_macs(&self) -> &SharedMacChannel {
        &self.shared.gossip_macs
    }

    /// `mac` belongs to a CNI attachment here: local in the MAC table whatever data says
    /// (see `weft_datapath::mac`). The caller claims it in gossip.
    pub fn pin_mac(&self, mac: Mac) {
        lock(&self.shared.macs).pin(mac, Instant::now());
    }

    /// The attachment of `mac` is gone.
    pub fn unpin_mac(&self, mac: &Mac) {
        lock(&self.shared.macs).unpin(mac);
    }

    /// The bridge pods attach to.
    pub fn bridge(&self) -> &str {
        &self.shared.bridge
    }

    /// MTU of the bridge and its ports: the largest packet a pod may send.
    pub fn mtu(&self) -> u16 {
        self.shared.mtu
    }

    /// The connection `conn` to `peer` ended; its link goes unless a newer one replaced it.
    pub fn remove_peer(&self, peer: PeerName, conn: ConnKey) {
        let mut links = write(&self.shared.links);
        if links.get(&peer.to_bytes()).is_some_and(|l| l.conn == conn) {
            links.remove(&peer.to_bytes());
        }
        drop(links);
        lock(&self.shared.macs).forget_peer(peer.to_bytes());
    }

    pub fn set_routes(&self, routes: Routes) {
        let snapshot = Arc::new(RouteSnapshot {
            local: self.shared.local,
            routes,
        });
        *write(&self.shared.routes) = snapshot;
    }

    /// Each link's state, for the connections section of the report.
    pub fn links(&self) -> Vec<LinkReport> {
        let s = &self.shared;
        let now = Instant::now();
        let links = s.all_links();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        links
            .iter()
            .map(|link| {
                let state = lock(&link.state);
                let (health, reason) = state.data_path(now);
                let health = match health {
                    Health::Starting => "starting",
                    Health::Up => "up",
                    Health::Down { .. } => "down",
                };
                let path_mtu = state.pmtu.path_mtu();
                let pmtu = match state.pmtu.state().phase {
                    PmtuPhase::Confirmed => "confirmed",
                    PmtuPhase::Probing { .. } => "probing",
                };
                let c = &link.counters;
                LinkReport {
                    peer: link.peer.to_string(),
                    datapath: "sleeve".into(),
                    encrypted: s.encrypted,
                    health: health.into(),
                    reason,
                    pmtu: pmtu.into(),
                    heartbeat_age_ms: state
                        .liveness
                        .heartbeat_age(now)
                        .map(|age| age.as_millis() as u64),
                    path_mtu,
                    overlay_mtu: DatapathKind::Sleeve
                        .overlay_mtu(path_mtu, s.encrypted)
                        .unwrap_or(0),
                    datagrams_out: get(&c.datagrams_out),
                    bytes_out: get(&c.bytes_out),
                    datagrams_in: get(&c.datagrams_in),
                    bytes_in: get(&c.bytes_in),
                    drops: LinkDropsReport {
                        auth: get(&c.drop_auth),
                        replay: get(&c.drop_replay),
                        malformed: get(&c.drop_malformed),
                        send_errors: get(&c.send_errors),
                    },
                }
            })
            .collect()
    }

    pub fn report(&self) -> DatapathReport {
        let s = &self.shared;
        let c = &s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Locks are taken one at a time, in statements of their own: a guard inside the struct
        // literal below would live to its end.
        let links = read(&s.links).len();
        let (mac_entries, mut mac_guard) = {
            let macs = lock(&s.macs);
            let guard = MacGuardReport {
                pinned: macs.pinned(),
                unattached_local: macs.unattached_local(),
                max_unattached_local: macs.max_unattached_local(),
                refused_unattached: macs.local_refusals(),
                conflicts: macs.conflicts(),
                ..MacGuardReport::default()
            };
            (macs.entries(Instant::now()), guard)
        };
        let gossiped_macs = {
            let gossip = s.gossip_macs.lock();
            mac_guard.gossip_rate_limited = gossip.rate_limited();
            mac_guard.gossip_conflicts = gossip.conflicts();
            gossip.live_entries().len()
        };
        DatapathReport {
            kind: "sleeve".into(),
            bridge: s.bridge.clone(),
            mtu: s.mtu,
            encrypted: s.encrypted,
            offloads: s.offloads,
            links,
            macs: mac_entries.len(),
            frames_out: get(&c.frames_out),
            frames_in: get(&c.frames_in),
            datagrams_out: get(&c.datagrams_out),
            datagrams_in: get(&c.datagrams_in),
            bytes_out: get(&c.bytes_out),
            bytes_in: get(&c.bytes_in),
            relayed: get(&c.relayed),
            reassembled: get(&c.reassembled),
            mac_table: mac_entries
                .into_iter()
                .map(|(mac, owner, age)| MacReport {
                    mac: weft_datapath::mac::format_mac(&mac),
                    owner: match owner {
                        MacOwner::Local => "local".into(),
                        MacOwner::Remote(peer) => PeerName::from_bytes(peer).to_string(),
                    },
                    age_secs: age.as_secs(),
                })
                .collect(),
            gossiped_macs,
            mac_guard,
            port_guard: None,
            drops: DropsReport {
                no_route: get(&c.drop_no_route),
                too_big: get(&c.drop_too_big),
                auth: get(&c.drop_auth),
                replay: get(&c.drop_replay),
                malformed: get(&c.drop_malformed),
                unknown_sender: get(&c.drop_unknown_sender),
                unauthenticated: get(&c.drop_unauthenticated),
                incomplete: get(&c.drop_incomplete),
                too_big_answered: get(&c.icmp_too_big),
                send_errors: get(&c.send_errors),
                tap_write_errors: get(&c.tap_write_errors),
            },
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn mac_at(frame: &[u8], at: usize) -> Option<Mac> {
    frame.get(at..at + 6)?.try_into().ok()
}

impl Shared {
    fn routes(&self) -> Arc<RouteSnapshot> {
        read(&self.routes).clone()
    }

    fn link(&self, peer: &PeerId) -> Option<Arc<PeerLink>> {
        read(&self.links).get(peer).cloned()
    }

    /// Every link now, to walk without holding the map's lock.
    fn all_links(&self) -> Vec<Arc<PeerLink>> {
        read(&self.links).values().cloned().collect()
    }

    /// The peer the MAC-to-peer gossip channel says owns `mac`, if another one.
    fn gossiped_owner(&self, mac: &Mac) -> Option<PeerId> {
        if weft_datapath::mac::is_multicast(mac) {
            return None;
        }
        let owner = self.gossip_macs.lock().owner(mac)?;
        (owner != self.local).then(|| owner.to_bytes())
    }

    /// Answers a frame too big for the path it must take with ICMP "fragmentation needed" /
    /// "packet too big" toward its sender, carrying `mtu`. The reply is built in `reply`
    /// (the calling thread's buffer, reused from frame to frame).
    fn too_big(&self, frame: &[u8], mtu: usize, reply: &mut Vec<u8>) {
        bump(&self.counters.drop_too_big);
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        match weft_datapath::icmp::too_big_reply(frame, mtu, reply) {
            Ok(len) => {
                self.deliver(&NO_OFFLOAD, &reply[..len]);
                bump(&self.counters.icmp_too_big);
            }
            Err(e) => tracing::debug!(error = %e, "oversized frame not answered"),
        }
    }

    /// Sends a path-MTU probe of `size` bytes (whole IP packet) to the peer of `link`, alone in
    /// its datagram, with DF set like every sleeve datagram.
    fn send_probe(&self, link: &PeerLink, size: u16, state: &mut LinkState, now: Instant) {
        let mut encap = lock(&link.encap);
        let overhead =
            IPV4_UDP + encap.header_len() + weft_datapath::sleeve::codec::FRAME_HEADER_LEN;
        let padding = vec![0u8; usize::from(size).saturating_sub(overhead)];
        let frame = Frame {
            kind: FrameKind::PmtuProbe,
            src: self.local.to_bytes(),
            dst: link.peer.to_bytes(),
            payload: &padding,
        };
        let mut out = Vec::new();
        if encap.encapsulate(&[frame], usize::MAX, &mut out).is_err() {
            return;
        }
        drop(encap);
        match self.udp.socket().send_to(&out, link.addr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                // The kernel knows the path is smaller (an ICMP error came back earlier).
                let hint = self
                    .udp
                    .path_mtu(link.addr)
                    .ok()
                    .and_then(|mtu| u16::try_from(mtu).ok());
                state.pmtu.on_too_big(hint, now);
            }
            Err(e) => tracing::debug!(error = %e, peer = %link.peer, "path-MTU probe not sent"),
        }
    }

    /// Hands a frame to the local bridge: `header` is its offload header (`NO_OFFLOAD` for a
    /// plain Ethernet frame), `frame` the Ethernet frame.
    fn deliver(&self, header: &[u8], frame: &[u8]) {
        match self.tap.write_parts(header, frame) {
            Ok(()) => bump(&self.counters.frames_in),
            Err(e) => {
                bump(&self.counters.tap_write_errors);
                tracing::debug!(error = %e, "TAP write failed");
            }
        }
    }
}

/// Datagrams being gathered for each next hop by one thread, sent together by `flush`.
struct Outbox {
    hops: Vec<(PeerId, Arc<PeerLink>, DatagramBatch)>,
    /// Entries of `hops` in use; the rest keep their buffers for later batches.
    used: usize,
    /// Where `Shared::too_big` builds its ICMP replies, so oversized frames allocate nothing.
    reply: Vec<u8>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            hops: Vec::new(),
            used: 0,
            reply: Vec::with_capacity(weft_datapath::icmp::MAX_REPLY_LEN),
        }
    }
}

impl Outbox {
    fn batch(&mut self, shared: &Shared, hop: PeerId) -> Option<&mut DatagramBatch> {
        let at = match self.hops[..self.used]
            .iter()
            .position(|(id, ..)| *id == hop)
        {
            Some(at) => at,
            None => {
                let link = shared.link(&hop)?;
                if self.used == self.hops.len() {
                    self.hops.push((hop, link.clone(), DatagramBatch::new()));
                }
                let entry = &mut self.hops[self.used];
                entry.0 = hop;
                entry.1 = link;
                let max_datagram = entry.1.max_datagram.load(Ordering::Relaxed);
                entry.2.reset(&entry.1.header, max_datagram);
                self.used += 1;
                self.used - 1
            }
        };
        Some(&mut self.hops[at].2)
    }

    /// Queues one frame for `hop`; counts it as dropped when there is no link or it is too big.
    fn push(
        &mut self,
        shared: &Shared,
        hop: PeerId,
        kind: FrameKind,
        src: PeerId,
        dst: PeerId,
        parts: &[&[u8]],
    ) -> bool {
        let Some(batch) = self.batch(shared, hop) else {
            bump(&shared.counters.drop_no_route);
            return false;
        };
        match batch.push(kind, src, dst, parts) {
            Ok(()) => true,
            Err(_) => {
                bump(&shared.counters.drop_too_big);
                false
            }
        }
    }

    /// Queues an Ethernet frame read from the TAP for `hop`, in pieces if it does not fit one
    /// datagram.
    fn push_ethernet(
        &mut self,
        shared: &Shared,
        hop: PeerId,
        src: PeerId,
        dst: PeerId,
        tap_frame: &TapFrame<'_>,
    ) -> bool {
        let TapFrame {
            offload,
            raw,
            frame,
        } = *tap_frame;
        let Some(batch) = self.batch(shared, hop) else {
            bump(&shared.counters.drop_no_route);
            return false;
        };
        let max_payload = batch.max_payload();
        if !offload.is_gso() && frame.len() > max_payload {
            // One packet larger than the path to this peer carries: tell the pod, as a router
            // would. (Super-segments are cut into pieces instead: their packets fit the pods'
            // MTU, only the datagrams carrying them would not.)
            shared.too_big(
                frame,
                max_payload.saturating_sub(ETHERNET_HEADER_LEN),
                &mut self.reply,
            );
            return false;
        }
        if offload.is_plain() {
            return batch.push(FrameKind::Ethernet, src, dst, &[frame]).is_ok();
        }
        if raw.len() <= max_payload {
            return batch.push(FrameKind::Offloaded, src, dst, &[raw]).is_ok();
        }
        let id = shared.next_fragment_id.fetch_add(1, Ordering::Relaxed);
        let max_chunk = max_payload.saturating_sub(fragment::FRAGMENT_HEADER_LEN);
        let Some(pieces) = fragment::split(raw, id, max_chunk) else {
            bump(&shared.counters.drop_too_big);
            return false;
        };
        for (header, chunk) in pieces {
            if batch
                .push(FrameKind::Fragment, src, dst, &[&header.to_bytes(), chunk])
                .is_err()
            {
                bump(&shared.counters.drop_too_big);
                return false;
            }
        }
        true
    }

    fn queued_bytes(&self) -> usize {
        self.hops[..self.used]
            .iter()
            .map(|(_, _, b)| b.bytes())
            .sum()
    }

    /// Seals and sends everything gathered, then empties the outbox.
    fn flush(&mut self, shared: &Shared) {
        let counters = &shared.counters;
        for (hop, link, batch) in &mut self.hops[..self.used] {
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = batch.seal(&mut lock(&link.encap)) {
                tracing::error!(error = %e, peer = %PeerName::from_bytes(*hop), "cannot seal for peer");
                continue;
            }
            add(&counters.frames_out, batch.frames());
            for (run, size) in batch.runs() {
                let Ok(segment) = u16::try_from(size) else {
                    continue;
                };
                match shared.udp.send_segments(link.addr, run, segment) {
                    Ok(()) => {
                        let datagrams = run.len().div_ceil(size);
                        add(&counters.datagrams_out, datagrams);
                        add(&counters.bytes_out, run.len());
                        add(&link.counters.datagrams_out, datagrams);
                        add(&link.counters.bytes_out, run.len());
                    }
                    Err(e) => {
                        bump(&counters.send_errors);
                        bump(&link.counters.send_errors);
                        tracing::debug!(error = %e, addr = %link.addr, "sleeve send failed");
                    }
                }
            }
        }
        self.used = 0;
    }
}

/// Frames from local pods, to the mesh.
fn tap_loop(shared: &Shared) {
    let local = shared.local.to_bytes();
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536 + ETHERNET_HEADER_LEN];
    let mut outbox = Outbox::default();
    loop {
        match shared.tap.wait_readable(TAP_POLL) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "TAP poll failed; sleeve stops sending");
                return;
            }
        }
        let routes = shared.routes();
        for _ in 0..TAP_BATCH_FRAMES {
            let n = match shared.tap.read_frame(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "TAP read failed; sleeve stops sending");
                    return;
                }
            };
            from_tap(shared, &routes, local, &buf[..n], &mut outbox);
            if outbox.queued_bytes() >= TAP_BATCH_BYTES {
                outbox.flush(shared);
            }
        }
        outbox.flush(shared);
    }
}

/// A frame as read from the TAP, split once.
#[derive(Clone, Copy)]
struct TapFrame<'a> {
    offload: VnetHeader,
    /// The offload header and the frame, as read.
    raw: &'a [u8],
    /// The Ethernet frame after the offload header.
    frame: &'a [u8],
}

fn from_tap(
    shared: &Shared,
    routes: &RouteSnapshot,
    local: PeerId,
    raw: &[u8],
    outbox: &mut Outbox,
) {
    let Some((offload, frame)) = VnetHeader::split(raw) else {
        return;
    };
    let (Some(dst_mac), Some(src_mac)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
        return;
    };
    if offload.wire_frame_len(frame.len()) > ETHERNET_HEADER_LEN + usize::from(shared.mtu) {
        // Larger than the bridge's MTU (a pod configured with a larger one): say so.
        shared.too_big(frame, usize::from(shared.mtu), &mut outbox.reply);
        return;
    }
    let now = Instant::now();
    let (learned, owner) = {
        let mut macs = lock(&shared.macs);
        let learned = macs.learn(src_mac, MacOwner::Local, now);
        // Group addresses are never learned, from data or gossip: they are flooded.
        let owner = if weft_datapath::mac::is_multicast(&dst_mac) {
            None
        } else if let Some(owner) = macs.lookup(&dst_mac, now) {
            Some(owner)
        } else if let Some(peer) = shared.gossiped_owner(&dst_mac) {
            // Data has not taught us where this MAC is yet, but gossip has: unicast at once
            // instead of flooding. A frame from the MAC will correct the entry if it is stale.
            // (Not learned, when the table refuses it, means still unknown.)
            let owner = MacOwner::Remote(peer);
            macs.learn(dst_mac, owner, now).map(|_| owner)
        } else {
            None
        };
        (learned, owner)
    };
    let decision = forward::from_bridge_to(owner, routes);
    if matches!(learned, Some(Learned::New | Learned::Moved { .. })) {
        (shared.events)(DataplaneEvent::LocalMac(src_mac));
    }
    let tap_frame = TapFrame {
        offload,
        raw,
        frame,
    };
    match decision {
        Decision::Unicast { next_hop, dst } => {
            outbox.push_ethernet(shared, next_hop, local, dst, &tap_frame);
        }
        Decision::Flood { hops, .. } => {
            for hop in hops {
                outbox.push_ethernet(shared, hop, local, BROADCAST, &tap_frame);
            }
        }
        Decision::Local | Decision::Drop(_) => {}
    }
}

/// Datagrams from peers, to local pods and onward.
fn udp_loop(shared: &Shared) {
    let mut bufs = vec![vec![0u8; RECV_BUFFER_LEN]; RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    let mut outbox = Outbox::default();
    let mut reassembler = Reassembler::default();
    let mut abandoned = 0;
    loop {
        let received = match shared.udp.recv_batch(&mut bufs, &mut meta, None) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A queued ICMP error for an earlier send surfaces here; it is not fatal.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let routes = shared.routes();
        for (buf, meta) in bufs.iter_mut().zip(&meta).take(received) {
            let segment = meta.segment.unwrap_or(meta.len).max(1);
            for datagram in buf[..meta.len].chunks_mut(segment) {
                receive(shared, &routes, datagram, &mut outbox, &mut reassembler);
            }
        }
        outbox.flush(shared);
        let stats = reassembler.stats();
        add(
            &shared.counters.drop_incomplete,
            (stats.abandoned - abandoned) as usize,
        );
        abandoned = stats.abandoned;
    }
}

fn receive(
    shared: &Shared,
    routes: &RouteSnapshot,
    datagram: &mut [u8],
    outbox: &mut Outbox,
    reassembler: &mut Reassembler,
) {
    let counters = &shared.counters;
    let Ok(sender) = datagram_sender(datagram) else {
        bump(&counters.drop_malformed);
        return;
    };
    let Some(link) = shared.link(&sender) else {
        bump(&counters.drop_unknown_sender);
        return;
    };
    let len = datagram.len();
    let frames = match lock(&link.decap).decapsulate(datagram) {
        Ok(frames) => frames,
        Err(e) => {
            // Only a failure after authentication is the named peer's doing; anything else
            // may be a forgery naming any peer, so it stays off that peer's link.
            let authenticated = e.is_authenticated(shared.encrypted);
            if !authenticated {
                bump(&counters.drop_unauthenticated);
            }
            let (global, on_link) = match e {
                DecapError::Authentication => (&counters.drop_auth, &link.counters.drop_auth),
                DecapError::Replay(_) => (&counters.drop_replay, &link.counters.drop_replay),
                _ => (&counters.drop_malformed, &link.counters.drop_malformed),
            };
            if authenticated {
                bump(on_link);
            }
            return bump(global);
        }
    };
    let now = Instant::now();
    bump(&counters.datagrams_in);
    add(&counters.bytes_in, len);
    bump(&link.counters.datagrams_in);
    add(&link.counters.bytes_in, len);
    let since_epoch = now.saturating_duration_since(shared.epoch).as_nanos() as u64;
    link.last_heard.store(since_epoch.max(1), Ordering::Relaxed);
    for frame in frames {
        let Ok(frame) = frame else {
            bump(&counters.drop_malformed);
            break;
        };
        match frame.kind {
            FrameKind::Ethernet | FrameKind::Offloaded | FrameKind::Fragment => {}
            FrameKind::Heartbeat => continue,
            FrameKind::PmtuProbe => {
                // Acknowledge the size that arrived: the whole IP packet.
                let size = u16::try_from(len + IPV4_UDP)
                    .unwrap_or(u16::MAX)
                    .to_be_bytes();
                let local = shared.local.to_bytes();
                outbox.push(shared, sender, FrameKind::PmtuAck, local, sender, &[&size]);
                continue;
            }
            FrameKind::PmtuAck => {
                if let Some(size) = frame.payload.first_chunk::<2>() {
                    lock(&link.state)
                        .pmtu
                        .on_ack(u16::from_be_bytes(*size), now);
                }
                continue;
            }
        }
        let mut relay = |hop| {
            let parts = [frame.payload];
            if outbox.push(shared, hop, frame.kind, frame.src, frame.dst, &parts) {
                bump(&counters.relayed);
            }
        };
        match forward::from_mesh(frame.src, frame.dst, routes) {
            Decision::Local => deliver_frame(shared, &frame, reassembler, now),
            Decision::Flood {
                deliver_locally,
                hops,
            } => {
                if deliver_locally {
                    deliver_frame(shared, &frame, reassembler, now);
                }
                hops.into_iter().for_each(relay);
            }
            // No list to build for the common relay case: one hop.
            Decision::Unicast { next_hop, .. } => relay(next_hop),
            Decision::Drop(_) => bump(&counters.drop_no_route),
        }
    }
}

/// Delivers one frame addressed to this host (or flooded through it) to the bridge.
fn deliver_frame(shared: &Shared, frame: &Frame<'_>, reassembler: &mut Reassembler, now: Instant) {
    let counters = &shared.counters;
    let learn = |ethernet: &[u8]| {
        if let Some(src_mac) = mac_at(ethernet, 6) {
            lock(&shared.macs).learn(src_mac, MacOwner::Remote(frame.src), now);
        }
    };
    match frame.kind {
        FrameKind::Ethernet => {
            learn(frame.payload);
            shared.deliver(&NO_OFFLOAD, frame.payload);
        }
        FrameKind::Offloaded => deliver_offloaded(shared, frame.payload, learn),
        FrameKind::Fragment => {
            let Ok((header, chunk)) = fragment::parse(frame.payload) else {
                bump(&counters.drop_malformed);
                return;
            };
            if let Some(whole) = reassembler.insert(frame.src, header, chunk, now) {
                bump(&counters.reassembled);
                deliver_offloaded(shared, whole, learn);
            }
        }
        FrameKind::Heartbeat | FrameKind::PmtuProbe | FrameKind::PmtuAck => {}
    }
}

/// `raw` is an offload header followed by the Ethernet frame, as the origin's TAP gave it.
fn deliver_offloaded(shared: &Shared, raw: &[u8], learn: impl Fn(&[u8])) {
    if raw.len() < VNET_HDR_LEN + ETHERNET_HEADER_LEN {
        bump(&shared.counters.drop_malformed);
        return;
    }
    let (header, frame) = raw.split_at(VNET_HDR_LEN);
    learn(frame);
    shared.deliver(header, frame);
}

/// Housekeeping: heartbeats to every peer, the liveness of each link (reported to the router
/// so that data routes avoid a link whose UDP is dead), MAC expiry.
fn timer_loop(shared: &Shared) {
    let local = shared.local.to_bytes();
    let mut outbox = Outbox::default();
    let mut next_mac_expiry = Instant::now() + MAC_EXPIRY_EVERY;
    loop {
        std::thread::sleep(TIMER_TICK);
        let now = Instant::now();
        for link in &shared.all_links() {
            let mut state = lock(&link.state);
            // `on_heard` ignores a time it has seen already.
            let heard = link.last_heard.load(Ordering::Relaxed);
            if heard != 0 {
                state
                    .liveness
                    .on_heard(shared.epoch + Duration::from_nanos(heard));
            }
            let interval = if state.liveness.is_up(now) {
                HEARTBEAT_INTERVAL
            } else {
                HEARTBEAT_INTERVAL_UNCONFIRMED
            };
            if state
                .last_heartbeat
                .is_none_or(|sent| now.saturating_duration_since(sent) >= interval)
            {
                let peer = link.peer.to_bytes();
                let payload = link.conn.to_be_bytes();
                if outbox.push(shared, peer, FrameKind::Heartbeat, local, peer, &[&payload]) {
                    state.liveness.on_sent(now);
                    state.last_heartbeat = Some(now);
                }
            }
            if let Some(size) = state.pmtu.next_probe(now) {
                shared.send_probe(link, size, &mut state, now);
            }
            if state.pmtu.state().phase == PmtuPhase::Confirmed {
                state.pmtu_settled = true;
            }
            let path_mtu = usize::from(state.pmtu.path_mtu());
            link.max_datagram
                .store(path_mtu.saturating_sub(IPV4_UDP), Ordering::Relaxed);
            let up = state.data_path_up(now);
            if up != state.reported_up {
                // The reason is only built when there is a change to report.
                let (_, reason) = state.data_path(now);
                state.reported_up = up;
                drop(state);
                if up {
                    tracing::info!(peer = %link.peer, path_mtu, "sleeve data path up");
                } else {
                    tracing::warn!(peer = %link.peer, reason = reason.as_deref().unwrap_or(""), "sleeve data path down");
                }
                (shared.events)(DataplaneEvent::LinkHealth {
                    peer: link.peer,
                    conn: link.conn,
                    up,
                    reason,
                });
            }
        }
        outbox.flush(shared);
        if now >= next_mac_expiry {
            next_mac_expiry = now + MAC_EXPIRY_EVERY;
            let expired = lock(&shared.macs).expire(now);
            let gone: Vec<Mac> = expired
                .into_iter()
                .filter(|(_, owner)| *owner == MacOwner::Local)
                .map(|(mac, _)| mac)
                .collect();
            if !gone.is_empty() {
                (shared.events)(DataplaneEvent::LocalMacsGone(gone));
            }
        }
    }
}
