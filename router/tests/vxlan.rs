//! Acceptance tests of the VXLAN fast path (issue 11), with real routers, pods and the kernel in
//! network namespaces, no password unless stated: connections come up on `vxlan` and pods talk
//! over IPv4 and IPv6 in the kernel; a 100 MB stream arrives intact; broadcast and multicast
//! reach every other pod exactly once, also in a mixed mesh; a blocked VXLAN port moves that one
//! connection to the sleeve and back; hosts that cannot talk are relayed; a MAC that moves host
//! is re-pointed everywhere; a killed router leaves fast-path traffic flowing and its restart
//! keeps the FDB; with a password nothing takes the fast path and no plaintext is seen.
//!
//! Names the tests rely on (the contract in `docs/datapaths.md`): the VXLAN device
//! `weft-vxlan` on the bridge `weft` beside the sleeve's `weft-tap`, UDP port 6784 (mesh port +
//! 1), `/report` `.connections[].datapath.{datapath, datapath_reason, datapath_transitions}`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use weft_datapath::vxlan::DEFAULT_VNI;
use weft_tests::traffic::{
    SHA256_CLIENT, SHA256_SERVER, check_real_macs, contains, every_pair_both_families, hex,
    ping_all, ping_n, pod_v4 as v4, pod_v6 as v6,
};
use weft_tests::{FdbEntry, HostId, Net, PodId, RouterOpts, SETTLE, pairs_of, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "correct horse battery staple";
const BRIDGE: &str = "weft";
const VXLAN_DEVICE: &str = "weft-vxlan";
const TAP: &str = "weft-tap";
const MESH_PORT: u16 = 6783;
const VXLAN_PORT: u16 = 6784;
const ESP_REASON: &str = "encryption requires ESP, which this kernel lacks";
/// First byte of a sealed sleeve datagram (`docs/sleeve.md`).
const KIND_SEALED: u8 = 0x02;
/// What pods put in ping padding and UDP datagrams, to be looked for on the underlay.
const PING_PATTERN: &[u8; 16] = b"weft-ping-marker";
const MARKER: &[u8] = b"weft-plaintext-marker-XYZ";
const TRANSFER_BYTES: u64 = 100 * 1024 * 1024;
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(90);

/// `hosts` hosts (hosts 2.. told only about host1) whose routers run with `--datapath mode`
/// (and the password, if any), with `pods_per_host` pods each, numbered in host order: pod `p`
/// has [`v4`]`(p)` and [`v6`]`(p)`. Returns once every connection uses `expect`.
fn mesh(
    hosts: usize,
    pods_per_host: usize,
    mode: &str,
    password: Option<&str>,
    expect: &str,
) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, hosts)?;
    net.start_mesh(|_| {
        let opts = RouterOpts::new().arg("--datapath").arg(mode);
        match password {
            Some(password) => opts.password(password),
            None => opts,
        }
    })?;
    net.wait_until(&format!("every connection uses {expect}"), SETTLE, || {
        net.check_all_on_datapath(&net.host_ids(), expect)
    })?;
    // The sleeve carries broadcasts (ARP, ND) whatever the connection's datapath.
    net.wait_until("every sleeve data path is up everywhere", SETTLE, || {
        net.check_data_paths_up(&net.host_ids())
    })?;
    for i in net.host_ids() {
        let mtu = pod_mtu(&net, i)?;
        for _ in 0..pods_per_host {
            let pod = net.pod_count() + 1;
            let added = net.add_pod(i, BRIDGE, &format!("{}/24", v4(pod)), mtu)?;
            ensure!(added == pod, "pods are numbered in order: got {added}");
            net.add_pod_address(pod, &format!("{}/64", v6(pod)))?;
        }
    }
    Ok(net)
}

/// Hosts with `--datapath auto`, no password, on the fast path.
fn fast_mesh(hosts: usize, pods_per_host: usize) -> anyhow::Result<Net> {
    mesh(hosts, pods_per_host, "auto", None, "vxlan")
}

/// The pods' MTU host `i`'s router reports (`.datapath.mtu`).
fn pod_mtu(net: &Net, i: HostId) -> anyhow::Result<u16> {
    let mtu = net.report_json(i)?["datapath"]["mtu"]
        .as_u64()
        .with_context(|| format!("host{i}: no datapath MTU in the report"))?;
    Ok(u16::try_from(mtu)?)
}

