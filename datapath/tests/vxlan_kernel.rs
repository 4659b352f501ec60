//! The VXLAN kernel edge against the real kernel, in network namespaces this test makes (and
//! always removes): `NetlinkKernel` makes and adopts the device, its FDB entries match what
//! `bridge fdb show` prints, and a heartbeat sent through a `PacketSocket` on one host's VXLAN
//! device arrives on the other's (full size, DF set) and never reaches a pod.

#[allow(dead_code)] // each test uses part of it
mod netns;

use netns::{Ns, is_root};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_datapath::packet::PacketSocket;
use weft_datapath::vxlan::DEFAULT_VNI;
use weft_datapath::vxlan::kernel::{DeviceSpec, NetlinkKernel, VxlanKernel};
use weft_datapath::vxlan::plan::{BridgePort, FdbOp, KernelFdb};
use weft_netlink::link::format_mac;

const HB: u16 = 0x88b5;

fn spec(port: u16) -> DeviceSpec {
    DeviceSpec {
        name: "wb-vxlan".into(),
        bridge: "wb".into(),
        vni: DEFAULT_VNI,
        port,
        mtu: 1450,
    }
}

/// A bridge `wb` (up) with a veth `wb-tap` standing in for the sleeve's TAP.
fn bridge_with_tap(ns: &Ns) {
    ns.ip(&["link", "add", "wb", "type", "bridge"]);
    ns.ip(&["link", "set", "wb", "up"]);
    ns.ip(&[
        "link", "add", "wb-tap", "type", "veth", "peer", "name", "wb-tapp",
    ]);
    ns.ip(&["link", "set", "wb-tap", "master", "wb", "up"]);
    ns.ip(&["link", "set", "wb-tapp", "up"]);
}

/// weft's entries as `bridge -j fdb show` prints them.
fn fdb_from_bridge_tool(ns: &Ns) -> KernelFdb {
    let mut out = KernelFdb::default();
    let parse = |s: &str| -> [u8; 6] {
        let v: Vec<u8> = s
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect();
        v.try_into().expect("6 bytes")
    };
    for e in ns
        .json("bridge", &["fdb", "show", "br", "wb"])
        .as_array()
        .expect("array")
    {
        let flags: Vec<&str> = e["flags"]
            .as_array()
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let dev = e["ifname"].as_str().unwrap_or("");
        let mac = parse(e["mac"].as_str().expect("mac"));
        if dev == "wb-vxlan" && flags.contains(&"self") {
            if let Some(dst) = e["dst"].as_str() {
                out.vxlan.insert(mac, dst.parse().expect("ip"));
            }
        } else if e["master"] == "wb" && e["state"] == "static" {
            assert!(flags.contains(&"sticky"), "not sticky: {e}");
            let port = match dev {
                "wb-vxlan" => BridgePort::Vxlan,
                "wb-tap" => BridgePort::Tap,
                other => panic!("a static entry on {other}: {e}"),
            };
            out.bridge.insert(mac, port);
        }
    }
    out
}

const A: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const B: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const C: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 3];
const H: [u8; 6] = [0x06, 0xbb, 0, 0, 0, 9];

