//! Readiness (`/readyz`, `weft status --wait`): whether this node can take pods, decided from
//! the status report alone, so the probe, the CLI and `/report` can never disagree.
//!
//! A node is ready when every check passes:
//! - `ipam`: IPAM has an agreed ring and free space to allocate from (`ipam.state` is `ready`);
//! - `datapath`: the data plane runs and every established connection's link is up (a router
//!   started with `--datapath none` passes: it is a control plane only, by choice);
//! - `persistence`: the state store can be written (ADDs are refused while it cannot);
//! - `peers`: says whether every peer the operator named (`--peers`, `weft connect`) is
//!   connected, and which are not and why. It never makes the node unready: another node being
//!   down is no reason to take this one out of service (pods here still reach every peer that is
//!   up), and one dead node would otherwise make every node unready. Addresses that lead back to
//!   this router do not count. With `--kube-peers` it also names every Node the API lists that
//!   this router does not reach, and why (its address' connection state, or no InternalIP);
//! - `kube` (with `--kube-peers` only): whether the Node watch is established, and the last API
//!   errors. It never makes the node unready either: the mesh, IPAM and the data path keep
//!   working from the peers already known while the API is away (a control-plane upgrade, an
//!   RBAC mistake), and an API outage would otherwise take every node out of service at once.
//!   Before the first Node list there is no IPAM ring in a new cluster, which `ipam` says.
//!
//! Liveness (`/healthz`) is not decided here: it only asks whether the router's event loop
//! answers, since restarting fixes a wedged loop but none of the above.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::report::Report;

/// One check: its name, whether it passes, and why (also when it passes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub reason: String,
}

/// The `/readyz` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Readiness {
    /// The failing checks, one `name: reason` line each (what `weft status --wait` prints).
    pub fn failing(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect()
    }
}

/// The connection maker's reason for a target that is this router itself (gossip's
/// `cannot connect to ourself`): such a target is never a missing peer.
const SELF_TARGET: &str = "ourself";

/// The decision.
pub fn decide(report: &Report) -> Readiness {
    let mut checks = vec![
        ipam(report),
        datapath(report),
        persistence(report),
        peers(report),
    ];
    checks.extend(kube(report));
    Readiness {
        ready: checks.iter().all(|c| c.ok),
        checks,
    }
}

fn check(name: &str, ok: bool, reason: String) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        reason,
    }
}

/// Why IPAM cannot allocate now, if it cannot: what the ring agreement waits for (`no ring yet:
/// …`), or the state. Shared with CNI STATUS ([`crate::ipam::IpamHost::status_check`]).
pub fn ipam_not_ready(waiting_for_ring: Option<&str>, state: &str, range: &str) -> Option<String> {
    match waiting_for_ring {
        Some(why) => Some(why.to_owned()),
        None if state != "ready" => Some(format!("{state} in {range}")),
        None => None,
    }
}

/// Why the state store cannot persist, if it cannot. Shared with CNI STATUS.
pub fn persistence_not_ready(failing: Option<&str>) -> Option<String> {
    failing.map(|error| format!("persistence failing: {error}"))
}

fn ipam(report: &Report) -> Check {
    let Some(ipam) = &report.ipam else {
        return check("ipam", false, "IPAM is not reported by this router".into());
    };
    match ipam_not_ready(ipam.waiting_for_ring.as_deref(), &ipam.state, &ipam.range) {
        Some(why) => check("ipam", false, why),
        None => check(
            "ipam",
            true,
            format!(
                "ring {} agreed, {} allocated here",
                ipam.ring.as_deref().unwrap_or("?"),
                ipam.allocated
            ),
        ),
    }
}

fn datapath(report: &Report) -> Check {
    let Some(datapath) = &report.datapath else {
        return check(
            "datapath",
            true,
            "none: control plane only (--datapath none)".into(),
        );
    };
    let down: Vec<String> = report
        .connections
        .iter()
        .filter(|c| c.state == "established")
        .filter_map(|c| c.datapath.as_ref())
        .filter(|link| link.health != "up")
        .map(|link| match &link.reason {
            Some(reason) => format!("{} {} ({reason})", link.peer, link.health),
            None => format!("{} {}", link.peer, link.health),
        })
        .collect();
    if down.is_empty() {
        check(
            "datapath",
            true,
            format!(
                "{} on bridge {}, {} links up",
                datapath.kind, datapath.bridge, datapath.links
            ),
        )
    } else {
        check(
            "datapath",
            false,
            format!("links not up: {}", down.join(", ")),
        )
    }
}

