//! The first IPAM ring across real routers: a router told about peers creates a ring only in
//! agreement with them (`weft_gossip::ipam::agreement`), never alone because it could not reach
//! them. A router whose initial peer is not there waits and says why (no bridge address, ADDs
//! fail with code 11) until `weft ipam force-ring`; hosts booted together form one ring even
//! with a late starter; hosts joining one at a time get the first host's ring; a restart with a
//! persisted ring is ready while its peers are down.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::ensure;
use serde_json::Value;
use weft_cni::client::{Transport, UnixHttp};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "ring test password";

fn opts() -> RouterOpts {
    RouterOpts::new().password(PASSWORD)
}

/// One plugin request on the router's socket: `(status, body)`.
fn cni_request(
    net: &Net,
    i: HostId,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let answer = UnixHttp
        .request(&net.cni_socket(i), method, path, body.map(str::as_bytes))
        .map_err(|e| anyhow::anyhow!("{path}: {e:?}"))?;
    let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    Ok((answer.status, value))
}

fn add(net: &Net, i: HostId, container: &str) -> anyhow::Result<(u16, Value)> {
    let body =
        format!(r#"{{"container_id":"{container}","ifname":"eth0","netns":"/run/netns/none"}}"#);
    cni_request(net, i, "POST", "/cni/add", Some(&body))
}

fn bridge_ipv4(net: &Net, i: HostId) -> anyhow::Result<String> {
    net.exec(i, &["ip", "-4", "-o", "addr", "show", "dev", "weft"])
}

/// Host `i`'s ring and gateway once it is ready.
fn ready(net: &Net, i: HostId) -> anyhow::Result<(String, String, String)> {
    let ipam = net.ipam(i)?;
    ensure!(
        ipam["state"] == "ready" && ipam["gateway"].is_string(),
        "host{i} not ready: {ipam}"
    );
    Ok((
        ipam["ring"].as_str().unwrap_or_default().to_owned(),
        ipam["ring_hash"].as_str().unwrap_or_default().to_owned(),
        ipam["gateway"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[test]
fn a_router_told_about_an_absent_peer_waits_says_why_and_forms_a_ring_only_when_forced()
-> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // Host 2 runs no router: its address refuses connections.
    let net = Net::new(WEFT, 2)?;
    let absent = format!("{}:6783", net.address(2));
    net.start(1, opts().peers([net.address(2)]))?;
    net.wait_until("host1 says what it waits for", SETTLE, || {
        let out = net.weft(1, &["ipam"])?;
        ensure!(
            out.contains("waiting for ring")
                && out.contains(&format!(
                    "no ring yet: 0 of 1 initial peers reachable: {absent} ("
                )),
            "weft ipam:\n{out}"
        );
        Ok(true)
    })?;
    let ipam = net.ipam(1)?;
    ensure!(
        ipam["state"] == "waiting for ring"
            && ipam["ring"].is_null()
            && ipam["gateway"].is_null()
            && ipam["waiting_for_ring"]
                .as_str()
                .is_some_and(|w| w.contains(&absent)),
        "/report ipam: {ipam}"
    );
    let bridge = bridge_ipv4(&net, 1)?;
    ensure!(
        !bridge.contains("inet "),
        "no address on the bridge: {bridge}"
    );
    let (status, body) = cni_request(&net, 1, "GET", "/cni/status", None)?;
    ensure!(
        status == 503
            && body["code"] == 50
            && body["details"]
                .as_str()
                .is_some_and(|d| d.contains(&absent)),
        "CNI STATUS: {status} {body}"
    );
    // An ADD waits (30 s) and then fails with "try again later", saying why.
    let (status, body) = add(&net, 1, "waits")?;
    ensure!(
        status == 503
            && body["code"] == 11
            && body["details"]
                .as_str()
                .is_some_and(|d| d.contains("no ring yet") && d.contains(&absent)),
        "ADD without a ring: {status} {body}"
    );
    ensure!(
        !bridge_ipv4(&net, 1)?.contains("inet "),
        "still no address on the bridge"
    );

    // The operator knows the peer is gone for good.
    let out = net.weft(1, &["ipam", "force-ring"])?;
    ensure!(out.contains("created ring"), "force-ring: {out}");
    net.wait_until("host1 is ready", SETTLE, || ready(&net, 1).map(|_| true))?;
    let (_, _, gateway) = ready(&net, 1)?;
    ensure!(
        bridge_ipv4(&net, 1)?.contains(&format!("inet {gateway}/12")),
        "the bridge carries the gateway {gateway}"
    );
    let (status, body) = add(&net, 1, "served")?;
    ensure!(
        status == 200 && body["address"].is_string(),
        "ADD: {status} {body}"
    );
    let again = net.weft_output(1, &["ipam", "force-ring"])?;
    ensure!(
        !again.success() && again.stderr.contains("there is a ring already"),
        "a second force-ring is refused: {again:?}"
    );
    ensure!(
        net.log(1).contains("IPAM ring forced by the operator"),
        "the forced ring is in the log"
    );
    Ok(())
}

#[test]
fn hosts_booted_together_form_one_ring_even_when_one_starts_late() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 3)?;
    let told = |i: HostId| {
        opts().peers(
            [1, 2, 3]
                .into_iter()
                .filter(|j| *j != i)
                .map(|j| net.address(j)),
        )
    };
    net.start(1, told(1))?;
    net.start(2, told(2))?;
    // Host 3 is late: nobody creates a ring while it is missing.
    std::thread::sleep(Duration::from_secs(4));
    for i in [1, 2] {
        let ipam = net.ipam(i)?;
        ensure!(
            ipam["ring"].is_null()
                && ipam["gateway"].is_null()
                && ipam["waiting_for_ring"]
                    .as_str()
                    .is_some_and(|w| w.contains("1 of 2 initial peers reachable")
                        && w.contains(&net.address(3).to_string())),
            "host{i} while host3 is down: {ipam}"
        );
    }
    net.start(3, told(3))?;
    net.wait_until("all three are ready on one ring", SETTLE, || {
        let all: Vec<_> = [1, 2, 3]
            .into_iter()
            .map(|i| ready(&net, i))
            .collect::<anyhow::Result<_>>()?;
        let rings: BTreeSet<_> = all.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
        ensure!(rings.len() == 1, "rings differ: {all:?}");
        Ok(true)
    })?;
    let all: Vec<_> = [1, 2, 3]
        .into_iter()
        .map(|i| ready(&net, i))
        .collect::<anyhow::Result<_>>()?;
    let gateways: BTreeSet<_> = all.iter().map(|r| r.2.clone()).collect();
    ensure!(gateways.len() == 3, "three distinct gateways: {all:?}");
    // One genesis: the ring names the smallest peer name, and only that router created one.
    let mut names: Vec<String> = [1, 2, 3]
        .into_iter()
        .map(|i| net.report(i).map(|r| r.name))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    ensure!(
        all[0].0.starts_with(&format!("{}@", names[0])),
        "the ring {} was created by the smallest name {}",
        all[0].0,
        names[0]
    );
    for i in [1, 2, 3] {
        let conflicts = net.ipam(i)?["conflicts"].clone();
        ensure!(conflicts == Value::Array(vec![]), "host{i}: {conflicts}");
    }
    Ok(())
}

#[test]
fn hosts_joining_one_at_a_time_get_the_first_hosts_ring() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 3)?;
    net.start(1, opts())?;
    net.wait_until("host1 is ready", SETTLE, || ready(&net, 1).map(|_| true))?;
    let (ring, _, _) = ready(&net, 1)?;
    for i in [2, 3] {
        net.start(i, opts().peers((1..i).map(|j| net.address(j))))?;
        net.wait_until(&format!("host{i} is ready"), SETTLE, || {
            ready(&net, i).map(|_| true)
        })?;
        let (joined, _, _) = ready(&net, i)?;
        ensure!(joined == ring, "host{i} holds {joined}, host1 made {ring}");
        ensure!(
            !net.log(i).contains("IPAM ring forced"),
            "nothing forced on host{i}"
        );
    }
    let gateways: BTreeSet<String> = [1, 2, 3]
        .into_iter()
        .map(|i| ready(&net, i).map(|r| r.2))
        .collect::<anyhow::Result<_>>()?;
    ensure!(gateways.len() == 3, "distinct gateways: {gateways:?}");
    Ok(())
}

#[test]
fn a_router_restarted_with_its_ring_is_ready_while_its_peers_are_down() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    net.start(1, opts())?;
    net.start(2, opts().peers([net.address(1)]))?;
    net.wait_until("both are ready", SETTLE, || {
        Ok(ready(&net, 1).is_ok() && ready(&net, 2).is_ok())
    })?;
    let before = ready(&net, 2)?;
    net.kill(1)?;
    net.restart(2)?;
    let ipam = net.ipam(2)?;
    ensure!(
        ipam["state"] == "ready" && ipam["waiting_for_ring"].is_null() && ipam["ring"] == before.0,
        "the persisted ring is used at once: {ipam}"
    );
    net.wait_until("host2 has its bridge address back", SETTLE, || {
        Ok(ready(&net, 2)?.2 == before.2)
    })?;
    let (status, body) = add(&net, 2, "after-restart")?;
    ensure!(status == 200, "ADD with host1 down: {status} {body}");
    Ok(())
}