fn ping(net: &Net, from: PodId, to: &str) -> anyhow::Result<()> {
    ping_n(net, from, to, 2, &[])
}

/// Waits until pod `from` reaches `to` again (after a change of path).
fn wait_ping(net: &Net, from: PodId, to: &str) -> anyhow::Result<()> {
    net.wait_until(&format!("pod{from} reaches {to}"), SETTLE, || {
        Ok(ping(net, from, to).is_ok())
    })
}

/// The VNI of a VXLAN datagram's header (RFC 7348: flags with the I bit, 3 reserved bytes,
/// the 24-bit VNI, 1 reserved byte), or None when the payload is no VXLAN header.
fn vxlan_vni(payload: &[u8]) -> Option<u32> {
    if payload.len() < 8 || payload[0] & 0x08 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, payload[4], payload[5], payload[6]]))
}

/// Host `i`'s entries for `mac` on the VXLAN device: its own (`self`: the remote underlay
/// address, if any) and whether the bridge points `mac` at it (static, weft's).
fn vxlan_entries(net: &Net, i: HostId, mac: &str) -> anyhow::Result<(Option<String>, bool)> {
    let entries = net.fdb_of(i, VXLAN_DEVICE)?;
    let own = entries
        .iter()
        .find(|e| e.mac == mac && e.is_self())
        .and_then(|e| e.dst.clone());
    let bridged = entries
        .iter()
        .any(|e| e.mac == mac && !e.is_self() && e.state == "static");
    Ok((own, bridged))
}

/// Host `i` sends `mac` to host `owner` over VXLAN: its VXLAN device has `mac` → `owner`'s
/// underlay address and its bridge points `mac` at the VXLAN device.
fn check_fast_entry(net: &Net, i: HostId, mac: &str, owner: HostId) -> anyhow::Result<bool> {
    let (own, bridged) = vxlan_entries(net, i, mac)?;
    let expected = net.address(owner).to_string();
    ensure!(
        own.as_deref() == Some(expected.as_str()) && bridged,
        "host{i}: {mac} on {VXLAN_DEVICE}: dst {own:?} (expected {expected}), bridge entry: \
         {bridged}; fdb:\n{}",
        fdb_text(net, i)
    );
    Ok(true)
}

/// Host `i`'s bridge sends `mac` to the sleeve's TAP (a static entry on `weft-tap`).
fn check_sleeve_entry(net: &Net, i: HostId, mac: &str) -> anyhow::Result<bool> {
    let on_tap = net
        .fdb_of(i, TAP)?
        .iter()
        .any(|e| e.mac == mac && e.state == "static");
    ensure!(
        on_tap,
        "host{i}: no static entry for {mac} on {TAP}; fdb:\n{}",
        fdb_text(net, i)
    );
    Ok(true)
}

/// Every host's FDB entries for `mac` and who its router says owns it, for failure messages.
fn whereabouts(net: &Net, mac: &str) -> String {
    let mut out = String::new();
    for i in net.host_ids() {
        let entries = net.fdb(i).map(|all| {
            all.iter()
                .filter(|e| e.mac == mac)
                .map(FdbEntry::line)
                .collect::<Vec<_>>()
                .join("; ")
        });
        let owner = net.report_json(i).map(|r| {
            r["datapath"]["mac_table"]
                .as_array()
                .and_then(|t| t.iter().find(|m| m["mac"] == mac))
                .map(|m| m["owner"].to_string())
                .unwrap_or_else(|| "none".into())
        });
        out.push_str(&format!(
            "\n  host{i}: owner {}, fdb: {}",
            owner.unwrap_or_else(|e| format!("{e:#}")),
            entries.unwrap_or_else(|e| format!("{e:#}"))
        ));
    }
    out
}

