//! What makes `weft status` exit non-zero: failed connections, decided from the status report
//! alone (like [`crate::readiness`]), so every view (`summary`, `peers`, `connections`,
//! `routes`, `--cluster`, `--json`) exits the same for the same report.
//!
//! A problem is:
//! - an outbound dial target that has failed and is not connected: `retrying` (its dial or its
//!   connection failed; it is being retried), `failed` (it will not be retried: a name
//!   collision), or `connecting` again after a failure. Named (`direct`) and gossip-learned
//!   (`discovered`) targets count alike: a discovered target is a peer of the mesh this router
//!   should, and cannot, connect to. A target that turned out to be this router is not one;
//! - an established connection whose data path link is `down` (pods cannot reach that node);
//! - with the Kubernetes API view, a Node whose router recorded its peer name but that this
//!   router cannot reach through the mesh (an expected peer not reached).
//!
//! Not problems: targets dialled for the first time (`waiting`, `connecting` with no failure
//! yet), links still `starting`, recent inbound failures (anyone who can reach the mesh port
//! can cause them; they stay listed in `weft status connections`), and Nodes no router has
//! recorded a peer name on (weft may not run there; if this router dials their address and
//! fails, that dial is a problem as above).

use crate::readiness::SELF_TARGET;
use crate::report::Report;

/// `weft status`: the report was shown and lists problems (printed to stderr); `weft status
/// --wait`: not ready within `--timeout`.
pub const EXIT_PROBLEMS: i32 = 1;
/// `weft status`: no report: the router could not be reached or did not answer with one.
pub const EXIT_NO_REPORT: i32 = 2;

/// Every problem, one line each, in report order.
pub fn problems(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for c in &report.connections {
        if c.direction != "outbound" || c.state == "established" {
            continue;
        }
        let failed = match c.state.as_str() {
            "retrying" | "failed" => true,
            "connecting" => c.reason.is_some(),
            _ => false,
        };
        let itself = c
            .reason
            .as_deref()
            .is_some_and(|reason| reason.contains(SELF_TARGET));
        if failed && !itself {
            out.push(format!(
                "connection to {} ({}) {}: {}",
                c.address,
                c.source.as_deref().unwrap_or("target"),
                c.state,
                c.reason.as_deref().unwrap_or("no reason recorded")
            ));
        }
    }
    for c in report
        .connections
        .iter()
        .filter(|c| c.state == "established")
    {
        if let Some(link) = c.datapath.as_ref().filter(|l| l.health == "down") {
            out.push(format!(
                "data path to {}({}) down: {}",
                link.peer,
                c.nickname.as_deref().unwrap_or(""),
                link.reason.as_deref().unwrap_or("no reason recorded")
            ));
        }
    }
    for node in report.kube.iter().flat_map(|k| &k.nodes) {
        let Some(peer) = &node.peer_name else {
            continue;
        };
        if *peer != report.name && !report.routes.iter().any(|r| r.peer == *peer) {
            out.push(format!(
                "Node {} (peer {peer}) is not reachable through the mesh",
                node.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn report(connections: Value, kube: Value) -> Report {
        serde_json::from_value(json!({
            "version": "0.1.0", "protocol": [1, 2], "name": "aa:00:00:00:00:01",
            "nickname": "one", "uid": 1, "encryption": true, "mesh_id": "weft", "port": 6783,
            "conn_limit": 100, "peers": [],
            "routes": [{"peer": "aa:00:00:00:00:02", "nickname": "two",
                        "via": "aa:00:00:00:00:02", "via_nickname": "two"}],
            "counters": {"connections_terminated": 0, "unicast_dropped_no_route": 0,
                         "malformed_gossip": 0},
            "connections": connections, "datapath": null, "kube": kube,
        }))
        .expect("a report")
    }

    fn target(state: &str, reason: Value, source: &str) -> Value {
        json!({"direction": "outbound", "address": "10.0.0.3:6783", "state": state,
               "reason": reason, "source": source, "attempts": 2})
    }

    #[test]
    fn a_healthy_report_has_no_problem() {
        let established = json!({"direction": "outbound", "address": "10.0.0.2:6783",
            "state": "established", "peer": "aa:00:00:00:00:02", "nickname": "two",
            "encrypted": true, "up_secs": 3});
        let first_dial = target("connecting", Value::Null, "direct");
        let waiting = target("waiting", Value::Null, "discovered");
        let ourself = target("failed", json!("cannot connect to ourself"), "direct");
        let inbound = json!({"direction": "inbound", "address": "10.0.0.9:40000",
            "state": "failed", "reason": "password mismatch (2s ago)"});
        let r = report(
            json!([established, first_dial, waiting, ourself, inbound]),
            Value::Null,
        );
        assert_eq!(problems(&r), Vec::<String>::new());
    }

    #[test]
    fn failed_targets_named_or_discovered_are_problems() {
        let r = report(
            json!([
                target("retrying", json!("connection refused"), "direct"),
                target("failed", json!("name collision"), "discovered"),
                target("connecting", json!("timed out"), "direct"),
            ]),
            Value::Null,
        );
        assert_eq!(
            problems(&r),
            [
                "connection to 10.0.0.3:6783 (direct) retrying: connection refused",
                "connection to 10.0.0.3:6783 (discovered) failed: name collision",
                "connection to 10.0.0.3:6783 (direct) connecting: timed out",
            ]
        );
    }

    #[test]
    fn a_link_down_is_a_problem_a_starting_one_is_not() {
        let link = |health: &str| {
            json!({"peer": "aa:00:00:00:00:02", "datapath": "sleeve", "encrypted": true,
                "health": health, "reason": "no UDP heartbeat for 6s", "pmtu": "confirmed",
                "heartbeat_age_ms": 6000, "path_mtu": 1438, "overlay_mtu": 1376,
                "datagrams_out": 0, "bytes_out": 0, "datagrams_in": 0, "bytes_in": 0,
                "drops": {"auth": 0, "replay": 0, "malformed": 0, "send_errors": 0}})
        };
        let conn = |health: &str| {
            json!({"direction": "outbound", "address": "10.0.0.2:6783",
                "state": "established", "peer": "aa:00:00:00:00:02", "nickname": "two",
                "encrypted": true, "up_secs": 3, "datapath": link(health)})
        };
        assert!(problems(&report(json!([conn("starting")]), Value::Null)).is_empty());
        assert_eq!(
            problems(&report(json!([conn("down")]), Value::Null)),
            ["data path to aa:00:00:00:00:02(two) down: no UDP heartbeat for 6s"]
        );
    }

    #[test]
    fn a_node_whose_peer_is_not_reachable_is_a_problem() {
        let kube = json!({"node_name": "node-1", "watching": true, "nodes": [
            {"name": "node-1", "peer_name": "aa:00:00:00:00:01", "internal_ips": ["10.0.0.1"]},
            {"name": "node-2", "peer_name": "aa:00:00:00:00:02", "internal_ips": ["10.0.0.2"]},
            {"name": "node-3", "peer_name": "aa:00:00:00:00:03", "internal_ips": ["10.0.0.3"]},
            {"name": "node-4", "internal_ips": ["10.0.0.4"]},
        ]});
        assert_eq!(
            problems(&report(json!([]), kube)),
            ["Node node-3 (peer aa:00:00:00:00:03) is not reachable through the mesh"]
        );
    }
}
