//! The sleeve: Ethernet frames in UDP between routers, sealed when the mesh has a password.
//! The sans-IO core is in `batch`, `codec`, `fragment`, `offload` and `replay`; `engine` runs
//! it on the TAP and the UDP socket. See `docs/sleeve.md` for the design.

pub mod batch;
pub mod codec;
pub mod engine;
pub mod fragment;
pub mod offload;
pub mod replay;
