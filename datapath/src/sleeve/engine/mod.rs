//! The sleeve engine: the TAP port on the pods' bridge, one UDP socket, and per-peer sealed
//! links, driven by the router with plain values (peer ids, connection ids, addresses, keys,
//! a routing snapshot and MAC hints). It never sees gossip.
//!
//! Two threads move frames. One drains the TAP (frames local pods send), decides with
//! `forward::from_bridge_to`, packs the frames per next hop into datagrams (`DatagramBatch`),
//! seals them and sends each batch with UDP GSO. The other receives datagrams (recvmmsg with
//! GRO), authenticates them with the sender's link, and delivers each frame to the bridge,
//! relays it, or both (`forward::from_mesh`). The TAP hands over TCP super-segments of up to
//! 64 KiB with the kernel's offload header (`sleeve::offload`); they travel in pieces
//! (`sleeve::fragment`) and reach the destination's TAP whole, so per-packet costs are paid
//! per 64 KiB. A third thread keeps house: heartbeats, liveness, path-MTU probes, MAC expiry.
//!
//! Decisions are the crate's pure functions; this module only wires them to the TAP and the
//! socket. The threads are in `threads`, the per-link state in `link`, per-next-hop batching in
//! `outbox`, the plain-data report in `report`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::forward::{FastGroupPeers, Routing};
use crate::mac::{Mac, MacTable, format_mac};
use crate::sleeve::codec::{Decapsulator, Encapsulator, Frame, FrameKind, KeySchedule};
use crate::sleeve::offload::{VNET_HDR_LEN, VnetHeader};
use crate::tap::Tap;
use crate::udp::UdpEdge;
use crate::{DatapathKind, PeerId};

mod link;
mod outbox;
mod report;
mod threads;

pub use link::{
    HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL_UNCONFIRMED, LIVENESS_TIMEOUT,
    STANDBY_HEARTBEAT_INTERVAL, STANDBY_HEARTBEAT_INTERVAL_UNCONFIRMED, STANDBY_LIVENESS_TIMEOUT,
    heartbeat_due, heartbeat_interval, liveness_timeout,
};
pub use report::{
    LinkCounts, MacGuard, MacRow, SleeveCounters, SleeveDrops, SleeveLinkState, SleeveReport,
};

use link::PeerLink;
use threads::{tap_loop, timer_loop, udp_loop};

/// IPv4 + UDP headers around every datagram.
const IPV4_UDP: usize = 28;
/// The TAP port's name is the bridge's with this suffix.
pub const TAP_NAME_SUFFIX: &str = "-tap";
/// The offload header the TAP gets with frames that need nothing from its kernel.
const NO_OFFLOAD: [u8; VNET_HDR_LEN] = VnetHeader::NONE.to_bytes();

/// Sealing keys of one link: (ours to the peer, the peer's to us).
pub type LinkKeys = (KeySchedule, KeySchedule);

/// The routes the engine forwards by: [`Routing`], shareable between its threads. The router
/// hands a new snapshot whenever its routes change ([`SleeveEngine::set_routes`]).
pub trait RoutingSnapshot: Routing + Send + Sync {}
impl<T: Routing + Send + Sync> RoutingSnapshot for T {}

/// What the router knows about MACs beyond what data has taught the engine (the MAC-to-peer
/// gossip channel).
pub trait MacHints: Send + Sync {
    /// The peer claiming `mac` (this one included), consulted for destinations data has not
    /// taught yet, so the first frame to a pod on another host is unicast.
    fn owner(&self, mac: &Mac) -> Option<PeerId>;
    /// How many MACs are claimed, all peers together (for the report).
    fn live_count(&self) -> usize;
}

/// Where the bridge and its TAP port come from: the router implements this with its own
/// netlink code, so the engine needs none.
pub trait BridgePorts: Send + Sync {
    /// Creates the bridge `name` (or adopts it) with `mtu`, up.
    fn ensure_bridge(&self, name: &str, mtu: u16) -> io::Result<()>;
    /// Makes `port` a port of `bridge` with `mtu`, up.
    fn attach(&self, port: &str, bridge: &str, mtu: u16) -> io::Result<()>;
}

/// What the engine tells the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SleeveEvent {
    /// A pod's MAC appeared on the local bridge (or came back after expiring): claim it in the
    /// MAC-to-peer gossip channel.
    LocalMac(Mac),
    /// Local MACs not seen for the expiry time: withdraw them.
    LocalMacsGone(Vec<Mac>),
    /// The data path of the link to `peer` (connection `conn`) started or stopped working.
    LinkHealth {
        peer: PeerId,
        conn: u64,
        up: bool,
        reason: Option<String>,
    },
}

