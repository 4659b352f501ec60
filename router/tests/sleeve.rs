//! The sleeve dataplane with real routers and pods in network namespaces: pods on different
//! hosts reach each other over the encrypted mesh, directly and relayed through a third host.
//! (The first steps of issue 3; see docs/sleeve.md for what is still to come.)

use anyhow::{Context, ensure};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "correct horse battery staple";

/// `n` hosts running the sleeve, hosts 2..n told only about host1, one pod per host
/// (`10.250.0.i`); returns once every data path is up.
fn sleeve_mesh(n: usize) -> anyhow::Result<Net> {
    sleeve_mesh_with(n, |_| Ok(()))
}

/// [`sleeve_mesh`], with `prepare` run on the hosts' network before the routers start.
fn sleeve_mesh_with(
    n: usize,
    prepare: impl FnOnce(&Net) -> anyhow::Result<()>,
) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, n)?;
    prepare(&net)?;
    net.start_mesh(|_| {
        RouterOpts::new()
            .password(PASSWORD)
            .arg("--datapath")
            .arg("sleeve")
    })?;
    net.wait_until("every data path is up everywhere", SETTLE, || {
        net.check_data_paths_up(&net.host_ids())
    })?;
    for i in net.host_ids() {
        let mtu = net.report_json(i)?["datapath"]["mtu"]
            .as_u64()
            .context("no datapath in the report")?;
        net.add_pod(i, "weft", &format!("10.250.0.{i}/24"), u16::try_from(mtu)?)?;
    }
    Ok(net)
}

fn ping(net: &Net, from: HostId, to: HostId) -> anyhow::Result<String> {
    net.pod_exec(
        from,
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            &format!("10.250.0.{to}"),
        ],
    )
}

#[test]
fn pods_on_three_hosts_reach_each_other_through_the_encrypted_sleeve() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(3)?;
    // Drops are counted from here: while the mesh forms, a peer's first heartbeats may arrive
    // before the receiver has added its link and are rightly dropped as `unknown_sender`.
    let formed: Vec<serde_json::Value> = net
        .host_ids()
        .into_iter()
        .map(|i| Ok(net.report_json(i)?["datapath"]["drops"].clone()))
        .collect::<anyhow::Result<_>>()?;
    for a in net.host_ids() {
        for b in net.host_ids() {
            if a != b {
                let out = ping(&net, a, b)?;
                ensure!(out.contains(" 0% packet loss"), "pod{a} -> pod{b}: {out}");
            }
        }
    }
    for i in net.host_ids() {
        let datapath = net.report_json(i)?["datapath"].clone();
        ensure!(datapath["encrypted"] == true, "host{i}: {datapath}");
        ensure!(
            datapath["frames_out"].as_u64() > Some(0),
            "host{i}: {datapath}"
        );
        for drop in ["auth", "replay", "malformed", "unknown_sender"] {
            ensure!(
                datapath["drops"][drop] == formed[i - 1][drop],
                "host{i} dropped {drop} (once formed: {}): {datapath}",
                formed[i - 1]
            );
        }
    }
    Ok(())
}

#[test]
fn pods_whose_hosts_cannot_talk_are_relayed_through_a_third() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(3)?;
    ping(&net, 1, 2)?;
    net.block(1, 2)?;
    // Once the control plane notices, frames between host1 and host2 go through host3.
    net.wait_until("pod1 reaches pod2 through host3", SETTLE, || {
        Ok(ping(&net, 1, 2).is_ok_and(|out| out.contains(" 0% packet loss")))
    })?;
    ping(&net, 2, 1)?;
    let relayed = net.report_json(3)?["datapath"]["relayed"]
        .as_u64()
        .unwrap_or(0);
    ensure!(relayed > 0, "host3 relayed nothing");
    Ok(())
}

