use serde_json::{Value, json};

use super::*;

/// A ready router's report: a ring, a sleeve data plane with one link up, the store writing,
/// its one named peer connected, and a target that is this router itself.
fn ready() -> Value {
    json!({
        "version": "0.1.0", "protocol": [1, 2], "name": "aa:00:00:00:00:01", "nickname": "one",
        "uid": 1, "encryption": true, "mesh_id": "weft", "port": 6783, "conn_limit": 100,
        "peers": [], "routes": [],
        "counters": {"connections_terminated": 0, "unicast_dropped_no_route": 0, "malformed_gossip": 0},
        "connections": [
            {"direction": "outbound", "address": "10.0.0.2:6783", "state": "established",
             "peer": "aa:00:00:00:00:02", "nickname": "two", "encrypted": true, "up_secs": 5,
             "reason": null, "retry_in_secs": null, "attempts": null, "source": null,
             "datapath": link("up")},
            {"direction": "outbound", "address": "10.0.0.1:6783", "state": "failed",
             "peer": null, "nickname": null, "encrypted": null, "up_secs": null,
             "reason": "cannot connect to ourself", "retry_in_secs": null, "attempts": 1,
             "source": "direct", "datapath": null}
        ],
        "datapath": sleeve(),
        "ipam": ring(),
        "store": store(),
    })
}

fn sleeve() -> Value {
    json!({
        "kind": "sleeve", "bridge": "weft", "mtu": 1376, "encrypted": true, "offloads": true,
        "links": 1, "macs": 0, "frames_out": 0, "frames_in": 0, "datagrams_out": 0,
        "datagrams_in": 0, "bytes_out": 0, "bytes_in": 0, "relayed": 0, "reassembled": 0,
        "drops": {"no_route": 0, "too_big": 0, "auth": 0, "replay": 0, "malformed": 0,
                  "unknown_sender": 0, "unauthenticated": 0, "incomplete": 0,
                  "too_big_answered": 0, "send_errors": 0, "tap_write_errors": 0},
        "mac_table": [], "gossiped_macs": 0, "mac_guard": {"pinned": 0, "unattached_local": 0, "max_unattached_local": 0,
                      "refused_unattached": 0, "conflicts": 0, "gossip_rate_limited": 0,
                      "gossip_conflicts": 0}, "port_guard": null
    })
}

fn ring() -> Value {
    json!({
        "range": "10.32.0.0/12", "range_size": 1048576, "state": "ready",
        "waiting_for_ring": null, "ring": "(1, aa:00:00:00:00:01, 7)", "ring_hash": "ab",
        "gateway": "10.32.0.1", "gateway_moved": null, "owners": [], "unowned": 0,
        "unreachable_owners": [], "unreachable_fraction": 0.0, "pending": null,
        "waiting_adds": 0, "allocated": 1, "orphans": 0, "reserved_for_peers": 0,
        "conflicts": [], "incompatible_updates": 0, "allocations": [],
        "counters": {"adds": 0, "add_failures": 0, "dels": 0, "released": 0,
                     "gc_released": 0, "persist_failures": 0, "gateway_moves": 0}
    })
}

fn store() -> Value {
    json!({
        "path": "/var/lib/weft/weft.redb", "last_good_copy": "/var/lib/weft/weft.lastgood",
        "persistence": "ok", "error": null, "failing_secs": null, "write_failures": 0,
        "reopens": 0, "reopen_failures": 0, "recovered_from": null
    })
}

fn link(health: &str) -> Value {
    json!({
        "peer": "aa:00:00:00:00:02", "datapath": "sleeve", "encrypted": true, "health": health,
        "reason": if health == "up" { Value::Null } else { json!("no heartbeat for 31s") },
        "pmtu": "confirmed", "heartbeat_age_ms": 100, "path_mtu": 1438, "overlay_mtu": 1376,
        "datagrams_out": 0, "bytes_out": 0, "datagrams_in": 0, "bytes_in": 0,
        "drops": {"auth": 0, "replay": 0, "malformed": 0, "send_errors": 0}
    })
}

fn decide_json(report: Value) -> Readiness {
    decide(&serde_json::from_value(report).expect("a report"))
}

fn failing_check(readiness: &Readiness) -> Vec<&str> {
    readiness
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect()
}

#[test]
fn a_router_with_a_ring_a_datapath_a_store_and_its_peers_is_ready() {
    let readiness = decide_json(ready());
    assert!(readiness.ready, "{readiness:?}");
    let names: Vec<_> = readiness.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ipam", "datapath", "persistence", "peers"]);
    assert!(readiness.failing().is_empty());
}

#[test]
fn no_ring_is_not_ready_and_says_what_it_waits_for() {
    let mut report = ready();
    report["ipam"]["state"] = json!("no ring");
    report["ipam"]["waiting_for_ring"] =
        json!("no ring yet: 0 of 1 initial peers reachable: 10.0.0.9:6783 (refused)");
    let readiness = decide_json(report);
    assert!(!readiness.ready);
    assert_eq!(failing_check(&readiness), ["ipam"]);
    assert_eq!(
        readiness.failing(),
        ["ipam: no ring yet: 0 of 1 initial peers reachable: 10.0.0.9:6783 (refused)"]
    );
}

#[test]
fn no_free_space_is_not_ready() {
    let mut report = ready();
    report["ipam"]["state"] = json!("waiting for space");
    let readiness = decide_json(report);
    assert_eq!(failing_check(&readiness), ["ipam"]);
    assert!(readiness.failing()[0].contains("waiting for space in 10.32.0.0/12"));
}

