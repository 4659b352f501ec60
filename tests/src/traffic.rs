//! What the datapath tests make pods send and look for: pings (one pair, or many pairs at
//! once), sha256-checked TCP transfers, byte strings in captured payloads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::ensure;

use crate::{Capture, Net, PodId, SETTLE};

/// Pod `pod`'s IPv4 address in the datapath tests' pods (10.250.0.N).
pub fn pod_v4(pod: PodId) -> String {
    format!("10.250.0.{pod}")
}

/// Pod `pod`'s IPv6 address in the datapath tests' pods (fd00:40::N).
pub fn pod_v6(pod: PodId) -> String {
    format!("fd00:40::{pod}")
}

/// Every ordered pair of distinct pods of `pods`, once over IPv4 and once over IPv6, for
/// [`ping_all`].
pub fn every_pair_both_families(pods: &[PodId]) -> Vec<(PodId, String)> {
    let mut pairs = Vec::new();
    for &from in pods {
        for &to in pods.iter().filter(|&&to| to != from) {
            pairs.push((from, pod_v4(to)));
            pairs.push((from, pod_v6(to)));
        }
    }
    pairs
}

/// ARP and neighbour discovery crossed the mesh: every pod of `pods` resolves the pods on
/// other hosts, over both families, to their real MACs.
pub fn check_real_macs(net: &Net, pods: &[PodId]) -> anyhow::Result<()> {
    let macs: Vec<String> = pods
        .iter()
        .map(|&p| net.pod_mac(p))
        .collect::<anyhow::Result<_>>()?;
    let hosts: Vec<_> = pods
        .iter()
        .map(|&p| net.pod_host(p))
        .collect::<anyhow::Result<_>>()?;
    for (at, &pod) in pods.iter().enumerate() {
        for (family, address_of) in [("-4", pod_v4 as fn(PodId) -> String), ("-6", pod_v6)] {
            let json = net.pod_exec(pod, &["ip", "-j", family, "neigh", "show", "dev", "eth0"])?;
            let neighbours: serde_json::Value = serde_json::from_str(&json)?;
            for (other, &remote) in pods.iter().enumerate() {
                if hosts[other] == hosts[at] {
                    continue;
                }
                let address = address_of(remote);
                let lladdr = neighbours
                    .as_array()
                    .and_then(|all| all.iter().find(|n| n["dst"] == address.as_str()))
                    .and_then(|n| n["lladdr"].as_str());
                ensure!(
                    lladdr == Some(macs[other].as_str()),
                    "pod{pod} resolves {address} to {lladdr:?}, pod{remote} has MAC {}; \
                     neighbours: {json}",
                    macs[other]
                );
            }
        }
    }
    Ok(())
}

/// `count` pings from pod `from` to `to` (either family), `extra` flags before the address;
/// every echo request must be answered.
pub fn ping_n(
    net: &Net,
    from: PodId,
    to: &str,
    count: usize,
    extra: &[&str],
) -> anyhow::Result<()> {
    let count = count.to_string();
    let mut argv = vec!["ping", "-c", &count, "-i", "0.2", "-W", "2"];
    argv.extend_from_slice(extra);
    argv.push(to);
    let out = net.pod_exec(from, &argv)?;
    ensure!(out.contains(" 0% packet loss"), "pod{from} -> {to}: {out}");
    Ok(())
}

