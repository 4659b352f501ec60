//! Forwarding-database entries (`bridge fdb`): AF_BRIDGE neighbour messages. A device's own
//! table (`self`, e.g. a VXLAN device's MAC → remote entries) and the bridge's table on a port
//! (`master`). The requests are byte-for-byte what `bridge fdb replace|del` sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};

const NUD_REACHABLE: u16 = 0x02;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

/// How long an entry lives, as `bridge fdb show` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdbState {
    /// `permanent`: a local address (on the bridge), or a device's own static entry.
    Permanent,
    /// `static`: never ages out, still forwards out of its port.
    Static,
    /// Learned; ages out.
    Dynamic,
}

/// One entry of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    /// The device (for a bridge entry: the port) it is on.
    pub ifindex: u32,
    /// `NDA_MASTER`: the bridge, for entries in a bridge's table (how a dump tells them: the
    /// kernel sets no `NTF_MASTER` flag on them).
    pub master: Option<u32>,
    /// `NDA_DST`: the remote, for a VXLAN device's entries.
    pub dst: Option<IpAddr>,
    /// `self`: in the device's own table.
    pub on_self: bool,
    /// `NTF_MASTER` (set in requests; Linux 6.18 dumps bridge entries without it).
    pub on_master: bool,
    pub sticky: bool,
    pub state: FdbState,
}

fn message(ifindex: u32, state: u16, flags: NeighbourFlags, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::from(state);
    m.header.flags = flags;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// `bridge fdb replace <mac> dev <vxlan> self permanent dst <dst>`.
pub fn remote_entry(vxlan: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = message(vxlan, NUD_PERMANENT | NUD_NOARP, NeighbourFlags::Own, mac);
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m
}

/// `bridge fdb del <mac> dev <vxlan> self`: the whole entry (every remote).
pub fn remote_entry_delete(vxlan: u32, mac: [u8; 6]) -> NeighbourMessage {
    message(vxlan, NUD_PERMANENT | NUD_NOARP, NeighbourFlags::Own, mac)
}

/// `bridge fdb replace <mac> dev <port> master static sticky`: created, or moved to `port`.
pub fn port_entry(port: u32, mac: [u8; 6]) -> NeighbourMessage {
    message(
        port,
        NUD_NOARP | NUD_REACHABLE,
        NeighbourFlags::Controller | NeighbourFlags::Sticky,
        mac,
    )
}

/// `bridge fdb del <mac> dev <port> master`.
pub fn port_entry_delete(port: u32, mac: [u8; 6]) -> NeighbourMessage {
    message(
        port,
        NUD_PERMANENT | NUD_NOARP,
        NeighbourFlags::Controller,
        mac,
    )
}

/// `bridge fdb replace <mac> dev <bridge> self permanent`: a local address of the bridge, so
/// frames to it go up to the bridge device.
pub fn local_entry(bridge: u32, mac: [u8; 6]) -> NeighbourMessage {
    message(bridge, NUD_PERMANENT | NUD_NOARP, NeighbourFlags::Own, mac)
}

/// The RTM_GETNEIGH body of a dump of every FDB entry (`bridge fdb show`).
pub fn dump_request() -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m
}

/// An FDB entry from a dump; `None` for other neighbour messages.
pub fn parse_entry(m: &NeighbourMessage) -> Option<FdbEntry> {
    if m.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut master = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = b.as_slice().try_into().ok();
            }
            NeighbourAttribute::Controller(i) => master = Some(*i),
            NeighbourAttribute::Destination(d) => dst = address(d),
            _ => {}
        }
    }
    let state = u16::from(m.header.state);
    let flags = m.header.flags;
    Some(FdbEntry {
        mac: mac?,
        ifindex: m.header.ifindex,
        master,
        dst,
        on_self: flags.contains(NeighbourFlags::Own),
        on_master: flags.contains(NeighbourFlags::Controller),
        sticky: flags.contains(NeighbourFlags::Sticky),
        state: if state & NUD_PERMANENT != 0 {
            FdbState::Permanent
        } else if state & NUD_NOARP != 0 {
            FdbState::Static
        } else {
            FdbState::Dynamic
        },
    })
}

/// `NDA_DST` of an AF_BRIDGE message comes raw: 4 bytes IPv4, 16 IPv6.
fn address(d: &NeighbourAddress) -> Option<IpAddr> {
    match d {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    fn bytes(m: &NeighbourMessage) -> Vec<u8> {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    // The golden bytes are the ndmsg + attributes of what iproute2 6.1 sends (strace -xx).

    #[test]
    fn a_remote_entry_is_what_bridge_fdb_replace_self_permanent_dst_sends() {
        // bridge fdb replace 02:00:00:00:00:01 dev vx0 self permanent dst 10.0.0.2 (vx0 = 3)
        let golden = [
            0x07, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x02, 0x00, 0x0a, 0x00,
            0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00,
            0x0a, 0x00, 0x00, 0x02,
        ];
        assert_eq!(
            bytes(&remote_entry(3, MAC, Ipv4Addr::new(10, 0, 0, 2))),
            golden
        );
        // bridge fdb del 02:00:00:00:00:01 dev vx0 self
        assert_eq!(bytes(&remote_entry_delete(3, MAC)), golden[..24]);
    }

    #[test]
    fn a_port_entry_is_what_bridge_fdb_replace_master_static_sticky_sends() {
        let golden = [
            0x07, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x42, 0x00, 0x44, 0x00, 0x0a, 0x00,
            0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        ];
        assert_eq!(bytes(&port_entry(3, MAC)), golden);
        // bridge fdb del 02:00:00:00:00:01 dev vx0 master
        let del = [
            0x07, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x04, 0x00, 0x0a, 0x00,
            0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        ];
        assert_eq!(bytes(&port_entry_delete(3, MAC)), del);
    }

    #[test]
    fn a_local_entry_is_what_bridge_fdb_replace_on_the_bridge_self_permanent_sends() {
        // bridge fdb replace 06:00:00:00:00:09 dev br0 self permanent (br0 = 2)
        let golden = [
            0x07, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x02, 0x00, 0x0a, 0x00,
            0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00,
        ];
        assert_eq!(bytes(&local_entry(2, [6, 0, 0, 0, 0, 9])), golden);
    }

    #[test]
    fn dumped_entries_parse_with_their_table_state_and_remote() {
        // A VXLAN device's entry as the kernel dumps it: self, permanent, NDA_DST raw.
        let m = NeighbourMessage::parse(&bytes(&remote_entry(3, MAC, Ipv4Addr::new(10, 0, 0, 2))))
            .unwrap();
        let e = parse_entry(&m).unwrap();
        assert_eq!(e.dst, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
        assert!(e.on_self && !e.on_master && !e.sticky);
        assert_eq!((e.mac, e.ifindex, e.state), (MAC, 3, FdbState::Permanent));
        // A bridge entry: master static sticky, with NDA_MASTER.
        let mut m = port_entry(4, MAC);
        m.header.state = NeighbourState::Noarp;
        m.attributes.push(NeighbourAttribute::Controller(2));
        let e = parse_entry(&NeighbourMessage::parse(&bytes(&m)).unwrap()).unwrap();
        assert!(e.on_master && e.sticky && !e.on_self);
        assert_eq!(
            (e.ifindex, e.master, e.state),
            (4, Some(2), FdbState::Static)
        );
        let mut learned = port_entry(4, MAC);
        learned.header.state = NeighbourState::Reachable;
        assert_eq!(parse_entry(&learned).unwrap().state, FdbState::Dynamic);
    }
}
