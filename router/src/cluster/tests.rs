//! Golden text and JSON of `weft status --cluster` on hand-made reports.

use serde_json::{Value, json};

use super::*;

const ONE: &str = "aa:00:00:00:00:01";
pub(crate) const TWO: &str = "aa:00:00:00:00:02";
const THREE: &str = "aa:00:00:00:00:03";
pub(crate) const FOUR: &str = "aa:00:00:00:00:04";

fn link(health: &str, reason: Value) -> Value {
    json!({
        "peer": TWO, "datapath": "sleeve", "encrypted": true, "health": health,
        "reason": reason, "pmtu": "confirmed", "heartbeat_age_ms": 100, "path_mtu": 1438,
        "overlay_mtu": 1376, "datagrams_out": 0, "bytes_out": 0, "datagrams_in": 0,
        "bytes_in": 0, "drops": {"auth": 0, "replay": 0, "malformed": 0, "send_errors": 0}
    })
}

fn owner(peer: &str, nickname: &str, addresses: u64, reachable: bool) -> Value {
    json!({"peer": peer, "nickname": nickname, "reachable": reachable, "ranges": [],
           "addresses": addresses, "free": addresses / 2})
}

/// Router `one` in a mesh of three: `two` connected (link up), `three` reached through `two`
/// while its own address refuses, and `four` gone from the mesh but still owning space.
pub(crate) fn mesh() -> Value {
    json!({
        "version": "0.1.0", "protocol": [1, 2], "name": ONE, "nickname": "one",
        "uid": 1, "encryption": true, "mesh_id": "weft", "port": 6783, "conn_limit": 100,
        "peers": peers(),
        "routes": [
            {"peer": TWO, "nickname": "two", "via": TWO, "via_nickname": "two"},
            {"peer": THREE, "nickname": "three", "via": TWO, "via_nickname": "two"},
        ],
        "counters": {"connections_terminated": 0, "unicast_dropped_no_route": 0,
                     "malformed_gossip": 0},
        "connections": [
            {"direction": "outbound", "address": "10.0.0.2:6783", "state": "established",
             "peer": TWO, "nickname": "two", "encrypted": true, "up_secs": 300,
             "source": null, "datapath": link("up", Value::Null)},
            {"direction": "outbound", "address": "10.0.0.3:6783", "state": "retrying",
             "reason": "connection refused", "retry_in_secs": 4, "attempts": 3,
             "source": "discovered"},
            {"direction": "inbound", "address": "10.0.0.9:40000", "state": "failed",
             "reason": "password mismatch (2s ago)"},
        ],
        "datapath": sleeve(),
        "ipam": ipam(),
        "store": null,
    })
}

fn peers() -> Value {
    json!([
        {"name": ONE, "nickname": "one", "uid": 1, "version": 3, "connections": [
            {"name": TWO, "nickname": "two", "address": "10.0.0.2:6783",
             "outbound": true, "established": true}]},
        {"name": TWO, "nickname": "two", "uid": 2, "version": 4, "connections": [
            {"name": ONE, "nickname": "one", "address": "10.0.0.1:41000",
             "outbound": false, "established": true},
            {"name": THREE, "nickname": "three", "address": "10.0.0.3:6783",
             "outbound": true, "established": true}]},
        {"name": THREE, "nickname": "three", "uid": 3, "version": 2, "connections": [
            {"name": TWO, "nickname": "two", "address": "10.0.0.2:40000",
             "outbound": false, "established": true}]},
    ])
}

fn sleeve() -> Value {
    json!({
        "kind": "sleeve", "bridge": "weft", "mtu": 1376, "encrypted": true,
        "offloads": true, "links": 1, "macs": 0, "frames_out": 0, "frames_in": 0,
        "datagrams_out": 0, "datagrams_in": 0, "bytes_out": 0, "bytes_in": 0,
        "relayed": 0, "reassembled": 0,
        "drops": {"no_route": 0, "too_big": 0, "auth": 0, "replay": 0, "malformed": 0,
                  "unknown_sender": 0, "unauthenticated": 0, "incomplete": 0,
                  "too_big_answered": 0, "send_errors": 0, "tap_write_errors": 0},
        "mac_table": [], "gossiped_macs": 0,
        "mac_guard": {"pinned": 0, "unattached_local": 0, "max_unattached_local": 0,
                      "refused_unattached": 0, "conflicts": 0, "gossip_rate_limited": 0,
                      "gossip_conflicts": 0},
        "port_guard": null
    })
}

