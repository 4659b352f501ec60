//! The OVS codecs against bytes captured from the real kernel (Debian 6.1, in the kernel VM,
//! by `capture_ovs_fixtures` in `ovs_kernel.rs`): every request weft encodes equals the one it
//! sent byte for byte (sequence number and port id normalised to 0), and every reply decodes
//! to what the lifecycle did. Runs on the host; no kernel module needed.

mod ovs_common;
use ovs_common::{MAC_A, MAC_B, VXLAN_PORT, arp_frame, flows_put, group_flow};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use proptest::prelude::*;
use weft_datapath::ovs::flow::{self, UpcallKind};
use weft_datapath::ovs::msg::{self, Family, Incoming, Request};
use weft_datapath::ovs::socket::decode_upcall_datagram;
use weft_datapath::ovs::{
    DatapathInfo, Flow, FlowAction, FlowMatch, MacMatch, TunnelMatch, TunnelSet, VportInfo,
    VportSpec, VportType,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ovs")
}

fn fixture(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(dir().join(format!("{name}.hex")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// What the capture run used: the test's pid (in the names), the upcall socket's pid, the
/// family ids.
struct Meta {
    pid: u32,
    upcall_pid: u32,
    ids: BTreeMap<String, u16>,
}

fn meta() -> Meta {
    let text = std::fs::read_to_string(dir().join("meta.txt")).unwrap();
    let mut m = Meta {
        pid: 0,
        upcall_pid: 0,
        ids: BTreeMap::new(),
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pid", p] => m.pid = p.parse().unwrap(),
            ["upcall_pid", p] => m.upcall_pid = p.parse().unwrap(),
            ["family", name, id] => {
                m.ids.insert(name.to_string(), id.parse().unwrap());
            }
            _ => {}
        }
    }
    m
}

fn genl(bytes: &[u8]) -> Vec<(u8, i32, Vec<u8>)> {
    msg::split(bytes)
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            Incoming::Genl {
                cmd,
                dp_ifindex,
                attrs,
                ..
            } => Some((cmd, dp_ifindex, attrs.to_vec())),
            _ => None,
        })
        .collect()
}

fn errno_of(bytes: &[u8]) -> Option<i32> {
    match msg::split(bytes).unwrap().as_slice() {
        [Incoming::Error { errno, .. }] => Some(*errno),
        [Incoming::Ack { .. }] | [Incoming::Done { .. }] => None,
        other => panic!("not an ack: {other:?}"),
    }
}

fn datapath(name: &str) -> DatapathInfo {
    let (_, dp, attrs) = genl(&fixture(name)).remove(0);
    msg::decode_datapath(dp, &attrs).unwrap()
}

fn vport(name: &str) -> VportInfo {
    let (_, dp, attrs) = genl(&fixture(name)).remove(0);
    msg::decode_vport(dp, &attrs).unwrap()
}