fn fdb_text(net: &Net, i: HostId) -> String {
    match net.fdb(i) {
        Ok(entries) => entries
            .iter()
            .map(FdbEntry::line)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn connections_come_up_on_vxlan_and_pods_ping_over_ipv4_and_ipv6_with_real_macs()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = fast_mesh(3, 2)?;
    let pods: Vec<PodId> = (1..=6).collect();
    let host_of = |pod: PodId| (pod - 1) / 2 + 1;

    // The device as designed: on the bridge, its own port and VNI, no learning, DF set, and
    // no flooding through it (broadcasts take the sleeve).
    for i in net.host_ids() {
        let datapath = net.report_json(i)?["datapath"].clone();
        let vxlan = &datapath["vxlan"];
        ensure!(
            datapath["mode"] == "auto"
                && vxlan["device"] == VXLAN_DEVICE
                && vxlan["port"] == VXLAN_PORT
                && vxlan["vni"] == DEFAULT_VNI,
            "host{i}: {datapath}"
        );
        let json = net.exec(i, &["ip", "-d", "-j", "link", "show", "dev", VXLAN_DEVICE])?;
        let link: Value = serde_json::from_str(&json)?;
        let (info, port) = (
            &link[0]["linkinfo"]["info_data"],
            &link[0]["linkinfo"]["info_slave_data"],
        );
        ensure!(
            link[0]["master"] == BRIDGE
                && info["id"] == DEFAULT_VNI
                && info["port"] == VXLAN_PORT
                && info["learning"] == false
                && info["df"] == "set"
                && port["learning"] == false
                && port["flood"] == false
                && port["mcast_flood"] == false
                && port["bcast_flood"] == false,
            "host{i}: {VXLAN_DEVICE} is not set up as designed: {json}"
        );
        let text = net.weft_status(i, &["connections"])?;
        ensure!(
            text.matches("datapath: vxlan").count() >= 2 && !text.contains("datapath: sleeve"),
            "host{i}: weft status connections:\n{text}"
        );
        let metrics = net.metrics(i)?;
        let fast = metrics
            .samples
            .iter()
            .filter(|(s, v)| {
                s.starts_with("weft_connection_datapath{")
                    && s.contains("datapath=\"vxlan\"")
                    && *v == 1.0
            })
            .count();
        ensure!(fast == 2, "host{i}: {fast} connections on vxlan in metrics");
    }

    ping_all(&net, &every_pair_both_families(&pods))?;

    // ARP and neighbour discovery crossed the mesh: each pod resolved the pods on other hosts
    // to their real MACs.
    check_real_macs(&net, &pods)?;
    let macs: Vec<String> = pods
        .iter()
        .map(|&p| net.pod_mac(p))
        .collect::<anyhow::Result<_>>()?;

    // Every host points every remote pod's MAC at its owner over VXLAN.
    for i in net.host_ids() {
        for &pod in pods.iter().filter(|&&p| host_of(p) != i) {
            net.wait_until(
                &format!("host{i} sends pod{pod}'s MAC over VXLAN"),
                SETTLE,
                || check_fast_entry(&net, i, &macs[pod - 1], host_of(pod)),
            )?;
        }
    }

    // And the kernel carries the unicast: the ping pattern crosses the underlay in VXLAN
    // datagrams on udp/6784 with weft's VNI, and never in the sleeve's.
    let mut capture = net.capture(1, "udp")?;
    ping_n(&net, 1, &v4(3), 3, &["-p", &hex(PING_PATTERN)])?;
    let (host1, host2) = (net.address(1), net.address(2));
    net.wait_until("the capture holds the VXLAN-carried pings", SETTLE, || {
        let datagrams = capture.datagrams()?;
        let vxlan = |src, dst| {
            datagrams
                .iter()
                .filter(|d| *d.src.ip() == src && *d.dst.ip() == dst)
                .filter(|d| d.dst.port() == VXLAN_PORT)
                .filter(|d| vxlan_vni(&d.payload) == Some(DEFAULT_VNI))
                .filter(|d| contains(&d.payload, PING_PATTERN))
                .count()
        };
        let (out, back) = (vxlan(host1, host2), vxlan(host2, host1));
        ensure!(
            out >= 3 && back >= 3,
            "{out} echo requests and {back} replies in VXLAN"
        );
        Ok(true)
    })?;
    capture.stop()?;
    for d in capture.datagrams()? {
        ensure!(
            !(d.dst.port() == MESH_PORT && contains(&d.payload, PING_PATTERN)),
            "a ping between fast peers crossed the sleeve: {d:?}"
        );
    }
    Ok(())
}

#[test]
fn a_100_mb_tcp_stream_over_the_fast_path_arrives_intact() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: &str = "5001";
    // `--datapath vxlan` this time: VXLAN, the sleeve only as the fallback.
    let net = mesh(3, 1, "vxlan", None, "vxlan")?;
    let mode = net.report_json(1)?["datapath"]["mode"].clone();
    ensure!(mode == "vxlan", "host1 runs datapath mode {mode}");
    let server_address = v4(2);
    let server = net.spawn_in_pod(2, &["python3", "-c", SHA256_SERVER, &server_address, PORT])?;
    net.wait_until("the server listens", SETTLE, || {
        Ok(server.stdout().contains("listening"))
    })?;
    let vxlan_before = net.link_statistic(1, VXLAN_DEVICE, "tx_bytes")?;
    let sleeve_before = net.report_json(1)?["datapath"]["bytes_out"]
        .as_u64()
        .unwrap_or(0);
    let size = TRANSFER_BYTES.to_string();
    let client = net
        .spawn_in_pod(
            1,
            &["python3", "-c", SHA256_CLIENT, &server_address, PORT, &size],
        )?
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
    // It went through the kernel: the VXLAN device sent it all, the sleeve almost nothing.
    let vxlan_sent = net.link_statistic(1, VXLAN_DEVICE, "tx_bytes")? - vxlan_before;
    let sleeve_sent = net.report_json(1)?["datapath"]["bytes_out"]
        .as_u64()
        .unwrap_or(0)
        - sleeve_before;
    ensure!(
        vxlan_sent >= TRANSFER_BYTES && sleeve_sent < TRANSFER_BYTES / 10,
        "{VXLAN_DEVICE} sent {vxlan_sent} bytes, the sleeve {sleeve_sent}"
    );
    net.check_now("every connection still on vxlan", || {
        net.check_all_on_datapath(&net.host_ids(), "vxlan")
    })
}

