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
//! to sockets. The threads are in `threads`, the `/report` types in `report`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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

mod report;
mod threads;
pub use report::{
    DatapathReport, DropsReport, LinkDropsReport, LinkReport, MacGuardReport, MacReport,
};
use threads::{tap_loop, timer_loop, udp_loop};

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

/// A failure to make the TAP device, with what usually causes it in a container and the fix.
pub fn tap_error(name: &str, e: io::Error) -> io::Error {
    let fix = match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            ": no /dev/net/tun here: load the tun module on the host, and in a container mount \
             the host's /dev/net/tun (the chart does, as a hostPath CharDevice)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            ": the router needs CAP_NET_ADMIN, and a container's device rules must allow the tun \
             device (c 10:200; containerd's defaults do): otherwise run it privileged (chart \
             value privileged: true)"
        }
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("cannot create the TAP device {name} through /dev/net/tun: {e}{fix}"),
    )
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
        let tap = Tap::create(&tap_name, true).map_err(|e| tap_error(&tap_name, e))?;
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

/// A frame as read from the TAP, split once.
#[derive(Clone, Copy)]
struct TapFrame<'a> {
    offload: VnetHeader,
    /// The offload header and the frame, as read.
    raw: &'a [u8],
    /// The Ethernet frame after the offload header.
    frame: &'a [u8],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_failure_names_the_device_and_the_fix() {
        let denied = tap_error("weft-tap", io::Error::from_raw_os_error(libc::EPERM));
        let msg = denied.to_string();
        assert!(
            msg.starts_with("cannot create the TAP device weft-tap through /dev/net/tun"),
            "{msg}"
        );
        assert!(
            msg.contains("CAP_NET_ADMIN") && msg.contains("privileged: true"),
            "{msg}"
        );
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        let missing = tap_error("weft-tap", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(
            missing.to_string().contains("hostPath CharDevice"),
            "{missing}"
        );
        let other = tap_error("weft-tap", io::Error::from_raw_os_error(libc::EBUSY));
        assert!(!other.to_string().contains("privileged"), "{other}");
    }
}
