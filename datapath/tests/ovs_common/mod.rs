//! What the OVS codec tests (host) and the kernel lifecycle that captured their fixtures (VM)
//! share: the lifecycle's constants and the flows it puts.

use std::net::Ipv4Addr;

use weft_datapath::ovs::{Flow, FlowAction, FlowMatch, MacMatch, TunnelMatch, TunnelSet};

/// The VXLAN vport's UDP port in the lifecycle.
pub const VXLAN_PORT: u16 = 14789;
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// The flows the lifecycle puts: one to the peer (set tunnel, output), one from it.
pub fn flows_put(internal: u32, vxlan: u32) -> (Flow, Flow) {
    let to_peer = Flow {
        matching: FlowMatch {
            in_port: internal,
            eth_src: None,
            eth_dst: Some(MacMatch::exact(MAC_B)),
            tunnel: None,
        },
        actions: vec![
            FlowAction::SetTunnel(TunnelSet {
                id: 42,
                dst: Ipv4Addr::new(10, 0, 0, 2),
                tp_dst: VXLAN_PORT,
                ttl: 64,
                dont_fragment: true,
            }),
            FlowAction::Output(vxlan),
        ],
    };
    let from_peer = Flow {
        matching: FlowMatch {
            in_port: vxlan,
            eth_src: Some(MAC_B),
            eth_dst: Some(MacMatch::exact(MAC_A)),
            tunnel: Some(TunnelMatch {
                id: 42,
                src: Ipv4Addr::new(10, 0, 0, 2),
            }),
        },
        actions: vec![FlowAction::Output(internal)],
    };
    (to_peer, from_peer)
}

/// The lifecycle's group flow, as weft's head-end replication builds it: this host's
/// broadcasts and multicasts (the masked group bit) copied to two peers.
pub fn group_flow(internal: u32, vxlan: u32) -> Flow {
    let params = weft_datapath::ovs::flows::FlowParams {
        local: internal,
        vxlan,
        vni: 42,
        tp_dst: VXLAN_PORT,
    };
    params.group(&[Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)].into())
}

/// A broadcast ARP request from MAC_A (10.0.0.1 asks for 10.0.0.2), padded to 60 bytes.
pub fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&MAC_A);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&MAC_A);
    frame.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    frame.resize(60, 0);
    frame
}