/// Every pod sends broadcasts and multicasts; each other pod gets each exactly once (the
/// shared check, `weft_tests::traffic`).
fn check_bum_exactly_once(net: &Net, pods: &[PodId], round: &str) -> anyhow::Result<()> {
    weft_tests::traffic::check_bum_exactly_once(net, pods, round, v4, "10.250.0.255")
}

#[test]
fn broadcast_and_multicast_reach_every_other_pod_exactly_once_also_in_a_mixed_mesh()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = fast_mesh(4, 1)?;
    let pods: Vec<PodId> = (1..=4).collect();
    ping_all(&net, &[(1, v4(2)), (1, v4(3)), (1, v4(4)), (3, v4(4))])?;
    check_bum_exactly_once(&net, &pods, "all-fast")?;

    // Mixed: host1-host2 on the sleeve (their VXLAN port blocked), host3-host4 cut off from
    // each other (relayed through host1 or host2), the other connections on vxlan.
    net.block_udp_port(1, 2, VXLAN_PORT)?;
    net.block(3, 4)?;
    net.wait_until(
        "host1-host2 use the sleeve, host3-host4 are apart",
        SETTLE,
        || {
            net.check_datapath(&[(1, 2)], "sleeve")?;
            net.check_disconnected_from(&[3], 4)?;
            net.check_disconnected_from(&[4], 3)?;
            net.check_datapath(&[(1, 3), (1, 4), (2, 3), (2, 4)], "vxlan")
        },
    )?;
    wait_ping(&net, 3, &v4(4))?;
    wait_ping(&net, 1, &v4(2))?;
    check_bum_exactly_once(&net, &pods, "mixed")
}

