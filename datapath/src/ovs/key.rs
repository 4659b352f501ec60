//! Flow keys and masks (`OVS_KEY_ATTR_*`) for [`FlowMatch`], and reading them back.
//!
//! What the kernel (Debian 6.1, net/openvswitch/flow_netlink.c) requires of a masked flow with
//! only these fields, each checked in the VM (`probe_ovs_flow_key_requirements` in
//! `tests/ovs_kernel.rs`, the kernel's log in brackets):
//! - the key needs `ETHERNET` or `ETHERTYPE` ("Either Ethernet header or EtherType is
//!   required"), even when no Ethernet field is matched: weft always sends `ETHERNET` (zeros
//!   where wildcarded) in key and mask. `ETHERTYPE` is not needed: the key's type becomes
//!   `ETH_P_802_2` and the dumped mask shows it wildcarded (`eth_type` mask 0);
//! - a mask attribute without its key attribute is refused (EINVAL);
//! - a tunnel *key* needs a non-zero `IPV4_DST` ("IPv4 tunnel dst address is zero") and a
//!   `TTL` ("IP tunnel TTL not specified"), even when the mask wildcards them: weft puts
//!   placeholders there and leaves them out of the mask, so the kernel stores them masked to
//!   zero (and dumps them so).

use std::net::Ipv4Addr;

use super::msg::DecodeError;
use super::nla::{Nla, NlaWriter};
use super::{FlowMatch, MacMatch, TunnelMatch};
use crate::mac::Mac;

pub const OVS_KEY_ATTR_IN_PORT: u16 = 3;
pub const OVS_KEY_ATTR_ETHERNET: u16 = 4;
pub const OVS_KEY_ATTR_ETHERTYPE: u16 = 6;
pub const OVS_KEY_ATTR_TUNNEL: u16 = 16;

pub const OVS_TUNNEL_KEY_ATTR_ID: u16 = 0;
pub const OVS_TUNNEL_KEY_ATTR_IPV4_SRC: u16 = 1;
pub const OVS_TUNNEL_KEY_ATTR_IPV4_DST: u16 = 2;
pub const OVS_TUNNEL_KEY_ATTR_TTL: u16 = 4;
pub const OVS_TUNNEL_KEY_ATTR_DONT_FRAGMENT: u16 = 5;
pub const OVS_TUNNEL_KEY_ATTR_TP_DST: u16 = 10;

/// The tunnel destination a match key carries only because the kernel insists; the mask
/// wildcards it.
const PLACEHOLDER_TUNNEL_DST: Ipv4Addr = Ipv4Addr::BROADCAST;
const PLACEHOLDER_TUNNEL_TTL: u8 = 64;
/// VNIs are 24 bits.
const VNI_MASK: u32 = 0x00ff_ffff;

/// `OVS_FLOW_ATTR_KEY` payload for a match.
pub fn encode_key(m: &FlowMatch) -> Vec<u8> {
    let mut w = NlaWriter::new();
    w.put_u32(OVS_KEY_ATTR_IN_PORT, m.in_port);
    if let Some(t) = m.tunnel {
        w.nested(OVS_KEY_ATTR_TUNNEL, |n| {
            n.put_be64(OVS_TUNNEL_KEY_ATTR_ID, u64::from(t.id & VNI_MASK));
            n.put(OVS_TUNNEL_KEY_ATTR_IPV4_SRC, &t.src.octets());
            n.put(
                OVS_TUNNEL_KEY_ATTR_IPV4_DST,
                &PLACEHOLDER_TUNNEL_DST.octets(),
            );
            n.put_u8(OVS_TUNNEL_KEY_ATTR_TTL, PLACEHOLDER_TUNNEL_TTL);
        });
    }
    w.put(
        OVS_KEY_ATTR_ETHERNET,
        &ethernet(
            m.eth_src.unwrap_or_default(),
            m.eth_dst.map(|d| d.addr).unwrap_or_default(),
        ),
    );
    w.into_bytes()
}

/// `OVS_FLOW_ATTR_MASK` payload: all ones on the fields the match names.
pub fn encode_mask(m: &FlowMatch) -> Vec<u8> {
    let mut w = NlaWriter::new();
    w.put_u32(OVS_KEY_ATTR_IN_PORT, u32::MAX);
    if m.tunnel.is_some() {
        w.nested(OVS_KEY_ATTR_TUNNEL, |n| {
            n.put_be64(OVS_TUNNEL_KEY_ATTR_ID, u64::from(VNI_MASK));
            n.put(OVS_TUNNEL_KEY_ATTR_IPV4_SRC, &[0xff; 4]);
        });
    }
    let ones = |o: Option<Mac>| if o.is_some() { [0xff; 6] } else { [0; 6] };
    w.put(
        OVS_KEY_ATTR_ETHERNET,
        &ethernet(
            ones(m.eth_src),
            m.eth_dst.map(|d| d.mask).unwrap_or_default(),
        ),
    );
    w.into_bytes()
}

