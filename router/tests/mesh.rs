//! Mesh scenarios with real `weft router` processes, one per network namespace (see the
//! `weft-tests` harness). They need root; as a normal user each test says so and passes.
//!
//! Every test builds its own [`Net`] with unique namespace names, so cargo may run them in
//! parallel. Routers run with a 1 s heartbeat and a 2 s gossip interval; waits are generous
//! deadlines on observed state, never fixed sleeps.

use std::net::SocketAddr;

use anyhow::{Context, bail, ensure};
use weft_tests::{HostId, Net, RouterOpts, SETTLE, require_root};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PASSWORD: &str = "correct horse battery staple";
const MESH_PORT: u16 = 6783;

/// Starts routers on `hosts` with `password`: the first knows no one, every other one is given
/// only the first's address. `customize` may change each host's options.
fn start_star(
    net: &Net,
    hosts: &[HostId],
    password: &str,
    customize: impl Fn(HostId, RouterOpts) -> RouterOpts,
) -> anyhow::Result<()> {
    let hub = *hosts.first().context("no hosts")?;
    for &i in hosts {
        let mut opts = RouterOpts::new().password(password);
        if i != hub {
            opts = opts.peers([net.address(hub)]);
        }
        net.start(i, customize(i, opts))?;
    }
    Ok(())
}

/// A Net of `n` hosts, started as a star around host1 and waited on until it is a full mesh.
fn converged_mesh(n: usize) -> anyhow::Result<Net> {
    converged_mesh_with(n, |_, opts| opts)
}

/// Like [`converged_mesh`], with each host's options changed by `customize`.
fn converged_mesh_with(
    n: usize,
    customize: impl Fn(HostId, RouterOpts) -> RouterOpts,
) -> anyhow::Result<Net> {
    let net = Net::new(WEFT, n)?;
    let hosts = net.host_ids();
    start_star(&net, &hosts, PASSWORD, customize)?;
    net.wait_until(&format!("{n} hosts form a full mesh"), SETTLE, || {
        net.check_full_mesh(&hosts)
    })?;
    Ok(net)
}

fn mesh_address(net: &Net, i: HostId) -> SocketAddr {
    SocketAddr::new(net.address(i).into(), MESH_PORT)
}

/// Each host's `connections_terminated` counter.
fn terminations(net: &Net, hosts: &[HostId]) -> anyhow::Result<Vec<u64>> {
    hosts
        .iter()
        .map(|&i| Ok(net.report(i)?.counters.connections_terminated))
        .collect()
}

/// `hosts` are still a full mesh and none of them terminated a connection since
/// `terminated_before` was taken.
fn mesh_is_untouched(
    net: &Net,
    hosts: &[HostId],
    terminated_before: &[u64],
) -> anyhow::Result<bool> {
    net.check_full_mesh(hosts)?;
    let terminated = terminations(net, hosts)?;
    ensure!(
        terminated == terminated_before,
        "connections were terminated: counters {terminated_before:?} before, {terminated:?} now"
    );
    Ok(true)
}

/// The nickname in `via NAME(NICK)` of `weft ping`'s answer.
fn ping_via_nickname(ping_output: &str) -> Option<&str> {
    let via = ping_output.split(" via ").nth(1)?;
    let open = via.find('(')?;
    let close = via[open..].find(')')? + open;
    Some(&via[open + 1..close])
}

#[test]
fn five_hosts_form_a_full_mesh() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // Hosts 2..5 are given only host1's address: a full mesh means they learned the others.
    let net = converged_mesh(5)?;

    for i in net.host_ids() {
        let report = net.report(i)?;
        ensure!(report.encryption, "host{i} does not report encryption");
        for connection in report.established() {
            ensure!(
                connection.encrypted == Some(true),
                "host{i}: connection {connection:?} is not encrypted"
            );
        }
        let metrics = net.metrics(i)?;
        ensure!(
            metrics.get("weft_peers") == Some(5.0),
            "host{i}: weft_peers is {:?}, expected 5",
            metrics.get("weft_peers")
        );
        ensure!(
            metrics.get(r#"weft_connections{state="established"}"#) == Some(4.0),
            "host{i}: established connections gauge is {:?}, expected 4",
            metrics.get(r#"weft_connections{state="established"}"#)
        );
    }
    Ok(())
}

#[test]
fn a_sixth_host_that_knows_one_peer_joins_the_whole_mesh() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut net = converged_mesh(5)?;

    let six = net.add_host()?;
    net.start(
        six,
        RouterOpts::new().password(PASSWORD).peers([net.address(4)]),
    )?;
    let all = net.host_ids();
    net.wait_until("host6 joins and all six form a full mesh", SETTLE, || {
        net.check_full_mesh(&all)
    })?;
    Ok(())
}

