//! The Helm chart run the way a cluster runs it (issue 10): `helm template` renders
//! `charts/weft`, and on each test host a mini kubelet (`tests/clients/kubelet.py`) runs the
//! DaemonSet's pod through that host's containerd (CRI), from the image `scripts/image.sh`
//! builds (imported, never pulled): a host-network sandbox, the `install-cni` init container,
//! then the router container with the chart's exact command, env, securityContext, volumes
//! (hostPath `/dev/net/tun` and `/proc/sys/net` real, the others under the host's own root) and
//! probes, executed as kubelet would.
//!
//! - the chart's defaults let the router open its TAP device and set its sysctls, and it
//!   becomes ready;
//! - a `securityContext` that would not let it (no NET_ADMIN, or not root) makes the router
//!   container fail, restart with back-off, and say why in its log (without NET_ADMIN it stops
//!   at its bridge, before the TAP; as uid 1000 at its state store, before both);
//! - three nodes listed by a fake API server, chart defaults: the acceptance test of issue 10;
//! - three nodes booted at the same moment, all listed in the API, agree on one IPAM ring.
//!
//! Needs root; skipped otherwise. The image build (`scripts/image.sh`) takes a few seconds warm
//! and ~8 minutes on a fresh clone; `WEFT_IMAGE_ARCHIVE` skips it (scripts/test.sh builds the
//! image in a stage of its own first).

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use weft_tests::fakeapi::{FakeApi, FakeApiOpts};
use weft_tests::kubelet::{self, Node, NodeOpts};
use weft_tests::{HostId, Net, SETTLE, log_tail, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const NAMESPACE: &str = "kube-system";
const PASSWORD_SECRET: &str = "weft-password";
const PASSWORD: &str = "correct horse battery staple";
/// The pod starting: the image import, the init container, Argon2 on the password, the first
/// probes (periods scaled down by the kubelet's time scale).
const POD_START: Duration = Duration::from_secs(120);

/// `helm template` with the chart's defaults but for what a test cluster must say: the image
/// (built locally), the password Secret's name (its value is given to the kubelet as a file),
/// and `kubePeers=false` (no API server here). `values` is an extra values file.
fn render(net: &Net, name: &str, values: Option<&str>) -> anyhow::Result<std::path::PathBuf> {
    let image = kubelet::image()?;
    kubelet::render_chart(
        &net.dir().join(format!("{name}.yaml")),
        NAMESPACE,
        values,
        &[
            ("image.repository", &image.repository),
            ("image.tag", &image.tag),
            ("password.existingSecret", PASSWORD_SECRET),
            ("kubePeers", "false"),
        ],
    )
}

fn node_opts(manifest: &std::path::Path) -> NodeOpts {
    let mut opts = NodeOpts::new(manifest);
    opts.secrets = vec![(PASSWORD_SECRET.into(), "password".into(), PASSWORD.into())];
    opts
}

/// Sets a sysctl in host `i`'s network namespace (so a test sees the router change it).
fn host_sysctl(net: &Net, i: HostId, name: &str, value: &str) -> anyhow::Result<()> {
    net.exec(i, &["sysctl", "-q", "-w", &format!("{name}={value}")])?;
    Ok(())
}

fn host_sysctl_value(net: &Net, i: HostId, name: &str) -> anyhow::Result<String> {
    Ok(net.exec(i, &["sysctl", "-n", name])?.trim().to_owned())
}

fn restarts(c: &Value) -> u64 {
    c["restart_count"].as_u64().unwrap_or(0)
}

#[test]
fn the_charts_defaults_let_the_router_open_its_tap_and_set_its_sysctls() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 1)?;
    let manifest = render(&net, "defaults", None)?;
    // Off before the router starts, so what the test sees afterwards is the router's doing.
    host_sysctl(&net, 1, "net.ipv4.ip_forward", "0")?;
    let mut node = Node::start(&net, 1, &node_opts(&manifest))?;

    let install = node.wait_container(
        &net,
        "install-cni",
        "install-cni completed",
        POD_START,
        |c| Ok(c["state"] == "terminated"),
    )?;
    ensure!(install["exit_code"] == 0, "install-cni failed: {install}");
    let weft = node.wait_container(
        &net,
        "weft",
        "the router container is ready",
        POD_START,
        |c| {
            ensure!(
                restarts(c) == 0,
                "the router container restarted: {}",
                c["last_state"]
            );
            Ok(c["ready"] == true)
        },
    )?;
    eprintln!(
        "router ready; last readiness probe: {}",
        weft["probes"]["readinessProbe"]["message"]
    );

    // The TAP device is open and on the bridge, in the host's network namespace.
    let brif = net.exec(1, &["ls", "/sys/class/net/weft/brif"])?;
    ensure!(
        brif.split_whitespace().any(|p| p == "weft-tap"),
        "no weft-tap on the bridge: {brif}"
    );
    // The sysctls, set through the host's /proc/sys/net (the chart's hostPath mount).
    ensure!(
        host_sysctl_value(&net, 1, "net.ipv4.ip_forward")? == "1",
        "ip_forward was not set"
    );
    let logs = node.logs("weft")?;
    ensure!(
        logs.contains("IPv4 forwarding is on"),
        "the router did not say it set ip_forward:\n{logs}"
    );
    // The init container put the plugin and its config where the node's runtime reads them.
    ensure!(
        node.cni.plugin.is_file(),
        "no weft-cni in {}",
        node.cni.bin_dir.display()
    );
    ensure!(
        node.cni.conf_dir.join("10-weft.conflist").is_file(),
        "no conflist in {}",
        node.cni.conf_dir.display()
    );
    // `kubectl exec ds/weft -- weft status` works in the container.
    let status = node.exec("weft", &["weft", "status"])?;
    ensure!(
        status.success() && status.stdout.contains("Datapath: sleeve"),
        "weft status in the container: {}{}",
        status.stdout,
        status.stderr
    );
    // The container stopped (as a failed liveness probe does): kubelet restarts it in the same
    // pod, counting the restart, and the router opens its TAP again.
    node.control("restart-container", &["weft"])?;
    node.wait_container(
        &net,
        "weft",
        "the router restarted in place and ready",
        POD_START,
        |c| Ok(restarts(c) == 1 && c["state"] == "running" && c["ready"] == true),
    )?;
    let brif = net.exec(1, &["ls", "/sys/class/net/weft/brif"])?;
    ensure!(
        brif.split_whitespace().any(|p| p == "weft-tap"),
        "no weft-tap on the bridge after the restart: {brif}"
    );
    node.stop()
}

