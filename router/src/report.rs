//! The status report: one JSON document (`/report`, `weft status --json`) with stable field
//! names, and the text views rendered from it. The CLI fetches the JSON and renders locally, so
//! text and JSON can never disagree.
//!
//! Field names are part of weft's interface: add fields, never rename or remove them.

use std::fmt::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use weft_gossip::PeerName;
use weft_gossip::mesh::Mesh;
use weft_gossip::routes::LinkSet;
use weft_gossip::topology::Topology;
use weft_gossip::wire::{PROTOCOL_MAX, PROTOCOL_MIN};

use crate::dataplane::{DatapathReport, LinkReport};
use crate::ipam::{IpamCheckReport, IpamReport};
use crate::router::RouterInfo;
use crate::store::StoreReport;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// weft's version.
    pub version: String,
    /// Protocol versions spoken, `[min, max]`.
    pub protocol: [u8; 2],
    /// This peer's name (`aa:bb:cc:dd:ee:ff`).
    pub name: String,
    pub nickname: String,
    /// This run's incarnation id.
    pub uid: u64,
    /// Whether a mesh password is set (all connections authenticated and encrypted).
    pub encryption: bool,
    pub mesh_id: String,
    pub port: u16,
    pub conn_limit: usize,
    /// The open files limit the router runs with (raised to the hard limit at start).
    #[serde(default)]
    pub open_files_limit: Option<u64>,
    /// Every peer in the topology, this one included, sorted by name.
    pub peers: Vec<PeerReport>,
    /// This peer's connections: established ones, targets being dialled or retried, and recent
    /// inbound failures.
    pub connections: Vec<ConnectionReport>,
    /// Where control traffic to each reachable peer goes first.
    pub routes: Vec<RouteReport>,
    pub counters: CountersReport,
    /// The data plane, when one runs (`--datapath sleeve`).
    pub datapath: Option<DatapathReport>,
    /// IP address management: the ring as this peer sees it, and its allocations.
    #[serde(default)]
    pub ipam: Option<IpamReport>,
    /// The mesh port's admission of unauthenticated connections: limits, pending, refusals.
    #[serde(default)]
    pub mesh_admission: crate::admission::AdmissionReport,
    /// The state store: whether it persists, failures and re-opens, and its last recovery.
    #[serde(default)]
    pub store: Option<StoreReport>,
    /// The Kubernetes API view (`--kube-peers`): this node, the Nodes the API lists, and the
    /// reclaim leader. None when the router does not use the API.
    #[serde(default)]
    pub kube: Option<KubeReport>,
}

/// What the router knows from the Kubernetes API (`--kube-peers`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KubeReport {
    /// This router's Node.
    pub node_name: String,
    /// Whether the Node watch is established (listed and watching), else why not.
    pub watching: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// Whether this router holds the reclaim Lease.
    #[serde(default)]
    pub leader: bool,
    /// Every Node the API lists, sorted by name.
    #[serde(default)]
    pub nodes: Vec<KubeNodeReport>,
}

