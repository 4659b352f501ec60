//! `ovs_flow` and `ovs_packet` messages: flows put, deleted and dumped; packets executed;
//! upcalls read.
//!
//! Flows carry a UFID (`OVS_FLOW_ATTR_UFID`) derived from their match, as ovs-vswitchd's do:
//! the kernel indexes them by it and a delete names only the UFID. (A delete by key works
//! too, placeholders included, as the VM probe shows; the UFID keeps the identity of a flow
//! independent of the key encoding.)

use std::net::Ipv4Addr;

use super::action::{decode_actions, encode_actions};
use super::key::{self, KeyFields, decode_match, encode_key, encode_mask};
use super::msg::{
    CMD_DEL, CMD_NEW, DecodeError, Family, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, Request,
};
use super::nla::{self, NlaWriter};
use super::{Flow, FlowAction, FlowMatch, PortNo, TunnelMatch};
use crate::mac::Mac;

pub const OVS_FLOW_ATTR_KEY: u16 = 1;
pub const OVS_FLOW_ATTR_ACTIONS: u16 = 2;
pub const OVS_FLOW_ATTR_STATS: u16 = 3;
pub const OVS_FLOW_ATTR_USED: u16 = 5;
pub const OVS_FLOW_ATTR_MASK: u16 = 7;
pub const OVS_FLOW_ATTR_UFID: u16 = 9;

pub const OVS_PACKET_CMD_MISS: u8 = 1;
pub const OVS_PACKET_CMD_ACTION: u8 = 2;
pub const OVS_PACKET_CMD_EXECUTE: u8 = 3;
pub const OVS_PACKET_ATTR_PACKET: u16 = 1;
pub const OVS_PACKET_ATTR_KEY: u16 = 2;
pub const OVS_PACKET_ATTR_ACTIONS: u16 = 3;

/// A flow as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEntry {
    pub flow: Flow,
    pub packets: u64,
    pub bytes: u64,
    /// When a packet last matched, in ms of the kernel's monotonic clock.
    pub used: Option<u64>,
}