/// Where the engine's events go; called from its threads, so it must not block.
pub type SleeveEventSink = Box<dyn Fn(SleeveEvent) + Send + Sync>;

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
    /// MTU of the bridge, its ports and so the pods, when the router chooses it (the smallest
    /// overlay MTU of the datapaths it enables). None: the sleeve's own overlay MTU.
    pub bridge_mtu: Option<u16>,
}

impl SleeveConfig {
    /// The sleeve's overlay MTU on this underlay: the largest inner packet one datagram
    /// carries on a path of the underlay's MTU.
    pub fn overlay_mtu(&self) -> io::Result<u16> {
        DatapathKind::Sleeve
            .overlay_mtu(self.underlay_mtu, self.encrypted)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("underlay MTU {} is too small", self.underlay_mtu),
                )
            })
    }

    /// The MTU the bridge gets: `bridge_mtu`, or the sleeve's overlay MTU.
    pub fn bridge_mtu(&self) -> io::Result<u16> {
        let overlay = self.overlay_mtu()?;
        Ok(self.bridge_mtu.unwrap_or(overlay))
    }
}

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

struct Shared {
    local: PeerId,
    bridge: String,
    /// MTU of the bridge and its ports.
    mtu: u16,
    encrypted: bool,
    offloads: bool,
    /// MTU of the underlay: the largest path MTU probed.
    underlay_mtu: u16,
    tap: Tap,
    udp: UdpEdge,
    links: RwLock<HashMap<PeerId, Arc<PeerLink>>>,
    routes: RwLock<Arc<dyn RoutingSnapshot>>,
    /// The peers the kernel fast path sends this host's own group frames to.
    fast_group: FastGroupPeers,
    macs: Mutex<MacTable>,
    /// Identifies the super-segments this router cuts into pieces.
    next_fragment_id: AtomicU32,
    counters: Counters,
    /// The router's MAC claims, consulted for destinations data has not taught yet.
    hints: Arc<dyn MacHints>,
    events: SleeveEventSink,
    /// Time origin of `PeerLink::last_heard`.
    epoch: Instant,
}