/// One Node as the API lists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KubeNodeReport {
    pub name: String,
    /// The Node's InternalIP addresses (the peers the router connects to).
    #[serde(default)]
    pub internal_ips: Vec<String>,
    /// The weft peer name the Node's router recorded (annotation), if any.
    #[serde(default)]
    pub peer_name: Option<String>,
    /// The Node's NetworkUnavailable condition: Some(false) once its router's data path is up.
    #[serde(default)]
    pub network_unavailable: Option<bool>,
    /// The Node's Ready condition, as the kubelet reports it.
    #[serde(default)]
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    pub name: String,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    /// The connections this peer announces.
    pub connections: Vec<PeerConnectionReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConnectionReport {
    pub name: String,
    pub nickname: String,
    pub address: Option<String>,
    pub outbound: bool,
    pub established: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionReport {
    /// `outbound` or `inbound`.
    pub direction: String,
    pub address: String,
    /// `established`, `connecting`, `waiting`, `retrying` or `failed`.
    pub state: String,
    /// Present once the handshake named the peer.
    pub peer: Option<String>,
    pub nickname: Option<String>,
    pub encrypted: Option<bool>,
    pub up_secs: Option<u64>,
    /// Why the connection failed or closed last.
    pub reason: Option<String>,
    pub retry_in_secs: Option<u64>,
    pub attempts: Option<u32>,
    /// `direct` (named by an operator), `discovered` (learned from gossip) or absent (inbound).
    pub source: Option<String>,
    /// The data path of an established connection, when a dataplane runs: its health (with
    /// the reason when down), path MTU, heartbeat age, traffic and drops.
    #[serde(default)]
    pub datapath: Option<LinkReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteReport {
    pub peer: String,
    pub nickname: String,
    /// First hop (the peer itself when directly connected).
    pub via: String,
    pub via_nickname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountersReport {
    pub connections_terminated: u64,
    pub unicast_dropped_no_route: u64,
    pub malformed_gossip: u64,
}

/// `name(nickname)` for display.
pub fn peer_label(topology: &Topology, name: PeerName) -> String {
    match topology.get(name) {
        Some(entry) => format!("{name}({})", entry.nickname),
        None => name.to_string(),
    }
}

/// The peer in the topology called `name_or_nickname`.
pub fn find_peer(topology: &Topology, name_or_nickname: &str) -> Option<PeerName> {
    topology
        .peers()
        .find(|e| e.name.to_string() == name_or_nickname || e.nickname == name_or_nickname)
        .map(|e| e.name)
}

/// The peer's nickname, or "" while it is not in the topology.
pub fn nickname_of(topology: &Topology, name: PeerName) -> String {
    topology
        .get(name)
        .map(|e| e.nickname.clone())
        .unwrap_or_default()
}

pub fn build(
    mesh: &Mesh,
    info: &RouterInfo,
    datapath: Option<DatapathReport>,
    links: Vec<LinkReport>,
    ipam: IpamReport,
    now: Instant,
) -> Report {
    let topology = mesh.topology();
    let peers = topology
        .peers()
        .map(|entry| PeerReport {
            name: entry.name.to_string(),
            nickname: entry.nickname.clone(),
            uid: entry.uid,
            version: entry.version,
            connections: entry
                .connections
                .iter()
                .map(|(peer, c)| PeerConnectionReport {
                    name: peer.to_string(),
                    nickname: nickname_of(topology, *peer),
                    address: c.remote_addr.map(|a| a.to_string()),
                    outbound: c.outbound,
                    established: c.established,
                })
                .collect(),
        })
        .collect();

    let mut connections: Vec<ConnectionReport> = mesh
        .connections(now)
        .into_iter()
        .map(|c| ConnectionReport {
            direction: if c.outbound { "outbound" } else { "inbound" }.into(),
            address: c.address.to_string(),
            state: "established".into(),
            peer: Some(c.peer.to_string()),
            nickname: Some(c.nickname),
            encrypted: Some(c.encrypted),
            up_secs: Some(c.up_secs),
            reason: None,
            retry_in_secs: None,
            attempts: None,
            source: None,
            datapath: links.iter().find(|l| l.peer == c.peer.to_string()).cloned(),
        })
        .collect();
    // Targets that are connected already appear above, as their connection.
    for target in mesh
        .targets(now)
        .into_iter()
        .filter(|t| t.state != "connected")
    {
        connections.push(ConnectionReport {
            direction: "outbound".into(),
            address: target.address,
            state: target.state.into(),
            peer: None,
            nickname: None,
            encrypted: None,
            up_secs: None,
            reason: target.last_error,
            retry_in_secs: target.retry_in_secs,
            attempts: Some(target.attempts),
            source: Some(target.source.as_str().to_owned()),
            datapath: None,
        });
    }
    for failure in mesh.inbound_failures() {
        connections.push(ConnectionReport {
            direction: "inbound".into(),
            address: failure.address.to_string(),
            state: "failed".into(),
            peer: None,
            nickname: None,
            encrypted: None,
            up_secs: None,
            reason: Some(format!(
                "{} ({}s ago)",
                failure.reason,
                now.saturating_duration_since(failure.at).as_secs()
            )),
            retry_in_secs: None,
            attempts: None,
            source: None,
            datapath: None,
        });
    }

    let routes = mesh
        .routes()
        .table(LinkSet::All)
        .into_iter()
        .map(|(peer, via)| RouteReport {
            peer: peer.to_string(),
            nickname: nickname_of(topology, peer),
            via: via.to_string(),
            via_nickname: nickname_of(topology, via),
        })
        .collect();

    Report {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: [PROTOCOL_MIN, PROTOCOL_MAX],
        name: mesh.name().to_string(),
        nickname: topology.local_entry().nickname.clone(),
        uid: topology.local_entry().uid,
        encryption: info.encryption,
        mesh_id: info.mesh_id.clone(),
        port: info.port,
        conn_limit: info.conn_limit,
        open_files_limit: info.open_files_limit,
        peers,
        connections,
        routes,
        counters: CountersReport {
            connections_terminated: mesh.counters.connections_terminated,
            unicast_dropped_no_route: mesh.counters.unicast_dropped_no_route,
            malformed_gossip: mesh.counters.malformed_gossip,
        },
        datapath,
        ipam: Some(ipam),
        mesh_admission: Default::default(),
        store: None,
        kube: None,
    }
}

fn count(report: &Report, state: &str) -> usize {
    report
        .connections
        .iter()
        .filter(|c| c.state == state)
        .count()
}

/// `weft status`: the summary.
pub fn render_summary(r: &Report) -> String {
    let mut s = String::new();
    let reachable = r.routes.len();
    let _ = writeln!(
        s,
        "        Version: {} (protocol {}..{})",
        r.version, r.protocol[0], r.protocol[1]
    );
    let _ = writeln!(s, "           Name: {}({})", r.name, r.nickname);
    let _ = writeln!(
        s,
        "     Encryption: {}",
        if r.encryption {
            "enabled (Argon2id password, XSalsa20-Poly1305)"
        } else {
            "disabled"
        }
    );
    let _ = writeln!(s, "           Port: {}", r.port);
    let _ = writeln!(
        s,
        "          Peers: {} ({} reachable)",
        r.peers.len(),
        reachable
    );
    let _ = writeln!(
        s,
        "    Connections: {} established, {} connecting, {} retrying, {} failed (limit {})",
        count(r, "established"),
        count(r, "connecting"),
        count(r, "retrying") + count(r, "waiting"),
        count(r, "failed"),
        r.conn_limit
    );
    match &r.datapath {
        Some(d) => {
            let _ = writeln!(
                s,
                "       Datapath: {} on bridge {} (mtu {}, {} links, {} MACs, {} frames out, {} in, {} relayed)",
                d.kind, d.bridge, d.mtu, d.links, d.macs, d.frames_out, d.frames_in, d.relayed
            );
            match &d.vxlan {
                Some(v) if !v.device.is_empty() => {
                    let _ = writeln!(s, "      Fast path: {}", fast_path_line(v));
                }
                Some(v) => {
                    let _ = writeln!(
                        s,
                        "      Fast path: off ({})",
                        v.last_error.as_deref().unwrap_or("")
                    );
                }
                None => {}
            }
        }
        None => {
            let _ = writeln!(s, "       Datapath: none (control plane only)");
        }
    }
    if let Some(ipam) = &r.ipam {
        let _ = writeln!(
            s,
            "           IPAM: {} in {}, {} allocated here, gateway {}{}",
            ipam.state,
            ipam.range,
            ipam.allocated,
            ipam.gateway.as_deref().unwrap_or("none yet"),
            if ipam.unreachable_owners.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} owners unreachable (see `weft ipam`)",
                    ipam.unreachable_owners.len()
                )
            }
        );
    }
    if let Some(store) = &r.store {
        let _ = writeln!(
            s,
            "          Store: persistence {}{}{}",
            store.persistence,
            store
                .error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default(),
            store
                .recovered_from
                .as_ref()
                .map(|rec| format!(", recovered from {} ({})", rec.source.as_str(), rec.reason))
                .unwrap_or_default()
        );
    }
    s
}