/// Waits until the node's router container has failed and been restarted; returns its state.
fn failing_router(net: &Net, node: &mut Node) -> anyhow::Result<Value> {
    let c = node.wait_container(
        net,
        "weft",
        "the router container failed and was restarted",
        POD_START,
        |c| {
            ensure!(c["ready"] != true, "the router became ready: {c}");
            Ok(restarts(c) >= 1 && c["last_state"]["exit_code"].as_i64().unwrap_or(0) != 0)
        },
    )?;
    Ok(c)
}

#[test]
fn a_security_context_without_net_admin_or_root_fails_the_router_with_its_reason()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    // Host 1: the chart's context without NET_ADMIN. Host 2: NET_ADMIN added, but not root
    // (Kubernetes gives a non-root container no effective capabilities).
    let no_net_admin = render(
        &net,
        "no-net-admin",
        Some(
            "securityContext:\n  allowPrivilegeEscalation: false\n  readOnlyRootFilesystem: true\n  runAsUser: 0\n  capabilities:\n    drop: [ALL]\n",
        ),
    )?;
    let non_root = render(
        &net,
        "non-root",
        Some(
            "securityContext:\n  allowPrivilegeEscalation: false\n  readOnlyRootFilesystem: true\n  runAsUser: 1000\n  runAsNonRoot: true\n  capabilities:\n    drop: [ALL]\n    add: [NET_ADMIN]\n",
        ),
    )?;
    let mut nodes = [
        Node::start(&net, 1, &node_opts(&no_net_admin))?,
        Node::start(&net, 2, &node_opts(&non_root))?,
    ];
    for node in &mut nodes {
        let c = failing_router(&net, node)?;
        let last = &c["last_state"];
        let log = last["log_tail"].as_str().context("no log tail")?;
        eprintln!(
            "{}: exit {} after {} restart(s); the router said: {}",
            node.name,
            last["exit_code"],
            restarts(&c),
            log.lines().last().unwrap_or_default()
        );
        // The router names what it could not do, and why.
        ensure!(
            log.contains("Operation not permitted") || log.contains("Permission denied"),
            "{}: the router's error does not say what failed:\n{log}",
            node.name
        );
        // kubelet backs off between restarts (CrashLoopBackOff), like a cluster.
        ensure!(
            c["state"] == "running" || c["reason"] == "CrashLoopBackOff",
            "{}: {c}",
            node.name
        );
        // No TAP is left half made.
        let links = net.exec(node.host, &["ip", "-o", "link", "show"])?;
        ensure!(
            !links.contains("weft-tap"),
            "{}: a TAP is left: {links}",
            node.name
        );
    }
    for node in nodes {
        node.stop()?;
    }
    Ok(())
}

