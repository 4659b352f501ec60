//! The Open vSwitch generic-netlink decoders: what the kernel sends weft (dump replies,
//! upcalls carrying frames from the network). Errors are fine, panics are not; a flow or an
//! action list that decodes must encode back to bytes that decode equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_datapath::ovs::{action, flow, msg, socket};

fuzz_target!(|data: &[u8]| {
    // Whole datagrams, as the sockets read them.
    let _ = socket::decode_upcall_datagram(data);
    if let Ok(messages) = msg::split(data) {
        for m in messages {
            if let msg::Incoming::Genl {
                cmd,
                dp_ifindex,
                attrs,
                ..
            } = m
            {
                let _ = msg::decode_datapath(dp_ifindex, attrs);
                let _ = msg::decode_vport(dp_ifindex, attrs);
                let _ = flow::decode_upcall(cmd, dp_ifindex, attrs);
                let _ = flow::decode_flow(attrs);
            }
        }
    }
    // Attribute streams on their own.
    if let Ok(entry) = flow::decode_flow(data) {
        let again = flow::decode_flow(&flow::flow_new(0, &entry.flow).attrs)
            .expect("a re-encoded flow decodes");
        assert_eq!(again.flow, entry.flow);
    }
    if let Ok(actions) = action::decode_actions(data) {
        let again =
            action::decode_actions(&action::encode_actions(&actions)).expect("re-encoded actions decode");
        assert_eq!(again, actions);
    }
    let _ = flow::decode_upcall(flow::OVS_PACKET_CMD_MISS, 0, data);
});