/// `weft ipam check`: each peer's ring hash, then where the views differ.
pub fn render_ipam_check(c: &IpamCheckReport) -> String {
    let mut s = String::new();
    for p in &c.peers {
        let _ = writeln!(
            s,
            "{}({}) ring {} hash {} allocated {}{}",
            p.peer,
            p.nickname,
            p.ring.as_deref().unwrap_or("none"),
            p.ring_hash,
            p.allocated,
            if p.conflicts > 0 {
                format!(" CONFLICTS {}", p.conflicts)
            } else {
                String::new()
            }
        );
    }
    for m in &c.missing {
        let _ = writeln!(s, "no answer from {m}");
    }
    if c.differences.is_empty() && c.missing.is_empty() {
        let _ = writeln!(s, "all {} peers agree", c.peers.len());
    }
    for d in &c.differences {
        let _ = writeln!(s, "DIFFERENCE: {d}");
    }
    s
}

/// `weft ipam`: the ring as this peer sees it, who owns what, and the local allocations.
pub fn render_ipam(r: &Report) -> String {
    let mut s = String::new();
    let Some(ipam) = &r.ipam else {
        return "IPAM: not reported by this router\n".to_owned();
    };
    let _ = writeln!(
        s,
        "range     {} ({} addresses)",
        ipam.range, ipam.range_size
    );
    let _ = writeln!(s, "state     {}", ipam.state);
    if let Some(why) = &ipam.waiting_for_ring {
        let _ = writeln!(s, "waiting   {why}");
    }
    let _ = writeln!(s, "ring      {}", ipam.ring.as_deref().unwrap_or("none"));
    let _ = writeln!(s, "ring hash {}", ipam.ring_hash);
    let _ = writeln!(
        s,
        "gateway   {}",
        ipam.gateway.as_deref().unwrap_or("none yet")
    );
    if let Some(moved) = &ipam.gateway_moved {
        let _ = writeln!(s, "          {moved}");
    }
    let _ = writeln!(
        s,
        "allocated {} here ({} orphans, {} reserved for peers, {} ADDs waiting)",
        ipam.allocated, ipam.orphans, ipam.reserved_for_peers, ipam.waiting_adds
    );
    if let Some(p) = &ipam.pending {
        let _ = writeln!(
            s,
            "pending   asked {} for space {}s ago ({} waiting)",
            p.donor, p.waiting_secs, p.waiting
        );
    }
    if ipam.unowned > 0 {
        let _ = writeln!(
            s,
            "unowned   {} addresses (reclaimed, not adopted yet)",
            ipam.unowned
        );
    }
    let _ = writeln!(s, "owners:");
    for o in &ipam.owners {
        let _ = writeln!(
            s,
            "  {}({}) {} addresses, {} free{}  {}",
            o.peer,
            o.nickname,
            o.addresses,
            o.free,
            if o.reachable { "" } else { ", UNREACHABLE" },
            o.ranges.join(" ")
        );
    }
    for peer in &ipam.unreachable_owners {
        let _ = writeln!(
            s,
            "hint: if {peer} is gone for good, `weft rmpeer {peer}` gives its space to live peers"
        );
    }
    for c in &ipam.conflicts {
        let _ = writeln!(s, "CONFLICT: {} is also held via peer {}", c.addr, c.peer);
    }
    s
}

