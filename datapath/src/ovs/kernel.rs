//! [`VxlanKernel`] over the Open vSwitch datapath (placeholder until the genl client lands).

use crate::mac::Mac;
use crate::vxlan::kernel::{ApplyErrors, DeviceSpec, DeviceState, KernelError, VxlanKernel};
use crate::vxlan::plan::{FdbOp, KernelFdb};

/// The Open vSwitch fast path's kernel edge.
pub struct OvsKernel {}

impl OvsKernel {
    pub fn open() -> Result<Self, KernelError> {
        Err(KernelError::Unavailable("no openvswitch module".into()))
    }
}

impl VxlanKernel for OvsKernel {
    fn ensure_device(&mut self, _spec: &DeviceSpec) -> Result<DeviceState, KernelError> {
        Err(KernelError::NoDevice)
    }
    fn read_fdb(&mut self, _tap: &str) -> Result<KernelFdb, KernelError> {
        Err(KernelError::NoDevice)
    }
    fn apply(&mut self, _tap: &str, _ops: &[FdbOp]) -> Result<(), ApplyErrors> {
        Ok(())
    }
    fn set_local_heartbeat_mac(&mut self, _mac: Mac) -> Result<(), KernelError> {
        Err(KernelError::NoDevice)
    }
    fn isolate(&mut self, _port: &str) -> Result<(), KernelError> {
        Err(KernelError::NoDevice)
    }
    fn remove_device(&mut self, _spec: &DeviceSpec) -> Result<bool, KernelError> {
        Ok(false)
    }
}