/// The flow id weft gives a match: stable across processes (a daemon restart finds its
/// flows), 128 bits of two FNV-1a hashes over the match's canonical bytes.
pub fn ufid(m: &FlowMatch) -> [u8; 16] {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&m.in_port.to_be_bytes());
    // An exact address is hashed as it always was (flows a running datapath holds keep
    // their ids across an upgrade); a masked one is tagged 2 and carries its mask.
    let dst = m.eth_dst.map(|d| (d.as_exact(), d));
    for mac in [m.eth_src.map(|s| (Some(s), super::MacMatch::exact(s))), dst] {
        match mac {
            Some((Some(mac), _)) => {
                bytes.push(1);
                bytes.extend_from_slice(&mac);
            }
            Some((None, masked)) => {
                bytes.push(2);
                bytes.extend_from_slice(&masked.addr);
                bytes.extend_from_slice(&masked.mask);
            }
            None => bytes.push(0),
        }
    }
    if let Some(t) = m.tunnel {
        bytes.push(1);
        bytes.extend_from_slice(&t.id.to_be_bytes());
        bytes.extend_from_slice(&t.src.octets());
    }
    let fnv = |seed: u64| {
        bytes.iter().fold(seed, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut out = [0; 16];
    out[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    out[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    out
}

/// OVS_FLOW_CMD_NEW with NLM_F_CREATE: creates the flow; EEXIST if there is one with this
/// match (the kernel takes NLM_F_CREATE for NLM_F_EXCL, which generic netlink cannot carry).
/// [`flow_modify`] replaces one.
pub fn flow_new(dp_ifindex: i32, flow: &Flow) -> Request {
    let mut w = NlaWriter::new();
    w.put(OVS_FLOW_ATTR_KEY, &encode_key(&flow.matching));
    w.put(OVS_FLOW_ATTR_MASK, &encode_mask(&flow.matching));
    w.put(OVS_FLOW_ATTR_ACTIONS, &encode_actions(&flow.actions));
    w.put(OVS_FLOW_ATTR_UFID, &ufid(&flow.matching));
    Request {
        family: Family::Flow,
        cmd: CMD_NEW,
        flags: NLM_F_ACK | NLM_F_CREATE,
        dp_ifindex,
        attrs: w.into_bytes(),
        what: key::describe(&flow.matching),
    }
}

/// OVS_FLOW_CMD_SET: replaces the actions of the flow with this UFID at once (packets see the
/// old actions or the new, never none); ENOENT if there is none. (NEW without NLM_F_CREATE
/// would also replace, but first compares the stored, masked key with the key as sent, whose
/// wildcarded fields the kernel fills in (`eth_type`, the tunnel placeholders): ENOENT.)
pub fn flow_modify(dp_ifindex: i32, flow: &Flow) -> Request {
    Request {
        cmd: super::msg::CMD_SET,
        flags: NLM_F_ACK,
        ..flow_new(dp_ifindex, flow)
    }
}

/// OVS_FLOW_CMD_DEL of the flow weft put for this match (by its UFID).
pub fn flow_del(dp_ifindex: i32, m: &FlowMatch) -> Request {
    let mut w = NlaWriter::new();
    w.put(OVS_FLOW_ATTR_UFID, &ufid(m));
    del_request(dp_ifindex, w, key::describe(m))
}

/// OVS_FLOW_CMD_DEL of the flow `attrs` names (by UFID or key).
fn del_request(dp_ifindex: i32, attrs: NlaWriter, what: String) -> Request {
    Request {
        family: Family::Flow,
        cmd: CMD_DEL,
        flags: NLM_F_ACK,
        dp_ifindex,
        attrs: attrs.into_bytes(),
        what,
    }
}

/// A flow in a dump that weft's model cannot hold (another program's: actions or key fields
/// weft never uses). Kept as the kernel named it, so that it can be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFlow {
    /// `OVS_FLOW_ATTR_UFID`, when the flow was put with one.
    pub ufid: Option<Vec<u8>>,
    /// `OVS_FLOW_ATTR_KEY`, as the kernel reported it.
    pub key: Vec<u8>,
    /// Why it does not decode.
    pub error: String,
}

/// A dump entry that does not decode into the model, as a [`RawFlow`] (an error only if it
/// has neither a UFID nor a key to name it by).
pub fn raw_flow(attrs: &[u8], error: &DecodeError) -> Result<RawFlow, DecodeError> {
    let attrs = nla::parse(attrs)?;
    let ufid = nla::find(&attrs, OVS_FLOW_ATTR_UFID).map(|u| u.payload.to_vec());
    let key = nla::find(&attrs, OVS_FLOW_ATTR_KEY).map(|k| k.payload.to_vec());
    if ufid.is_none() && key.is_none() {
        return Err(DecodeError::Unexpected(format!(
            "a flow with neither UFID nor key ({error})"
        )));
    }
    Ok(RawFlow {
        ufid,
        key: key.unwrap_or_default(),
        error: error.to_string(),
    })
}

/// OVS_FLOW_CMD_DEL of a flow weft cannot model, by its UFID or else its key.
pub fn raw_flow_del(dp_ifindex: i32, raw: &RawFlow) -> Request {
    let mut w = NlaWriter::new();
    match &raw.ufid {
        Some(ufid) => w.put(OVS_FLOW_ATTR_UFID, ufid),
        None => w.put(OVS_FLOW_ATTR_KEY, &raw.key),
    }
    del_request(
        dp_ifindex,
        w,
        format!("a flow weft cannot model ({})", raw.error),
    )
}

/// OVS_FLOW_CMD_DEL without a key: every flow of the datapath.
pub fn flow_flush(dp_ifindex: i32) -> Request {
    Request {
        family: Family::Flow,
        cmd: CMD_DEL,
        flags: NLM_F_ACK,
        dp_ifindex,
        attrs: Vec::new(),
        what: "all flows".into(),
    }
}

/// Every flow of a datapath.
pub fn flow_dump(dp_ifindex: i32) -> Request {
    Request {
        family: Family::Flow,
        cmd: super::msg::CMD_GET,
        flags: NLM_F_DUMP,
        dp_ifindex,
        attrs: Vec::new(),
        what: String::new(),
    }
}

/// A flow reply (dump entry).
pub fn decode_flow(attrs: &[u8]) -> Result<FlowEntry, DecodeError> {
    let attrs = nla::parse(attrs)?;
    let key = nla::require(&attrs, OVS_FLOW_ATTR_KEY)?;
    let mask = nla::find(&attrs, OVS_FLOW_ATTR_MASK);
    let matching = decode_match(key.payload, mask.map(|m| m.payload))?;
    let actions = match nla::find(&attrs, OVS_FLOW_ATTR_ACTIONS) {
        Some(a) => decode_actions(a.payload)?,
        None => Vec::new(),
    };
    let (packets, bytes) = match nla::find(&attrs, OVS_FLOW_ATTR_STATS) {
        Some(s) => {
            let raw: [u8; 16] = s.array()?;
            let (p, b) = raw.split_at(8);
            (
                u64::from_ne_bytes(p.try_into().unwrap_or_default()),
                u64::from_ne_bytes(b.try_into().unwrap_or_default()),
            )
        }
        None => (0, 0),
    };
    let used = nla::find(&attrs, OVS_FLOW_ATTR_USED)
        .map(|u| u.u64())
        .transpose()?;
    Ok(FlowEntry {
        flow: Flow { matching, actions },
        packets,
        bytes,
        used,
    })
}

/// OVS_PACKET_CMD_EXECUTE: runs `actions` on `packet` as if it came in on `in_port`.
pub fn packet_execute(
    dp_ifindex: i32,
    packet: &[u8],
    in_port: PortNo,
    actions: &[FlowAction],
) -> Request {
    let mut w = NlaWriter::new();
    w.put(OVS_PACKET_ATTR_PACKET, packet);
    w.nested(OVS_PACKET_ATTR_KEY, |k| {
        k.put_u32(key::OVS_KEY_ATTR_IN_PORT, in_port)
    });
    w.put(OVS_PACKET_ATTR_ACTIONS, &encode_actions(actions));
    Request {
        family: Family::Packet,
        cmd: OVS_PACKET_CMD_EXECUTE,
        flags: NLM_F_ACK,
        dp_ifindex,
        attrs: w.into_bytes(),
        what: format!("in_port({in_port}), {} bytes", packet.len()),
    }
}

/// Why a packet came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpcallKind {
    /// No flow matched.
    Miss,
    /// A flow's `Userspace` action.
    Action,
}

/// A packet the datapath sent up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upcall {
    pub kind: UpcallKind,
    pub dp_ifindex: i32,
    pub packet: Vec<u8>,
    pub in_port: Option<PortNo>,
    pub eth_src: Option<Mac>,
    pub eth_dst: Option<Mac>,
    /// Set when it came in on a tunnel vport.
    pub tunnel: Option<TunnelMatch>,
}

