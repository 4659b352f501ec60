//! The sleeve engine without a router: two engines in one network namespace this test makes
//! (each with its own bridge and a pod on it), joined over loopback, driven with plain values
//! only (peer ids, connection ids, a fixed routing table, no MAC hints). Their links come up
//! and say so in events; pods ping each other through them (ARP flooded, the reply unicast);
//! a link on standby keeps working and says so; a removed link is gone.

#[allow(dead_code)] // `BridgedTap` is the TAP tests'
mod common;

use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Namespaces, ip, is_root};
use weft_datapath::PeerId;
use weft_datapath::forward::Routing;
use weft_datapath::heartbeat::Health;
use weft_datapath::mac::{Mac, MacOwner};
use weft_datapath::sleeve::engine::{
    BridgePorts, MacHints, SleeveConfig, SleeveEngine, SleeveEvent, SleeveLinkState,
};

const A: PeerId = [0x02, 0, 0, 0, 0, 0x0a];
const B: PeerId = [0x02, 0, 0, 0, 0, 0x0b];
const DEADLINE: Duration = Duration::from_secs(20);

/// Two peers, directly connected.
struct Pair {
    local: PeerId,
    other: PeerId,
}

impl Routing for Pair {
    fn local(&self) -> PeerId {
        self.local
    }

    fn next_hop(&self, dst: PeerId) -> Option<PeerId> {
        (dst == self.other).then_some(dst)
    }

    fn broadcast_hops(&self, origin: PeerId) -> Vec<PeerId> {
        if origin == self.local {
            vec![self.other]
        } else {
            Vec::new()
        }
    }
}

struct NoHints;

impl MacHints for NoHints {
    fn owner(&self, _: &Mac) -> Option<PeerId> {
        None
    }

    fn live_count(&self) -> usize {
        0
    }
}

/// Bridges and ports in the test's host namespace, with `ip`.
struct IpBridge {
    netns: String,
}

impl IpBridge {
    fn ip(&self, args: &[&str]) -> io::Result<()> {
        let out = Command::new("ip")
            .args(["-n", &self.netns])
            .args(args)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }
}

impl BridgePorts for IpBridge {
    fn ensure_bridge(&self, name: &str, mtu: u16) -> io::Result<()> {
        let mtu = mtu.to_string();
        self.ip(&["link", "add", name, "mtu", &mtu, "type", "bridge"])?;
        self.ip(&["link", "set", name, "up"])
    }

    fn attach(&self, port: &str, bridge: &str, mtu: u16) -> io::Result<()> {
        let mtu = mtu.to_string();
        self.ip(&["link", "set", port, "master", bridge, "mtu", &mtu, "up"])
    }
}

type Events = Arc<Mutex<Vec<SleeveEvent>>>;

fn start(
    host: &str,
    local: PeerId,
    other: PeerId,
    bridge: &str,
    port: u16,
) -> (SleeveEngine, Events) {
    let events = Events::default();
    let sink = events.clone();
    let config = SleeveConfig {
        bridge: bridge.into(),
        port,
        underlay_mtu: 1500,
        encrypted: false,
        bridge_mtu: Some(1400),
    };
    let netns = format!("/var/run/netns/{host}");
    let engine = weft_netlink::in_netns(&netns, || {
        SleeveEngine::start(
            local,
            &config,
            &IpBridge { netns: host.into() },
            Arc::new(Pair { local, other }),
            Arc::new(NoHints),
            Box::new(move |event| sink.lock().unwrap().push(event)),
        )
    })
    .expect("start the engine");
    (engine, events)
}

/// A pod namespace with `eth0` at `addr`/24 on `bridge` in `host`.
fn pod(host: &str, pod: &str, bridge: &str, veth: &str, addr: &str) {
    ip(&["netns", "add", pod]);
    ip(&[
        "-n", host, "link", "add", veth, "mtu", "1400", "type", "veth", "peer", "name", "eth0",
        "mtu", "1400", "netns", pod,
    ]);
    ip(&["-n", host, "link", "set", veth, "master", bridge, "up"]);
    ip(&["-n", pod, "addr", "add", addr, "dev", "eth0"]);
    ip(&["-n", pod, "link", "set", "eth0", "up"]);
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn link_to(engine: &SleeveEngine, peer: PeerId) -> Option<SleeveLinkState> {
    engine.links().into_iter().find(|l| l.peer == peer)
}

fn pings(pod: &str, addr: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", pod, "ping", "-c", "1", "-W", "1", addr])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn two_engines_driven_with_plain_values_carry_pod_traffic_and_report_their_links() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let id = std::process::id();
    let (host, pod_a, pod_b) = (
        format!("wteh{id}"),
        format!("wtea{id}"),
        format!("wteb{id}"),
    );
    let _namespaces = Namespaces(vec![host.clone(), pod_a.clone(), pod_b.clone()]);
    ip(&["netns", "add", &host]);
    ip(&["-n", &host, "link", "set", "lo", "up"]);
    let (a, events_a) = start(&host, A, B, "wea", 16783);
    let (b, _events_b) = start(&host, B, A, "web", 16785);
    assert_eq!(a.mtu(), 1400, "the router's bridge MTU");
    assert_eq!(a.bridge(), "wea");
    pod(&host, &pod_a, "wea", "vpa", "10.98.0.1/24");
    pod(&host, &pod_b, "web", "vpb", "10.98.0.2/24");

    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    a.add_peer(B, 7, addr(16785), None);
    b.add_peer(A, 8, addr(16783), None);

    // The link comes up once heard and its path MTU is measured, and says so in an event.
    poll("A's link to B up", || {
        let link = link_to(&a, B)?;
        (link.health == Health::Up).then_some(link)
    });
    let link = link_to(&a, B).unwrap();
    assert_eq!((link.conn, link.path_mtu, link.standby), (7, 1500, false));
    assert!(link.pmtu_confirmed);
    assert_eq!(link.overlay_mtu, 1436);
    poll("the link-health event", || {
        events_a
            .lock()
            .unwrap()
            .contains(&SleeveEvent::LinkHealth {
                peer: B,
                conn: 7,
                up: true,
                reason: None,
            })
            .then_some(())
    });

    // Pods ping: ARP floods through the engines, the replies go unicast by learned MACs.
    poll("pod A pinging pod B", || {
        pings(&pod_a, "10.98.0.2").then_some(())
    });
    let report = a.report();
    assert!(report.counters.frames_out > 0 && report.counters.frames_in > 0);
    assert!(
        report
            .mac_table
            .iter()
            .any(|row| row.owner == MacOwner::Remote(B)),
        "{:?}",
        report.mac_table
    );
    assert!(
        events_a
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SleeveEvent::LocalMac(_))),
        "pod A's MAC was announced"
    );

    // On standby the link is probed slowly but stays up and still carries frames.
    a.set_standby(B, true);
    b.set_standby(A, true);
    assert!(link_to(&a, B).unwrap().standby);
    assert!(pings(&pod_b, "10.98.0.1") || pings(&pod_b, "10.98.0.1"));
    assert_eq!(link_to(&a, B).unwrap().health, Health::Up);
    a.set_standby(B, false);
    assert!(!link_to(&a, B).unwrap().standby);

    // A connection that is not the link's own leaves it; its own removes it.
    a.remove_peer(B, 99);
    assert!(link_to(&a, B).is_some());
    a.remove_peer(B, 7);
    assert!(link_to(&a, B).is_none());
    assert_eq!(a.report().links, 0);
}