#[test]
fn a_blocked_vxlan_port_moves_that_connection_alone_to_the_sleeve_and_unblocking_returns_it()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = fast_mesh(3, 1)?;
    ping_all(&net, &[(1, v4(2)), (2, v4(1)), (1, v4(3))])?;
    let mac2 = net.pod_mac(2)?;
    net.wait_until("host1 sends pod2's MAC over VXLAN", SETTLE, || {
        check_fast_entry(&net, 1, &mac2, 2)
    })?;

    net.block_udp_port(1, 2, VXLAN_PORT)?;
    let reason = net.wait_until_on_sleeve_for_the_fast_path(1, 2)?;
    net.check_now("the other connections stay on vxlan", || {
        net.check_datapath(&[(1, 3), (2, 3)], "vxlan")
    })?;
    eprintln!("host1 -> host2: sleeve ({reason})");
    let text = net.weft_status(1, &["connections"])?;
    ensure!(
        text.contains("datapath: sleeve (fast path:") && text.contains("datapath: vxlan"),
        "weft status connections on host1:\n{text}"
    );
    let path = net.data_path(1, 2)?;
    ensure!(
        path["datapath_transitions"].as_u64() >= Some(1),
        "host1 -> host2: {path}"
    );
    let metrics = net.metrics(1)?;
    ensure!(
        metrics.get("weft_datapath_transitions_total{to=\"sleeve\"}") >= Some(1.0),
        "host1 counts no transition to the sleeve: {:?}",
        metrics.get("weft_datapath_transitions_total{to=\"sleeve\"}")
    );

    // Pods keep talking, now through the sleeve: host1's bridge sends pod2's MAC to the TAP and
    // the pings cross the underlay in (plain) sleeve datagrams.
    wait_ping(&net, 1, &v4(2))?;
    ping(&net, 2, &v4(1))?;
    net.wait_until("host1 sends pod2's MAC to the sleeve", SETTLE, || {
        check_sleeve_entry(&net, 1, &mac2)
    })?;
    let mut capture = net.capture(1, &format!("udp port {MESH_PORT}"))?;
    ping_n(&net, 1, &v4(2), 2, &["-p", &hex(PING_PATTERN)])?;
    net.wait_until("the pings to pod2 cross the sleeve", SETTLE, || {
        Ok(contains(&capture.bytes()?, PING_PATTERN))
    })?;
    capture.stop()?;
    ping(&net, 1, &v4(3))?;
    net.check_now("the other connections stay on vxlan", || {
        net.check_datapath(&[(1, 3), (2, 3)], "vxlan")
    })?;

    net.unblock_udp_port(1, 2, VXLAN_PORT)?;
    net.wait_until("host1-host2 return to vxlan", SETTLE, || {
        net.check_datapath(&[(1, 2)], "vxlan")
    })?;
    let path = net.data_path(1, 2)?;
    ensure!(
        path["datapath_transitions"].as_u64() >= Some(2),
        "host1 -> host2: {path}"
    );
    net.wait_until("host1 sends pod2's MAC over VXLAN again", SETTLE, || {
        check_fast_entry(&net, 1, &mac2, 2)
    })?;
    ping(&net, 1, &v4(2))?;
    ping(&net, 2, &v4(1))?;
    net.check_now("every connection on vxlan", || {
        net.check_all_on_datapath(&net.host_ids(), "vxlan")
    })
}

#[test]
fn hosts_that_reach_each_other_only_through_a_third_are_relayed_while_other_connections_stay_fast()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = fast_mesh(3, 1)?;
    ping(&net, 1, &v4(2))?;
    net.block(1, 2)?;
    net.wait_until("host1 and host2 lose their connection", SETTLE, || {
        net.check_disconnected_from(&[1], 2)?;
        net.check_disconnected_from(&[2], 1)
    })?;
    wait_ping(&net, 1, &v4(2))?;
    ping(&net, 2, &v4(1))?;
    let relayed = net.report_json(3)?["datapath"]["relayed"]
        .as_u64()
        .unwrap_or(0);
    ensure!(relayed > 0, "host3 relayed nothing");
    net.check_now("host3's connections stay on vxlan", || {
        net.check_datapath(&[(1, 3), (2, 3)], "vxlan")
    })?;
    // Each of host1 and host2 sends the other's pod to the sleeve, host3's over VXLAN.
    let macs: Vec<String> = (1..=3)
        .map(|p| net.pod_mac(p))
        .collect::<anyhow::Result<_>>()?;
    net.wait_until("the FDBs follow the relay", SETTLE, || {
        check_sleeve_entry(&net, 1, &macs[1])?;
        check_sleeve_entry(&net, 2, &macs[0])?;
        check_fast_entry(&net, 1, &macs[2], 3)?;
        check_fast_entry(&net, 2, &macs[2], 3)?;
        check_fast_entry(&net, 3, &macs[0], 1)?;
        check_fast_entry(&net, 3, &macs[1], 2)
    })?;
    ping(&net, 1, &v4(3))?;
    ping(&net, 2, &v4(3))
}

