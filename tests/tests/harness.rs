//! The harness' own checks, without weft: namespaces, faults, cleanup and failure reports.
//! Like the scenarios, they need root and skip themselves otherwise.

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure};
use weft_tests::{Datagram, Net, Reachability, SETTLE, require_root};

/// Any executable will do as the "router binary" when no router is started.
const NO_ROUTER: &str = "/bin/true";
/// Nothing listens there, so a reachable host answers with a reset.
const CLOSED_PORT: u16 = 9;
const PROBE: Duration = Duration::from_secs(1);

fn at(net: &Net, host: usize, port: u16) -> SocketAddr {
    SocketAddr::new(net.address(host).into(), port)
}

fn namespaces() -> anyhow::Result<String> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn hosts_share_a_switch_and_vanish_with_their_net() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut net = Net::new(NO_ROUTER, 2)?;
    let third = net.add_host()?;
    ensure!(third == 3);
    let addresses = net.exec(3, &["ip", "-4", "-brief", "addr", "show", "eth0"])?;
    ensure!(addresses.contains("10.77.0.3/24"), "eth0: {addresses}");
    for (from, to) in [(1, 2), (3, 1)] {
        let seen = net.tcp_probe(from, at(&net, to, CLOSED_PORT), PROBE)?;
        ensure!(
            seen == Reachability::Refused,
            "host{from} -> host{to}: {seen:?}"
        );
    }

    let owned: Vec<String> = net
        .host_ids()
        .iter()
        .map(|&i| net.ns(i).to_owned())
        .collect();
    let dir = net.dir().to_owned();
    drop(net);
    let left = namespaces()?;
    for ns in owned {
        ensure!(!left.contains(&ns), "{ns} survived its Net");
    }
    ensure!(!dir.exists(), "{} survived its Net", dir.display());
    Ok(())
}

#[test]
fn block_drops_both_directions_until_unblocked() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 3)?;
    net.block(1, 2)?;
    ensure!(net.tcp_probe(1, at(&net, 2, CLOSED_PORT), PROBE)? == Reachability::NoAnswer);
    ensure!(net.tcp_probe(2, at(&net, 1, CLOSED_PORT), PROBE)? == Reachability::NoAnswer);
    ensure!(
        net.tcp_probe(1, at(&net, 3, CLOSED_PORT), PROBE)? == Reachability::Refused,
        "blocking host2 must not affect host3"
    );
    net.unblock(1, 2)?;
    ensure!(net.tcp_probe(1, at(&net, 2, CLOSED_PORT), PROBE)? == Reachability::Refused);
    ensure!(net.tcp_probe(2, at(&net, 1, CLOSED_PORT), PROBE)? == Reachability::Refused);
    Ok(())
}

#[test]
fn refused_ports_drop_only_new_inbound_connections() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 2)?;
    net.refuse_connections(2, CLOSED_PORT)?;
    ensure!(net.tcp_probe(1, at(&net, 2, CLOSED_PORT), PROBE)? == Reachability::NoAnswer);
    ensure!(
        net.tcp_probe(1, at(&net, 2, CLOSED_PORT + 1), PROBE)? == Reachability::Refused,
        "other ports stay open"
    );
    ensure!(
        net.tcp_probe(2, at(&net, 1, CLOSED_PORT), PROBE)? == Reachability::Refused,
        "host2's own connections are unaffected"
    );
    net.accept_connections(2, CLOSED_PORT)?;
    ensure!(net.tcp_probe(1, at(&net, 2, CLOSED_PORT), PROBE)? == Reachability::Refused);
    Ok(())
}

#[test]
fn a_downed_link_cuts_the_host_off_until_it_comes_back() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 2)?;
    net.link_down(1)?;
    let seen = net.tcp_probe(1, at(&net, 2, CLOSED_PORT), PROBE)?;
    ensure!(seen == Reachability::Unreachable, "link down: {seen:?}");
    net.link_up(1)?;
    net.wait_until("host1 reaches host2 again", Duration::from_secs(10), || {
        Ok(net.tcp_probe(1, at(&net, 2, CLOSED_PORT), PROBE)? == Reachability::Refused)
    })?;
    Ok(())
}