/// The running sleeve: its threads run as long as the process (the TAP goes with it).
pub struct SleeveEngine {
    shared: Arc<Shared>,
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for the read side of an `RwLock`.
fn read<T: ?Sized>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for the write side of an `RwLock`.
fn write<T: ?Sized>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
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

impl SleeveEngine {
    /// Sets up the bridge (through `ports`) and its TAP port, binds the UDP port, and starts
    /// the threads.
    pub fn start(
        local: PeerId,
        config: &SleeveConfig,
        ports: &dyn BridgePorts,
        routing: Arc<dyn RoutingSnapshot>,
        hints: Arc<dyn MacHints>,
        events: SleeveEventSink,
    ) -> io::Result<SleeveEngine> {
        let SleeveConfig {
            ref bridge,
            port,
            underlay_mtu,
            encrypted,
            bridge_mtu: _,
        } = *config;
        let bridge = bridge.as_str();
        let overlay_mtu = config.overlay_mtu()?;
        let mtu = config.bridge_mtu()?;
        if mtu > overlay_mtu {
            tracing::warn!(
                mtu,
                overlay_mtu,
                "bridge MTU above the sleeve's: larger packets on sleeve links are answered with ICMP"
            );
        }
        let tap_name = format!("{bridge}{TAP_NAME_SUFFIX}");
        ports.ensure_bridge(bridge, mtu)?;
        let tap = Tap::create(&tap_name, true).map_err(|e| tap_error(&tap_name, e))?;
        let offloads = match tap.enable_offloads() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "TAP offloads unavailable; the sleeve moves one packet at a time");
                false
            }
        };
        tap.set_nonblocking(true)?;
        ports.attach(&tap_name, bridge, mtu)?;
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
            routes: RwLock::new(routing),
            fast_group: FastGroupPeers::default(),
            macs: Mutex::new(MacTable::default()),
            next_fragment_id: AtomicU32::new(weft_crypto::random_u64() as u32),
            counters: Counters::default(),
            hints,
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
        Ok(SleeveEngine { shared })
    }

    /// A connection `conn` to `peer` was established: frames to it go to `addr`, sealed with
    /// `keys` (None on a mesh without password). Replaces the link of an older connection.
    pub fn add_peer(&self, peer: PeerId, conn: u64, addr: SocketAddr, keys: Option<LinkKeys>) {
        let local = self.shared.local;
        let (encap, decap) = match keys {
            Some((send, recv)) => (
                Encapsulator::sealed(local, send),
                Decapsulator::sealed(peer, recv),
            ),
            None => (Encapsulator::plain(local), Decapsulator::plain(peer)),
        };
        let link = PeerLink::new(
            peer,
            conn,
            addr,
            encap,
            decap,
            self.shared.underlay_mtu,
            Instant::now(),
        );
        write(&self.shared.links).insert(peer, Arc::new(link));
    }

    /// The connection `conn` to `peer` ended; its link goes unless a newer one replaced it.
    pub fn remove_peer(&self, peer: PeerId, conn: u64) {
        let mut links = write(&self.shared.links);
        if links.get(&peer).is_some_and(|l| l.conn == conn) {
            links.remove(&peer);
        }
        drop(links);
        lock(&self.shared.macs).forget_peer(peer);
    }

    /// The link to `peer` is on standby (its unicast takes another datapath) or back in use.
    /// A standby link still carries broadcast, multicast, unknown unicast and relayed frames;
    /// it is only probed more slowly ([`STANDBY_HEARTBEAT_INTERVAL`],
    /// [`STANDBY_LIVENESS_TIMEOUT`]). A link added later starts in use.
    pub fn set_standby(&self, peer: PeerId, standby: bool) {
        if let Some(link) = self.shared.link(&peer) {
            lock(&link.state).set_standby(standby);
        }
    }

    /// The set of peers the kernel fast path sends this host's own multicast and broadcast
    /// frames to (head-end replication), which the sleeve then does not send them to when
    /// they are leaves of its tree ([`crate::forward::from_bridge_group`]). Empty until the
    /// fast path's engine, given a clone, writes it.
    pub fn fast_group_peers(&self) -> FastGroupPeers {
        self.shared.fast_group.clone()
    }

    /// The routes to forward by from now on.
    pub fn set_routes(&self, routing: Arc<dyn RoutingSnapshot>) {
        *write(&self.shared.routes) = routing;
    }

    /// `mac` belongs to a CNI attachment here: local in the MAC table whatever data says
    /// (see `crate::mac`). The caller claims it in gossip.
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

    /// Each link's state now.
    pub fn links(&self) -> Vec<SleeveLinkState> {
        report::links(&self.shared, Instant::now())
    }

    /// Counters, the MAC table and its guard, now.
    pub fn report(&self) -> SleeveReport {
        report::report(&self.shared, Instant::now())
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
    fn routes(&self) -> Arc<dyn RoutingSnapshot> {
        read(&self.routes).clone()
    }

    fn link(&self, peer: &PeerId) -> Option<Arc<PeerLink>> {
        read(&self.links).get(peer).cloned()
    }

    /// Every link now, to walk without holding the map's lock.
    fn all_links(&self) -> Vec<Arc<PeerLink>> {
        read(&self.links).values().cloned().collect()
    }

    /// The peer the router's MAC hints say owns `mac`, if another one.
    fn hinted_owner(&self, mac: &Mac) -> Option<PeerId> {
        if crate::mac::is_multicast(mac) {
            return None;
        }
        self.hints.owner(mac).filter(|owner| *owner != self.local)
    }

    /// Answers a frame too big for the path it must take with ICMP "fragmentation needed" /
    /// "packet too big" toward its sender, carrying `mtu`. The reply is built in `reply`
    /// (the calling thread's buffer, reused from frame to frame).
    fn too_big(&self, frame: &[u8], mtu: usize, reply: &mut Vec<u8>) {
        bump(&self.counters.drop_too_big);
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        match crate::icmp::too_big_reply(frame, mtu, reply) {
            Ok(len) => {
                self.deliver(&NO_OFFLOAD, &reply[..len]);
                bump(&self.counters.icmp_too_big);
            }
            Err(e) => tracing::debug!(error = %e, "oversized frame not answered"),
        }
    }

    /// Sends a path-MTU probe of `size` bytes (whole IP packet) to the peer of `link`, alone in
    /// its datagram, with DF set like every sleeve datagram.
    fn send_probe(&self, link: &PeerLink, size: u16, state: &mut link::LinkState, now: Instant) {
        let mut encap = lock(&link.encap);
        let overhead = IPV4_UDP + encap.header_len() + crate::sleeve::codec::FRAME_HEADER_LEN;
        let padding = vec![0u8; usize::from(size).saturating_sub(overhead)];
        let frame = Frame {
            kind: FrameKind::PmtuProbe,
            src: self.local,
            dst: link.peer,
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
            Err(e) => {
                tracing::debug!(error = %e, peer = %format_mac(&link.peer), "path-MTU probe not sent")
            }
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

    #[test]
    fn the_bridge_gets_the_routers_mtu_or_the_sleeves_own() {
        let mut config = SleeveConfig {
            bridge: "weft".into(),
            port: 6783,
            underlay_mtu: 1500,
            encrypted: true,
            bridge_mtu: None,
        };
        assert_eq!(config.bridge_mtu().unwrap(), 1414);
        config.encrypted = false;
        assert_eq!(config.bridge_mtu().unwrap(), 1436);
        config.bridge_mtu = Some(1400);
        assert_eq!(config.bridge_mtu().unwrap(), 1400);
        config.underlay_mtu = 500;
        assert!(
            config.bridge_mtu().is_err(),
            "an unusable underlay is refused"
        );
    }
}