#[test]
fn every_request_encodes_to_the_captured_bytes() {
    let m = meta();
    let dp_name = format!("wkt{}", m.pid);
    let dp = datapath("dp_new.reply0").ifindex;
    let internal = vport("vport_new_internal.reply0").port_no;
    let vxlan = vport("vport_new_vxlan.reply0").port_no;
    let (to_peer, from_peer) = flows_put(internal, vxlan);
    let group = group_flow(internal, vxlan);
    let spec = |name: String, kind, dst_port| VportSpec {
        name,
        kind,
        dst_port,
        upcall_pid: m.upcall_pid,
    };
    let expected: Vec<(&str, Request)> = vec![
        ("dp_new", msg::datapath_new(&dp_name, 0)),
        ("dp_get", msg::datapath_get(&dp_name)),
        ("dp_get_missing", msg::datapath_get("wktnone")),
        (
            "vport_new_internal",
            msg::vport_new(
                dp,
                &spec(format!("wki{}", m.pid), VportType::Internal, None),
            ),
        ),
        (
            "vport_new_vxlan",
            msg::vport_new(
                dp,
                &spec(format!("wkx{}", m.pid), VportType::Vxlan, Some(VXLAN_PORT)),
            ),
        ),
        ("vport_dump", msg::vport_dump(dp)),
        ("flow_new_set_tunnel", flow::flow_new(dp, &to_peer)),
        ("flow_new_tunnel_match", flow::flow_new(dp, &from_peer)),
        ("flow_dump_two", flow::flow_dump(dp)),
        ("flow_del", flow::flow_del(dp, &to_peer.matching)),
        ("flow_del_missing", flow::flow_del(dp, &to_peer.matching)),
        ("flow_dump_one", flow::flow_dump(dp)),
        ("flow_new_group", flow::flow_new(dp, &group)),
        ("flow_dump_group", flow::flow_dump(dp)),
        ("flow_del_group", flow::flow_del(dp, &group.matching)),
        (
            "packet_execute",
            flow::packet_execute(
                dp,
                &arp_frame(),
                internal,
                &[FlowAction::Userspace { pid: m.upcall_pid }],
            ),
        ),
        ("flow_flush", flow::flow_flush(dp)),
        ("flow_dump_empty", flow::flow_dump(dp)),
        ("vport_del", msg::vport_del(dp, vxlan)),
        ("vport_del_missing", msg::vport_del(dp, vxlan)),
        ("vport_del_internal", msg::vport_del(dp, internal)),
        ("dp_del", msg::datapath_del(&dp_name)),
        ("dp_del_missing", msg::datapath_del(&dp_name)),
    ];
    for (name, req) in &expected {
        let id = m.ids[req.family.name()];
        assert_eq!(
            req.encode(id, 0, 0),
            fixture(&format!("{name}.request")),
            "{name}"
        );
    }
    assert_eq!(expected.len(), 23);
}

#[test]
fn datapath_replies_decode() {
    let m = meta();
    let dp = datapath("dp_new.reply0");
    assert_eq!(dp.name, format!("wkt{}", m.pid));
    assert!(dp.ifindex > 0);
    assert_eq!(dp.user_features, Some(msg::DATAPATH_FEATURES));
    assert_eq!(dp.stats.flows, 0);
    assert_eq!(datapath("dp_get.reply0"), dp);
    assert_eq!(errno_of(&fixture("dp_new.reply1")), None);
    assert_eq!(
        errno_of(&fixture("dp_get_missing.reply0")),
        Some(libc::ENODEV)
    );
    assert_eq!(errno_of(&fixture("dp_del.reply0")), None);
    assert_eq!(
        errno_of(&fixture("dp_del_missing.reply0")),
        Some(libc::ENODEV)
    );
}

#[test]
fn vport_replies_decode() {
    let m = meta();
    let dp = datapath("dp_new.reply0").ifindex;
    let internal = vport("vport_new_internal.reply0");
    assert_eq!(internal.name, format!("wki{}", m.pid));
    assert_eq!(internal.kind, VportType::Internal);
    assert_eq!(internal.dst_port, None);
    assert_eq!(internal.upcall_pids, vec![m.upcall_pid]);
    assert_eq!(internal.dp_ifindex, dp);
    let vxlan = vport("vport_new_vxlan.reply0");
    assert_eq!(vxlan.name, format!("wkx{}", m.pid));
    assert_eq!(vxlan.kind, VportType::Vxlan);
    assert_eq!(vxlan.dst_port, Some(VXLAN_PORT));
    assert_ne!(internal.port_no, vxlan.port_no);
    assert!(internal.ifindex.is_some());

    let dumped: BTreeMap<u32, (String, VportType)> = genl(&fixture("vport_dump.reply0"))
        .into_iter()
        .map(|(_, dp, a)| msg::decode_vport(dp, &a).unwrap())
        .map(|v| (v.port_no, (v.name, v.kind)))
        .collect();
    assert_eq!(
        dumped,
        BTreeMap::from([
            (0, (format!("wkt{}", m.pid), VportType::Internal)),
            (internal.port_no, (internal.name, VportType::Internal)),
            (vxlan.port_no, (vxlan.name, VportType::Vxlan)),
        ])
    );
    assert_eq!(errno_of(&fixture("vport_dump.reply1")), None);
    assert_eq!(errno_of(&fixture("vport_del.reply0")), None);
    assert_eq!(
        errno_of(&fixture("vport_del_missing.reply0")),
        Some(libc::ENODEV)
    );
}