#[test]
fn a_mac_that_moves_to_another_host_is_repointed_everywhere() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const MAC: &str = "02:42:0a:fa:00:64";
    const ADDRESS: &str = "10.250.0.100";
    let net = fast_mesh(3, 1)?;
    // The mover starts on host1.
    let mtu = pod_mtu(&net, 1)?;
    let mover = net.add_pod_with_mac(1, BRIDGE, &format!("{ADDRESS}/24"), mtu, Some(MAC))?;
    ping(&net, 2, ADDRESS)?;
    ping(&net, 3, ADDRESS)?;
    net.wait_until(
        "hosts 2 and 3 send the MAC to host1 over VXLAN",
        SETTLE,
        || {
            check_fast_entry(&net, 2, MAC, 1)?;
            check_fast_entry(&net, 3, MAC, 1)
        },
    )?;

    // Gone from host1, back on host2 with the same MAC and address.
    net.remove_pod(mover)?;
    let moved = net.add_pod_with_mac(2, BRIDGE, &format!("{ADDRESS}/24"), mtu, Some(MAC))?;
    // It speaks first (as a restarted pod would), so host2 learns it.
    net.wait_until(&format!("pod{moved} (moved) reaches pod3"), SETTLE, || {
        ensure!(
            ping(&net, moved, &v4(3)).is_ok(),
            "no answer; where {MAC} is:{}",
            whereabouts(&net, MAC)
        );
        Ok(true)
    })?;
    net.wait_until("hosts 1 and 3 send the MAC to host2 over VXLAN", SETTLE, || {
        check_fast_entry(&net, 1, MAC, 2)?;
        check_fast_entry(&net, 3, MAC, 2)?;
        let (own, bridged) = vxlan_entries(&net, 2, MAC)?;
        ensure!(
            own.is_none() && !bridged,
            "host2 still sends its own pod's MAC over VXLAN (dst {own:?}, bridge entry {bridged})"
        );
        Ok(true)
    })?;
    ping(&net, 1, ADDRESS)?;
    ping(&net, 3, ADDRESS)?;
    ping(&net, moved, &v4(1))
}

/// The entries weft keeps in host `i`'s kernel that outlive its router: everything on the VXLAN
/// device (its own table and the bridge's entries for it) and the bridge's permanent entries
/// (its address, the local heartbeat MAC). Learned entries come and go with traffic; the
/// TAP goes with the router.
fn kept_fdb(net: &Net, i: HostId) -> anyhow::Result<BTreeSet<String>> {
    // The bridge's own address is the kernel's entry, not weft's: it is listed under the TAP
    // while the TAP (whose MAC the bridge took) exists, under the bridge once it is gone.
    let bridge_mac = net
        .exec(i, &["cat", &format!("/sys/class/net/{BRIDGE}/address")])?
        .trim()
        .to_owned();
    Ok(net
        .fdb(i)?
        .into_iter()
        .filter(|e| !e.is_learned())
        .filter(|e| e.mac != bridge_mac)
        .filter(|e| {
            e.device == VXLAN_DEVICE || (e.device == BRIDGE && e.master.as_deref() == Some(BRIDGE))
        })
        .map(|e| e.line())
        .collect())
}

