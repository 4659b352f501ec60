//! The router's side of the kernel fast path: starts the VXLAN engine (`weft_datapath::vxlan`)
//! and hands it plain values from the mesh (connections and the peers' offers, reachability,
//! the MAC-to-peer table); and when the fast path is off, says why on every connection.
//!
//! The engine decides everything per connection (heartbeats, the selector, the FDB plan); this
//! module only converts gossip's types into its plain ones.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use weft_datapath::DatapathKind;
use weft_datapath::forward::FastGroupPeers;
use weft_datapath::select::{Policy, Selector, SelectorConfig};
use weft_datapath::vxlan::engine::{
    ConnectionPath, VxlanConfig, VxlanEngine, VxlanEvent, VxlanEventSink,
};
use weft_datapath::vxlan::kernel::{NetlinkKernel, VxlanKernel};
use weft_datapath::vxlan::{DEFAULT_VNI, VxlanOffer};
use weft_gossip::PeerName;
use weft_gossip::mesh::ConnKey;
use weft_gossip::wire::{DatapathOffer, OfferedDatapath};

use crate::dataplane::{FastLinkReport, LinkReport, VxlanDeviceReport};

/// How the fast path is set up on this host.
#[derive(Debug, Clone)]
pub struct FastConfig {
    pub local: PeerName,
    pub bridge: String,
    /// The sleeve's TAP port on the bridge (remote MACs not on the fast path point at it).
    pub tap: String,
    pub port: u16,
    pub underlay_mtu: u16,
    pub encrypted: bool,
    /// The kernel fast paths `--datapath` allows, best first (empty: none).
    pub backends: Vec<DatapathKind>,
    /// The sleeve's set of peers the kernel sends this host's own group frames to (written by
    /// the engine: Open vSwitch's head-end replication).
    pub group_peers: FastGroupPeers,
}

/// The VXLAN device's name on `bridge`.
pub fn device_name(bridge: &str) -> String {
    format!("{bridge}-vxlan")
}

/// The Open vSwitch datapath's name (and its own port's) on `bridge`.
pub fn ovs_datapath_name(bridge: &str) -> String {
    format!("{bridge}-ovs")
}

pub enum FastPath {
    On {
        engine: VxlanEngine,
        /// The backend in use: [`DatapathKind::Vxlan`] or [`DatapathKind::Ovs`].
        kind: DatapathKind,
        port: u16,
        /// The router's key of each connection and the id both ends know it by
        /// (`NewConnection::conn_uid`), which the engine and its heartbeats use.
        uids: Mutex<HashMap<ConnKey, u64>>,
    },
    /// Every connection uses the sleeve, for this reason.
    Off { reason: String },
}

/// The reason a selector gives under `policy` (the single source of the reason strings).
fn reason_of(policy: Policy) -> String {
    Selector::new(SelectorConfig::default(), policy, true, Instant::now())
        .current()
        .reason
        .clone()
}

/// What the engine of `kind` is started with.
fn engine_config(config: &FastConfig, kind: DatapathKind) -> VxlanConfig {
    VxlanConfig {
        kind,
        local: config.local.to_bytes(),
        bridge: config.bridge.clone(),
        tap: config.tap.clone(),
        port: config.port,
        vni: DEFAULT_VNI,
        underlay_mtu: config.underlay_mtu,
    }
}

/// The kernel edge of a fast backend, or why this host has none (e.g. `no openvswitch module`).
fn open_kernel(kind: DatapathKind) -> Result<Box<dyn VxlanKernel>, String> {
    match kind {
        DatapathKind::Vxlan => NetlinkKernel::open()
            .map(|k| Box::new(k) as Box<dyn VxlanKernel>)
            .map_err(|e| format!("cannot open rtnetlink: {e}")),
        DatapathKind::Ovs => weft_datapath::ovs::kernel::OvsKernel::open()
            .map(|k| Box::new(k) as Box<dyn VxlanKernel>)
            .map_err(|e| e.to_string()),
        DatapathKind::Sleeve => Err("the sleeve is no kernel fast path".into()),
    }
}

/// Removes what an earlier run's fast backends other than `keep` left in the kernel (the
/// VXLAN device, the Open vSwitch datapath): nothing but the chosen backend may forward.
fn remove_leftovers(config: &FastConfig, keep: Option<DatapathKind>) {
    for kind in [DatapathKind::Vxlan, DatapathKind::Ovs] {
        if keep == Some(kind) {
            continue;
        }
        let Ok(spec) = engine_config(config, kind).device_spec() else {
            continue;
        };
        // A kernel without the backend has nothing of it to remove. (Opening the Open vSwitch
        // edge starts no upcall thread: that waits for a datapath of its own.)
        let Ok(mut kernel) = open_kernel(kind) else {
            continue;
        };
        match kernel.remove_device(&spec) {
            Ok(true) => {
                tracing::info!(device = %spec.name, datapath = kind.as_str(), "removed the fast path an earlier run left")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(device = %spec.name, error = %e, "cannot check for a fast path an earlier run left")
            }
        }
    }
}

