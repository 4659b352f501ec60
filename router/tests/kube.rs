//! Peers and reclaim from the Kubernetes API (`--kube-peers`) against the fake API server
//! (`weft_tests::fakeapi`): routers told nothing but their Node form one encrypted mesh and
//! exactly one IPAM ring, record their peer names on their Nodes and set NetworkUnavailable to
//! False; a compaction (410) makes them re-list and carry on; a fourth Node joins; a deleted
//! Node's space is reclaimed by exactly one router; an API without Lease rights is an error in
//! the report, not a crash.
//!
//! Needs `cargo build -p weft-tests --bin weft-fake-apiserver` first (or `WEFT_FAKE_APISERVER`).

use std::collections::BTreeSet;

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_tests::fakeapi::{FakeApi, FakeApiOpts};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "kube test password";

fn node_name(i: HostId) -> String {
    format!("node{i}")
}

fn kube_opts(api: &FakeApi, i: HostId) -> RouterOpts {
    RouterOpts::new()
        .password(PASSWORD)
        .arg("--kube-peers")
        .arg("--kube-node-name")
        .arg(&node_name(i))
        .arg("--kube-namespace")
        .arg("kube-system")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig_path().display().to_string())
}

/// The fake API on `net`'s switch, with a Ready Node per host.
fn api_with_nodes(net: &Net, opts: FakeApiOpts) -> anyhow::Result<FakeApi> {
    let binary = weft_tests::fakeapi::binary()?;
    let api = FakeApi::start_on(net, binary, opts)?;
    for i in net.host_ids() {
        api.add_node(&node_name(i), net.address(i))?;
    }
    Ok(api)
}

/// Host `i`'s ring id once its IPAM is ready (no conflicts).
fn ring(net: &Net, i: HostId) -> anyhow::Result<String> {
    let ipam = &net.report_json(i)?["ipam"];
    ensure!(
        ipam["state"] == "ready",
        "host{i} not ready: {}",
        ipam["state"]
    );
    ensure!(
        ipam["conflicts"].as_array().is_some_and(Vec::is_empty),
        "host{i} has ring conflicts: {}",
        ipam["conflicts"]
    );
    Ok(ipam["ring"].as_str().unwrap_or_default().to_owned())
}

/// Every host reports the same ring.
fn one_ring(net: &Net, hosts: &[HostId]) -> anyhow::Result<String> {
    let rings: BTreeSet<String> = hosts
        .iter()
        .map(|i| ring(net, *i))
        .collect::<anyhow::Result<_>>()?;
    ensure!(rings.len() == 1, "rings differ: {rings:?}");
    Ok(rings.into_iter().next().unwrap_or_default())
}

/// Node `i` carries its router's peer name and NetworkUnavailable=False (reason WeftIsUp).
fn node_is_marked(net: &Net, api: &FakeApi, i: HostId) -> anyhow::Result<()> {
    let name = net.report_json(i)?["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let node = api.node(&node_name(i))?;
    ensure!(
        node.pointer("/metadata/annotations/weft.dev~1peer-name")
            == Some(&Value::from(name.clone())),
        "node{i} lacks the peer name {name}: {}",
        node["metadata"]
    );
    let conditions = node
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or_default();
    let network = conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "NetworkUnavailable")
        .with_context(|| format!("node{i} has no NetworkUnavailable: {conditions}"))?;
    ensure!(
        network["status"] == "False" && network["reason"] == "WeftIsUp",
        "node{i}: {network}"
    );
    ensure!(
        conditions
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready")),
        "the strategic merge patch kept the other conditions: {conditions}"
    );
    Ok(())
}

fn kube_section(net: &Net, i: HostId) -> anyhow::Result<Value> {
    Ok(net.report_json(i)?["kube"].clone())
}

fn metric_sum(net: &Net, hosts: &[HostId], name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for i in hosts {
        sum += net.metrics(*i)?.sum(name);
    }
    Ok(sum)
}

