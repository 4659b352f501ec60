//! Acceptance tests of the sleeve (issue 3), with real routers, pods and the kernel in network
//! namespaces: three hosts with two pods each on an encrypted mesh. Pods reach each other over
//! IPv4 and IPv6 and resolve each other's real MACs, multicast reaches members on other hosts,
//! a 100 MB TCP stream arrives intact, no plaintext crosses the underlay, and forged, replayed
//! or cut-short datagrams are dropped and counted while traffic goes on.
//!
//! Relaying between hosts that cannot talk is in `sleeve.rs`.

use std::io::Read;
use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_tests::traffic::{
    SHA256_CLIENT, SHA256_SERVER, check_real_macs, contains, every_pair_both_families, hex,
    ping_all, ping_n, pod_v4 as v4, pod_v6 as v6,
};
use weft_tests::{Capture, Datagram, HostId, Net, PodId, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "correct horse battery staple";
const PODS_PER_HOST: usize = 2;
/// The mesh port, TCP for the control plane and UDP for the sleeve.
const MESH_PORT: u16 = 6783;
/// First byte of a sealed / plaintext sleeve datagram (`docs/sleeve.md`).
const KIND_SEALED: u8 = 0x02;
const KIND_PLAIN: u8 = 0x01;
/// Kind, sender name, epoch, counter and tag: the bytes before a sealed datagram's ciphertext.
const SEALED_HEADER_LEN: usize = 1 + 6 + 2 + 4 + TAG_LEN;
const TAG_LEN: usize = 16;
const SENDER_AT: usize = 1;
const COUNTER_AT: usize = 1 + 6 + 2;
/// What a pod sends in UDP datagrams, and in ping's padding, to be looked for on the underlay.
const MARKER: &[u8] = b"weft-plaintext-marker-XYZ";
const PING_PATTERN: &[u8; 16] = b"weft-ping-marker";
/// Echo requests per ping run.
const PINGS: usize = 2;
const TRANSFER_BYTES: u64 = 100 * 1024 * 1024;
/// Generous for 100 MB through an unoptimised userspace datapath on a loaded 2-core machine.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(90);

/// `hosts` hosts running the sleeve (hosts 2.. told only about host1), encrypted when
/// `password` is given, each with [`PODS_PER_HOST`] pods; returns once the control mesh is
/// complete. Pod `p` is on host [`host_of`]`(p)` with addresses [`v4`]`(p)` and [`v6`]`(p)`.
fn sleeve_mesh(hosts: usize, password: Option<&str>) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, hosts)?;
    net.start_mesh(|_| {
        let opts = RouterOpts::new().arg("--datapath").arg("sleeve");
        match password {
            Some(password) => opts.password(password),
            None => opts,
        }
    })?;
    net.wait_until("every data path is up everywhere", SETTLE, || {
        net.check_data_paths_up(&net.host_ids())
    })?;
    for i in net.host_ids() {
        let mtu = datapath(&net, i)?["mtu"]
            .as_u64()
            .context("no datapath MTU in the report")?;
        for k in 1..=PODS_PER_HOST {
            let expected = (i - 1) * PODS_PER_HOST + k;
            let pod = net.add_pod(
                i,
                "weft",
                &format!("{}/24", v4(expected)),
                u16::try_from(mtu)?,
            )?;
            ensure!(pod == expected, "pods are numbered in order: got {pod}");
            net.add_pod_address(pod, &format!("{}/64", v6(pod)))?;
        }
    }
    Ok(net)
}

fn host_of(pod: PodId) -> HostId {
    (pod - 1) / PODS_PER_HOST + 1
}

fn pods(net: &Net) -> Vec<PodId> {
    (1..=net.host_ids().len() * PODS_PER_HOST).collect()
}

/// `ping` from pod `from` to `to` (either family); every echo request must be answered.
fn ping(net: &Net, from: PodId, to: &str, extra: &[&str]) -> anyhow::Result<()> {
    ping_n(net, from, to, PINGS, extra)
}

/// Pods 1 and 3 (host1 and host2) still reach each other, both ways.
fn pods_still_ping(net: &Net) -> anyhow::Result<()> {
    ping(net, 1, &v4(3), &[])?;
    ping(net, 3, &v4(1), &[])
}

/// The `datapath` section of host `i`'s report.
fn datapath(net: &Net, i: HostId) -> anyhow::Result<Value> {
    let datapath = net.report_json(i)?["datapath"].clone();
    ensure!(datapath.is_object(), "host{i} reports no datapath");
    Ok(datapath)
}

/// Drop counters of `datapath.drops` that injected datagrams may move.
const DROPS: [&str; 4] = ["auth", "replay", "malformed", "unknown_sender"];

