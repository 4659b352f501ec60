//! The sleeve: Ethernet frames in UDP between routers, sealed when the mesh has a password.
//! This module is the sans-IO core; see `docs/sleeve.md` for the design.

pub mod batch;
pub mod codec;
pub mod fragment;
pub mod offload;
pub mod replay;