#[test]
fn dumped_flows_decode_to_what_was_put() {
    let internal = vport("vport_new_internal.reply0").port_no;
    let vxlan = vport("vport_new_vxlan.reply0").port_no;
    let (to_peer, from_peer) = flows_put(internal, vxlan);
    let decode = |name: &str| -> Vec<Flow> {
        let mut flows: Vec<Flow> = genl(&fixture(name))
            .into_iter()
            .map(|(_, _, a)| {
                let e = flow::decode_flow(&a).unwrap();
                assert_eq!((e.packets, e.bytes, e.used), (0, 0, None));
                e.flow
            })
            .collect();
        flows.sort();
        flows
    };
    let mut both = vec![to_peer.clone(), from_peer.clone()];
    both.sort();
    assert_eq!(decode("flow_dump_two.reply0"), both);
    assert_eq!(decode("flow_dump_one.reply0"), vec![from_peer.clone()]);
    assert_eq!(decode("flow_dump_empty.reply0"), vec![]);
    // The group flow: its masked destination and both copies come back as put.
    let mut with_group = vec![group_flow(internal, vxlan), from_peer];
    with_group.sort();
    assert_eq!(decode("flow_dump_group.reply0"), with_group);
    assert_eq!(errno_of(&fixture("flow_new_group.reply0")), None);
    assert_eq!(errno_of(&fixture("flow_del_group.reply0")), None);
    assert_eq!(errno_of(&fixture("flow_new_set_tunnel.reply0")), None);
    assert_eq!(errno_of(&fixture("flow_del.reply0")), None);
    assert_eq!(
        errno_of(&fixture("flow_del_missing.reply0")),
        Some(libc::ENOENT)
    );
    assert_eq!(errno_of(&fixture("flow_flush.reply0")), None);
    assert_eq!(errno_of(&fixture("packet_execute.reply0")), None);
}

#[test]
fn the_captured_upcall_decodes() {
    let internal = vport("vport_new_internal.reply0").port_no;
    let dp = datapath("dp_new.reply0").ifindex;
    let upcall = decode_upcall_datagram(&fixture("upcall_action.reply0"))
        .unwrap()
        .unwrap();
    assert_eq!(upcall.kind, UpcallKind::Action);
    assert_eq!(upcall.dp_ifindex, dp);
    assert_eq!(upcall.packet, arp_frame());
    assert_eq!(upcall.in_port, Some(internal));
    assert_eq!(upcall.eth_src, Some(MAC_A));
    assert_eq!(upcall.eth_dst, Some([0xff; 6]));
    assert_eq!(upcall.tunnel, None);
}

#[test]
fn a_kernel_error_names_the_request() {
    let req = flow::flow_new(
        7,
        &Flow {
            matching: FlowMatch {
                in_port: 2,
                eth_src: None,
                eth_dst: Some(MacMatch::exact(MAC_B)),
                tunnel: None,
            },
            actions: vec![],
        },
    );
    let e = msg::OvsError::Kernel {
        request: req.describe(),
        errno: libc::EINVAL,
    };
    assert_eq!(
        e.to_string(),
        "ovs_flow NEW on dp 7 in_port(2),eth_dst(02:00:00:00:00:0b): EINVAL (22)"
    );
    assert_eq!(msg::OvsError::NoOvs.to_string(), "no openvswitch module");
    assert_eq!(req.family, Family::Flow);
}

// Round trips and robustness.

fn mac() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>()
}

fn flow_match() -> impl Strategy<Value = FlowMatch> {
    (
        any::<u32>(),
        proptest::option::of(mac()),
        proptest::option::of(prop_oneof![
            mac().prop_map(MacMatch::exact),
            Just(MacMatch::GROUP),
            (mac(), mac().prop_filter("a mask", |m| *m != [0; 6]))
                .prop_map(|(addr, mask)| MacMatch::new(addr, mask)),
        ]),
        proptest::option::of((0u32..1 << 24, any::<[u8; 4]>())),
    )
        .prop_map(|(in_port, eth_src, eth_dst, tunnel)| FlowMatch {
            in_port,
            eth_src,
            eth_dst,
            tunnel: tunnel.map(|(id, src)| TunnelMatch {
                id,
                src: Ipv4Addr::from(src),
            }),
        })
}

