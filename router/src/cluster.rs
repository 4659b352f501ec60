//! `weft status --cluster`: one line per node of the cluster, built from one router's status
//! report (`/report`) alone, so it needs nothing but the local status endpoint and renders the
//! same from the JSON as the router would.
//!
//! The nodes are the union of what this router knows:
//! - the peers of the mesh topology (this router included);
//! - the Nodes the Kubernetes API lists (`kube.nodes`, with `--kube-peers`), joined to peers by
//!   the peer name each router records on its Node; a Node no router recorded a peer name on
//!   still gets a line (no weft router there, or not started yet), and so does a peer no Node
//!   names (a host outside Kubernetes);
//! - the IPAM ring's owners: a peer that left the mesh but still owns address space is shown,
//!   since its share is lost until it returns or is removed (`weft rmpeer`);
//! - the dial targets none of the above accounts for (a named peer that never answered).
//!
//! Each line says what this router sees; a remote node's readiness comes from its Node's
//! `NetworkUnavailable` and `Ready` conditions when the API view exists and is `unknown`
//! otherwise: the mesh does not carry other routers' readiness, and a guess would be worse.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::readiness;
use crate::report::{ConnectionReport, KubeNodeReport, Report};

/// The `--cluster --json` document. Field names are an interface, like `/report`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The router asked (`name(nickname)`): every line is what it sees.
    pub observer: String,
    /// The Kubernetes API view the lines use, if the router has one.
    pub kube: Option<KubeSource>,
    pub nodes: Vec<NodeLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeSource {
    /// The observer's Node.
    pub node_name: String,
    /// Whether the Node watch is established; if not, the Node list may be stale or empty.
    pub watching: bool,
    pub error: Option<String>,
}

