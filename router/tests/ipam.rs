//! IPAM across real routers, without pods: each router allocates its bridge address at start,
//! so every host owns part of the range. `weft rmpeer` run on two hosts at once gives a dead
//! peer's space to the living, `weft ipam check` agrees afterwards and names differences when
//! there are some, a restarted router keeps its ring and bridge address, and the CNI socket is
//! root-only. Pods through the real plugin and real CNI clients are in `cni.rs`.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, ensure};
use serde_json::Value;
use weft_cni::client::{Transport, UnixHttp};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "ipam test password";

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

/// `hosts` routers (hosts 2.. told about host1) with the flags `flags(i)` on host `i`.
fn mesh(hosts: usize, flags: impl Fn(HostId) -> Vec<String>) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, hosts)?;
    net.start_mesh(|i| {
        flags(i)
            .iter()
            .fold(RouterOpts::new().password(PASSWORD), |opts, flag| {
                opts.arg(flag)
            })
    })?;
    Ok(net)
}

/// Every host's ring has every live host as an owner and the same hash.
fn rings_agree(net: &Net, hosts: &[HostId], owner_count: usize) -> anyhow::Result<bool> {
    let mut hashes = Vec::new();
    for &i in hosts {
        let ipam = net.ipam(i)?;
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
                let unreachable = net.ipam(i)?["unreachable_owners"].clone();
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
                let ipam = net.ipam(i)?;
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

    let before = net.ipam(1)?;
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
        let after = net.ipam(1)?;
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

/// One router whose IPAM is ready (its bridge has its address).
fn one_host_with_its_bridge_address() -> anyhow::Result<Net> {
    let net = mesh(1, |_| Vec::new())?;
    net.wait_until("host1 has its bridge address", SETTLE, || {
        Ok(net.ipam(1)?["gateway"].is_string())
    })?;
    Ok(net)
}

/// One plugin request on the router's socket, through the plugin's own client: `(status, body)`.
fn cni_request(socket: &std::path::Path, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let answer = UnixHttp
        .request(socket, "POST", path, Some(body.as_bytes()))
        .map_err(|e| anyhow::anyhow!("{path}: {e:?}"))?;
    Ok((
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    ))
}

#[test]
fn every_address_answered_before_a_crash_is_still_held_after_the_restart() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = one_host_with_its_bridge_address()?;
    let socket = net.cni_socket(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered = std::sync::Mutex::new(Vec::<(String, String)>::new());
    std::thread::scope(|s| -> anyhow::Result<()> {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let container = format!("crash-{n}");
                let body = format!(
                    r#"{{"container_id":"{container}","ifname":"eth0","netns":"/run/netns/none"}}"#
                );
                // Refused connections and cut answers are expected around the kill.
                if let Ok((200, answer)) = cni_request(&socket, "/cni/add", &body)
                    && let Ok(v) = serde_json::from_str::<Value>(&answer)
                    && let Some(address) = v["address"].as_str()
                {
                    answered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((container, address.to_owned()));
                }
            }
        });
        net.wait_until("some ADDs were answered", SETTLE, || {
            Ok(answered.lock().unwrap_or_else(|e| e.into_inner()).len() >= 30)
        })?;
        // SIGKILL mid-stream: some ADD is being persisted or answered right now.
        net.kill(1)?;
        let result = net.restart(1);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })?;
    let answered = answered.into_inner().unwrap_or_else(|e| e.into_inner());
    let held: std::collections::BTreeMap<String, String> = net
        .ipam_allocations(1)?
        .into_iter()
        .map(|a| (a.container_id, a.address.to_string()))
        .collect();
    for (container, address) in &answered {
        let address = address.split('/').next().unwrap_or_default();
        ensure!(
            held.get(container).map(String::as_str) == Some(address),
            "{container} was given {address} before the crash; after the restart the router holds {:?}",
            held.get(container)
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    ensure!(
        held.values().all(|a| seen.insert(a.clone())),
        "an address is held twice: {held:?}"
    );
    eprintln!(
        "{} ADDs answered before the crash, all held after it ({} allocations)",
        answered.len(),
        held.len()
    );
    Ok(())
}

#[test]
fn the_cni_socket_answers_garbage_with_cni_errors_and_keeps_serving() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = one_host_with_its_bridge_address()?;
    let socket = net.cni_socket(1);
    for (path, body) in [
        ("/cni/add", "{not json"),
        ("/cni/add", r#"{"container_id":"x"}"#),
        ("/cni/del", "[]"),
        ("/cni/gc", r#"{"valid":"nope"}"#),
    ] {
        let (status, answer) = cni_request(&socket, path, body)?;
        let error: Value = serde_json::from_str(&answer)
            .with_context(|| format!("{path} {body:?}: not a JSON error body: {answer:?}"))?;
        ensure!(
            status == 400 && error["code"] == 6 && error["msg"].is_string(),
            "{path} {body:?}: {status} {answer}"
        );
    }
    // An over-long container id is refused as invalid input, not stored.
    let long = "x".repeat(300);
    let (status, answer) = cni_request(
        &socket,
        "/cni/add",
        &format!(r#"{{"container_id":"{long}","ifname":"eth0","netns":"/x"}}"#),
    )?;
    ensure!(
        status == 400 && answer.contains("\"code\":4"),
        "{status} {answer}"
    );
    let (status, answer) = cni_request(
        &socket,
        "/cni/add",
        r#"{"container_id":"fine","ifname":"eth0","netns":"/x"}"#,
    )?;
    ensure!(
        status == 200 && answer.contains("address"),
        "{status} {answer}"
    );
    let held = net.ipam(1)?["allocations"].clone();
    ensure!(
        held.as_array().is_some_and(|a| a.len() == 2),
        "the gateway and one pod, nothing from the garbage: {held}"
    );
    let metrics = net.metrics(1)?;
    ensure!(
        metrics.get("weft_cni_requests_rejected_total") == Some(4.0)
            && metrics.get("weft_ipam_adds_total{result=\"error\"}") == Some(1.0),
        "the garbage is counted: rejected {:?}, failed ADDs {:?}",
        metrics.get("weft_cni_requests_rejected_total"),
        metrics.get("weft_ipam_adds_total{result=\"error\"}")
    );
    Ok(())
}
