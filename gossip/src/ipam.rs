//! Cluster-wide IP address management as a gossiped CRDT: which peer owns which part of the
//! cluster range (`--ipalloc-range`, default 10.32.0.0/12), and which local container holds
//! which address.
//!
//! Weave's IPAM needs a Paxos quorum of its initial peers on first use (which split clusters
//! whose nodes joined one at a time, weaveworks/weave#3891) and refuses to merge rings seeded
//! by different peers. weft's first ring is agreed among the peers each router was told about,
//! without a quorum ([`agreement`]), and two rings always merge, deterministically. IPv4 only,
//! like Weave's.
//!
//! # State: a ring of fixed chunks
//! The range is cut into at most [`MAX_CHUNKS`] equal, aligned chunks (a /12 gives 4096 chunks
//! of 256 addresses; a /24 gives 256 chunks of one address). The chunk geometry depends only
//! on the range, so every peer agrees on it. The ring is `(id, one Entry per chunk)`:
//! - [`RingId`] `(created_ms, genesis peer, genesis uid)` names the ring's creation;
//! - [`Entry`] `(version, owner, free)`: who owns the chunk, as of which version, and how many of
//!   its addresses are free (advisory, for choosing donors and for status). `owner: None` is a
//!   chunk reclaimed from a departed peer and not adopted yet.
//!
//! Entries are ranked by `(version, owned, owner, free)`, a total order; within one ring the
//! merge is the per-chunk maximum. Across rings the **smaller id wins** and the larger ring is
//! dropped whole. That is the lexicographic product of a total order and a product of total
//! orders, so merging is commutative, associative and idempotent (property-tested), and any
//! two peers that have seen the same updates hold the same ring, whatever the order. The ring
//! hash ([`GossipChannel::digest_hash`], shown in status) compares two peers' rings.
//!
//! # Who may write an entry
//! A peer allocates only from chunks its own ring says it owns, and it alone writes new
//! versions of those entries: free-count updates, and **donations** (a chunk with no address
//! in use, given in answer to a [`IpamMsg::SpaceRequest`]). A donor stops using a chunk at the
//! moment it writes the donation, and the recipient starts only once it has merged it, so the
//! owners of one chunk never overlap. The donation travels by unicast together with the
//! donor's whole ring, so the recipient also learns everything the donor knew before it.
//! Nothing in a merge rejects an entry: a merge that takes away a chunk in which we still hold
//! addresses is accepted (convergence first), and those addresses become *orphans* (below).
//!
//! # Bootstrap: an agreement among the initial peers
//! A peer with no ring creates one ("genesis", owning the whole range) only when the rule of
//! [`agreement`] allows it: at once if it was told about no peer (a lone host); otherwise only
//! once it reaches every peer it was told about (its *initial peers*, supplied by the router
//! with [`IpamChannel::set_initial_peers`]), every reachable peer has answered an
//! [`IpamMsg::RingQuery`] with "no ring", and its name is the smallest among them. A peer that
//! has a ring answers the query with the ring (and gossip hands it to every new neighbour), so
//! nodes that join one at a time receive the ring at once and never create one; among peers
//! told about each other at most one ring forms whatever subset of them is reachable (the
//! proof is in [`agreement`]). While a peer waits, allocations fail with the retryable
//! [`IpamError::WaitingForRing`], whose text says exactly what it waits for
//! ([`IpamChannel::ring_wait_reason`]). [`IpamChannel::force_ring`] creates a ring anyway, for
//! an operator who knows the initial peers are gone.
//!
//! Two rings can still meet: rings forced or created by peers not told about each other, or
//! partitions of a cluster each seeded by a lone host. Then the ring with the smaller id (the
//! older one, by the creator's wall clock) wins everywhere and the peers of the other ring ask
//! the winners for space. An address held by a loser that the winner had handed out is a
//! duplicate (below); for the router's own bridge address [`IpamChannel::reallocate_conflicting`]
//! moves the bridge to a fresh address, so two bridges never keep one gateway.
//!
//! # Orphans, reservations and duplicates
//! An address we hold in a chunk we do not own is an orphan: our ring lost a merge, we were
//! reclaimed while alive, or a chunk changed hands behind a stale view. The container keeps
//! its address (nothing is ever revoked). On [`IpamChannel::tick`] each orphan is sent as an
//! [`IpamMsg::Reserve`] to the chunk's current owner, which marks it in use (so it is never
//! handed out and the chunk is never donated) or, if it already handed it out, answers with a
//! **conflict**: both peers then list the duplicate in status ([`IpamStatus::conflicts`]).
//! Releasing an orphan sends [`IpamMsg::Unreserve`]; an owner that changes is asked again.
//!
//! # Reclaim (`weft rmpeer NAME`)
//! [`IpamChannel::reclaim`] marks each chunk of the departed peer as unowned, one version up.
//! The result depends only on the entry reclaimed, so two hosts that run it at once (even on
//! both sides of a partition) write identical entries, which merge to one. An unowned chunk is
//! then adopted (on `tick`) by its **custodian**: the owner of the nearest owned chunk before it
//! on the ring, the way a token ring hands a removed token's range to its predecessor.
//! Custodianship follows chunk ownership, so it changes hands only by the owner's own writes
//! and has the same no-overlap argument. At equal version an entry written by an owner beats a
//! reclaim, so a reclaim based on a stale view of the departed peer's last entries is undone
//! by those entries rather than overriding them.
//!
//! A reclaim is refused unless this peer or a peer it reaches owns some space
//! ([`IpamError::NoLiveHeir`]), so reclaims of dead peers never leave the ring without owners
//! and every unowned chunk has a custodian. When the last owner died there is no heir that
//! two partitioned hosts could agree on without talking: `force` reclaims anyway, and then the
//! custodian of an ownerless ring is the smallest name among the adopting peer and the peers
//! it reaches, which is safe on one host (or connected hosts) only.
//!
//! # What is guaranteed
//! - Within one ring, no address is ever handed out twice, across partitions, restarts (with
//!   the snapshot) and any number of concurrent reclaims, **provided** `rmpeer` is only run on
//!   a peer that is dead for good and whose last ring updates reached the host running it
//!   (true once gossip settled), and without `force`. A reclaim from a stale view, of a live
//!   peer, or forced on two partitioned hosts can cause duplicates; they are detected and
//!   reported, never silent.
//! - Among peers told about each other at most one ring is created, unless an operator forces
//!   one ([`agreement`]).
//! - Two independently created rings merge into one. The winning ring's allocations are never
//!   disturbed; the losing ring's allocations stay with their containers and are reserved with
//!   the new owners. An address the winning side handed out before the reservation arrived is
//!   a duplicate, reported on both peers as a conflict as soon as the two reach each other
//!   (a bridge address in that case is moved, see above).
//! - The snapshot ([`IpamChannel::snapshot`]) must be persisted before anything in
//!   [`IpamChannel::take_outbox`] is sent, and a router must restore it under the same peer
//!   name: a peer that lost its snapshot but kept its name may trust entries it cannot vouch for.
//!
//! # Checking agreement (`weft ipam check`)
//! Equal ring hashes mean equal rings, but when they differ an operator needs to know where.
//! [`IpamChannel::request_views`] asks every reachable peer for its [`IpamView`] (range, ring
//! id and hash, each owner's chunk, address and free counts, allocation and conflict counts)
//! with a round id; answers for that round from peers asked in it are kept, one per peer,
//! anything else is dropped. [`compare_views`] is pure: it names differing ranges, rings, and
//! within one ring the owners whose share peers see differently, in words an operator reads.
//!
//! # Bounds
//! The ring has at most [`MAX_CHUNKS`] entries whatever peers send (indices are validated), so
//! its digest and full state fit one frame. Reservations are stored only for addresses in
//! chunks we own, conflicts only for addresses we hold or own, and unicast lists are capped at
//! [`MAX_ADDRS_PER_MSG`]. Container ids and interface names are length-checked. A view lists
//! at most [`MAX_VIEW_OWNERS`] owners (under 21 KiB encoded).
//!
//! # Hosting
//! Like [`crate::macs::SharedMacChannel`], [`SharedIpam`] is hosted by the mesh and cloned by the
//! router. Local operations apply at once (an allocation must return an address) and queue
//! their effects: after every call the router takes [`IpamChannel::take_outbox`], persists
//! the snapshot, passes `publish` to `Mesh::publish` (whose merge reports exactly the queued
//! entries as new, so they are broadcast) and sends each unicast with `Mesh::unicast`.
//! Merges are pure joins; adoption of reclaimed chunks and free-count refreshes happen in the
//! timed [`IpamChannel::tick`] and in local operations, never inside a merge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelError, GossipChannel, SharedChannel};
use crate::fnv::Fnv64;
use crate::peer::{PeerName, PeerUid};
use crate::wire::{self, ChannelId};

pub mod agreement;
mod cidr;
mod view;
pub use cidr::Cidr;
use cidr::Geometry;
pub use view::{
    HashGroup, IpamView, MAX_VIEW_OWNERS, OwnerCounts, OwnerView, RangeGroup, RingGroup,
    ViewDifference, compare_views,
};

pub use agreement::{Decision, InitialPeer, InitialPeerState, RingAgreement, WaitReason};

/// The channel id the IPAM channel is hosted under.
pub const IPAM_CHANNEL: ChannelId = ChannelId(4);

/// Weave's default allocation range.
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";

/// The range is cut into at most `2^CHUNK_INDEX_BITS` chunks.
pub const CHUNK_INDEX_BITS: u32 = 12;
/// Upper bound on ring entries, whatever the range and whatever peers send.
pub const MAX_CHUNKS: usize = 1 << CHUNK_INDEX_BITS;
/// Upper bound on the addresses in one unicast message.
pub const MAX_ADDRS_PER_MSG: usize = 8192;
/// Longest container id accepted.
pub const MAX_CONTAINER_LEN: usize = 256;
/// Longest interface name accepted.
pub const MAX_IFNAME_LEN: usize = 64;

/// Largest encoding of one `(index, Entry)`: index, version, option tag, owner, free.
const ENTRY_MAX_LEN: usize = 5 + 10 + 1 + 7 + 5;
/// Room for an update's ring id, range and length prefix.
const UPDATE_HEADER_MAX_LEN: usize = 64;

/// Names a ring by its creation. Smaller wins a merge: the older ring by the creator's clock,
/// then the creator's name and incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingId {
    pub created_ms: u64,
    pub genesis: PeerName,
    pub uid: PeerUid,
}

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{:x}", self.genesis, self.created_ms, self.uid)
    }
}

/// One chunk's ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Bumped by every write.
    pub version: u64,
    /// `None`: reclaimed from a departed peer, awaiting adoption by its custodian.
    pub owner: Option<PeerName>,
    /// Free addresses, as last announced by the owner (advisory).
    pub free: u32,
}

/// What a peer stores for a chunk it has heard nothing about; below every real entry.
const UNKNOWN: Entry = Entry {
    version: 0,
    owner: None,
    free: 0,
};

impl Entry {
    /// Merge order: version, then owned above reclaimed (an owner's write beats a reclaim at
    /// the same version), then owner, then free.
    fn rank(&self) -> (u64, bool, Option<PeerName>, u32) {
        (self.version, self.owner.is_some(), self.owner, self.free)
    }

    /// Strictly greater in the merge order.
    pub fn supersedes(&self, other: &Entry) -> bool {
        self.rank() > other.rank()
    }

    fn known(&self) -> bool {
        self.version > 0
    }
}

/// Ring state to merge: entries of ring `ring`, in any order, duplicates allowed. Also the
/// digest (every known entry) and the ring carried by a donation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamUpdate {
    pub ring: RingId,
    pub range: Cidr,
    pub entries: Vec<(u32, Entry)>,
}

/// Unicast messages between IPAM peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamMsg {
    /// "I am out of space in ring `ring`; give me some."
    SpaceRequest { ring: RingId },
    /// The answer: the donor's whole ring, in which some chunks now name the requester.
    Donation(IpamUpdate),
    /// The donor has no chunk to give (or is not in that ring).
    Denied { ring: RingId, reason: DenyReason },
    /// "I hold these addresses in chunks you own; mark them in use."
    Reserve { ring: RingId, addrs: Vec<Ipv4Addr> },
    /// The owner's answer: reserved, and which ones it had already handed out (duplicates).
    Reserved {
        ring: RingId,
        addrs: Vec<Ipv4Addr>,
        conflicts: Vec<Ipv4Addr>,
    },
    /// "I released these orphans; they are yours again."
    Unreserve { ring: RingId, addrs: Vec<Ipv4Addr> },
    // New variants go last: postcard encodes the variant index, so appending keeps the
    // encoding of every variant above.
    /// `weft ipam check`: "send me your view, for round `id`."
    ViewRequest { id: u64 },
    /// The answer to [`IpamMsg::ViewRequest`] `id`.
    View { id: u64, view: IpamView },
    /// "Do you have a ring?", from a ring-less peer deciding whether it may create one
    /// ([`agreement`]).
    RingQuery,
    /// The answer: the answerer's range, and its whole ring or `None` for "no ring".
    RingAnswer {
        range: Cidr,
        ring: Option<IpamUpdate>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DenyReason {
    /// No chunk with all of its addresses free.
    NoSpace,
    /// The donor has another ring, or none.
    OtherRing,
}

/// What identifies one allocation: a container's interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllocKey {
    pub container: String,
    pub ifname: String,
}

impl AllocKey {
    pub fn new(container: impl Into<String>, ifname: impl Into<String>) -> Self {
        AllocKey {
            container: container.into(),
            ifname: ifname.into(),
        }
    }

    fn valid(&self) -> bool {
        !self.container.is_empty()
            && self.container.len() <= MAX_CONTAINER_LEN
            && !self.ifname.is_empty()
            && self.ifname.len() <= MAX_IFNAME_LEN
    }
}

impl fmt::Display for AllocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container, self.ifname)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid allocation range {0}: {1}")]
    BadRange(String, String),
    /// The reason says what for ([`WaitReason`]).
    #[error("waiting for the IP allocation ring ({0})")]
    WaitingForRing(String),
    #[error("waiting for address space from peer {0}")]
    WaitingForSpace(PeerName),
    #[error("range {0} exhausted: no free address here and no reachable peer can give any")]
    Exhausted(Cidr),
    #[error(
        "all free space in {range} is owned by unreachable peers: run {}",
        rmpeer_hint(.peers)
    )]
    Unreachable { range: Cidr, peers: Vec<PeerName> },
    #[error("{0} is not a usable address of the allocation range {1}")]
    NotInRange(Ipv4Addr, Cidr),
    #[error("{addr} is owned by {owner}, not by this peer")]
    OwnedElsewhere { addr: Ipv4Addr, owner: String },
    #[error("{addr} is already in use by {holder}")]
    InUse { addr: Ipv4Addr, holder: String },
    #[error("{key} already holds {addr}")]
    KeyHoldsOther { key: AllocKey, addr: Ipv4Addr },
    #[error(
        "invalid allocation key: container id of 1..={MAX_CONTAINER_LEN} bytes and interface name of 1..={MAX_IFNAME_LEN} bytes expected"
    )]
    InvalidKey,
    #[error("no IP allocation ring yet")]
    NoRing,
    #[error("cannot reclaim our own space")]
    ReclaimSelf,
    #[error("peer {0} is reachable: refusing to reclaim the space of a live peer")]
    PeerReachable(PeerName),
    #[error(
        "no live peer owns address space to inherit that of {0}; if it is gone for good, run `weft rmpeer --force {0}` on one host only"
    )]
    NoLiveHeir(PeerName),
    #[error("snapshot does not fit: {0}")]
    Snapshot(String),
    #[error("there is a ring already: {0}")]
    RingExists(RingId),
}