/// Peers that own address space in host `i`'s view of the ring.
fn owners(net: &Net, i: HostId) -> anyhow::Result<BTreeSet<String>> {
    Ok(net.report_json(i)?["ipam"]["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["addresses"].as_u64().unwrap_or(0) > 0)
        .filter_map(|o| o["peer"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn nodes_listed_in_the_api_form_one_mesh_and_one_ring_join_relist_and_reclaim() -> anyhow::Result<()>
{
    if !require_root() {
        return Ok(());
    }
    let mut net = Net::new(WEFT, 3)?;
    let api = api_with_nodes(&net, FakeApiOpts::default())?;
    let hosts = net.host_ids();
    // Booted at the same moment, no --peers: only the Node list names the others.
    std::thread::scope(|s| {
        let started: Vec<_> = hosts
            .iter()
            .map(|i| {
                let (net, api) = (&net, &api);
                s.spawn(move || net.start(*i, kube_opts(api, *i)))
            })
            .collect();
        started
            .into_iter()
            .try_for_each(|h| h.join().expect("a start thread panicked"))
    })?;
    net.wait_until("the mesh is complete", SETTLE, || {
        net.check_full_mesh(&hosts)
    })?;
    let first = net.wait_until("one IPAM ring on every host", SETTLE, || {
        one_ring(&net, &hosts).map(|_| true)
    });
    first?;
    let the_ring = one_ring(&net, &hosts)?;
    // One genesis: the agreement's, by the smallest peer name (no router made a ring of its own
    // before it knew the Nodes).
    let smallest = hosts
        .iter()
        .map(|i| {
            Ok(net.report_json(*i)?["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        })
        .collect::<anyhow::Result<BTreeSet<String>>>()?
        .into_iter()
        .next()
        .unwrap_or_default();
    assert!(
        the_ring.starts_with(&format!("{smallest}@")),
        "the ring {the_ring} was created by the smallest name {smallest}"
    );
    for i in &hosts {
        let report = net.report_json(*i)?;
        assert_eq!(report["encryption"], true, "host{i}");
        assert!(
            report["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["state"] == "established")
                .all(|c| c["encrypted"] == true),
            "host{i}: {}",
            report["connections"]
        );
    }
    net.wait_until(
        "every Node has its peer name and NetworkUnavailable=False",
        SETTLE,
        || {
            for i in &hosts {
                node_is_marked(&net, &api, *i)?;
            }
            Ok(true)
        },
    )?;
    for i in &hosts {
        let kube = kube_section(&net, *i)?;
        assert_eq!(kube["node_name"], node_name(*i));
        assert_eq!(kube["nodes"].as_array().map(Vec::len), Some(3), "{kube}");
    }
    net.wait_until("exactly one reclaim leader", SETTLE, || {
        let leaders = metric_sum(&net, &hosts, "weft_kube_leader")?;
        ensure!(leaders == 1.0, "{leaders} leaders");
        Ok(true)
    })?;

    // Compaction: every watch ends with 410; the routers re-list and carry on.
    api.compact()?;
    net.wait_until("every router re-listed after the 410", SETTLE, || {
        for i in &hosts {
            let restarts = net.metrics(*i)?.sum("weft_kube_watch_restarts_total");
            ensure!(restarts >= 1.0, "host{i}: {restarts} watch restarts");
            ensure!(
                kube_section(&net, *i)?["watching"] == true,
                "host{i} not watching"
            );
        }
        Ok(true)
    })?;

    // A fourth Node joins: its router gets the ring from the others.
    let four = net.add_host()?;
    api.add_node(&node_name(four), net.address(four))?;
    net.start(four, kube_opts(&api, four))?;
    let all = net.host_ids();
    net.wait_until("the fourth router joined the mesh", SETTLE, || {
        net.check_full_mesh(&all)
    })?;
    net.wait_until("the fourth router has the same ring", SETTLE, || {
        ensure!(one_ring(&net, &all)? == the_ring, "another ring");
        node_is_marked(&net, &api, four)?;
        Ok(true)
    })?;

    // Node 3's router dies and its Node is deleted: exactly one router reclaims its space.
    let dead_peer = net.report_json(3)?["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        owners(&net, 1)?.contains(&dead_peer),
        "node3 owned no space"
    );
    net.kill(3)?;
    let live = [1, 2, four];
    net.wait_until("the others see node3 gone", SETTLE, || {
        net.check_disconnected_from(&live, 3)
    })?;
    api.delete_node(&node_name(3))?;
    net.wait_until("node3's space is reclaimed", SETTLE, || {
        for i in live {
            ensure!(
                !owners(&net, i)?.contains(&dead_peer),
                "host{i} still sees {dead_peer} owning space"
            );
        }
        let reclaims = metric_sum(&net, &live, "weft_kube_reclaims_total")?;
        ensure!(reclaims >= 1.0, "no reclaim yet");
        Ok(true)
    })?;
    assert_eq!(
        metric_sum(&net, &live, "weft_kube_reclaims_total")?,
        1.0,
        "exactly one router reclaimed"
    );
    // The dead peer's space went to the living: every owner is a live router.
    let live_names: BTreeSet<String> = live
        .iter()
        .map(|i| {
            Ok(net.report_json(*i)?["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned())
        })
        .collect::<anyhow::Result<_>>()?;
    for i in live {
        let owners = owners(&net, i)?;
        assert!(
            owners.is_subset(&live_names),
            "host{i}: owners {owners:?}, live {live_names:?}"
        );
    }
    for i in live {
        let kube = kube_section(&net, i)?;
        assert_eq!(kube["nodes"].as_array().map(Vec::len), Some(3), "{kube}");
        assert!(net.is_running(i), "host{i} crashed");
    }
    Ok(())
}

/// The chart's RBAC minus the Role for Leases.
const RBAC_WITHOUT_LEASES: &str = r#"---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: weft
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: weft
rules:
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: [""]
    resources: ["nodes/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: weft
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: weft
subjects:
  - kind: ServiceAccount
    name: weft
    namespace: kube-system
"#;

#[test]
fn an_api_without_lease_rights_is_an_error_in_the_report_not_a_crash() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    let rbac = net.host_dir(1).join("rbac.yaml");
    std::fs::write(&rbac, RBAC_WITHOUT_LEASES)?;
    let api = api_with_nodes(
        &net,
        FakeApiOpts {
            rbac: Some(rbac),
            ..FakeApiOpts::default()
        },
    )?;
    net.start(1, kube_opts(&api, 1))?;
    net.wait_until("the Lease error is in the report", SETTLE, || {
        let kube = kube_section(&net, 1)?;
        let error = kube["error"].as_str().unwrap_or_default();
        ensure!(
            error.contains("get_lease") && error.contains("forbidden"),
            "{kube}"
        );
        ensure!(kube["leader"] == false, "{kube}");
        let forbidden = net
            .metrics(1)?
            .get(r#"weft_kube_api_errors_total{op="get_lease",reason="forbidden"}"#)
            .unwrap_or(0.0);
        ensure!(forbidden >= 1.0, "not counted");
        Ok(true)
    })?;
    // A lone Node: the rest works (its ring, its annotation and condition).
    net.wait_until("the lone node is up", SETTLE, || {
        ring(&net, 1)?;
        node_is_marked(&net, &api, 1)?;
        Ok(true)
    })?;
    let readyz = net.exec(1, &["curl", "-sS", "http://127.0.0.1:6784/readyz"])?;
    assert!(readyz.contains(r#""name":"kube""#), "{readyz}");
    assert!(net.is_running(1));
    Ok(())
}

/// RBAC that grants nothing on Nodes: the watch is refused.
const RBAC_WITHOUT_NODES: &str = r#"---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: weft
  namespace: kube-system
"#;

#[test]
fn without_the_node_list_no_ring_is_created_and_readyz_says_why() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    let rbac = net.host_dir(1).join("rbac.yaml");
    std::fs::write(&rbac, RBAC_WITHOUT_NODES)?;
    let api = api_with_nodes(
        &net,
        FakeApiOpts {
            rbac: Some(rbac),
            ..FakeApiOpts::default()
        },
    )?;
    net.start(1, kube_opts(&api, 1))?;
    net.wait_until("IPAM waits for the Node list and says why", SETTLE, || {
        let report = net.report_json(1)?;
        let waiting = report["ipam"]["waiting_for_ring"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            waiting.contains("the Kubernetes Node list") && waiting.contains("forbidden"),
            "ipam: {}",
            report["ipam"]
        );
        ensure!(report["kube"]["watching"] == false, "{}", report["kube"]);
        let refused = net.metrics(1)?.sum("weft_kube_api_errors_total");
        ensure!(refused >= 1.0, "API errors not counted");
        Ok(true)
    })?;
    let readyz = net.exec(1, &["curl", "-sS", "http://127.0.0.1:6784/readyz"])?;
    let readyz: Value = serde_json::from_str(&readyz)?;
    assert_eq!(readyz["ready"], false, "{readyz}");
    let checks = readyz["checks"].as_array().cloned().unwrap_or_default();
    let check = |name: &str| checks.iter().find(|c| c["name"] == name).cloned();
    assert_eq!(
        check("ipam").map(|c| c["ok"].clone()),
        Some(Value::Bool(false))
    );
    let kube = check("kube").context("no kube check")?;
    assert!(
        kube["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not established"),
        "{kube}"
    );
    assert!(net.is_running(1));
    Ok(())
}

#[test]
fn an_api_outage_is_counted_and_the_watch_comes_back_with_the_changes() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    let api = api_with_nodes(&net, FakeApiOpts::default())?;
    let hosts = net.host_ids();
    for i in &hosts {
        net.start(*i, kube_opts(&api, *i))?;
    }
    net.wait_until("the mesh is complete", SETTLE, || {
        net.check_full_mesh(&hosts)
    })?;
    net.wait_until("both watch", SETTLE, || {
        for i in &hosts {
            ensure!(kube_section(&net, *i)?["watching"] == true, "host{i}");
        }
        Ok(true)
    })?;
    api.set_outage(true)?;
    net.wait_until("the outage is counted and shown", SETTLE, || {
        for i in &hosts {
            let kube = kube_section(&net, *i)?;
            ensure!(
                kube["watching"] == false && kube["error"].is_string(),
                "host{i}: {kube}"
            );
            let server_errors: f64 = net
                .metrics(*i)?
                .samples
                .iter()
                .filter(|(s, _)| {
                    s.starts_with("weft_kube_api_errors_total")
                        && s.contains(r#"reason="server_error""#)
                })
                .map(|(_, v)| v)
                .sum();
            ensure!(server_errors >= 1.0, "host{i}: 5xx not counted");
        }
        Ok(true)
    })?;
    // The mesh does not depend on the API.
    ensure!(
        net.check_full_mesh(&hosts)?,
        "the mesh broke during the outage"
    );
    // Back: the watch starts again with a new list and follows the changes.
    api.set_outage(false)?;
    api.delete_node(&node_name(2))?;
    net.wait_until("the watch is back and saw the deletion", SETTLE, || {
        let kube = kube_section(&net, 1)?;
        ensure!(kube["watching"] == true, "{kube}");
        ensure!(kube["nodes"].as_array().map(Vec::len) == Some(1), "{kube}");
        Ok(true)
    })?;
    for i in &hosts {
        assert!(net.is_running(*i), "host{i} crashed");
    }
    Ok(())
}
