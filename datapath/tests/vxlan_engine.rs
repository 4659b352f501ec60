//! Two VXLAN engines against the real kernel, in network namespaces this test makes (and always
//! removes): their connection comes up on the fast path from real heartbeats, a pod pings the
//! other host's pod through the VXLAN device, blocking the VXLAN port one way moves the
//! connection to the sleeve at both ends with the reason, and unblocking brings it back; a
//! stopped engine leaves the fast path working (the peer keeps an unreachable peer's entries),
//! and a restarted one adopts the device and its FDB without interrupting the pods' ping.

#[allow(dead_code)] // each test uses part of it
mod netns;

use netns::{Ns, is_root};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_datapath::DatapathKind;
use weft_datapath::packet::{FramePort, PacketSocket};
use weft_datapath::select::Policy;
use weft_datapath::vxlan::engine::{ConnectionPath, VxlanConfig, VxlanEngine};
use weft_datapath::vxlan::fastbeat::ETHERTYPE;
use weft_datapath::vxlan::kernel::{NetlinkKernel, VxlanKernel};
use weft_datapath::vxlan::plan::{BridgePort, heartbeat_mac};
use weft_datapath::vxlan::{DEFAULT_VNI, VxlanOffer};
use weft_netlink::link::format_mac;

const A: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x0a];
const B: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x0b];
const POD_A: [u8; 6] = [0x02, 0xcc, 0, 0, 0x0e, 0x0a];
const POD_B: [u8; 6] = [0x02, 0xcc, 0, 0, 0x0e, 0x0b];
const CONN: u64 = 0xfeed;