fn rmpeer_hint(peers: &[PeerName]) -> String {
    peers
        .iter()
        .map(|p| format!("`weft rmpeer {p}`"))
        .collect::<Vec<_>>()
        .join(" or ")
}

impl IpamError {
    /// Whether the same call may succeed later without anyone intervening.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IpamError::WaitingForRing(_) | IpamError::WaitingForSpace(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub range: Cidr,
    /// How long a space request, reservation or ring query may go unanswered before it is
    /// sent again (to the next donor, for space).
    pub request_timeout: Duration,
}

impl IpamConfig {
    pub fn new(range: Cidr) -> Self {
        IpamConfig {
            range,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What the router must send after a call: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// An update to pass to `Mesh::publish` (applied already; the merge reports it as new).
    pub publish: Option<Vec<u8>>,
    /// Unicast payloads to send on [`IPAM_CHANNEL`].
    pub unicasts: Vec<(PeerName, Vec<u8>)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.publish.is_none() && self.unicasts.is_empty()
    }
}

/// A duplicate address: held here (or owned here and held by `peer`) and claimed by `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub addr: Ipv4Addr,
    /// The other side: the peer holding it as an orphan, or the owner that handed it out.
    pub peer: PeerName,
}

/// The persisted state: the ring and everything local. Restoring it keeps every allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamSnapshot {
    pub local: PeerName,
    pub range: Cidr,
    pub ring: Option<IpamUpdate>,
    pub allocations: Vec<(AllocKey, Ipv4Addr)>,
    pub reserved: Vec<(Ipv4Addr, PeerName)>,
    pub orphan_acks: Vec<(Ipv4Addr, RingId, PeerName)>,
    pub conflicts: Vec<Conflict>,
}

impl IpamSnapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IpamError> {
        wire::decode(bytes).map_err(|e| IpamError::Snapshot(e.to_string()))
    }
}

