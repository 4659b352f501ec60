//! The router's side of the sleeve: an adapter between gossip and the sleeve engine
//! (`weft_datapath::sleeve::engine`), which owns the TAP port, the UDP socket, the per-peer
//! links and their threads, and never sees gossip. This module converts: `PeerName` ↔
//! `PeerId`, `ConnKey` ↔ `u64`, `gossip::Routes` → a routing snapshot, the MAC-to-peer gossip
//! channel → MAC hints, engine events → [`DataplaneEvent`], and the engine's plain report →
//! the `/report` types in `report`. The bridge itself comes from `hostnet`.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_datapath::PeerId;
use weft_datapath::forward::{FastGroupPeers, Routing};
use weft_datapath::heartbeat::Health;
use weft_datapath::mac::{Mac, MacOwner};
use weft_datapath::sleeve::engine::{
    BridgePorts, MacHints, SleeveEngine, SleeveEvent, SleeveLinkState, SleeveReport,
};
use weft_gossip::PeerName;
use weft_gossip::macs::SharedMacChannel;
use weft_gossip::mesh::ConnKey;
use weft_gossip::routes::{LinkSet, Routes};

use crate::hostnet;

mod report;
pub use report::{
    DatapathReport, DropsReport, FastLinkReport, LinkDropsReport, LinkReport, MacGuardReport,
    MacReport, VxlanDeviceReport,
};
pub use weft_datapath::sleeve::engine::{LinkKeys, SleeveConfig, TAP_NAME_SUFFIX};

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

impl From<SleeveEvent> for DataplaneEvent {
    fn from(event: SleeveEvent) -> Self {
        match event {
            SleeveEvent::LocalMac(mac) => DataplaneEvent::LocalMac(mac),
            SleeveEvent::LocalMacsGone(macs) => DataplaneEvent::LocalMacsGone(macs),
            SleeveEvent::LinkHealth {
                peer,
                conn,
                up,
                reason,
            } => DataplaneEvent::LinkHealth {
                peer: PeerName::from_bytes(peer),
                conn,
                up,
                reason,
            },
        }
    }
}

/// Where the dataplane's events go; called from its threads, so it must not block.
pub type EventSink = Box<dyn Fn(DataplaneEvent) + Send + Sync>;

/// `gossip::Routes` seen through the datapath's `Routing` trait.
struct RouteSnapshot {
    local: PeerName,
    routes: Routes,
    /// The leaves of our own broadcast tree (see `Routing::is_broadcast_leaf`), computed once:
    /// the sleeve asks for each group frame.
    leaves: BTreeSet<PeerId>,
}

impl RouteSnapshot {
    fn new(local: PeerName, routes: Routes) -> Self {
        let leaves = routes
            .broadcast_leaves(LinkSet::EstablishedSymmetric)
            .into_iter()
            .map(PeerName::to_bytes)
            .collect();
        RouteSnapshot {
            local,
            routes,
            leaves,
        }
    }
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

    fn is_broadcast_leaf(&self, peer: PeerId) -> bool {
        self.leaves.contains(&peer)
    }
}

/// The MAC-to-peer gossip channel as the engine's MAC hints.
struct GossipHints(SharedMacChannel);

impl MacHints for GossipHints {
    fn owner(&self, mac: &Mac) -> Option<PeerId> {
        self.0.lock().owner(mac).map(PeerName::to_bytes)
    }

    fn live_count(&self) -> usize {
        self.0.lock().live_entries().len()
    }
}

/// The bridge and its ports over rtnetlink (`hostnet`).
struct HostBridge;

impl BridgePorts for HostBridge {
    fn ensure_bridge(&self, name: &str, mtu: u16) -> io::Result<()> {
        hostnet::ensure_bridge(name, mtu)
    }

    fn attach(&self, port: &str, bridge: &str, mtu: u16) -> io::Result<()> {
        hostnet::attach(port, bridge, mtu)
    }
}