/// A host: bridge `wb`, a veth `wb-tap` standing in for the sleeve's TAP, and one pod in its
/// own namespace on the bridge, `10.99.0.<n>/24`.
fn host(ns: &Ns, pod: &Ns, pod_mac: [u8; 6], n: u8) {
    ns.ip(&["link", "add", "wb", "type", "bridge"]);
    ns.ip(&["link", "set", "wb", "up"]);
    ns.ip(&[
        "link", "add", "wb-tap", "type", "veth", "peer", "name", "wb-tapp",
    ]);
    ns.ip(&["link", "set", "wb-tap", "master", "wb", "up"]);
    ns.ip(&["link", "set", "wb-tapp", "up"]);
    ns.ip(&[
        "link", "add", "pod", "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    ns.ip(&["link", "set", "pod", "master", "wb", "up"]);
    pod.ip(&["link", "set", "eth0", "address", &format_mac(pod_mac), "up"]);
    pod.ip(&["addr", "add", &format!("10.99.0.{n}/24"), "dev", "eth0"]);
}

fn config(local: [u8; 6]) -> VxlanConfig {
    VxlanConfig {
        kind: DatapathKind::Vxlan,
        local,
        bridge: "wb".into(),
        tap: "wb-tap".into(),
        port: 6784,
        vni: DEFAULT_VNI,
        underlay_mtu: 1500,
    }
}

/// A second kernel edge on a host's device (adopting it as it is), to read its FDB.
fn reader(ns: &Ns) -> NetlinkKernel {
    let mut k = NetlinkKernel::open_in(&ns.path()).expect("netlink");
    let state = k
        .ensure_device(&config(A).device_spec().unwrap())
        .expect("adopt");
    assert!(state.adopted);
    k
}

fn engine(ns: &Ns, local: [u8; 6]) -> VxlanEngine {
    let config = config(local);
    let kernel = NetlinkKernel::open_in(&ns.path()).expect("netlink");
    let path = ns.path();
    VxlanEngine::start_with(
        config,
        Box::new(kernel),
        move |device| {
            let (index, hb) = (device.index, heartbeat_mac(local));
            let send =
                weft_netlink::in_netns(&path, || PacketSocket::open(index, ETHERTYPE, false))
                    .expect("send socket");
            let recv =
                weft_netlink::in_netns(&path, || PacketSocket::open_incoming(index, ETHERTYPE, hb))
                    .expect("receive socket");
            Ok((Box::new(send) as Box<dyn FramePort>, Box::new(recv) as _))
        },
        Box::new(|_| {}),
    )
    .expect("engine")
}

fn policy() -> Policy {
    Policy {
        local_fast: Ok(()),
        encrypted: false,
        esp: false,
        vxlan_port: 6784,
        fast: DatapathKind::Vxlan,
    }
}

fn path(e: &VxlanEngine) -> ConnectionPath {
    e.paths().into_iter().next().expect("a connection")
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool, show: impl Fn() -> String) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "{what}: not within {limit:?}: {}",
            show()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pings(pod: &Ns, to: &str) -> bool {
    pod.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", to])
        .status
        .success()
}

#[test]
fn two_engines_bring_a_connection_onto_vxlan_fall_back_when_blocked_and_return() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (a, b, pa, pb) = (
        Ns::new("wve", "a"),
        Ns::new("wve", "b"),
        Ns::new("wve", "pa"),
        Ns::new("wve", "pb"),
    );
    a.ip(&[
        "link", "add", "ua", "type", "veth", "peer", "name", "ub", "netns", &b.0,
    ]);
    a.ip(&["addr", "add", "10.202.0.1/24", "dev", "ua"]);
    a.ip(&["link", "set", "ua", "up"]);
    b.ip(&["addr", "add", "10.202.0.2/24", "dev", "ub"]);
    b.ip(&["link", "set", "ub", "up"]);
    let (ua, ub) = (Ipv4Addr::new(10, 202, 0, 1), Ipv4Addr::new(10, 202, 0, 2));
    host(&a, &pa, POD_A, 1);
    host(&b, &pb, POD_B, 2);
    // No sleeve here to carry ARP: the pods know each other's MAC.
    pa.ip(&[
        "neigh",
        "add",
        "10.99.0.2",
        "lladdr",
        &format_mac(POD_B),
        "dev",
        "eth0",
    ]);
    pb.ip(&[
        "neigh",
        "add",
        "10.99.0.1",
        "lladdr",
        &format_mac(POD_A),
        "dev",
        "eth0",
    ]);

    let ea = engine(&a, A);
    let eb = engine(&b, B);
    let offer = VxlanOffer {
        port: 6784,
        vni: DEFAULT_VNI,
    };
    ea.add_connection(B, CONN, ub, Some(offer), policy());
    eb.add_connection(A, CONN, ua, Some(offer), policy());
    ea.set_macs(BTreeMap::from([(POD_B, B)]));
    eb.set_macs(BTreeMap::from([(POD_A, A)]));
    ea.set_reachable(vec![B]);
    eb.set_reachable(vec![A]);
    let show = || format!("A: {:?}\nB: {:?}", ea.paths(), eb.paths());
    let both = |kind| path(&ea).datapath == kind && path(&eb).datapath == kind;

    wait(
        "both on vxlan",
        Duration::from_secs(15),
        || both(DatapathKind::Vxlan),
        show,
    );
    assert_eq!(
        path(&ea).reason,
        "fast path up: heartbeats both ways on udp/6784"
    );
    let mut reader = reader(&a);
    let fdb = reader.read_fdb("wb-tap").expect("read A's FDB");
    assert_eq!(fdb.vxlan.get(&POD_B), Some(&ub));
    assert_eq!(fdb.bridge.get(&POD_B), Some(&BridgePort::Vxlan));
    assert!(
        pings(&pa, "10.99.0.2"),
        "pod A cannot ping pod B over VXLAN"
    );
    let report = ea.report();
    assert!(
        report.heartbeats_received > 0 && report.fdb_errors == 0,
        "{report:?}"
    );

    // B drops A's VXLAN packets.
    let nft = |args: &str| {
        let out = b.exec(&["nft", args]);
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("add table inet wve");
    nft("add chain inet wve in { type filter hook input priority 0; }");
    nft("add rule inet wve in udp dport 6784 drop");
    let blocked = Instant::now();
    wait(
        "both on the sleeve",
        Duration::from_secs(10),
        || both(DatapathKind::Sleeve),
        show,
    );
    assert!(
        blocked.elapsed() < Duration::from_secs(8),
        "{:?}",
        blocked.elapsed()
    );
    let b_reason = path(&eb).reason;
    assert!(
        b_reason.starts_with("fast path: no heartbeat for "),
        "{b_reason}"
    );
    assert_eq!(
        path(&ea).reason,
        "fast path: we hear the peer but it does not hear us on udp/6784"
    );
    wait(
        "A's FDB points B's pod at the TAP",
        Duration::from_secs(2),
        || reader.read_fdb("wb-tap").expect("read").bridge.get(&POD_B) == Some(&BridgePort::Tap),
        show,
    );

    nft("delete table inet wve");
    wait(
        "back on vxlan",
        Duration::from_secs(15),
        || both(DatapathKind::Vxlan),
        show,
    );
    assert_eq!(path(&ea).transitions, 3);
    let mut reader = self::reader(&a);
    assert_eq!(
        reader.read_fdb("wb-tap").expect("read").bridge.get(&POD_B),
        Some(&BridgePort::Vxlan)
    );
    assert!(pings(&pa, "10.99.0.2"), "no ping after the return");

    // A's router stops: its engine leaves the device and the FDB; B's router loses the
    // connection and the route to A, so it keeps A's entries as they are. Pods keep talking.
    drop(ea);
    eb.remove_connection(A, CONN);
    eb.set_reachable(vec![]);
    std::thread::sleep(Duration::from_secs(4));
    assert!(pings(&pa, "10.99.0.2"), "no ping while A's router is down");
    let mut b_reader = self::reader(&b);
    let fdb = b_reader.read_fdb("wb-tap").expect("read B's FDB");
    assert_eq!(fdb.vxlan.get(&POD_A), Some(&ua), "{fdb:?}");
    assert_eq!(fdb.bridge.get(&POD_A), Some(&BridgePort::Vxlan));

    // It starts again and adopts what it left; the connection comes back on vxlan.
    let ea = engine(&a, A);
    assert!(ea.report().adopted);
    ea.add_connection(B, CONN + 1, ub, Some(offer), policy());
    eb.add_connection(A, CONN + 1, ua, Some(offer), policy());
    eb.set_reachable(vec![A]);
    assert!(pings(&pa, "10.99.0.2"), "no ping while A's router starts");
    ea.set_macs(BTreeMap::from([(POD_B, B)]));
    ea.set_reachable(vec![B]);
    let show = || format!("A: {:?}\nB: {:?}", ea.paths(), eb.paths());
    let both = |kind| path(&ea).datapath == kind && path(&eb).datapath == kind;
    wait(
        "both on vxlan again",
        Duration::from_secs(15),
        || both(DatapathKind::Vxlan),
        show,
    );
    assert!(pings(&pa, "10.99.0.2"), "no ping after the restart");
    let fdb = self::reader(&a).read_fdb("wb-tap").expect("read A's FDB");
    assert_eq!(fdb.vxlan.get(&POD_B), Some(&ub));
    assert_eq!(fdb.vxlan.get(&heartbeat_mac(B)), Some(&ub));
    assert_eq!((fdb.vxlan.len(), fdb.bridge.len()), (2, 1), "{fdb:?}");
    drop((ea, eb));
}
