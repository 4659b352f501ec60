//! The Open vSwitch netlink client against the real kernel module. Runs in the kernel VM
//! (`run-in-kernel-vm`); without the module the tests print why and pass.
//!
//! `capture_ovs_fixtures` (ignored) writes every request and reply as hex into
//! `tests/fixtures/ovs/` for the host's golden-byte tests:
//! `run-in-kernel-vm --rw $PWD/datapath/tests/fixtures/ovs -- <test binary> --ignored capture_`

mod ovs_common;
use ovs_common::{MAC_A, MAC_B, VXLAN_PORT, arp_frame, flows_put, group_flow};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_datapath::ovs::socket::{Exchange, decode_upcall_datagram};
use weft_datapath::ovs::{
    Flow, FlowAction, MacMatch, OvsError, OvsSocket, UpcallKind, UpcallSocket, VportSpec, VportType,
};

/// Deletes the datapath (and with it its vports) however the test ends.
struct DatapathGuard(String);

impl Drop for DatapathGuard {
    fn drop(&mut self) {
        if let Ok(mut sock) = OvsSocket::open() {
            let _ = sock.delete_datapath(&self.0);
        }
    }
}

fn open_or_skip() -> Option<OvsSocket> {
    match OvsSocket::open() {
        Ok(s) => Some(s),
        Err(OvsError::NoOvs) => {
            println!("skipped: no openvswitch module");
            None
        }
        Err(e) => panic!("open: {e}"),
    }
}

/// Steps of the lifecycle, named for the fixture files.
type Recorded = Vec<(String, Exchange)>;

/// The datapath's flows as the kernel dumps them, sorted.
fn dumped_flows(sock: &mut OvsSocket, dp_ifindex: i32) -> Vec<Flow> {
    sorted(
        sock.flows(dp_ifindex)
            .expect("flow dump")
            .into_iter()
            .map(|e| e.flow)
            .collect(),
    )
}

fn sorted(mut flows: Vec<Flow>) -> Vec<Flow> {
    flows.sort();
    flows
}

fn step(sock: &mut OvsSocket, out: &mut Recorded, name: &str) {
    for (i, e) in sock.take_recorded().into_iter().enumerate() {
        let n = if i == 0 {
            name.to_string()
        } else {
            format!("{name}_{i}")
        };
        out.push((n, e));
    }
}

/// A flow another program put without a UFID and with an action weft never uses
/// (`push_vlan`): the dump still reads, with that flow raw, and deleting it by its key works.
fn foreign_flow_is_read_raw_and_deleted(
    sock: &mut OvsSocket,
    dp_ifindex: i32,
    in_port: u32,
    weft_flow: &Flow,
) {
    use weft_datapath::ovs::msg::{CMD_NEW, Family, NLM_F_ACK, NLM_F_CREATE, Request};
    use weft_datapath::ovs::nla::NlaWriter;
    use weft_datapath::ovs::{FlowMatch, flow, key};
    const OVS_ACTION_ATTR_PUSH_VLAN: u16 = 4;
    let matching = FlowMatch {
        in_port,
        eth_src: None,
        eth_dst: Some(MacMatch::exact([0x02, 0, 0, 0, 0, 0x0c])),
        tunnel: None,
    };
    let mut actions = NlaWriter::new();
    // TPID 0x8100, TCI with the CFI bit (the kernel wants it) and VLAN 1.
    actions.put(OVS_ACTION_ATTR_PUSH_VLAN, &[0x81, 0x00, 0x10, 0x01]);
    actions.put_u32(1, in_port);
    let mut attrs = NlaWriter::new();
    attrs.put(flow::OVS_FLOW_ATTR_KEY, &key::encode_key(&matching));
    attrs.put(flow::OVS_FLOW_ATTR_MASK, &key::encode_mask(&matching));
    attrs.put(flow::OVS_FLOW_ATTR_ACTIONS, &actions.into_bytes());
    sock.request(&Request {
        family: Family::Flow,
        cmd: CMD_NEW,
        flags: NLM_F_ACK | NLM_F_CREATE,
        dp_ifindex,
        attrs: attrs.into_bytes(),
        what: "a foreign flow".into(),
    })
    .expect("put a flow with push_vlan");
    let (entries, raw) = sock
        .dump_flows(dp_ifindex)
        .expect("dump with a foreign flow");
    let entries: Vec<Flow> = entries.into_iter().map(|e| e.flow).collect();
    assert_eq!(entries, vec![weft_flow.clone()]);
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert!(raw[0].error.contains("action 4"), "{raw:?}");
    assert!(
        sock.delete_raw_flow(dp_ifindex, &raw[0])
            .expect("delete it")
    );
    let (entries, raw) = sock.dump_flows(dp_ifindex).expect("dump after");
    assert_eq!((entries.len(), raw.len()), (1, 0));
}