fn action() -> impl Strategy<Value = FlowAction> {
    prop_oneof![
        any::<u32>().prop_map(FlowAction::Output),
        any::<u32>().prop_map(|pid| FlowAction::Userspace { pid }),
        (
            0u32..1 << 24,
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(
                |(id, dst, tp_dst, ttl, dont_fragment)| FlowAction::SetTunnel(TunnelSet {
                    id,
                    dst: Ipv4Addr::from(dst),
                    tp_dst,
                    ttl,
                    dont_fragment,
                })
            ),
    ]
}

proptest! {
    #[test]
    fn flows_round_trip(m in flow_match(), actions in proptest::collection::vec(action(), 0..4)) {
        // A flow request's attributes read back as a dump entry.
        let f = Flow { matching: m, actions };
        let req = flow::flow_new(3, &f);
        let entry = flow::decode_flow(&req.attrs).unwrap();
        prop_assert_eq!(entry.flow, f);
    }

    #[test]
    fn vports_round_trip(name in "[a-z0-9]{1,15}", vxlan in any::<bool>(), port in any::<u16>(), pid in any::<u32>()) {
        let spec = VportSpec {
            name: name.clone(),
            kind: if vxlan { VportType::Vxlan } else { VportType::Internal },
            dst_port: vxlan.then_some(port),
            upcall_pid: pid,
        };
        // The kernel's reply adds the port number to what was asked.
        let mut attrs = msg::vport_new(5, &spec).attrs;
        let mut w = weft_datapath::ovs::nla::NlaWriter::new();
        w.put_u32(msg::OVS_VPORT_ATTR_PORT_NO, 9);
        attrs.extend(w.into_bytes());
        let v = msg::decode_vport(5, &attrs).unwrap();
        prop_assert_eq!((v.name, v.kind, v.dst_port, v.upcall_pids, v.port_no), (name, spec.kind, spec.dst_port, vec![pid], 9));
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cmd in 0u8..4) {
        let _ = msg::split(&bytes);
        let _ = msg::decode_datapath(1, &bytes);
        let _ = msg::decode_vport(1, &bytes);
        let _ = flow::decode_flow(&bytes);
        let _ = flow::decode_upcall(cmd, 1, &bytes);
        let _ = decode_upcall_datagram(&bytes);
        let _ = weft_datapath::ovs::action::decode_actions(&bytes);
        let _ = weft_datapath::ovs::key::decode_match(&bytes, Some(&bytes));
    }

    #[test]
    fn decoders_never_panic_on_mutated_captures(i in 0usize..4, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let name = ["flow_dump_two.reply0", "vport_dump.reply0", "upcall_action.reply0", "dp_new.reply0"][i];
        let mut bytes = fixture(name);
        let at = at.index(bytes.len());
        bytes[at] = byte;
        if let Ok(msgs) = msg::split(&bytes) {
            for m in msgs {
                if let Incoming::Genl { cmd, dp_ifindex, attrs, .. } = m {
                    let _ = msg::decode_datapath(dp_ifindex, attrs);
                    let _ = msg::decode_vport(dp_ifindex, attrs);
                    let _ = flow::decode_flow(attrs);
                    let _ = flow::decode_upcall(cmd, dp_ifindex, attrs);
                }
            }
        }
    }
}

// ovs-dpctl's own requests (tests/fixtures/ovs/dpctl, captured on nlmon0 in the VM) as an
// independent reference for the encoding.

fn dpctl(name: &str) -> Vec<u8> {
    fixture(&format!("dpctl/{name}.request"))
}

/// (kind, payload) of each attribute after the ovs_header.
fn attrs_of(message: &[u8]) -> Vec<(u16, Vec<u8>)> {
    weft_datapath::ovs::nla::parse(&message[msg::PREFIX_LEN..])
        .unwrap()
        .into_iter()
        .map(|a| (a.kind, a.payload.to_vec()))
        .collect()
}

#[test]
fn a_flow_weft_puts_is_the_flow_ovs_dpctl_puts_plus_its_ufid() {
    // ovs-dpctl add-flow wkd "in_port(1),eth(src=0/0,dst=02:00:00:00:00:0b)"
    //   "set(tunnel(tun_id=0x2a,dst=10.0.0.2,ttl=64,tp_dst=14789,flags(df))),2"
    let theirs = dpctl("flow_new_set_tunnel");
    let (to_peer, _) = flows_put(1, 2);
    let ours = flow::flow_new(4, &to_peer);
    let mut ours_attrs = attrs_of(&ours.encode(0, 0, 0));
    let ufid = ours_attrs.pop().unwrap();
    assert_eq!(ufid.0, flow::OVS_FLOW_ATTR_UFID);
    assert_eq!(ours_attrs, attrs_of(&theirs));
    // Same genl command and version, same dp; ovs-dpctl asks for no ACK.
    assert_eq!(theirs[16..24], ours.encode(0, 0, 0)[16..24]);
}

#[test]
fn ovs_dpctl_cannot_express_a_wildcarded_tunnel_destination() {
    // ovs-dpctl sends tunnel dst 0.0.0.0/0 and no TTL; the kernel refused it with EINVAL
    // ("IPv4 tunnel dst address is zero"). weft's key carries placeholders instead.
    let theirs = attrs_of(&dpctl("flow_new_tunnel_match_refused"));
    let key = &theirs[0];
    assert_eq!(key.0, flow::OVS_FLOW_ATTR_KEY);
    let fields = weft_datapath::ovs::key::KeyFields::decode(&key.1).unwrap();
    assert_eq!(fields.tunnel_dst, Some(Ipv4Addr::UNSPECIFIED));
}

#[test]
fn datapath_and_vport_requests_carry_what_ovs_dpctl_sends() {
    // ovs-dpctl add-dp wkd: the same attributes in the same order; only the features differ
    // (ovs-dpctl asks for per-CPU upcall dispatch, weft for per-vport pids).
    let theirs = attrs_of(&dpctl("dp_new"));
    let ours = attrs_of(&msg::datapath_new("wkd", 0).encode(0, 0, 0));
    let kinds = |a: &[(u16, Vec<u8>)]| a.iter().map(|(k, _)| *k).collect::<Vec<_>>();
    assert_eq!(kinds(&ours), kinds(&theirs));
    assert_eq!(ours[..2], theirs[..2]);
    // ovs-dpctl add-if wkd wkdi,type=internal: the same attributes, in another order.
    let mut theirs = attrs_of(&dpctl("vport_new_internal"));
    let mut ours = attrs_of(
        &msg::vport_new(
            4,
            &VportSpec {
                name: "wkdi".into(),
                kind: VportType::Internal,
                dst_port: None,
                upcall_pid: 0,
            },
        )
        .encode(0, 0, 0),
    );
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn the_captured_miss_decodes() {
    // The internal port went up and the host's IPv6 stack sent into the datapath.
    let internal = vport("vport_new_internal.reply0").port_no;
    let upcall = decode_upcall_datagram(&fixture("upcall_miss.reply0"))
        .unwrap()
        .unwrap();
    assert_eq!(upcall.kind, UpcallKind::Miss);
    assert_eq!(upcall.in_port, Some(internal));
    assert_eq!(upcall.eth_dst.unwrap()[..2], [0x33, 0x33]);
    assert_eq!(
        upcall.eth_src,
        Some(upcall.packet[6..12].try_into().unwrap())
    );
    assert_eq!(upcall.packet[12..14], [0x86, 0xdd]);
    assert_eq!(upcall.tunnel, None);
}

/// A flow another program put with an action weft never uses (`push_vlan`) does not keep
/// weft from reading the dump: it comes back raw, and is deleted by its UFID, or its key
/// when it has none.
#[test]
fn a_flow_weft_cannot_model_is_kept_raw_to_be_deleted() {
    use weft_datapath::ovs::key;
    use weft_datapath::ovs::nla::NlaWriter;
    const OVS_ACTION_ATTR_PUSH_VLAN: u16 = 4;
    let (to_peer, _) = flows_put(0, 1);
    let mut actions = NlaWriter::new();
    actions.put(OVS_ACTION_ATTR_PUSH_VLAN, &[0x81, 0x00, 0x10, 0x01]);
    let actions = actions.into_bytes();
    let attrs = |ufid: Option<&[u8]>| {
        let mut w = NlaWriter::new();
        w.put(flow::OVS_FLOW_ATTR_KEY, &key::encode_key(&to_peer.matching));
        w.put(flow::OVS_FLOW_ATTR_ACTIONS, &actions);
        if let Some(ufid) = ufid {
            w.put(flow::OVS_FLOW_ATTR_UFID, ufid);
        }
        w.into_bytes()
    };
    let ufid = [7u8; 16];

    let with_ufid = attrs(Some(&ufid));
    let error = flow::decode_flow(&with_ufid).unwrap_err();
    assert!(error.to_string().contains("action 4"), "{error}");
    let raw = flow::raw_flow(&with_ufid, &error).unwrap();
    assert_eq!(raw.ufid.as_deref(), Some(&ufid[..]));
    let del = flow::raw_flow_del(5, &raw);
    assert_eq!(
        (del.family, del.cmd, del.dp_ifindex),
        (Family::Flow, msg::CMD_DEL, 5)
    );
    let mut by_ufid = NlaWriter::new();
    by_ufid.put(flow::OVS_FLOW_ATTR_UFID, &ufid);
    assert_eq!(del.attrs, by_ufid.into_bytes());

    let without = attrs(None);
    let raw = flow::raw_flow(&without, &flow::decode_flow(&without).unwrap_err()).unwrap();
    assert_eq!(raw.ufid, None);
    let mut by_key = NlaWriter::new();
    by_key.put(flow::OVS_FLOW_ATTR_KEY, &key::encode_key(&to_peer.matching));
    assert_eq!(flow::raw_flow_del(5, &raw).attrs, by_key.into_bytes());
    assert!(
        flow::raw_flow_del(5, &raw)
            .describe()
            .contains("cannot model")
    );
}

// The group flow: a masked destination, which the captures above do not hold. Its bytes are
// written out by hand from `struct ovs_key_ethernet` (src, then dst); the kernel's reply to a
// dump holds the key masked (`ovs_nla_put_masked_key`) and the mask (`ovs_nla_put_mask`),
// so a dump entry of it is these same key and mask attributes.

fn group_flow_to(dsts: &[Ipv4Addr]) -> Flow {
    let params = weft_datapath::ovs::flows::FlowParams {
        local: 0,
        vxlan: 2,
        vni: 42,
        tp_dst: VXLAN_PORT,
    };
    params.group(&dsts.iter().copied().collect())
}

#[test]
fn the_group_flow_matches_the_multicast_bit_alone() {
    let flow = group_flow_to(&[Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]);
    let req = flow::flow_new(7, &flow);
    let attrs = weft_datapath::ovs::nla::parse(&req.attrs).unwrap();
    let payload = |kind| {
        attrs
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| a.payload.to_vec())
            .unwrap()
    };
    #[rustfmt::skip]
    let key = [
        8, 0, 3, 0, 0, 0, 0, 0,             // IN_PORT 0
        16, 0, 4, 0,                        // ETHERNET
        0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, // src 0, dst 01:00:00:00:00:00
    ];
    #[rustfmt::skip]
    let mask = [
        8, 0, 3, 0, 0xff, 0xff, 0xff, 0xff, // IN_PORT exact
        16, 0, 4, 0,                        // ETHERNET
        0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, // src wildcarded, dst: the multicast bit
    ];
    assert_eq!(payload(flow::OVS_FLOW_ATTR_KEY), key);
    assert_eq!(payload(flow::OVS_FLOW_ATTR_MASK), mask);
    assert_eq!(
        req.what,
        "in_port(0),eth_dst(01:00:00:00:00:00/01:00:00:00:00:00)"
    );
    // Two copies: set(tunnel) and output(2), twice.
    let actions = flow.actions.clone();
    assert_eq!(actions.len(), 4);
    assert_eq!(actions[1], FlowAction::Output(2));
    assert_eq!(actions[3], FlowAction::Output(2));
    // Read back as a dump entry: the same flow, recognised as weft's group flow.
    let entry = flow::decode_flow(&req.attrs).unwrap();
    assert_eq!(entry.flow, flow);
    let dumped = weft_datapath::ovs::flows::FlowParams {
        local: 0,
        vxlan: 2,
        vni: 42,
        tp_dst: VXLAN_PORT,
    };
    assert_eq!(dumped.table(&[entry.flow]).1, vec![]);
}

#[test]
fn a_dumped_key_with_bits_outside_its_mask_reads_back_masked_and_a_zero_mask_as_wildcard() {
    use weft_datapath::ovs::key;
    let m = FlowMatch {
        in_port: 0,
        eth_src: None,
        eth_dst: Some(MacMatch::GROUP),
        tunnel: None,
    };
    // A key sent unmasked (ff:ff:..) reads back as the kernel would store it.
    let mut unmasked = m;
    unmasked.eth_dst = Some(MacMatch {
        addr: [0xff; 6],
        mask: MacMatch::GROUP.mask,
    });
    let back = key::decode_match(&key::encode_key(&unmasked), Some(&key::encode_mask(&m))).unwrap();
    assert_eq!(back, m);
    let wildcard = FlowMatch { eth_dst: None, ..m };
    let back = key::decode_match(
        &key::encode_key(&unmasked),
        Some(&key::encode_mask(&wildcard)),
    )
    .unwrap();
    assert_eq!(back, wildcard);
}

#[test]
fn a_group_flows_ufid_differs_from_every_exact_ones() {
    let group = group_flow_to(&[]).matching;
    let exact = |mac| FlowMatch {
        eth_dst: Some(MacMatch::exact(mac)),
        ..group
    };
    let ufid = flow::ufid(&group);
    for mac in [[1, 0, 0, 0, 0, 0], [0xff; 6], [0; 6], MAC_A] {
        assert_ne!(ufid, flow::ufid(&exact(mac)));
    }
    assert_ne!(
        ufid,
        flow::ufid(&FlowMatch {
            eth_dst: None,
            ..group
        })
    );
}

#[test]
fn a_flow_is_replaced_with_set() {
    // The kernel answers NEW|CREATE on an existing match with EEXIST: the replacement is a
    // SET of the same attributes (key, mask, actions, UFID: it finds the flow by its UFID).
    let flow = group_flow_to(&[Ipv4Addr::new(10, 0, 0, 2)]);
    let (new, modify) = (flow::flow_new(7, &flow), flow::flow_modify(7, &flow));
    assert_eq!(
        (new.cmd, new.flags),
        (msg::CMD_NEW, msg::NLM_F_ACK | msg::NLM_F_CREATE)
    );
    assert_eq!((modify.cmd, modify.flags), (msg::CMD_SET, msg::NLM_F_ACK));
    assert_eq!(
        (modify.family, modify.attrs, modify.what),
        (new.family, new.attrs, new.what)
    );
}

/// The requests the miss path added, which have no capture yet: what they carry.
#[test]
fn the_upcall_pointing_and_flow_replacing_requests_carry_what_the_kernel_reads() {
    use weft_datapath::ovs::nla;
    let u32_of = |attrs: &[u8], kind: u16| {
        let parsed = nla::parse(attrs).unwrap();
        nla::find(&parsed, kind).map(|a| a.u32().unwrap())
    };

    let vport = msg::vport_set_upcall_pid(5, 1, 4242);
    assert_eq!(
        (vport.family, vport.cmd, vport.flags),
        (Family::Vport, 4, msg::NLM_F_ACK)
    );
    assert_eq!(u32_of(&vport.attrs, msg::OVS_VPORT_ATTR_PORT_NO), Some(1));
    assert_eq!(
        u32_of(&vport.attrs, msg::OVS_VPORT_ATTR_UPCALL_PID),
        Some(4242)
    );
    assert!(
        vport.describe().starts_with("ovs_vport SET on dp 5"),
        "{}",
        vport.describe()
    );

    let per_cpu = msg::datapath_set_upcalls("weft-ovs", 4242, true);
    assert_eq!((per_cpu.family, per_cpu.cmd), (Family::Datapath, 4));
    assert_eq!(
        u32_of(&per_cpu.attrs, msg::OVS_DP_ATTR_USER_FEATURES),
        Some(msg::OVS_DP_F_UNALIGNED | msg::OVS_DP_F_DISPATCH_UPCALL_PER_CPU)
    );
    assert_eq!(
        u32_of(&per_cpu.attrs, msg::OVS_DP_ATTR_PER_CPU_PIDS),
        Some(4242)
    );
    let per_vport = msg::datapath_set_upcalls("weft-ovs", 4242, false);
    assert_eq!(
        u32_of(&per_vport.attrs, msg::OVS_DP_ATTR_USER_FEATURES),
        Some(msg::DATAPATH_FEATURES)
    );
    assert_eq!(
        u32_of(&per_vport.attrs, msg::OVS_DP_ATTR_PER_CPU_PIDS),
        None
    );
}