#[test]
fn restart_keeps_the_peer_name_and_reconverges() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // An explicit name on the first start: the restart, without one, must read it back from the
    // data directory rather than derive a new one from machine id and hostname.
    const HOST3_NAME: &str = "02:77:00:00:00:03";
    let net = converged_mesh_with(
        5,
        |i, opts| if i == 3 { opts.name(HOST3_NAME) } else { opts },
    )?;
    let others = [1, 2, 4, 5];
    let before = net.report(3)?;
    ensure!(before.name == HOST3_NAME, "host3 is called {}", before.name);

    net.kill(3)?;
    net.wait_until("the others drop their connections to host3", SETTLE, || {
        net.check_disconnected_from(&others, 3)
    })?;
    // With new inbound connections refused, the restarted host3 can only rejoin by dialling
    // out, and the only address it can start from is the peer list it persisted.
    net.refuse_connections(3, MESH_PORT)?;
    // No peers and no name: both must come from the data directory.
    net.start(3, RouterOpts::new().password(PASSWORD))?;
    net.wait_until("the restarted host3 rejoins the full mesh", SETTLE, || {
        net.check_full_mesh(&net.host_ids())
    })?;

    let after = net.report(3)?;
    ensure!(
        after.name == before.name,
        "host3 changed its peer name from {} to {}",
        before.name,
        after.name
    );
    ensure!(
        after.uid != before.uid,
        "host3 kept its incarnation uid {} across a restart",
        before.uid
    );
    net.wait_until("every host lists host3's new incarnation", SETTLE, || {
        for i in others {
            let seen = net.report(i)?;
            let entry = seen.peer("host3").context("host3 is missing")?;
            ensure!(
                entry.name == after.name && entry.uid == after.uid,
                "host{i} lists host3 as {} uid {}, expected {} uid {}",
                entry.name,
                entry.uid,
                after.name,
                after.uid
            );
        }
        Ok(true)
    })?;
    Ok(())
}

#[test]
fn a_host_that_drops_off_the_network_is_forgotten_and_rejoins() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = converged_mesh(5)?;
    let others = [1, 2, 4, 5];

    // No reset, no goodbye: only the missing heartbeats tell the others host3 is gone.
    net.link_down(3)?;
    net.wait_until("the others forget host3", SETTLE, || {
        net.check_full_mesh(&others)
    })?;
    net.wait_until("host3 is alone", SETTLE, || net.check_full_mesh(&[3]))?;

    net.link_up(3)?;
    net.wait_until("host3 rejoins the full mesh", SETTLE, || {
        net.check_full_mesh(&net.host_ids())
    })?;
    Ok(())
}

#[test]
fn a_departed_peer_is_no_longer_dialled() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = converged_mesh(5)?;
    let others = [1, 2, 4, 5];
    let departed = mesh_address(&net, 3).to_string();

    // host3 vanishes from the network, like a machine that lost power: dials to it hang until
    // they time out instead of being refused at once.
    net.link_down(3)?;
    net.wait_until("the others drop their connections to host3", SETTLE, || {
        net.check_disconnected_from(&others, 3)
    })?;
    // host3 was never named by an operator on any other host, only discovered through gossip;
    // once no peer mentions it, dialling it is pointless.
    net.wait_until("no host still dials host3's address", SETTLE, || {
        for i in others {
            if let Some(target) = net
                .report(i)?
                .connections
                .iter()
                .find(|c| c.direction == "outbound" && c.address == departed)
            {
                bail!("host{i} still targets host3: {target:?}");
            }
        }
        Ok(true)
    })?;
    Ok(())
}