/// Host `i`'s [`DROPS`] counters, by their documented names, in that order.
fn drops(net: &Net, i: HostId) -> anyhow::Result<[u64; 4]> {
    let datapath = datapath(net, i)?;
    let mut counts = [0; 4];
    for (count, name) in counts.iter_mut().zip(DROPS) {
        *count = datapath["drops"][name]
            .as_u64()
            .with_context(|| format!("host{i}: no drops.{name} in {datapath}"))?;
    }
    Ok(counts)
}

/// A peer name (`aa:bb:cc:dd:ee:ff`) as the 6 bytes datagrams carry.
fn name_bytes(name: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = name
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("peer name {name}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("peer name {name} is not 6 bytes"))
}

fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[test]
fn six_pods_on_three_hosts_ping_each_other_over_ipv4_and_ipv6_and_learn_real_macs()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(3, Some(PASSWORD))?;
    // Counted from here: while the mesh forms, a peer's first heartbeats may arrive before the
    // receiver has added its link (each side adds it when its own end of the control
    // connection is established) and are rightly dropped as `unknown_sender`; they are not pod
    // traffic.
    let formed: Vec<[u64; 4]> = net
        .host_ids()
        .into_iter()
        .map(|i| drops(&net, i))
        .collect::<anyhow::Result<_>>()?;
    let pods = pods(&net);
    ping_all(&net, &every_pair_both_families(&pods))?;

    // ARP and neighbour discovery crossed the mesh: each pod resolved the pods on other hosts
    // to their real MACs.
    check_real_macs(&net, &pods)?;
    for i in net.host_ids() {
        let datapath = datapath(&net, i)?;
        ensure!(datapath["encrypted"] == true, "host{i}: {datapath}");
        ensure!(
            drops(&net, i)? == formed[i - 1],
            "host{i} dropped pod traffic (counts once formed: {:?}): {datapath}",
            formed[i - 1]
        );
    }
    Ok(())
}

/// Joins a group on `eth0` (by the pod's address) and prints `<source> <payload>` per datagram.
const MULTICAST_RECEIVER: &str = "
import socket, sys
group, port, local = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton(local))
print('joined', flush=True)
while True:
    data, (source, _) = s.recvfrom(2048)
    print(source, data.decode(errors='replace'), flush=True)
";

/// Sends a numbered datagram to the group out of `eth0` (by the pod's address), TTL 1, every
/// 100 ms until stopped.
const MULTICAST_SENDER: &str = "
import socket, sys, time
group, port, local = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
n = 0
while True:
    s.sendto(b'weft-multicast-%d' % n, (group, port))
    n += 1
    time.sleep(0.1)
";