#[test]
fn netem_loss_is_applied_or_reported_unsupported() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 1)?;
    if !net.netem_loss(1, 100.0)? {
        eprintln!("skipped: the kernel has no sch_netem");
        return Ok(());
    }
    let qdisc = net.exec(1, &["tc", "qdisc", "show", "dev", "eth0"])?;
    ensure!(
        qdisc.contains("netem") && qdisc.contains("loss 100%"),
        "{qdisc}"
    );
    net.clear_netem(1)?;
    Ok(())
}

#[test]
fn a_timed_out_wait_reports_what_it_saw_and_every_host() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 2)?;
    let outcome = net.wait_until("the impossible happens", Duration::from_millis(300), || {
        bail!("observed 42 unicorns")
    });
    let Err(error) = outcome else {
        bail!("the wait succeeded");
    };
    let message = format!("{error:#}");
    for expected in [
        "waiting until the impossible happens",
        "last observed: observed 42 unicorns",
        "===== host1",
        "===== host2",
        "router: not started",
    ] {
        ensure!(
            message.contains(expected),
            "{expected:?} missing from:\n{message}"
        );
    }
    Ok(())
}

#[test]
fn captures_show_udp_datagrams_sent_from_a_chosen_port() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 2)?;
    let mut capture = net.capture(2, "udp port 6783")?;
    let to = SocketAddrV4::new(net.address(2), 6783);
    net.send_udp(1, 6783, to, &[b"hello", b""])?;
    let expected = |payload: &[u8]| Datagram {
        src: SocketAddrV4::new(net.address(1), 6783),
        dst: to,
        payload: payload.to_vec(),
    };
    net.wait_until("both datagrams are captured", SETTLE, || {
        let seen = capture.datagrams()?;
        ensure!(
            seen == [expected(b"hello"), expected(b"")],
            "captured {seen:?}"
        );
        Ok(true)
    })?;
    capture.stop()?;
    Ok(())
}

#[test]
fn processes_left_running_in_hosts_and_pods_die_with_their_net() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let net = Net::new(NO_ROUTER, 1)?;
    net.exec(1, &["ip", "link", "add", "name", "pods", "type", "bridge"])?;
    net.exec(1, &["ip", "link", "set", "pods", "up"])?;
    let pod = net.add_pod(1, "pods", "10.40.0.1/24", 1500)?;
    net.add_pod_address(pod, "fd00:40::1/64")?;
    let addresses = net.pod_exec(pod, &["ip", "-brief", "addr", "show", "eth0"])?;
    ensure!(
        addresses.contains("10.40.0.1/24") && addresses.contains("fd00:40::1/64"),
        "{addresses}"
    );
    ensure!(net.pod_mac(pod)?.len() == "aa:bb:cc:dd:ee:ff".len());
    // Both forgotten on purpose: the Net must end them itself.
    std::mem::forget(net.spawn_in_host(1, &["sleep", "600"])?);
    std::mem::forget(net.spawn_in_pod(pod, &["sleep", "600"])?);
    let namespaces = [net.ns(1).to_owned(), net.pod_ns(pod)?];
    let mut pids = Vec::new();
    net.wait_until("both sleeps run in their namespaces", SETTLE, || {
        pids.clear();
        for ns in &namespaces {
            let out = Command::new("ip").args(["netns", "pids", ns]).output()?;
            let listed = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(!listed.trim().is_empty(), "nothing runs in {ns} yet");
            pids.extend(listed.split_whitespace().map(str::to_owned));
        }
        Ok(true)
    })?;
    drop(net);
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        // A killed child of this test process stays a zombie until reaped: dead all the same.
        ensure!(
            status.is_empty() || status.contains("State:\tZ"),
            "process {pid} survived its Net"
        );
    }
    Ok(())
}