pub struct Dataplane {
    local: PeerName,
    engine: SleeveEngine,
    /// The MAC-to-peer gossip channel the engine consults (the mesh hosts it).
    gossip_macs: SharedMacChannel,
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
        let engine = SleeveEngine::start(
            local.to_bytes(),
            config,
            &HostBridge,
            Arc::new(RouteSnapshot::new(local, routes)),
            Arc::new(GossipHints(gossip_macs.clone())),
            Box::new(move |event| events(event.into())),
        )?;
        Ok(Dataplane {
            local,
            engine,
            gossip_macs,
        })
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
        self.engine.add_peer(peer.to_bytes(), conn, addr, keys);
    }

    /// The peers the kernel fast path sends this host's own group frames to, which the
    /// sleeve then skips (a clone for the fast path's engine to write).
    pub fn fast_group_peers(&self) -> FastGroupPeers {
        self.engine.fast_group_peers()
    }

    /// The MAC-to-peer gossip channel the dataplane consults (the mesh hosts it).
    pub fn gossip_macs(&self) -> &SharedMacChannel {
        &self.gossip_macs
    }

    /// `mac` belongs to a CNI attachment here: local in the MAC table whatever data says
    /// (see `weft_datapath::mac`). The caller claims it in gossip.
    pub fn pin_mac(&self, mac: Mac) {
        self.engine.pin_mac(mac);
    }

    /// The attachment of `mac` is gone.
    pub fn unpin_mac(&self, mac: &Mac) {
        self.engine.unpin_mac(mac);
    }

    /// The bridge pods attach to.
    pub fn bridge(&self) -> &str {
        self.engine.bridge()
    }

    /// MTU of the bridge and its ports: the largest packet a pod may send.
    pub fn mtu(&self) -> u16 {
        self.engine.mtu()
    }

    /// The connection `conn` to `peer` ended; its link goes unless a newer one replaced it.
    pub fn remove_peer(&self, peer: PeerName, conn: ConnKey) {
        self.engine.remove_peer(peer.to_bytes(), conn);
    }

    /// The sleeve link to `peer` is on standby (the connection's unicast takes another
    /// datapath; it is probed slowly) or back in use.
    pub fn set_standby(&self, peer: PeerName, standby: bool) {
        self.engine.set_standby(peer.to_bytes(), standby);
    }

    pub fn set_routes(&self, routes: Routes) {
        let local = self.local;
        self.engine
            .set_routes(Arc::new(RouteSnapshot::new(local, routes)));
    }

    /// Each link's state, for the connections section of the report.
    pub fn links(&self) -> Vec<LinkReport> {
        self.engine.links().into_iter().map(link_report).collect()
    }

    pub fn report(&self) -> DatapathReport {
        let mut report = datapath_report(self.engine.report());
        let gossip = self.gossip_macs.lock();
        report.mac_guard.gossip_rate_limited = gossip.rate_limited();
        report.mac_guard.gossip_conflicts = gossip.conflicts();
        report
    }
}

fn millis(age: Duration) -> u64 {
    age.as_millis() as u64
}

/// One engine link as `/report` shows it under its connection.
fn link_report(link: SleeveLinkState) -> LinkReport {
    let health = match link.health {
        Health::Starting => "starting",
        Health::Up => "up",
        Health::Down { .. } => "down",
    };
    let pmtu = if link.pmtu_confirmed {
        "confirmed"
    } else {
        "probing"
    };
    let c = link.counts;
    LinkReport {
        peer: PeerName::from_bytes(link.peer).to_string(),
        datapath: "sleeve".into(),
        datapath_reason: String::new(),
        datapath_secs: 0,
        datapath_transitions: 0,
        fast: None,
        encrypted: link.encrypted,
        health: health.into(),
        reason: link.reason,
        pmtu: pmtu.into(),
        heartbeat_age_ms: link.heartbeat_age.map(millis),
        path_mtu: link.path_mtu,
        overlay_mtu: link.overlay_mtu,
        datagrams_out: c.datagrams_out,
        bytes_out: c.bytes_out,
        datagrams_in: c.datagrams_in,
        bytes_in: c.bytes_in,
        drops: LinkDropsReport {
            auth: c.drop_auth,
            replay: c.drop_replay,
            malformed: c.drop_malformed,
            send_errors: c.send_errors,
        },
    }
}