#[test]
fn wrong_password_is_refused_and_the_mesh_stays_healthy() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    const MISMATCH: &str = "different password";
    let mut net = converged_mesh(5)?;
    let good: Vec<HostId> = net.host_ids();
    let terminated_before = terminations(&net, &good)?;

    let intruder = net.add_host()?;
    net.start(
        intruder,
        RouterOpts::new()
            .password("not the mesh password")
            .peers(good.iter().map(|&i| net.address(i))),
    )?;
    let intruder_ip = net.address(intruder).to_string();

    net.wait_until(
        "the intruder reports a password mismatch for every target",
        SETTLE,
        || {
            let report = net.report(intruder)?;
            for &i in &good {
                let target = mesh_address(&net, i).to_string();
                let connection = report
                    .connections
                    .iter()
                    .find(|c| c.address == target)
                    .with_context(|| format!("no entry for target {target}"))?;
                ensure!(
                    connection.state != "established"
                        && connection
                            .reason
                            .as_deref()
                            .is_some_and(|r| r.contains(MISMATCH)),
                    "target {target}: {connection:?}"
                );
            }
            let text = net.weft_status(intruder, &["connections"])?;
            for &i in &good {
                let target = mesh_address(&net, i).to_string();
                ensure!(
                    text.lines().any(|l| l.starts_with("->")
                        && l.contains(&target)
                        && l.contains(MISMATCH)),
                    "no text line for {target} with the reason:\n{text}"
                );
            }
            Ok(true)
        },
    )?;
    net.wait_until(
        "every good host reports the refused inbound connection",
        SETTLE,
        || {
            for &i in &good {
                let refused = net.report(i)?.failures_mentioning(MISMATCH).any(|c| {
                    c.direction == "inbound"
                        && c.state == "failed"
                        && c.address.starts_with(&format!("{intruder_ip}:"))
                });
                ensure!(
                    refused,
                    "host{i} shows no refused inbound from {intruder_ip}"
                );
            }
            let text = net.weft_status(1, &["connections"])?;
            ensure!(
                text.lines().any(|l| l.starts_with("<-")
                    && l.contains(&intruder_ip)
                    && l.contains("failed")
                    && l.contains(MISMATCH)),
                "host1's text view lacks the refused inbound:\n{text}"
            );
            Ok(true)
        },
    )?;

    net.check_now("the good mesh to be untouched", || {
        mesh_is_untouched(&net, &good, &terminated_before)
    })?;
    net.check_now("the intruder to be alone", || {
        let report = net.report(intruder)?;
        ensure!(
            report.peers.len() == 1 && report.established().count() == 0,
            "the intruder got in: {report:?}"
        );
        Ok(true)
    })?;
    net.check_now("host1 to count the mismatch", || {
        let metrics = net.metrics(1)?;
        let series = r#"weft_handshake_failures_total{reason="password_mismatch"}"#;
        ensure!(
            metrics.get(series) >= Some(1.0),
            "no {series}: {:?}",
            metrics.samples
        );
        Ok(true)
    })
}

#[test]
fn a_host_without_a_password_is_refused_by_a_password_mesh() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut net = converged_mesh(3)?;
    let good = net.host_ids();
    let terminated_before = terminations(&net, &good)?;

    let plain = net.add_host()?;
    net.start(plain, RouterOpts::new().peers([net.address(1)]))?;
    let target = mesh_address(&net, 1).to_string();
    let plain_ip = net.address(plain).to_string();

    net.wait_until("both sides explain the missing password", SETTLE, || {
        let dialer = net.report(plain)?;
        let outbound = dialer
            .connections
            .iter()
            .find(|c| c.address == target)
            .context("the password-less host has no entry for its target")?;
        ensure!(
            outbound
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("this peer has none")),
            "password-less host: {outbound:?}"
        );
        let refused = net
            .report(1)?
            .failures_mentioning("the remote has none")
            .any(|c| c.direction == "inbound" && c.address.starts_with(&format!("{plain_ip}:")));
        ensure!(refused, "host1 shows no refused inbound from {plain_ip}");
        Ok(true)
    })?;

    net.check_now("the good mesh to be untouched", || {
        mesh_is_untouched(&net, &good, &terminated_before)
    })?;
    ensure!(!net.report(plain)?.encryption);
    Ok(())
}

