//! The kernel edge: every netlink / netns / raw-socket operation the verbs need, behind one trait
//! so the verb logic can be unit-tested with a recording fake. The real implementation is
//! [`crate::netlink::Netlink`].

use std::net::IpAddr;

use crate::error::CniError;
use crate::ip::IpNet;

/// What ADD asks for: a veth pair, host end on the bridge, container end in the netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethRequest {
    /// Host end name (deterministic from the attachment, see [`crate::plugin::host_veth_name`]).
    pub host_name: String,
    /// The container end's name inside the netns (`CNI_IFNAME`).
    pub ifname: String,
    pub netns: String,
    pub bridge: String,
    pub mtu: u32,
    pub hairpin: bool,
    /// The MAC the container end must have (the router's choice, for its port guard); the
    /// kernel picks one when `None`.
    pub mac: Option<[u8; 6]>,
}

/// What ADD created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedVeth {
    pub host_mac: String,
    pub container_mac: String,
}

/// A route to install (or found) inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    /// `None`: a link-scope route (directly on the interface).
    pub gw: Option<IpAddr>,
}

/// The host end as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub mac: String,
    /// The name of the bridge it is enslaved to, if any.
    pub master: Option<String>,
    pub up: bool,
}

/// The container interface as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIface {
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub addrs: Vec<IpNet>,
    /// Main-table routes through this interface.
    pub routes: Vec<RouteSpec>,
}

/// Kernel operations, each one step the verbs can undo or check.
pub trait HostNet {
    /// Checks `netns` is a network namespace other than the plugin's own (error 4 naming
    /// `CNI_NETNS` otherwise).
    fn check_netns(&self, netns: &str) -> Result<(), CniError>;
    /// The bridge's MTU, or `None` if there is no such bridge.
    fn bridge_mtu(&self, bridge: &str) -> Result<Option<u32>, CniError>;
    /// Creates the pair: host end on the bridge (MTU, hairpin, up), the peer created directly
    /// inside the netns under `ifname`.
    fn create_veth(&self, req: &VethRequest) -> Result<CreatedVeth, CniError>;
    /// Inside the netns: addresses on `ifname`, link up, then the routes in order.
    fn configure_container(
        &self,
        netns: &str,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<(), CniError>;
    /// Sends a gratuitous ARP for `addr` from `ifname` inside the netns (IPv4 only), once the
    /// path is open: the host end `host_name` forwarding on its bridge, `ifname` operationally up.
    fn announce(
        &self,
        netns: &str,
        ifname: &str,
        host_name: &str,
        addr: IpAddr,
    ) -> Result<(), CniError>;
    /// Deletes the host end (and so its peer); `Ok(false)` if there was none.
    fn delete_host_link(&self, name: &str) -> Result<bool, CniError>;
    /// The host end, if it exists.
    fn host_link(&self, name: &str) -> Result<Option<HostLink>, CniError>;
    /// The container interface, if it exists.
    fn container_iface(
        &self,
        netns: &str,
        ifname: &str,
    ) -> Result<Option<ContainerIface>, CniError>;
}