/// `weft status peers`: each peer and the connections it announces.
pub fn render_peers(r: &Report) -> String {
    let mut s = String::new();
    for peer in &r.peers {
        let _ = writeln!(
            s,
            "{}({}) uid={} version={}",
            peer.name, peer.nickname, peer.uid, peer.version
        );
        for c in &peer.connections {
            let _ = writeln!(
                s,
                "   {} {}({}) {} {}",
                if c.outbound { "->" } else { "<-" },
                c.name,
                c.nickname,
                c.address.as_deref().unwrap_or("-"),
                if c.established {
                    "established"
                } else {
                    "pending"
                }
            );
        }
    }
    s
}

/// The fast path in one line: its backend, device, port and table sizes.
fn fast_path_line(v: &crate::dataplane::VxlanDeviceReport) -> String {
    match &v.details {
        Some(d) if v.backend == "ovs" => format!(
            "Open vSwitch datapath {} (udp/{}, vni {}, mtu {}), {} flows, {} bridge entries, \
             lookups: {} hit, {} missed, {} lost; {} errors",
            v.device,
            v.port,
            v.vni,
            v.mtu,
            d.flows,
            v.fdb_bridge,
            d.hits,
            d.misses,
            d.lost,
            v.fdb_errors
        ),
        _ => format!(
            "VXLAN {} (udp/{}, vni {}, mtu {}), {} device / {} bridge entries, {} errors",
            v.device, v.port, v.vni, v.mtu, v.fdb_vxlan, v.fdb_bridge, v.fdb_errors
        ),
    }
}

