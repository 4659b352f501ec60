//! The real [`HostNet`]: blocking rtnetlink over `netlink-sys` sockets with
//! `netlink-packet-route` messages. A socket for a pod's netns is opened on a short-lived thread
//! inside that netns ([`crate::sys::in_netns`]) and then used from the plugin's main thread.

use std::cell::{RefCell, RefMut};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{self, CniError};
use crate::hostnet::{ContainerIface, CreatedVeth, HostLink, HostNet, RouteSpec, VethRequest};
use crate::ip::IpNet;
use crate::sys;

/// How long the gratuitous ARP waits for the pod's interface to be operationally up.
const OPER_UP_WAIT: Duration = Duration::from_secs(1);

/// rtnetlink on the real kernel.
///
/// One verb makes several kernel calls: their sockets are opened once, on first use, and reused
/// (one in the host's netns, one in the pod's), so an ADD neither opens a socket per call nor
/// enters the pod's netns more than it must.
#[derive(Default)]
pub struct Netlink {
    host: RefCell<Option<Nl>>,
    /// The pod netns socket and the path it was opened for.
    pod: RefCell<Option<(String, Nl)>>,
}

impl Netlink {
    /// The host netns socket.
    fn host(&self) -> Result<RefMut<'_, Nl>, CniError> {
        let mut slot = self.host.borrow_mut();
        if slot.is_none() {
            *slot = Some(Nl::open().map_err(k("open netlink socket"))?);
        }
        RefMut::filter_map(slot, Option::as_mut)
            .map_err(|_| CniError::kernel("open netlink socket", "no socket"))
    }

    /// A socket in the netns at `netns` (reopened if the last one was for another path).
    fn pod(&self, netns: &str) -> Result<RefMut<'_, Nl>, CniError> {
        let mut slot = self.pod.borrow_mut();
        if slot.as_ref().is_none_or(|(path, _)| path != netns) {
            let nl = Nl::open_in(netns).map_err(k(format!("enter netns {netns}")))?;
            *slot = Some((netns.to_owned(), nl));
        }
        RefMut::filter_map(slot, |s| s.as_mut().map(|(_, nl)| nl))
            .map_err(|_| CniError::kernel(format!("enter netns {netns}"), "no socket"))
    }
}

/// One rtnetlink socket and its sequence counter.
struct Nl {
    sock: Socket,
    seq: u32,
}

impl Nl {
    /// A socket in the calling thread's netns.
    fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// A socket bound to the netns at `path`.
    fn open_in(path: &str) -> io::Result<Self> {
        sys::in_netns(path, Self::open)
    }