/// `struct ovs_key_ethernet { eth_src; eth_dst; }`.
fn ethernet(src: Mac, dst: Mac) -> [u8; 12] {
    let mut b = [0; 12];
    b[..6].copy_from_slice(&src);
    b[6..].copy_from_slice(&dst);
    b
}

/// The fields of a key (or mask) weft reads; the kernel sends many more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFields {
    pub in_port: Option<u32>,
    pub eth_src: Option<Mac>,
    pub eth_dst: Option<Mac>,
    pub tunnel_id: Option<u64>,
    pub tunnel_src: Option<Ipv4Addr>,
    pub tunnel_dst: Option<Ipv4Addr>,
}

impl KeyFields {
    pub fn decode(attrs: &[u8]) -> Result<Self, DecodeError> {
        let mut k = KeyFields::default();
        for a in super::nla::NlaIter::new(attrs) {
            let a: Nla<'_> = a?;
            match a.kind {
                OVS_KEY_ATTR_IN_PORT => k.in_port = Some(a.u32()?),
                OVS_KEY_ATTR_ETHERNET => {
                    let b: [u8; 12] = a.array()?;
                    k.eth_src = Some(b[..6].try_into().unwrap_or_default());
                    k.eth_dst = Some(b[6..].try_into().unwrap_or_default());
                }
                OVS_KEY_ATTR_TUNNEL => {
                    for t in a.nested() {
                        let t = t?;
                        match t.kind {
                            OVS_TUNNEL_KEY_ATTR_ID => k.tunnel_id = Some(t.be64()?),
                            OVS_TUNNEL_KEY_ATTR_IPV4_SRC => {
                                k.tunnel_src = Some(Ipv4Addr::from(t.array::<4>()?))
                            }
                            OVS_TUNNEL_KEY_ATTR_IPV4_DST => {
                                k.tunnel_dst = Some(Ipv4Addr::from(t.array::<4>()?))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(k)
    }
}

/// The match a key and its mask express. `eth_src` counts as matched when its mask is all
/// ones, `eth_dst` on the bits its mask sets (none: wildcarded); without a mask (an
/// exact-match flow) every field the key has is matched. The kernel dumps a masked flow's key
/// masked (`key & mask`), so a group match reads back as it was put.
pub fn decode_match(key: &[u8], mask: Option<&[u8]>) -> Result<FlowMatch, DecodeError> {
    let k = KeyFields::decode(key)?;
    let m = mask.map(KeyFields::decode).transpose()?;
    let in_port = k
        .in_port
        .ok_or_else(|| DecodeError::Unexpected("flow key without in_port".into()))?;
    let exact = |key: Option<Mac>, mask: Option<Option<Mac>>| match mask {
        None => key,
        Some(mask) => key.filter(|_| mask == Some([0xff; 6])),
    };
    let tunnel_matched = match &m {
        None => k.tunnel_id.is_some(),
        Some(m) => {
            m.tunnel_id.unwrap_or(0) != 0 || m.tunnel_src.is_some_and(|s| !s.is_unspecified())
        }
    };
    let tunnel = match (tunnel_matched, k.tunnel_id, k.tunnel_src) {
        (true, Some(id), Some(src)) => Some(TunnelMatch {
            id: (id as u32) & VNI_MASK,
            src,
        }),
        _ => None,
    };
    let eth_dst = match m.map(|m| m.eth_dst) {
        None => k.eth_dst.map(MacMatch::exact),
        Some(mask) => match (k.eth_dst, mask) {
            (Some(addr), Some(mask)) if mask != [0; 6] => Some(MacMatch::new(addr, mask)),
            _ => None,
        },
    };
    Ok(FlowMatch {
        in_port,
        eth_src: exact(k.eth_src, m.map(|m| m.eth_src)),
        eth_dst,
        tunnel,
    })
}

/// `in_port(2),eth_src(..),eth_dst(..),tunnel(id=..,src=..)`: what a flow request is about.
pub fn describe(m: &FlowMatch) -> String {
    let mac = |m: Mac| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut s = format!("in_port({})", m.in_port);
    if let Some(t) = m.tunnel {
        s.push_str(&format!(",tunnel(id={},src={})", t.id, t.src));
    }
    if let Some(src) = m.eth_src {
        s.push_str(&format!(",eth_src({})", mac(src)));
    }
    match m.eth_dst.map(|d| (d, d.as_exact())) {
        Some((_, Some(dst))) => s.push_str(&format!(",eth_dst({})", mac(dst))),
        Some((d, None)) => s.push_str(&format!(",eth_dst({}/{})", mac(d.addr), mac(d.mask))),
        None => {}
    }
    s
}
