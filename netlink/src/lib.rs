//! weft's rtnetlink client, shared by the router (`weft`) and the CNI plugin (`weft-cni`):
//! blocking `netlink-packet-route` messages on a `netlink-sys` socket, no async runtime, no
//! `ip` binary. Generic on purpose (links, bridges, addresses, routes, network namespaces);
//! what each side does with them stays in its own crate.
//!
//! - [`RouteSocket`]: one socket and the requests weft makes on it.
//! - [`link`]: reading a link message (name, MAC, MTU, bridge, port state).
//! - [`vxlan`]: VXLAN devices and bridge-port flags; [`fdb`]: forwarding-database entries.
//! - [`in_netns`]: running code (e.g. opening a socket) inside another network namespace.

pub mod fdb;
pub mod link;
mod netns;
mod socket;
pub mod vxlan;

pub use netlink_packet_route;
pub use netns::in_netns;
pub use socket::{
    AddressMode, Route, RouteSocket, address_request, bridge_request, family, link_change,
};

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo};

    use super::*;

    #[test]
    fn bridge_request_names_the_bridge_kind() {
        let m = bridge_request("weft");
        assert_eq!(link::name_of(&m), Some("weft"));
        assert!(link::is_bridge(&m));
        assert!(m.attributes.iter().any(|a| matches!(
            a,
            LinkAttribute::LinkInfo(i) if i == &vec![LinkInfo::Kind(InfoKind::Bridge)]
        )));
    }

    #[test]
    fn link_change_sets_up_and_only_what_is_asked() {
        let m = link_change(7, Some(3), Some(1376));
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert_eq!(link::master_of(&m), Some(3));
        assert_eq!(link::mtu_of(&m), 1376);
        let bare = link_change(7, None, None);
        assert!(bare.attributes.is_empty());
    }

    #[test]
    fn address_request_carries_local_and_address_of_the_family() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 32, 0, 1));
        let m = address_request(4, v4, 12);
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!((m.header.index, m.header.prefix_len), (4, 12));
        assert!(m.attributes.contains(&AddressAttribute::Local(v4)));
        assert!(m.attributes.contains(&AddressAttribute::Address(v4)));
        let v6 = address_request(4, IpAddr::V6(Ipv6Addr::LOCALHOST), 128);
        assert_eq!(v6.header.family, AddressFamily::Inet6);
    }

    #[test]
    fn mac_formats_lowercase_colon_separated() {
        assert_eq!(
            link::format_mac([0x02, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
    }
}