impl FastPath {
    /// Starts the engine on the first backend that works, or says why none does. With a
    /// password the fast path stays off until it is encrypted (ESP), and the kernel state an
    /// earlier unencrypted run left behind is removed: its forwarding would carry pod traffic
    /// in plaintext. So is that of the backends not chosen (a host moved from one to another).
    pub fn start(config: &FastConfig, events: VxlanEventSink) -> FastPath {
        let policy = |local_fast: Result<(), String>, fast: DatapathKind| Policy {
            local_fast,
            encrypted: config.encrypted,
            esp: false,
            vxlan_port: config.port,
            fast,
        };
        if config.backends.is_empty() || config.encrypted {
            // Nothing of weft's may carry pod traffic outside the sleeve now.
            remove_leftovers(config, None);
            // `--datapath sleeve` is the operator's choice whatever the password: say that.
            let off = if config.backends.is_empty() {
                Policy {
                    encrypted: false,
                    ..policy(Err("--datapath sleeve".to_owned()), DatapathKind::Vxlan)
                }
            } else {
                policy(Ok(()), DatapathKind::Vxlan)
            };
            return FastPath::Off {
                reason: reason_of(off),
            };
        }
        let mut failures = Vec::new();
        // One sink per try: a backend that fails to start drops the one it was given.
        let events = std::sync::Arc::new(events);
        for &kind in &config.backends {
            let sink: VxlanEventSink = {
                let events = events.clone();
                Box::new(move |event| events(event))
            };
            let started = open_kernel(kind).and_then(|kernel| {
                // The other backends' leftovers go first: a VXLAN device an earlier run left
                // holds the UDP port an Open vSwitch vport needs (and the other way round).
                remove_leftovers(config, Some(kind));
                VxlanEngine::start(engine_config(config, kind), kernel, sink)
                    .map_err(|e| e.to_string())
            });
            match started {
                Ok(engine) => {
                    engine.set_group_out(config.group_peers.clone());
                    tracing::info!(
                        datapath = kind.as_str(),
                        port = config.port,
                        vni = DEFAULT_VNI,
                        "kernel fast path ready"
                    );
                    return FastPath::On {
                        engine,
                        kind,
                        port: config.port,
                        uids: Mutex::default(),
                    };
                }
                Err(e) => {
                    tracing::info!(datapath = kind.as_str(), reason = %e, "fast datapath unavailable");
                    failures.push(format!("{}: {e}", kind.as_str()));
                }
            }
        }
        let why = failures.join("; ");
        tracing::warn!(reason = %why, "no kernel fast path: every connection uses the sleeve");
        let kind = config.backends[0];
        FastPath::Off {
            reason: reason_of(policy(Err(why), kind)),
        }
    }

    /// What this router offers in its handshakes.
    pub fn offer(&self) -> DatapathOffer {
        match self {
            FastPath::On { engine, .. } => {
                let VxlanOffer { port, vni } = engine.offer();
                DatapathOffer {
                    paths: vec![OfferedDatapath {
                        kind: OfferedDatapath::VXLAN,
                        port,
                        vni,
                    }],
                }
            }
            FastPath::Off { .. } => DatapathOffer::default(),
        }
    }

    /// A connection to `peer` was established (`key` here, `uid` on both ends); `remote` is its
    /// address, `offer` what the peer offered (None: a version 1 peer, which offers nothing).
    pub fn add_connection(
        &self,
        peer: PeerName,
        key: ConnKey,
        uid: u64,
        remote: SocketAddr,
        offer: Option<&DatapathOffer>,
    ) {
        let FastPath::On {
            engine,
            kind,
            port,
            uids,
        } = self
        else {
            return;
        };
        lock(uids).insert(key, uid);
        let conn = uid;
        // The VXLAN device's entries name IPv4 underlay addresses only (so far).
        let IpAddr::V4(underlay) = remote.ip() else {
            let policy = Policy {
                local_fast: Err(format!(
                    "the connection runs over IPv6 ({}); the VXLAN fast path takes IPv4 underlays",
                    remote.ip()
                )),
                ..self.policy(*kind, *port)
            };
            engine.add_connection(
                peer.to_bytes(),
                conn,
                std::net::Ipv4Addr::UNSPECIFIED,
                None,
                policy,
            );
            return;
        };
        let peer_offer = offer
            .and_then(|o| o.get(OfferedDatapath::VXLAN))
            .map(|p| VxlanOffer {
                port: p.port,
                vni: p.vni,
            });
        engine.add_connection(
            peer.to_bytes(),
            conn,
            underlay,
            peer_offer,
            self.policy(*kind, *port),
        );
    }