/// The engine's report as `/report`'s `datapath` (the gossip channel's guard counters and the
/// port guard are the caller's to fill in).
fn datapath_report(r: SleeveReport) -> DatapathReport {
    let c = r.counters;
    let d = r.drops;
    DatapathReport {
        kind: "sleeve".into(),
        bridge: r.bridge,
        mtu: r.mtu,
        encrypted: r.encrypted,
        offloads: r.offloads,
        links: r.links,
        macs: r.mac_table.len(),
        frames_out: c.frames_out,
        frames_in: c.frames_in,
        datagrams_out: c.datagrams_out,
        datagrams_in: c.datagrams_in,
        bytes_out: c.bytes_out,
        bytes_in: c.bytes_in,
        relayed: c.relayed,
        reassembled: c.reassembled,
        mac_table: r
            .mac_table
            .into_iter()
            .map(|row| MacReport {
                mac: weft_datapath::mac::format_mac(&row.mac),
                owner: match row.owner {
                    MacOwner::Local => "local".into(),
                    MacOwner::Remote(peer) => PeerName::from_bytes(peer).to_string(),
                },
                age_secs: row.age.as_secs(),
            })
            .collect(),
        gossiped_macs: r.gossiped_macs,
        mac_guard: MacGuardReport {
            pinned: r.mac_guard.pinned,
            unattached_local: r.mac_guard.unattached_local,
            max_unattached_local: r.mac_guard.max_unattached_local,
            refused_unattached: r.mac_guard.refused_unattached,
            conflicts: r.mac_guard.conflicts,
            ..MacGuardReport::default()
        },
        port_guard: None,
        mode: "sleeve".into(),
        vxlan: None,
        drops: DropsReport {
            no_route: d.no_route,
            too_big: d.too_big,
            auth: d.auth,
            replay: d.replay,
            malformed: d.malformed,
            unknown_sender: d.unknown_sender,
            unauthenticated: d.unauthenticated,
            incomplete: d.incomplete,
            too_big_answered: d.too_big_answered,
            send_errors: d.send_errors,
            tap_write_errors: d.tap_write_errors,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_datapath::heartbeat::Health;
    use weft_datapath::sleeve::engine::{
        LinkCounts, MacGuard, MacRow, SleeveCounters, SleeveDrops,
    };

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([0x02, 0, 0, 0, 0, n])
    }

    #[test]
    fn engine_events_name_gossip_peers() {
        let event = DataplaneEvent::from(SleeveEvent::LinkHealth {
            peer: name(7).to_bytes(),
            conn: 42,
            up: false,
            reason: Some("why".into()),
        });
        let DataplaneEvent::LinkHealth {
            peer,
            conn,
            up,
            reason,
        } = event
        else {
            panic!("{event:?}");
        };
        assert_eq!((peer, conn, up), (name(7), 42, false));
        assert_eq!(reason.as_deref(), Some("why"));
        let mac = [2, 1, 2, 3, 4, 5];
        assert!(matches!(
            DataplaneEvent::from(SleeveEvent::LocalMac(mac)),
            DataplaneEvent::LocalMac(m) if m == mac
        ));
    }

    #[test]
    fn routes_are_seen_through_peer_ids() {
        let snapshot = RouteSnapshot::new(name(1), Routes::compute(name(1), &Default::default()));
        assert_eq!(snapshot.local(), name(1).to_bytes());
        assert_eq!(snapshot.next_hop(name(2).to_bytes()), None);
        assert!(!snapshot.is_broadcast_leaf(name(2).to_bytes()));
    }

    #[test]
    fn a_link_reports_in_the_json_shape_status_reads() {
        let link = SleeveLinkState {
            peer: name(3).to_bytes(),
            conn: 9,
            addr: "192.0.2.1:6783".parse().unwrap(),
            encrypted: true,
            health: Health::Down {
                reason: "silent".into(),
            },
            reason: Some("silent".into()),
            pmtu_confirmed: false,
            heartbeat_age: Some(Duration::from_millis(3500)),
            path_mtu: 1500,
            overlay_mtu: 1414,
            standby: false,
            counts: LinkCounts {
                datagrams_out: 1,
                send_errors: 2,
                ..LinkCounts::default()
            },
        };
        let json = serde_json::to_value(link_report(link)).unwrap();
        assert_eq!(json["peer"], name(3).to_string());
        assert_eq!(json["datapath"], "sleeve");
        assert_eq!(json["health"], "down");
        assert_eq!(json["reason"], "silent");
        assert_eq!(json["pmtu"], "probing");
        assert_eq!(json["heartbeat_age_ms"], 3500);
        assert_eq!(json["overlay_mtu"], 1414);
        assert_eq!(json["datagrams_out"], 1);
        assert_eq!(json["drops"]["send_errors"], 2);
    }

    #[test]
    fn the_mac_table_names_owners_as_peers() {
        let report = SleeveReport {
            bridge: "weft".into(),
            mtu: 1414,
            encrypted: true,
            offloads: true,
            links: 1,
            counters: SleeveCounters {
                relayed: 5,
                ..SleeveCounters::default()
            },
            drops: SleeveDrops {
                too_big_answered: 3,
                ..SleeveDrops::default()
            },
            mac_table: vec![
                MacRow {
                    mac: [2, 0, 0, 0, 0, 1],
                    owner: MacOwner::Local,
                    age: Duration::from_secs(4),
                },
                MacRow {
                    mac: [2, 0, 0, 0, 0, 2],
                    owner: MacOwner::Remote(name(5).to_bytes()),
                    age: Duration::ZERO,
                },
            ],
            mac_guard: MacGuard {
                pinned: 1,
                ..MacGuard::default()
            },
            gossiped_macs: 2,
        };
        let json = serde_json::to_value(datapath_report(report)).unwrap();
        assert_eq!(json["kind"], "sleeve");
        assert_eq!(json["macs"], 2);
        assert_eq!(json["relayed"], 5);
        assert_eq!(json["drops"]["too_big_answered"], 3);
        assert_eq!(json["mac_table"][0]["owner"], "local");
        assert_eq!(json["mac_table"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(json["mac_table"][0]["age_secs"], 4);
        assert_eq!(json["mac_table"][1]["owner"], name(5).to_string());
        assert_eq!(json["mac_guard"]["pinned"], 1);
        assert_eq!(json["gossiped_macs"], 2);
    }
}