/// The Open vSwitch miss path in one line: what became of the upcalls, and the flows expired.
fn upcalls_line(d: &weft_datapath::vxlan::kernel::BackendDetails) -> String {
    let unanswered: u64 = d.upcalls_unanswered.values().sum();
    let mut s = format!(
        "upcalls: {} answered, {} unanswered",
        d.upcalls_answered, unanswered
    );
    if unanswered > 0 {
        let why: Vec<String> = d
            .upcalls_unanswered
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = write!(s, " ({})", why.join(", "));
    }
    let _ = write!(
        s,
        ", {} rate-limited, {} failed; {} idle flows expired",
        d.upcalls_rate_limited, d.upcalls_failed, d.flows_expired
    );
    s
}

/// Where the kernel replicates this host's own broadcasts and multicasts (the group flow).
fn group_line(dsts: &[std::net::Ipv4Addr]) -> String {
    if dsts.is_empty() {
        return "group frames: none replicated in the kernel (the sleeve carries them)".into();
    }
    let dsts: Vec<String> = dsts.iter().map(|d| d.to_string()).collect();
    format!(
        "group frames: replicated in the kernel to {} (the sleeve carries them to the rest)",
        dsts.join(", ")
    )
}

/// `weft status datapath`: the bridge, the fast path (an Open vSwitch datapath's ports and
/// flows, or the VXLAN device) and the datapath each connection uses, and why.
pub fn render_datapath(r: &Report) -> String {
    let mut s = String::new();
    let Some(d) = &r.datapath else {
        return "none (control plane only)\n".into();
    };
    let _ = writeln!(
        s,
        "{} on bridge {} (mtu {}): {} links, {} MACs",
        d.kind, d.bridge, d.mtu, d.links, d.macs
    );
    match &d.vxlan {
        Some(v) if !v.device.is_empty() => {
            let _ = writeln!(s, "fast path: {}", fast_path_line(v));
            if let Some(details) = &v.details {
                for port in &details.ports {
                    let _ = writeln!(s, "   port {port}");
                }
                if v.backend == "ovs" {
                    let _ = writeln!(s, "   {}", upcalls_line(details));
                    let _ = writeln!(s, "   {}", group_line(&v.group_dsts));
                }
            }
            if let Some(error) = &v.last_error {
                let _ = writeln!(s, "   last error: {error}");
            }
        }
        Some(v) => {
            let _ = writeln!(
                s,
                "fast path: off ({})",
                v.last_error.as_deref().unwrap_or("")
            );
        }
        None => {}
    }
    for c in &r.connections {
        if let (Some(peer), Some(link)) = (&c.peer, &c.datapath) {
            let nick = c.nickname.as_deref().unwrap_or("");
            let _ = write!(s, "{peer}({nick}) {}", link.datapath);
            if !link.datapath_reason.is_empty() {
                let _ = write!(s, " ({})", link.datapath_reason);
            }
            let _ = writeln!(s, " for {}s", link.datapath_secs);
        }
    }
    s
}