/// An `ovs_packet` message from the kernel (genl command and its attributes).
pub fn decode_upcall(cmd: u8, dp_ifindex: i32, attrs: &[u8]) -> Result<Upcall, DecodeError> {
    let kind = match cmd {
        OVS_PACKET_CMD_MISS => UpcallKind::Miss,
        OVS_PACKET_CMD_ACTION => UpcallKind::Action,
        other => {
            return Err(DecodeError::Unexpected(format!("packet command {other}")));
        }
    };
    let attrs = nla::parse(attrs)?;
    let packet = nla::require(&attrs, OVS_PACKET_ATTR_PACKET)?
        .payload
        .to_vec();
    let k = match nla::find(&attrs, OVS_PACKET_ATTR_KEY) {
        Some(k) => KeyFields::decode(k.payload)?,
        None => KeyFields::default(),
    };
    let tunnel = match (k.tunnel_id, k.tunnel_src) {
        (Some(id), Some(src)) if src != Ipv4Addr::UNSPECIFIED => Some(TunnelMatch {
            id: (id & 0x00ff_ffff) as u32,
            src,
        }),
        _ => None,
    };
    Ok(Upcall {
        kind,
        dp_ifindex,
        packet,
        in_port: k.in_port,
        eth_src: k.eth_src,
        eth_dst: k.eth_dst,
        tunnel,
    })
}