fn ipam() -> Value {
    json!({
        "range": "10.32.0.0/12", "range_size": 1048576, "state": "ready",
        "waiting_for_ring": null, "ring": "(1, aa:00:00:00:00:01, 7)", "ring_hash": "ab",
        "gateway": "10.32.0.1", "gateway_moved": null,
        "owners": [owner(ONE, "one", 524288, true), owner(TWO, "two", 262144, true),
                   owner(THREE, "three", 131072, true), owner(FOUR, "", 131072, false)],
        "unowned": 0, "unreachable_owners": [FOUR], "unreachable_fraction": 0.125,
        "pending": null, "waiting_adds": 0, "allocated": 1, "orphans": 0,
        "reserved_for_peers": 0, "conflicts": [], "incompatible_updates": 0,
        "allocations": [],
        "counters": {"adds": 0, "add_failures": 0, "dels": 0, "released": 0,
                     "gc_released": 0, "persist_failures": 0, "gateway_moves": 0}
    })
}

/// The same mesh with the API view: Nodes for one, two and three, a Node `node-5` with no weft
/// peer whose InternalIP refuses, and `four` with no Node.
fn with_kube(mut report: Value) -> Value {
    report["kube"] = json!({
        "node_name": "node-1", "watching": true, "error": null, "leader": true,
        "nodes": [
            {"name": "node-1", "internal_ips": ["10.0.0.1"], "peer_name": ONE,
             "network_unavailable": false, "ready": true},
            {"name": "node-2", "internal_ips": ["10.0.0.2"], "peer_name": TWO,
             "network_unavailable": false, "ready": true},
            {"name": "node-3", "internal_ips": ["10.0.0.3"], "peer_name": THREE,
             "network_unavailable": true, "ready": true},
            {"name": "node-5", "internal_ips": ["10.0.0.5"], "peer_name": null,
             "network_unavailable": null, "ready": false},
        ]
    });
    report["connections"].as_array_mut().unwrap().push(json!(
        {"direction": "outbound", "address": "10.0.0.5:6783", "state": "retrying",
         "reason": "connection refused", "retry_in_secs": 9, "attempts": 5,
         "source": "direct"}));
    report
}

fn view(report: Value) -> ClusterView {
    build(&serde_json::from_value(report).expect("a report"))
}

#[test]
fn the_mesh_view_has_a_line_per_peer_and_per_owner_that_left() {
    let text = render(&view(mesh()));
    assert_eq!(text, GOLDEN_MESH);
}

#[test]
fn the_api_view_joins_nodes_to_peers_by_peer_name() {
    let text = render(&view(with_kube(mesh())));
    assert_eq!(text, GOLDEN_KUBE);
}

#[test]
fn an_unready_router_says_why_and_a_node_without_conditions_is_unknown() {
    let mut report = with_kube(mesh());
    report["ipam"]["state"] = json!("no ring");
    report["ipam"]["waiting_for_ring"] = json!("no ring yet: 0 of 1 initial peers reachable");
    report["kube"]["nodes"][1]["network_unavailable"] = Value::Null;
    let view = view(report);
    let one = &view.nodes[0];
    assert_eq!(one.ready, Some(false));
    assert_eq!(
        one.readiness,
        "ipam: no ring yet: 0 of 1 initial peers reachable"
    );
    let two = &view.nodes[1];
    assert_eq!(two.ready, None);
    assert_eq!(
        two.readiness,
        "unknown (no NetworkUnavailable condition on the Node)"
    );
}

#[test]
fn a_down_link_shows_its_reason_and_a_control_plane_router_has_no_mtu() {
    let mut report = mesh();
    report["connections"][0]["datapath"] = link("down", json!("no UDP heartbeat for 6s"));
    report["datapath"] = Value::Null;
    let view = view(report);
    assert_eq!(
        view.nodes[1].datapath,
        Some(DatapathLine {
            kind: "sleeve".into(),
            health: "down".into(),
            reason: Some("no UDP heartbeat for 6s".into()),
        })
    );
    assert!(render(&view).contains("  sleeve down (no UDP heartbeat for 6s)  "));
    assert_eq!(view.nodes[0].mtu, None);
    assert_eq!(view.nodes[0].datapath.as_ref().unwrap().kind, "none");
}