/// The `icmp_seq` numbers ping printed replies for.
fn answered(ping_output: &str) -> BTreeSet<u64> {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Echo requests lost between the first and the last answered one.
fn losses(answered: &BTreeSet<u64>) -> u64 {
    match (answered.first(), answered.last()) {
        (Some(first), Some(last)) => last - first + 1 - answered.len() as u64,
        _ => 0,
    }
}

#[test]
fn a_killed_router_leaves_fast_path_traffic_flowing_and_its_restart_keeps_the_fdb()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    /// Lost echo requests allowed per ping (10 per second).
    const ALLOWED_LOSSES: u64 = 10;
    /// Replies each ping must get while the router is down, and again after its restart.
    const REPLIES_PER_PHASE: usize = 30;
    let net = fast_mesh(3, 1)?;
    ping_all(
        &net,
        &[(1, v4(2)), (1, v4(3)), (2, v4(3)), (3, v4(1)), (3, v4(2))],
    )?;
    let macs: Vec<String> = (1..=3)
        .map(|p| net.pod_mac(p))
        .collect::<anyhow::Result<_>>()?;
    net.wait_until(
        "every pod MAC is on the fast path everywhere",
        SETTLE,
        || {
            for i in 1..=3 {
                for pod in (1..=3).filter(|&p| p != i) {
                    check_fast_entry(&net, i, &macs[pod - 1], pod)?;
                }
            }
            Ok(true)
        },
    )?;
    let before: Vec<BTreeSet<String>> = (1..=3)
        .map(|i| kept_fdb(&net, i))
        .collect::<anyhow::Result<_>>()?;

    // Between the hosts that stay (1 -> 2) and to the host whose router dies (1 -> 3, 2 -> 3).
    let flows = [(1, 2), (1, 3), (2, 3)];
    let pings = flows
        .iter()
        .map(|&(from, to)| {
            net.spawn_in_pod(from, &["ping", "-n", "-i", "0.1", &v4(to)])
                .map(|p| (from, to, p))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let replies = |(_, _, p): &(PodId, PodId, weft_tests::Background)| answered(&p.stdout()).len();
    net.wait_until("the pings are answered", SETTLE, || {
        Ok(pings.iter().all(|p| replies(p) >= 5))
    })?;

    net.kill(3)?;
    let at_kill: Vec<usize> = pings.iter().map(replies).collect();
    net.wait_until("hosts 1 and 2 see host3's router gone", SETTLE, || {
        net.check_disconnected_from(&[1, 2], 3)
    })?;
    net.wait_until(
        "the pings go on while host3's router is down",
        SETTLE,
        || {
            for (p, at) in pings.iter().zip(&at_kill) {
                let (from, to, _) = p;
                ensure!(
                    replies(p) >= at + REPLIES_PER_PHASE,
                    "pod{from} -> pod{to}: {} replies since the kill; where pod{to}'s MAC \
                     is:{}",
                    replies(p) - at,
                    whereabouts(&net, &macs[to - 1])
                );
            }
            Ok(true)
        },
    )?;
    // The kernel state stayed: hosts 1 and 2 still send pod3's MAC to host3, host3 keeps its
    // device and entries.
    net.check_now("the fast-path entries outlive the router", || {
        check_fast_entry(&net, 1, &macs[2], 3)?;
        check_fast_entry(&net, 2, &macs[2], 3)?;
        let now = kept_fdb(&net, 3)?;
        ensure!(
            now == before[2],
            "host3's entries changed while its router was down:\nbefore:\n{}\nnow:\n{}",
            lines(&before[2]),
            lines(&now)
        );
        Ok(true)
    })?;

    net.restart(3)?;
    net.wait_until("host3 is back in the mesh, on vxlan", SETTLE, || {
        net.check_full_mesh(&net.host_ids())?;
        net.check_all_on_datapath(&net.host_ids(), "vxlan")
    })?;
    // Nothing new either: the new TAP and device have no address of their own, so they send
    // nothing from their MACs for the mesh to learn.
    net.wait_until("every host's FDB is as before the kill", SETTLE, || {
        for i in 1..=3 {
            let now = kept_fdb(&net, i)?;
            ensure!(
                now == before[i - 1],
                "host{i}:\nbefore:\n{}\nnow:\n{}",
                lines(&before[i - 1]),
                lines(&now)
            );
        }
        Ok(true)
    })?;
    let at_restart: Vec<usize> = pings.iter().map(replies).collect();
    net.wait_until("the pings go on after the restart", SETTLE, || {
        Ok(pings
            .iter()
            .zip(&at_restart)
            .all(|(p, at)| replies(p) >= at + REPLIES_PER_PHASE))
    })?;
    let mut failures = Vec::new();
    for (from, to, p) in pings {
        let out = p.stop()?;
        let answered = answered(&out.stdout);
        let lost = losses(&answered);
        eprintln!(
            "pod{from} -> pod{to}: {} answered, {lost} lost",
            answered.len()
        );
        if lost > ALLOWED_LOSSES {
            failures.push(format!("pod{from} -> pod{to}: {lost} lost"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

fn lines(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Sends `MARKER` (argv[3]) five times to argv[1]:argv[2].
const MARKER_SENDER: &str = "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
";

/// Prints each datagram received on argv[1]:argv[2].
const MARKER_RECEIVER: &str = "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('bound', flush=True)
while True:
    print(s.recv(2048).decode(errors='replace'), flush=True)
";

#[test]
fn with_a_password_every_connection_stays_on_the_sleeve_and_no_plaintext_crosses_the_underlay()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: &str = "9999";
    let net = mesh(3, 1, "auto", Some(PASSWORD), "sleeve")?;
    let check_esp = || -> anyhow::Result<bool> {
        for (a, b) in pairs_of(&net.host_ids()) {
            for (i, peer) in [(a, b), (b, a)] {
                let (kind, reason) = net.datapath_in_use(i, peer)?;
                ensure!(
                    kind == "sleeve" && reason == ESP_REASON,
                    "host{i} -> host{peer}: {kind} ({reason})"
                );
            }
        }
        Ok(true)
    };
    net.check_now("every connection on the sleeve for want of ESP", check_esp)?;
    for i in net.host_ids() {
        let datapath = net.report_json(i)?["datapath"].clone();
        ensure!(
            datapath["encrypted"] == true
                && datapath["vxlan"]["device"] == ""
                && datapath["vxlan"]["error"] == ESP_REASON,
            "host{i}: {datapath}"
        );
        ensure!(
            !net.has_link(i, VXLAN_DEVICE)?,
            "host{i} has a VXLAN device with a password set"
        );
        let text = net.weft_status(i, &["connections"])?;
        ensure!(
            text.contains(&format!("datapath: sleeve ({ESP_REASON})")),
            "host{i}: weft status connections:\n{text}"
        );
    }

    // Everything host1 puts on the underlay while pod1 sends markers to pod2 (host2).
    let marker = std::str::from_utf8(MARKER)?;
    let to = v4(2);
    let receiver = net.spawn_in_pod(2, &["python3", "-c", MARKER_RECEIVER, &to, PORT])?;
    net.wait_until("the marker receiver is bound", SETTLE, || {
        Ok(receiver.stdout().contains("bound"))
    })?;
    let mut capture = net.capture(1, "ip")?;
    ping_n(&net, 1, &to, 2, &["-p", &hex(PING_PATTERN)])?;
    net.pod_exec(1, &["python3", "-c", MARKER_SENDER, &to, PORT, marker])?;
    net.wait_until("pod2 receives the markers", SETTLE, || {
        Ok(receiver.stdout().contains(marker))
    })?;
    let (host1, host2) = (net.address(1), net.address(2));
    net.wait_until("the capture holds the sleeve traffic", SETTLE, || {
        let n = capture
            .datagrams()?
            .iter()
            .filter(|d| *d.src.ip() == host1 && *d.dst.ip() == host2)
            .count();
        ensure!(n > 2, "{n} datagrams host1 -> host2");
        Ok(true)
    })?;
    capture.stop()?;
    let bytes = capture.bytes()?;
    ensure!(
        !contains(&bytes, MARKER),
        "the UDP marker is on the underlay"
    );
    ensure!(
        !contains(&bytes, PING_PATTERN),
        "the ping pattern is on the underlay"
    );
    for d in capture.datagrams()? {
        if d.dst.port() == VXLAN_PORT || d.src.port() == VXLAN_PORT {
            bail!("a datagram on the VXLAN port: {d:?}");
        }
        if d.dst.port() == MESH_PORT {
            ensure!(
                d.payload.first() == Some(&KIND_SEALED),
                "an unsealed sleeve datagram: {d:?}"
            );
        }
    }
    net.check_now(
        "every connection still on the sleeve for want of ESP",
        check_esp,
    )
}
