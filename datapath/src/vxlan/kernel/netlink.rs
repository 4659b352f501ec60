//! [`VxlanKernel`] over rtnetlink ([`weft_netlink::RouteSocket`]): one blocking socket, opened in
//! the caller's network namespace (or one named at open), each call a few requests.

use std::io;
use std::net::IpAddr;

use weft_netlink::fdb::{self, FdbState};
use weft_netlink::vxlan::{PortFlags, VxlanLink, vxlan_info};
use weft_netlink::{RouteSocket, link};

use super::{ApplyErrors, DeviceSpec, DeviceState, KernelError, OpFailure, VxlanKernel};
use crate::mac::Mac;
use crate::vxlan::plan::{BridgePort, FdbOp, KernelFdb};

/// The real kernel edge.
pub struct NetlinkKernel {
    nl: RouteSocket,
    /// The device of the last `ensure_device` (what `read_fdb` and `apply` work on).
    spec: Option<DeviceSpec>,
}

impl NetlinkKernel {
    /// A kernel edge in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            nl: RouteSocket::open()?,
            spec: None,
        })
    }

    /// A kernel edge in the network namespace at `path` (e.g. `/var/run/netns/x`).
    pub fn open_in(path: &str) -> io::Result<Self> {
        Ok(Self {
            nl: RouteSocket::open_in(path)?,
            spec: None,
        })
    }

    fn index(&mut self, name: &str) -> Result<Option<u32>, KernelError> {
        Ok(self
            .nl
            .link_by_name(name)
            .map_err(|e| KernelError::io(format!("look up {name}"), e))?
            .map(|l| l.header.index))
    }

    fn spec(&self) -> Result<DeviceSpec, KernelError> {
        self.spec.clone().ok_or(KernelError::NoDevice)
    }

    /// The VXLAN device's and the TAP's indexes (the TAP may be absent: no entries on it).
    fn ports(&mut self, tap: &str) -> Result<(u32, Option<u32>), KernelError> {
        let spec = self.spec()?;
        let vxlan = self.index(&spec.name)?.ok_or(KernelError::NoDevice)?;
        let tap = self.index(tap)?;
        Ok((vxlan, tap))
    }

    /// The index of `spec.bridge`, whose MAC is pinned first: a bridge takes the lowest MAC
    /// among its ports unless its own is set, and adding the fast port (random MAC) must not
    /// change the address pods know it by.
    pub(crate) fn pinned_bridge(&mut self, spec: &DeviceSpec) -> Result<u32, KernelError> {
        let bridge = self
            .nl
            .link_by_name(&spec.bridge)
            .map_err(|e| KernelError::io(format!("look up {}", spec.bridge), e))?
            .filter(link::is_bridge)
            .ok_or_else(|| KernelError::NoBridge(spec.bridge.clone()))?;
        let bridge_index = bridge.header.index;
        if let Some(mac) = link::mac_of(&bridge) {
            self.nl
                .set_mac(bridge_index, mac)
                .map_err(|e| KernelError::io(format!("pin the address of {}", spec.bridge), e))?;
        }
        Ok(bridge_index)
    }

    /// Makes the device `index` (called `spec.name`) the bridge's fast port, configured as
    /// [`VxlanKernel::ensure_device`] says but with the port flags `flags`, and the device the
    /// other calls work on. Another backend's port (Open vSwitch's internal port) is attached
    /// with this too.
    pub(crate) fn attach_fast_port(
        &mut self,
        spec: &DeviceSpec,
        index: u32,
        bridge_index: u32,
        is_port: bool,
        flags: PortFlags,
    ) -> Result<(), KernelError> {
        self.configure(spec, index, bridge_index, is_port, flags)?;
        self.spec = Some(spec.clone());
        Ok(())
    }

    /// The index of the device `name` and whether it is a port of `bridge` already.
    pub(crate) fn port_of(
        &mut self,
        name: &str,
        bridge: u32,
    ) -> Result<Option<(u32, bool)>, KernelError> {
        Ok(self
            .nl
            .link_by_name(name)
            .map_err(|e| KernelError::io(format!("look up {name}"), e))?
            .map(|l| (l.header.index, link::master_of(&l) == Some(bridge))))
    }

    /// Forgets the fast port (it was removed by its backend).
    pub(crate) fn forget(&mut self, name: &str) {
        if self.spec.as_ref().is_some_and(|s| s.name == name) {
            self.spec = None;
        }
    }

    /// MTU, master, port flags (`flags`: the VXLAN device's are all off), up: on a device
    /// just made or adopted. `is_port`: it is a port of the bridge already, so its flags are
    /// set before it comes up (a device made by [`Self::create`] is, down); else it joins
    /// first.
    fn configure(
        &mut self,
        spec: &DeviceSpec,
        index: u32,
        bridge: u32,
        is_port: bool,
        flags: PortFlags,
    ) -> Result<(), KernelError> {
        // Silent before it goes up: with a link-local address the port's own stack would
        // send from its MAC into the bridge, and the mesh would learn that MAC.
        self.nl
            .set_ipv6_silent(index)
            .map_err(|e| KernelError::io(format!("set {} addrgenmode none", spec.name), e))?;
        let mtu = Some(u32::from(spec.mtu));
        let result = if is_port {
            self.nl
                .set_port_flags(index, flags)
                .and_then(|()| self.nl.set_up_with(index, Some(bridge), mtu))
        } else {
            self.nl
                .set_up_with(index, Some(bridge), mtu)
                .and_then(|()| self.nl.set_port_flags(index, flags))
        };
        let group = if flags.mcast_flood {
            ", mcast_flood/bcast_flood on"
        } else {
            ""
        };
        result.map_err(|e| {
            KernelError::io(
                format!(
                    "set {} master {} mtu {} learning/flood off{group} up",
                    spec.name, spec.bridge, spec.mtu
                ),
                e,
            )
        })
    }

    fn create(&mut self, spec: &DeviceSpec, bridge: u32) -> Result<u32, KernelError> {
        let req = VxlanLink {
            name: spec.name.clone(),
            vni: spec.vni,
            port: spec.port,
            mtu: u32::from(spec.mtu),
            master: Some(bridge),
        };
        self.nl.add_vxlan(&req).map_err(|e| {
            KernelError::io(
                format!(
                    "create {} (vxlan id {} dstport {})",
                    spec.name, spec.vni, spec.port
                ),
                e,
            )
        })?;
        self.index(&spec.name)?.ok_or_else(|| {
            KernelError::io(
                format!("look up {}", spec.name),
                io::ErrorKind::NotFound.into(),
            )
        })
    }

    fn apply_one(&mut self, op: &FdbOp, vxlan: u32, tap: Option<u32>) -> io::Result<()> {
        let no_tap = || io::Error::from_raw_os_error(libc::ENODEV);
        match *op {
            FdbOp::VxlanSet { mac, dst } => self.nl.fdb_set(fdb::remote_entry(vxlan, mac, dst)),
            FdbOp::VxlanDel { mac } => self
                .nl
                .fdb_delete(fdb::remote_entry_delete(vxlan, mac))
                .map(drop),
            FdbOp::BridgeSet { mac, port } => {
                let index = match port {
                    BridgePort::Vxlan => vxlan,
                    BridgePort::Tap => tap.ok_or_else(no_tap)?,
                };
                self.nl.fdb_set(fdb::port_entry(index, mac))
            }
            FdbOp::BridgeDel { mac } => {
                // The kernel deletes a bridge entry only on the port it is on.
                if !self.nl.fdb_delete(fdb::port_entry_delete(vxlan, mac))?
                    && let Some(tap) = tap
                {
                    self.nl.fdb_delete(fdb::port_entry_delete(tap, mac))?;
                }
                Ok(())
            }
        }
    }
}

