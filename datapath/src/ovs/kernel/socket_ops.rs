//! The generic-netlink socket as [`OvsOps`]: the kernel's errors keep the request and errno.

use std::io;

use super::{OvsOps, Vport};
use crate::ovs::{Flow, FlowAction, FlowEntry, FlowMatch, OvsError, OvsSocket, PortNo};
use crate::ovs::{VportSpec, VportType};
use crate::vxlan::kernel::KernelError;

/// The kernel edge's error for a socket's: the request and the errno stay in the message.
pub(super) fn kernel_error(e: OvsError) -> KernelError {
    match e {
        OvsError::NoOvs => KernelError::Unavailable(e.to_string()),
        OvsError::Kernel { request, errno } => {
            KernelError::io(request, io::Error::from_raw_os_error(errno))
        }
        OvsError::Io { request, source } => KernelError::io(request, source),
        OvsError::Decode { request, source } => {
            KernelError::io(request, io::Error::other(source.to_string()))
        }
    }
}

impl OvsOps for OvsSocket {
    fn datapath(&mut self, name: &str) -> Result<Option<i32>, KernelError> {
        Ok(OvsSocket::datapath(self, name)
            .map_err(kernel_error)?
            .map(|d| d.ifindex))
    }
    fn datapath_stats(&mut self, name: &str) -> Result<(u64, u64, u64), KernelError> {
        let info = OvsSocket::datapath(self, name)
            .map_err(kernel_error)?
            .ok_or(KernelError::NoDevice)?;
        Ok((info.stats.hit, info.stats.missed, info.stats.lost))
    }
    fn create_datapath(&mut self, name: &str, upcall_pid: u32) -> Result<i32, KernelError> {
        Ok(OvsSocket::create_datapath(self, name, upcall_pid)
            .map_err(kernel_error)?
            .ifindex)
    }
    fn delete_datapath(&mut self, name: &str) -> Result<bool, KernelError> {
        OvsSocket::delete_datapath(self, name).map_err(kernel_error)
    }
    fn vports(&mut self, dp: i32) -> Result<Vec<Vport>, KernelError> {
        Ok(OvsSocket::vports(self, dp)
            .map_err(kernel_error)?
            .into_iter()
            .map(|v| Vport {
                port_no: v.port_no,
                name: v.name,
                kind: format!("{:?}", v.kind).to_lowercase(),
                vxlan_port: v.dst_port.filter(|_| v.kind == VportType::Vxlan),
                upcall_pids: v.upcall_pids,
            })
            .collect())
    }
    fn create_vxlan_vport(
        &mut self,
        dp: i32,
        name: &str,
        port: u16,
        upcall_pid: u32,
    ) -> Result<PortNo, KernelError> {
        let spec = VportSpec {
            name: name.to_owned(),
            kind: VportType::Vxlan,
            dst_port: Some(port),
            upcall_pid,
        };
        Ok(OvsSocket::create_vport(self, dp, &spec)
            .map_err(kernel_error)?
            .port_no)
    }
    fn set_upcall_pid(
        &mut self,
        dp: i32,
        port_no: PortNo,
        upcall_pid: u32,
    ) -> Result<(), KernelError> {
        OvsSocket::set_vport_upcall_pid(self, dp, port_no, upcall_pid).map_err(kernel_error)
    }
    fn set_datapath_upcall_pid(
        &mut self,
        name: &str,
        upcall_pid: u32,
    ) -> Result<bool, KernelError> {
        OvsSocket::set_datapath_upcall_pid(self, name, upcall_pid).map_err(kernel_error)
    }
    fn delete_vport(&mut self, dp: i32, port_no: PortNo) -> Result<bool, KernelError> {
        OvsSocket::delete_vport(self, dp, port_no).map_err(kernel_error)
    }
    fn flows(&mut self, dp: i32) -> Result<Vec<FlowEntry>, KernelError> {
        let (entries, raw) = OvsSocket::dump_flows(self, dp).map_err(kernel_error)?;
        // A flow weft's model cannot even hold is not weft's: like any foreign flow in weft's
        // datapath it goes (it could send pod traffic anywhere).
        for flow in &raw {
            tracing::warn!(error = %flow.error, "deleting a flow weft cannot model");
            OvsSocket::delete_raw_flow(self, dp, flow).map_err(kernel_error)?;
        }
        Ok(entries)
    }
    fn put_flow(&mut self, dp: i32, flow: &Flow) -> Result<(), KernelError> {
        OvsSocket::put_flow(self, dp, flow).map_err(kernel_error)
    }
    fn delete_flow(&mut self, dp: i32, matching: &FlowMatch) -> Result<bool, KernelError> {
        OvsSocket::delete_flow(self, dp, matching).map_err(kernel_error)
    }
    fn execute(
        &mut self,
        dp: i32,
        packet: &[u8],
        in_port: PortNo,
        actions: &[FlowAction],
    ) -> Result<(), KernelError> {
        OvsSocket::execute(self, dp, packet, in_port, actions).map_err(kernel_error)
    }
}
