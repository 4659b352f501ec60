//! Issue 9, finding 1 (admission on the mesh port) and 7 (one WARN line per failed connection):
//! an attacker in the underlay holds hundreds of idle TCP connections to a router's mesh port
//! (reopened as soon as they are closed) while a new host told only that router's address
//! joins; a connection that trickles a byte a second is cut by the intro deadline. The attacker
//! is a harness host that runs no router (python3 in its namespace).

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use weft_tests::cni::{self, ContainerNs, conflist, weft_plugin};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "harden mesh password";
const MESH_PORT: &str = "6783";

/// Opens `count` TCP connections to `host:port` (spread over the source addresses given, one
/// list separated by commas, or the default source), never sends a byte, and reopens each one
/// as soon as the server closes it, for `seconds`. Prints `opened closed` once a second and at
/// the end. Reopening is paced at `max_rate` per second so the flood does not take the
/// machine's CPU from the routers under test.
const IDLE_FLOOD: &str = r#"
import selectors, socket, sys, time
host, port, count, seconds, max_rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
sources = [s for s in sys.argv[6].split(",") if s] if len(sys.argv) > 6 else []
sel = selectors.DefaultSelector()
opened = closed = 0
def open_one(i):
    global opened
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sources:
        s.bind((sources[i % len(sources)], 0))
    s.setblocking(False)
    s.connect_ex((host, port))
    sel.register(s, selectors.EVENT_READ, i)
    opened += 1
for i in range(count):
    open_one(i)
end = time.time() + seconds
last = time.time()
window, reopened = time.time(), 0
while time.time() < end:
    for key, _ in sel.select(timeout=0.2):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            continue  # the router's hello: read it and stay silent
        sel.unregister(s)
        s.close()
        closed += 1
        if reopened >= max_rate * max(time.time() - window, 0.05):
            time.sleep(0.01)
        open_one(key.data)
        reopened += 1
        if time.time() - window > 1:
            window, reopened = time.time(), 0
    if time.time() - last >= 1:
        print(opened, closed, flush=True)
        last = time.time()
print(opened, closed, flush=True)
"#;

/// One connection to `host:port` that sends the first bytes of a valid hello, one a second,
/// and prints `sent N` and then `closed after N bytes` when the server closes or resets it (or
/// `still open` after `seconds`).
const TRICKLE: &str = r#"
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
s.settimeout(1.0)
hello = b"weft\x01\x01" * 100
sent = 0
end = time.time() + seconds
while time.time() < end:
    try:
        s.send(hello[sent:sent + 1])
        sent += 1
        print("sent", sent, flush=True)
    except OSError:
        print("closed after", sent, "bytes", flush=True)
        sys.exit(0)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                print("closed after", sent, "bytes", flush=True)
                sys.exit(0)
    except socket.timeout:
        pass
    except OSError:
        print("closed after", sent, "bytes", flush=True)
        sys.exit(0)
print("still open", flush=True)
"#;

fn opts() -> RouterOpts {
    RouterOpts::new().password(PASSWORD)
}

/// host1..3 in a mesh (2 and 3 told about host1), checked complete.
fn start_mesh_of_three(net: &Net) -> anyhow::Result<()> {
    net.start(1, opts())?;
    for i in [2, 3] {
        net.start(i, opts().peers([net.address(1)]))?;
    }
    net.wait_until("host1..3 form a full mesh", SETTLE, || {
        net.check_full_mesh(&[1, 2, 3])
    })
}

/// `weft_mesh_admission_refused_total` of host `i`, by reason.
fn refused(net: &Net, i: HostId) -> anyhow::Result<BTreeMap<String, f64>> {
    let metrics = net.metrics(i)?;
    Ok(metrics
        .samples
        .iter()
        .filter_map(|(series, value)| {
            let reason = series
                .strip_prefix("weft_mesh_admission_refused_total{reason=\"")?
                .strip_suffix("\"}")?;
            Some((reason.to_owned(), *value))
        })
        .collect())
}