#[test]
fn udp_blocked_while_tcp_up_shows_the_heartbeat_reason_and_is_routed_around() -> anyhow::Result<()>
{
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(3)?;
    ping(&net, 1, 2)?;
    net.block_udp(1, 2)?;
    net.wait_until("host1 sees its data path to host2 down", SETTLE, || {
        Ok(net.data_path(1, 2)?["health"] == "down")
    })?;
    // The control connection is still up; the data path says why it is not.
    let datapath = net.data_path(1, 2)?;
    let reason = datapath["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("no UDP heartbeat"),
        "host1 -> host2: {datapath}"
    );
    let text = net.weft_status(1, &["connections"])?;
    ensure!(
        text.contains("link: down (no UDP heartbeat"),
        "weft status connections on host1:\n{text}"
    );
    // Data between the two goes through host3 meanwhile.
    net.wait_until("pod1 reaches pod2 through host3", SETTLE, || {
        Ok(ping(&net, 1, 2).is_ok_and(|out| out.contains(" 0% packet loss")))
    })?;
    let relayed = net.report_json(3)?["datapath"]["relayed"]
        .as_u64()
        .unwrap_or(0);
    ensure!(relayed > 0, "host3 relayed nothing");

    net.unblock_udp(1, 2)?;
    net.wait_until("the direct data path comes back", SETTLE, || {
        net.check_data_paths_up(&net.host_ids())
    })?;
    ping(&net, 2, 1)?;
    Ok(())
}

#[test]
fn a_smaller_path_mtu_is_found_and_pods_are_told_with_icmp() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // host3's network carries 1400-byte packets, the others 1500; nothing tells host1 (the
    // switch drops larger frames silently), so only probing can find out.
    let net = sleeve_mesh_with(3, |net| {
        net.exec(3, &["ip", "link", "set", "eth0", "mtu", "1400"])
            .map(drop)
    })?;
    // What the path carries exactly: a veth accepts 4 bytes beyond its MTU (room for a VLAN
    // tag), so the probes find up to 1404 into host3; host3's own sends stop at 1400.
    for (from, to, expected) in [
        (1, 3, 1400..=1404),
        (3, 1, 1400..=1400),
        (1, 2, 1500..=1500),
    ] {
        let datapath = net.data_path(from, to)?;
        let path_mtu = datapath["path_mtu"].as_u64().unwrap_or(0);
        ensure!(
            datapath["pmtu"] == "confirmed" && expected.contains(&path_mtu),
            "host{from} -> host{to}: {datapath}"
        );
    }
    let overlay = net.data_path(1, 3)?["overlay_mtu"]
        .as_u64()
        .context("no overlay MTU")?;
    let pod_mtu = net.report_json(1)?["datapath"]["mtu"]
        .as_u64()
        .context("no pod MTU")?;
    ensure!(overlay < pod_mtu, "overlay {overlay} vs pod MTU {pod_mtu}");

    // A full-size packet with DF from pod1 to pod3 does not fit host1 -> host3: pod1 is told
    // the overlay MTU of that path, and its kernel remembers it.
    let big = (pod_mtu - 28).to_string();
    let out = net
        .pod_exec(
            1,
            &[
                "ping",
                "-M",
                "do",
                "-s",
                &big,
                "-c",
                "2",
                "-W",
                "2",
                "10.250.0.3",
            ],
        )
        .unwrap_err()
        .to_string();
    ensure!(
        out.contains(&format!("mtu={overlay}")) || out.contains(&format!("mtu = {overlay}")),
        "pod1 was not told the path MTU {overlay}: {out}"
    );
    let route = net.pod_exec(1, &["ip", "route", "get", "10.250.0.3"])?;
    ensure!(route.contains(&format!("mtu {overlay}")), "pod1: {route}");
    let answered = net.report_json(1)?["datapath"]["drops"]["too_big_answered"]
        .as_u64()
        .unwrap_or(0);
    ensure!(answered > 0, "host1 answered no oversized packet");
    // What fits both ways gets through, and full-size packets to pod2 (a 1500 path) still do.
    let back = net.data_path(3, 1)?["overlay_mtu"].as_u64().unwrap_or(0);
    let fits = (overlay.min(back) - 28).to_string();
    net.pod_exec(
        1,
        &["ping", "-M", "do", "-s", &fits, "-c", "2", "10.250.0.3"],
    )?;
    net.pod_exec(
        1,
        &["ping", "-M", "do", "-s", &big, "-c", "2", "10.250.0.2"],
    )?;
    Ok(())
}
