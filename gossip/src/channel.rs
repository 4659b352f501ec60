//! Gossip channels: replicated state that the mesh spreads for its owner.
//!
//! A channel is a state-based CRDT seen through bytes, so the mesh can carry channels it does
//! not understand and later issues (IPAM, MAC-to-peer) plug in without touching the transport.
//! The mesh does the same three things for every channel:
//! - a local change is broadcast once along the sender's broadcast tree, and every receiver
//!   relays only the part that improved its state, so nothing loops;
//! - a new neighbour gets the full state, split into frame-sized payloads;
//! - every gossip interval each neighbour gets the channel's 8-byte digest hash, and only when
//!   hashes differ do the two exchange digests and then the entries that differ.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::peer::PeerName;
use crate::topology::{Digest, Topology, TopologyUpdate};
use crate::wire::{self, WireError};

/// What the mesh sends on behalf of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// Channel state to merge: a delta, or part of the full state.
    Update(Vec<u8>),
    /// Anti-entropy, compact: equal hashes mean equal state and nothing more is sent.
    DigestHash(u64),
    /// The channel's digest, sent when hashes differ. `reply` asks the receiver to answer with
    /// its own digest if it is missing something, so both sides push what the other lacks.
    Digest { digest: Vec<u8>, reply: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Invalid(String),
}

/// Replicated state carried by the mesh. Merges must be commutative, associative and
/// idempotent, so that any order of delivery converges.
pub trait GossipChannel: Send {
    /// Stable hash of the state's digest: equal states have equal hashes.
    fn digest_hash(&self) -> u64;
    /// A compact description of what the state holds (for anti-entropy).
    fn digest(&self) -> Vec<u8>;
    /// The whole state as update payloads of at most about `budget` bytes each.
    fn full_state(&self, budget: usize) -> Vec<Vec<u8>>;
    /// Merges an update from `from`; returns the part that improved our state, encoded as an
    /// update, or `None` if nothing was new.
    fn merge(&mut self, from: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, ChannelError>;
    /// Compares a neighbour's digest with our state: the updates it lacks (at most about
    /// `budget` bytes each), and whether it holds something we lack.
    fn compare_digest(
        &self,
        digest: &[u8],
        budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ChannelError>;
    /// A unicast message for this peer. Returns replies to send, each to a peer.
    fn on_unicast(
        &mut self,
        _src: PeerName,
        _payload: &[u8],
    ) -> Result<Vec<(PeerName, Vec<u8>)>, ChannelError> {
        Ok(Vec::new())
    }
    /// Peers that left the topology; drop what only they could have vouched for.
    fn peers_gone(&mut self, _peers: &[PeerName]) {}
}

/// A channel shared between the mesh (which hosts one handle as its gossip channel) and the
/// router (which keeps a clone to make local changes and read the state): the MAC-to-peer
/// channel, IPAM. Every trait call is forwarded under the lock.
#[derive(Debug, Default)]
pub struct SharedChannel<C>(Arc<Mutex<C>>);

impl<C> Clone for SharedChannel<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C> SharedChannel<C> {
    pub fn new(channel: C) -> Self {
        Self(Arc::new(Mutex::new(channel)))
    }

    /// The channel. Do not hold the guard across calls into the mesh (`publish`, `unicast`,
    /// `on_message`, `tick`, …): they lock it too, and the lock is not reentrant. Never
    /// panics: nothing in a channel panics while holding the lock, and a poisoned lock is
    /// taken over as is.
    pub fn lock(&self) -> MutexGuard<'_, C> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: GossipChannel> GossipChannel for SharedChannel<C> {
    fn digest_hash(&self) -> u64 {
        self.lock().digest_hash()
    }

    fn digest(&self) -> Vec<u8> {
        self.lock().digest()
    }

    fn full_state(&self, budget: usize) -> Vec<Vec<u8>> {
        self.lock().full_state(budget)
    }

    fn merge(&mut self, from: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        self.lock().merge(from, update)
    }

    fn compare_digest(
        &self,
        digest: &[u8],
        budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ChannelError> {
        self.lock().compare_digest(digest, budget)
    }

    fn on_unicast(
        &mut self,
        src: PeerName,
        payload: &[u8],
    ) -> Result<Vec<(PeerName, Vec<u8>)>, ChannelError> {
        self.lock().on_unicast(src, payload)
    }

    fn peers_gone(&mut self, peers: &[PeerName]) {
        self.lock().peers_gone(peers);
    }
}

fn encode_parts(update: TopologyUpdate, budget: usize) -> Vec<Vec<u8>> {
    wire::split_update(update, budget)
        .iter()
        .map(wire::encode)
        .collect()
}

/// The topology is the first channel. The mesh merges it itself (a merge changes routes,
/// discovery and possibly our own version), so `merge` here is the plain CRDT merge.
impl GossipChannel for Topology {
    fn digest_hash(&self) -> u64 {
        Topology::digest_hash(self)
    }

    fn digest(&self) -> Vec<u8> {
        wire::encode(&Topology::digest(self))
    }

    fn full_state(&self, budget: usize) -> Vec<Vec<u8>> {
        encode_parts(self.full_update(), budget)
    }

    fn merge(&mut self, _from: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        let update: TopologyUpdate = wire::decode(update)?;
        let improved = Topology::merge(self, update).improved;
        Ok((!improved.is_empty()).then(|| wire::encode(&improved)))
    }

    fn compare_digest(
        &self,
        digest: &[u8],
        budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ChannelError> {
        let digest: Digest = wire::decode(digest)?;
        let (newer_here, theirs_newer) = Topology::compare_digest(self, &digest);
        Ok((encode_parts(newer_here, budget), theirs_newer))
    }
}