/// The attacker's `opened closed` counts, from its last progress line.
fn flood_progress(out: &str) -> (u64, u64) {
    out.lines()
        .last()
        .and_then(|l| {
            let mut it = l.split_whitespace().map(|n| n.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((0, 0))
}

/// Every host's bridge (IPAM gateway) has an address and no two share one.
fn gateways_distinct(net: &Net, hosts: &[HostId]) -> anyhow::Result<bool> {
    let mut seen: BTreeMap<String, HostId> = BTreeMap::new();
    for &i in hosts {
        let ipam = net.ipam(i)?;
        let gateway = ipam["gateway"]
            .as_str()
            .with_context(|| format!("host{i} has no bridge address yet: {ipam}"))?
            .to_owned();
        if let Some(other) = seen.insert(gateway.clone(), i) {
            anyhow::bail!("host{other} and host{i} share the bridge address {gateway}");
        }
    }
    Ok(true)
}

/// No two allocations on `hosts` (bridges and pods) share an address.
fn allocations_distinct(net: &Net, hosts: &[HostId]) -> anyhow::Result<usize> {
    let mut seen = BTreeMap::new();
    for &i in hosts {
        for a in net.ipam_allocations(i)? {
            if let Some((other, id)) = seen.insert(a.address, (i, a.container_id.clone())) {
                anyhow::bail!(
                    "{} is held by {id} on host{other} and by {} on host{i}",
                    a.address,
                    a.container_id
                );
            }
        }
    }
    Ok(seen.len())
}

/// Two pods through `weft-cni` on each of `hosts` (their containers are returned: dropping one
/// removes its namespace).
fn add_pods(net: &Net, hosts: &[HostId]) -> anyhow::Result<Vec<ContainerNs>> {
    let plugin = cni::plugin_binary(WEFT.as_ref())?;
    let mut containers = Vec::new();
    for &i in hosts {
        let host = net.cni_host(i, &plugin)?;
        host.write_conflist(&conflist("weft", "1.0.0", &[weft_plugin(&host.socket)]))?;
        for _ in 0..2 {
            let container = ContainerNs::new(net)?;
            host.add("weft", &container, None)
                .with_context(|| format!("ADD on host{i}"))?;
            containers.push(container);
        }
    }
    Ok(containers)
}

/// The flood, a new host joining through the flooded router, and what host1 counted and
/// logged. `sources` are extra addresses the attacker floods from (none: its own address only).
fn flood_while_a_new_host_joins(sources: usize) -> anyhow::Result<()> {
    // host4: the attacker (no router); host5: the newcomer, told only host1's address.
    let net = Net::new(WEFT, 5)?;
    if sources == 0 {
        // The CNI clients and plugin (for pods) are ready before the flood starts: preparing
        // them may take a while on a cold machine.
        cni::clients()?;
        cni::plugin_binary(WEFT.as_ref())?;
    }
    start_mesh_of_three(&net)?;
    let mut source_list = Vec::new();
    for k in 0..sources {
        let address = format!("10.77.0.{}", 100 + k);
        net.exec(
            4,
            &["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"],
        )?;
        source_list.push(address);
    }
    let target = net.address(1).to_string();
    let mut flood = net.spawn_in_host(
        4,
        &[
            "python3",
            "-c",
            IDLE_FLOOD,
            &target,
            MESH_PORT,
            "300",
            "600",
            "1000",
            &source_list.join(","),
        ],
    )?;
    // The flood is on: its 300 connections are open, host1 refuses some at once and cuts the
    // ones it admitted, at their intro deadline or (from many addresses, where the unknown
    // share is full) when a newcomer takes their slot; they are reopened at once.
    let cut_reason = if sources == 0 {
        "intro_timeout"
    } else {
        "evicted"
    };
    net.wait_until(
        "the flood holds 300 connections and host1 has cut admitted ones",
        SETTLE,
        || {
            let (opened, _) = flood_progress(&flood.stdout());
            ensure!(opened >= 300, "the attacker opened {opened} connections");
            let refused = refused(&net, 1)?;
            ensure!(
                refused.get(cut_reason).copied().unwrap_or(0.0) > 0.0,
                "host1 cut no admitted connection ({cut_reason}) yet: {refused:?}"
            );
            Ok(true)
        },
    )?;
    let pending = net.metrics(1)?.get("weft_mesh_admission_pending");
    eprintln!("host1 pending handshakes under the flood: {pending:?}");

    net.start(5, opts().peers([net.address(1)]))?;
    net.wait_until(
        "host5, told only host1, joins the full mesh during the flood",
        SETTLE,
        || net.check_full_mesh(&[1, 2, 3, 5]),
    )?;
    net.wait_until("no two bridges share an address", SETTLE, || {
        gateways_distinct(&net, &[1, 2, 3, 5])
    })?;
    // Pods on the flooded router and on the newcomer, added during the flood: no address twice.
    let _pods = if sources == 0 {
        let pods = add_pods(&net, &[1, 5])?;
        let held = allocations_distinct(&net, &[1, 2, 3, 5])?;
        eprintln!("{held} addresses allocated (4 bridges, 4 pods), all distinct");
        ensure!(
            held == 8,
            "{held} allocations, expected 4 bridges and 4 pods"
        );
        pods
    } else {
        // The mesh's addresses are known to host1 (they keep reserved slots), and a known peer
        // that restarts during the flood rejoins.
        let admission = net.report_json(1)?["mesh_admission"].clone();
        ensure!(
            admission["known_addresses"].as_u64() >= Some(3),
            "host1 knows too few addresses: {admission}"
        );
        net.restart(2)?;
        net.wait_until(
            "host2, restarted during the flood, rejoins the full mesh",
            SETTLE,
            || net.check_full_mesh(&[1, 2, 3, 5]),
        )?;
        Vec::new()
    };
    let (opened, closed) = flood_progress(&flood.stdout());
    ensure!(
        closed > 0,
        "the flood was never closed by host1 (opened {opened})"
    );
    // The flood still runs: the mesh was built under it.
    ensure!(
        flood.is_running(),
        "the flood ended early: {}",
        flood.stderr()
    );

    // Refusals are counted by reason; the log has far fewer WARN lines than failures.
    let refused = refused(&net, 1)?;
    eprintln!("host1 refused {refused:?}, attacker opened {opened} and saw {closed} closed");
    if sources == 0 {
        ensure!(
            refused.get("per_source").copied().unwrap_or(0.0) > 0.0,
            "no per-source refusals counted: {refused:?}"
        );
    } else {
        ensure!(
            refused.get("per_source").copied().unwrap_or(0.0)
                + refused.get("total").copied().unwrap_or(0.0)
                + refused.get("evicted").copied().unwrap_or(0.0)
                > 0.0,
            "no refusals for want of room counted: {refused:?}"
        );
    }
    // Left-out lines are summarized when their interval ends.
    net.wait_until(
        "host1 logs a summary of the lines it left out",
        SETTLE,
        || Ok(net.log(1).contains("more like this in the last")),
    )?;
    ensure!(
        flood.is_running(),
        "the flood ended early: {}",
        flood.stderr()
    );
    let refused = self::refused(&net, 1)?;
    let total: f64 = refused.values().sum();
    let log = net.log(1);
    let warning_lines: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    let warnings = warning_lines.len();
    eprintln!(
        "host1 logged {warnings} WARN lines for {total} refused connections:\n{}",
        warning_lines.join("\n")
    );
    ensure!(
        total >= 300.0,
        "fewer refusals than the flood's connections: {refused:?}"
    );
    ensure!(
        (warnings as f64) * 20.0 < total,
        "host1 logged {warnings} WARN lines for {total} refused connections"
    );
    flood.stop()?;
    Ok(())
}

#[test]
fn a_new_host_joins_through_a_router_flooded_by_idle_connections() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    flood_while_a_new_host_joins(0)
}

#[test]
fn a_new_host_joins_through_a_router_flooded_from_many_addresses() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // 32 addresses at 4 pending each could hold 128 slots: more than the 48 for unknown
    // addresses. The newcomer must get one anyway.
    flood_while_a_new_host_joins(32)
}

#[test]
fn a_connection_trickling_a_byte_a_second_is_cut_by_the_intro_deadline() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    net.start(1, opts())?;
    let target = net.address(1).to_string();
    let trickle = net.spawn_in_host(2, &["python3", "-c", TRICKLE, &target, MESH_PORT, "60"])?;
    net.wait_until("host1 closes the trickling connection", SETTLE, || {
        let out = trickle.stdout();
        ensure!(!out.contains("still open"), "never closed: {out}");
        Ok(out.contains("closed after"))
    })?;
    let out = trickle.stdout();
    let sent: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("closed after "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("unexpected output: {out}"))?;
    // A hello is 6 bytes: the connection was cut before it could even finish one.
    ensure!(
        sent < 6,
        "{sent} bytes were sent before the connection was cut"
    );
    net.wait_until("host1 counts an intro timeout", SETTLE, || {
        let refused = refused(&net, 1)?;
        ensure!(
            refused.get("intro_timeout").copied().unwrap_or(0.0) >= 1.0,
            "{refused:?}"
        );
        Ok(true)
    })?;
    let report = net.report_json(1)?;
    let admission = &report["mesh_admission"];
    ensure!(
        admission["intro_deadline_secs"].as_f64() == Some(3.0)
            && admission["per_source_limit"].as_u64().is_some()
            && admission["total_limit"].as_u64().is_some(),
        "report lacks the admission limits: {admission}"
    );
    Ok(())
}