#[test]
fn the_json_has_stable_field_names() {
    let json = serde_json::to_value(view(with_kube(mesh()))).unwrap();
    assert_eq!(json["observer"], "aa:00:00:00:00:01(one)");
    assert_eq!(json["kube"]["node_name"], "node-1");
    let two = &json["nodes"][1];
    assert_eq!(
        two,
        &json!({
            "peer": TWO, "nickname": "two", "node": "node-2", "reachable": "direct",
            "via": null,
            "connection": {"direction": "outbound", "address": "10.0.0.2:6783",
                           "state": "established", "up_secs": 300, "reason": null},
            "datapath": {"kind": "sleeve", "health": "up", "reason": null},
            "encrypted": true, "mtu": 1376,
            "ipam": {"addresses": 262144, "free": 131072, "fraction": 0.25},
            "ready": true, "readiness": "Node Ready, NetworkUnavailable False", "note": null
        })
    );
    let five = &json["nodes"][4];
    assert_eq!(five["peer"], Value::Null);
    assert_eq!(five["node"], "node-5");
    assert_eq!(five["reachable"], "none");
    assert_eq!(five["connection"]["address"], "10.0.0.5:6783");
}

#[test]
fn a_target_no_node_accounts_for_gets_its_own_line() {
    let mut report = mesh();
    let connections = report["connections"].as_array_mut().unwrap();
    connections.push(json!({"direction": "outbound", "address": "10.0.0.7:6783",
        "state": "retrying", "reason": "no route to host", "source": "direct"}));
    connections.push(json!({"direction": "outbound", "address": "10.0.0.1:6783",
        "state": "failed", "reason": "cannot connect to ourself", "source": "direct"}));
    let view = view(report);
    assert_eq!(view.nodes.len(), 5, "the self-dial is not a node");
    let line = &view.nodes[4];
    assert_eq!(line.peer, None);
    assert_eq!(line.reachable, "none");
    assert_eq!(
        line.connection.as_ref().map(|c| c.address.as_str()),
        Some("10.0.0.7:6783")
    );
    let text = render(&view);
    assert!(
        text.lines()
            .any(|l| l.starts_with("-  ")
                && l.contains("  retrying 10.0.0.7:6783 (no route to host)  ")),
        "{text}"
    );
    assert!(text.ends_with("note: 10.0.0.7:6783: a dial target no known peer or Node has\n"));
}

#[test]
fn hosts_of_addresses() {
    assert_eq!(host_of("10.0.0.1:6783"), "10.0.0.1");
    assert_eq!(host_of("[fd00::1]:6783"), "fd00::1");
    assert_eq!(duration(59), "59s");
    assert_eq!(duration(300), "5m");
    assert_eq!(duration(3 * 3600), "3h");
    assert_eq!(duration(3 * 86400), "3d");
}

const GOLDEN_MESH: &str = "\
4 nodes seen by aa:00:00:00:00:01(one) through the mesh (no Kubernetes API view)
PEER                      REACHABLE                   CONNECTION                                   DATAPATH                      ENCRYPTION  MTU   IPAM                      READY
aa:00:00:00:00:01(one)    self                        -                                            sleeve running (bridge weft)  encrypted   1376  50.0% (524288 addresses)  yes
aa:00:00:00:00:02(two)    direct                      established outbound 5m                      sleeve up                     encrypted   1376  25.0% (262144 addresses)  unknown (no Kubernetes API view)
aa:00:00:00:00:03(three)  via aa:00:00:00:00:02(two)  retrying 10.0.0.3:6783 (connection refused)  -                             -           -     12.5% (131072 addresses)  unknown (no Kubernetes API view)
aa:00:00:00:00:04         not in mesh                 -                                            -                             -           -     12.5% (131072 addresses)  unknown (no Kubernetes API view)
note: aa:00:00:00:00:04: owns address space but left the mesh (`weft rmpeer` if gone for good)
";
const GOLDEN_KUBE: &str = "\
5 nodes seen by aa:00:00:00:00:01(one) through the mesh and the Kubernetes API (Node node-1)
PEER                      NODE    REACHABLE                   CONNECTION                                   DATAPATH                      ENCRYPTION  MTU   IPAM                      READY
aa:00:00:00:00:01(one)    node-1  self                        -                                            sleeve running (bridge weft)  encrypted   1376  50.0% (524288 addresses)  yes
aa:00:00:00:00:02(two)    node-2  direct                      established outbound 5m                      sleeve up                     encrypted   1376  25.0% (262144 addresses)  yes
aa:00:00:00:00:03(three)  node-3  via aa:00:00:00:00:02(two)  retrying 10.0.0.3:6783 (connection refused)  -                             -           -     12.5% (131072 addresses)  no: NetworkUnavailable (Node condition)
aa:00:00:00:00:04         -       not in mesh                 -                                            -                             -           -     12.5% (131072 addresses)  unknown (no Node)
-                         node-5  -                           retrying 10.0.0.5:6783 (connection refused)  -                             -           -     -                         no: Node NotReady
note: aa:00:00:00:00:04: no Node records this peer (outside Kubernetes?); owns address space but left the mesh (`weft rmpeer` if gone for good)
note: node-5: no weft peer recorded on this Node (no router, or not started yet)
";