#[test]
fn a_cut_link_is_routed_around_and_heals() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = converged_mesh(5)?;

    net.block(1, 2)?;
    net.wait_until(
        "host1 and host2 route to each other via a third host",
        SETTLE,
        || {
            for (from, to) in [(1, "host2"), (2, "host1")] {
                let report = net.report(from)?;
                let route = report
                    .route_to(to)
                    .with_context(|| format!("host{from} has no route to {to}"))?;
                ensure!(
                    !route.is_direct(),
                    "host{from} still routes to {to} directly"
                );
            }
            Ok(true)
        },
    )?;
    net.wait_until("host1 pings host2 through a third host", SETTLE, || {
        let ping = net.weft_output(1, &["ping", "host2"])?;
        ensure!(ping.success(), "weft ping failed: {}", ping.stderr.trim());
        let via = ping_via_nickname(&ping.stdout)
            .with_context(|| format!("unexpected ping output: {}", ping.stdout))?;
        ensure!(
            via != "host2" && via != "host1",
            "the echo went via {via}: {}",
            ping.stdout
        );
        Ok(true)
    })?;

    net.unblock(1, 2)?;
    net.wait_until("host1 and host2 connect directly again", SETTLE, || {
        for (from, to) in [(1, "host2"), (2, "host1")] {
            let report = net.report(from)?;
            ensure!(
                report.connection_to(to).is_some(),
                "host{from} has no connection to {to}"
            );
            ensure!(
                report.route_to(to).is_some_and(|r| r.is_direct()),
                "host{from} does not route to {to} directly"
            );
        }
        Ok(true)
    })?;
    net.wait_until("the five hosts are a full mesh again", SETTLE, || {
        net.check_full_mesh(&net.host_ids())
    })?;
    Ok(())
}

/// A connection from a stranger that does not speak the weft protocol.
struct Attack {
    what: &'static str,
    payload: Vec<u8>,
    /// Whether the stranger waits for the router to hang up, or hangs up itself.
    waits: bool,
    /// What the router's status must say about it.
    reason: &'static str,
}

#[test]
fn garbage_at_the_mesh_port_is_refused_and_the_router_survives() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut net = converged_mesh(3)?;
    let mesh = net.host_ids();
    // Two hosts on the switch with no router: one stays silent, one sends garbage.
    let silent = net.add_host()?;
    let attacker = net.add_host()?;
    let victim = 1;
    let victim_address = mesh_address(&net, victim);
    let terminated_before = terminations(&net, &mesh)?;
    let failures_before = net.metrics(victim)?.sum("weft_handshake_failures_total");

    let hello = b"weft\x01\x01";
    let mut huge_frame = hello.to_vec();
    huge_frame.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut garbage_intro = hello.to_vec();
    garbage_intro.extend_from_slice(&64u32.to_be_bytes());
    garbage_intro.extend(std::iter::repeat_n(0xa5, 64));
    let attacks = [
        Attack {
            what: "an HTTP request",
            payload: b"GET / HTTP/1.1\r\nHost: weft\r\n\r\n".to_vec(),
            waits: true,
            reason: "not a weft peer",
        },
        Attack {
            what: "a 4 GiB length prefix",
            payload: huge_frame,
            waits: true,
            reason: "exceeds the limit",
        },
        Attack {
            what: "a garbage handshake intro",
            payload: garbage_intro,
            waits: true,
            reason: "malformed message",
        },
        Attack {
            what: "half a hello, then hanging up",
            payload: b"wef".to_vec(),
            waits: false,
            reason: "eof",
        },
    ];

    std::thread::scope(|scope| -> anyhow::Result<()> {
        // A connection that never says anything must be closed by the handshake timeout,
        // while the router keeps serving everyone else.
        let silent_client = scope.spawn(|| net.send_raw(silent, victim_address, b""));
        for attack in &attacks {
            if attack.waits {
                let answer = net.send_raw(attacker, victim_address, &attack.payload)?;
                // The router's own hello comes first, whatever the stranger sent.
                ensure!(
                    answer.stdout.starts_with("weft"),
                    "{}: the router answered {:?}",
                    attack.what,
                    answer.stdout
                );
            } else {
                net.send_raw_and_hang_up(attacker, victim_address, &attack.payload)?;
            }
            // Inbound failures are kept per remote IP, so each attack's reason replaces the
            // previous one; the reasons differ, so this also waits for the attack's turn.
            wait_for_inbound_failure(&net, victim, attacker, attack.what, attack.reason)?;
        }
        let silent_answer = silent_client
            .join()
            .map_err(|_| anyhow::anyhow!("the silent client panicked"))??;
        ensure!(silent_answer.stdout.starts_with("weft"));
        wait_for_inbound_failure(&net, victim, silent, "a silent connection", "timed out")
    })?;

    let expected = failures_before + attacks.len() as f64 + 1.0;
    net.wait_until(
        &format!("host1 counts {expected} handshake failures"),
        SETTLE,
        || {
            let counted = net.metrics(victim)?.sum("weft_handshake_failures_total");
            ensure!(counted >= expected, "{counted} handshake failures counted");
            Ok(true)
        },
    )?;
    net.check_now(
        "host1's router to survive and the mesh to be untouched",
        || {
            ensure!(net.is_running(victim), "host1's router died");
            mesh_is_untouched(&net, &mesh, &terminated_before)
        },
    )
}

