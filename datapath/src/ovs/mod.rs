//! The Open vSwitch kernel datapath, programmed over generic netlink (no `ovs-vswitchd`, no
//! OVSDB). See `docs/datapaths.md`.
//!
//! Layers, kept apart as in rust-netlink:
//! - the flow model below ([`Flow`], [`FlowMatch`], [`FlowAction`]): plain values weft
//!   decides with, independent of the wire;
//! - `nla`/`msg`: pure codecs of the four families `ovs_datapath`, `ovs_vport`, `ovs_flow`,
//!   `ovs_packet` (uapi `linux/openvswitch.h`), tested against golden bytes captured from the
//!   kernel;
//! - `socket`: the one place that talks to the kernel (neli), resolving the families and
//!   exchanging the codecs' messages.

pub mod flows;
pub mod kernel;
pub mod miss;

use std::net::Ipv4Addr;

pub mod action;
pub mod flow;
pub mod key;
pub mod msg;
pub mod nla;
pub mod socket;

pub use flow::{FlowEntry, RawFlow, Upcall, UpcallKind};
pub use msg::{DatapathInfo, DatapathStats, OvsError, VportInfo, VportSpec, VportStats, VportType};
pub use socket::{OvsSocket, UpcallSocket};

use crate::mac::Mac;

/// A port number in one OVS datapath (`OVS_VPORT_ATTR_PORT_NO`); 0 is the datapath's own
/// internal port.
pub type PortNo = u32;

/// The tunnel metadata a flow matches on, for packets that came in on a tunnel vport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelMatch {
    /// The VXLAN network identifier (`OVS_TUNNEL_KEY_ATTR_ID`, the low 24 bits).
    pub id: u32,
    /// The outer source address: the peer that sent it.
    pub src: Ipv4Addr,
}

/// What a flow matches: the fields that are `Some` (`eth_src`, `tunnel`: exactly; `eth_dst`:
/// on the bits of its mask), every other field wildcarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowMatch {
    pub in_port: PortNo,
    pub eth_src: Option<Mac>,
    pub eth_dst: Option<MacMatch>,
    pub tunnel: Option<TunnelMatch>,
}

/// A match on an Ethernet address: the bits set in `mask` equal those of `addr`. Canonical as
/// the kernel keeps it (and [`MacMatch::new`] makes it): `addr` has no bit outside `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacMatch {
    pub addr: Mac,
    pub mask: Mac,
}

impl MacMatch {
    /// Every group address: the multicast bit (the low bit of the first byte) set, broadcast
    /// included; `01:00:00:00:00:00/01:00:00:00:00:00`. No unicast address matches it, so a
    /// flow of it never overlaps a flow of one unicast address.
    pub const GROUP: MacMatch = MacMatch {
        addr: [1, 0, 0, 0, 0, 0],
        mask: [1, 0, 0, 0, 0, 0],
    };

    /// `addr` exactly.
    pub const fn exact(addr: Mac) -> Self {
        MacMatch {
            addr,
            mask: [0xff; 6],
        }
    }

    /// `addr` on the bits of `mask` (the others cleared).
    pub fn new(addr: Mac, mask: Mac) -> Self {
        let mut addr = addr;
        for (a, m) in addr.iter_mut().zip(mask) {
            *a &= m;
        }
        MacMatch { addr, mask }
    }

    /// The address, if this matches one address exactly.
    pub fn as_exact(&self) -> Option<Mac> {
        (self.mask == [0xff; 6]).then_some(self.addr)
    }

    /// Whether `mac` matches.
    pub fn matches(&self, mac: &Mac) -> bool {
        mac.iter()
            .zip(self.mask)
            .zip(self.addr)
            .all(|((b, m), a)| b & m == a)
    }
}

/// The outer headers a packet sent into a tunnel gets (`OVS_ACTION_ATTR_SET` of
/// `OVS_KEY_ATTR_TUNNEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelSet {
    /// The VNI.
    pub id: u32,
    /// The peer's underlay address.
    pub dst: Ipv4Addr,
    /// The peer's VXLAN UDP port.
    pub tp_dst: u16,
    pub ttl: u8,
    /// Outer DF: never fragment (the overlay MTU leaves room for the headers).
    pub dont_fragment: bool,
}

/// One action, in the order the kernel runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowAction {
    /// Set the tunnel metadata the next output to a tunnel vport uses.
    SetTunnel(TunnelSet),
    /// Send a copy out of this port.
    Output(PortNo),
    /// Send the packet up to the netlink socket with this port id (`OVS_ACTION_ATTR_USERSPACE`).
    Userspace { pid: u32 },
}

/// A flow: a match and its actions (none: drop).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    pub matching: FlowMatch,
    pub actions: Vec<FlowAction>,
}
