//! Acceptance tests of the Open vSwitch fast path (issue 12), with real routers, pods and the
//! kernel's `openvswitch` module in network namespaces, no password. This host's kernel has no
//! such module: the tests run in the kernel VM (`tests/kernel-vm/`, from `.ci/run`), where
//! their `kernel_ovs_` names select them, and return at once elsewhere, saying so.
//!
//! Names they rely on (the contract in `docs/datapaths.md`): the datapath `weft-ovs` (its own
//! port on the bridge `weft`), its VXLAN vport on UDP 6784 (mesh port + 1), `/report`
//! `.connections[].datapath.{datapath, datapath_reason}` = `ovs` on fast connections.

use std::time::Duration;

use anyhow::{Context, ensure};
use weft_tests::traffic::{
    SHA256_CLIENT, SHA256_SERVER, check_bum_exactly_once, ping_all, pod_v4 as v4, pod_v6 as v6,
};
use weft_tests::{HostId, Net, PodId, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const BRIDGE: &str = "weft";
const DATAPATH: &str = "weft-ovs";
const VXLAN_PORT: u16 = 6784;
const TRANSFER_BYTES: u64 = 20 * 1024 * 1024;
/// Software emulation (TCG) is 10-30 times slower than the host.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether this kernel has Open vSwitch (the VM); says why not otherwise.
fn have_ovs(test: &str) -> bool {
    if !require_root() {
        return false;
    }
    let have = std::path::Path::new("/sys/module/openvswitch").exists();
    if !have {
        eprintln!(
            "{test}: skipped: no openvswitch module (run in the kernel VM: tests/kernel-vm/)"
        );
    }
    have
}

/// `hosts` hosts whose routers run with the `--datapath` `mode(i)` gives, one pod each; returns
/// once every sleeve data path is up (the fast paths are checked by the caller).
fn mesh(hosts: usize, mode: impl Fn(HostId) -> &'static str) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, hosts)?;
    net.start_mesh(|i| {
        RouterOpts::new()
            .arg("--datapath")
            .arg(mode(i))
            // The miss path's decisions, one line each.
            .arg("--log-level")
            .arg("info,weft_datapath::ovs::kernel=debug")
    })?;
    net.wait_until("every sleeve data path is up everywhere", SETTLE, || {
        net.check_data_paths_up(&net.host_ids())
    })?;
    for i in net.host_ids() {
        let mtu = net.report_json(i)?["datapath"]["mtu"]
            .as_u64()
            .context("no datapath MTU in the report")?;
        let pod = net.pod_count() + 1;
        net.add_pod(i, BRIDGE, &format!("{}/24", v4(pod)), u16::try_from(mtu)?)?;
        net.add_pod_address(pod, &format!("{}/64", v6(pod)))?;
    }
    Ok(net)
}

/// Host `i`'s group flow replicates to exactly the hosts `to` (its report, and
/// `ovs-dpctl dump-flows`: the masked destination, a tunnel to each of them).
fn wait_group(net: &Net, i: HostId, to: &[HostId]) -> anyhow::Result<()> {
    let want: Vec<String> = to.iter().map(|h| format!("10.77.0.{h}")).collect();
    net.wait_until(
        &format!("host{i} replicates group frames to hosts {to:?}"),
        SETTLE,
        || {
            let report = net.report_json(i)?;
            let mut got: Vec<String> = report["datapath"]["vxlan"]["group_dsts"]
                .as_array()
                .context("no group_dsts in the report")?
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect();
            got.sort();
            ensure!(got == want, "host{i}: group_dsts {got:?}, want {want:?}");
            Ok(true)
        },
    )?;
    let flows = dump_flows(net, i)?;
    let group = flows
        .lines()
        .find(|l| l.contains("dst=01:00:00:00:00:00/01:00:00:00:00:00"))
        .with_context(|| format!("host{i} has no group flow:\n{flows}"))?;
    ensure!(
        group.matches("set(tunnel(").count() == to.len()
            && want.iter().all(|dst| group.contains(&format!("dst={dst}"))),
        "host{i}'s group flow sends to {want:?}: {group}"
    );
    eprintln!("host{i}'s group flow: {group}");
    Ok(())
}

/// Every pod's broadcasts and multicasts reach every other pod exactly once.
fn check_bum(net: &Net, round: &str) -> anyhow::Result<()> {
    let pods: Vec<PodId> = (1..=net.pod_count()).collect();
    check_bum_exactly_once(net, &pods, round, v4, "10.250.0.255")
}

/// `ovs-dpctl dump-flows` of host `i`'s datapath (Debian's tool, as a reference reader).
fn dump_flows(net: &Net, i: HostId) -> anyhow::Result<String> {
    net.exec(
        i,
        &["ovs-dpctl", "dump-flows", &format!("system@{DATAPATH}")],
    )
}

#[test]
fn kernel_ovs_connections_use_ovs_pods_ping_and_20_mb_arrive_intact() -> anyhow::Result<()> {
    if !have_ovs("kernel_ovs_connections_use_ovs") {
        return Ok(());
    }
    let net = mesh(3, |_| "fastdp")?;
    net.wait_until("every connection uses ovs", SETTLE, || {
        net.check_all_on_datapath(&net.host_ids(), "ovs")
    })?;
    // IPv4 and IPv6, with ARP and ND through the sleeve's broadcast and unicast on the fast path.
    ping_all(
        &net,
        &[(1, v4(2)), (2, v4(3)), (3, v4(1)), (1, v6(3)), (2, v6(1))],
    )?;
    let neighbours = net.pod_exec(1, &["ip", "neigh", "show", &v4(2)])?;
    let mac2 = net.pod_mac(2)?;
    ensure!(
        neighbours.contains(&mac2),
        "pod1 knows pod2 by its real MAC {mac2}: {neighbours}"
    );
    let flows = dump_flows(&net, 1)?;
    ensure!(
        flows.contains(&mac2)
            && flows.contains("10.77.0.2")
            && flows.contains(&format!("tp_dst={VXLAN_PORT}")),
        "host1's datapath has a flow to pod2's MAC at host2:\n{flows}"
    );
    let report = net.report_json(1)?;
    eprintln!("host1 datapath report: {}", report["datapath"]["vxlan"]);

    const PORT: &str = "5001";
    let server = net.spawn_in_pod(2, &["python3", "-c", SHA256_SERVER, &v4(2), PORT])?;
    net.wait_until("the server listens", SETTLE, || {
        Ok(server.stdout().contains("listening"))
    })?;
    let size = TRANSFER_BYTES.to_string();
    let client = net
        .spawn_in_pod(1, &["python3", "-c", SHA256_CLIENT, &v4(2), PORT, &size])?
        .wait(TRANSFER_TIMEOUT)?;
    ensure!(
        client.success(),
        "the client failed: {}{}",
        client.stdout,
        client.stderr
    );
    let server = server.wait(SETTLE)?;
    ensure!(server.success(), "the server failed: {}", server.stderr);
    let sent = client.stdout.trim();
    let received = server.stdout.lines().last().unwrap_or_default().trim();
    ensure!(
        sent.starts_with(&format!("{size} ")) && received == sent,
        "sent {sent:?}, received {received:?}"
    );
    eprintln!("20 MB: {sent}");

    // The flows are a cache of the MAC table: flushed behind weft's back, they come back through
    // misses (the router's repair does not put them back), the packets that missed are sent
    // on, and the fast heartbeats keep every connection on ovs.
    net.exec(
        1,
        &["ovs-dpctl", "del-flows", &format!("system@{DATAPATH}")],
    )?;
    if let Err(e) = ping_all(&net, &[(1, v4(2)), (2, v4(1)), (1, v6(3))]) {
        // What the miss path did, once the report has caught up (it is read at the repair).
        std::thread::sleep(Duration::from_secs(11));
        for i in [1, 2] {
            eprintln!(
                "host{i} details: {}\nflows:\n{}",
                net.report_json(i)?["datapath"]["vxlan"]["details"],
                dump_flows(&net, i)?
            );
        }
        let log = net.log(1);
        let ovs: Vec<&str> = log.lines().filter(|l| l.contains("ovs")).collect();
        eprintln!(
            "host1's ovs log:\n{}",
            ovs[ovs.len().saturating_sub(80)..].join("\n")
        );
        return Err(e);
    }
    net.wait_until(
        "host1's flow to pod2 is back, put by an answered miss",
        SETTLE,
        || {
            let answered = net.report_json(1)?["datapath"]["vxlan"]["details"]["upcalls_answered"]
                .as_u64()
                .unwrap_or(0);
            Ok(answered > 0 && dump_flows(&net, 1)?.contains(&mac2))
        },
    )?;
    eprintln!(
        "host1 datapath report after the flush: {}",
        net.report_json(1)?["datapath"]["vxlan"]["details"]
    );
    let status = net.weft_output(1, &["status", "datapath"])?;
    eprintln!("host1 weft status datapath:\n{}", status.stdout);
    ensure!(
        status.success()
            && status.stdout.contains("   upcalls: ")
            && status.stdout.contains(" answered"),
        "weft status datapath shows the miss path: {status:?}"
    );
    net.check_now("every connection still on ovs", || {
        net.check_all_on_datapath(&net.host_ids(), "ovs")
    })
}

#[test]
fn kernel_ovs_a_blocked_vxlan_port_moves_that_connection_to_the_sleeve_and_back()
-> anyhow::Result<()> {
    if !have_ovs("kernel_ovs_a_blocked_vxlan_port") {
        return Ok(());
    }
    let net = mesh(3, |_| "fastdp")?;
    net.wait_until("every connection uses ovs", SETTLE, || {
        net.check_all_on_datapath(&net.host_ids(), "ovs")
    })?;
    ping_all(&net, &[(1, v4(2)), (1, v4(3))])?;
    net.block_udp_port(1, 2, VXLAN_PORT)?;
    let reason = net.wait_until_on_sleeve_for_the_fast_path(1, 2)?;
    eprintln!("host1 -> host2: sleeve ({reason})");
    net.check_now("the other connections stay on ovs", || {
        net.check_datapath(&[(1, 3), (2, 3)], "ovs")
    })?;
    net.wait_until("pod1 reaches pod2 through the sleeve", SETTLE, || {
        Ok(ping_all(&net, &[(1, v4(2))]).is_ok())
    })?;
    let flows = dump_flows(&net, 1)?;
    let mac2 = net.pod_mac(2)?;
    ensure!(
        !flows.contains(&mac2),
        "no flow toward a peer on the sleeve, but host1 has one to pod2:\n{flows}"
    );
    // Group frames: each host replicates to its fast leaves only (in this full mesh, every
    // peer is a leaf): host1 and host2 to host3 alone, host3 to both; the sleeve carries the
    // rest, and every pod gets each frame once.
    wait_group(&net, 1, &[3])?;
    wait_group(&net, 2, &[3])?;
    wait_group(&net, 3, &[1, 2])?;
    check_bum(&net, "host1-host2 on the sleeve")?;
    net.unblock_udp_port(1, 2, VXLAN_PORT)?;
    net.wait_until("host1-host2 return to ovs", SETTLE, || {
        net.check_datapath(&[(1, 2), (2, 1)], "ovs")
    })?;
    ping_all(&net, &[(1, v4(2)), (2, v4(1))])
}

#[test]
fn kernel_ovs_a_vxlan_host_and_ovs_hosts_are_fast_to_each_other() -> anyhow::Result<()> {
    if !have_ovs("kernel_ovs_a_vxlan_host_and_ovs_hosts") {
        return Ok(());
    }
    let net = mesh(3, |i| if i == 3 { "vxlan" } else { "fastdp" })?;
    // Each end names its own backend: both are fast, and both speak VXLAN.
    net.wait_until("hosts 1-2 use ovs, host3 vxlan, all fast", SETTLE, || {
        for (i, peer, kind) in [(1, 2, "ovs"), (2, 1, "ovs"), (1, 3, "ovs"), (2, 3, "ovs")]
            .into_iter()
            .chain([(3, 1, "vxlan"), (3, 2, "vxlan")])
        {
            let (used, reason) = net.datapath_in_use(i, peer)?;
            ensure!(
                used == kind,
                "host{i} -> host{peer} uses {used} ({reason}), expected {kind}"
            );
        }
        Ok(true)
    })?;
    ping_all(&net, &[(1, v4(3)), (3, v4(2)), (2, v6(3))])?;
    let flows = dump_flows(&net, 1)?;
    let mac3 = net.pod_mac(3)?;
    ensure!(
        flows.contains(&mac3) && flows.contains("10.77.0.3"),
        "host1 sends pod3's MAC to host3 in the kernel:\n{flows}"
    );
    // The Open vSwitch hosts replicate their pods' group frames to every peer (a full mesh:
    // all leaves), the VXLAN host's take the sleeve: each arrives once, at every other pod.
    wait_group(&net, 1, &[2, 3])?;
    wait_group(&net, 2, &[1, 3])?;
    check_bum(&net, "ovs and vxlan")?;
    let flows = dump_flows(&net, 1)?;
    let group = flows
        .lines()
        .find(|l| l.contains("dst=01:00:00:00:00:00/01:00:00:00:00:00"))
        .unwrap_or_default();
    ensure!(
        !group.contains("packets:0,"),
        "host1's group flow carried its pod's group frames: {group}"
    );
    Ok(())
}

#[test]
fn kernel_ovs_a_killed_router_leaves_traffic_flowing_and_its_restart_keeps_it() -> anyhow::Result<()>
{
    if !have_ovs("kernel_ovs_a_killed_router") {
        return Ok(());
    }
    const REPLIES: usize = 10;
    let net = mesh(3, |_| "fastdp")?;
    net.wait_until("every connection uses ovs", SETTLE, || {
        net.check_all_on_datapath(&net.host_ids(), "ovs")
    })?;
    ping_all(&net, &[(1, v4(2)), (1, v4(3)), (2, v4(3))])?;
    let flows = [(1, 2), (1, 3), (2, 3)];
    let pings = flows
        .iter()
        .map(|&(from, to)| net.spawn_in_pod(from, &["ping", "-n", "-i", "0.2", &v4(to)]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let replies = |p: &weft_tests::Background| p.stdout().matches("bytes from").count();
    net.wait_until("the pings are answered", SETTLE, || {
        Ok(pings.iter().all(|p| replies(p) >= 3))
    })?;
    let before = dump_flows(&net, 3)?;
    net.kill(3)?;
    let at_kill: Vec<usize> = pings.iter().map(replies).collect();
    net.wait_until(
        "the pings go on while host3's router is down",
        SETTLE,
        || {
            Ok(pings
                .iter()
                .zip(&at_kill)
                .all(|(p, at)| replies(p) >= at + REPLIES))
        },
    )?;
    net.restart(3)?;
    net.wait_until("host3 is back, on ovs", SETTLE, || {
        net.check_full_mesh(&net.host_ids())?;
        net.check_all_on_datapath(&net.host_ids(), "ovs")
    })?;
    let at_restart: Vec<usize> = pings.iter().map(replies).collect();
    net.wait_until("the pings go on after the restart", SETTLE, || {
        Ok(pings
            .iter()
            .zip(&at_restart)
            .all(|(p, at)| replies(p) >= at + REPLIES))
    })?;
    let after = dump_flows(&net, 3)?;
    eprintln!("host3's flows before the kill:\n{before}\nafter the restart:\n{after}");
    for p in pings {
        p.stop()?;
    }
    Ok(())
}