#[test]
fn the_device_is_made_then_adopted_and_its_fdb_follows_the_plan() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = Ns::new("wvx", "k");
    bridge_with_tap(&ns);
    let bridge_mac = ns.mac("wb");
    let mut k = NetlinkKernel::open_in(&ns.path()).expect("netlink");

    let made = k.ensure_device(&spec(6784)).expect("ensure");
    assert!(!made.adopted);
    assert_eq!(made.bridge_index, ns.index("wb"));
    let adopted = k.ensure_device(&spec(6784)).expect("ensure again");
    assert!(adopted.adopted);
    assert_eq!(adopted.index, made.index);
    assert_eq!(ns.mac("wb"), bridge_mac, "the bridge kept its MAC");

    let link = &ns.json("ip", &["-d", "link", "show", "wb-vxlan"])[0];
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(data["id"], DEFAULT_VNI);
    assert_eq!(data["port"], 6784);
    assert_eq!(data["learning"], false);
    assert_eq!(data["df"], "set");
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["master"], "wb");
    assert!(link["flags"].as_array().unwrap().contains(&"UP".into()));
    assert_eq!(
        link["inet6_addr_gen_mode"], "none",
        "the device has no address to speak from"
    );
    let shown = ns.json("ip", &["-6", "addr", "show", "dev", "wb-vxlan"]);
    let addresses = shown.as_array().into_iter().flatten();
    assert!(
        addresses
            .flat_map(|l| l["addr_info"].as_array())
            .all(Vec::is_empty),
        "{shown}"
    );
    let port = &ns.json("bridge", &["-d", "link", "show", "dev", "wb-vxlan"])[0];
    for flag in ["learning", "flood", "mcast_flood", "bcast_flood"] {
        assert_eq!(port[flag], false, "{flag}: {port}");
    }

    let (d1, d2) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let ops = [
        FdbOp::VxlanSet { mac: A, dst: d1 },
        FdbOp::VxlanSet { mac: B, dst: d2 },
        FdbOp::VxlanSet { mac: H, dst: d1 },
        FdbOp::BridgeSet {
            mac: A,
            port: BridgePort::Vxlan,
        },
        FdbOp::BridgeSet {
            mac: B,
            port: BridgePort::Vxlan,
        },
        FdbOp::BridgeSet {
            mac: C,
            port: BridgePort::Tap,
        },
    ];
    k.apply("wb-tap", &ops).expect("apply");
    let want = KernelFdb {
        vxlan: BTreeMap::from([(A, d1), (B, d2), (H, d1)]),
        bridge: BTreeMap::from([
            (A, BridgePort::Vxlan),
            (B, BridgePort::Vxlan),
            (C, BridgePort::Tap),
        ]),
    };
    assert_eq!(k.read_fdb("wb-tap").expect("read"), want);
    assert_eq!(fdb_from_bridge_tool(&ns), want);

    // The local heartbeat entry (twice: idempotent) is not one of weft's entries on a port.
    k.set_local_heartbeat_mac(H).expect("local");
    k.set_local_heartbeat_mac(H).expect("local again");
    let local = ns.bridge(&["fdb", "show", "dev", "wb"]);
    assert!(
        local.contains(&format!("{} master wb permanent", format_mac(H))),
        "{local}"
    );
    assert_eq!(k.read_fdb("wb-tap").expect("read"), want);

    // A moves to the sleeve, C to the fast path, B's peer changes address.
    let d3 = Ipv4Addr::new(10, 0, 0, 9);
    let ops = [
        FdbOp::BridgeSet {
            mac: A,
            port: BridgePort::Tap,
        },
        FdbOp::VxlanDel { mac: A },
        FdbOp::VxlanSet { mac: C, dst: d2 },
        FdbOp::BridgeSet {
            mac: C,
            port: BridgePort::Vxlan,
        },
        FdbOp::VxlanSet { mac: B, dst: d3 },
    ];
    k.apply("wb-tap", &ops).expect("apply moves");
    let want = KernelFdb {
        vxlan: BTreeMap::from([(B, d3), (C, d2), (H, d1)]),
        bridge: BTreeMap::from([
            (A, BridgePort::Tap),
            (B, BridgePort::Vxlan),
            (C, BridgePort::Vxlan),
        ]),
    };
    assert_eq!(k.read_fdb("wb-tap").expect("read"), want);
    assert_eq!(fdb_from_bridge_tool(&ns), want);
    // One remote per MAC (replaced, not appended).
    let b_lines = ns.bridge(&["fdb", "show", "dev", "wb-vxlan"]);
    assert_eq!(b_lines.matches(&format_mac(B)).count(), 2, "{b_lines}");

    // Every op is tried: a TAP that is not there fails its op alone, with its errno.
    let err = k
        .apply(
            "nosuch",
            &[
                FdbOp::BridgeSet {
                    mac: A,
                    port: BridgePort::Tap,
                },
                FdbOp::VxlanSet { mac: A, dst: d1 },
            ],
        )
        .expect_err("no TAP");
    assert_eq!(err.attempted, 2);
    assert_eq!(err.failures.len(), 1, "{err}");
    assert_eq!(err.failures[0].errno, Some(libc::ENODEV));
    assert_eq!(k.read_fdb("wb-tap").expect("read").vxlan.get(&A), Some(&d1));

    // Everything deleted; deleting what is gone already is no failure.
    let ops = [
        FdbOp::BridgeDel { mac: A },
        FdbOp::BridgeDel { mac: B },
        FdbOp::BridgeDel { mac: C },
        FdbOp::BridgeDel { mac: C },
        FdbOp::VxlanDel { mac: A },
        FdbOp::VxlanDel { mac: B },
        FdbOp::VxlanDel { mac: C },
        FdbOp::VxlanDel { mac: H },
        FdbOp::VxlanDel { mac: H },
    ];
    k.apply("wb-tap", &ops).expect("delete");
    assert_eq!(k.read_fdb("wb-tap").expect("read"), KernelFdb::default());
    assert_eq!(fdb_from_bridge_tool(&ns), KernelFdb::default());

    // Another port: the device differs, so it is made anew (its entries go with the old one).
    k.apply("wb-tap", &[FdbOp::VxlanSet { mac: A, dst: d1 }])
        .expect("apply");
    let remade = k.ensure_device(&spec(6799)).expect("ensure other port");
    assert!(!remade.adopted);
    let link = &ns.json("ip", &["-d", "link", "show", "wb-vxlan"])[0];
    assert_eq!(link["linkinfo"]["info_data"]["port"], 6799);
    assert_eq!(k.read_fdb("wb-tap").expect("read"), KernelFdb::default());

    assert!(k.remove_device(&spec(6799)).expect("remove"));
    assert!(!k.remove_device(&spec(6799)).expect("remove again"));
    assert!(k.read_fdb("wb-tap").is_err());
}