#[test]
fn a_missing_ipam_report_is_not_ready() {
    let mut report = ready();
    report["ipam"] = Value::Null;
    assert_eq!(failing_check(&decide_json(report)), ["ipam"]);
}

#[test]
fn a_link_that_is_down_makes_the_datapath_not_ready() {
    let mut report = ready();
    report["connections"][0]["datapath"] = link("down");
    let readiness = decide_json(report);
    assert_eq!(failing_check(&readiness), ["datapath"]);
    assert!(readiness.failing()[0].contains("aa:00:00:00:00:02 down (no heartbeat for 31s)"));
}

#[test]
fn a_control_plane_only_router_passes_the_datapath_check() {
    let mut report = ready();
    report["datapath"] = Value::Null;
    report["connections"][0]["datapath"] = Value::Null;
    assert!(decide_json(report).ready);
}

#[test]
fn failing_persistence_is_not_ready_and_says_why() {
    let mut report = ready();
    report["store"]["persistence"] = json!("failing");
    report["store"]["error"] = json!("No space left on device");
    let readiness = decide_json(report);
    assert_eq!(failing_check(&readiness), ["persistence"]);
    assert_eq!(
        readiness.failing(),
        ["persistence: persistence failing: No space left on device"]
    );
}

#[test]
fn a_named_peer_not_connected_is_said_with_its_reason_but_keeps_the_node_ready() {
    let mut report = ready();
    report["connections"].as_array_mut().unwrap().push(
        json!({"direction": "outbound", "address": "10.0.0.3:6783", "state": "retrying",
            "peer": null, "nickname": null, "encrypted": null, "up_secs": null,
            "reason": "connection refused", "retry_in_secs": 4, "attempts": 3,
            "source": "direct", "datapath": null}),
    );
    let readiness = decide_json(report);
    assert!(readiness.ready, "{readiness:?}");
    let peers = &readiness.checks[3];
    assert_eq!(peers.name, "peers");
    assert!(
        peers
            .reason
            .starts_with("not connected to 10.0.0.3:6783 retrying (connection refused)"),
        "{}",
        peers.reason
    );
}

#[test]
fn discovered_peers_and_inbound_failures_do_not_block_readiness() {
    let mut report = ready();
    let connections = report["connections"].as_array_mut().unwrap();
    connections.push(json!({"direction": "outbound", "address": "10.0.0.4:6783",
        "state": "retrying", "reason": "timed out", "source": "discovered"}));
    connections.push(json!({"direction": "inbound", "address": "10.0.0.5:40000",
        "state": "failed", "reason": "bad password (3s ago)"}));
    assert!(decide_json(report).ready);
}

#[test]
fn every_failing_check_is_listed() {
    let mut report = ready();
    report["ipam"]["waiting_for_ring"] =
        json!("no ring yet: asking 1 reachable peer whether they have a ring: x");
    report["store"]["persistence"] = json!("failing");
    let readiness = decide_json(report);
    assert_eq!(failing_check(&readiness), ["ipam", "persistence"]);
    let json = serde_json::to_value(&readiness).unwrap();
    assert_eq!(json["ready"], false);
    assert_eq!(json["checks"][0]["name"], "ipam");
    assert_eq!(json["checks"][0]["ok"], false);
}

fn with_nodes(mut report: Value) -> Value {
    report["kube"] = json!({
        "node_name": "one", "watching": true, "error": null, "leader": false,
        "nodes": [
            {"name": "one", "internal_ips": ["10.0.0.1"], "peer_name": "aa:00:00:00:00:01"},
            {"name": "two", "internal_ips": ["10.0.0.2"], "peer_name": "aa:00:00:00:00:02"},
            {"name": "three", "internal_ips": ["10.0.0.3"], "peer_name": null},
            {"name": "four", "internal_ips": []}
        ]
    });
    report["connections"].as_array_mut().unwrap().push(
        json!({"direction": "outbound", "address": "10.0.0.3:6783", "state": "retrying",
            "reason": "connection refused", "source": "direct"}),
    );
    report
}

#[test]
fn listed_nodes_not_reached_are_named_with_why_but_keep_the_node_ready() {
    let readiness = decide_json(with_nodes(ready()));
    assert!(readiness.ready, "{readiness:?}");
    let peers = &readiness.checks[3].reason;
    assert!(
        peers.contains("Node three 10.0.0.3:6783 retrying (connection refused)"),
        "{peers}"
    );
    assert!(peers.contains("Node four (no InternalIP)"), "{peers}");
    assert!(!peers.contains("two"), "node two is connected: {peers}");
    assert_eq!(peers.matches("10.0.0.3").count(), 1, "said once: {peers}");
    let kube = &readiness.checks[4];
    assert_eq!((kube.name.as_str(), kube.ok), ("kube", true));
    assert!(kube.reason.contains("watching 4 Nodes"), "{}", kube.reason);
}

#[test]
fn a_watch_that_is_not_established_is_said_and_does_not_make_the_node_unready() {
    let mut report = with_nodes(ready());
    report["kube"]["watching"] = json!(false);
    report["kube"]["error"] = json!("watch_nodes: nodes is forbidden");
    let readiness = decide_json(report);
    assert!(readiness.ready);
    assert!(
        readiness.checks[4]
            .reason
            .contains("not established: watch_nodes: nodes is forbidden"),
        "{}",
        readiness.checks[4].reason
    );
}
