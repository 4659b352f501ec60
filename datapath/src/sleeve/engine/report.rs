//! What the sleeve engine shows about itself: plain data (peer ids, MACs, durations), which the
//! router turns into its `/report` JSON and metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Shared, lock, read};
use crate::heartbeat::Health;
use crate::mac::{Mac, MacOwner};
use crate::pmtu::PmtuPhase;
use crate::{DatapathKind, PeerId};

/// The engine as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleeveReport {
    pub bridge: String,
    /// MTU of the bridge and its ports: the largest packet a pod may send.
    pub mtu: u16,
    pub encrypted: bool,
    /// The TAP hands over super-segments and partial checksums (`IFF_VNET_HDR` offloads).
    pub offloads: bool,
    /// Links (peer connections) now.
    pub links: usize,
    pub counters: SleeveCounters,
    pub drops: SleeveDrops,
    /// The MAC table: where each MAC seen lately lives.
    pub mac_table: Vec<MacRow>,
    pub mac_guard: MacGuard,
    /// MACs claimed in the router's MAC hints ([`super::MacHints::live_count`]).
    pub gossiped_macs: usize,
}

/// Traffic, since the engine started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SleeveCounters {
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
}

/// Frames and datagrams dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SleeveDrops {
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
    /// Of the `too_big` drops, those answered with ICMP toward the pod.
    pub too_big_answered: u64,
    /// Datagrams the kernel refused to send, frames it refused from the TAP.
    pub send_errors: u64,
    pub tap_write_errors: u64,
}

/// One MAC table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacRow {
    pub mac: Mac,
    pub owner: MacOwner,
    /// Since a frame from the MAC was seen (or the hints said where it is).
    pub age: Duration,
}

/// Pinned attachment MACs, the cap on other local MACs, and what they refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MacGuard {
    pub pinned: usize,
    pub unattached_local: usize,
    pub max_unattached_local: usize,
    /// New local MACs not learned because the cap was reached.
    pub refused_unattached: u64,
    /// Frames from the mesh whose source was a MAC pinned here (not learned).
    pub conflicts: u64,
}

/// One link (peer connection) now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleeveLinkState {
    pub peer: PeerId,
    pub conn: u64,
    pub addr: SocketAddr,
    pub encrypted: bool,
    /// Whether the link carries data ([`Health::Starting`] also while the path MTU is measured).
    pub health: Health,
    /// Why the data path is down (or not yet up).
    pub reason: Option<String>,
    /// The path-MTU search has confirmed `path_mtu` (else it is probing).
    pub pmtu_confirmed: bool,
    /// Since the last authenticated datagram from the peer.
    pub heartbeat_age: Option<Duration>,
    /// The largest datagram (IP packet) sent to the peer, and the largest packet a pod can
    /// send through this link.
    pub path_mtu: u16,
    pub overlay_mtu: u16,
    /// Probed slowly: the connection's unicast takes another datapath.
    pub standby: bool,
    pub counts: LinkCounts,
}

/// Traffic and drops of one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCounts {
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub drop_auth: u64,
    pub drop_replay: u64,
    pub drop_malformed: u64,
    pub send_errors: u64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub(super) fn links(s: &Shared, now: Instant) -> Vec<SleeveLinkState> {
    s.all_links()
        .iter()
        .map(|link| {
            let state = lock(&link.state);
            let (health, reason) = state.data_path(now);
            let path_mtu = state.pmtu.path_mtu();
            let c = &link.counters;
            SleeveLinkState {
                peer: link.peer,
                conn: link.conn,
                addr: link.addr,
                encrypted: s.encrypted,
                health,
                reason,
                pmtu_confirmed: state.pmtu.state().phase == PmtuPhase::Confirmed,
                heartbeat_age: state.liveness.heartbeat_age(now),
                path_mtu,
                overlay_mtu: DatapathKind::Sleeve
                    .overlay_mtu(path_mtu, s.encrypted)
                    .unwrap_or(0),
                standby: state.standby,
                counts: LinkCounts {
                    datagrams_out: get(&c.datagrams_out),
                    bytes_out: get(&c.bytes_out),
                    datagrams_in: get(&c.datagrams_in),
                    bytes_in: get(&c.bytes_in),
                    drop_auth: get(&c.drop_auth),
                    drop_replay: get(&c.drop_replay),
                    drop_malformed: get(&c.drop_malformed),
                    send_errors: get(&c.send_errors),
                },
            }
        })
        .collect()
}

pub(super) fn report(s: &Shared, now: Instant) -> SleeveReport {
    let c = &s.counters;
    // Locks are taken one at a time, in statements of their own: a guard inside the struct
    // literal below would live to its end.
    let links = read(&s.links).len();
    let (entries, mac_guard) = {
        let macs = lock(&s.macs);
        let guard = MacGuard {
            pinned: macs.pinned(),
            unattached_local: macs.unattached_local(),
            max_unattached_local: macs.max_unattached_local(),
            refused_unattached: macs.local_refusals(),
            conflicts: macs.conflicts(),
        };
        (macs.entries(now), guard)
    };
    let gossiped_macs = s.hints.live_count();
    SleeveReport {
        bridge: s.bridge.clone(),
        mtu: s.mtu,
        encrypted: s.encrypted,
        offloads: s.offloads,
        links,
        counters: SleeveCounters {
            frames_out: get(&c.frames_out),
            frames_in: get(&c.frames_in),
            datagrams_out: get(&c.datagrams_out),
            datagrams_in: get(&c.datagrams_in),
            bytes_out: get(&c.bytes_out),
            bytes_in: get(&c.bytes_in),
            relayed: get(&c.relayed),
            reassembled: get(&c.reassembled),
        },
        drops: SleeveDrops {
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
        mac_table: entries
            .into_iter()
            .map(|(mac, owner, age)| MacRow { mac, owner, age })
            .collect(),
        mac_guard,
        gossiped_macs,
    }
}