/// One node: a peer, a Node, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLine {
    /// The weft peer name, when known (from the mesh or the Node's annotation).
    pub peer: Option<String>,
    /// The peer's nickname, when it is in the topology.
    pub nickname: Option<String>,
    /// The Kubernetes Node, when the API view lists one for this peer.
    pub node: Option<String>,
    /// `self` (the router asked), `direct` (connected), `relayed` (reachable through `via`),
    /// `unreachable` (in the topology, no route), `absent` (not in the mesh: a Node's recorded
    /// peer or an IPAM owner that left), or `none` (a Node with no weft peer recorded).
    pub reachable: String,
    /// The first hop when `relayed`.
    pub via: Option<String>,
    /// This router's connection to the node (or its dial target), if any.
    pub connection: Option<ConnectionLine>,
    /// The data path: the observer's own for `self`, the link's for a connected peer.
    pub datapath: Option<DatapathLine>,
    /// Whether traffic with the node is encrypted, when a connection says so.
    pub encrypted: Option<bool>,
    /// The MTU pods get: the bridge's for `self`, the link's overlay MTU for a connected peer.
    pub mtu: Option<u16>,
    /// The node's share of the IPAM range, when it owns space in the ring.
    pub ipam: Option<IpamShare>,
    /// Ready to run pods: `Some` when known, `None` when it cannot be known from here.
    pub ready: Option<bool>,
    /// Why `ready` says what it says.
    pub readiness: String,
    /// Anything else worth saying (a Node without a router, a peer without a Node).
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionLine {
    /// `inbound` or `outbound`.
    pub direction: String,
    pub address: String,
    /// The `connections[].state` of `/report`.
    pub state: String,
    pub up_secs: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatapathLine {
    /// `vxlan` or `sleeve` for a link; `auto`, `vxlan`, `sleeve` or `none` for the observer.
    pub kind: String,
    /// `up`, `starting` or `down` for a link; `running` for the observer's own data plane.
    pub health: String,
    /// Why the link is not up, as the report gives it.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpamShare {
    pub addresses: u64,
    pub free: u64,
    /// `addresses` over the range's size.
    pub fraction: f64,
}

/// Builds the view from a report.
pub fn build(report: &Report) -> ClusterView {
    let nodes_by_peer = nodes_by_peer(report);
    let owners: BTreeMap<&str, &crate::ipam::OwnerReport> = report
        .ipam
        .iter()
        .flat_map(|i| &i.owners)
        .map(|o| (o.peer.as_str(), o))
        .collect();
    let mut peers: Vec<&str> = report.peers.iter().map(|p| p.name.as_str()).collect();
    peers.push(&report.name);
    peers.extend(nodes_by_peer.keys().copied());
    peers.extend(owners.keys().copied());
    peers.sort_unstable();
    peers.dedup();

    let mut lines: Vec<NodeLine> = peers
        .into_iter()
        .map(|peer| peer_line(report, peer, nodes_by_peer.get(peer).copied(), &owners))
        .collect();
    if let Some(kube) = &report.kube {
        lines.extend(
            kube.nodes
                .iter()
                .filter(|n| n.peer_name.is_none())
                .map(|node| node_only_line(report, node)),
        );
    }
    // Dial targets no line accounts for: a named peer that never answered, or one that left
    // the topology (its address is all this router has).
    let shown: Vec<String> = lines
        .iter()
        .filter_map(|l| l.connection.as_ref().map(|c| c.address.clone()))
        .collect();
    lines.extend(
        report
            .connections
            .iter()
            .filter(|c| c.direction == "outbound" && c.state != "established")
            .filter(|c| !shown.contains(&c.address))
            .filter(|c| {
                !c.reason
                    .as_deref()
                    .is_some_and(|r| r.contains(readiness::SELF_TARGET))
            })
            .map(target_only_line),
    );
    ClusterView {
        observer: format!("{}({})", report.name, report.nickname),
        kube: report.kube.as_ref().map(|k| KubeSource {
            node_name: k.node_name.clone(),
            watching: k.watching,
            error: k.error.clone(),
        }),
        nodes: lines,
    }
}

/// The Nodes that name a peer, by peer name (the first Node wins if two name the same peer).
fn nodes_by_peer(report: &Report) -> BTreeMap<&str, &KubeNodeReport> {
    let mut by_peer = BTreeMap::new();
    for node in report.kube.iter().flat_map(|k| &k.nodes) {
        if let Some(peer) = &node.peer_name {
            by_peer.entry(peer.as_str()).or_insert(node);
        }
    }
    by_peer
}

fn peer_line(
    report: &Report,
    peer: &str,
    node: Option<&KubeNodeReport>,
    owners: &BTreeMap<&str, &crate::ipam::OwnerReport>,
) -> NodeLine {
    let is_self = peer == report.name;
    let in_topology = report.peers.iter().find(|p| p.name == peer);
    let nickname = if is_self {
        Some(report.nickname.clone())
    } else {
        in_topology.map(|p| p.nickname.clone())
    };
    let route = report.routes.iter().find(|r| r.peer == peer);
    let (reachable, via) = match (is_self, route, in_topology) {
        (true, _, _) => ("self", None),
        (false, Some(r), _) if r.via == r.peer => ("direct", None),
        (false, Some(r), _) => ("relayed", Some(format!("{}({})", r.via, r.via_nickname))),
        (false, None, Some(_)) => ("unreachable", None),
        (false, None, None) => ("absent", None),
    };
    let established = report
        .connections
        .iter()
        .find(|c| c.state == "established" && c.peer.as_deref() == Some(peer));
    let connection = if is_self {
        None
    } else {
        established.or_else(|| dial_target(report, &peer_addresses(report, peer, node)))
    };
    let (datapath, encrypted, mtu) = if is_self {
        (
            Some(match &report.datapath {
                Some(d) => DatapathLine {
                    kind: if d.mode.is_empty() {
                        d.kind.clone()
                    } else {
                        d.mode.clone()
                    },
                    health: "running".into(),
                    reason: Some(format!("bridge {}", d.bridge)),
                },
                None => DatapathLine {
                    kind: "none".into(),
                    health: "control plane only".into(),
                    reason: None,
                },
            }),
            Some(report.encryption),
            report.datapath.as_ref().map(|d| d.mtu),
        )
    } else {
        let link = established.and_then(|c| c.datapath.as_ref());
        (
            link.map(|l| DatapathLine {
                kind: l.datapath.clone(),
                health: l.health.clone(),
                // Why not up; else, on the sleeve, why not the fast path.
                reason: l.reason.clone().or_else(|| {
                    (l.datapath == "sleeve" && !l.datapath_reason.is_empty())
                        .then(|| l.datapath_reason.clone())
                }),
            }),
            established.and_then(|c| c.encrypted),
            link.map(|l| l.overlay_mtu),
        )
    };
    let ipam = owners.get(peer).map(|o| IpamShare {
        addresses: o.addresses,
        free: o.free,
        fraction: fraction(o.addresses, report),
    });
    let (ready, readiness) = if is_self {
        let decision = readiness::decide(report);
        if decision.ready {
            (Some(true), "ready (this router's /readyz)".to_owned())
        } else {
            (Some(false), decision.failing().join("; "))
        }
    } else {
        remote_readiness(report, node)
    };
    let mut notes = Vec::new();
    if node.is_none() && report.kube.is_some() {
        notes.push("no Node records this peer (outside Kubernetes?)");
    }
    if reachable == "absent" && node.is_some() {
        notes.push("the Node's recorded peer is not in the mesh (router down?)");
    }
    if reachable == "absent" && ipam.is_some() {
        notes.push("owns address space but left the mesh (`weft rmpeer` if gone for good)");
    }
    let note = (!notes.is_empty()).then(|| notes.join("; "));
    NodeLine {
        peer: Some(peer.to_owned()),
        nickname,
        node: node.map(|n| n.name.clone()),
        reachable: reachable.to_owned(),
        via,
        connection: connection.map(connection_line),
        datapath,
        encrypted,
        mtu,
        ipam,
        ready,
        readiness,
        note,
    }
}

/// A Node that no router recorded a peer name on.
fn node_only_line(report: &Report, node: &KubeNodeReport) -> NodeLine {
    let addresses: Vec<String> = node.internal_ips.clone();
    let (ready, readiness) = remote_readiness(report, Some(node));
    NodeLine {
        peer: None,
        nickname: None,
        node: Some(node.name.clone()),
        reachable: "none".into(),
        via: None,
        connection: dial_target(report, &addresses).map(connection_line),
        datapath: None,
        encrypted: None,
        mtu: None,
        ipam: None,
        ready,
        readiness,
        note: Some("no weft peer recorded on this Node (no router, or not started yet)".into()),
    }
}

/// A dial target that no peer or Node of the view has.
fn target_only_line(target: &ConnectionReport) -> NodeLine {
    NodeLine {
        peer: None,
        nickname: None,
        node: None,
        reachable: "none".into(),
        via: None,
        connection: Some(connection_line(target)),
        datapath: None,
        encrypted: None,
        mtu: None,
        ipam: None,
        ready: None,
        readiness: "unknown (no peer known at this address)".into(),
        note: Some("a dial target no known peer or Node has".into()),
    }
}

/// The addresses `peer` may be dialled at: where the peers that announce a connection to it
/// reach it, and its Node's InternalIPs.
fn peer_addresses(report: &Report, peer: &str, node: Option<&KubeNodeReport>) -> Vec<String> {
    let mut addresses: Vec<String> = report
        .peers
        .iter()
        .flat_map(|p| &p.connections)
        .filter(|c| c.name == peer)
        .filter_map(|c| c.address.clone())
        .collect();
    addresses.extend(node.iter().flat_map(|n| n.internal_ips.iter().cloned()));
    addresses
}

/// The outbound target (not connected) at one of `addresses`: an `ip:port` equal to one, or
/// whose host is one (a Node's InternalIP has no port).
fn dial_target<'a>(report: &'a Report, addresses: &[String]) -> Option<&'a ConnectionReport> {
    report
        .connections
        .iter()
        .filter(|c| c.direction == "outbound" && c.state != "established")
        .find(|c| {
            addresses
                .iter()
                .any(|a| *a == c.address || host_of(&c.address) == a.as_str())
        })
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn connection_line(c: &ConnectionReport) -> ConnectionLine {
    ConnectionLine {
        direction: c.direction.clone(),
        address: c.address.clone(),
        state: c.state.clone(),
        up_secs: c.up_secs,
        reason: c.reason.clone(),
    }
}