/// Receives the next frame of `sock` within the deadline.
fn recv_within(sock: &PacketSocket, buf: &mut [u8], deadline: Duration) -> Option<(usize, u32)> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Some(got) = sock.recv(buf).expect("recv") {
            return Some(got);
        }
        sock.wait_readable(Duration::from_millis(100))
            .expect("poll");
    }
    None
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize, tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend(dst);
    f.extend(src);
    f.extend(HB.to_be_bytes());
    f.resize(len, tag);
    f
}

#[test]
fn a_heartbeat_crosses_the_vxlan_path_full_size_and_never_reaches_a_pod() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (a, b) = (Ns::new("wvx", "a"), Ns::new("wvx", "b"));
    a.ip(&[
        "link", "add", "ua", "type", "veth", "peer", "name", "ub", "netns", &b.0,
    ]);
    a.ip(&["addr", "add", "10.201.0.1/24", "dev", "ua"]);
    a.ip(&["link", "set", "ua", "up"]);
    b.ip(&["addr", "add", "10.201.0.2/24", "dev", "ub"]);
    b.ip(&["link", "set", "ub", "up"]);
    let (ua, ub) = (Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2));
    // A pod on B's bridge, whose MAC B's bridge knows.
    const POD: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 5];
    let (hb_a, hb_b) = ([0x06, 0xbb, 0, 0, 0, 0xa], [0x06, 0xbb, 0, 0, 0, 0xb]);

    let mut kernels = Vec::new();
    for ns in [&a, &b] {
        bridge_with_tap(ns);
        let mut k = NetlinkKernel::open_in(&ns.path()).expect("netlink");
        k.ensure_device(&spec(6784)).expect("ensure");
        kernels.push(k);
    }
    b.ip(&["link", "add", "pod", "type", "veth", "peer", "name", "podp"]);
    b.ip(&["link", "set", "pod", "master", "wb", "up"]);
    b.ip(&["link", "set", "podp", "address", &format_mac(POD), "up"]);
    // Replace: the bridge may have learned it already (the pod end sends IPv6 DAD).
    b.bridge(&[
        "fdb",
        "replace",
        &format_mac(POD),
        "dev",
        "pod",
        "master",
        "static",
    ]);

    kernels[0]
        .apply(
            "wb-tap",
            &[
                FdbOp::VxlanSet { mac: hb_b, dst: ub },
                FdbOp::VxlanSet { mac: POD, dst: ub },
            ],
        )
        .expect("A's entries");
    kernels[0].set_local_heartbeat_mac(hb_a).expect("A local");
    kernels[1]
        .apply("wb-tap", &[FdbOp::VxlanSet { mac: hb_a, dst: ua }])
        .expect("B's entries");
    kernels[1].set_local_heartbeat_mac(hb_b).expect("B local");

    let (a_vx, b_vx, b_pod) = (a.index("wb-vxlan"), b.index("wb-vxlan"), b.index("podp"));
    let send = a.packet(|| PacketSocket::open(a.index("wb-vxlan"), HB, false));
    let recv = b.packet(|| PacketSocket::open_incoming(b_vx, HB, hb_b));
    let pod = b.packet(|| PacketSocket::open(b_pod, HB, false));
    // The local entry sends heartbeats up to the bridge device; there PACKET_ORIGDEV names the
    // bridge, not the port (the bridge hands them up in a second receive), which is why the
    // router receives on the VXLAN device itself (`open_incoming`).
    let b_br = b.index("wb");
    let up = b.packet(|| PacketSocket::open(b_br, HB, true));
    assert_eq!(send.ifindex(), a_vx);

    let mut buf = vec![0u8; 4096];
    // Small, then full size: the device MTU of payload (1450) plus the Ethernet header; the
    // outer packet is 1500 bytes with DF set, exactly the underlay MTU.
    for (len, tag) in [(60, 1u8), (1450 + 14, 2u8)] {
        let hb = frame(hb_b, hb_a, len, tag);
        // Retried until the first arrives (the underlay neighbour is resolved on the way).
        let end = Instant::now() + Duration::from_secs(10);
        let got = loop {
            send.send(&hb).expect("send heartbeat");
            // (A late copy of an earlier, smaller heartbeat is skipped.)
            if let Some(got) = recv_within(&recv, &mut buf, Duration::from_millis(500))
                && buf[len - 1] == tag
            {
                break got;
            }
            assert!(Instant::now() < end, "no heartbeat of {len} bytes arrived");
        };
        assert_eq!(got, (len, b_vx), "the frame and the port it came in on");
        assert_eq!(&buf[..len], &hb[..]);
        while recv.recv(&mut buf).expect("drain").is_some() {}
        let got = loop {
            let got =
                recv_within(&up, &mut buf, Duration::from_secs(10)).expect("up to the bridge");
            if buf[got.0 - 1] == tag {
                break got;
            }
        };
        assert_eq!(got, (len, b_br));
        while up.recv(&mut buf).expect("drain").is_some() {}
    }
    // Larger than the device MTU: refused at the sender, not fragmented.
    let too_big = frame(hb_b, hb_a, 1451 + 14, 3);
    let err = send.send(&too_big).expect_err("over the MTU");
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{err}");

    // Then a frame for the pod, on the same path: it arrives, and it is the first frame the pod
    // sees — the heartbeats before it went up to the bridge, not to the pod.
    let marker = frame(POD, hb_a, 60, 7);
    send.send(&marker).expect("send to pod");
    let got = recv_within(&pod, &mut buf, Duration::from_secs(10)).expect("the pod's frame");
    assert_eq!(&buf[..got.0], &marker[..], "the pod saw a heartbeat");
    // And the pod's frame did not go to B's router socket (its filter keeps only frames to B's
    // heartbeat MAC).
    assert!(recv.recv(&mut buf).expect("recv").is_none());
}