/// `weft status connections`: one line per connection, target or recent failure.
pub fn render_connections(r: &Report) -> String {
    let mut s = String::new();
    for c in &r.connections {
        let arrow = if c.direction == "outbound" {
            "->"
        } else {
            "<-"
        };
        let _ = write!(s, "{arrow} {:<22} {:<12}", c.address, c.state);
        if let (Some(peer), Some(nick)) = (&c.peer, &c.nickname) {
            let _ = write!(s, " {peer}({nick})");
        }
        if let Some(encrypted) = c.encrypted {
            let _ = write!(
                s,
                " {}",
                if encrypted {
                    "encrypted"
                } else {
                    "unencrypted"
                }
            );
        }
        if let Some(up) = c.up_secs {
            let _ = write!(s, " up {up}s");
        }
        if let Some(reason) = &c.reason {
            let _ = write!(s, " {reason}");
        }
        if let Some(retry) = c.retry_in_secs {
            let _ = write!(s, ", retry in {retry}s");
        }
        if let Some(link) = &c.datapath {
            let _ = write!(s, "\n     datapath: {}", link.datapath);
            if !link.datapath_reason.is_empty() {
                let _ = write!(s, " ({})", link.datapath_reason);
            }
            let _ = write!(
                s,
                " for {}s, {} changes",
                link.datapath_secs, link.datapath_transitions
            );
            if let Some(fast) = &link.fast {
                let _ = write!(s, "\n     fast path {}: {}", fast.underlay, fast.health);
                if let Some(reason) = &fast.reason {
                    let _ = write!(s, " ({reason})");
                }
            }
            let _ = write!(s, "\n     link: {}", link.health);
            if let Some(reason) = &link.reason {
                let _ = write!(s, " ({reason})");
            }
            if let Some(age) = link.heartbeat_age_ms {
                let _ = write!(s, ", heard {:.1}s ago", age as f64 / 1000.0);
            }
            let _ = write!(
                s,
                ", path MTU {}, pod MTU {}, out {} datagrams/{} bytes, in {}/{}",
                link.path_mtu,
                link.overlay_mtu,
                link.datagrams_out,
                link.bytes_out,
                link.datagrams_in,
                link.bytes_in
            );
            let d = &link.drops;
            if d.by_reason().iter().map(|(_, n)| n).sum::<u64>() > 0 {
                let _ = write!(
                    s,
                    ", dropped: {} auth, {} replay, {} malformed, {} send errors",
                    d.auth, d.replay, d.malformed, d.send_errors
                );
            }
        }
        s.push('\n');
    }
    s
}

/// `weft status routes`: first hop to each reachable peer.
pub fn render_routes(r: &Report) -> String {
    let mut s = String::new();
    for route in &r.routes {
        let how = if route.via == route.peer {
            "direct".to_owned()
        } else {
            format!("via {}({})", route.via, route.via_nickname)
        };
        let _ = writeln!(s, "{}({}) {how}", route.peer, route.nickname);
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::cluster::tests::mesh;

    /// [`mesh`] with an Open vSwitch fast path whose miss path answered 5 upcalls, left 2
    /// (unknown MACs), dropped 1 over the limit and expired 3 idle flows.
    pub(crate) fn with_ovs() -> Value {
        let mut report = mesh();
        report["datapath"]["vxlan"] = json!({
            "device": "weft-ovs", "port": 6784, "vni": 30566, "mtu": 1376,
            "adopted": false, "adopting": false, "fdb_vxlan": 2, "fdb_bridge": 2,
            "fdb_ops": 4, "fdb_errors": 0, "error": null,
            "heartbeats_sent": 0, "heartbeats_received": 0, "heartbeats_rejected": 0,
            "heartbeat_send_errors": 0, "backend": "ovs",
            "details": {
                "ports": ["0: weft-ovs (internal)", "1: weft-ovs-vx (vxlan udp/6784)"],
                "flows": 3, "hits": 100, "misses": 8, "lost": 0,
                "upcalls_answered": 5, "upcalls_unanswered": {"unknown_mac": 2},
                "upcalls_rate_limited": 1, "upcalls_failed": 0, "flows_expired": 3
            },
            "group_dsts": ["10.77.0.2", "10.77.0.3"]
        });
        report
    }

    #[test]
    fn the_datapath_status_shows_the_ovs_miss_path() {
        let report: Report = serde_json::from_value(with_ovs()).unwrap();
        let text = render_datapath(&report);
        assert!(
            text.contains(
                "   upcalls: 5 answered, 2 unanswered (unknown_mac 2), 1 rate-limited, 0 failed; \
                 3 idle flows expired\n"
            ),
            "{text}"
        );
        assert!(text.contains("3 flows"), "{text}");
        assert!(
            text.contains(
                "   group frames: replicated in the kernel to 10.77.0.2, 10.77.0.3 (the sleeve \
                 carries them to the rest)\n"
            ),
            "{text}"
        );
    }
}