fn fraction(addresses: u64, report: &Report) -> f64 {
    match report.ipam.as_ref().map(|i| i.range_size) {
        Some(size) if size > 0 => addresses as f64 / size as f64,
        _ => 0.0,
    }
}

/// A remote node's readiness, from its Node's conditions (the router there sets
/// `NetworkUnavailable` to False once its data path is up; the kubelet sets `Ready`).
fn remote_readiness(report: &Report, node: Option<&KubeNodeReport>) -> (Option<bool>, String) {
    let Some(node) = node else {
        let why = if report.kube.is_some() {
            "unknown (no Node)"
        } else {
            "unknown (no Kubernetes API view)"
        };
        return (None, why.to_owned());
    };
    match (node.network_unavailable, node.ready) {
        (Some(true), _) => (
            Some(false),
            "NetworkUnavailable (Node condition)".to_owned(),
        ),
        (_, Some(false)) => (Some(false), "Node NotReady".to_owned()),
        (Some(false), Some(true)) => (
            Some(true),
            "Node Ready, NetworkUnavailable False".to_owned(),
        ),
        (None, _) => (
            None,
            "unknown (no NetworkUnavailable condition on the Node)".to_owned(),
        ),
        (Some(false), None) => (None, "unknown (no Ready condition on the Node)".to_owned()),
    }
}