#[test]
fn a_device_left_behind_is_adopted_with_its_fdb_and_one_that_differs_is_remade() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = Ns::new("wvx", "r");
    bridge_with_tap(&ns);
    let vni = DEFAULT_VNI.to_string();
    // Made by hand as weft makes it, but not on the bridge and down: adopted, then joined.
    ns.ip(&[
        "link",
        "add",
        "wb-vxlan",
        "type",
        "vxlan",
        "id",
        &vni,
        "dstport",
        "6784",
        "nolearning",
        "df",
        "set",
    ]);
    let index = ns.index("wb-vxlan");
    let mut k = NetlinkKernel::open_in(&ns.path()).expect("netlink");
    let state = k.ensure_device(&spec(6784)).expect("ensure");
    assert!(state.adopted);
    assert_eq!(state.index, index);
    let link = &ns.json("ip", &["-d", "link", "show", "wb-vxlan"])[0];
    assert_eq!(
        (&link["master"], &link["mtu"]),
        (&"wb".into(), &1450.into())
    );
    let port = &ns.json("bridge", &["-d", "link", "show", "dev", "wb-vxlan"])[0];
    for flag in ["learning", "flood", "mcast_flood", "bcast_flood"] {
        assert_eq!(port[flag], false, "{flag}: {port}");
    }
    // A restarting router adopts it again: its entries stay as they are.
    let d = Ipv4Addr::new(10, 0, 0, 2);
    k.apply(
        "wb-tap",
        &[
            FdbOp::VxlanSet { mac: A, dst: d },
            FdbOp::BridgeSet {
                mac: A,
                port: BridgePort::Vxlan,
            },
        ],
    )
    .expect("apply");
    let before = k.read_fdb("wb-tap").expect("read");
    let mut restarted = NetlinkKernel::open_in(&ns.path()).expect("netlink");
    assert!(restarted.ensure_device(&spec(6784)).expect("adopt").adopted);
    assert_eq!(restarted.read_fdb("wb-tap").expect("read"), before);

    // Learning on (the default of `ip link add type vxlan`): not weft's device, remade.
    ns.ip(&["link", "del", "wb-vxlan"]);
    ns.ip(&[
        "link", "add", "wb-vxlan", "type", "vxlan", "id", &vni, "dstport", "6784",
    ]);
    assert!(!k.ensure_device(&spec(6784)).expect("remake").adopted);
    let data = &ns.json("ip", &["-d", "link", "show", "wb-vxlan"])[0]["linkinfo"]["info_data"];
    assert_eq!(
        (&data["learning"], &data["df"]),
        (&false.into(), &"set".into())
    );
    // Another kind of device of that name: remade too.
    ns.ip(&["link", "del", "wb-vxlan"]);
    ns.ip(&[
        "link",
        "add",
        "wb-vxlan",
        "type",
        "veth",
        "peer",
        "name",
        "wb-vxlanp",
    ]);
    assert!(!k.ensure_device(&spec(6784)).expect("remake").adopted);
    assert_eq!(
        ns.json("ip", &["-d", "link", "show", "wb-vxlan"])[0]["linkinfo"]["info_kind"],
        "vxlan"
    );
    // No bridge: refused, named.
    let other = DeviceSpec {
        bridge: "nosuch".into(),
        ..spec(6784)
    };
    let err = k.ensure_device(&other).expect_err("no bridge");
    assert_eq!(err.to_string(), "no bridge nosuch");
}