// --- the acceptance test: three nodes from the (fake) API, chart defaults --------------------

/// The router's report (`/report` on the chart's status address, in the host's netns).
fn report(net: &Net, i: HostId) -> anyhow::Result<Value> {
    let out = net.exec(
        i,
        &[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:6784/report",
        ],
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// `/readyz` on the chart's status address: (ready, body).
fn readyz(net: &Net, i: HostId) -> anyhow::Result<(bool, String)> {
    let out = net.exec_output(
        i,
        &[
            "curl",
            "-s",
            "--max-time",
            "8",
            "http://127.0.0.1:6784/readyz",
        ],
    )?;
    let body: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("/readyz: not JSON: {}{}", out.stdout, out.stderr))?;
    Ok((body["ready"] == true, out.stdout))
}

/// A metric's value summed over its series, from the metrics listener (chart default
/// 0.0.0.0:6782).
fn metric(net: &Net, i: HostId, name: &str) -> anyhow::Result<f64> {
    let text = net.exec(
        i,
        &[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:6782/metrics",
        ],
    )?;
    Ok(text
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Established, encrypted connections to every other listed node's router.
fn mesh_complete(net: &Net, i: HostId, others: usize) -> anyhow::Result<bool> {
    let r = report(net, i)?;
    let conns: Vec<&Value> = r["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "established")
        .collect();
    ensure!(
        conns.iter().all(|c| c["encrypted"] == true),
        "host{i}: an unencrypted connection: {conns:?}"
    );
    ensure!(
        conns.len() == others,
        "host{i}: {} established connections, want {others}: {}",
        conns.len(),
        r["connections"]
    );
    Ok(true)
}

/// The IPAM owners (peer names) host `i`'s router sees.
fn ipam_owners(net: &Net, i: HostId) -> anyhow::Result<Vec<String>> {
    let r = report(net, i)?;
    Ok(r["ipam"]["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["peer"].as_str().map(str::to_owned))
        .collect())
}

struct Pod {
    host: HostId,
    ip: String,
    netns: String,
}

fn run_pod(node: &Node, name: &str) -> anyhow::Result<Pod> {
    let pod = node
        .containerd()
        .cri(&["run", name, "--namespace", "e2e"])?;
    ensure!(pod["state"] == "SANDBOX_READY", "{}: {pod}", node.name);
    Ok(Pod {
        host: node.host,
        ip: pod["ip"].as_str().context("no ip")?.to_owned(),
        netns: pod["netns"].as_str().context("no netns")?.to_owned(),
    })
}

fn ping(from: &Pod, to: &Pod) -> anyhow::Result<()> {
    let out = weft_tests::cni::nsenter_output(
        std::path::Path::new(&from.netns),
        &["ping", "-c", "1", "-W", "2", &to.ip],
    )?;
    ensure!(
        out.success(),
        "pod on host{} cannot ping {} (host{}): {}{}",
        from.host,
        to.ip,
        to.host,
        out.stdout,
        out.stderr
    );
    Ok(())
}

fn all_ping(pods: &[Pod]) -> anyhow::Result<bool> {
    for a in pods {
        for b in pods {
            if a.ip != b.ip {
                ping(a, b)?;
            }
        }
    }
    Ok(true)
}

#[test]
fn three_nodes_from_the_api_run_the_chart_defaults_end_to_end() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut net = Net::new(WEFT, 3)?;
    let image = kubelet::image()?;
    // The chart's defaults (kubePeers on, no `peers`), the locally built image, the password
    // from a Secret the operator made.
    let manifest = kubelet::render_chart(
        &net.dir().join("defaults.yaml"),
        NAMESPACE,
        None,
        &[
            ("image.repository", &image.repository),
            ("image.tag", &image.tag),
            ("password.existingSecret", PASSWORD_SECRET),
        ],
    )?;
    let api = FakeApi::start_on(
        &net,
        kubelet::fake_apiserver()?,
        FakeApiOpts {
            rbac: Some(manifest.clone()),
            ..FakeApiOpts::default()
        },
    )?;
    for i in net.host_ids() {
        api.add_node(&format!("node-{i}"), net.address(i))?;
    }
    let opts = |i: HostId| {
        let mut o = node_opts(&manifest);
        o.node_name = Some(format!("node-{i}"));
        o.service_account_dir = Some(api.service_account_dir());
        o.api_server = Some(format!("{}:{}", api.address(), api.port()));
        let _ = i;
        o
    };

    // node-1 alone: the API lists three Nodes, so its IPAM ring and mesh are not there yet
    // and /readyz says so (the kubelet's readiness probe too), while /healthz is fine.
    let mut nodes = vec![Node::start(&net, 1, &opts(1))?];
    nodes[0].wait_container(
        &net,
        "weft",
        "the router started (startup probe passed)",
        POD_START,
        |c| {
            Ok(c["started"] == true
                && c["probes"]["readinessProbe"]["total"].as_u64().unwrap_or(0) >= 1)
        },
    )?;
    let (ready, body) = readyz(&net, 1)?;
    ensure!(!ready, "node-1 alone is ready: {body}");
    eprintln!("node-1 alone, /readyz: {body}");
    let c = nodes[0].container("weft")?;
    ensure!(
        c["ready"] == false,
        "the kubelet has node-1 ready alone: {c}"
    );

    // The other two: every router becomes ready, on one encrypted mesh, with no `peers`.
    nodes.push(Node::start(&net, 2, &opts(2))?);
    nodes.push(Node::start(&net, 3, &opts(3))?);
    for node in &mut nodes {
        node.wait_container(
            &net,
            "weft",
            "the router container is ready",
            POD_START,
            |c| Ok(c["ready"] == true),
        )?;
    }
    for i in net.host_ids() {
        net.wait_until(
            &format!("host{i}: encrypted mesh to both others"),
            SETTLE,
            || mesh_complete(&net, i, 2),
        )?;
        let (ready, body) = readyz(&net, i)?;
        ensure!(ready, "host{i}: /readyz: {body}");
        // The readiness history: not ready first (node-1), then ready.
        let c = nodes[i - 1].container("weft")?;
        let history = c["readiness_history"]
            .as_array()
            .context("no readiness history")?;
        ensure!(
            history.last().is_some_and(|h| h["ready"] == true),
            "host{i}: {history:?}"
        );
    }
    let first = nodes[0].container("weft")?;
    let history = first["readiness_history"]
        .as_array()
        .context("no history")?;
    ensure!(
        history.first().is_some_and(|h| h["ok"] == false),
        "node-1's first readiness probe passed: {history:?}"
    );
    // NetworkUnavailable False on every Node, set by its router.
    for i in net.host_ids() {
        let name = format!("node-{i}");
        net.wait_until(&format!("{name}: NetworkUnavailable False"), SETTLE, || {
            let node = api.node(&name)?;
            let cond = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "NetworkUnavailable")
                .cloned()
                .with_context(|| format!("no NetworkUnavailable condition: {node}"))?;
            ensure!(cond["status"] == "False", "{cond}");
            ensure!(cond["reason"] == "WeftIsUp", "{cond}");
            Ok(true)
        })?;
    }

    // Pods through the CRI on every node: unique addresses, all reach each other.
    let mut pods = Vec::new();
    for node in &nodes {
        pods.push(run_pod(node, &format!("pod-{}", node.name))?);
    }
    let mut ips: Vec<&str> = pods.iter().map(|p| p.ip.as_str()).collect();
    ips.sort_unstable();
    ips.dedup();
    ensure!(ips.len() == pods.len(), "pod addresses not unique: {ips:?}");
    net.wait_until("every pod pings every other", SETTLE, || all_ping(&pods))?;

    // A rolling restart of the routers, one node at a time: a ping between pods on the two
    // other nodes keeps flowing meanwhile.
    for (restart, node) in nodes.iter_mut().enumerate() {
        let (a, b) = match restart {
            0 => (1, 2),
            1 => (0, 2),
            _ => (0, 1),
        };
        let pinger = net.spawn_in_host(
            pods[a].host,
            &[
                "nsenter",
                &format!("--net={}", pods[a].netns),
                "ping",
                "-n",
                "-O",
                "-i",
                "0.2",
                "-W",
                "1",
                &pods[b].ip,
            ],
        )?;
        let before = node.state()?["pod"]["uid"].clone();
        node.control("delete-pod", &[])?;
        node.control("create-pod", &[])?;
        node.wait_container(
            &net,
            "weft",
            "the restarted router is ready",
            POD_START,
            |c| Ok(c["ready"] == true),
        )?;
        ensure!(
            node.state()?["pod"]["uid"] != before,
            "the pod was not replaced"
        );
        let out = pinger.stop()?;
        let text = out.stdout.clone();
        let (sent, received) = ping_counts(&text);
        eprintln!(
            "rolling restart of {}: pod ping host{} -> host{}: {received}/{sent} replies",
            node.name, pods[a].host, pods[b].host
        );
        if sent < 5 || received + 1 < sent {
            let mut seen = String::new();
            for i in [a, b] {
                seen += &other_router_state(&net, &nodes[i], pods[i].host);
            }
            bail!("the ping between the other nodes stopped flowing: {text}\n{seen}");
        }
    }
    net.wait_until(
        "every pod pings every other after the rolling restart",
        SETTLE,
        || all_ping(&pods),
    )?;

    // A Node deleted from the API (its machine gone): exactly one router reclaims its space.
    let gone = nodes.pop().context("three nodes")?;
    let gone_name = report(&net, 3)?["name"]
        .as_str()
        .context("no name")?
        .to_owned();
    gone.stop()?;
    net.exec(3, &["ip", "link", "set", "eth0", "down"])?;
    api.delete_node("node-3")?;
    net.wait_until(
        "node-3's address space reclaimed by one router",
        SETTLE * 2,
        || {
            for i in [1, 2] {
                let owners = ipam_owners(&net, i)?;
                ensure!(
                    !owners.contains(&gone_name),
                    "host{i} still sees {gone_name} as an owner: {owners:?}"
                );
            }
            Ok(true)
        },
    )?;
    let reclaims = || -> anyhow::Result<f64> {
        Ok(metric(&net, 1, "weft_kube_reclaims_total")?
            + metric(&net, 2, "weft_kube_reclaims_total")?)
    };
    net.wait_until("the reclaim counted", SETTLE, || Ok(reclaims()? >= 1.0))?;
    let n = reclaims()?;
    ensure!(n == 1.0, "{n} reclaims by the two routers, want exactly 1");

    // A fourth Node joins: its router meets the others through the API, its pod reaches theirs.
    let four = net.add_host()?;
    api.add_node(&format!("node-{four}"), net.address(four))?;
    let mut node4 = Node::start(&net, four, &opts(four))?;
    node4.wait_container(&net, "weft", "node-4's router is ready", POD_START, |c| {
        Ok(c["ready"] == true)
    })?;
    for i in [1, 2, four] {
        net.wait_until(&format!("host{i}: mesh of three"), SETTLE, || {
            mesh_complete(&net, i, 2)
        })?;
    }
    pods.truncate(2);
    pods.push(run_pod(&node4, "pod-node-4")?);
    net.wait_until(
        "the pods of nodes 1, 2 and 4 ping each other",
        SETTLE,
        || all_ping(&pods),
    )?;

    // Uninstall: the pods go, the DaemonSet's pods are deleted, and the chart's post-delete
    // hook runs `weft reset` on each node (a Job per node: Helm's lookup finds the nodes at
    // install time, `uninstall.nodes` stands in for it under `helm template`). Then nothing of
    // weft is left on any node.
    nodes.push(node4);
    let node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let uninstall = kubelet::render_chart(
        &net.dir().join("uninstall.yaml"),
        NAMESPACE,
        None,
        &[
            ("image.repository", &image.repository),
            ("image.tag", &image.tag),
            ("password.existingSecret", PASSWORD_SECRET),
            ("uninstall.nodes", &format!("{{{}}}", node_names.join(","))),
        ],
    )?;
    for node in &mut nodes {
        node.remove_other_pods()?;
        node.stop_kubelet()?;
    }
    for node in &nodes {
        let (code, state) = node.run_to_completion(&uninstall, "Job", Duration::from_secs(300))?;
        let reset = &state["pod"]["containers"][0];
        eprintln!(
            "{}: uninstall Job: exit {code}: {}",
            node.name,
            reset["last_state"]["log_tail"]
                .as_str()
                .unwrap_or_default()
                .trim_end()
        );
        ensure!(
            code == 0,
            "{}: the uninstall Job failed: {reset}",
            node.name
        );
        check_nothing_left(&net, node)?;
    }
    for node in nodes {
        node.stop()?;
    }
    drop(api);
    Ok(())
}

/// No conflist, plugin, bridge, TAP or nftables table of weft's on the node.
fn check_nothing_left(net: &Net, node: &Node) -> anyhow::Result<()> {
    let i = node.host;
    ensure!(
        !node.cni.conf_dir.join("10-weft.conflist").exists(),
        "{}: the conflist is left",
        node.name
    );
    ensure!(!node.cni.plugin.exists(), "{}: weft-cni is left", node.name);
    let links = net.exec(i, &["ip", "-o", "link", "show"])?;
    ensure!(
        !links.contains(" weft:") && !links.contains("weft-tap"),
        "{}: links left: {links}",
        node.name
    );
    let tables = net.exec(i, &["nft", "list", "tables"])?;
    ensure!(
        !tables.lines().any(|l| l.trim().ends_with(" weft")),
        "{}: nftables tables left: {tables}",
        node.name
    );
    Ok(())
}

/// What a router that should not have been disturbed saw: its log's tail and its drop, route
/// and datapath-transition counters, for the failure message.
fn other_router_state(net: &Net, node: &Node, host: HostId) -> String {
    let log = node
        .logs("weft")
        .map(|log| log_tail(&log, 60))
        .unwrap_or_else(|e| format!("(no log: {e:#})"));
    let counters = net
        .exec(
            host,
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                "http://127.0.0.1:6782/metrics",
            ],
        )
        .map(|text| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| l.contains("drop") || l.contains("transition") || l.contains("route"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|e| format!("(no metrics: {e:#})"));
    format!(
        "--- {}: router log tail\n{log}--- {}: counters\n{counters}\n",
        node.name, node.name
    )
}

/// (sent, answered) from `ping -O`'s lines (it gets SIGTERM, so there is no summary): one
/// "bytes from" per reply, one "no answer yet" per request unanswered after `-W`.
fn ping_counts(text: &str) -> (u64, u64) {
    let replies = text.lines().filter(|l| l.contains("bytes from")).count() as u64;
    let lost = text.lines().filter(|l| l.contains("no answer yet")).count() as u64;
    (replies + lost, replies)
}

/// The IPAM ring host `i`'s router agreed to (`ipam.ring`), if any.
fn ipam_ring(net: &Net, i: HostId) -> anyhow::Result<Option<String>> {
    Ok(report(net, i)?["ipam"]["ring"].as_str().map(str::to_owned))
}

#[test]
fn three_nodes_booted_together_from_the_api_form_one_ipam_ring() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 3)?;
    let image = kubelet::image()?;
    let manifest = kubelet::render_chart(
        &net.dir().join("defaults.yaml"),
        NAMESPACE,
        None,
        &[
            ("image.repository", &image.repository),
            ("image.tag", &image.tag),
            ("password.existingSecret", PASSWORD_SECRET),
        ],
    )?;
    let api = FakeApi::start_on(
        &net,
        kubelet::fake_apiserver()?,
        FakeApiOpts {
            rbac: Some(manifest.clone()),
            ..FakeApiOpts::default()
        },
    )?;
    for i in net.host_ids() {
        api.add_node(&format!("node-{i}"), net.address(i))?;
    }
    // All three kubelets at once: the routers start within a second of each other.
    let mut nodes = Vec::new();
    for i in net.host_ids() {
        let mut o = node_opts(&manifest);
        o.node_name = Some(format!("node-{i}"));
        o.service_account_dir = Some(api.service_account_dir());
        o.api_server = Some(format!("{}:{}", api.address(), api.port()));
        nodes.push(Node::start(&net, i, &o)?);
    }
    for node in &mut nodes {
        node.wait_container(
            &net,
            "weft",
            "the router container is ready",
            POD_START,
            |c| Ok(c["ready"] == true),
        )?;
    }
    let rings = net
        .host_ids()
        .into_iter()
        .map(|i| ipam_ring(&net, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("IPAM rings: {rings:?}");
    ensure!(
        rings[0].is_some() && rings.iter().all(|r| *r == rings[0]),
        "the nodes booted together agreed on different rings: {rings:?}"
    );
    // Every router counted every Node's router as an owner of the one ring.
    for i in net.host_ids() {
        let owners = ipam_owners(&net, i)?;
        ensure!(owners.len() == 3, "host{i}: owners {owners:?}");
    }
    for node in nodes {
        node.stop()?;
    }
    drop(api);
    Ok(())
}
