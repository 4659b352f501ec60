//! IPAM across real routers, without pods: each router allocates its bridge address at start,
//! so every host owns part of the range. `weft rmpeer` run on two hosts at once gives a dead
//! peer's space to the living, `weft ipam check` agrees afterwards and names differences when
//! there are some, a restarted router keeps its ring and bridge address, and the CNI socket is
//! root-only. Pods through the real plugin and real CNI clients are in `cni.rs`.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "ipam test password";

fn ipam(net: &Net, i: HostId) -> anyhow::Result<Value> {
    let report = net.report_json(i)?;
    Ok(report["ipam"].clone())
}

fn owners(ipam: &Value) -> Vec<String> {
    ipam["owners"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["nickname"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `hosts` routers (hosts 2.. told about host1) with `extra` flags on host `i` from `flags(i)`.
fn mesh(hosts: usize, flags: impl Fn(HostId) -> Vec<String>) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, hosts)?;
    for i in net.host_ids() {
        let mut opts = RouterOpts::new().password(PASSWORD);
        for flag in flags(i) {
            opts = opts.arg(&flag);
        }
        if i > 1 {
            opts = opts.peers([net.address(1)]);
        }
        net.start(i, opts)?;
    }
    net.wait_until("the control mesh is complete", SETTLE, || {
        net.check_full_mesh(&net.host_ids())
    })?;
    Ok(net)
}

/// Every host's ring has every live host as an owner and the same hash.
fn rings_agree(net: &Net, hosts: &[HostId], owner_count: usize) -> anyhow::Result<bool> {
    let mut hashes = Vec::new();
    for &i in hosts {
        let ipam = ipam(net, i)?;
        ensure!(
            ipam["gateway"].is_string(),
            "host{i} has no bridge address yet: {ipam}"
        );
        let owners = owners(&ipam);
        ensure!(
            owners.len() == owner_count,
            "host{i} sees owners {owners:?}"
        );
        hashes.push(ipam["ring_hash"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "ring hashes differ: {hashes:?}"
    );
    Ok(true)
}

#[test]
fn rmpeer_on_two_hosts_at_once_gives_a_dead_peers_space_to_the_living() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = mesh(3, |_| Vec::new())?;
    net.wait_until("every host owns space and the rings agree", SETTLE, || {
        rings_agree(&net, &[1, 2, 3], 3)
    })?;
    let socket = net.cni_socket(1);
    let mode = std::fs::metadata(&socket)
        .with_context(|| format!("{}", socket.display()))?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "CNI socket mode {:o}", mode & 0o777);

    let host3 = net.report(3)?.name;
    // A live peer's space is not taken.
    let refused = net.weft_output(1, &["rmpeer", &host3])?;
    ensure!(
        !refused.success() && refused.stderr.contains("reachable"),
        "rmpeer of a live peer: {refused:?}"
    );

    net.kill(3)?;
    net.wait_until(
        "hosts 1 and 2 see host3's space unreachable",
        SETTLE,
        || {
            for i in [1, 2] {
                let unreachable = ipam(&net, i)?["unreachable_owners"].clone();
                ensure!(
                    unreachable.as_array().is_some_and(|a| a.len() == 1),
                    "host{i}: unreachable owners {unreachable}"
                );
            }
            Ok(true)
        },
    )?;
    let status = net.weft(1, &["ipam"])?;
    ensure!(
        status.contains("UNREACHABLE") && status.contains("weft rmpeer"),
        "weft ipam should name the unreachable owner and the remedy:\n{status}"
    );

    // Both surviving hosts reclaim at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| net.weft_output(1, &["rmpeer", &host3]));
        let b = s.spawn(|| net.weft_output(2, &["rmpeer", &host3]));
        (a.join(), b.join())
    });
    for (i, out) in [(1, a), (2, b)] {
        let out = out.map_err(|_| anyhow::anyhow!("rmpeer thread panicked"))??;
        ensure!(
            out.success() && out.stdout.contains("reclaimed"),
            "host{i}: weft rmpeer: {out:?}"
        );
    }
    net.wait_until(
        "host3's space is adopted and both views agree",
        SETTLE,
        || {
            for i in [1, 2] {
                let ipam = ipam(&net, i)?;
                ensure!(
                    ipam["unowned"] == 0 && ipam["unreachable_owners"] == Value::Array(vec![]),
                    "host{i}: {ipam}"
                );
            }
            rings_agree(&net, &[1, 2], 2)
        },
    )?;
    net.wait_until("weft ipam check agrees", SETTLE, || {
        let out = net.weft_output(1, &["ipam", "check"])?;
        ensure!(
            out.success() && out.stdout.contains("all 2 peers agree"),
            "{}",
            out.stdout
        );
        Ok(true)
    })?;
    Ok(())
}

#[test]
fn ipam_check_names_different_ranges_and_a_restart_keeps_ring_and_gateway() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = mesh(2, |i| {
        let range = if i == 1 {
            "10.32.0.0/12"
        } else {
            "10.96.0.0/16"
        };
        vec!["--ipalloc-range".into(), range.into()]
    })?;
    net.wait_until("weft ipam check names the different ranges", SETTLE, || {
        let out = net.weft_output(1, &["ipam", "check"])?;
        ensure!(
            !out.success() && out.stdout.contains("different allocation ranges"),
            "{out:?}"
        );
        Ok(true)
    })?;

    let before = ipam(&net, 1)?;
    ensure!(before["gateway"].is_string(), "no gateway: {before}");
    let bridge_address = net.exec(1, &["ip", "-4", "-o", "addr", "show", "weft"])?;
    ensure!(
        bridge_address.contains(&format!(
            "{}/12",
            before["gateway"].as_str().unwrap_or_default()
        )),
        "the bridge should carry the gateway address: {bridge_address}"
    );
    net.restart(1)?;
    net.wait_until("host1 restored its IPAM state", SETTLE, || {
        let after = ipam(&net, 1)?;
        ensure!(
            after["gateway"] == before["gateway"]
                && after["ring"] == before["ring"]
                && after["allocated"] == before["allocated"],
            "before {before}\nafter {after}"
        );
        Ok(true)
    })?;
    Ok(())
}
