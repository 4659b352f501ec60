//! The host's network devices the router owns: the bridge pods attach to, and its ports.
//!
//! A thin edge over the rtnetlink client the plugin uses too ([`weft_netlink`]): no `ip` binary,
//! so the image carries no iproute2. Each call opens its own socket (they are rare: start-up and
//! an IPAM change), blocking for the few microseconds the kernel takes to answer.

use std::io;

use weft_netlink::{AddressMode, RouteSocket, link};

/// Adds what was being done to a kernel error, keeping its kind and errno in the message.
fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The index of the link called `name`, or an error naming it.
fn index_of(nl: &mut RouteSocket, name: &str) -> io::Result<u32> {
    nl.link_by_name(name)
        .map_err(ctx(format!("look up {name}")))?
        .map(|l| l.header.index)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no device {name}")))
}

/// Creates the bridge if it does not exist, and sets its MTU and brings it up. A device of that
/// name that is not a bridge is an error (pods could not attach to it).
pub fn ensure_bridge(name: &str, mtu: u16) -> io::Result<()> {
    let mut nl = RouteSocket::open().map_err(ctx("open netlink socket".into()))?;
    let index = match nl
        .link_by_name(name)
        .map_err(ctx(format!("look up {name}")))?
    {
        Some(l) if link::is_bridge(&l) => l.header.index,
        Some(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists but is not a bridge"),
            ));
        }
        None => {
            match nl.add_bridge(name) {
                Ok(()) => {}
                // Made by someone else between the look-up and now: fine, it is checked below.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    // The usual cause in a container: the security context lacks NET_ADMIN.
                    return Err(ctx(format!(
                        "create bridge {name} (the router needs CAP_NET_ADMIN in the host's \
                         network namespace: in Kubernetes, add NET_ADMIN to the container's \
                         securityContext capabilities, as the chart does)"
                    ))(e));
                }
                Err(e) => return Err(ctx(format!("create bridge {name}"))(e)),
            }
            index_of(&mut nl, name)?
        }
    };
    // Its address pinned (set explicitly, so kept) before any port joins: a bridge without one
    // takes the lowest of its ports' addresses, which may be the sleeve TAP's, made anew with
    // another address at each start. The bridge's own frames would then leave from the TAP's
    // address in one run (the router takes them for its own) and from a new one in the next.
    if let Some(mac) = nl
        .link_by_name(name)
        .map_err(ctx(format!("look up {name}")))?
        .as_ref()
        .and_then(link::mac_of)
    {
        nl.set_mac(index, mac)
            .map_err(ctx(format!("pin the address of {name}")))?;
    }
    nl.set_up_with(index, None, Some(u32::from(mtu)))
        .map_err(ctx(format!("set {name} mtu {mtu} up")))
}

/// Makes `port` a bridge port with the bridge's MTU, up, with no IPv6 address of its own.
pub fn attach(port: &str, bridge: &str, mtu: u16) -> io::Result<()> {
    let mut nl = RouteSocket::open().map_err(ctx("open netlink socket".into()))?;
    let port_index = index_of(&mut nl, port)?;
    let bridge_index = index_of(&mut nl, bridge)?;
    // A port only carries the bridge's frames. With a link-local address its own stack would
    // speak on the bridge from its MAC, and the mesh would learn and spread that MAC.
    nl.set_ipv6_silent(port_index)
        .map_err(ctx(format!("set {port} addrgenmode none")))?;
    nl.set_up_with(port_index, Some(bridge_index), Some(u32::from(mtu)))
        .map_err(ctx(format!("set {port} master {bridge} mtu {mtu} up")))
}

