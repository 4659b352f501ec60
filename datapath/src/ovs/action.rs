//! Flow actions (`OVS_ACTION_ATTR_*`) for [`FlowAction`], and reading them back.

use std::net::Ipv4Addr;

use super::key::{
    OVS_KEY_ATTR_TUNNEL, OVS_TUNNEL_KEY_ATTR_DONT_FRAGMENT, OVS_TUNNEL_KEY_ATTR_ID,
    OVS_TUNNEL_KEY_ATTR_IPV4_DST, OVS_TUNNEL_KEY_ATTR_TP_DST, OVS_TUNNEL_KEY_ATTR_TTL,
};
use super::msg::DecodeError;
use super::nla::{NlaIter, NlaWriter};
use super::{FlowAction, TunnelSet};

pub const OVS_ACTION_ATTR_OUTPUT: u16 = 1;
pub const OVS_ACTION_ATTR_USERSPACE: u16 = 2;
pub const OVS_ACTION_ATTR_SET: u16 = 3;
pub const OVS_USERSPACE_ATTR_PID: u16 = 1;

/// The nested `OVS_*_ATTR_ACTIONS` payload.
pub fn encode_actions(actions: &[FlowAction]) -> Vec<u8> {
    let mut w = NlaWriter::new();
    for a in actions {
        match *a {
            FlowAction::Output(port) => w.put_u32(OVS_ACTION_ATTR_OUTPUT, port),
            FlowAction::Userspace { pid } => w.nested(OVS_ACTION_ATTR_USERSPACE, |u| {
                u.put_u32(OVS_USERSPACE_ATTR_PID, pid)
            }),
            FlowAction::SetTunnel(t) => w.nested(OVS_ACTION_ATTR_SET, |s| {
                s.nested(OVS_KEY_ATTR_TUNNEL, |k| {
                    k.put_be64(OVS_TUNNEL_KEY_ATTR_ID, u64::from(t.id));
                    k.put(OVS_TUNNEL_KEY_ATTR_IPV4_DST, &t.dst.octets());
                    k.put_u8(OVS_TUNNEL_KEY_ATTR_TTL, t.ttl);
                    // The order ovs-dpctl writes (tests/fixtures/ovs/dpctl).
                    k.put_be16(OVS_TUNNEL_KEY_ATTR_TP_DST, t.tp_dst);
                    if t.dont_fragment {
                        k.put_flag(OVS_TUNNEL_KEY_ATTR_DONT_FRAGMENT);
                    }
                })
            }),
        }
    }
    w.into_bytes()
}

/// Reads actions back; an action weft does not make is an error (a flow weft did not put).
pub fn decode_actions(bytes: &[u8]) -> Result<Vec<FlowAction>, DecodeError> {
    let mut out = Vec::new();
    for a in NlaIter::new(bytes) {
        let a = a?;
        out.push(match a.kind {
            OVS_ACTION_ATTR_OUTPUT => FlowAction::Output(a.u32()?),
            OVS_ACTION_ATTR_USERSPACE => {
                let mut pid = None;
                for u in a.nested() {
                    let u = u?;
                    if u.kind == OVS_USERSPACE_ATTR_PID {
                        pid = Some(u.u32()?);
                    }
                }
                FlowAction::Userspace {
                    pid: pid.ok_or_else(|| {
                        DecodeError::Unexpected("userspace action without pid".into())
                    })?,
                }
            }
            OVS_ACTION_ATTR_SET => {
                let inner = a
                    .nested()
                    .next()
                    .ok_or_else(|| DecodeError::Unexpected("empty set action".into()))??;
                if inner.kind != OVS_KEY_ATTR_TUNNEL {
                    return Err(DecodeError::Unexpected(format!(
                        "set action of key attribute {}",
                        inner.kind
                    )));
                }
                let mut t = TunnelSet {
                    id: 0,
                    dst: Ipv4Addr::UNSPECIFIED,
                    tp_dst: 0,
                    ttl: 0,
                    dont_fragment: false,
                };
                for k in inner.nested() {
                    let k = k?;
                    match k.kind {
                        OVS_TUNNEL_KEY_ATTR_ID => t.id = k.be64()? as u32,
                        OVS_TUNNEL_KEY_ATTR_IPV4_DST => t.dst = Ipv4Addr::from(k.array::<4>()?),
                        OVS_TUNNEL_KEY_ATTR_TTL => t.ttl = k.u8()?,
                        OVS_TUNNEL_KEY_ATTR_DONT_FRAGMENT => t.dont_fragment = true,
                        OVS_TUNNEL_KEY_ATTR_TP_DST => t.tp_dst = k.be16()?,
                        _ => {}
                    }
                }
                FlowAction::SetTunnel(t)
            }
            other => {
                return Err(DecodeError::Unexpected(format!("action {other}")));
            }
        });
    }
    Ok(out)
}
