//! What the sleeve dataplane shows in `/report` (`datapath`, and each connection's
//! `datapath`): plain data, filled by [`super::Dataplane`] from its counters.

use serde::{Deserialize, Serialize};

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
    /// `--datapath`: `auto`, `vxlan` or `sleeve` (filled in by the router).
    #[serde(default)]
    pub mode: String,
    /// The kernel VXLAN fast path: its device and forwarding entries, or why it is off.
    #[serde(default)]
    pub vxlan: Option<VxlanDeviceReport>,
}

/// The VXLAN device and the forwarding entries weft keeps on it and on the bridge: the
/// engine's own report, serialized as it is.
pub use weft_datapath::vxlan::engine::VxlanReport as VxlanDeviceReport;

/// One connection's fast path (heartbeated even while the sleeve carries its data).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FastLinkReport {
    /// `starting`, `up`, `down` or `off` (not probed: the peer or this router offers none).
    pub health: String,
    pub reason: Option<String>,
    /// Milliseconds since the last fast-path heartbeat from the peer.
    pub heartbeat_age_ms: Option<u64>,
    /// The peer's VXLAN address (underlay IP and UDP port).
    pub underlay: String,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
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

/// One link (peer connection) as shown in `/report`, under its connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkReport {
    pub peer: String,
    /// The datapath carrying this connection's pod traffic now: `vxlan` or `sleeve`.
    pub datapath: String,
    /// Why that one (e.g. `fast path: no heartbeat for 3 s on udp/6784`).
    #[serde(default)]
    pub datapath_reason: String,
    /// Seconds on that datapath, and how many times the connection changed datapath.
    #[serde(default)]
    pub datapath_secs: u64,
    #[serde(default)]
    pub datapath_transitions: u64,
    /// The kernel fast path of this connection (None when this router runs none).
    #[serde(default)]
    pub fast: Option<FastLinkReport>,
    pub encrypted: bool,
    /// `starting`, `up` or `down`: the health of the datapath in use (the sleeve link's own,
    /// unless the fast path carries the connection).
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