/// Sets `address` on `device` (`ip addr replace`: created, or updated with another prefix
/// length), then removes `replaced` (an address given up) if it is there.
pub fn set_address(
    device: &str,
    address: weft_cni::ip::IpNet,
    replaced: Option<weft_cni::ip::IpNet>,
) -> io::Result<()> {
    let mut nl = RouteSocket::open().map_err(ctx("open netlink socket".into()))?;
    let index = index_of(&mut nl, device)?;
    nl.add_address(index, address.addr, address.prefix, AddressMode::Replace)
        .map_err(ctx(format!("set address {address} on {device}")))?;
    if let Some(old) = replaced
        && old != address
    {
        // Already gone is fine: the address must not stay, not must be removed by us.
        nl.delete_address(index, old.addr, old.prefix)
            .map_err(ctx(format!("remove address {old} from {device}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Against the real kernel, in a network namespace of the test's own (skipped unless root).

    use std::net::IpAddr;
    use std::process::Command;

    use weft_netlink::netlink_packet_route::link::{
        InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
    };
    use weft_netlink::{RouteSocket, in_netns, link};

    use super::*;

    /// A named network namespace, deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Self {
            let name = format!("wh{tag}{}", std::process::id());
            let ok = Command::new("ip").args(["netns", "add", &name]).status();
            assert!(ok.is_ok_and(|s| s.success()), "ip netns add {name}");
            Self(name)
        }

        fn path(&self) -> String {
            format!("/var/run/netns/{}", self.0)
        }

        /// Runs `f` inside the namespace.
        fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
            in_netns(&self.path(), f)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// A veth pair `name` / `name`p (no dummy module here: veth is what pods use anyway).
    fn add_veth(name: &str) -> io::Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(format!("{name}p")));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        RouteSocket::open()?.add_link(m)
    }

    fn link(name: &str) -> LinkMessage {
        RouteSocket::open()
            .and_then(|mut nl| nl.link_by_name(name))
            .expect("look up")
            .unwrap_or_else(|| panic!("no link {name}"))
    }

    fn is_up(l: &LinkMessage) -> bool {
        l.header
            .flags
            .contains(weft_netlink::netlink_packet_route::link::LinkFlags::Up)
    }

    #[test]
    fn bridge_is_created_once_and_takes_the_new_mtu_and_its_port() {
        if !weft_tests::require_root() {
            return;
        }
        let ns = Netns::new("br");
        ns.run(|| {
            ensure_bridge("wb0", 1400)?;
            let b = link("wb0");
            assert!(link::is_bridge(&b) && is_up(&b));
            assert_eq!(link::mtu_of(&b), 1400);
            // Again, as after a restart: the same bridge, the new MTU.
            ensure_bridge("wb0", 1376)?;
            let again = link("wb0");
            assert_eq!(again.header.index, b.header.index);
            assert_eq!(link::mtu_of(&again), 1376);

            add_veth("wp0")?;
            attach("wp0", "wb0", 1376)?;
            let port = link("wp0");
            assert_eq!(link::master_of(&port), Some(b.header.index));
            assert_eq!(link::mtu_of(&port), 1376);
            assert!(is_up(&port));
            Ok(())
        })
        .expect("in the test netns");
    }

    #[test]
    fn a_device_that_is_not_a_bridge_is_refused_and_left_alone() {
        if !weft_tests::require_root() {
            return;
        }
        let ns = Netns::new("nb");
        ns.run(|| {
            add_veth("wb1")?;
            let err = ensure_bridge("wb1", 1400).expect_err("a veth is no bridge");
            assert!(
                err.to_string().contains("wb1 exists but is not a bridge"),
                "{err}"
            );
            assert!(!link::is_bridge(&link("wb1")));
            let err = attach("nosuch", "wb1", 1400).expect_err("no such port");
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
            assert!(err.to_string().contains("nosuch"), "{err}");
            Ok(())
        })
        .expect("in the test netns");
    }

    #[test]
    fn setting_an_address_twice_replaces_it_and_a_moved_one_leaves_no_trace() {
        if !weft_tests::require_root() {
            return;
        }
        let ns = Netns::new("ad");
        ns.run(|| {
            ensure_bridge("wb2", 1400)?;
            let net: weft_cni::ip::IpNet = "10.32.0.1/12".parse().expect("net");
            set_address("wb2", net, None)?;
            set_address("wb2", net, None)?; // `ip addr replace`: no EEXIST
            let index = link("wb2").header.index;
            let mut addrs = RouteSocket::open()?.addresses(index)?;
            addrs.retain(|(ip, _)| ip.is_ipv4()); // the kernel adds a link-local IPv6 one
            assert_eq!(
                addrs,
                vec![("10.32.0.1".parse::<IpAddr>().expect("ip"), 12)]
            );
            // A moved bridge address: the new one is set and the replaced one removed; removing
            // one that is already gone is not an error.
            let moved: weft_cni::ip::IpNet = "10.32.16.1/12".parse().expect("net");
            set_address("wb2", moved, Some(net))?;
            set_address("wb2", moved, Some(net))?;
            let mut addrs = RouteSocket::open()?.addresses(index)?;
            addrs.retain(|(ip, _)| ip.is_ipv4());
            assert_eq!(
                addrs,
                vec![("10.32.16.1".parse::<IpAddr>().expect("ip"), 12)]
            );
            let err = set_address("nosuch", net, None).expect_err("no such device");
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
            Ok(())
        })
        .expect("in the test netns");
    }
}
