//! Reading a link message: its name, MAC, MTU, kind and bridge-port state.

use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkInfo, LinkMessage,
};

/// The link's name, if the message carries it.
pub fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The link's Ethernet address, if it has one.
pub fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => b.as_slice().try_into().ok(),
        _ => None,
    })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The link's MAC as `aa:bb:cc:dd:ee:ff`, or "" if it has none.
pub fn mac_string(link: &LinkMessage) -> String {
    mac_of(link).map(format_mac).unwrap_or_default()
}

/// The link's MTU (0 if the message does not carry it).
pub fn mtu_of(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

/// The index of the link's master (its bridge), if it has one.
pub fn master_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// Whether the link is a bridge.
pub fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// Whether a bridge port is in the forwarding state (true for a link that is not a port).
pub fn port_forwarding(link: &LinkMessage) -> bool {
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
