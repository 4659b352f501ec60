//! The sleeve dataplane, first version: the router's TAP port on the bridge, one UDP socket,
//! and per-peer sealed links keyed from each control connection's session.
//!
//! Two threads move frames: one reads the TAP (frames local pods send), decides with
//! `forward::from_bridge` and sends datagrams to next hops; the other receives datagrams,
//! authenticates them with the sender's link, and delivers each frame to the bridge, relays it,
//! or both (`forward::from_mesh`). Decisions are the datapath crate's pure functions; this
//! module only wires them to sockets. Not yet here (see `docs/sleeve.md`): batching beyond
//! one frame per datagram, UDP heartbeats, path-MTU discovery, the MAC gossip channel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use weft_datapath::forward::{self, Decision, Routing};
use weft_datapath::mac::{Mac, MacOwner, MacTable};
use weft_datapath::sleeve::codec::{
    BROADCAST, DecapError, Decapsulator, Encapsulator, Frame, FrameKind, KeySchedule,
    datagram_sender,
};
use weft_datapath::tap::Tap;
use weft_datapath::udp::{RECV_BUFFER_LEN, RecvMeta, UdpEdge};
use weft_datapath::{DatapathKind, PeerId};
use weft_gossip::PeerName;
use weft_gossip::mesh::ConnKey;
use weft_gossip::routes::{LinkSet, Routes};

use crate::hostnet;

/// IPv4 + UDP headers around every datagram.
const IPV4_UDP: usize = 28;
const TAP_NAME_SUFFIX: &str = "-tap";
const RECV_BATCH: usize = 16;

/// Sealing keys of one link: (ours to the peer, the peer's to us).
pub type LinkKeys = (KeySchedule, KeySchedule);

#[derive(Debug, Default)]
struct Counters {
    frames_out: AtomicU64,
    frames_in: AtomicU64,
    relayed: AtomicU64,
    drop_no_route: AtomicU64,
    drop_too_big: AtomicU64,
    drop_auth: AtomicU64,
    drop_replay: AtomicU64,
    drop_malformed: AtomicU64,
    drop_unknown_sender: AtomicU64,
}

/// The dataplane as shown in `/report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatapathReport {
    pub kind: String,
    pub bridge: String,
    /// MTU of the bridge and its ports: the largest packet a pod may send.
    pub mtu: u16,
    pub encrypted: bool,
    pub links: usize,
    pub macs: usize,
    pub frames_out: u64,
    pub frames_in: u64,
    pub relayed: u64,
    pub drops: DropsReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropsReport {
    pub no_route: u64,
    pub too_big: u64,
    pub auth: u64,
    pub replay: u64,
    pub malformed: u64,
    pub unknown_sender: u64,
}

struct PeerLink {
    conn: ConnKey,
    addr: SocketAddr,
    encap: Mutex<Encapsulator>,
    decap: Mutex<Decapsulator>,
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
    /// Largest UDP payload on the underlay.
    max_datagram: usize,
    tap: Tap,
    udp: UdpEdge,
    links: RwLock<HashMap<PeerId, Arc<PeerLink>>>,
    routes: RwLock<Arc<RouteSnapshot>>,
    macs: Mutex<MacTable>,
    counters: Counters,
}

