//! One rtnetlink socket: a request out, its answers back up to the ACK (or DONE for a dump).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoKind, InfoPortData,
    InfoPortKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::fdb::{self, FdbEntry};
use crate::netns::in_netns;
use crate::vxlan::{PortFlags, VxlanLink, port_flags_request, vxlan_request};

/// A main-table route through one interface: `dst/prefix`, directly on the link or via `gw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    /// `None`: a link-scope route.
    pub gw: Option<IpAddr>,
}

/// How a new address meets one that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMode {
    /// `ip addr add`: EEXIST if it is there.
    Add,
    /// `ip addr replace`: created, or its properties updated if it is there.
    Replace,
}

/// One rtnetlink socket and its sequence counter.
pub struct RouteSocket {
    sock: Socket,
    seq: u32,
}

impl RouteSocket {
    /// A socket in the calling thread's netns.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// A socket bound to the netns at `path`.
    pub fn open_in(path: &str) -> io::Result<Self> {
        in_netns(path, Self::open)
    }

    /// Sends one request; collects the answers up to the ACK (or DONE for a dump). A kernel
    /// error comes back as the `io::Error` of its errno.
    pub fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::other(format!("bad netlink answer: {e}")))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// The link called `name`, or `None`.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m)
    }

    /// The link with index `index`, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<LinkMessage>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m)
    }

    fn get_link(&mut self, m: LinkMessage) -> io::Result<Option<LinkMessage>> {
        match self.exchange(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace (`ip link show`).
    pub fn links(&mut self) -> io::Result<Vec<LinkMessage>> {
        let answers = self.exchange(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// RTM_SETLINK: changes what `m` carries on the link `m.header.index` names.
    pub fn set_link(&mut self, m: LinkMessage) -> io::Result<()> {
        self.exchange(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    /// `ip link set <index> up`.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.set_link(link_change(index, None, None))
    }

    /// `ip link set <index> [master <master>] [mtu <mtu>] up`, in one request.
    pub fn set_up_with(
        &mut self,
        index: u32,
        master: Option<u32>,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        self.set_link(link_change(index, master, mtu))
    }

    /// `ip link set <index> addrgenmode none`: the link gets no IPv6 link-local address, so its
    /// own stack stays silent (no DAD, router solicitations or MLD reports). Set before the
    /// link goes up; a kernel without IPv6 has nothing to silence (`Ok`).
    pub fn set_ipv6_silent(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        match self.set_link(m) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(()),
            other => other,
        }
    }

    /// `ip link set <index> type bridge_slave hairpin on|off`.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        // RTM_NEWLINK on an existing link changes it.
        self.exchange(RouteNetlinkMessage::NewLink(m), 0).map(drop)
    }

    /// `ip link add <name> type bridge`: EEXIST if a link of that name exists.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        self.exchange(
            RouteNetlinkMessage::NewLink(bridge_request(name)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// RTM_NEWLINK with create flags: a link of any kind `m` describes.
    pub fn add_link(&mut self, m: LinkMessage) -> io::Result<()> {
        self.exchange(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Deletes the link called `name`; `Ok(false)` if there was none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `ip link add <name> type vxlan id .. dstport .. nolearning df set [mtu ..] [master ..]`:
    /// EEXIST if a link of that name exists.
    pub fn add_vxlan(&mut self, v: &VxlanLink) -> io::Result<()> {
        self.add_link(vxlan_request(v))
    }

    /// `ip link set <index> type bridge_slave learning .. flood .. mcast_flood .. bcast_flood ..`.
    pub fn set_port_flags(&mut self, index: u32, flags: PortFlags) -> io::Result<()> {
        // RTM_NEWLINK on an existing link changes it (as for hairpin).
        self.exchange(
            RouteNetlinkMessage::NewLink(port_flags_request(index, flags)),
            0,
        )
        .map(drop)
    }

    /// `bridge link set dev <index> isolated on|off`.
    pub fn set_port_isolated(&mut self, index: u32, isolated: bool) -> io::Result<()> {
        self.exchange(
            RouteNetlinkMessage::NewLink(crate::vxlan::port_isolated_request(index, isolated)),
            0,
        )
        .map(drop)
    }

    /// `ip link set <index> address <mac>`. On a bridge this also pins the address: it no
    /// longer follows the lowest MAC among its ports.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(m)
    }

    /// `bridge fdb replace ...`: an FDB entry created or replaced ([`fdb`] builds them).
    pub fn fdb_set(&mut self, m: NeighbourMessage) -> io::Result<()> {
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// `bridge fdb del ...`; `Ok(false)` if there was no such entry.
    pub fn fdb_delete(&mut self, m: NeighbourMessage) -> io::Result<bool> {
        match self.exchange(RouteNetlinkMessage::DelNeighbour(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `bridge fdb show`, only the entries on the devices `ifindexes` (both tables).
    pub fn fdb_dump(&mut self, ifindexes: &[u32]) -> io::Result<Vec<FdbEntry>> {
        let answers = self.exchange(
            RouteNetlinkMessage::GetNeighbour(fdb::dump_request()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewNeighbour(n) => fdb::parse_entry(&n),
                _ => None,
            })
            .filter(|e| ifindexes.contains(&e.ifindex))
            .collect())
    }

    /// `ip addr add|replace <addr>/<prefix> dev <index>`.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
        mode: AddressMode,
    ) -> io::Result<()> {
        let flags = match mode {
            AddressMode::Add => NLM_F_CREATE | NLM_F_EXCL,
            AddressMode::Replace => NLM_F_CREATE | NLM_F_REPLACE,
        };
        self.exchange(
            RouteNetlinkMessage::NewAddress(address_request(index, addr, prefix)),
            flags,
        )
        .map(drop)
    }

    /// `ip addr del <addr>/<prefix> dev <index>`; `Ok(false)` if the address was not there.
    pub fn delete_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<bool> {
        match self.exchange(
            RouteNetlinkMessage::DelAddress(address_request(index, addr, prefix)),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `ip route add <dst>/<prefix> [via <gw>] dev <index>` in the main table.
    pub fn add_route(&mut self, index: u32, route: &Route) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(route.dst);
        m.header.destination_prefix_length = route.prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if route.gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if route.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(route.dst)));
        }
        if let Some(gw) = route.gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        self.exchange(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// The addresses on link `index`, with their prefix lengths.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let answers = self.exchange(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for a in answers {
            let RouteNetlinkMessage::NewAddress(a) = a else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// The main-table routes whose output interface is `index`.
    pub fn routes(&mut self, index: u32) -> io::Result<Vec<Route>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = fam;
            for r in self.exchange(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewRoute(r) = r else {
                    continue;
                };
                let table = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) {
                    continue;
                }
                let ip_of = |a: &RouteAddress| match a {
                    RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                    RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                    _ => None,
                };
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => ip_of(d),
                    _ => None,
                });
                let gw = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => ip_of(g),
                    _ => None,
                });
                let zero = if fam == AddressFamily::Inet {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                };
                out.push(Route {
                    dst: dst.unwrap_or(zero),
                    prefix: r.header.destination_prefix_length,
                    gw,
                });
            }
        }
        Ok(out)
    }
}

/// The RTM_SETLINK body of `ip link set <index> [master M] [mtu N] up`.
pub fn link_change(index: u32, master: Option<u32>, mtu: Option<u32>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    if let Some(master) = master {
        m.attributes.push(LinkAttribute::Controller(master));
    }
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    m
}

/// The RTM_NEWLINK body of `ip link add <name> type bridge`.
pub fn bridge_request(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    m
}

/// The RTM_NEWADDR body for `addr/prefix` on link `index` (local = address: no peer).
pub fn address_request(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(addr);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    m
}

/// The address family of `ip`.
pub fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}