    fn policy(&self, fast: DatapathKind, port: u16) -> Policy {
        Policy {
            local_fast: Ok(()),
            encrypted: false,
            esp: false,
            vxlan_port: port,
            fast,
        }
    }

    pub fn remove_connection(&self, peer: PeerName, key: ConnKey) {
        if let FastPath::On { engine, uids, .. } = self
            && let Some(uid) = lock(uids).remove(&key)
        {
            engine.remove_connection(peer.to_bytes(), uid);
        }
    }

    /// The router's key of the connection the engine knows as `uid`.
    pub fn key_of(&self, uid: u64) -> Option<ConnKey> {
        let FastPath::On { uids, .. } = self else {
            return None;
        };
        lock(uids)
            .iter()
            .find(|(_, u)| **u == uid)
            .map(|(key, _)| *key)
    }

    /// The peers reachable through the mesh now (relayed or not).
    pub fn set_reachable(&self, peers: impl IntoIterator<Item = PeerName>) {
        if let FastPath::On { engine, .. } = self {
            engine.set_reachable(peers.into_iter().map(PeerName::to_bytes).collect());
        }
    }

    /// The leaves of this host's own broadcast tree: the peers that get its group frames from
    /// the kernel (Open vSwitch) while their connection is on the fast path.
    pub fn set_group_candidates(&self, peers: impl IntoIterator<Item = PeerName>) {
        if let FastPath::On { engine, .. } = self {
            engine.set_group_candidates(peers.into_iter().map(PeerName::to_bytes).collect());
        }
    }

    /// The MAC-to-peer table (remote owners only).
    pub fn set_macs(&self, local: PeerName, entries: Vec<([u8; 6], PeerName)>) {
        if let FastPath::On { engine, .. } = self {
            let remote: BTreeMap<[u8; 6], [u8; 6]> = entries
                .into_iter()
                .filter(|(_, owner)| *owner != local)
                .map(|(mac, owner)| (mac, owner.to_bytes()))
                .collect();
            engine.set_macs(remote);
        }
    }

    /// Fills each link's datapath fields: the one in use, why, since when, and the fast path's
    /// own state.
    pub fn annotate(&self, links: &mut [LinkReport]) {
        match self {
            FastPath::Off { reason } => {
                for link in links {
                    link.datapath = "sleeve".into();
                    link.datapath_reason = reason.clone();
                }
            }
            FastPath::On { engine, .. } => {
                // The engine keeps one connection per peer (a new one replaces the old).
                let paths: HashMap<String, ConnectionPath> = engine
                    .paths()
                    .into_iter()
                    .map(|p| (PeerName::from_bytes(p.peer).to_string(), p))
                    .collect();
                for link in links {
                    if let Some(path) = paths.get(&link.peer) {
                        annotate_one(link, path);
                    }
                }
            }
        }
    }

    /// The VXLAN device, for the datapath section of the report.
    pub fn device_report(&self) -> Option<VxlanDeviceReport> {
        match self {
            FastPath::On { engine, .. } => Some(engine.report()),
            FastPath::Off { reason } => Some(VxlanDeviceReport {
                last_error: Some(reason.clone()),
                ..VxlanDeviceReport::default()
            }),
        }
    }
}

fn annotate_one(link: &mut LinkReport, path: &ConnectionPath) {
    link.datapath = path.datapath.as_str().into();
    link.datapath_reason = path.reason.clone();
    link.datapath_secs = path.in_state.as_secs();
    link.datapath_transitions = path.transitions;
    if path.datapath != DatapathKind::Sleeve {
        // The connection's data travels the fast path, which is up (or it would not be used);
        // the sleeve link is a slowly probed standby.
        link.health = "up".into();
        link.reason = None;
    }
    link.fast = Some(FastLinkReport {
        health: path.fast_health.clone(),
        reason: path.fast_reason.clone(),
        heartbeat_age_ms: path.heartbeat_age.map(|a| a.as_millis() as u64),
        underlay: path.underlay.to_string(),
        heartbeats_sent: path.heartbeats_sent,
        heartbeats_received: path.heartbeats_received,
    });
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the router actor is told by the engine.
#[derive(Debug)]
pub enum FastEvent {
    Selected {
        peer: PeerName,
        /// The connection's id on both ends (see [`FastPath::key_of`]).
        uid: u64,
        kind: DatapathKind,
        reason: String,
    },
}

impl From<VxlanEvent> for FastEvent {
    fn from(event: VxlanEvent) -> Self {
        match event {
            VxlanEvent::Selected {
                peer,
                conn,
                kind,
                reason,
            } => FastEvent::Selected {
                peer: PeerName::from_bytes(peer),
                uid: conn,
                kind,
                reason,
            },
        }
    }
}
