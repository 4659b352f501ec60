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
                Err(e) => return Err(ctx(format!("create bridge {name}"))(e)),
            }
            index_of(&mut nl, name)?
        }
    };
    nl.set_up_with(index, None, Some(u32::from(mtu)))
        .map_err(ctx(format!("set {name} mtu {mtu} up")))
}

/// Makes `port` a bridge port with the bridge's MTU, up.
pub fn attach(port: &str, bridge: &str, mtu: u16) -> io::Result<()> {
    let mut nl = RouteSocket::open().map_err(ctx("open netlink socket".into()))?;
    let port_index = index_of(&mut nl, port)?;
    let bridge_index = index_of(&mut nl, bridge)?;
    nl.set_up_with(port_index, Some(bridge_index), Some(u32::from(mtu)))
        .map_err(ctx(format!("set {port} master {bridge} mtu {mtu} up")))
}

/// Sets `address` on `device` (`ip addr replace`: created, or updated if it is there).
pub fn set_address(device: &str, address: weft_cni::ip::IpNet) -> io::Result<()> {
    let mut nl = RouteSocket::open().map_err(ctx("open netlink socket".into()))?;
    let index = index_of(&mut nl, device)?;
    nl.add_address(index, address.addr, address.prefix, AddressMode::Replace)
        .map_err(ctx(format!("set address {address} on {device}")))
}