/// The whole lifecycle; returns each step's bytes.
fn lifecycle(sock: &mut OvsSocket, upcalls: Option<&UpcallSocket>) -> Recorded {
    let pid = std::process::id();
    let dp_name = format!("wkt{pid}");
    let _guard = DatapathGuard(dp_name.clone());
    let mut rec = Recorded::new();
    sock.record();

    let dp = sock.create_datapath(&dp_name, 0).expect("create datapath");
    step(sock, &mut rec, "dp_new");
    assert_eq!(dp.name, dp_name);
    assert!(dp.ifindex > 0);
    let got = sock.datapath(&dp_name).expect("get").expect("exists");
    step(sock, &mut rec, "dp_get");
    assert_eq!(got.ifindex, dp.ifindex);
    assert_eq!(sock.datapath("wktnone").unwrap(), None);
    step(sock, &mut rec, "dp_get_missing");

    let upcall_pid = upcalls.map_or(0, UpcallSocket::pid);
    let internal = sock
        .create_vport(
            dp.ifindex,
            &VportSpec {
                name: format!("wki{pid}"),
                kind: VportType::Internal,
                dst_port: None,
                upcall_pid,
            },
        )
        .expect("internal vport");
    step(sock, &mut rec, "vport_new_internal");
    assert_eq!(internal.kind, VportType::Internal);
    let vxlan = sock
        .create_vport(
            dp.ifindex,
            &VportSpec {
                name: format!("wkx{pid}"),
                kind: VportType::Vxlan,
                dst_port: Some(VXLAN_PORT),
                upcall_pid,
            },
        )
        .expect("vxlan vport");
    step(sock, &mut rec, "vport_new_vxlan");
    assert_eq!(vxlan.kind, VportType::Vxlan);
    assert_eq!(vxlan.dst_port, Some(VXLAN_PORT));
    assert_eq!(vxlan.name, format!("wkx{pid}"));

    let vports = sock.vports(dp.ifindex).expect("vport dump");
    step(sock, &mut rec, "vport_dump");
    let names: BTreeMap<u32, String> = vports.iter().map(|v| (v.port_no, v.name.clone())).collect();
    assert_eq!(names.get(&0), Some(&dp_name));
    assert_eq!(names.get(&internal.port_no), Some(&internal.name));
    assert_eq!(names.get(&vxlan.port_no), Some(&vxlan.name));

    let (to_peer, from_peer) = flows_put(internal.port_no, vxlan.port_no);
    sock.put_flow(dp.ifindex, &to_peer)
        .expect("put flow to peer");
    step(sock, &mut rec, "flow_new_set_tunnel");
    sock.put_flow(dp.ifindex, &from_peer)
        .expect("put flow from peer");
    step(sock, &mut rec, "flow_new_tunnel_match");
    let dumped = dumped_flows(sock, dp.ifindex);
    step(sock, &mut rec, "flow_dump_two");
    assert_eq!(dumped, sorted(vec![to_peer.clone(), from_peer.clone()]));

    assert!(
        sock.delete_flow(dp.ifindex, &to_peer.matching)
            .expect("del")
    );
    step(sock, &mut rec, "flow_del");
    assert!(
        !sock
            .delete_flow(dp.ifindex, &to_peer.matching)
            .expect("del again")
    );
    step(sock, &mut rec, "flow_del_missing");
    let left = dumped_flows(sock, dp.ifindex);
    step(sock, &mut rec, "flow_dump_one");
    assert_eq!(left, vec![from_peer.clone()]);

    // A put over a flow with the same match replaces its actions (the kernel refuses
    // NLM_F_CREATE with EEXIST; the socket then sends SET by the flow's UFID), also for this
    // flow matching a tunnel.
    let mut rerouted = from_peer.clone();
    rerouted.actions = vec![FlowAction::Output(internal.port_no)];
    sock.put_flow(dp.ifindex, &rerouted)
        .expect("put over an existing flow");
    step(sock, &mut rec, "flow_replace");
    let replaced = dumped_flows(sock, dp.ifindex);
    step(sock, &mut rec, "flow_dump_replaced");
    assert_eq!(replaced, vec![rerouted]);
    sock.put_flow(dp.ifindex, &from_peer).expect("put back");
    step(sock, &mut rec, "flow_replace_back");
    // And one without a tunnel match, replaced in place.
    let mut to_other = to_peer.clone();
    if let Some(FlowAction::SetTunnel(t)) = to_other.actions.first_mut() {
        t.dst = Ipv4Addr::new(10, 0, 0, 9);
    }
    sock.put_flow(dp.ifindex, &to_peer)
        .expect("put to peer again");
    sock.put_flow(dp.ifindex, &to_other).expect("put over it");
    step(sock, &mut rec, "flow_replace_outbound");
    let now = dumped_flows(sock, dp.ifindex);
    step(sock, &mut rec, "flow_dump_replaced_outbound");
    assert_eq!(now, sorted(vec![to_other.clone(), from_peer.clone()]));
    assert!(sock.delete_flow(dp.ifindex, &to_other.matching).unwrap());
    step(sock, &mut rec, "flow_del_replaced_outbound");
    // The group flow: a masked destination and two copies.
    let group = group_flow(internal.port_no, vxlan.port_no);
    sock.put_flow(dp.ifindex, &group).expect("put group flow");
    step(sock, &mut rec, "flow_new_group");
    let with_group = dumped_flows(sock, dp.ifindex);
    step(sock, &mut rec, "flow_dump_group");
    assert_eq!(with_group, sorted(vec![group.clone(), from_peer.clone()]));
    assert!(sock.delete_flow(dp.ifindex, &group.matching).unwrap());
    step(sock, &mut rec, "flow_del_group");
    foreign_flow_is_read_raw_and_deleted(sock, dp.ifindex, internal.port_no, &from_peer);
    // Not part of the captured lifecycle.
    sock.take_recorded();

    // A broadcast ARP request, sent up to the upcall socket by the Userspace action.
    let frame = arp_frame();
    let actions = [FlowAction::Userspace { pid: upcall_pid }];
    sock.execute(dp.ifindex, &frame, internal.port_no, &actions)
        .expect("execute");
    step(sock, &mut rec, "packet_execute");
    if let Some(upcalls) = upcalls {
        let mut buf = vec![0; 70_000];
        let deadline = Instant::now() + Duration::from_secs(5);
        let n = loop {
            match upcalls.recv_datagram(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no upcall in 5 s");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("upcall recv: {e}"),
            }
        };
        rec.push((
            "upcall_action".into(),
            Exchange {
                request: Vec::new(),
                replies: vec![buf[..n].to_vec()],
            },
        ));
        let upcall = decode_upcall_datagram(&buf[..n])
            .unwrap()
            .expect("an upcall");
        assert_eq!(upcall.kind, UpcallKind::Action);
        assert_eq!(upcall.packet, frame);
        assert_eq!(upcall.in_port, Some(internal.port_no));
        assert_eq!(upcall.eth_src, Some(MAC_A));
        assert_eq!(upcall.eth_dst, Some([0xff; 6]));
    }

    if let Some(upcalls) = upcalls {
        // A miss: the internal port going up makes the host send (IPv6 DAD, MLD) into the
        // datapath, where no flow matches packets from it.
        let mut route = weft_netlink::RouteSocket::open().expect("rtnetlink");
        let link = route
            .link_by_name(&internal.name)
            .expect("link")
            .expect("internal port's netdev");
        route.set_up(link.header.index).expect("set up");
        let mut buf = vec![0; 70_000];
        let deadline = Instant::now() + Duration::from_secs(10);
        let (n, upcall) = loop {
            match upcalls.recv_datagram(&mut buf) {
                Ok(n) => match decode_upcall_datagram(&buf[..n]).unwrap() {
                    Some(u) if u.kind == UpcallKind::Miss => break (n, u),
                    _ => {}
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no miss upcall in 10 s");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("upcall recv: {e}"),
            }
        };
        rec.push((
            "upcall_miss".into(),
            Exchange {
                request: Vec::new(),
                replies: vec![buf[..n].to_vec()],
            },
        ));
        assert_eq!(upcall.in_port, Some(internal.port_no));
        assert_eq!(upcall.dp_ifindex, dp.ifindex);
        assert_eq!(
            upcall.eth_src,
            Some(upcall.packet[6..12].try_into().unwrap())
        );
        assert_eq!(upcall.eth_dst, Some(upcall.packet[..6].try_into().unwrap()));
        assert_eq!(upcall.tunnel, None);
    }

    if let Some(upcalls) = upcalls {
        // Nothing else is sent: the timeout ends the wait.
        let mut buf = vec![0; 70_000];
        while upcalls
            .recv_timeout(&mut buf, Duration::from_millis(300))
            .expect("recv_timeout")
            .is_some()
        {}
    }
    sock.flush_flows(dp.ifindex).expect("flush");
    step(sock, &mut rec, "flow_flush");
    assert!(sock.flows(dp.ifindex).unwrap().is_empty());
    step(sock, &mut rec, "flow_dump_empty");

    assert!(
        sock.delete_vport(dp.ifindex, vxlan.port_no)
            .expect("del vxlan")
    );
    step(sock, &mut rec, "vport_del");
    assert!(
        !sock
            .delete_vport(dp.ifindex, vxlan.port_no)
            .expect("del again")
    );
    step(sock, &mut rec, "vport_del_missing");
    assert!(
        sock.delete_vport(dp.ifindex, internal.port_no)
            .expect("del internal")
    );
    step(sock, &mut rec, "vport_del_internal");
    assert!(sock.delete_datapath(&dp_name).expect("del dp"));
    step(sock, &mut rec, "dp_del");
    assert!(!sock.delete_datapath(&dp_name).expect("del dp again"));
    step(sock, &mut rec, "dp_del_missing");
    assert_eq!(sock.datapath(&dp_name).unwrap(), None);
    rec
}

#[test]
fn kernel_ovs_datapath_vports_flows_and_upcalls() {
    let Some(mut sock) = open_or_skip() else {
        return;
    };
    let upcalls = UpcallSocket::open().expect("upcall socket");
    lifecycle(&mut sock, Some(&upcalls));
}

fn hex(bytes: &[u8]) -> String {
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.push('\n');
    s
}

/// Sequence number and port id out of a request, so fixtures do not depend on the run.
fn normalise_request(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() >= 16 {
        bytes[8..16].fill(0);
    }
    bytes
}

#[test]
#[ignore = "writes fixtures; run in the kernel VM with --rw on the fixture directory"]
fn capture_ovs_fixtures() {
    let Some(mut sock) = open_or_skip() else {
        return;
    };
    let upcalls = UpcallSocket::open().expect("upcall socket");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ovs");
    std::fs::create_dir_all(&dir).unwrap();
    let pid = std::process::id();
    let ids = sock.family_ids();
    std::fs::write(
        dir.join("meta.txt"),
        format!(
            "pid {pid}\nupcall_pid {}\nfamily ovs_datapath {}\nfamily ovs_vport {}\nfamily ovs_flow {}\nfamily ovs_packet {}\n",
            upcalls.pid(),
            ids.datapath,
            ids.vport,
            ids.flow,
            ids.packet
        ),
    )
    .unwrap();
    for (name, e) in lifecycle(&mut sock, Some(&upcalls)) {
        if !e.request.is_empty() {
            std::fs::write(
                dir.join(format!("{name}.request.hex")),
                hex(&normalise_request(e.request)),
            )
            .unwrap();
        }
        for (i, reply) in e.replies.iter().enumerate() {
            std::fs::write(dir.join(format!("{name}.reply{i}.hex")), hex(reply)).unwrap();
        }
    }
}

/// What the kernel accepts for masked flows with only weft's fields: prints the errno of each
/// variant (run in the VM with `--ignored probe_ --nocapture`).
#[test]
#[ignore = "prints what the kernel accepts; run in the kernel VM"]
fn probe_ovs_flow_key_requirements() {
    use weft_datapath::ovs::flow::{OVS_FLOW_ATTR_ACTIONS, OVS_FLOW_ATTR_KEY, OVS_FLOW_ATTR_MASK};
    use weft_datapath::ovs::key::*;
    use weft_datapath::ovs::msg::{CMD_DEL, CMD_NEW, Family, NLM_F_ACK, NLM_F_CREATE, Request};
    use weft_datapath::ovs::nla::NlaWriter;

    let Some(mut sock) = open_or_skip() else {
        return;
    };
    let dp_name = format!("wkp{}", std::process::id());
    let _guard = DatapathGuard(dp_name.clone());
    let dp = sock.create_datapath(&dp_name, 0).unwrap().ifindex;
    let vx = sock
        .create_vport(
            dp,
            &VportSpec {
                name: format!("wkq{}", std::process::id()),
                kind: VportType::Vxlan,
                dst_port: Some(VXLAN_PORT + 1),
                upcall_pid: 0,
            },
        )
        .unwrap()
        .port_no;
    let attrs = |key: &dyn Fn(&mut NlaWriter), mask: &dyn Fn(&mut NlaWriter), actions: bool| {
        let mut w = NlaWriter::new();
        w.nested(OVS_FLOW_ATTR_KEY, |k| key(k));
        w.nested(OVS_FLOW_ATTR_MASK, |m| mask(m));
        if actions {
            w.nested(OVS_FLOW_ATTR_ACTIONS, |a| a.put_u32(1, 0));
        }
        w.into_bytes()
    };
    let mut try_req = |label: &str, cmd: u8, attrs: Vec<u8>| {
        let req = Request {
            family: Family::Flow,
            cmd,
            flags: NLM_F_ACK | if cmd == CMD_NEW { NLM_F_CREATE } else { 0 },
            dp_ifindex: dp,
            attrs,
            what: label.into(),
        };
        match sock.request(&req) {
            Ok(_) => println!("probe {label}: ok"),
            Err(e) => println!("probe {label}: {e}"),
        }
    };
    let in_port = |k: &mut NlaWriter| k.put_u32(OVS_KEY_ATTR_IN_PORT, vx);
    let in_port_mask = |k: &mut NlaWriter| k.put_u32(OVS_KEY_ATTR_IN_PORT, u32::MAX);
    let tunnel = |dst: bool, ttl: bool| {
        move |k: &mut NlaWriter| {
            k.put_u32(OVS_KEY_ATTR_IN_PORT, vx);
            k.nested(OVS_KEY_ATTR_TUNNEL, |t| {
                t.put_be64(OVS_TUNNEL_KEY_ATTR_ID, 7);
                t.put(OVS_TUNNEL_KEY_ATTR_IPV4_SRC, &[10, 0, 0, 9]);
                if dst {
                    t.put(OVS_TUNNEL_KEY_ATTR_IPV4_DST, &[10, 0, 0, 1]);
                }
                if ttl {
                    t.put_u8(OVS_TUNNEL_KEY_ATTR_TTL, 64);
                }
            });
            k.put(OVS_KEY_ATTR_ETHERNET, &[0; 12]);
        }
    };
    let tunnel_mask = |k: &mut NlaWriter| {
        k.put_u32(OVS_KEY_ATTR_IN_PORT, u32::MAX);
        k.nested(OVS_KEY_ATTR_TUNNEL, |t| {
            t.put_be64(OVS_TUNNEL_KEY_ATTR_ID, 0xff_ffff);
            t.put(OVS_TUNNEL_KEY_ATTR_IPV4_SRC, &[0xff; 4]);
        });
        k.put(OVS_KEY_ATTR_ETHERNET, &[0; 12]);
    };
    try_req(
        "in_port only, no ETHERNET",
        CMD_NEW,
        attrs(&in_port, &in_port_mask, true),
    );
    let eth_key = |k: &mut NlaWriter| {
        k.put_u32(OVS_KEY_ATTR_IN_PORT, vx);
        k.put(OVS_KEY_ATTR_ETHERNET, &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    };
    let eth_mask = |k: &mut NlaWriter| {
        k.put_u32(OVS_KEY_ATTR_IN_PORT, u32::MAX);
        k.put(OVS_KEY_ATTR_ETHERNET, &[0xff; 12]);
    };
    try_req(
        "in_port+ETHERNET",
        CMD_NEW,
        attrs(&eth_key, &eth_mask, true),
    );
    let mut del_eth = NlaWriter::new();
    del_eth.nested(OVS_FLOW_ATTR_KEY, |k| eth_key(k));
    try_req(
        "DEL by key, in_port+ETHERNET",
        CMD_DEL,
        del_eth.into_bytes(),
    );
    let mut del_eth = NlaWriter::new();
    del_eth.nested(OVS_FLOW_ATTR_KEY, |k| eth_key(k));
    try_req(
        "DEL by key, in_port+ETHERNET again",
        CMD_DEL,
        del_eth.into_bytes(),
    );
    try_req(
        "mask ETHERNET without key ETHERNET",
        CMD_NEW,
        attrs(
            &in_port,
            &|m: &mut NlaWriter| {
                m.put_u32(OVS_KEY_ATTR_IN_PORT, u32::MAX);
                m.put(OVS_KEY_ATTR_ETHERNET, &[0xff; 12]);
            },
            true,
        ),
    );
    try_req(
        "tunnel key without dst, ttl",
        CMD_NEW,
        attrs(&tunnel(false, false), &tunnel_mask, true),
    );
    try_req(
        "tunnel key without ttl",
        CMD_NEW,
        attrs(&tunnel(true, false), &tunnel_mask, true),
    );
    try_req(
        "tunnel key without dst",
        CMD_NEW,
        attrs(&tunnel(false, true), &tunnel_mask, true),
    );
    try_req(
        "tunnel key with dst, ttl",
        CMD_NEW,
        attrs(&tunnel(true, true), &tunnel_mask, true),
    );
    let mut del_key = NlaWriter::new();
    del_key.nested(OVS_FLOW_ATTR_KEY, |k| tunnel(true, true)(k));
    try_req("DEL by key, tunnel", CMD_DEL, del_key.into_bytes());
    let mut del_key = NlaWriter::new();
    del_key.nested(OVS_FLOW_ATTR_KEY, |k| tunnel(true, true)(k));
    try_req("DEL by key, tunnel again", CMD_DEL, del_key.into_bytes());
    try_req("flush", CMD_DEL, Vec::new());
}

/// Flows weft changes in place: a second put of a match replaces its actions (NEW|CREATE
/// answers EEXIST, then SET by UFID), for an exact flow and for the group flow, whose masked
/// destination reads back from a dump as it was put.
#[test]
fn kernel_ovs_flows_are_replaced_in_place_and_the_group_flow_reads_back() {
    let Some(mut sock) = open_or_skip() else {
        return;
    };
    let pid = std::process::id();
    let dp_name = format!("wkr{pid}");
    let _guard = DatapathGuard(dp_name.clone());
    let dp = sock.create_datapath(&dp_name, 0).expect("create datapath");
    let vxlan = sock
        .create_vport(
            dp.ifindex,
            &VportSpec {
                name: format!("wkv{pid}"),
                kind: VportType::Vxlan,
                dst_port: Some(VXLAN_PORT),
                upcall_pid: 0,
            },
        )
        .expect("vxlan vport");
    let params = weft_datapath::ovs::flows::FlowParams {
        local: 0,
        vxlan: vxlan.port_no,
        vni: 42,
        tp_dst: VXLAN_PORT,
    };
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
    let none = std::collections::BTreeSet::new();
    for (table, group) in [
        (BTreeMap::from([(MAC_B, a)]), none.clone()),
        (BTreeMap::from([(MAC_B, b)]), [a, b].into_iter().collect()),
        (BTreeMap::from([(MAC_B, b)]), [b].into_iter().collect()),
        (BTreeMap::from([(MAC_B, a)]), none.clone()),
    ] {
        let wanted = params.flows(&table, &group);
        for flow in &wanted {
            sock.put_flow(dp.ifindex, flow)
                .unwrap_or_else(|e| panic!("put {flow:?}: {e}"));
        }
        // Inbound flows of peers no longer in the table stay: delete them as the plan would.
        for flow in dumped_flows(&mut sock, dp.ifindex) {
            if !wanted.iter().any(|w| w.matching == flow.matching) {
                sock.delete_flow(dp.ifindex, &flow.matching).expect("del");
            }
        }
        let got = dumped_flows(&mut sock, dp.ifindex);
        assert_eq!(got, wanted.iter().cloned().collect::<Vec<_>>());
        let (read, foreign) = params.table(&got);
        assert_eq!((read, foreign), (table, vec![]));
        let groups: Vec<_> = got.iter().filter_map(|f| params.group_dsts(f)).collect();
        assert_eq!(groups, vec![group]);
    }
    assert!(
        sock.delete_flow(dp.ifindex, &params.group_match())
            .expect("del group")
    );
    assert_eq!(
        dumped_flows(&mut sock, dp.ifindex)
            .iter()
            .filter(|f| f.matching.eth_dst == Some(MacMatch::GROUP))
            .count(),
        0
    );
}