fn persistence(report: &Report) -> Check {
    let Some(store) = &report.store else {
        return check("persistence", true, "no state store reported".into());
    };
    let failing =
        (store.persistence != "ok").then(|| store.error.as_deref().unwrap_or("no error recorded"));
    match persistence_not_ready(failing) {
        Some(why) => check("persistence", false, why),
        None => check("persistence", true, format!("writing {}", store.path)),
    }
}

fn peers(report: &Report) -> Check {
    let (unreached_nodes, node_targets) = unreached_nodes(report);
    let unreached: Vec<_> = report
        .connections
        .iter()
        .filter(|c| c.direction == "outbound" && c.source.as_deref() == Some("direct"))
        // The Nodes' addresses are said with their Node's name below.
        .filter(|c| !node_targets.contains(&c.address))
        .filter(|c| {
            !c.reason
                .as_deref()
                .is_some_and(|reason| reason.contains(SELF_TARGET))
        })
        .collect();
    if unreached.is_empty() && unreached_nodes.is_empty() {
        let established = report
            .connections
            .iter()
            .filter(|c| c.state == "established")
            .count();
        return check(
            "peers",
            true,
            format!("every peer named is connected ({established} connections established)"),
        );
    }
    let mut missing: Vec<String> = unreached
        .iter()
        .map(|c| match &c.reason {
            Some(reason) => format!("{} {} ({reason})", c.address, c.state),
            None => format!("{} {}", c.address, c.state),
        })
        .collect();
    missing.extend(unreached_nodes);
    check(
        "peers",
        true,
        format!(
            "not connected to {} (this does not make the node unready)",
            missing.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests;

/// The Nodes the API lists (other than this router's) that no established connection reaches,
/// each with why; and the addresses this router dials for the Nodes.
fn unreached_nodes(report: &Report) -> (Vec<String>, BTreeSet<String>) {
    let Some(kube) = &report.kube else {
        return (Vec::new(), BTreeSet::new());
    };
    let established: Vec<_> = report
        .connections
        .iter()
        .filter(|c| c.state == "established")
        .collect();
    let mut unreached = Vec::new();
    let mut targets = BTreeSet::new();
    for node in kube.nodes.iter().filter(|n| n.name != kube.node_name) {
        let ips: Vec<IpAddr> = node
            .internal_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        // The address the router dials: the first IPv4 InternalIP, else the first.
        let Some(ip) = ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()) else {
            unreached.push(format!("Node {} (no InternalIP)", node.name));
            continue;
        };
        let target = SocketAddr::new(*ip, report.port).to_string();
        targets.insert(target.clone());
        let reached = established.iter().any(|c| {
            (c.peer.is_some() && c.peer == node.peer_name)
                || c.address
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| ips.contains(&a.ip()))
        });
        if reached {
            continue;
        }
        let why = report
            .connections
            .iter()
            .find(|c| c.direction == "outbound" && c.address == target)
            .map(|c| match &c.reason {
                Some(reason) => format!("{} ({reason})", c.state),
                None => c.state.clone(),
            })
            .unwrap_or_else(|| "not dialled yet".to_owned());
        unreached.push(format!("Node {} {target} {why}", node.name));
    }
    (unreached, targets)
}

/// The Kubernetes API watch (with `--kube-peers`); report-only (see the module docs).
fn kube(report: &Report) -> Option<Check> {
    let kube = report.kube.as_ref()?;
    let reason = match (kube.watching, &kube.error) {
        (true, None) => format!(
            "watching {} Nodes{}",
            kube.nodes.len(),
            if kube.leader { ", reclaim leader" } else { "" }
        ),
        (true, Some(error)) => format!(
            "watching {} Nodes; API errors: {error} (this does not make the node unready)",
            kube.nodes.len()
        ),
        (false, error) => format!(
            "the Node watch is not established: {} (this does not make the node unready)",
            error.as_deref().unwrap_or("starting")
        ),
    };
    Some(check("kube", true, reason))
}
