//! The kernel VXLAN fast path: a VXLAN device on the weft bridge, driven entirely from weft's
//! own knowledge (no learning, no flooding through it). See `docs/datapaths.md`.
//!
//! - [`plan`]: pure: which FDB entries the kernel should hold, and the steps from what it holds.
//! - [`kernel`]: the kernel edge: the device and its FDB entries (trait, fake, rtnetlink).
//! - [`fastbeat`]: pure: the fast-path heartbeat frame and each connection's liveness.
//! - [`engine`]: the `weft-vxlan` thread: heartbeats, selectors, FDB reconcile.

pub mod engine;
pub mod fastbeat;
pub mod kernel;
pub mod plan;

use serde::{Deserialize, Serialize};

/// What a router offers for the VXLAN fast path on one connection (carried in the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanOffer {
    /// UDP port of the sender's VXLAN device.
    pub port: u16,
    /// VXLAN network identifier; both ends must use the same one.
    pub vni: u32,
}

/// The VNI weft's VXLAN devices use.
pub const DEFAULT_VNI: u32 = 0x00_77_66; // "wf"
