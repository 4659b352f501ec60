//! The real [`HostNet`]: the plugin's verbs on [`weft_netlink`]'s blocking rtnetlink client. A
//! socket for a pod's netns is opened on a short-lived thread inside that netns
//! ([`weft_netlink::in_netns`]) and then used from the plugin's main thread.

use std::cell::{RefCell, RefMut};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use weft_netlink::link::{is_bridge, mac_of, mac_string, mtu_of, port_forwarding};
use weft_netlink::netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use weft_netlink::{AddressMode, Route, RouteSocket as Nl};

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
        match nl.add_link(host) {
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
            nl.add_address(index, a.addr, a.prefix, AddressMode::Add)
                .map_err(k(format!("add address {a} to {ifname}")))?;
        }
        nl.set_up(index).map_err(k(format!("set {ifname} up")))?;
        for r in routes {
            let what = match r.gw {
                Some(gw) => format!("add route {} via {gw} dev {ifname}", r.dst),
                None => format!("add route {} dev {ifname}", r.dst),
            };
            let route = Route {
                dst: r.dst.addr,
                prefix: r.dst.prefix,
                gw: r.gw,
            };
            nl.add_route(index, &route).map_err(k(what))?;
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
        weft_netlink::in_netns(netns, move || {
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
            addrs: nl
                .addresses(index)
                .map_err(k("list addresses"))?
                .into_iter()
                .filter_map(|(ip, prefix)| IpNet::new(ip, prefix))
                .collect(),
            routes: nl
                .routes(index)
                .map_err(k("list routes"))?
                .into_iter()
                .filter_map(|r| IpNet::new(r.dst, r.prefix).map(|dst| RouteSpec { dst, gw: r.gw }))
                .collect(),
        }))
    }
}
