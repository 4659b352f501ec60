//! The weft mesh control plane, without any IO.
//!
//! Everything here decides; nothing here touches a socket. The router crate drives these
//! state machines from tokio tasks, and the tests drive them from memory.

pub mod channel;
pub mod fnv;
pub mod handshake;
pub mod ipam;
pub mod macs;
pub mod maker;
pub mod mesh;
pub mod peer;
pub mod routes;
pub mod topology;
pub mod wire;

pub use peer::{PeerName, PeerUid};
