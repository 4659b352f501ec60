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
//!   container fail, restart with back-off, and say why in its log.
//!
//! Needs root; skipped otherwise. The image build (`scripts/image.sh`) takes a few seconds warm
//! and ~8 minutes on a fresh clone; `WEFT_IMAGE_ARCHIVE` skips it (scripts/test.sh builds the
//! image in a stage of its own first).

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_tests::kubelet::{self, Node, NodeOpts};
use weft_tests::{HostId, Net, require_root};

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
fn a_security_context_that_cannot_open_the_tap_or_set_sysctls_fails_the_router()
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