/// A peer's share of the ring, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerStatus {
    pub peer: PeerName,
    pub reachable: bool,
    /// Runs of consecutive chunks, as `first-last` addresses.
    pub ranges: Vec<String>,
    pub addresses: u64,
    pub free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingStatus {
    pub donor: PeerName,
    pub waiting_secs: u64,
    /// Allocations waiting for that space.
    pub waiting: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpamStatus {
    pub range: String,
    /// `no ring` (about to create one), `waiting for ring`, `ready`, `waiting for space`.
    pub state: &'static str,
    /// With no ring: exactly what this peer waits for ([`WaitReason`]).
    pub waiting_for_ring: Option<String>,
    pub ring: Option<String>,
    /// Equal on two peers iff their rings are equal.
    pub ring_hash: String,
    pub owners: Vec<OwnerStatus>,
    /// Addresses in chunks reclaimed and not yet adopted.
    pub unowned: u64,
    /// Share of the range owned by peers we cannot reach.
    pub unreachable_fraction: f64,
    pub pending: Option<PendingStatus>,
    pub allocated: usize,
    /// Allocations in chunks we do not own (see the module docs).
    pub orphans: usize,
    /// Addresses in our chunks held by other peers' orphans.
    pub reserved_for_peers: usize,
    pub conflicts: Vec<Conflict>,
    /// Updates refused because they were for another range.
    pub incompatible_updates: u64,
}

#[derive(Debug, Clone)]
struct Ring {
    id: RingId,
    entries: Vec<Entry>,
}

/// A `weft ipam check` round: the peers asked for their views and those that answered.
/// Answers are kept only from peers asked in this round, one each, so memory is bounded by
/// the reachable peers.
#[derive(Debug, Clone)]
struct ViewRound {
    id: u64,
    asked: BTreeSet<PeerName>,
    answers: BTreeMap<PeerName, IpamView>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    donor: PeerName,
    sent_at: Instant,
}

/// One peer's IPAM: its replica of the ring and its local allocations.
#[derive(Debug, Clone)]
pub struct IpamChannel {
    local: PeerName,
    uid: PeerUid,
    config: IpamConfig,
    geo: Geometry,
    ring: Option<Ring>,
    allocs: BTreeMap<AllocKey, u32>,
    by_addr: BTreeMap<u32, AllocKey>,
    /// Addresses in our chunks held by other peers' orphans.
    reserved: BTreeMap<u32, PeerName>,
    /// Our orphans, and which owner (in which ring) acknowledged their reservation.
    orphan_acks: BTreeMap<u32, (RingId, PeerName)>,
    conflicts: BTreeMap<u32, PeerName>,
    reachable: BTreeSet<PeerName>,
    /// Chunks written locally and not yet published.
    unannounced: BTreeSet<u32>,
    unicasts: Vec<(PeerName, Vec<u8>)>,
    pending: Option<Pending>,
    /// Allocations that failed for lack of space and may be retried.
    waiting: BTreeSet<AllocKey>,
    /// Donors that denied us or did not answer, and when.
    denied: BTreeMap<PeerName, Instant>,
    reserve_sent: BTreeMap<PeerName, Instant>,
    /// Whether this peer may create the ring ([`agreement`]).
    agreement: RingAgreement,
    /// Wall clock at `epoch`, to stamp a new ring.
    epoch: Instant,
    epoch_unix_ms: u64,
    now: Instant,
    incompatible: u64,
    view_round: Option<ViewRound>,
}

impl IpamChannel {
    /// A fresh replica for peer `local` (incarnation `uid`); `unix_ms` is the wall clock at
    /// `now`, used only to stamp a ring this peer creates.
    pub fn new(
        config: IpamConfig,
        local: PeerName,
        uid: PeerUid,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        IpamChannel {
            local,
            uid,
            geo: Geometry::new(config.range),
            config,
            ring: None,
            allocs: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            reserved: BTreeMap::new(),
            orphan_acks: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            reachable: BTreeSet::new(),
            unannounced: BTreeSet::new(),
            unicasts: Vec::new(),
            pending: None,
            waiting: BTreeSet::new(),
            denied: BTreeMap::new(),
            reserve_sent: BTreeMap::new(),
            agreement: RingAgreement::new(local),
            epoch: now,
            epoch_unix_ms: unix_ms,
            now,
            incompatible: 0,
            view_round: None,
        }
    }

    /// A replica restored from a snapshot taken by the same peer with the same range.
    pub fn restore(
        config: IpamConfig,
        snapshot: IpamSnapshot,
        uid: PeerUid,
        now: Instant,
        unix_ms: u64,
    ) -> Result<Self, IpamError> {
        if snapshot.range != config.range {
            return Err(IpamError::Snapshot(format!(
                "taken with range {}, configured {}",
                snapshot.range, config.range
            )));
        }
        let mut c = IpamChannel::new(config, snapshot.local, uid, now, unix_ms);
        if let Some(ring) = snapshot.ring {
            c.validate(&ring)
                .map_err(|e| IpamError::Snapshot(e.to_string()))?;
            c.merge_update(ring, false);
        }
        for (key, addr) in snapshot.allocations {
            let a = u32::from(addr);
            if !key.valid() || !c.geo.usable_addr(a) || c.by_addr.contains_key(&a) {
                return Err(IpamError::Snapshot(format!("bad allocation {key} {addr}")));
            }
            c.allocs.insert(key.clone(), a);
            c.by_addr.insert(a, key);
        }
        for (addr, peer) in snapshot.reserved {
            c.reserved.insert(u32::from(addr), peer);
        }
        for (addr, ring, owner) in snapshot.orphan_acks {
            c.orphan_acks.insert(u32::from(addr), (ring, owner));
        }
        for conflict in snapshot.conflicts {
            c.conflicts.insert(u32::from(conflict.addr), conflict.peer);
        }
        Ok(c)
    }

    /// Everything to persist; see [`IpamChannel::restore`].
    pub fn snapshot(&self) -> IpamSnapshot {
        IpamSnapshot {
            local: self.local,
            range: self.config.range,
            ring: self.ring.as_ref().map(|r| self.ring_update(r)),
            allocations: self
                .allocs
                .iter()
                .map(|(k, a)| (k.clone(), Ipv4Addr::from(*a)))
                .collect(),
            reserved: self
                .reserved
                .iter()
                .map(|(a, p)| (Ipv4Addr::from(*a), *p))
                .collect(),
            orphan_acks: self
                .orphan_acks
                .iter()
                .map(|(a, (r, p))| (Ipv4Addr::from(*a), *r, *p))
                .collect(),
            conflicts: self.conflict_list(),
        }
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    pub fn range(&self) -> Cidr {
        self.config.range
    }

    pub fn ring_id(&self) -> Option<RingId> {
        self.ring.as_ref().map(|r| r.id)
    }

    /// Advances the clock used by merges and unicasts (never moves it back).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The peers we currently have a route to (supplied by the router).
    pub fn set_reachable(&mut self, peers: impl IntoIterator<Item = PeerName>) {
        self.reachable = peers.into_iter().filter(|p| *p != self.local).collect();
        self.agreement.set_reachable(&self.reachable);
    }

    /// The peers this router was told about and their state now (supplied by the router, from
    /// its connection maker): they decide whether it may create a ring ([`agreement`]).
    pub fn set_initial_peers(&mut self, peers: Vec<InitialPeer>) {
        self.agreement.set_initial(peers);
    }

    /// With no ring: what this peer waits for before it may create one, in words; `None` when
    /// it has a ring or may create one now.
    pub fn ring_wait_reason(&self) -> Option<WaitReason> {
        match (&self.ring, self.agreement.decide()) {
            (None, Decision::Wait(reason)) => Some(reason),
            _ => None,
        }
    }

    /// `weft ipam force-ring`: creates a ring now, whatever the agreement says. Refused when
    /// there is a ring. Safe only if no peer this one was told about can still create a ring
    /// (they are gone); otherwise two rings form and merge (module docs).
    pub fn force_ring(&mut self, now: Instant) -> Result<RingId, IpamError> {
        self.set_now(now);
        if let Some(id) = self.ring_id() {
            return Err(IpamError::RingExists(id));
        }
        Ok(self.create_ring())
    }

    /// If `key` holds an orphan that the chunk's owner reported as a duplicate (our ring lost
    /// a merge and the winner had handed the address out), releases it and allocates another
    /// one: returns the old address and the outcome of the new allocation (a retryable error
    /// while space is asked for: call [`IpamChannel::allocate`] again later). For the router's
    /// bridge address, which only the router uses, so moving it hurts nobody.
    pub fn reallocate_conflicting(
        &mut self,
        key: &AllocKey,
        now: Instant,
    ) -> Option<(Ipv4Addr, Result<Ipv4Addr, IpamError>)> {
        let a = *self.allocs.get(key)?;
        if !self.conflicts.contains_key(&a) || self.owns_addr(a) {
            return None;
        }
        let old = self.release(key, now)?;
        Some((old, self.allocate(key, now)))
    }

    /// Whether any peer other than us is reachable.
    pub fn any_reachable(&self) -> bool {
        !self.reachable.is_empty()
    }

    /// Whether an address could be had now: we or a peer we reach announce free addresses, or
    /// a reclaimed chunk waits to be adopted. What [`IpamStatus`] tells, without building it.
    pub fn has_free_space(&self) -> bool {
        let Some(ring) = &self.ring else {
            return false;
        };
        ring.entries.iter().enumerate().any(|(i, e)| match e.owner {
            None => e.known() && self.geo.usable(i as u32) > 0,
            Some(o) => e.free > 0 && (o == self.local || self.reachable.contains(&o)),
        })
    }

    /// The address of `key`, if allocated here.
    pub fn address_of(&self, key: &AllocKey) -> Option<Ipv4Addr> {
        self.allocs.get(key).map(|a| Ipv4Addr::from(*a))
    }

    /// All local allocations, by key.
    pub fn allocations(&self) -> Vec<(AllocKey, Ipv4Addr)> {
        self.allocs
            .iter()
            .map(|(k, a)| (k.clone(), Ipv4Addr::from(*a)))
            .collect()
    }

    /// The owner of `addr`'s chunk in our ring.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<PeerName> {
        let i = self.geo.chunk_of(u32::from(addr))?;
        self.ring.as_ref()?.entries[i as usize].owner
    }

    /// Duplicates detected so far (see the module docs).
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflict_list()
    }

    /// Takes what the router must publish and send (module docs).
    pub fn take_outbox(&mut self) -> Outbox {
        Outbox {
            publish: self
                .ring
                .as_ref()
                .filter(|_| !self.unannounced.is_empty())
                .map(|r| {
                    wire::encode(&IpamUpdate {
                        ring: r.id,
                        range: self.config.range,
                        entries: self
                            .unannounced
                            .iter()
                            .map(|i| (*i, r.entries[*i as usize]))
                            .collect(),
                    })
                }),
            unicasts: std::mem::take(&mut self.unicasts),
        }
    }

    /// Allocates an address for `key`, or returns the one it has. A
    /// [retryable](IpamError::is_retryable) error means a request for space or for the ring is
    /// under way: call again after the next message or tick.
    pub fn allocate(&mut self, key: &AllocKey, now: Instant) -> Result<Ipv4Addr, IpamError> {
        self.set_now(now);
        if !key.valid() {
            return Err(IpamError::InvalidKey);
        }
        if let Some(addr) = self.address_of(key) {
            return Ok(addr);
        }
        if self.ring.is_none() {
            self.bootstrap()?;
        }
        self.adopt_custodial();
        if let Some(addr) = self.find_free() {
            self.record(key.clone(), addr);
            self.waiting.remove(key);
            return Ok(Ipv4Addr::from(addr));
        }
        self.waiting.insert(key.clone());
        self.ask_for_space()
    }

    /// Gives up waiting for space on behalf of `key` (its caller went away).
    pub fn cancel(&mut self, key: &AllocKey) {
        self.waiting.remove(key);
    }

    /// Records an address a container already holds (after a restart without the snapshot).
    pub fn claim(&mut self, key: &AllocKey, addr: Ipv4Addr, now: Instant) -> Result<(), IpamError> {
        self.set_now(now);
        if !key.valid() {
            return Err(IpamError::InvalidKey);
        }
        let a = u32::from(addr);
        if !self.geo.usable_addr(a) {
            return Err(IpamError::NotInRange(addr, self.config.range));
        }
        match self.allocs.get(key) {
            Some(held) if *held == a => return Ok(()),
            Some(held) => {
                return Err(IpamError::KeyHoldsOther {
                    key: key.clone(),
                    addr: Ipv4Addr::from(*held),
                });
            }
            None => {}
        }
        if let Some(other) = self.by_addr.get(&a) {
            return Err(IpamError::InUse {
                addr,
                holder: other.to_string(),
            });
        }
        if self.ring.is_none() {
            let reason = self
                .ring_wait_reason()
                .map_or("no ring yet".to_owned(), |r| r.to_string());
            return Err(IpamError::WaitingForRing(reason));
        }
        match self.owner_of(addr) {
            Some(owner) if owner == self.local => {}
            owner => {
                return Err(IpamError::OwnedElsewhere {
                    addr,
                    owner: owner.map_or("nobody (reclaimed)".to_owned(), |p| p.to_string()),
                });
            }
        }
        if let Some(peer) = self.reserved.get(&a) {
            return Err(IpamError::InUse {
                addr,
                holder: format!("peer {peer}"),
            });
        }
        self.record(key.clone(), a);
        Ok(())
    }

    /// Releases `key`'s address; returns it if there was one.
    pub fn release(&mut self, key: &AllocKey, now: Instant) -> Option<Ipv4Addr> {
        self.set_now(now);
        self.waiting.remove(key);
        let a = self.allocs.remove(key)?;
        self.by_addr.remove(&a);
        self.conflicts.remove(&a);
        if let Some((ring, owner)) = self.orphan_acks.remove(&a)
            && self.ring_id() == Some(ring)
        {
            let msg = IpamMsg::Unreserve {
                ring,
                addrs: vec![Ipv4Addr::from(a)],
            };
            self.unicasts.push((owner, wire::encode(&msg)));
        }
        if let Some(i) = self.geo.chunk_of(a) {
            self.refresh(i);
        }
        Some(Ipv4Addr::from(a))
    }

    /// Releases every allocation whose key is not in `valid` (CNI GC); returns them.
    pub fn gc(&mut self, valid: &BTreeSet<AllocKey>, now: Instant) -> Vec<(AllocKey, Ipv4Addr)> {
        let stale: Vec<AllocKey> = self
            .allocs
            .keys()
            .filter(|k| !valid.contains(*k))
            .cloned()
            .collect();
        stale
            .into_iter()
            .filter_map(|k| self.release(&k, now).map(|a| (k, a)))
            .collect()
    }

    /// `weft rmpeer NAME`: marks the chunks of departed peer `peer` unowned (see the module
    /// docs for why two hosts may do this at once). Returns how many addresses were taken.
    ///
    /// Refused unless we or a peer we reach own some space to inherit it ([`IpamError::NoLiveHeir`]);
    /// `force` skips that check, and is safe on one host only (module docs).
    pub fn reclaim(&mut self, peer: PeerName, force: bool, now: Instant) -> Result<u64, IpamError> {
        self.set_now(now);
        if peer == self.local {
            return Err(IpamError::ReclaimSelf);
        }
        if self.reachable.contains(&peer) {
            return Err(IpamError::PeerReachable(peer));
        }
        let geo = self.geo;
        let local = self.local;
        let reachable = &self.reachable;
        let Some(ring) = self.ring.as_mut() else {
            return Err(IpamError::NoRing);
        };
        let live_heir = ring.entries.iter().any(|e| {
            e.owner
                .is_some_and(|o| o != peer && (o == local || reachable.contains(&o)))
        });
        if !live_heir && !force {
            return Err(IpamError::NoLiveHeir(peer));
        }
        let mut taken = 0u64;
        for (i, entry) in ring.entries.iter_mut().enumerate() {
            if entry.owner != Some(peer) || entry.version == u64::MAX {
                continue;
            }
            *entry = Entry {
                version: entry.version + 1,
                owner: None,
                free: geo.usable(i as u32),
            };
            self.unannounced.insert(i as u32);
            taken += u64::from(geo.usable(i as u32));
        }
        self.reserved.retain(|_, p| *p != peer);
        self.adopt_custodial();
        Ok(taken)
    }

    /// Timed work: adopts reclaimed chunks we are custodian of, refreshes the free counts we
    /// announce, retries an unanswered space request with another donor, and (re)sends
    /// reservations for our orphans. Call it every few seconds.
    pub fn tick(&mut self, now: Instant) {
        self.set_now(now);
        let timeout = self.config.request_timeout;
        self.denied
            .retain(|_, at| now.saturating_duration_since(*at) < timeout * 2);
        if let Some(p) = self.pending
            && now.saturating_duration_since(p.sent_at) >= timeout
        {
            self.denied.insert(p.donor, now);
            self.pending = None;
        }
        if self.ring.is_none() {
            self.ask_for_ring();
            if self.agreement.decide() == Decision::Create {
                self.create_ring();
            }
            return;
        }
        self.adopt_custodial();
        for i in 0..self.geo.chunks {
            self.refresh(i);
        }
        if !self.waiting.is_empty() && self.pending.is_none() && self.find_free().is_none() {
            let _ = self.ask_for_space();
        }
        self.send_reservations();
    }

    pub fn status(&self, now: Instant) -> IpamStatus {
        let mut owners: BTreeMap<PeerName, OwnerStatus> = BTreeMap::new();
        let mut unowned = 0u64;
        let mut unreachable = 0u64;
        if let Some(ring) = &self.ring {
            let mut runs: BTreeMap<PeerName, Vec<(u32, u32)>> = BTreeMap::new();
            for (i, e) in ring.entries.iter().enumerate() {
                let i = i as u32;
                let Some(owner) = e.owner else {
                    if e.known() {
                        unowned += u64::from(self.geo.usable(i));
                    }
                    continue;
                };
                let reachable = owner == self.local || self.reachable.contains(&owner);
                let o = owners.entry(owner).or_insert_with(|| OwnerStatus {
                    peer: owner,
                    reachable,
                    ranges: Vec::new(),
                    addresses: 0,
                    free: 0,
                });
                o.addresses += 1u64 << self.geo.chunk_bits;
                o.free += u64::from(e.free);
                if !reachable {
                    unreachable += 1u64 << self.geo.chunk_bits;
                }
                let r = runs.entry(owner).or_default();
                match r.last_mut() {
                    Some((_, end)) if *end + 1 == i => *end = i,
                    _ => r.push((i, i)),
                }
            }
            for (owner, r) in runs {
                if let Some(o) = owners.get_mut(&owner) {
                    o.ranges = r
                        .into_iter()
                        .map(|(a, b)| {
                            let lo = self.geo.bounds(a).0 as u32;
                            let hi = (self.geo.bounds(b).1 - 1) as u32;
                            format!("{}-{}", Ipv4Addr::from(lo), Ipv4Addr::from(hi))
                        })
                        .collect();
                }
            }
        }
        let state = match (
            &self.ring,
            self.pending.is_some() || !self.waiting.is_empty(),
        ) {
            (None, _) if self.ring_wait_reason().is_some() => "waiting for ring",
            (None, _) => "no ring",
            (Some(_), true) => "waiting for space",
            (Some(_), false) => "ready",
        };
        IpamStatus {
            range: self.config.range.to_string(),
            state,
            waiting_for_ring: self.ring_wait_reason().map(|r| r.to_string()),
            ring: self.ring.as_ref().map(|r| r.id.to_string()),
            ring_hash: format!("{:016x}", self.digest_hash()),
            owners: owners.into_values().collect(),
            unowned,
            unreachable_fraction: unreachable as f64 / self.geo.size as f64,
            pending: self.pending.map(|p| PendingStatus {
                donor: p.donor,
                waiting_secs: now.saturating_duration_since(p.sent_at).as_secs(),
                waiting: self.waiting.len(),
            }),
            allocated: self.allocs.len(),
            orphans: self.by_addr.keys().filter(|a| !self.owns_addr(**a)).count(),
            reserved_for_peers: self.reserved.len(),
            conflicts: self.conflict_list(),
            incompatible_updates: self.incompatible,
        }
    }

    /// This peer's [`IpamView`].
    pub fn view(&self) -> IpamView {
        let mut owners: BTreeMap<Option<PeerName>, OwnerView> = BTreeMap::new();
        if let Some(ring) = &self.ring {
            for e in ring.entries.iter().filter(|e| e.known()) {
                let o = owners.entry(e.owner).or_insert(OwnerView {
                    owner: e.owner,
                    chunks: 0,
                    addresses: 0,
                    free: 0,
                });
                o.chunks += 1;
                o.addresses += 1u64 << self.geo.chunk_bits;
                o.free += u64::from(e.free);
            }
        }
        let omitted = owners.len().saturating_sub(MAX_VIEW_OWNERS);
        IpamView {
            peer: self.local,
            range: self.config.range,
            ring: self.ring_id(),
            ring_hash: self.digest_hash(),
            owners: owners.into_values().take(MAX_VIEW_OWNERS).collect(),
            owners_omitted: u32::try_from(omitted).unwrap_or(u32::MAX),
            allocated: self.allocs.len() as u64,
            conflicts: self.conflicts.len() as u64,
        }
    }

    /// Starts `weft ipam check` round `id`: forgets the answers of any earlier round and
    /// queues a [`IpamMsg::ViewRequest`] to every reachable peer (sent by the router from
    /// [`IpamChannel::take_outbox`]). Answers arrive through `on_unicast`; read them with
    /// [`IpamChannel::views`].
    pub fn request_views(&mut self, id: u64) {
        let asked = self.reachable.clone();
        let request = wire::encode(&IpamMsg::ViewRequest { id });
        self.unicasts
            .extend(asked.iter().map(|p| (*p, request.clone())));
        self.view_round = Some(ViewRound {
            id,
            asked,
            answers: BTreeMap::new(),
        });
    }

    /// The views received in the current round, by peer (our own is [`IpamChannel::view`]).
    pub fn views(&self) -> Vec<IpamView> {
        self.view_round
            .as_ref()
            .map(|r| r.answers.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Peers asked in the current round that have not answered (yet).
    pub fn views_missing(&self) -> Vec<PeerName> {
        self.view_round
            .as_ref()
            .map(|r| {
                r.asked
                    .iter()
                    .filter(|p| !r.answers.contains_key(*p))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    // ---- internals ----

    fn conflict_list(&self) -> Vec<Conflict> {
        self.conflicts
            .iter()
            .map(|(a, p)| Conflict {
                addr: Ipv4Addr::from(*a),
                peer: *p,
            })
            .collect()
    }

    fn owns_chunk(&self, i: u32) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|r| r.entries[i as usize].owner == Some(self.local))
    }

    fn owns_addr(&self, a: u32) -> bool {
        self.geo.chunk_of(a).is_some_and(|i| self.owns_chunk(i))
    }

    fn ring_update(&self, ring: &Ring) -> IpamUpdate {
        IpamUpdate {
            ring: ring.id,
            range: self.config.range,
            entries: ring
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.known())
                .map(|(i, e)| (i as u32, *e))
                .collect(),
        }
    }

    /// No ring: create one now if the agreement allows it, or wait for one.
    fn bootstrap(&mut self) -> Result<(), IpamError> {
        match self.agreement.decide() {
            Decision::Create => {
                self.create_ring();
                Ok(())
            }
            Decision::Wait(reason) => {
                self.ask_for_ring();
                Err(IpamError::WaitingForRing(reason.to_string()))
            }
        }
    }

    /// Queues a [`IpamMsg::RingQuery`] to each reachable peer that has not answered one.
    fn ask_for_ring(&mut self) {
        let query = wire::encode(&IpamMsg::RingQuery);
        for peer in self
            .agreement
            .queries(self.now, self.config.request_timeout)
        {
            self.unicasts.push((peer, query.clone()));
        }
    }

    /// Genesis: a ring owning the whole range, stamped with the wall clock.
    fn create_ring(&mut self) -> RingId {
        let elapsed = self.now.saturating_duration_since(self.epoch).as_millis();
        let id = RingId {
            created_ms: self
                .epoch_unix_ms
                .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX)),
            genesis: self.local,
            uid: self.uid,
        };
        let entries = (0..self.geo.chunks)
            .map(|i| Entry {
                version: 1,
                owner: Some(self.local),
                free: self.geo.usable(i),
            })
            .collect();
        self.ring = Some(Ring { id, entries });
        self.unannounced.extend(0..self.geo.chunks);
        for i in 0..self.geo.chunks {
            self.refresh(i);
        }
        id
    }

    fn is_used(&self, a: u32) -> bool {
        self.by_addr.contains_key(&a) || self.reserved.contains_key(&a)
    }

    fn used_in(&self, i: u32) -> u32 {
        let (lo, hi) = self.geo.bounds(i);
        let (lo, hi) = (lo as u32, (hi - 1) as u32);
        let mine = self.by_addr.range(lo..=hi).count();
        let theirs = self
            .reserved
            .range(lo..=hi)
            .filter(|(a, _)| !self.by_addr.contains_key(a))
            .count();
        (mine + theirs) as u32
    }

    fn local_free(&self, i: u32) -> u32 {
        self.geo.usable(i).saturating_sub(self.used_in(i))
    }

    /// Rewrites our entry for chunk `i` if its announced free count is stale.
    fn refresh(&mut self, i: u32) {
        if !self.owns_chunk(i) {
            return;
        }
        let free = self.local_free(i);
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let entry = &mut ring.entries[i as usize];
        if entry.free != free && entry.version < u64::MAX {
            entry.version += 1;
            entry.free = free;
            self.unannounced.insert(i);
        }
    }

    fn record(&mut self, key: AllocKey, a: u32) {
        self.allocs.insert(key.clone(), a);
        self.by_addr.insert(a, key);
        if let Some(i) = self.geo.chunk_of(a) {
            self.refresh(i);
        }
    }

    /// The lowest free address in our fullest chunk that has one (whole chunks stay free
    /// for donation).
    fn find_free(&self) -> Option<u32> {
        let ring = self.ring.as_ref()?;
        let chunk = (0..self.geo.chunks)
            .filter(|i| ring.entries[*i as usize].owner == Some(self.local))
            .map(|i| (self.local_free(i), i))
            .filter(|(free, _)| *free > 0)
            .min()?
            .1;
        let (lo, hi) = self.geo.bounds(chunk);
        (lo..hi)
            .map(|a| a as u32)
            .find(|a| self.geo.usable_addr(*a) && !self.is_used(*a))
    }

    /// Free space each other peer announces.
    fn advertised_free(&self) -> BTreeMap<PeerName, u64> {
        let mut free = BTreeMap::new();
        if let Some(ring) = &self.ring {
            for e in &ring.entries {
                if let Some(owner) = e.owner
                    && owner != self.local
                {
                    *free.entry(owner).or_insert(0) += u64::from(e.free);
                }
            }
        }
        free
    }

    /// Out of space: asks the reachable peer announcing the most free space.
    fn ask_for_space(&mut self) -> Result<Ipv4Addr, IpamError> {
        if let Some(p) = self.pending {
            return Err(IpamError::WaitingForSpace(p.donor));
        }
        let Some(ring) = self.ring.as_ref().map(|r| r.id) else {
            return Err(IpamError::NoRing);
        };
        let free = self.advertised_free();
        let donor = free
            .iter()
            .filter(|(p, f)| {
                **f > 0 && self.reachable.contains(*p) && !self.denied.contains_key(*p)
            })
            .max_by_key(|(p, f)| (**f, std::cmp::Reverse(**p)))
            .map(|(p, _)| *p);
        if let Some(donor) = donor {
            self.pending = Some(Pending {
                donor,
                sent_at: self.now,
            });
            let msg = IpamMsg::SpaceRequest { ring };
            self.unicasts.push((donor, wire::encode(&msg)));
            return Err(IpamError::WaitingForSpace(donor));
        }
        let mut unreachable: Vec<(u64, PeerName)> = free
            .iter()
            .filter(|(p, f)| **f > 0 && !self.reachable.contains(*p))
            .map(|(p, f)| (*f, *p))
            .collect();
        if unreachable.is_empty() {
            return Err(IpamError::Exhausted(self.config.range));
        }
        unreachable.sort_by(|a, b| b.cmp(a));
        Err(IpamError::Unreachable {
            range: self.config.range,
            peers: unreachable.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// Adopts the reclaimed chunks whose custodian (module docs) we are.
    fn adopt_custodial(&mut self) {
        let local = self.local;
        let fallback = self
            .reachable
            .iter()
            .copied()
            .chain([local])
            .min()
            .unwrap_or(local);
        let Some(ring) = self.ring.as_ref() else {
            return;
        };
        let n = ring.entries.len();
        if !ring.entries.iter().any(|e| e.owner.is_none() && e.known()) {
            return;
        }
        let anyone = ring.entries.iter().any(|e| e.owner.is_some());
        // The custodian of each chunk: the last owner seen walking forwards, twice round so
        // that the walk wraps; an unknown entry breaks the chain.
        let mut custodian: Option<PeerName> = None;
        let mut adopt = Vec::new();
        for step in 0..2 * n {
            let i = step % n;
            let e = ring.entries[i];
            if !e.known() {
                custodian = None;
            } else if let Some(owner) = e.owner {
                custodian = Some(owner);
            } else if step >= n {
                let c = if anyone { custodian } else { Some(fallback) };
                if c == Some(local) && e.version < u64::MAX {
                    adopt.push(i as u32);
                }
            }
        }
        for i in adopt {
            if let Some(ring) = self.ring.as_mut() {
                let e = &mut ring.entries[i as usize];
                e.version += 1;
                e.owner = Some(local);
            }
            self.drop_foreign_state(i);
            let free = self.local_free(i);
            if let Some(ring) = self.ring.as_mut() {
                ring.entries[i as usize].free = free;
            }
            self.unannounced.insert(i);
        }
    }

    /// A chunk changed hands: reservations we held in it are no longer ours to keep.
    fn drop_foreign_state(&mut self, i: u32) {
        let (lo, hi) = self.geo.bounds(i);
        let (lo, hi) = (lo as u32, (hi - 1) as u32);
        if !self.owns_chunk(i) {
            let gone: Vec<u32> = self.reserved.range(lo..=hi).map(|(a, _)| *a).collect();
            for a in gone {
                self.reserved.remove(&a);
                if !self.by_addr.contains_key(&a) {
                    self.conflicts.remove(&a);
                }
            }
        } else {
            // Our orphans in a chunk that became ours are plain allocations again.
            let mine: Vec<u32> = self.orphan_acks.range(lo..=hi).map(|(a, _)| *a).collect();
            for a in mine {
                self.orphan_acks.remove(&a);
            }
        }
    }

    /// Sends reservations for our orphans whose owner has not acknowledged them.
    fn send_reservations(&mut self) {
        let Some(ring) = self.ring.as_ref() else {
            return;
        };
        let id = ring.id;
        let mut by_owner: BTreeMap<PeerName, Vec<Ipv4Addr>> = BTreeMap::new();
        for a in self.by_addr.keys() {
            let Some(i) = self.geo.chunk_of(*a) else {
                continue;
            };
            let Some(owner) = ring.entries[i as usize].owner else {
                continue;
            };
            if owner == self.local
                || !self.reachable.contains(&owner)
                || self.orphan_acks.get(a) == Some(&(id, owner))
            {
                continue;
            }
            let list = by_owner.entry(owner).or_default();
            if list.len() < MAX_ADDRS_PER_MSG {
                list.push(Ipv4Addr::from(*a));
            }
        }
        let timeout = self.config.request_timeout;
        for (owner, addrs) in by_owner {
            if self
                .reserve_sent
                .get(&owner)
                .is_some_and(|at| self.now.saturating_duration_since(*at) < timeout)
            {
                continue;
            }
            self.reserve_sent.insert(owner, self.now);
            let msg = IpamMsg::Reserve { ring: id, addrs };
            self.unicasts.push((owner, wire::encode(&msg)));
        }
    }

    /// Checks an update against our range and the chunk geometry. Entries for chunks outside
    /// the ring, version 0, bad names or impossible free counts make the whole update invalid.
    fn validate(&self, update: &IpamUpdate) -> Result<(), ChannelError> {
        if !update.range.valid() || update.range != self.config.range {
            return Err(ChannelError::Invalid(format!(
                "IPAM update for range {} but ours is {}",
                update.range, self.config.range
            )));
        }
        if !valid_name(update.ring.genesis) {
            return Err(ChannelError::Invalid("ring id names no peer".into()));
        }
        for (i, e) in &update.entries {
            if *i >= self.geo.chunks
                || e.version == 0
                || e.owner.is_some_and(|o| !valid_name(o))
                || e.free > self.geo.usable(*i)
            {
                return Err(ChannelError::Invalid(format!(
                    "bad IPAM entry for chunk {i}: {e:?}"
                )));
            }
        }
        Ok(())
    }

    /// The join (module docs). Returns what improved; with `local`, also the entries queued
    /// for announcement that the update repeats.
    fn merge_update(&mut self, update: IpamUpdate, local: bool) -> Vec<(u32, Entry)> {
        // A ring with no known entry is no ring at all: it cannot displace one.
        if update.entries.is_empty() {
            return Vec::new();
        }
        let replace = match &self.ring {
            None => true,
            Some(r) if update.ring < r.id => true,
            Some(r) if update.ring > r.id => return Vec::new(),
            Some(_) => false,
        };
        if replace {
            self.ring = Some(Ring {
                id: update.ring,
                entries: vec![UNKNOWN; self.geo.chunks as usize],
            });
            // Everything about the old ring is void: its reservations, announcements,
            // requests and denials.
            self.reserved.clear();
            self.unannounced.clear();
            self.pending = None;
            self.denied.clear();
            self.reserve_sent.clear();
        }
        let mut improved: BTreeMap<u32, Entry> = BTreeMap::new();
        let mut reclaimed = BTreeSet::new();
        for (i, e) in update.entries {
            let Some(ring) = self.ring.as_mut() else {
                break;
            };
            let stored = &mut ring.entries[i as usize];
            if e.supersedes(stored) {
                let was_ours = stored.owner == Some(self.local);
                if let (Some(old), None) = (stored.owner, e.owner) {
                    reclaimed.insert(old);
                }
                *stored = e;
                improved.insert(i, e);
                self.unannounced.remove(&i);
                if was_ours != (e.owner == Some(self.local)) {
                    self.drop_foreign_state(i);
                }
            } else if local && *stored == e && self.unannounced.remove(&i) {
                improved.insert(i, e);
            }
        }
        if !reclaimed.is_empty() {
            // A departed peer's orphans died with it.
            self.reserved.retain(|_, p| !reclaimed.contains(p));
        }
        improved.into_iter().collect()
    }

    fn encode_improved(&self, entries: Vec<(u32, Entry)>) -> Option<Vec<u8>> {
        let ring = self.ring.as_ref()?;
        (!entries.is_empty()).then(|| {
            wire::encode(&IpamUpdate {
                ring: ring.id,
                range: self.config.range,
                entries,
            })
        })
    }

    fn decode_update(&mut self, bytes: &[u8]) -> Result<IpamUpdate, ChannelError> {
        let update: IpamUpdate = wire::decode(bytes)?;
        if let Err(e) = self.validate(&update) {
            if update.range != self.config.range {
                self.incompatible = self.incompatible.saturating_add(1);
            }
            return Err(e);
        }
        Ok(update)
    }

    fn on_space_request(&mut self, src: PeerName, ring: RingId) -> IpamMsg {
        if self.ring_id() != Some(ring) {
            return IpamMsg::Denied {
                ring,
                reason: DenyReason::OtherRing,
            };
        }
        let owned: Vec<u32> = (0..self.geo.chunks)
            .filter(|i| self.owns_chunk(*i))
            .collect();
        let total_free: u64 = owned.iter().map(|i| u64::from(self.local_free(*i))).sum();
        let whole: Vec<u32> = owned
            .iter()
            .copied()
            .filter(|i| self.used_in(*i) == 0 && self.geo.usable(*i) > 0)
            .collect();
        // The longest run of wholly free chunks; give its upper half, keeping some space.
        let mut best: (usize, usize) = (0, 0);
        let mut start = 0;
        for k in 0..whole.len() {
            if k > 0 && whole[k] != whole[k - 1] + 1 {
                start = k;
            }
            if k + 1 - start > best.1 - best.0 {
                best = (start, k + 1);
            }
        }
        let run = &whole[best.0..best.1];
        let mut give = run.len().div_ceil(2);
        let given_free: u64 = run[run.len() - give..]
            .iter()
            .map(|i| u64::from(self.geo.usable(*i)))
            .sum();
        if give > 0 && given_free >= total_free {
            give -= 1;
        }
        if give == 0 {
            return IpamMsg::Denied {
                ring,
                reason: DenyReason::NoSpace,
            };
        }
        let given: Vec<u32> = run[run.len() - give..].to_vec();
        if let Some(r) = self.ring.as_mut() {
            for i in &given {
                let e = &mut r.entries[*i as usize];
                if e.version < u64::MAX {
                    e.version += 1;
                    e.owner = Some(src);
                    e.free = self.geo.usable(*i);
                }
            }
        }
        for i in given {
            self.unannounced.insert(i);
            self.drop_foreign_state(i);
        }
        match self.ring.as_ref() {
            Some(r) => IpamMsg::Donation(self.ring_update(r)),
            None => IpamMsg::Denied {
                ring,
                reason: DenyReason::OtherRing,
            },
        }
    }

    fn on_reserve(&mut self, src: PeerName, ring: RingId, addrs: Vec<Ipv4Addr>) -> IpamMsg {
        let mut acked = Vec::new();
        let mut conflicts = Vec::new();
        let mut touched = BTreeSet::new();
        if self.ring_id() == Some(ring) {
            for addr in addrs {
                let a = u32::from(addr);
                if !self.geo.usable_addr(a) || !self.owns_addr(a) {
                    continue;
                }
                acked.push(addr);
                if self.by_addr.contains_key(&a) {
                    conflicts.push(addr);
                    self.conflicts.insert(a, src);
                    self.reserved.entry(a).or_insert(src);
                } else {
                    match self.reserved.get(&a) {
                        Some(other) if *other != src => {
                            conflicts.push(addr);
                            self.conflicts.insert(a, src);
                        }
                        _ => {
                            self.reserved.insert(a, src);
                        }
                    }
                }
                if let Some(i) = self.geo.chunk_of(a) {
                    touched.insert(i);
                }
            }
        }
        for i in touched {
            self.refresh(i);
        }
        IpamMsg::Reserved {
            ring,
            addrs: acked,
            conflicts,
        }
    }

    fn on_reserved(
        &mut self,
        src: PeerName,
        ring: RingId,
        addrs: Vec<Ipv4Addr>,
        conflicts: Vec<Ipv4Addr>,
    ) {
        if self.ring_id() != Some(ring) {
            return;
        }
        for addr in addrs {
            let a = u32::from(addr);
            if self.by_addr.contains_key(&a) && !self.owns_addr(a) {
                self.orphan_acks.insert(a, (ring, src));
            }
        }
        for addr in conflicts {
            let a = u32::from(addr);
            if self.by_addr.contains_key(&a) && !self.owns_addr(a) {
                self.conflicts.insert(a, src);
            }
        }
        self.reserve_sent.remove(&src);
    }

    fn on_unreserve(&mut self, src: PeerName, ring: RingId, addrs: Vec<Ipv4Addr>) {
        if self.ring_id() != Some(ring) {
            return;
        }
        for addr in addrs {
            let a = u32::from(addr);
            if self.reserved.get(&a) == Some(&src) {
                self.reserved.remove(&a);
                if self.conflicts.get(&a) == Some(&src) {
                    self.conflicts.remove(&a);
                }
                if let Some(i) = self.geo.chunk_of(a) {
                    self.refresh(i);
                }
            }
        }
    }
}

fn valid_name(name: PeerName) -> bool {
    PeerName::from_u64(name.as_u64()).is_some()
}

/// Decodes a unicast payload, checking list bounds and the shape of views.
pub fn decode_msg(bytes: &[u8]) -> Result<IpamMsg, ChannelError> {
    let msg: IpamMsg = wire::decode(bytes)?;
    let too_long = match &msg {
        IpamMsg::Reserve { addrs, .. } | IpamMsg::Unreserve { addrs, .. } => {
            addrs.len() > MAX_ADDRS_PER_MSG
        }
        IpamMsg::Reserved {
            addrs, conflicts, ..
        } => addrs.len() > MAX_ADDRS_PER_MSG || conflicts.len() > MAX_ADDRS_PER_MSG,
        IpamMsg::Donation(update)
        | IpamMsg::RingAnswer {
            ring: Some(update), ..
        } => update.entries.len() > 2 * MAX_CHUNKS,
        IpamMsg::View { view, .. } => {
            view.validate()?;
            false
        }
        _ => false,
    };
    if too_long {
        return Err(ChannelError::Invalid("IPAM message too long".into()));
    }
    Ok(msg)
}

/// Splits entries into updates of at most about `budget` bytes (at least one entry each).
fn encode_parts(
    ring: RingId,
    range: Cidr,
    entries: &[(u32, Entry)],
    budget: usize,
) -> Vec<Vec<u8>> {
    let per_part = (budget.saturating_sub(UPDATE_HEADER_MAX_LEN) / ENTRY_MAX_LEN).max(1);
    entries
        .chunks(per_part)
        .map(|part| {
            wire::encode(&IpamUpdate {
                ring,
                range,
                entries: part.to_vec(),
            })
        })
        .collect()
}

impl GossipChannel for IpamChannel {
    /// [`Fnv64`] over the ring id, the range and every known entry in chunk order; a constant
    /// with no ring. This is the ring hash of status.
    fn digest_hash(&self) -> u64 {
        let mut hash = Fnv64::default();
        let Some(ring) = &self.ring else {
            return hash.finish();
        };
        hash.word(ring.id.created_ms);
        hash.word(ring.id.genesis.as_u64());
        hash.word(ring.id.uid);
        hash.word(u64::from(u32::from(self.config.range.addr)));
        hash.word(u64::from(self.config.range.prefix));
        let mut known = 0u64;
        for (i, e) in ring.entries.iter().enumerate() {
            if e.known() {
                hash.word(i as u64);
                hash.word(e.version);
                hash.word(e.owner.map_or(1 << 48, |o| o.as_u64()));
                hash.word(u64::from(e.free));
                known += 1;
            }
        }
        hash.word(known);
        hash.finish()
    }

    /// Every known entry (at most [`MAX_CHUNKS`], so it fits a frame), or nothing.
    fn digest(&self) -> Vec<u8> {
        wire::encode(&self.ring.as_ref().map(|r| self.ring_update(r)))
    }

    fn full_state(&self, budget: usize) -> Vec<Vec<u8>> {
        match &self.ring {
            Some(r) => encode_parts(
                r.id,
                self.config.range,
                &self.ring_update(r).entries,
                budget,
            ),
            None => Vec::new(),
        }
    }

    /// Validates the whole update (a malformed or foreign-range update changes nothing), then
    /// joins it. From the local peer (`Mesh::publish`), entries queued by local operations
    /// count as new, so they are broadcast.
    fn merge(&mut self, from: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        let update = self.decode_update(update)?;
        let improved = self.merge_update(update, from == self.local);
        Ok(self.encode_improved(improved))
    }

    fn compare_digest(
        &self,
        digest: &[u8],
        budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ChannelError> {
        let theirs: Option<IpamUpdate> = wire::decode(digest)?;
        if let Some(t) = &theirs {
            self.validate(t)?;
        }
        let Some(ours) = &self.ring else {
            return Ok((Vec::new(), theirs.is_some()));
        };
        let Some(theirs) = theirs else {
            return Ok((self.full_state(budget), false));
        };
        if theirs.ring < ours.id {
            return Ok((Vec::new(), true));
        }
        if theirs.ring > ours.id {
            return Ok((self.full_state(budget), false));
        }
        let mut their_entries = vec![UNKNOWN; ours.entries.len()];
        for (i, e) in theirs.entries {
            let slot = &mut their_entries[i as usize];
            if e.supersedes(slot) {
                *slot = e;
            }
        }
        let newer_here: Vec<(u32, Entry)> = ours
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| e.supersedes(&their_entries[*i]))
            .map(|(i, e)| (i as u32, *e))
            .collect();
        let they_know_more = their_entries
            .iter()
            .zip(&ours.entries)
            .any(|(t, o)| t.supersedes(o));
        Ok((
            encode_parts(ours.id, self.config.range, &newer_here, budget),
            they_know_more,
        ))
    }

    fn on_unicast(
        &mut self,
        src: PeerName,
        payload: &[u8],
    ) -> Result<Vec<(PeerName, Vec<u8>)>, ChannelError> {
        if src == self.local {
            return Ok(Vec::new());
        }
        let reply = match decode_msg(payload)? {
            IpamMsg::SpaceRequest { ring } => Some(self.on_space_request(src, ring)),
            IpamMsg::Donation(update) => {
                self.validate(&update)?;
                self.merge_update(update, false);
                if self.pending.is_some_and(|p| p.donor == src) {
                    self.pending = None;
                }
                self.denied.remove(&src);
                None
            }
            IpamMsg::Denied { .. } => {
                if self.pending.is_some_and(|p| p.donor == src) {
                    self.pending = None;
                }
                self.denied.insert(src, self.now);
                if !self.waiting.is_empty() && self.find_free().is_none() {
                    let _ = self.ask_for_space();
                }
                None
            }
            IpamMsg::Reserve { ring, addrs } => Some(self.on_reserve(src, ring, addrs)),
            IpamMsg::Reserved {
                ring,
                addrs,
                conflicts,
            } => {
                self.on_reserved(src, ring, addrs, conflicts);
                None
            }
            IpamMsg::Unreserve { ring, addrs } => {
                self.on_unreserve(src, ring, addrs);
                None
            }
            IpamMsg::RingQuery => {
                // A peer allowed to create the ring does so before it answers, so that it never
                // tells anyone "no ring" while it may make one at any moment.
                if self.ring.is_none() && self.agreement.decide() == Decision::Create {
                    self.create_ring();
                }
                Some(IpamMsg::RingAnswer {
                    range: self.config.range,
                    ring: self.ring.as_ref().map(|r| self.ring_update(r)),
                })
            }
            IpamMsg::RingAnswer { range, .. } if range != self.config.range => {
                // Misconfigured, but not ours to wait for: its rings never merge with ours.
                self.agreement.answered_foreign(src);
                self.incompatible = self.incompatible.saturating_add(1);
                None
            }
            IpamMsg::RingAnswer {
                ring: Some(update), ..
            } => {
                self.validate(&update)?;
                self.merge_update(update, false);
                None
            }
            IpamMsg::RingAnswer { ring: None, .. } => {
                self.agreement.answered_ringless(src);
                None
            }
            IpamMsg::ViewRequest { id } => Some(IpamMsg::View {
                id,
                view: self.view(),
            }),
            IpamMsg::View { id, view } => {
                if view.peer != src {
                    return Err(ChannelError::Invalid(format!(
                        "IPAM view from {src} names peer {}",
                        view.peer
                    )));
                }
                // Late answers to an earlier round and unasked ones are dropped.
                if let Some(round) = self.view_round.as_mut()
                    && round.id == id
                    && round.asked.contains(&src)
                {
                    round.answers.insert(src, view);
                }
                None
            }
        };
        Ok(reply
            .map(|msg| vec![(src, wire::encode(&msg))])
            .unwrap_or_default())
    }
}

/// An [`IpamChannel`] shared between the mesh (which hosts one handle as its gossip channel)
/// and the router (which keeps a clone to allocate, release, reclaim and read status).
pub type SharedIpam = SharedChannel<IpamChannel>;

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn config(range: &str) -> IpamConfig {
        IpamConfig::new(cidr(range))
    }

    fn peer(n: u64, range: &str, t: Instant) -> IpamChannel {
        IpamChannel::new(config(range), name(n), 1000 + n, t, 1_000_000)
    }

    fn key(k: u64) -> AllocKey {
        AllocKey::new(format!("c{k}"), "eth0")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// What the router does after a call: publish (checking the merge reports exactly the
    /// queued entries) and hand back the update and the unicasts.
    type Unicasts = Vec<(PeerName, Vec<u8>)>;

    fn drain(c: &mut IpamChannel) -> (Option<Vec<u8>>, Unicasts) {
        let out = c.take_outbox();
        if let Some(update) = &out.publish {
            let improved = c.merge(c.local_name(), update).unwrap();
            assert_eq!(
                improved.as_ref(),
                Some(update),
                "a local change applies as is"
            );
            assert_eq!(c.merge(c.local_name(), update).unwrap(), None);
        }
        (out.publish, out.unicasts)
    }

    fn entries(c: &IpamChannel) -> Vec<Entry> {
        c.ring
            .as_ref()
            .map(|r| r.entries.clone())
            .unwrap_or_default()
    }

    fn update(ring: RingId, range: &str, entries: &[(u32, Entry)]) -> Vec<u8> {
        wire::encode(&IpamUpdate {
            ring,
            range: cidr(range),
            entries: entries.to_vec(),
        })
    }

    fn entry(version: u64, owner: Option<u64>, free: u32) -> Entry {
        Entry {
            version,
            owner: owner.map(name),
            free,
        }
    }

    /// Hands `a`'s state to `b` the way a new neighbour gets it.
    fn introduce(a: &IpamChannel, b: &mut IpamChannel) {
        for part in a.full_state(1 << 16) {
            b.merge(a.local_name(), &part).unwrap();
        }
    }

    /// Delivers unicasts between the given replicas until none are left, then spreads what
    /// they published to all of them.
    fn deliver(peers: &mut [&mut IpamChannel], mut queue: Vec<(PeerName, PeerName, Vec<u8>)>) {
        let mut published = Vec::new();
        while let Some((src, dst, payload)) = queue.pop() {
            let Some(to) = peers.iter_mut().find(|p| p.local_name() == dst) else {
                continue;
            };
            for (next, reply) in to.on_unicast(src, &payload).unwrap() {
                queue.push((dst, next, reply));
            }
            let (update, more) = drain(to);
            published.extend(update.map(|u| (dst, u)));
            queue.extend(more.into_iter().map(|(d, m)| (dst, d, m)));
        }
        for (from, update) in published {
            for p in peers.iter_mut() {
                p.merge(from, &update).unwrap();
            }
        }
    }

    fn sent_by(c: &mut IpamChannel) -> Vec<(PeerName, PeerName, Vec<u8>)> {
        let from = c.local_name();
        drain(c).1.into_iter().map(|(d, m)| (from, d, m)).collect()
    }

    #[test]
    fn ranges_parse_and_cut_into_bounded_chunks() {
        assert_eq!(cidr(DEFAULT_RANGE).to_string(), "10.32.0.0/12");
        for bad in [
            "10.32.0.1/12",
            "10.0.0.0/31",
            "10.0.0.0",
            "x/8",
            "10.0.0.0/33",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let g = Geometry::new(cidr("10.32.0.0/12"));
        assert_eq!((g.chunks, 1u32 << g.chunk_bits), (4096, 256));
        assert_eq!((g.usable(0), g.usable(1), g.usable(4095)), (255, 256, 255));
        let g = Geometry::new(cidr("10.0.0.0/24"));
        assert_eq!((g.chunks, g.chunk_bits), (256, 0));
        assert_eq!((g.usable(0), g.usable(1), g.usable(255)), (0, 1, 0));
        let g = Geometry::new(cidr("0.0.0.0/0"));
        assert_eq!(g.chunks as usize, MAX_CHUNKS);
        assert!(!g.usable_addr(0) && !g.usable_addr(u32::MAX) && g.usable_addr(1));
    }

    #[test]
    fn a_lone_peer_creates_the_ring_and_allocates_idempotently() {
        let t = Instant::now();
        let mut a = peer(1, "10.0.0.0/24", t);
        assert_eq!(a.status(t).state, "no ring");
        let first = a.allocate(&key(1), t).unwrap();
        assert_eq!(first, ip("10.0.0.1"), "never the network address");
        assert_eq!(a.allocate(&key(1), t).unwrap(), first, "idempotent");
        let other = a.allocate(&AllocKey::new("c1", "eth1"), t).unwrap();
        assert_ne!(other, first, "one address per interface");
        let (published, unicasts) = drain(&mut a);
        assert!(published.is_some() && unicasts.is_empty());
        assert_eq!(a.ring_id().unwrap().genesis, name(1));
        assert_eq!(a.status(t).state, "ready");
        assert_eq!(a.release(&key(1), t), Some(first));
        assert_eq!(a.release(&key(1), t), None);
        // Claim: only usable addresses of chunks we own, not held by someone else.
        a.claim(&key(7), ip("10.0.0.77"), t).unwrap();
        a.claim(&key(7), ip("10.0.0.77"), t).unwrap();
        assert!(matches!(
            a.claim(&key(7), ip("10.0.0.78"), t),
            Err(IpamError::KeyHoldsOther { .. })
        ));
        assert!(matches!(
            a.claim(&key(8), ip("10.0.0.77"), t),
            Err(IpamError::InUse { .. })
        ));
        for outside in ["10.0.1.1", "10.0.0.0", "10.0.0.255"] {
            assert!(matches!(
                a.claim(&key(9), ip(outside), t),
                Err(IpamError::NotInRange(..))
            ));
        }
        assert_eq!(
            a.allocate(&AllocKey::new("", "eth0"), t),
            Err(IpamError::InvalidKey)
        );
        // GC keeps only what is listed.
        let valid = BTreeSet::from([key(7)]);
        let released = a.gc(&valid, t);
        assert_eq!(released, vec![(AllocKey::new("c1", "eth1"), other)]);
        assert_eq!(a.allocations(), vec![(key(7), ip("10.0.0.77"))]);
        // Every usable address, then exhaustion.
        for k in 100..353 {
            a.allocate(&key(k), t).unwrap();
        }
        assert_eq!(
            a.allocate(&key(999), t),
            Err(IpamError::Exhausted(cidr("10.0.0.0/24")))
        );
        assert!(
            a.allocations()
                .iter()
                .all(|(_, addr)| *addr != ip("10.0.0.0") && *addr != ip("10.0.0.255"))
        );
    }

    #[test]
    fn a_peer_told_about_others_waits_for_them_and_creates_only_with_the_smallest_name() {
        let t = Instant::now();
        let mut a = IpamChannel::new(IpamConfig::new(cidr("10.0.0.0/24")), name(1), 1, t, 1_000);
        a.set_initial_peers(vec![InitialPeer::unreached(
            "10.0.0.2:6783",
            "handshake timed out",
        )]);
        let err = a.allocate(&key(1), t).unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "waiting for the IP allocation ring (no ring yet: 0 of 1 initial peers reachable: \
             10.0.0.2:6783 (handshake timed out))"
        );
        assert_eq!(a.status(t).state, "waiting for ring");
        // Time alone changes nothing: there is no timer.
        a.tick(t + 3600 * SEC);
        assert!(a.allocate(&key(1), t + 3600 * SEC).is_err());
        assert_eq!(a.ring_id(), None);
        // Reached, but it has not said whether it has a ring: ask it.
        a.set_initial_peers(vec![InitialPeer::reached("10.0.0.2:6783", name(2))]);
        a.set_reachable([name(2)]);
        a.tick(t + 3601 * SEC);
        let (_, sent) = drain(&mut a);
        assert_eq!(sent, vec![(name(2), wire::encode(&IpamMsg::RingQuery))]);
        assert!(
            a.status(t)
                .waiting_for_ring
                .unwrap()
                .contains("asking 1 reachable peer"),
        );
        // It has none, and our name is smaller: create.
        let none = wire::encode(&IpamMsg::RingAnswer {
            range: cidr("10.0.0.0/24"),
            ring: None,
        });
        a.on_unicast(name(2), &none).unwrap();
        assert_eq!(a.ring_wait_reason(), None);
        let t2 = t + 3602 * SEC;
        assert!(a.allocate(&key(1), t2).is_ok());
        assert_eq!(a.ring_id().unwrap().genesis, name(1));
        assert_eq!(
            a.ring_id().unwrap().created_ms,
            1_000 + 3_602_000,
            "stamped by wall clock"
        );
        assert_eq!(
            a.force_ring(t2),
            Err(IpamError::RingExists(a.ring_id().unwrap()))
        );
    }

    #[test]
    fn a_joining_peer_asks_the_freest_peer_and_gets_half_of_a_free_run() {
        let t = Instant::now();
        let range = "10.32.0.0/16"; // 4096 chunks of 16
        let mut a = peer(1, range, t);
        let mut b = peer(2, range, t);
        let mut c = peer(3, range, t);
        a.allocate(&key(1), t).unwrap();
        drain(&mut a);
        introduce(&a, &mut b);
        introduce(&a, &mut c);
        for p in [&mut a, &mut b, &mut c] {
            p.set_reachable([name(1), name(2), name(3)]);
        }
        assert_eq!(a.digest_hash(), b.digest_hash());
        // b has the ring but no space: it asks a.
        assert_eq!(
            b.allocate(&key(2), t),
            Err(IpamError::WaitingForSpace(name(1)))
        );
        assert_eq!(b.status(t).state, "waiting for space");
        assert_eq!(b.status(t).pending.unwrap().donor, name(1));
        let q = sent_by(&mut b);
        deliver(&mut [&mut a, &mut b], q);
        let got = b.allocate(&key(2), t).unwrap();
        assert_eq!(b.owner_of(got), Some(name(2)));
        assert_eq!(a.owner_of(got), Some(name(2)), "the donor knows at once");
        let owned = |p: &IpamChannel, who: u64| {
            entries(p)
                .iter()
                .filter(|e| e.owner == Some(name(who)))
                .count()
        };
        assert_eq!(owned(&b, 2), 2048, "the upper half of a's largest free run");
        assert_eq!(owned(&b, 1), 2048);
        // c sees both through gossip and asks whoever announces more: a.
        let (upd_a, _) = drain(&mut a);
        let (upd_b, _) = drain(&mut b);
        for u in [upd_a, upd_b].into_iter().flatten() {
            c.merge(name(1), &u).unwrap();
        }
        assert_eq!(
            c.allocate(&key(3), t),
            Err(IpamError::WaitingForSpace(name(1)))
        );
        let q = sent_by(&mut c);
        deliver(&mut [&mut a, &mut b, &mut c], q);
        let got_c = c.allocate(&key(3), t).unwrap();
        assert!(got_c != got && a.address_of(&key(1)) != Some(got_c));
        // Ranges in status are runs of chunks.
        let status = c.status(t);
        assert_eq!(status.owners.len(), 3);
        assert!(
            status
                .owners
                .iter()
                .all(|o| o.reachable && !o.ranges.is_empty())
        );
        assert_eq!(
            status.owners.iter().map(|o| o.addresses).sum::<u64>(),
            1 << 16
        );
    }

    #[test]
    fn denials_and_silence_move_on_to_the_next_donor_and_unreachable_owners_are_named() {
        let t = Instant::now();
        let range = "10.0.0.0/28"; // 16 chunks of one address, 14 usable
        let mut a = peer(1, range, t);
        for k in 0..13 {
            a.allocate(&key(k), t).unwrap();
        }
        let mut b = peer(2, range, t);
        introduce(&a, &mut b);
        b.set_reachable([name(1)]);
        a.set_reachable([name(2)]);
        // a keeps its last free address: it denies.
        assert_eq!(
            b.allocate(&key(50), t),
            Err(IpamError::WaitingForSpace(name(1)))
        );
        let q = sent_by(&mut b);
        deliver(&mut [&mut a, &mut b], q);
        assert_eq!(b.status(t).pending, None);
        assert_eq!(
            b.allocate(&key(50), t),
            Err(IpamError::Exhausted(cidr(range))),
            "the only donor denied"
        );
        // An owner we cannot reach is named, with the command that frees its space.
        b.set_reachable([]);
        let err = b.allocate(&key(50), t + 60 * SEC).unwrap_err();
        assert_eq!(
            err,
            IpamError::Unreachable {
                range: cidr(range),
                peers: vec![name(1)]
            }
        );
        assert!(err.to_string().contains("weft rmpeer 00:00:00:00:00:01"));
        // A donor that never answers is given up on after the timeout.
        let mut c = peer(3, "10.0.0.0/24", t);
        c.allocate(&key(1), t).unwrap();
        let mut d = peer(4, "10.0.0.0/24", t);
        introduce(&c, &mut d);
        d.set_reachable([name(3)]);
        assert_eq!(
            d.allocate(&key(2), t),
            Err(IpamError::WaitingForSpace(name(3)))
        );
        drain(&mut d);
        d.tick(t + 2 * SEC);
        assert!(d.status(t).pending.is_some());
        d.tick(t + 6 * SEC);
        assert!(
            d.status(t).pending.is_none(),
            "timed out; c is skipped for a while"
        );
        assert_eq!(
            d.allocate(&key(2), t + 6 * SEC),
            Err(IpamError::Exhausted(cidr("10.0.0.0/24")))
        );
        d.tick(t + 20 * SEC);
        assert_eq!(
            d.allocate(&key(2), t + 20 * SEC),
            Err(IpamError::WaitingForSpace(name(3))),
            "asked again"
        );
    }

    #[test]
    fn concurrent_reclaims_agree_and_the_custodian_adopts() {
        let t = Instant::now();
        let range = "10.0.0.0/24";
        let (mut a, mut b, mut c) = (peer(1, range, t), peer(2, range, t), peer(3, range, t));
        a.allocate(&key(1), t).unwrap();
        drain(&mut a);
        introduce(&a, &mut b);
        introduce(&a, &mut c);
        for p in [&mut a, &mut b, &mut c] {
            p.set_reachable([name(1), name(2), name(3)]);
        }
        for p in [&mut b, &mut c] {
            let _ = p.allocate(&key(2), t);
        }
        let mut q = sent_by(&mut b);
        q.extend(sent_by(&mut c));
        deliver(&mut [&mut a, &mut b, &mut c], q);
        for p in [&mut b, &mut c] {
            p.allocate(&key(2), t).unwrap();
        }
        let mut updates: Vec<Vec<u8>> = Vec::new();
        for p in [&mut a, &mut b, &mut c] {
            updates.extend(drain(p).0);
        }
        for u in &updates {
            for p in [&mut a, &mut b, &mut c] {
                p.merge(name(9), u).unwrap();
            }
        }
        assert_eq!(a.digest_hash(), b.digest_hash());
        assert_eq!(b.digest_hash(), c.digest_hash());
        // b dies; a and c both run `rmpeer b` at once.
        assert_eq!(
            a.reclaim(name(2), false, t),
            Err(IpamError::PeerReachable(name(2)))
        );
        assert_eq!(a.reclaim(name(1), false, t), Err(IpamError::ReclaimSelf));
        for p in [&mut a, &mut c] {
            p.set_reachable([name(1), name(3)]);
        }
        let b_chunks = entries(&a)
            .iter()
            .filter(|e| e.owner == Some(name(2)))
            .count();
        assert!(b_chunks > 0);
        let before_a = entries(&a);
        let taken_a = a.reclaim(name(2), false, t).unwrap();
        let taken_c = c.reclaim(name(2), false, t).unwrap();
        assert_eq!(taken_a, taken_c);
        assert_eq!(taken_a, b_chunks as u64);
        let (ua, _) = drain(&mut a);
        let (uc, _) = drain(&mut c);
        // Reclaimed chunks: the predecessor's owner adopted them at once, so each side wrote
        // "unowned" and, for its own adoptions, itself. Merged, both agree.
        let (ua, uc) = (ua.unwrap(), uc.unwrap());
        a.merge(name(3), &uc).unwrap();
        c.merge(name(1), &ua).unwrap();
        a.tick(t + SEC);
        c.tick(t + SEC);
        let (ua, _) = drain(&mut a);
        let (uc, _) = drain(&mut c);
        if let Some(u) = uc {
            a.merge(name(3), &u).unwrap();
        }
        if let Some(u) = ua {
            c.merge(name(1), &u).unwrap();
        }
        for (i, (x, y)) in entries(&a).iter().zip(entries(&c)).enumerate() {
            assert_eq!(*x, y, "chunk {i}");
        }
        assert_eq!(a.digest_hash(), c.digest_hash());
        let after = entries(&a);
        for (i, (old, new)) in before_a.iter().zip(&after).enumerate() {
            if old.owner == Some(name(2)) {
                assert!(
                    new.owner == Some(name(1)) || new.owner == Some(name(3)),
                    "{i}"
                );
            } else {
                assert_eq!(old.owner, new.owner, "only b's chunks moved");
            }
        }
        assert_eq!(a.status(t).unowned, 0);
        // b's last address is now free for others; nothing allocated is duplicated.
        assert!(a.conflicts().is_empty() && c.conflicts().is_empty());
    }

    #[test]
    fn the_last_owner_is_reclaimed_only_by_force_on_one_host() {
        let t = Instant::now();
        let range = "10.0.0.0/24";
        let (mut a, mut b) = (peer(1, range, t), peer(2, range, t));
        a.allocate(&key(1), t).unwrap();
        drain(&mut a);
        introduce(&a, &mut b);
        // a, the only owner, is gone; b owns nothing and reaches nobody who does.
        let err = b.reclaim(name(1), false, t).unwrap_err();
        assert_eq!(err, IpamError::NoLiveHeir(name(1)));
        assert!(err.to_string().contains("--force"));
        assert_eq!(
            b.digest_hash(),
            a.digest_hash(),
            "a refused reclaim changes nothing"
        );
        assert_eq!(b.reclaim(name(1), true, t).unwrap(), 254);
        // Nothing is owned: b, alone, is the custodian of everything.
        let got = b.allocate(&key(2), t).unwrap();
        assert_eq!(b.owner_of(got), Some(name(2)));
        assert_eq!(b.status(t).unowned, 0);
    }

    #[test]
    fn a_reclaim_from_a_stale_view_loses_to_the_owners_own_write() {
        let ring = RingId {
            created_ms: 1,
            genesis: name(1),
            uid: 1,
        };
        let reclaim = entry(5, None, 1);
        let owners_write = entry(5, Some(2), 1);
        assert!(owners_write.supersedes(&reclaim));
        assert!(entry(6, None, 1).supersedes(&owners_write));
        let t = Instant::now();
        let mut a = peer(7, "10.0.0.0/24", t);
        a.merge(name(1), &update(ring, "10.0.0.0/24", &[(3, reclaim)]))
            .unwrap();
        a.merge(name(1), &update(ring, "10.0.0.0/24", &[(3, owners_write)]))
            .unwrap();
        assert_eq!(entries(&a)[3], owners_write);
    }

    #[test]
    fn merged_rings_keep_the_older_one_and_report_duplicates_on_both_sides() {
        let t = Instant::now();
        let range = "10.0.0.0/24";
        let mut old = IpamChannel::new(config(range), name(5), 5, t, 1_000);
        let mut young = IpamChannel::new(config(range), name(1), 1, t, 2_000);
        let a_old = old.allocate(&key(1), t).unwrap();
        let a_young = young.allocate(&key(2), t).unwrap();
        let extra = young.allocate(&key(3), t).unwrap();
        assert_eq!(a_old, a_young, "two rings, the same first address");
        drain(&mut old);
        drain(&mut young);
        assert!(
            old.ring_id() < young.ring_id(),
            "older wins despite the larger name"
        );
        // They meet: anti-entropy both ways.
        let (for_young, old_wants) = old.compare_digest(&young.digest(), 1 << 16).unwrap();
        assert!(!old_wants);
        for part in for_young {
            young.merge(name(5), &part).unwrap();
        }
        assert_eq!(young.ring_id(), old.ring_id());
        assert_eq!(young.digest_hash(), old.digest_hash());
        let status = young.status(t);
        assert_eq!(
            (status.allocated, status.orphans),
            (2, 2),
            "kept, as orphans"
        );
        // The orphans are reserved with their owner: one is a duplicate, the other is now
        // safe from the owner's next allocations.
        for p in [&mut old, &mut young] {
            p.set_reachable([name(1), name(5)]);
        }
        young.tick(t + SEC);
        let q = sent_by(&mut young);
        assert_eq!(q.len(), 1);
        deliver(&mut [&mut old, &mut young], q);
        let dup = vec![Conflict {
            addr: a_old,
            peer: name(1),
        }];
        assert_eq!(old.conflicts(), dup);
        assert_eq!(
            young.conflicts(),
            vec![Conflict {
                addr: a_old,
                peer: name(5)
            }]
        );
        assert_eq!(old.status(t).reserved_for_peers, 2);
        for k in 10..20 {
            assert_ne!(old.allocate(&key(k), t).unwrap(), extra);
        }
        // Reservations are not re-sent once acknowledged…
        young.tick(t + 30 * SEC);
        assert!(sent_by(&mut young).is_empty());
        // …and releasing an orphan gives it back to the owner.
        assert_eq!(young.release(&key(3), t), Some(extra));
        let q = sent_by(&mut young);
        deliver(&mut [&mut old, &mut young], q);
        assert_eq!(old.status(t).reserved_for_peers, 1);
        // The duplicate stays reserved after the owner's container goes: no third holder.
        old.release(&key(1), t);
        assert_eq!(old.status(t).reserved_for_peers, 1);
        assert!(old.conflicts().is_empty());
        young.release(&key(2), t);
        let q = sent_by(&mut young);
        deliver(&mut [&mut old, &mut young], q);
        assert_eq!(old.status(t).reserved_for_peers, 0);
        assert!(young.conflicts().is_empty());
    }

    #[test]
    fn a_snapshot_restores_ring_and_allocations() {
        let t = Instant::now();
        let mut a = peer(1, "10.0.0.0/24", t);
        for k in 0..5 {
            a.allocate(&key(k), t).unwrap();
        }
        drain(&mut a);
        let bytes = a.snapshot().to_bytes();
        let snap = IpamSnapshot::from_bytes(&bytes).unwrap();
        let b = IpamChannel::restore(config("10.0.0.0/24"), snap.clone(), 77, t, 5).unwrap();
        assert_eq!(b.allocations(), a.allocations());
        assert_eq!(b.digest_hash(), a.digest_hash());
        assert_eq!(b.snapshot(), a.snapshot());
        assert!(matches!(
            IpamChannel::restore(config("10.0.0.0/16"), snap, 77, t, 5),
            Err(IpamError::Snapshot(_))
        ));
        assert!(IpamSnapshot::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn malformed_or_foreign_updates_change_nothing() {
        let t = Instant::now();
        let mut a = peer(1, "10.0.0.0/24", t);
        a.allocate(&key(1), t).unwrap();
        drain(&mut a);
        let hash = a.digest_hash();
        let ring = RingId {
            created_ms: 0,
            genesis: name(2),
            uid: 2,
        };
        for bad in [
            update(ring, "10.0.0.0/16", &[(1, entry(1, Some(2), 1))]),
            update(ring, "10.0.0.0/24", &[(256, entry(1, Some(2), 1))]),
            update(ring, "10.0.0.0/24", &[(1, entry(0, Some(2), 1))]),
            update(ring, "10.0.0.0/24", &[(1, entry(1, Some(2), 2))]),
            wire::encode(&(
                ring,
                cidr("10.0.0.0/24"),
                vec![(1u32, (1u64, Some(1u64 << 50), 1u32))],
            )),
            vec![],
            vec![0xff; 9],
        ] {
            assert!(a.merge(name(2), &bad).is_err());
            assert!(a.compare_digest(&bad, 1 << 16).is_err() || bad.is_empty());
            assert!(a.on_unicast(name(2), &bad).is_err());
        }
        assert_eq!(a.digest_hash(), hash, "a rejected update merges nothing");
        assert_eq!(a.status(t).incompatible_updates, 1);
        let too_long = IpamMsg::Reserve {
            ring,
            addrs: vec![ip("10.0.0.1"); MAX_ADDRS_PER_MSG + 1],
        };
        assert!(decode_msg(&wire::encode(&too_long)).is_err());
    }

    #[test]
    fn parts_respect_the_budget_and_the_digest_fits_a_frame() {
        let t = Instant::now();
        let mut a = peer(1, DEFAULT_RANGE, t);
        a.allocate(&key(1), t).unwrap();
        // The largest encodings: saturated versions and names.
        if let Some(r) = a.ring.as_mut() {
            for e in &mut r.entries {
                e.version = u64::MAX;
                e.owner = Some(name((1 << 48) - 1));
            }
        }
        assert!(a.digest().len() <= wire::MAX_FRAME_LEN - 1024);
        for budget in [0, 100, 10_000] {
            let parts = a.full_state(budget);
            let limit = budget.max(UPDATE_HEADER_MAX_LEN + ENTRY_MAX_LEN);
            assert!(parts.iter().all(|p| p.len() <= limit));
        }
        let mut b = peer(2, DEFAULT_RANGE, t);
        for part in a.full_state(10_000) {
            b.merge(name(1), &part).unwrap();
        }
        assert_eq!(b.digest_hash(), a.digest_hash());
        // Saturated versions never panic anything local.
        assert!(a.reclaim(name(3), true, t).is_ok());
        a.tick(t);
    }

    #[test]
    fn a_shared_handle_is_what_the_mesh_hosts_and_the_router_drives() {
        let t = Instant::now();
        let router = SharedIpam::new(peer(1, "10.0.0.0/24", t));
        let mut hosted: Box<dyn GossipChannel> = Box::new(router.clone());
        router.lock().allocate(&key(1), t).unwrap();
        let change = router.lock().take_outbox().publish.unwrap();
        assert_eq!(hosted.merge(name(1), &change).unwrap(), Some(change));
        assert_eq!(hosted.digest_hash(), router.lock().digest_hash());
        let request = wire::encode(&IpamMsg::SpaceRequest {
            ring: router.lock().ring_id().unwrap(),
        });
        let replies = hosted.on_unicast(name(2), &request).unwrap();
        assert!(matches!(
            decode_msg(&replies[0].1).unwrap(),
            IpamMsg::Donation(_)
        ));
        assert!(!hosted.full_state(1 << 16).is_empty());
    }

    // ---- views (`weft ipam check`) ----

    fn owner_view(owner: Option<u64>, chunks: u32, addresses: u64, free: u64) -> OwnerView {
        OwnerView {
            owner: owner.map(name),
            chunks,
            addresses,
            free,
        }
    }

    fn hand_view(peer: u64, range: &str, ring: Option<RingId>, hash: u64) -> IpamView {
        IpamView {
            peer: name(peer),
            range: cidr(range),
            ring,
            ring_hash: hash,
            owners: Vec::new(),
            owners_omitted: 0,
            allocated: 0,
            conflicts: 0,
        }
    }

    #[test]
    fn views_agree_until_a_donation_is_merged_on_one_side_only() {
        let t = Instant::now();
        let range = "10.32.0.0/16"; // 4096 chunks of 16
        let (mut a, mut b, mut c) = (peer(1, range, t), peer(2, range, t), peer(3, range, t));
        a.allocate(&key(1), t).unwrap();
        drain(&mut a);
        introduce(&a, &mut b);
        introduce(&a, &mut c);
        for p in [&mut a, &mut b, &mut c] {
            p.set_reachable([name(1), name(2), name(3)]);
        }
        let view = a.view();
        assert_eq!(
            view.owners,
            vec![owner_view(Some(1), 4096, 1 << 16, (1 << 16) - 2 - 1)]
        );
        assert_eq!(
            (view.peer, view.ring, view.ring_hash, view.allocated),
            (name(1), a.ring_id(), a.digest_hash(), 1)
        );
        assert_eq!(compare_views(&[a.view(), b.view(), c.view()]), vec![]);

        // b gets space from a; c has not heard of it.
        assert!(b.allocate(&key(2), t).is_err());
        let q = sent_by(&mut b);
        deliver(&mut [&mut a, &mut b], q);
        assert_eq!(a.digest_hash(), b.digest_hash());
        let diffs = compare_views(&[c.view(), b.view(), a.view()]);
        let ring = a.ring_id().unwrap();
        let c_sees_all = OwnerCounts {
            peers: vec![name(3)],
            chunks: 4096,
            addresses: 1 << 16,
            free: (1 << 16) - 3,
        };
        let seen_by_ab = |owner: u64| {
            let v = a.view();
            let o = v
                .owners
                .iter()
                .find(|o| o.owner == Some(name(owner)))
                .unwrap();
            OwnerCounts {
                peers: vec![name(1), name(2)],
                chunks: o.chunks,
                addresses: o.addresses,
                free: o.free,
            }
        };
        let none_for_c = OwnerCounts {
            peers: vec![name(3)],
            chunks: 0,
            addresses: 0,
            free: 0,
        };
        assert_eq!(
            diffs,
            vec![
                ViewDifference::Owner {
                    ring,
                    owner: Some(name(1)),
                    seen: vec![seen_by_ab(1), c_sees_all],
                },
                ViewDifference::Owner {
                    ring,
                    owner: Some(name(2)),
                    seen: vec![seen_by_ab(2), none_for_c],
                },
            ]
        );
        assert_eq!(seen_by_ab(2).addresses, 1 << 15);
        assert_eq!(
            diffs[1].to_string(),
            format!(
                "owner 00:00:00:00:00:02 in ring {ring}: 00:00:00:00:00:01 and \
                 00:00:00:00:00:02 see 32768 addresses (32767 free), 00:00:00:00:00:03 sees none"
            )
        );
        assert!(
            diffs[0]
                .to_string()
                .ends_with("00:00:00:00:00:03 sees 65536 addresses (65533 free)")
        );

        // Once c merges, all agree again.
        introduce(&a, &mut c);
        assert_eq!(compare_views(&[a.view(), b.view(), c.view()]), vec![]);
    }

    #[test]
    fn views_travel_by_unicast_and_only_the_current_round_is_kept() {
        let t = Instant::now();
        let range = "10.0.0.0/24";
        let (mut a, mut b, c) = (peer(1, range, t), peer(2, range, t), peer(3, range, t));
        a.allocate(&key(1), t).unwrap();
        drain(&mut a);
        introduce(&a, &mut b);
        a.set_reachable([name(2)]);
        b.set_reachable([name(1)]);

        a.request_views(7);
        assert_eq!(a.views(), vec![]);
        assert_eq!(a.views_missing(), vec![name(2)]);
        let requests = a.take_outbox().unicasts;
        assert_eq!(
            requests,
            vec![(name(2), wire::encode(&IpamMsg::ViewRequest { id: 7 }))]
        );
        let replies = b.on_unicast(name(1), &requests[0].1).unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, name(1));
        let answer = replies[0].1.clone();
        assert_eq!(
            decode_msg(&answer).unwrap(),
            IpamMsg::View {
                id: 7,
                view: b.view()
            }
        );
        assert_eq!(a.on_unicast(name(2), &answer).unwrap(), vec![]);
        assert_eq!(a.views(), vec![b.view()]);
        assert_eq!(a.views_missing(), vec![]);
        assert_eq!(a.on_unicast(name(2), &answer).unwrap(), vec![]);
        assert_eq!(a.views().len(), 1, "one answer per peer");
        let mut all = a.views();
        all.push(a.view());
        assert_eq!(compare_views(&all), vec![]);

        // A new round forgets the old answers and ignores late ones.
        a.request_views(8);
        assert_eq!(a.views(), vec![]);
        assert_eq!(a.on_unicast(name(2), &answer).unwrap(), vec![]);
        assert_eq!(
            a.views(),
            vec![],
            "an answer to round 7 is not kept in round 8"
        );
        assert_eq!(a.views_missing(), vec![name(2)]);
        // Peers not asked are not kept either, and a view must name its sender.
        let unasked = wire::encode(&IpamMsg::View {
            id: 8,
            view: c.view(),
        });
        assert_eq!(a.on_unicast(name(3), &unasked).unwrap(), vec![]);
        assert!(a.on_unicast(name(2), &unasked).is_err());
        assert_eq!(a.views(), vec![]);
        // Without a round, answers are dropped.
        let unrequested = wire::encode(&IpamMsg::View {
            id: 7,
            view: a.view(),
        });
        assert_eq!(b.on_unicast(name(1), &unrequested).unwrap(), vec![]);
        assert_eq!(b.views(), vec![]);
        // No reachable peer: a round asks nobody.
        let mut lone = peer(4, range, t);
        lone.request_views(1);
        assert!(lone.take_outbox().unicasts.is_empty());
    }

    #[test]
    fn views_are_bounded_and_malformed_ones_are_errors_not_panics() {
        let t = Instant::now();
        // More owners than a view lists: every chunk of a /12 owned by another peer.
        let mut a = peer(1, DEFAULT_RANGE, t);
        a.allocate(&key(1), t).unwrap();
        if let Some(r) = a.ring.as_mut() {
            for (i, e) in r.entries.iter_mut().enumerate() {
                e.version = u64::MAX;
                e.owner = Some(name((1 << 48) - 1 - i as u64));
                e.free = 255;
            }
        }
        let view = a.view();
        assert_eq!(view.owners.len(), MAX_VIEW_OWNERS);
        assert_eq!(view.owners_omitted as usize, MAX_CHUNKS - MAX_VIEW_OWNERS);
        let bytes = wire::encode(&IpamMsg::View {
            id: u64::MAX,
            view: view.clone(),
        });
        assert!(bytes.len() <= 21 * 1024, "{} bytes", bytes.len());
        assert_eq!(
            decode_msg(&bytes).unwrap(),
            IpamMsg::View {
                id: u64::MAX,
                view: view.clone()
            }
        );
        // The worst case: the largest counts a valid view can hold.
        let mut worst = view.clone();
        for o in &mut worst.owners {
            *o = OwnerView {
                owner: o.owner,
                chunks: 4,
                addresses: 1 << 32,
                free: 1 << 32,
            };
        }
        worst.range = cidr("0.0.0.0/0");
        worst.allocated = u64::MAX;
        worst.conflicts = u64::MAX;
        let worst_bytes = wire::encode(&IpamMsg::View {
            id: u64::MAX,
            view: worst,
        });
        assert!(decode_msg(&worst_bytes).is_ok());
        assert!(
            worst_bytes.len() <= 21 * 1024,
            "{} bytes",
            worst_bytes.len()
        );

        let ring = a.ring_id();
        let mut b = peer(2, DEFAULT_RANGE, t);
        b.set_reachable([name(1)]);
        b.request_views(1);
        let mut bad_views = Vec::new();
        let mut v = hand_view(1, DEFAULT_RANGE, ring, 0);
        v.owners = vec![
            owner_view(Some(3), 1, 256, 0),
            owner_view(Some(2), 1, 256, 0),
        ];
        bad_views.push(v.clone()); // unsorted
        v.owners = vec![
            owner_view(Some(2), 1, 256, 0),
            owner_view(Some(2), 1, 256, 0),
        ];
        bad_views.push(v.clone()); // repeated
        v.owners = vec![owner_view(Some(2), 1, 256, 257)];
        bad_views.push(v.clone()); // more free than addresses
        v.owners = vec![owner_view(Some(2), 1, 1 << 21, 0)];
        bad_views.push(v.clone()); // more addresses than the range
        v.owners = vec![
            owner_view(None, 4096, 1 << 20, 0),
            owner_view(Some(2), 1, 256, 0),
        ];
        bad_views.push(v.clone()); // more chunks than a ring
        v.owners = (0..=MAX_VIEW_OWNERS as u64)
            .map(|i| owner_view(Some(i + 2), 1, 256, 0))
            .collect();
        bad_views.push(v.clone()); // too many owners
        v.owners = vec![];
        v.owners_omitted = u32::MAX;
        bad_views.push(v.clone());
        let mut ringless = hand_view(1, DEFAULT_RANGE, None, 0);
        ringless.owners = vec![owner_view(Some(2), 1, 256, 0)];
        bad_views.push(ringless);
        let mut bad_range = hand_view(1, DEFAULT_RANGE, ring, 0);
        bad_range.range = Cidr {
            addr: ip("10.0.0.1"),
            prefix: 12,
        };
        bad_views.push(bad_range);
        for view in bad_views {
            let bytes = wire::encode(&IpamMsg::View { id: 1, view });
            assert!(decode_msg(&bytes).is_err());
            assert!(b.on_unicast(name(1), &bytes).is_err());
        }
        // Truncated and garbage bytes.
        for cut in [0, 1, 2, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_msg(&bytes[..cut]).is_err());
            assert!(b.on_unicast(name(1), &bytes[..cut]).is_err());
        }
        assert!(b.on_unicast(name(1), &[7, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(b.views(), vec![]);
    }

    #[test]
    fn comparison_names_ranges_rings_versions_and_conflicts() {
        let ring = |created_ms: u64, g: u64| RingId {
            created_ms,
            genesis: name(g),
            uid: g,
        };
        let (old, new) = (ring(1, 1), ring(2, 2));
        let range = "10.32.0.0/16";
        // Ranges, then rings within each range.
        let views = [
            hand_view(3, range, Some(new), 30),
            hand_view(1, range, Some(old), 10),
            hand_view(2, range, Some(old), 10),
            hand_view(4, range, None, 0),
            hand_view(5, "10.0.0.0/24", None, 0),
        ];
        let diffs = compare_views(&views);
        assert_eq!(
            diffs,
            vec![
                ViewDifference::Range {
                    groups: vec![
                        RangeGroup {
                            range: cidr("10.0.0.0/24"),
                            peers: vec![name(5)],
                        },
                        RangeGroup {
                            range: cidr(range),
                            peers: vec![name(1), name(2), name(3), name(4)],
                        },
                    ],
                },
                ViewDifference::Ring {
                    range: cidr(range),
                    groups: vec![
                        RingGroup {
                            ring: Some(old),
                            peers: vec![name(1), name(2)],
                        },
                        RingGroup {
                            ring: Some(new),
                            peers: vec![name(3)],
                        },
                        RingGroup {
                            ring: None,
                            peers: vec![name(4)],
                        },
                    ],
                },
            ]
        );
        assert!(diffs[0].to_string().contains(
            "peer 00:00:00:00:00:05 has 10.0.0.0/24, peers 00:00:00:00:00:01, \
             00:00:00:00:00:02, 00:00:00:00:00:03 and 00:00:00:00:00:04 have 10.32.0.0/16"
        ));
        assert_eq!(
            diffs[1].to_string(),
            format!(
                "different rings in {range}: peers 00:00:00:00:00:01 and 00:00:00:00:00:02 \
                 hold ring {old}, peer 00:00:00:00:00:03 holds ring {new}, peer \
                 00:00:00:00:00:04 holds no ring yet (the older ring, {old}, wins once they \
                 connect)"
            )
        );
        // Same ring, different hashes, same counts: only versions differ.
        let mut x = hand_view(1, range, Some(old), 10);
        x.owners = vec![owner_view(Some(1), 4096, 1 << 16, 100)];
        let mut y = x.clone();
        y.peer = name(2);
        y.ring_hash = 11;
        let diffs = compare_views(&[x.clone(), y.clone(), x.clone()]);
        assert!(matches!(&diffs[..], [ViewDifference::Versions { .. }]));
        assert!(diffs[0].to_string().contains("only entry versions differ"));
        // Equal hashes are trusted; conflicts are reported on their own.
        let mut z = y.clone();
        z.ring_hash = 10;
        z.conflicts = 2;
        let diffs = compare_views(&[x.clone(), z]);
        assert_eq!(
            diffs,
            vec![ViewDifference::Conflicts {
                peer: name(2),
                conflicts: 2
            }]
        );
        assert_eq!(
            diffs[0].to_string(),
            "peer 00:00:00:00:00:02 detected 2 duplicate addresses (listed in its IPAM status)"
        );
        // An owner cut from a view is not taken for an owner with nothing.
        let mut cut = y.clone();
        cut.owners_omitted = 1;
        let mut full = x.clone();
        full.owners[0].chunks = 4095;
        full.owners[0].addresses -= 16;
        full.owners.push(owner_view(Some(9), 1, 16, 16));
        cut.owners[0] = full.owners[0].clone();
        let diffs = compare_views(&[full, cut]);
        assert!(matches!(&diffs[..], [ViewDifference::Versions { .. }]));
        // Unowned chunks are named as such.
        let mut reclaimed = y.clone();
        reclaimed.owners = vec![
            owner_view(None, 1, 16, 16),
            owner_view(Some(1), 4095, (1 << 16) - 16, 100),
        ];
        let diffs = compare_views(&[x, reclaimed]);
        assert_eq!(diffs.len(), 2);
        assert!(
            diffs[0]
                .to_string()
                .starts_with("unowned (reclaimed, not yet adopted) chunks in ring")
        );
        assert!(diffs[0].to_string().ends_with(
            "00:00:00:00:00:01 sees none, 00:00:00:00:00:02 sees 16 addresses (16 free)"
        ));
        assert_eq!(compare_views(&[]), vec![]);
    }

    // ---- property tests ----

    const RANGE: &str = "10.0.0.0/28";

    fn arb_ring() -> impl Strategy<Value = RingId> {
        (0u64..3, 1u64..3).prop_map(|(created_ms, g)| RingId {
            created_ms,
            genesis: name(g),
            uid: g,
        })
    }

    fn arb_entries() -> impl Strategy<Value = Vec<(u32, Entry)>> {
        prop::collection::vec(
            (0u32..16, 1u64..4, prop::option::of(1u64..4), 0u32..2).prop_map(|(i, v, o, f)| {
                let usable = Geometry::new(cidr(RANGE)).usable(i);
                (i, entry(v, o, f.min(usable)))
            }),
            0..8,
        )
    }

    fn arb_update() -> impl Strategy<Value = Vec<u8>> {
        (arb_ring(), arb_entries()).prop_map(|(r, e)| update(r, RANGE, &e))
    }

    fn ring_state(c: &IpamChannel) -> (Option<RingId>, Vec<Entry>) {
        (c.ring_id(), entries(c))
    }

    fn fresh(t: Instant) -> IpamChannel {
        peer(9, RANGE, t)
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_update(), b in arb_update()) {
            let t = Instant::now();
            let mut ab = fresh(t);
            ab.merge(name(1), &a).unwrap();
            ab.merge(name(2), &b).unwrap();
            let mut ba = fresh(t);
            ba.merge(name(2), &b).unwrap();
            ba.merge(name(1), &a).unwrap();
            prop_assert_eq!(ring_state(&ab), ring_state(&ba));
            prop_assert_eq!(ab.digest_hash(), ba.digest_hash());
        }

        #[test]
        fn merge_is_associative(a in arb_update(), b in arb_update(), c in arb_update()) {
            let t = Instant::now();
            // (a ⊔ b) ⊔ c, with a ⊔ b formed on another replica and shipped as its state.
            let mut ab = fresh(t);
            ab.merge(name(1), &a).unwrap();
            ab.merge(name(1), &b).unwrap();
            let mut left = fresh(t);
            for part in ab.full_state(1 << 16) {
                left.merge(name(1), &part).unwrap();
            }
            left.merge(name(1), &c).unwrap();
            // a ⊔ (b ⊔ c).
            let mut bc = fresh(t);
            bc.merge(name(1), &b).unwrap();
            bc.merge(name(1), &c).unwrap();
            let mut right = fresh(t);
            right.merge(name(1), &a).unwrap();
            for part in bc.full_state(1 << 16) {
                right.merge(name(1), &part).unwrap();
            }
            prop_assert_eq!(ring_state(&left), ring_state(&right));

            // Relaying only what improved carries the same information.
            let mut hop = fresh(t);
            let mut relayed = fresh(t);
            for u in [&a, &b, &c] {
                if let Some(improved) = hop.merge(name(1), u).unwrap() {
                    relayed.merge(name(1), &improved).unwrap();
                }
            }
            prop_assert_eq!(ring_state(&relayed), ring_state(&hop));
        }

        #[test]
        fn merge_is_idempotent(a in arb_update()) {
            let t = Instant::now();
            let mut once = fresh(t);
            once.merge(name(1), &a).unwrap();
            let (state, hash) = (ring_state(&once), once.digest_hash());
            prop_assert_eq!(once.merge(name(2), &a).unwrap(), None);
            prop_assert_eq!(ring_state(&once), state);
            prop_assert_eq!(once.digest_hash(), hash);
        }

        #[test]
        fn anti_entropy_converges(a in arb_update(), b in arb_update()) {
            let t = Instant::now();
            let (mut x, mut y) = (peer(7, RANGE, t), peer(8, RANGE, t));
            x.merge(name(1), &a).unwrap();
            y.merge(name(2), &b).unwrap();
            for _ in 0..2 {
                let (for_y, x_wants) = x.compare_digest(&y.digest(), 1 << 16).unwrap();
                for part in for_y {
                    y.merge(name(7), &part).unwrap();
                }
                if x_wants {
                    let (for_x, _) = y.compare_digest(&x.digest(), 1 << 16).unwrap();
                    for part in for_x {
                        x.merge(name(8), &part).unwrap();
                    }
                }
            }
            prop_assert_eq!(ring_state(&x), ring_state(&y));
            prop_assert_eq!(x.compare_digest(&y.digest(), 1 << 16).unwrap(), (vec![], false));
        }

        /// Everything that comes from the network: arbitrary bytes may fail, never panic.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let t = Instant::now();
            let mut a = peer(1, RANGE, t);
            let _ = a.merge(name(2), &bytes);
            let _ = a.compare_digest(&bytes, 0);
            let _ = a.on_unicast(name(2), &bytes);
            let _ = decode_msg(&bytes);
            let _ = IpamSnapshot::from_bytes(&bytes);
            a.allocate(&key(1), t).unwrap();
            let _ = a.merge(name(2), &bytes);
            let _ = a.compare_digest(&bytes, 0);
            let _ = a.on_unicast(name(2), &bytes);
        }

        /// Well-formed messages with arbitrary content never panic either.
        #[test]
        fn arbitrary_messages_never_panic(
            ring in arb_ring(),
            addrs in prop::collection::vec(any::<u32>(), 0..8),
            which in 0u8..8,
            entries in arb_entries(),
            id in 0u64..3,
        ) {
            let t = Instant::now();
            let mut a = peer(1, RANGE, t);
            a.allocate(&key(1), t).unwrap();
            a.set_reachable([name(2)]);
            a.request_views(1);
            let owners = entries
                .iter()
                .map(|(_, e)| OwnerView {
                    owner: e.owner,
                    chunks: 1,
                    addresses: 1,
                    free: u64::from(e.free),
                })
                .collect();
            let view = IpamView {
                peer: name(2),
                range: cidr(RANGE),
                ring: Some(ring),
                ring_hash: id,
                owners,
                owners_omitted: 0,
                allocated: 0,
                conflicts: 0,
            };
            let addrs: Vec<Ipv4Addr> = addrs.into_iter().map(Ipv4Addr::from).collect();
            let msg = match which {
                0 => IpamMsg::SpaceRequest { ring },
                1 => IpamMsg::Donation(IpamUpdate { ring, range: cidr(RANGE), entries }),
                2 => IpamMsg::Denied { ring, reason: DenyReason::NoSpace },
                3 => IpamMsg::Reserve { ring, addrs },
                4 => IpamMsg::Reserved { ring, addrs: addrs.clone(), conflicts: addrs },
                5 => IpamMsg::Unreserve { ring, addrs },
                6 => IpamMsg::ViewRequest { id },
                _ => IpamMsg::View { id, view },
            };
            let _ = a.on_unicast(name(2), &wire::encode(&msg));
            prop_assert!(a.views().len() <= 1);
            let mut views = a.views();
            views.push(a.view());
            let _ = compare_views(&views).iter().map(ToString::to_string).count();
            let _ = a.allocate(&key(2), t);
            a.tick(t);
        }
    }

    // ---- a simulated cluster: random operations, a global duplicate check ----

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize, u8),
        Release(usize, u8),
        Split(u8),
        Heal,
        Restart(usize),
        Kill(usize),
        Reclaim(usize, usize, usize),
        Tick,
        Gossip,
    }

    fn arb_op(n: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0..n, 0u8..40).prop_map(|(p, k)| Op::Alloc(p, k)),
            2 => (0..n, 0u8..40).prop_map(|(p, k)| Op::Release(p, k)),
            1 => any::<u8>().prop_map(Op::Split),
            1 => Just(Op::Heal),
            1 => (0..n).prop_map(Op::Restart),
            1 => (0..n).prop_map(Op::Kill),
            2 => (0..n, 0..n, 0..n).prop_map(|(d, a, b)| Op::Reclaim(d, a, b)),
            2 => Just(Op::Tick),
            2 => Just(Op::Gossip),
        ]
    }

    struct Net {
        peers: Vec<Option<IpamChannel>>,
        group: Vec<u8>,
        queue: VecDeque<(usize, usize, Vec<u8>)>,
        now: Instant,
        start: Instant,
        uid: u64,
        range: &'static str,
        /// What each dead peer knew when it died.
        last_words: BTreeMap<usize, (Option<RingId>, Vec<Entry>)>,
    }

    fn pname(i: usize) -> PeerName {
        name(i as u64 + 1)
    }

    impl Net {
        fn new(n: usize, range: &'static str) -> Self {
            let now = Instant::now();
            let mut net = Net {
                peers: Vec::new(),
                group: vec![0; n],
                queue: VecDeque::new(),
                now,
                start: now,
                uid: 1,
                range,
                last_words: BTreeMap::new(),
            };
            for i in 0..n {
                let c = net.fresh_peer(i);
                net.peers.push(Some(c));
            }
            net.reach();
            net
        }

        fn unix_ms(&self) -> u64 {
            1_000_000 + self.now.duration_since(self.start).as_millis() as u64
        }

        fn fresh_peer(&mut self, i: usize) -> IpamChannel {
            self.uid += 1;
            IpamChannel::new(
                config(self.range),
                pname(i),
                self.uid,
                self.now,
                self.unix_ms(),
            )
        }

        fn alive(&self) -> Vec<usize> {
            (0..self.peers.len())
                .filter(|i| self.peers[*i].is_some())
                .collect()
        }

        fn connected(&self, a: usize, b: usize) -> bool {
            a != b
                && self.peers[a].is_some()
                && self.peers[b].is_some()
                && self.group[a] == self.group[b]
        }

        fn reach(&mut self) {
            for i in 0..self.peers.len() {
                let reachable: Vec<PeerName> = (0..self.peers.len())
                    .filter(|j| self.connected(i, *j))
                    .map(pname)
                    .collect();
                if let Some(p) = self.peers[i].as_mut() {
                    p.set_reachable(reachable);
                }
            }
        }

        fn p(&mut self, i: usize) -> &mut IpamChannel {
            self.peers[i].as_mut().unwrap()
        }

        /// Runs the router loop: publish to connected peers, deliver unicasts, until quiet.
        fn pump(&mut self) {
            for _ in 0..1000 {
                let mut busy = false;
                for i in self.alive() {
                    let out = self.p(i).take_outbox();
                    if let Some(update) = out.publish {
                        busy = true;
                        let improved = self.p(i).merge(pname(i), &update).unwrap();
                        for j in self.alive() {
                            if let Some(u) = &improved
                                && self.connected(i, j)
                            {
                                self.p(j).merge(pname(i), u).unwrap();
                            }
                        }
                    }
                    for (dst, payload) in out.unicasts {
                        busy = true;
                        let j = dst.as_u64() as usize - 1;
                        self.queue.push_back((i, j, payload));
                    }
                }
                while let Some((i, j, payload)) = self.queue.pop_front() {
                    busy = true;
                    if !self.connected(i, j) {
                        continue;
                    }
                    let replies = self.p(j).on_unicast(pname(i), &payload).unwrap();
                    for (dst, reply) in replies {
                        self.queue.push_back((j, dst.as_u64() as usize - 1, reply));
                    }
                }
                if !busy {
                    return;
                }
            }
            panic!("the IPAM exchange does not settle");
        }

        fn gossip(&mut self) {
            let alive = self.alive();
            for &a in &alive {
                for &b in &alive {
                    if !self.connected(a, b) {
                        continue;
                    }
                    let digest = self.p(b).digest();
                    let (for_b, a_wants) = self.p(a).compare_digest(&digest, 1 << 16).unwrap();
                    for part in for_b {
                        self.p(b).merge(pname(a), &part).unwrap();
                    }
                    if a_wants {
                        let digest = self.p(a).digest();
                        let (for_a, _) = self.p(b).compare_digest(&digest, 1 << 16).unwrap();
                        for part in for_a {
                            self.p(a).merge(pname(b), &part).unwrap();
                        }
                    }
                }
            }
            self.pump();
        }

        fn tick(&mut self) {
            self.now += 3 * SEC;
            let now = self.now;
            for i in self.alive() {
                self.p(i).tick(now);
            }
            self.pump();
        }

        /// Heals everything and runs rounds until every live peer holds the same ring.
        fn settle(&mut self) {
            self.group.iter_mut().for_each(|g| *g = 0);
            self.reach();
            for _ in 0..12 {
                self.tick();
                self.gossip();
            }
        }

        fn all_allocations(&self) -> BTreeMap<Ipv4Addr, Vec<(usize, AllocKey)>> {
            let mut all: BTreeMap<Ipv4Addr, Vec<(usize, AllocKey)>> = BTreeMap::new();
            for (i, p) in self.peers.iter().enumerate() {
                for (k, a) in p.iter().flat_map(|p| p.allocations()) {
                    all.entry(a).or_default().push((i, k));
                }
            }
            all
        }

        fn duplicates(&self) -> Vec<Ipv4Addr> {
            self.all_allocations()
                .into_iter()
                .filter(|(_, holders)| holders.len() > 1)
                .map(|(a, _)| a)
                .collect()
        }

        fn apply(&mut self, op: &Op) {
            let now = self.now;
            match *op {
                Op::Alloc(i, k) => {
                    // Like the router: a retryable error is retried once its request is answered.
                    for _ in 0..3 {
                        let Some(p) = self.peers[i].as_mut() else {
                            break;
                        };
                        match p.allocate(&key(u64::from(k)), now) {
                            Err(e) if e.is_retryable() => self.pump(),
                            _ => break,
                        }
                    }
                }
                Op::Release(i, k) => {
                    if let Some(p) = self.peers[i].as_mut() {
                        p.release(&key(u64::from(k)), now);
                    }
                }
                Op::Split(mask) => {
                    for (i, g) in self.group.iter_mut().enumerate() {
                        *g = (mask >> i) & 1;
                    }
                    self.reach();
                }
                Op::Heal => {
                    self.group.iter_mut().for_each(|g| *g = 0);
                    self.reach();
                }
                Op::Restart(i) => {
                    if let Some(p) = self.peers[i].take() {
                        let bytes = p.snapshot().to_bytes();
                        let snap = IpamSnapshot::from_bytes(&bytes).unwrap();
                        self.uid += 1;
                        let unix_ms = self.unix_ms();
                        let restored =
                            IpamChannel::restore(config(self.range), snap, self.uid, now, unix_ms)
                                .unwrap();
                        assert_eq!(restored.allocations(), p.allocations());
                        self.peers[i] = Some(restored);
                        self.reach();
                    }
                }
                Op::Kill(i) => {
                    if self.alive().len() > 2
                        && let Some(p) = self.peers[i].take()
                    {
                        self.last_words.insert(i, ring_state(&p));
                        self.reach();
                    }
                }
                Op::Reclaim(dead, r1, r2) => {
                    let Some((ring, last)) = self.last_words.get(&dead).cloned() else {
                        return;
                    };
                    // rmpeer's precondition: the reclaimers saw the dead peer's last words.
                    let saw_all = |p: &IpamChannel| {
                        p.ring_id() == ring
                            && entries(p)
                                .iter()
                                .zip(&last)
                                .all(|(mine, theirs)| !theirs.supersedes(mine))
                    };
                    for r in [r1, r2] {
                        if self.peers[r].as_ref().is_some_and(saw_all) {
                            match self.p(r).reclaim(pname(dead), false, now) {
                                Ok(_) | Err(IpamError::NoLiveHeir(_)) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }
                Op::Tick => self.tick(),
                Op::Gossip => self.gossip(),
            }
            self.pump();
        }

        fn hashes(&self) -> BTreeSet<u64> {
            self.peers
                .iter()
                .flatten()
                .map(|p| p.digest_hash())
                .collect()
        }
    }

    fn ops() -> impl Strategy<Value = (usize, Vec<Op>)> {
        (3usize..=5).prop_flat_map(|n| (Just(n), prop::collection::vec(arb_op(n), 1..80)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// One ring; partitions, heals, restarts, deaths and double reclaims: no address is
        /// ever held twice, and once healed everyone holds the same ring.
        #[test]
        fn no_address_is_ever_handed_out_twice((n, ops) in ops()) {
            let mut net = Net::new(n, "10.0.0.0/28");
            let now = net.now;
            net.p(0).allocate(&key(200), now).unwrap();
            net.pump();
            net.gossip();
            for op in &ops {
                net.apply(op);
                let dups = net.duplicates();
                prop_assert!(dups.is_empty(), "after {:?}: {:?}", op, net.all_allocations());
            }
            net.settle();
            prop_assert!(net.duplicates().is_empty());
            prop_assert_eq!(net.hashes().len(), 1, "one ring once connected");
            for p in net.peers.iter().flatten() {
                prop_assert!(p.conflicts().is_empty());
                prop_assert_eq!(p.status(net.now).orphans, 0);
            }
            // Space is not lost: every usable address is owned by a live peer or was reclaimed
            // from a peer nobody reclaimed yet.
            let ring = entries(net.peers.iter().flatten().next().unwrap());
            prop_assert!(ring.iter().all(|e| e.known()));
        }

        /// Two partitions bootstrap separately and allocate; once healed there is one ring,
        /// the older, and every address held twice is reported as a conflict.
        #[test]
        fn independent_rings_merge_and_duplicates_are_reported(
            first in prop::collection::vec((0usize..4, 0u8..24), 1..12),
            later in prop::collection::vec(arb_op(4), 0..30),
        ) {
            let mut net = Net::new(4, "10.0.0.0/26");
            net.apply(&Op::Split(0b1100));
            for (i, k) in &first {
                net.apply(&Op::Alloc(*i, *k));
                net.now += SEC;
            }
            net.apply(&Op::Alloc(0, 100));
            net.apply(&Op::Alloc(3, 100));
            let rings: BTreeSet<RingId> = net.peers.iter().flatten().filter_map(|p| p.ring_id()).collect();
            prop_assert_eq!(rings.len(), 2);
            let winner = *rings.iter().next().unwrap();
            let winners: Vec<(usize, Vec<(AllocKey, Ipv4Addr)>)> = net
                .peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
                .filter(|(_, p)| p.ring_id() == Some(winner))
                .map(|(i, p)| (i, p.allocations()))
                .collect();
            for op in later.iter().filter(|op| !matches!(op, Op::Kill(_) | Op::Reclaim(..))) {
                net.apply(op);
            }
            net.settle();
            prop_assert_eq!(net.hashes().len(), 1);
            prop_assert!(net.peers.iter().flatten().all(|p| p.ring_id() == Some(winner)));
            let reported: BTreeSet<Ipv4Addr> = net
                .peers
                .iter()
                .flatten()
                .flat_map(|p| p.conflicts())
                .map(|c| c.addr)
                .collect();
            for dup in net.duplicates() {
                prop_assert!(reported.contains(&dup), "unreported duplicate {}", dup);
            }
            // The winners' allocations are untouched unless they released them themselves.
            if later.is_empty() {
                for (i, allocs) in winners {
                    prop_assert_eq!(net.peers[i].as_ref().unwrap().allocations(), allocs);
                }
            }
        }
    }
}