/// Waits until `victim` lists a failed inbound connection from `stranger` whose reason contains
/// `reason`, in both the JSON and the text status.
fn wait_for_inbound_failure(
    net: &Net,
    victim: HostId,
    stranger: HostId,
    what: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let from = format!("{}:", net.address(stranger));
    net.wait_until(
        &format!("host{victim} reports the refused inbound after {what}"),
        SETTLE,
        || {
            let report = net.report(victim)?;
            let failure = report
                .connections
                .iter()
                .find(|c| c.direction == "inbound" && c.address.starts_with(&from))
                .with_context(|| format!("no inbound entry from {from}"))?;
            ensure!(
                failure.state == "failed"
                    && failure
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.contains(reason)),
                "expected a failure mentioning {reason:?}, got {failure:?}"
            );
            let text = net.weft_status(victim, &["connections"])?;
            ensure!(
                text.lines()
                    .any(|l| l.starts_with(&format!("<- {from}")) && l.contains(reason)),
                "the text status lacks it:\n{text}"
            );
            Ok(true)
        },
    )
}

#[test]
fn ping_output_names_the_first_hop() {
    let output = "echo from de:b0:57:11:62:6d(host2) via be:93:22:23:cd:d0(host3) in 0.60 ms";
    assert_eq!(ping_via_nickname(output), Some("host3"));
    assert_eq!(ping_via_nickname("no echo"), None);
}

#[test]
fn control_requests_are_served_only_to_the_local_host() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(WEFT, 2)?;
    // host1 serves its endpoint on every address, as an operator might for scraping.
    net.start(
        1,
        RouterOpts::new()
            .password(PASSWORD)
            .arg("--status-addr")
            .arg("0.0.0.0:6784"),
    )?;
    net.start(2, RouterOpts::new().password(PASSWORD))?;
    let endpoint = format!("http://{}:6784", net.address(1));

    // Reads are served to other hosts…
    let status = net.exec(2, &["curl", "-sf", &format!("{endpoint}/status")])?;
    ensure!(
        status.contains("Encryption: enabled"),
        "remote read failed: {status}"
    );
    // …changes are not, whatever the verb.
    for path in [
        "/connect?peer=10.0.0.1",
        "/forget?peer=10.0.0.1",
        "/ping?peer=host1",
    ] {
        let code = net.exec(
            2,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                &format!("{endpoint}{path}"),
            ],
        )?;
        ensure!(
            code.trim() == "403",
            "POST {path} from another host answered {code}"
        );
    }
    ensure!(
        net.report(1)?.peers.len() == 1,
        "a refused request changed something"
    );

    // Locally, `weft connect` adds a peer and the two connect.
    net.weft(1, &["connect", &net.address(2).to_string()])?;
    net.wait_until("host1 and host2 connect", SETTLE, || {
        net.check_full_mesh(&[1, 2])
    })?;
    // Forgetting an address that was never a target says so; forgetting a real one works and
    // leaves the established connection up.
    let unknown = net.weft_output(1, &["forget", "10.0.0.99"])?;
    let stderr = &unknown.stderr;
    ensure!(
        !unknown.status.success() && stderr.contains("not a known peer address"),
        "forgetting an unknown address: {stderr}"
    );
    net.weft(1, &["forget", &net.address(2).to_string()])?;
    net.check_now("the connection to survive forget", || {
        net.check_full_mesh(&[1, 2])
    })?;
    Ok(())
}