pub struct Dataplane {
    shared: Arc<Shared>,
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dataplane {
    /// Sets up the bridge and its TAP port, binds the UDP port, and starts the threads.
    pub fn start(
        local: PeerName,
        bridge: &str,
        port: u16,
        underlay_mtu: u16,
        encrypted: bool,
        routes: Routes,
    ) -> io::Result<Dataplane> {
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
        let tap = Tap::create(&tap_name, false)?;
        hostnet::attach(&tap_name, bridge, mtu)?;
        let udp = UdpEdge::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
        let shared = Arc::new(Shared {
            local,
            bridge: bridge.to_owned(),
            mtu,
            encrypted,
            max_datagram: usize::from(underlay_mtu) - IPV4_UDP,
            tap,
            udp,
            links: RwLock::new(HashMap::new()),
            routes: RwLock::new(Arc::new(RouteSnapshot { local, routes })),
            macs: Mutex::new(MacTable::default()),
            counters: Counters::default(),
        });
        for (name, work) in [
            ("weft-tap-rx", tap_loop as fn(&Shared)),
            ("weft-udp-rx", udp_loop),
        ] {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&shared))?;
        }
        tracing::info!(bridge, tap = %tap_name, mtu, port, encrypted, "sleeve dataplane started");
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
        let link = PeerLink {
            conn,
            addr,
            encap: Mutex::new(encap),
            decap: Mutex::new(decap),
        };
        self.shared
            .links
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(link));
    }

    /// The connection `conn` to `peer` ended; its link goes unless a newer one replaced it.
    pub fn remove_peer(&self, peer: PeerName, conn: ConnKey) {
        let mut links = self.shared.links.write().unwrap_or_else(|e| e.into_inner());
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
        *self
            .shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    pub fn report(&self) -> DatapathReport {
        let s = &self.shared;
        let c = &s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DatapathReport {
            kind: "sleeve".into(),
            bridge: s.bridge.clone(),
            mtu: s.mtu,
            encrypted: s.encrypted,
            links: s.links.read().unwrap_or_else(|e| e.into_inner()).len(),
            macs: lock(&s.macs).len(),
            frames_out: get(&c.frames_out),
            frames_in: get(&c.frames_in),
            relayed: get(&c.relayed),
            drops: DropsReport {
                no_route: get(&c.drop_no_route),
                too_big: get(&c.drop_too_big),
                auth: get(&c.drop_auth),
                replay: get(&c.drop_replay),
                malformed: get(&c.drop_malformed),
                unknown_sender: get(&c.drop_unknown_sender),
            },
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn mac_at(frame: &[u8], at: usize) -> Option<Mac> {
    frame.get(at..at + 6)?.try_into().ok()
}

impl Shared {
    fn routes(&self) -> Arc<RouteSnapshot> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seals `frame` for `hop` and sends it.
    fn send(&self, hop: PeerId, frame: Frame<'_>, out: &mut Vec<u8>) {
        let link = self
            .links
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hop)
            .cloned();
        let Some(link) = link else {
            bump(&self.counters.drop_no_route);
            return;
        };
        let sealed = lock(&link.encap).encapsulate(&[frame], self.max_datagram, out);
        match sealed {
            Ok(len) => match self.udp.socket().send_to(&out[..len], link.addr) {
                Ok(_) => bump(&self.counters.frames_out),
                Err(e) => tracing::debug!(error = %e, addr = %link.addr, "sleeve send failed"),
            },
            Err(_) => bump(&self.counters.drop_too_big),
        }
    }
}

/// Frames from local pods, to the mesh.
fn tap_loop(shared: &Shared) {
    let local = shared.local.to_bytes();
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536);
    loop {
        let n = match shared.tap.read_frame(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "TAP read failed; sleeve stops sending");
                return;
            }
        };
        let frame = &buf[..n];
        let (Some(dst_mac), Some(src_mac)) = (mac_at(frame, 0), mac_at(frame, 6)) else {
            continue;
        };
        let now = Instant::now();
        let routes = shared.routes();
        let decision = {
            let mut macs = lock(&shared.macs);
            macs.learn(src_mac, MacOwner::Local, now);
            forward::from_bridge(&dst_mac, &macs, &*routes, now)
        };
        match decision {
            Decision::Unicast { next_hop, dst } => {
                let frame = Frame {
                    kind: FrameKind::Ethernet,
                    src: local,
                    dst,
                    payload: frame,
                };
                shared.send(next_hop, frame, &mut out);
            }
            Decision::Flood { hops, .. } => {
                for hop in hops {
                    let frame = Frame {
                        kind: FrameKind::Ethernet,
                        src: local,
                        dst: BROADCAST,
                        payload: frame,
                    };
                    shared.send(hop, frame, &mut out);
                }
            }
            Decision::Local | Decision::Drop(_) => {}
        }
    }
}

/// Datagrams from peers, to local pods and onward.
fn udp_loop(shared: &Shared) {
    let mut bufs = vec![vec![0u8; RECV_BUFFER_LEN]; RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); RECV_BATCH];
    let mut out = Vec::with_capacity(65536);
    loop {
        let received = match shared.udp.recv_batch(&mut bufs, &mut meta, None) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "UDP receive failed; sleeve stops receiving");
                return;
            }
        };
        for (buf, meta) in bufs.iter_mut().zip(&meta).take(received) {
            let segment = meta.segment.unwrap_or(meta.len).max(1);
            for datagram in buf[..meta.len].chunks_mut(segment) {
                receive(shared, datagram, &mut out);
            }
        }
    }
}

fn receive(shared: &Shared, datagram: &mut [u8], out: &mut Vec<u8>) {
    let counters = &shared.counters;
    let Ok(sender) = datagram_sender(datagram) else {
        bump(&counters.drop_malformed);
        return;
    };
    let link = shared
        .links
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&sender)
        .cloned();
    let Some(link) = link else {
        bump(&counters.drop_unknown_sender);
        return;
    };
    let frames = match lock(&link.decap).decapsulate(datagram) {
        Ok(frames) => frames,
        Err(DecapError::Authentication) => return bump(&counters.drop_auth),
        Err(DecapError::Replay(_)) => return bump(&counters.drop_replay),
        Err(_) => return bump(&counters.drop_malformed),
    };
    let routes = shared.routes();
    let now = Instant::now();
    for frame in frames {
        let Ok(frame) = frame else {
            bump(&counters.drop_malformed);
            break;
        };
        if frame.kind != FrameKind::Ethernet {
            continue;
        }
        if let Some(src_mac) = mac_at(frame.payload, 6) {
            lock(&shared.macs).learn(src_mac, MacOwner::Remote(frame.src), now);
        }
        match forward::from_mesh(frame.src, frame.dst, &*routes) {
            Decision::Local => deliver(shared, frame.payload),
            Decision::Flood {
                deliver_locally,
                hops,
            } => {
                if deliver_locally {
                    deliver(shared, frame.payload);
                }
                for hop in hops {
                    bump(&counters.relayed);
                    shared.send(hop, frame, out);
                }
            }
            Decision::Unicast { next_hop, .. } => {
                bump(&counters.relayed);
                shared.send(next_hop, frame, out);
            }
            Decision::Drop(_) => bump(&counters.drop_no_route),
        }
    }
}

fn deliver(shared: &Shared, payload: &[u8]) {
    match shared.tap.write_frame(payload) {
        Ok(()) => bump(&shared.counters.frames_in),
        Err(e) => tracing::debug!(error = %e, "TAP write failed"),
    }
}