/// The text table.
pub fn render(view: &ClusterView) -> String {
    let mut s = String::new();
    let source = match &view.kube {
        None => "the mesh (no Kubernetes API view)".to_owned(),
        Some(k) if k.watching => format!("the mesh and the Kubernetes API (Node {})", k.node_name),
        Some(k) => format!(
            "the mesh and the Kubernetes API (Node {}), NOT watching: {}",
            k.node_name,
            k.error.as_deref().unwrap_or("no error recorded")
        ),
    };
    let _ = writeln!(
        s,
        "{} nodes seen by {} through {source}",
        view.nodes.len(),
        view.observer
    );
    let with_nodes = view.kube.is_some();
    let mut header = vec!["PEER"];
    if with_nodes {
        header.push("NODE");
    }
    header.extend([
        "REACHABLE",
        "CONNECTION",
        "DATAPATH",
        "ENCRYPTION",
        "MTU",
        "IPAM",
        "READY",
    ]);
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for n in &view.nodes {
        let mut row = vec![match (&n.peer, &n.nickname) {
            (Some(p), Some(nick)) => format!("{p}({nick})"),
            (Some(p), None) => p.clone(),
            (None, _) => "-".to_owned(),
        }];
        if with_nodes {
            row.push(n.node.clone().unwrap_or_else(|| "-".to_owned()));
        }
        row.push(match (&n.via, n.reachable.as_str()) {
            (Some(via), _) => format!("via {via}"),
            (None, "absent") => "not in mesh".to_owned(),
            (None, "none") => "-".to_owned(),
            (None, reachable) => reachable.to_owned(),
        });
        row.push(
            n.connection
                .as_ref()
                .map_or("-".to_owned(), render_connection),
        );
        row.push(
            n.datapath
                .as_ref()
                .map_or("-".to_owned(), |d| match &d.reason {
                    Some(reason) => format!("{} {} ({reason})", d.kind, d.health),
                    None => format!("{} {}", d.kind, d.health),
                }),
        );
        row.push(match n.encrypted {
            Some(true) => "encrypted".to_owned(),
            Some(false) => "unencrypted".to_owned(),
            None => "-".to_owned(),
        });
        row.push(n.mtu.map_or("-".to_owned(), |m| m.to_string()));
        row.push(n.ipam.as_ref().map_or("-".to_owned(), |i| {
            format!("{:.1}% ({} addresses)", i.fraction * 100.0, i.addresses)
        }));
        row.push(match n.ready {
            Some(true) => "yes".to_owned(),
            Some(false) => format!("no: {}", n.readiness),
            None => n.readiness.clone(),
        });
        rows.push(row);
    }
    write_table(&mut s, &rows);
    for n in &view.nodes {
        if let Some(note) = &n.note {
            let who = n
                .node
                .as_deref()
                .or(n.peer.as_deref())
                .or(n.connection.as_ref().map(|c| c.address.as_str()))
                .unwrap_or("-");
            let _ = writeln!(s, "note: {who}: {note}");
        }
    }
    s
}

fn render_connection(c: &ConnectionLine) -> String {
    let mut out = c.state.clone();
    if c.state == "established" {
        let _ = write!(out, " {}", c.direction);
        if let Some(up) = c.up_secs {
            let _ = write!(out, " {}", duration(up));
        }
    } else {
        let _ = write!(out, " {}", c.address);
    }
    if let Some(reason) = &c.reason {
        let _ = write!(out, " ({reason})");
    }
    out
}

/// `42s`, `5m`, `3h`, `2d`: rough, like kubectl's AGE.
fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
fn write_table(s: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
}

#[cfg(test)]
pub(crate) mod tests;