    /// Sends one request; collects the answers up to the ACK (or DONE for a dump).
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
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
    fn link_by_name(&mut self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m)
    }

    fn link_by_index(&mut self, index: u32) -> io::Result<Option<LinkMessage>> {
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

    fn set_link(&mut self, m: LinkMessage) -> io::Result<()> {
        self.exchange(RouteNetlinkMessage::SetLink(m), 0).map(drop)
    }

    fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.set_link(m)
    }

    fn set_hairpin(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        // RTM_NEWLINK on an existing link changes it (`ip link set X type bridge_slave ...`).
        self.exchange(RouteNetlinkMessage::NewLink(m), 0).map(drop)
    }

    fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn add_address(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(addr.addr);
        m.header.prefix_len = addr.prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr));
        m.attributes.push(AddressAttribute::Address(addr.addr));
        self.exchange(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    fn add_route(&mut self, index: u32, route: &RouteSpec) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(route.dst.addr);
        m.header.destination_prefix_length = route.dst.prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if route.gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if route.dst.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(route.dst.addr)));
        }
        if let Some(gw) = route.gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        self.exchange(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    fn addresses(&mut self, index: u32) -> io::Result<Vec<IpNet>> {
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
            if let Some(ip) = local.or(address)
                && let Some(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    fn routes(&mut self, index: u32) -> io::Result<Vec<RouteSpec>> {
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
                let dst_ip = r.attributes.iter().find_map(|a| match a {
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
                if let Some(dst) =
                    IpNet::new(dst_ip.unwrap_or(zero), r.header.destination_prefix_length)
                {
                    out.push(RouteSpec { dst, gw });
                }
            }
        }
        Ok(out)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
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

/// Turns on `arp_notify` for `ifname` in the calling thread's network namespace (`/proc/sys`
/// resolves `net` in the namespace of the task that opens it; a `.` in an interface name is a
/// `/` in sysctl paths).
fn set_arp_notify(ifname: &str) -> io::Result<()> {
    let path = format!(
        "/proc/sys/net/ipv4/conf/{}/arp_notify",
        ifname.replace('.', "/")
    );
    std::fs::write(path, b"1")
}

/// The link's MAC as `aa:bb:cc:dd:ee:ff`, or "" if it has none.
fn mac_string(link: &LinkMessage) -> String {
    mac_of(link).map(format_mac).unwrap_or_default()
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => b.as_slice().try_into().ok(),
        _ => None,
    })
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

/// Whether a bridge port is in the forwarding state (true for a link that is not a port).
fn port_forwarding(link: &LinkMessage) -> bool {
    let mut is_port = false;
    for a in &link.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::PortData(InfoPortData::BridgePort(attrs)) = i {
                    is_port = true;
                    if attrs
                        .iter()
                        .any(|b| matches!(b, InfoBridgePort::State(BridgePortState::Forwarding)))
                    {
                        return true;
                    }
                }
            }
        }
    }
    !is_port
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

fn k(what: impl Into<String>) -> impl FnOnce(io::Error) -> CniError {
    let what = what.into();
    move |e| CniError::kernel(what, e)
}

impl HostNet for Netlink {
    fn check_netns(&self, netns: &str) -> Result<(), CniError> {
        let bad =
            |why: String| CniError::invalid_env("CNI_NETNS", format!("CNI_NETNS {netns:?} {why}"));
        let meta = std::fs::metadata(netns).map_err(|e| bad(format!("cannot be opened: {e}")))?;
        let own = std::fs::metadata("/proc/self/ns/net").map_err(k("stat /proc/self/ns/net"))?;
        if meta.dev() != own.dev() {
            return Err(bad("is not a network namespace (not on nsfs)".into()));
        }
        if meta.ino() == own.ino() {
            return Err(bad("is the host's own network namespace".into()));
        }
        Ok(())
    }

    fn bridge_mtu(&self, bridge: &str) -> Result<Option<u32>, CniError> {
        let mut nl = self.host()?;
        match nl
            .link_by_name(bridge)
            .map_err(k(format!("look up bridge {bridge}")))?
        {
            None => Ok(None),
            Some(l) if is_bridge(&l) => Ok(Some(mtu_of(&l))),
            Some(_) => Err(CniError::invalid_config(format!(
                "{bridge} exists but is not a bridge"
            ))),
        }
    }

    fn create_veth(&self, req: &VethRequest) -> Result<CreatedVeth, CniError> {
        let mut nl = self.host()?;
        let bridge = nl
            .link_by_name(&req.bridge)
            .map_err(k(format!("look up bridge {}", req.bridge)))?
            .ok_or_else(|| CniError::no_bridge(&req.bridge, error::TRY_AGAIN_LATER))?;
        let ns = File::open(&req.netns)
            .map_err(|e| CniError::invalid_env("CNI_NETNS", format!("{}: {e}", req.netns)))?;
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(req.ifname.clone()));
        peer.attributes.push(LinkAttribute::Mtu(req.mtu));
        peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        if let Some(mac) = req.mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut host = LinkMessage::default();
        host.attributes
            .push(LinkAttribute::IfName(req.host_name.clone()));
        host.attributes.push(LinkAttribute::Mtu(req.mtu));
        host.attributes
            .push(LinkAttribute::Controller(bridge.header.index));
        host.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        match nl.exchange(
            RouteNetlinkMessage::NewLink(host),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(CniError::kernel(
                    format!(
                        "cannot create veth {} / {} in {}: an interface of that name exists",
                        req.host_name, req.ifname, req.netns
                    ),
                    e,
                ));
            }
            Err(e) => {
                return Err(CniError::kernel(
                    format!("create veth {}", req.host_name),
                    e,
                ));
            }
        }
        drop(ns);
        let finish = |nl: &mut Nl| -> Result<CreatedVeth, CniError> {
            let link = nl
                .link_by_name(&req.host_name)
                .map_err(k("look up new veth"))?
                .ok_or_else(|| CniError::kernel("new veth vanished", req.host_name.clone()))?;
            let index = link.header.index;
            nl.set_hairpin(index, req.hairpin)
                .map_err(k(format!("set hairpin on {}", req.host_name)))?;
            nl.set_up(index)
                .map_err(k(format!("set {} up", req.host_name)))?;
            let mut inner = self.pod(&req.netns)?;
            let peer = inner
                .link_by_name(&req.ifname)
                .map_err(k("look up container interface"))?
                .ok_or_else(|| {
                    CniError::kernel(
                        "container interface missing after creation",
                        req.ifname.clone(),
                    )
                })?;
            Ok(CreatedVeth {
                host_mac: mac_string(&link),
                container_mac: mac_string(&peer),
            })
        };
        finish(&mut nl).inspect_err(|_| {
            let _ = nl.delete_link(&req.host_name);
        })
    }

    fn configure_container(
        &self,
        netns: &str,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<(), CniError> {
        let mut nl = self.pod(netns)?;
        let link = nl
            .link_by_name(ifname)
            .map_err(k(format!("look up {ifname}")))?
            .ok_or_else(|| CniError::kernel(format!("{ifname} not found in {netns}"), "ENODEV"))?;
        let index = link.header.index;
        for a in addrs {
            nl.add_address(index, *a)
                .map_err(k(format!("add address {a} to {ifname}")))?;
        }
        nl.set_up(index).map_err(k(format!("set {ifname} up")))?;
        for r in routes {
            let what = match r.gw {
                Some(gw) => format!("add route {} via {gw} dev {ifname}", r.dst),
                None => format!("add route {} dev {ifname}", r.dst),
            };
            nl.add_route(index, r).map_err(k(what))?;
        }
        Ok(())
    }

    fn announce(
        &self,
        netns: &str,
        ifname: &str,
        host_name: &str,
        addr: IpAddr,
    ) -> Result<(), CniError> {
        let IpAddr::V4(v4) = addr else { return Ok(()) };
        // The bridge drops frames from a port that is not forwarding yet (it starts forwarding
        // when the kernel's link watcher has seen the carrier): wait for it, bounded.
        let deadline = Instant::now() + OPER_UP_WAIT;
        let mut nl = self.host()?;
        while Instant::now() < deadline {
            let link = nl
                .link_by_name(host_name)
                .map_err(k(format!("look up {host_name}")))?;
            if link.as_ref().is_none_or(port_forwarding) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let ifname = ifname.to_string();
        sys::in_netns(netns, move || {
            let mut nl = Nl::open()?;
            // Until the kernel's link watcher has seen the carrier, the device's queue drops
            // everything: wait for operstate UP (a few ms; bounded), then announce.
            let deadline = Instant::now() + OPER_UP_WAIT;
            let link = loop {
                let link = nl
                    .link_by_name(&ifname)?
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
                let up = link
                    .attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::OperState(State::Up)));
                if up || Instant::now() >= deadline {
                    break link;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            let mac =
                mac_of(&link).ok_or_else(|| io::Error::other("interface has no MAC address"))?;
            // The kernel announces the address itself when the MAC is set with `arp_notify`
            // on. A packet socket of our own would cost an RCU grace period when it is closed
            // (packet_release waits in synchronize_net): 10-20 ms of every ADD.
            match set_arp_notify(&ifname) {
                Ok(()) => {
                    let mut m = LinkMessage::default();
                    m.header.index = link.header.index;
                    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
                    nl.set_link(m)
                }
                Err(_) => sys::send_gratuitous_arp(link.header.index, mac, v4),
            }
        })
        .map_err(k(format!("send gratuitous ARP for {addr}")))
    }

    fn delete_host_link(&self, name: &str) -> Result<bool, CniError> {
        let mut nl = self.host()?;
        nl.delete_link(name).map_err(k(format!("delete {name}")))
    }

    fn host_link(&self, name: &str) -> Result<Option<HostLink>, CniError> {
        let mut nl = self.host()?;
        let Some(link) = nl
            .link_by_name(name)
            .map_err(k(format!("look up {name}")))?
        else {
            return Ok(None);
        };
        let master_index = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        });
        let master = match master_index {
            None => None,
            Some(i) => nl
                .link_by_index(i)
                .map_err(k("look up master"))?
                .and_then(|m| {
                    m.attributes.into_iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n),
                        _ => None,
                    })
                }),
        };
        Ok(Some(HostLink {
            mac: mac_string(&link),
            master,
            up: link.header.flags.contains(LinkFlags::Up),
        }))
    }

    fn container_iface(
        &self,
        netns: &str,
        ifname: &str,
    ) -> Result<Option<ContainerIface>, CniError> {
        let mut nl = self.pod(netns)?;
        let Some(link) = nl
            .link_by_name(ifname)
            .map_err(k(format!("look up {ifname}")))?
        else {
            return Ok(None);
        };
        let index = link.header.index;
        Ok(Some(ContainerIface {
            mac: mac_string(&link),
            mtu: mtu_of(&link),
            up: link.header.flags.contains(LinkFlags::Up),
            addrs: nl.addresses(index).map_err(k("list addresses"))?,
            routes: nl.routes(index).map_err(k("list routes"))?,
        }))
    }
}