#[test]
fn multicast_from_a_pod_reaches_group_members_on_the_other_hosts() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const GROUP: &str = "239.1.2.3";
    const PORT: &str = "4242";
    let net = sleeve_mesh(3, Some(PASSWORD))?;
    // Pod 3 is on host2, pod 5 on host3; the sender, pod 1, on host1.
    let receivers = [3, 5]
        .into_iter()
        .map(|pod| {
            let local = v4(pod);
            let argv = ["python3", "-c", MULTICAST_RECEIVER, GROUP, PORT, &local];
            Ok((pod, net.spawn_in_pod(pod, &argv)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    net.wait_until("both receivers joined the group", SETTLE, || {
        for (pod, receiver) in &receivers {
            ensure!(
                receiver.stdout().contains("joined"),
                "pod{pod}'s receiver has not joined: {}",
                receiver.stderr()
            );
        }
        Ok(true)
    })?;
    let sender_address = v4(1);
    let mut sender = net.spawn_in_pod(
        1,
        &[
            "python3",
            "-c",
            MULTICAST_SENDER,
            GROUP,
            PORT,
            &sender_address,
        ],
    )?;
    let expected = format!("{sender_address} weft-multicast-");
    net.wait_until(
        "pods on host2 and host3 receive pod1's multicast",
        SETTLE,
        || {
            ensure!(
                sender.is_running(),
                "the sender exited: {}",
                sender.stderr()
            );
            for (pod, receiver) in &receivers {
                ensure!(
                    receiver.stdout().contains(&expected),
                    "pod{pod} received: {:?} {}",
                    receiver.stdout(),
                    receiver.stderr()
                );
            }
            Ok(true)
        },
    )?;
    sender.stop()?;
    Ok(())
}

#[test]
fn a_100_mb_tcp_stream_between_pods_on_different_hosts_arrives_intact() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const PORT: &str = "5001";
    let net = sleeve_mesh(3, Some(PASSWORD))?;
    // Pod 3 on host2 receives from pod 1 on host1.
    let server_address = v4(3);
    let server = net.spawn_in_pod(3, &["python3", "-c", SHA256_SERVER, &server_address, PORT])?;
    net.wait_until("the server listens", SETTLE, || {
        Ok(server.stdout().contains("listening"))
    })?;
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
    Ok(())
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

/// Captures host1's underlay (`udp port 6783`) while pod 1 (host1) sends [`MARKER`] in UDP
/// datagrams and [`PING_PATTERN`] in ping padding to pod 3 (host2), both of which arrive.
/// Returns the capture, stopped once it holds the sleeve datagrams of that traffic.
fn capture_marker_traffic(net: &Net) -> anyhow::Result<Capture> {
    const PORT: &str = "9999";
    let marker = std::str::from_utf8(MARKER)?;
    let to = v4(3);
    let receiver = net.spawn_in_pod(3, &["python3", "-c", MARKER_RECEIVER, &to, PORT])?;
    net.wait_until("the marker receiver is bound", SETTLE, || {
        Ok(receiver.stdout().contains("bound"))
    })?;
    let mut capture = net.capture(1, &format!("udp port {MESH_PORT}"))?;
    ping(net, 1, &to, &["-p", &hex(PING_PATTERN)])?;
    net.pod_exec(1, &["python3", "-c", MARKER_SENDER, &to, PORT, marker])?;
    net.wait_until("pod3 receives the marker datagrams", SETTLE, || {
        Ok(receiver.stdout().contains(marker))
    })?;
    // What crossed the underlay between host1 and host2: at least the echo requests and one
    // datagram with the markers (routers may batch frames), and the echo replies.
    let (host1, host2) = (net.address(1), net.address(2));
    net.wait_until("the capture holds the marker traffic", SETTLE, || {
        let datagrams = capture.datagrams()?;
        let between = |src, dst| {
            datagrams
                .iter()
                .filter(|d| *d.src.ip() == src && *d.dst.ip() == dst)
                .count()
        };
        let (out, back) = (between(host1, host2), between(host2, host1));
        ensure!(
            out > PINGS && back >= PINGS,
            "captured {out} datagrams host1 -> host2 and {back} back"
        );
        Ok(true)
    })?;
    capture.stop()?;
    Ok(capture)
}

#[test]
fn no_plaintext_crosses_the_underlay_of_an_encrypted_mesh() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(3, Some(PASSWORD))?;
    let capture = capture_marker_traffic(&net)?;
    let bytes = capture.bytes()?;
    ensure!(
        !contains(&bytes, MARKER),
        "the UDP marker is on the underlay"
    );
    ensure!(
        !contains(&bytes, PING_PATTERN),
        "the ping pattern is on the underlay"
    );
    for datagram in capture.datagrams()? {
        ensure!(
            datagram.payload.first() == Some(&KIND_SEALED),
            "an unsealed datagram on the underlay: {datagram:?}"
        );
    }
    Ok(())
}

/// The control of the test above: the same check finds the markers when the mesh has no
/// password, so its silence above means something.
#[test]
fn the_plaintext_check_finds_the_markers_on_a_mesh_without_password() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(2, None)?;
    let capture = capture_marker_traffic(&net)?;
    let bytes = capture.bytes()?;
    ensure!(contains(&bytes, MARKER), "no UDP marker in the capture");
    ensure!(
        contains(&bytes, PING_PATTERN),
        "no ping pattern in the capture"
    );
    for datagram in capture.datagrams()? {
        ensure!(
            datagram.payload.first() == Some(&KIND_PLAIN),
            "not a plaintext datagram: {datagram:?}"
        );
    }
    Ok(())
}

/// Sends `datagrams` to host2's sleeve port from host1's (where the genuine ones come from),
/// waits until host2 counted as many drops, checks that pods still reach each other, and
/// returns by how much each counter of [`DROPS`] moved.
fn inject(net: &Net, what: &str, datagrams: &[&[u8]]) -> anyhow::Result<[u64; 4]> {
    let before = drops(net, 2)?;
    let to = SocketAddrV4::new(net.address(2), MESH_PORT);
    net.send_udp(1, MESH_PORT, to, datagrams)?;
    let mut moved = [0; 4];
    net.wait_until(&format!("host2 counts the {what}"), SETTLE, || {
        let now = drops(net, 2)?;
        for ((m, n), b) in moved.iter_mut().zip(now).zip(before) {
            *m = n - b;
        }
        ensure!(
            moved.iter().sum::<u64>() >= datagrams.len() as u64,
            "drops {DROPS:?} moved by {moved:?} for {} datagrams",
            datagrams.len()
        );
        Ok(true)
    })?;
    pods_still_ping(net).with_context(|| format!("after the {what}"))?;
    Ok(moved)
}

#[test]
fn injected_bad_datagrams_are_dropped_and_counted_and_traffic_goes_on() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = sleeve_mesh(3, Some(PASSWORD))?;
    // From here on (see the six-pod test: a formed mesh may have dropped early heartbeats).
    let formed = drops(&net, 2)?;
    let host1_name = name_bytes(&net.report(1)?.name)?;

    // A genuine sealed datagram from host1 to host2, carrying pod traffic.
    let (host1, host2) = (net.address(1), net.address(2));
    let mut capture = net.capture(
        1,
        &format!("udp and src host {host1} and dst host {host2} and dst port {MESH_PORT}"),
    )?;
    ping(&net, 1, &v4(3), &[])?;
    let mut genuine: Option<Datagram> = None;
    net.wait_until(
        "a sealed datagram from host1 to host2 is captured",
        SETTLE,
        || {
            genuine = capture.datagrams()?.into_iter().find(|d| {
                d.payload.len() > SEALED_HEADER_LEN
                    && d.payload[0] == KIND_SEALED
                    && d.payload[SENDER_AT..SENDER_AT + 6] == host1_name
            });
            Ok(genuine.is_some())
        },
    )?;
    capture.stop()?;
    let genuine = genuine.context("no datagram")?.payload;
    ensure!(drops(&net, 2)? == formed, "host2 dropped genuine traffic");

    // (a) The genuine datagram again: a replay.
    let moved = inject(&net, "replayed datagram", &[&genuine])?;
    ensure!(moved == [0, 1, 0, 0], "drops {DROPS:?} moved by {moved:?}");

    // (b) Forgeries with host1's name. A counter host2 has not seen yet, so that only the
    // authentication can reject them: one ciphertext byte flipped, and random ciphertext.
    let counter = u32::from_be_bytes(genuine[COUNTER_AT..COUNTER_AT + 4].try_into()?);
    let with_fresh_counter = |datagram: &mut Vec<u8>, offset: u32| {
        let fresh = counter.wrapping_add(1_000_000 + offset).to_be_bytes();
        datagram[COUNTER_AT..COUNTER_AT + 4].copy_from_slice(&fresh);
    };
    let mut flipped = genuine.clone();
    *flipped.last_mut().context("empty datagram")? ^= 0x01;
    let flipped_seen = flipped.clone();
    with_fresh_counter(&mut flipped, 0);
    let mut random = genuine[..SEALED_HEADER_LEN - TAG_LEN].to_vec();
    with_fresh_counter(&mut random, 1);
    random.extend(random_bytes(TAG_LEN + 64)?);
    let moved = inject(&net, "forged datagrams", &[&flipped, &random])?;
    ensure!(moved == [2, 0, 0, 0], "drops {DROPS:?} moved by {moved:?}");
    // The flipped copy with the counter host2 has seen is refused too, as a forgery or a
    // replay (whichever the receiver checks first), and counted once.
    let moved = inject(&net, "flipped replay", &[&flipped_seen])?;
    ensure!(
        moved[0] + moved[1] == 1 && moved[2..] == [0, 0],
        "drops {DROPS:?} moved by {moved:?}"
    );

    // (c) Sealed headers cut short.
    let cuts = [1, 1 + 6, COUNTER_AT + 4, SEALED_HEADER_LEN - 1];
    let truncated: Vec<&[u8]> = cuts.iter().map(|&n| &genuine[..n]).collect();
    let moved = inject(&net, "truncated datagrams", &truncated)?;
    ensure!(moved == [0, 0, 4, 0], "drops {DROPS:?} moved by {moved:?}");

    // (d) A sender name no peer of the mesh has.
    let mut names = Vec::new();
    for i in net.host_ids() {
        names.push(name_bytes(&net.report(i)?.name)?);
    }
    let stranger = [0x0e, 0xee, 0xee, 0xee, 0xee, 0x01];
    ensure!(!names.contains(&stranger), "a peer is called {stranger:?}");
    let mut unknown = genuine.clone();
    unknown[SENDER_AT..SENDER_AT + 6].copy_from_slice(&stranger);
    let moved = inject(&net, "datagram from a stranger", &[&unknown])?;
    ensure!(moved == [0, 0, 0, 1], "drops {DROPS:?} moved by {moved:?}");

    // Every pod still reaches every pod on another host.
    let mut pairs = Vec::new();
    for from in pods(&net) {
        for to in pods(&net)
            .into_iter()
            .filter(|&to| host_of(to) != host_of(from))
        {
            pairs.push((from, v4(to)));
        }
    }
    ping_all(&net, &pairs)?;
    Ok(())
}