fn v4(ip: Option<IpAddr>) -> Option<std::net::Ipv4Addr> {
    match ip? {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

impl VxlanKernel for NetlinkKernel {
    fn ensure_device(&mut self, spec: &DeviceSpec) -> Result<DeviceState, KernelError> {
        let bridge_index = self.pinned_bridge(spec)?;
        let existing = self
            .nl
            .link_by_name(&spec.name)
            .map_err(|e| KernelError::io(format!("look up {}", spec.name), e))?;
        let (index, adopted, is_port) = match existing {
            Some(l)
                if vxlan_info(&l).is_some_and(|v| {
                    v.vni == Some(spec.vni)
                        && v.port == Some(spec.port)
                        && v.learning == Some(false)
                        && v.df == Some(1)
                }) =>
            {
                let is_port = link::master_of(&l) == Some(bridge_index);
                (l.header.index, true, is_port)
            }
            Some(_) => {
                self.nl.delete_link(&spec.name).map_err(|e| {
                    KernelError::io(format!("delete {} (it differs)", spec.name), e)
                })?;
                (self.create(spec, bridge_index)?, false, true)
            }
            None => (self.create(spec, bridge_index)?, false, true),
        };
        self.attach_fast_port(spec, index, bridge_index, is_port, PortFlags::QUIET)?;
        Ok(DeviceState {
            index,
            bridge_index,
            adopted,
        })
    }

    fn read_fdb(&mut self, tap: &str) -> Result<KernelFdb, KernelError> {
        let (vxlan, tap) = self.ports(tap)?;
        let indexes: Vec<u32> = std::iter::once(vxlan).chain(tap).collect();
        let entries = self
            .nl
            .fdb_dump(&indexes)
            .map_err(|e| KernelError::io("dump the FDB", e))?;
        let mut out = KernelFdb::default();
        for e in entries {
            if e.ifindex == vxlan && e.on_self {
                if let Some(dst) = v4(e.dst) {
                    out.vxlan.insert(e.mac, dst);
                }
            } else if e.master.is_some() && !e.on_self && e.state == FdbState::Static {
                // The bridge's entries: dumped with NDA_MASTER, but without NTF_MASTER.
                let port = if e.ifindex == vxlan {
                    BridgePort::Vxlan
                } else {
                    BridgePort::Tap
                };
                out.bridge.insert(e.mac, port);
            }
            // Else: the kernel's own (permanent, the ports' addresses) or learned entries.
        }
        Ok(out)
    }

    fn apply(&mut self, tap: &str, ops: &[FdbOp]) -> Result<(), ApplyErrors> {
        let fail_all = |e: KernelError| ApplyErrors {
            attempted: ops.len(),
            failures: ops
                .iter()
                .map(|op| OpFailure {
                    op: *op,
                    errno: e.errno(),
                    message: e.to_string(),
                })
                .collect(),
        };
        let (vxlan, tap) = self.ports(tap).map_err(fail_all)?;
        let failures: Vec<OpFailure> = ops
            .iter()
            .filter_map(|op| {
                self.apply_one(op, vxlan, tap).err().map(|e| OpFailure {
                    op: *op,
                    errno: e.raw_os_error(),
                    message: e.to_string(),
                })
            })
            .collect();
        ApplyErrors::check(ops.len(), failures)
    }

    fn set_local_heartbeat_mac(&mut self, mac: Mac) -> Result<(), KernelError> {
        let spec = self.spec()?;
        let bridge = self
            .index(&spec.bridge)?
            .ok_or_else(|| KernelError::NoBridge(spec.bridge.clone()))?;
        self.nl.fdb_set(fdb::local_entry(bridge, mac)).map_err(|e| {
            KernelError::io(
                format!(
                    "bridge fdb add {} dev {} self permanent",
                    link::format_mac(mac),
                    spec.bridge
                ),
                e,
            )
        })
    }

    fn isolate(&mut self, port: &str) -> Result<(), KernelError> {
        let spec = self.spec()?;
        for name in [spec.name.as_str(), port] {
            let index = self.index(name)?.ok_or_else(|| {
                KernelError::io(
                    format!("look up {name}"),
                    io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
            self.nl.set_port_isolated(index, true).map_err(|e| {
                KernelError::io(format!("bridge link set dev {name} isolated on"), e)
            })?;
        }
        Ok(())
    }

    fn remove_device(&mut self, spec: &DeviceSpec) -> Result<bool, KernelError> {
        let removed = self
            .nl
            .delete_link(&spec.name)
            .map_err(|e| KernelError::io(format!("delete {}", spec.name), e))?;
        if self.spec.as_ref().is_some_and(|s| s.name == spec.name) {
            self.spec = None;
        }
        Ok(removed)
    }
}