/// Two pings for every `(from, to)` pair, one thread per source pod; fails with every failed
/// pair.
pub fn ping_all(net: &Net, pairs: &[(PodId, String)]) -> anyhow::Result<()> {
    let mut sources: Vec<PodId> = pairs.iter().map(|&(from, _)| from).collect();
    sources.dedup();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = sources
            .into_iter()
            .map(|from| {
                scope.spawn(move || {
                    pairs
                        .iter()
                        .filter(|(f, _)| *f == from)
                        .filter_map(|(_, to)| ping_n(net, from, to, 2, &[]).err())
                        .map(|e| format!("{e:#}"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec!["a ping thread panicked".into()])
            })
            .collect()
    });
    ensure!(
        failures.is_empty(),
        "pings failed:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Accepts one connection and prints how many bytes arrived and their sha256 (python3; argv:
/// address, port).
pub const SHA256_SERVER: &str = "
import hashlib, socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print('listening', flush=True)
conn, _ = server.accept()
digest, total = hashlib.sha256(), 0
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
";

/// Sends `argv[3]` random bytes and prints how many and their sha256 (python3; argv: address,
/// port, bytes).
pub const SHA256_CLIENT: &str = "
import hashlib, os, socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
digest, left = hashlib.sha256(), int(sys.argv[3])
while left:
    chunk = os.urandom(min(left, 1 << 20))
    digest.update(chunk)
    conn.sendall(chunk)
    left -= len(chunk)
conn.shutdown(socket.SHUT_WR)
conn.recv(1)
print(sys.argv[3], digest.hexdigest(), flush=True)
";

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Lowercase hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends argv[4] numbered broadcasts (to argv[2]:4242) and as many multicasts (to argv[3]:4243,
/// out of the pod's address argv[1]), 20 ms apart; each payload says round (argv[5]), kind,
/// sender and number.
pub const BUM_SENDER: &str = "
import socket, sys, time
me, bcast, group, n, rnd = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
m.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
m.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for seq in range(n):
    b.sendto(('weft-copy %s bcast %s %d' % (rnd, me, seq)).encode(), (bcast, 4242))
    m.sendto(('weft-copy %s mcast %s %d' % (rnd, me, seq)).encode(), (group, 4243))
    time.sleep(0.02)
";
pub const BUM_PER_KIND: usize = 10;
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;

/// Every pod sends [`BUM_PER_KIND`] broadcasts (to `broadcast`) and multicasts tagged `round`;
/// checks that every other pod receives each exactly once, none comes back to its sender, and
/// no fast-path heartbeat reaches a pod. `v4`: a pod's IPv4 address.
pub fn check_bum_exactly_once(
    net: &Net,
    pods: &[PodId],
    round: &str,
    v4: impl Fn(PodId) -> String,
    broadcast: &str,
) -> anyhow::Result<()> {
    let filter =
        format!("udp dst port 4242 or udp dst port 4243 or ether proto {HEARTBEAT_ETHERTYPE:#06x}");
    let mut captures: Vec<(PodId, Capture)> = pods
        .iter()
        .map(|&p| Ok((p, net.capture_pod_inbound(p, &filter)?)))
        .collect::<anyhow::Result<_>>()?;
    for &pod in pods {
        let n = BUM_PER_KIND.to_string();
        let me = v4(pod);
        net.pod_exec(
            pod,
            &[
                "python3",
                "-c",
                BUM_SENDER,
                &me,
                broadcast,
                "239.1.2.3",
                &n,
                round,
            ],
        )?;
    }
    // copies[receiver][(kind, sender, seq)]
    let count = |capture: &Capture| -> anyhow::Result<BTreeMap<String, usize>> {
        let mut copies = BTreeMap::new();
        let prefix = format!("weft-copy {round} ");
        for d in capture.datagrams()? {
            let text = String::from_utf8_lossy(&d.payload);
            if let Some(key) = text.strip_prefix(&prefix) {
                *copies.entry(key.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(copies)
    };
    let expected = |receiver: PodId| -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for &sender in pods.iter().filter(|&&s| s != receiver) {
            for kind in ["bcast", "mcast"] {
                for seq in 0..BUM_PER_KIND {
                    keys.insert(format!("{kind} {} {seq}", v4(sender)));
                }
            }
        }
        keys
    };
    net.wait_until(
        &format!("every pod received every other pod's broadcasts and multicasts ({round})"),
        SETTLE,
        || {
            for (pod, capture) in &captures {
                let copies = count(capture)?;
                let missing: Vec<String> = expected(*pod)
                    .into_iter()
                    .filter(|k| !copies.contains_key(k))
                    .collect();
                ensure!(
                    missing.is_empty(),
                    "pod{pod} misses {} of them, e.g. {:?}",
                    missing.len(),
                    missing.first()
                );
            }
            Ok(true)
        },
    )?;
    // Give a duplicate or a looped copy time to show up (not a timed assertion: copies are
    // counted after the fact).
    std::thread::sleep(Duration::from_secs(1));
    for (pod, capture) in &mut captures {
        capture.stop()?;
        let copies = count(capture)?;
        let wanted = expected(*pod);
        for (key, n) in &copies {
            ensure!(
                wanted.contains(key),
                "pod{pod} received its own or an unexpected frame back ({round}): {key} x{n}"
            );
            ensure!(*n == 1, "pod{pod} received {key} {n} times ({round})");
        }
        let heartbeats = capture
            .frames()?
            .iter()
            .filter(|f| f.get(12..14) == Some(&HEARTBEAT_ETHERTYPE.to_be_bytes()[..]))
            .count();
        ensure!(
            heartbeats == 0,
            "pod{pod} received {heartbeats} fast-path heartbeats ({round})"
        );
    }
    Ok(())
}
