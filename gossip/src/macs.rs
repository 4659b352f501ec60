//! The MAC-to-peer gossip channel: which peer each pod's MAC address lives behind.
//!
//! Weave learns MACs only from data, so the first frame to a pod on another host is flooded.
//! weft also gossips MAC → owning peer: a pod's MAC is announced as soon as its host sees it,
//! so that first frame can be unicast at once. Data learning stays the authority on the
//! datapath; this channel is a hint that fills the table early, and losing an entry here only
//! falls back to flooding.
//!
//! # State and merge
//! One [`Claim`] per MAC: `(version, owner, live)`. A claim supersedes another iff its rank
//! `(version, owner, withdrawn)` is greater, a total order, so merging is a per-MAC maximum:
//! commutative, associative and idempotent.
//! - A peer that sees a local MAC claims it at `version = known version + 1` with itself as
//!   owner: a MAC that moves host is claimed by the new host at a higher version and the new
//!   claim wins everywhere.
//! - A withdrawal is **the same claim, marked withdrawn** (same version): at equal version and
//!   owner, withdrawn ranks above live. So a tombstone outranks exactly the claim it withdraws
//!   and what that claim already outranked, never anything newer: a withdrawal racing with a
//!   move to another host (which claims at a higher version) cannot hide the move.
//!
//! # The owner is the authority on its own claims
//! Only the owner creates or withdraws claims in its name. The channel keeps `mine`, the MACs
//! the local router says are here ([`MacChannel::claim_local`] adds, [`MacChannel::withdraw_local`]
//! removes), and every incoming claim in our own name is checked against it before merging:
//! - a live claim in our name for a MAC that is not ours (an earlier incarnation of us, or a
//!   claim we withdrew and whose tombstone was pruned, resurfacing) is merged as its
//!   tombstone;
//! - a withdrawal in our name for a MAC that is ours is answered by a live claim one version
//!   higher.
//!
//! The check depends only on the claim and `mine`, not on what was merged before, so merging
//! stays order-independent. The correction is part of what the merge reports as improved,
//! so it spreads like any news (see the caveat on relays below).
//!
//! # Attachments are pinned; learned MACs are rate-limited
//! MACs of pods the CNI plugin attached here are **pinned** ([`MacChannel::pin_local`]): they
//! are ours until [`MacChannel::unpin_local`], and a live claim of another peer for one (a pod
//! elsewhere spoofing it, or a hostile peer) is merged as our own claim one version higher,
//! counted in [`MacChannel::conflicts`]. Like the authority rule this depends only on the claim
//! and the pinned set, so merging stays order-independent; two peers pinning one MAC (which
//! honest routers, choosing attachment MACs at random, never do) would outbid each other once
//! per claim received.
//!
//! Other local MACs come from data, which a pod controls: new ones are claimed at most
//! [`CLAIM_RATE`] per second after a burst of [`CLAIM_BURST`] (a token bucket on the clock we
//! are given); a claim over the budget is not made and is counted
//! ([`MacChannel::rate_limited`]), so a pod flooding source addresses cannot make this peer
//! fill every other peer's store. Such a MAC is still reached by flooding.
//!
//! # Tombstones, pruning and resurrection
//! Tombstones are needed only to beat the stale live claim they withdraw. They are kept out of
//! the digest and the digest hash (which describe live claims only), and out of the full state
//! sent to new neighbours; anti-entropy sends one only to a neighbour whose digest lists a live
//! claim the tombstone supersedes. Consequences:
//! - peers drop tombstones on their own schedule ([`MacChannel::prune_tombstones`], by a local
//!   "changed at" time that is neither gossiped nor part of the order) without coordination:
//!   holding or lacking a tombstone does not change a hash, so pruned tombstones are never
//!   pushed back and never ping-pong between peers;
//! - a tombstone travels only as a one-shot broadcast, or as an answer that replaces a live
//!   claim, so nothing re-arms it forever.
//!
//! Dropping a tombstone is safe once the stale claim it withdrew is gone everywhere: new
//! claims for that MAC carry higher versions than anything they replace, so they do not need
//! it. The risk is a peer that still holds the stale live claim (it missed the withdrawal and
//! stayed partitioned for longer than the tombstones lived) and gossips it again after
//! everyone else pruned:
//! - owners never re-announce dropped claims, and if the claim's owner is still in the mesh it
//!   withdraws the resurfaced claim as soon as it receives it (the authority rule above);
//! - if the owner left, [`GossipChannel::peers_gone`] (called by the mesh when the topology
//!   forgets a peer) turns the owner's live claims into tombstones, not plain deletions:
//!   peers forget a departed peer at slightly different times, and a plain deletion would be
//!   undone by the anti-entropy of a peer that had not yet forgotten it, with no owner left to
//!   correct it. A partitioned peer that comes back with a departed peer's claims also brings
//!   back its topology entry, which the mesh forgets again, calling `peers_gone` again.
//!
//! What remains is a departed peer's claim that survives all of that; it points frames for a
//! MAC that no longer exists at an unreachable peer until the MAC is claimed again somewhere.
//!
//! # Bounds
//! At most `max_entries` claims (live and tombstones) are stored, clamped to [`MAX_ENTRIES`] so
//! that the digest (one frame, sent whole by the mesh) always fits a frame. Beyond it, claims
//! for new MACs from the network are refused and counted ([`MacChannel::refused`]); a claim of
//! our own for a local MAC evicts the oldest tombstone, or failing that the least recently
//! changed live claim of another peer. At capacity merging is no longer order-independent: the
//! bound is a safety valve against a misbehaving peer, not a working regime.
//!
//! # Hosting and time
//! The mesh hosts channels as `Box<dyn GossipChannel>`, which the router cannot call
//! `claim_local` or `owner` on. [`SharedMacChannel`] wraps the channel in an `Arc<Mutex<_>>`:
//! the mesh hosts one handle and the router keeps a clone. [`MacChannel::claim_local`] and
//! [`MacChannel::withdraw_local`] therefore only *describe* the change: the router passes the
//! update to `Mesh::publish`, whose merge applies it and broadcasts what improved (had they
//! applied it themselves, that merge would find nothing new and broadcast nothing).
//!
//! The trait's `merge` gets no time, so the channel keeps a clock: the latest `now` it was
//! given by [`MacChannel::new`], [`MacChannel::set_now`] or any local call. Entries merged from
//! the network are stamped with it; the router calls `set_now` on its ticks, and a tombstone
//! then lives at least its keep-for time minus the tick period.
//!
//! Caveat: when a correction is made while merging a broadcast relayed through us, the mesh
//! relays the original payload, not our correction; the correction still reaches everyone
//! through anti-entropy within a gossip interval.

use crate::fnv::Fnv64;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::channel::{ChannelError, GossipChannel, SharedChannel};
use crate::peer::PeerName;
use crate::wire::{self, ChannelId};

/// A 48-bit Ethernet address.
pub type Mac = [u8; 6];

/// The channel id the MAC-to-peer channel is hosted under.
pub const MAC_CHANNEL: ChannelId = ChannelId(3);

/// Upper bound on `max_entries`: the digest of this many live claims, at the largest possible
/// encoding (23 bytes per claim), stays well inside one frame.
pub const MAX_ENTRIES: usize = 32_768;

/// A reasonable time to keep tombstones: many gossip intervals, so a missed withdrawal is
/// repaired by anti-entropy long before the tombstone is dropped.
pub const DEFAULT_TOMBSTONE_KEEP: Duration = Duration::from_secs(10 * 60);

/// New learned (not pinned) local MACs claimed per second, on average.
pub const CLAIM_RATE: u32 = 20;
/// New learned local MACs that may be claimed at once before [`CLAIM_RATE`] applies.
pub const CLAIM_BURST: u32 = 100;

/// Largest encoding of one `(Mac, Claim)`: 6 bytes of MAC, two varint `u64`s, a bool.
const CLAIM_MAX_LEN: usize = 6 + 10 + 10 + 1;
/// Largest varint length prefix of a sequence.
const LEN_PREFIX_MAX: usize = 10;

/// Who owns a MAC, as of which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// Bumped by whoever claims the MAC next; a withdrawal keeps the version it withdraws.
    pub version: u64,
    pub owner: PeerName,
    /// `false` for a tombstone: the owner withdrew this claim.
    pub live: bool,
}

impl Claim {
    /// Merge order: version, then owner, then withdrawn above live.
    fn rank(&self) -> (u64, PeerName, bool) {
        (self.version, self.owner, !self.live)
    }

    /// Strictly greater in the merge order.
    pub fn supersedes(&self, other: &Claim) -> bool {
        self.rank() > other.rank()
    }

    /// This claim, withdrawn: outranks it and nothing it did not already outrank.
    pub fn withdrawn(self) -> Claim {
        Claim {
            live: false,
            ..self
        }
    }
}

/// An update: claims to merge, in any order, duplicates allowed (the greatest wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacUpdate {
    pub claims: Vec<(Mac, Claim)>,
}

/// The digest: every live claim as `(mac, version, owner)`, sorted by MAC. Tombstones are not
/// listed (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacDigest {
    pub live: Vec<(Mac, u64, PeerName)>,
}

/// Whether a MAC can belong to one pod: not multicast/broadcast (bit 0 of byte 0), not zero.
/// The same rule as the datapath's MAC table.
pub fn is_claimable(mac: &Mac) -> bool {
    mac[0] & 0x01 == 0 && *mac != [0; 6]
}

/// The live owners a peer's digest (as produced by [`GossipChannel::digest`]) lists, for
/// status and tests that see the channel only as `dyn GossipChannel`.
pub fn digest_owners(digest: &[u8]) -> Result<BTreeMap<Mac, PeerName>, ChannelError> {
    Ok(decode_digest(digest)?
        .into_iter()
        .map(|(mac, claim)| (mac, claim.owner))
        .collect())
}

fn valid_name(name: PeerName) -> bool {
    PeerName::from_u64(name.as_u64()).is_some()
}

fn check(mac: &Mac, owner: PeerName) -> Result<(), ChannelError> {
    if !is_claimable(mac) {
        return Err(ChannelError::Invalid(format!(
            "claim for a MAC no pod can own: {mac:02x?}"
        )));
    }
    if !valid_name(owner) {
        return Err(ChannelError::Invalid(format!(
            "claim owner {:#x} is not a 48-bit peer name",
            owner.as_u64()
        )));
    }
    Ok(())
}

/// Decodes and validates a digest into the greatest live claim per MAC (duplicates and any
/// order tolerated).
fn decode_digest(digest: &[u8]) -> Result<BTreeMap<Mac, Claim>, ChannelError> {
    let digest: MacDigest = wire::decode(digest)?;
    let mut claims: BTreeMap<Mac, Claim> = BTreeMap::new();
    for (mac, version, owner) in digest.live {
        check(&mac, owner)?;
        let claim = Claim {
            version,
            owner,
            live: true,
        };
        let slot = claims.entry(mac).or_insert(claim);
        if claim.supersedes(slot) {
            *slot = claim;
        }
    }
    Ok(claims)
}

fn encode_update(claims: Vec<(Mac, Claim)>) -> Option<Vec<u8>> {
    (!claims.is_empty()).then(|| wire::encode(&MacUpdate { claims }))
}

/// Splits claims into updates whose encodings fit in `budget` bytes (at least one claim each).
fn encode_parts(claims: &[(Mac, Claim)], budget: usize) -> Vec<Vec<u8>> {
    let per_part = (budget.saturating_sub(LEN_PREFIX_MAX) / CLAIM_MAX_LEN).max(1);
    claims
        .chunks(per_part)
        .map(|part| {
            wire::encode(&MacUpdate {
                claims: part.to_vec(),
            })
        })
        .collect()
}

fn mac_word(mac: &Mac) -> u64 {
    let mut wide = [0u8; 8];
    wide[2..].copy_from_slice(mac);
    u64::from_be_bytes(wide)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    claim: Claim,
    /// When this entry last changed here (local clock; not gossiped, not ordered on).
    changed_at: Instant,
}

/// Our replica of the MAC-to-peer map.
#[derive(Debug, Clone)]
pub struct MacChannel {
    local: PeerName,
    claims: BTreeMap<Mac, Entry>,
    /// MACs the local router says are here: the truth our own claims are checked against.
    mine: BTreeSet<Mac>,
    /// Of `mine`, the MACs of CNI attachments: never given up to another peer's claim.
    pinned: BTreeSet<Mac>,
    max_entries: usize,
    /// The latest time we were given; stamps entries merged from the network.
    now: Instant,
    refused: u64,
    /// Token bucket for claims of learned MACs: tokens, and when it was last refilled.
    claim_tokens: f64,
    claim_refilled: Instant,
    rate_limited: u64,
    conflicts: u64,
    /// Bumped whenever a stored claim changes: consumers of the table (the fast path's
    /// forwarding entries) rebuild only when it moved.
    changes: u64,
}

impl MacChannel {
    /// An empty replica for peer `local`, storing at most `max_entries` claims (clamped to
    /// [`MAX_ENTRIES`]).
    pub fn new(local: PeerName, max_entries: usize, now: Instant) -> Self {
        Self {
            local,
            claims: BTreeMap::new(),
            mine: BTreeSet::new(),
            pinned: BTreeSet::new(),
            max_entries: max_entries.min(MAX_ENTRIES),
            now,
            refused: 0,
            claim_tokens: f64::from(CLAIM_BURST),
            claim_refilled: now,
            rate_limited: 0,
            conflicts: 0,
            changes: 0,
        }
    }

    /// Takes a token for a claim of a learned MAC, if the bucket has one.
    fn take_claim_token(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.claim_refilled);
        self.claim_refilled = self.claim_refilled.max(now);
        self.claim_tokens = (self.claim_tokens + elapsed.as_secs_f64() * f64::from(CLAIM_RATE))
            .min(f64::from(CLAIM_BURST));
        if self.claim_tokens >= 1.0 {
            self.claim_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A CNI attachment's MAC: ours until [`MacChannel::unpin_local`], whatever other peers
    /// claim (see the module docs). Returns the update to publish if this changes anything.
    /// Never refused for room or rate: there is one per attachment.
    pub fn pin_local(&mut self, mac: Mac, now: Instant) -> Option<Vec<u8>> {
        self.set_now(now);
        if !is_claimable(&mac) {
            return None;
        }
        self.mine.insert(mac);
        self.pinned.insert(mac);
        let claim = self.new_claim(&mac)?;
        encode_update(vec![(mac, claim)])
    }

    /// The attachment of `mac` is gone: withdraws our claim (the tombstone to publish, if we
    /// held it).
    pub fn unpin_local(&mut self, mac: Mac, now: Instant) -> Option<Vec<u8>> {
        self.pinned.remove(&mac);
        self.withdraw_local(mac, now)
    }

    /// Whether `mac` is pinned here.
    pub fn is_pinned(&self, mac: &Mac) -> bool {
        self.pinned.contains(mac)
    }

    /// Claims of learned MACs not made because they came faster than [`CLAIM_RATE`].
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited
    }

    /// Live claims of other peers for MACs pinned here, answered with our own.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    /// Advances the clock that stamps entries merged from the network (never moves it back).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// A local pod's MAC was seen. Returns the update to pass to `Mesh::publish` (which applies
    /// and broadcasts it) if this changes anything: a new MAC, a MAC that moved here, or one
    /// whose claim we had lost. `None` if we already own it, if the MAC cannot belong to a pod,
    /// or if the local set is full (counted in [`MacChannel::refused`]).
    pub fn claim_local(&mut self, mac: Mac, now: Instant) -> Option<Vec<u8>> {
        self.set_now(now);
        if !is_claimable(&mac) {
            return None;
        }
        if !self.mine.contains(&mac) {
            if self.mine.len() >= self.max_entries {
                self.refused = self.refused.saturating_add(1);
                return None;
            }
            if !self.take_claim_token(now) {
                self.rate_limited = self.rate_limited.saturating_add(1);
                return None;
            }
            self.mine.insert(mac);
        }
        let claim = self.new_claim(&mac)?;
        encode_update(vec![(mac, claim)])
    }

    /// A local MAC expired or moved away. Returns the tombstone to pass to `Mesh::publish`, or
    /// `None` if we do not currently own it (it moved, or was never claimed).
    pub fn withdraw_local(&mut self, mac: Mac, now: Instant) -> Option<Vec<u8>> {
        self.set_now(now);
        if self.pinned.contains(&mac) {
            // An attachment's MAC goes only with the attachment (`unpin_local`).
            return None;
        }
        self.mine.remove(&mac);
        let current = self.claims.get(&mac)?.claim;
        (current.live && current.owner == self.local)
            .then(|| encode_update(vec![(mac, current.withdrawn())]))
            .flatten()
    }

    /// Claims again, in one update, every local MAC whose claim we lost (to a concurrent claim
    /// of another peer, or because it was never published). Meant for a periodic check; call
    /// [`MacChannel::withdraw_local`] first for MACs the datapath saw move away, or the two
    /// hosts will take turns claiming.
    pub fn reassert_local(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.set_now(now);
        let claims = self
            .mine
            .iter()
            .filter_map(|mac| self.new_claim(mac).map(|claim| (*mac, claim)))
            .collect();
        encode_update(claims)
    }

    /// The claim that would make us the owner of `mac`, unless we already are (or cannot be:
    /// a version saturated by a misbehaving peer).
    fn new_claim(&self, mac: &Mac) -> Option<Claim> {
        let current = self.claims.get(mac).map(|e| e.claim);
        if current.is_some_and(|c| c.live && c.owner == self.local) {
            return None;
        }
        let claim = Claim {
            version: current.map_or(1, |c| c.version.saturating_add(1)),
            owner: self.local,
            live: true,
        };
        current
            .is_none_or(|c| claim.supersedes(&c))
            .then_some(claim)
    }

    /// The peer that owns `mac` (live claims only).
    pub fn owner(&self, mac: &Mac) -> Option<PeerName> {
        self.claims
            .get(mac)
            .filter(|e| e.claim.live)
            .map(|e| e.claim.owner)
    }

    /// The stored claim for `mac`, live or withdrawn.
    pub fn claim(&self, mac: &Mac) -> Option<Claim> {
        self.claims.get(mac).map(|e| e.claim)
    }

    /// A counter that moves whenever a stored claim changes.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Live `(mac, owner)` pairs, sorted by MAC (for status).
    pub fn live_entries(&self) -> Vec<(Mac, PeerName)> {
        self.claims
            .iter()
            .filter(|(_, e)| e.claim.live)
            .map(|(mac, e)| (*mac, e.claim.owner))
            .collect()
    }

    /// The MACs the local router says are here (claimed and not withdrawn), sorted.
    pub fn local_macs(&self) -> Vec<Mac> {
        self.mine.iter().copied().collect()
    }

    /// Stored claims, live and withdrawn.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Stored tombstones.
    pub fn tombstones(&self) -> usize {
        self.claims.values().filter(|e| !e.claim.live).count()
    }

    /// Drops tombstones that have not changed for `keep_for` (by the local clock; see the
    /// module docs for why that is safe). Returns how many were dropped. Also advances the
    /// clock to `now`.
    pub fn prune_tombstones(&mut self, now: Instant, keep_for: Duration) -> usize {
        self.set_now(now);
        let Some(cutoff) = now.checked_sub(keep_for) else {
            return 0;
        };
        let before = self.claims.len();
        self.claims
            .retain(|_, e| e.claim.live || e.changed_at > cutoff);
        before - self.claims.len()
    }

    /// Claims for new MACs not stored for lack of room (network claims at capacity, local
    /// MACs beyond `max_entries`).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Applies the authority rule to a claim in our own name (module docs); others pass as
    /// they are.
    fn vet(&self, mac: &Mac, claim: Claim) -> Claim {
        if claim.owner != self.local {
            if self.pinned.contains(mac) {
                // Another peer claims an attachment of ours (or withdraws its claim, which
                // must not withdraw ours): ours again, one higher.
                let ours = Claim {
                    version: claim.version.saturating_add(1),
                    owner: self.local,
                    live: true,
                };
                if ours.supersedes(&claim) {
                    return ours;
                }
            }
            return claim;
        }
        match (self.mine.contains(mac), claim.live) {
            // Someone says we withdrew a MAC that is here: say it again, higher.
            (true, false) => {
                let again = Claim {
                    version: claim.version.saturating_add(1),
                    owner: self.local,
                    live: true,
                };
                if again.supersedes(&claim) {
                    again
                } else {
                    claim
                }
            }
            // Someone says we own a MAC that is not here: withdraw that claim.
            (false, true) => claim.withdrawn(),
            _ => claim,
        }
    }

    /// Merges one claim; returns what is now stored if it changed anything.
    fn merge_claim(&mut self, mac: Mac, incoming: Claim) -> Option<Claim> {
        let claim = self.vet(&mac, incoming);
        if let Some(entry) = self.claims.get_mut(&mac) {
            if !claim.supersedes(&entry.claim) {
                return None;
            }
            if incoming.live && incoming.owner != self.local && claim.owner == self.local {
                self.conflicts = self.conflicts.saturating_add(1);
            }
            entry.claim = claim;
            entry.changed_at = self.now;
            self.changes = self.changes.wrapping_add(1);
            return Some(claim);
        }
        if self.claims.len() >= self.max_entries && !self.make_room(&claim) {
            self.refused = self.refused.saturating_add(1);
            return None;
        }
        self.claims.insert(
            mac,
            Entry {
                claim,
                changed_at: self.now,
            },
        );
        self.changes = self.changes.wrapping_add(1);
        Some(claim)
    }

    /// At capacity, only our own live claims make room: by evicting the oldest tombstone, or
    /// else the least recently changed live claim of another peer.
    fn make_room(&mut self, claim: &Claim) -> bool {
        if !(claim.live && claim.owner == self.local) {
            return false;
        }
        // Tombstones of any owner go first; of live claims, only other peers' are evicted.
        let tombstone = self
            .claims
            .iter()
            .filter(|(_, e)| !e.claim.live)
            .min_by_key(|(_, e)| e.changed_at)
            .map(|(mac, _)| *mac);
        let other_live = || {
            self.claims
                .iter()
                .filter(|(_, e)| e.claim.live && e.claim.owner != self.local)
                .min_by_key(|(_, e)| e.changed_at)
                .map(|(mac, _)| *mac)
        };
        match tombstone.or_else(other_live) {
            Some(victim) => {
                self.claims.remove(&victim);
                true
            }
            None => false,
        }
    }

    fn live_claims(&self) -> Vec<(Mac, Claim)> {
        self.claims
            .iter()
            .filter(|(_, e)| e.claim.live)
            .map(|(mac, e)| (*mac, e.claim))
            .collect()
    }
}

impl GossipChannel for MacChannel {
    /// [`Fnv64`] over, per live claim in MAC order, the MAC (as a big-endian 48-bit number),
    /// version and owner, then the number of live claims.
    /// Tombstones are not included: equal hashes mean equal live state.
    fn digest_hash(&self) -> u64 {
        let mut hash = Fnv64::default();
        let mut live = 0u64;
        for (mac, e) in &self.claims {
            if e.claim.live {
                hash.word(mac_word(mac));
                hash.word(e.claim.version);
                hash.word(e.claim.owner.as_u64());
                live += 1;
            }
        }
        hash.word(live);
        hash.finish()
    }

    fn digest(&self) -> Vec<u8> {
        let live = self
            .claims
            .iter()
            .filter(|(_, e)| e.claim.live)
            .map(|(mac, e)| (*mac, e.claim.version, e.claim.owner))
            .collect();
        wire::encode(&MacDigest { live })
    }

    /// Live claims only: a new neighbour has nothing a tombstone could replace except stale
    /// live claims, and those are answered by anti-entropy.
    fn full_state(&self, budget: usize) -> Vec<Vec<u8>> {
        encode_parts(&self.live_claims(), budget)
    }

    /// Validates the whole update first (a malformed update changes nothing), then merges
    /// claim by claim. The improvement reported is what we now store, including corrections
    /// to claims in our own name.
    fn merge(&mut self, _from: PeerName, update: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        let update: MacUpdate = wire::decode(update)?;
        for (mac, claim) in &update.claims {
            check(mac, claim.owner)?;
        }
        let mut improved: BTreeMap<Mac, Claim> = BTreeMap::new();
        for (mac, claim) in update.claims {
            if let Some(stored) = self.merge_claim(mac, claim) {
                improved.insert(mac, stored);
            }
        }
        Ok(encode_update(improved.into_iter().collect()))
    }

    /// Sends our live claims the neighbour lacks or holds older versions of, and our
    /// tombstones that supersede live claims it lists. It knows more if it lists a live claim
    /// we lack or that supersedes ours.
    fn compare_digest(
        &self,
        digest: &[u8],
        budget: usize,
    ) -> Result<(Vec<Vec<u8>>, bool), ChannelError> {
        let theirs = decode_digest(digest)?;
        let newer_here: Vec<(Mac, Claim)> = self
            .claims
            .iter()
            .filter(|(mac, e)| match theirs.get(*mac) {
                None => e.claim.live,
                Some(their) => e.claim.supersedes(their),
            })
            .map(|(mac, e)| (*mac, e.claim))
            .collect();
        let they_know_more = theirs.iter().any(|(mac, their)| {
            self.claims
                .get(mac)
                .is_none_or(|ours| their.supersedes(&ours.claim))
        });
        Ok((encode_parts(&newer_here, budget), they_know_more))
    }

    /// Withdraws the live claims of peers the topology forgot (tombstones, not deletions: see
    /// the module docs). Our own claims are never touched.
    fn peers_gone(&mut self, peers: &[PeerName]) {
        let gone: BTreeSet<PeerName> = peers.iter().copied().filter(|p| *p != self.local).collect();
        let now = self.now;
        for entry in self.claims.values_mut() {
            if entry.claim.live && gone.contains(&entry.claim.owner) {
                entry.claim = entry.claim.withdrawn();
                entry.changed_at = now;
            }
        }
    }
}

/// A [`MacChannel`] shared between the mesh (which hosts one handle as its gossip channel) and
/// the router (which keeps a clone to claim, withdraw and look up owners).
pub type SharedMacChannel = SharedChannel<MacChannel>;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LOCAL: u64 = 100;
    const MIN: Duration = Duration::from_secs(60);

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn mac(n: u8) -> Mac {
        [0x02, 0, 0, 0, 0, n]
    }

    fn claim(version: u64, owner: u64, live: bool) -> Claim {
        Claim {
            version,
            owner: name(owner),
            live,
        }
    }

    fn replica(local: u64, now: Instant) -> MacChannel {
        MacChannel::new(name(local), MAX_ENTRIES, now)
    }

    fn update(claims: &[(Mac, Claim)]) -> Vec<u8> {
        wire::encode(&MacUpdate {
            claims: claims.to_vec(),
        })
    }

    fn claims_of(bytes: &[u8]) -> Vec<(Mac, Claim)> {
        wire::decode::<MacUpdate>(bytes).unwrap().claims
    }

    /// What `Mesh::publish` does with a local change: merge it, broadcast what improved.
    fn publish(
        c: &mut MacChannel,
        local_change: impl FnOnce(&mut MacChannel) -> Option<Vec<u8>>,
    ) -> Vec<u8> {
        let change = local_change(c).expect("a local change");
        let improved = c.merge(c.local_name(), &change).unwrap();
        assert_eq!(
            improved.as_ref(),
            Some(&change),
            "a local change applies as is"
        );
        change
    }

    fn snapshot(c: &MacChannel) -> BTreeMap<Mac, Claim> {
        c.claims.iter().map(|(m, e)| (*m, e.claim)).collect()
    }

    #[test]
    fn a_local_mac_is_claimed_once() {
        let t = Instant::now();
        let mut a = replica(1, t);
        let change = a.claim_local(mac(1), t).unwrap();
        assert_eq!(claims_of(&change), vec![(mac(1), claim(1, 1, true))]);
        assert_eq!(
            a.owner(&mac(1)),
            None,
            "claim_local describes; publish applies"
        );
        publish(&mut a, |_| Some(change.clone()));
        assert_eq!(a.owner(&mac(1)), Some(name(1)));
        assert_eq!(a.live_entries(), vec![(mac(1), name(1))]);
        assert_eq!(a.local_macs(), vec![mac(1)]);
        // Seen again: nothing to say; the same update again: nothing new.
        assert_eq!(a.claim_local(mac(1), t), None);
        assert_eq!(a.merge(name(1), &change).unwrap(), None);
        // Group addresses and zero belong to no pod.
        for bad in [[0x01, 0, 0x5e, 0, 0, 1], [0xff; 6], [0; 6]] {
            assert_eq!(a.claim_local(bad, t), None);
        }
        assert_eq!(a.local_macs(), vec![mac(1)]);
    }

    #[test]
    fn a_mac_that_moves_host_is_corrected_everywhere() {
        let t = Instant::now();
        let (mut a, mut b, mut c) = (replica(1, t), replica(2, t), replica(3, t));
        let from_a = publish(&mut a, |c| c.claim_local(mac(1), t));
        b.merge(name(1), &from_a).unwrap();
        c.merge(name(1), &from_a).unwrap();
        assert_eq!(c.owner(&mac(1)), Some(name(1)));

        // The pod moves to b: b claims one version higher.
        let from_b = publish(&mut b, |c| c.claim_local(mac(1), t));
        assert_eq!(claims_of(&from_b), vec![(mac(1), claim(2, 2, true))]);
        for peer in [&mut a, &mut c] {
            assert_eq!(peer.merge(name(2), &from_b).unwrap(), Some(from_b.clone()));
            assert_eq!(peer.owner(&mac(1)), Some(name(2)));
        }
        // The old claim, late or duplicated, changes nothing.
        assert_eq!(c.merge(name(1), &from_a).unwrap(), None);
        assert_eq!(c.owner(&mac(1)), Some(name(2)));
        // a no longer owns it, so it has nothing to withdraw when its table expires it.
        assert_eq!(a.withdraw_local(mac(1), t), None);
        assert_eq!(a.owner(&mac(1)), Some(name(2)));
    }

    #[test]
    fn the_owner_withdraws_with_a_tombstone_of_the_same_version() {
        let t = Instant::now();
        let (mut a, mut b) = (replica(1, t), replica(2, t));
        let claimed = publish(&mut a, |c| c.claim_local(mac(1), t));
        b.merge(name(1), &claimed).unwrap();

        let tombstone = publish(&mut a, |c| c.withdraw_local(mac(1), t));
        assert_eq!(claims_of(&tombstone), vec![(mac(1), claim(1, 1, false))]);
        assert_eq!(b.merge(name(1), &tombstone).unwrap(), Some(tombstone));
        assert_eq!(b.owner(&mac(1)), None);
        assert_eq!((b.len(), b.tombstones()), (1, 1));
        assert!(b.live_entries().is_empty());
        // The withdrawn claim, arriving late, stays withdrawn; withdrawing twice says nothing.
        assert_eq!(b.merge(name(1), &claimed).unwrap(), None);
        assert_eq!(a.withdraw_local(mac(1), t), None);
        assert_eq!(
            b.withdraw_local(mac(1), t),
            None,
            "only the owner withdraws"
        );

        // Seen again: a new claim outranks the tombstone.
        let again = publish(&mut a, |c| c.claim_local(mac(1), t));
        assert_eq!(claims_of(&again), vec![(mac(1), claim(2, 1, true))]);
        b.merge(name(1), &again).unwrap();
        assert_eq!(b.owner(&mac(1)), Some(name(1)));
    }

    #[test]
    fn a_withdrawal_racing_a_move_never_hides_the_move() {
        let t = Instant::now();
        // The old host's name is the greater one, so no tie-break could save the move.
        let (mut old, mut new) = (replica(9, t), replica(2, t));
        let claimed = publish(&mut old, |c| c.claim_local(mac(1), t));
        new.merge(name(9), &claimed).unwrap();
        let moved = publish(&mut new, |c| c.claim_local(mac(1), t));
        let withdrawn = publish(&mut old, |c| c.withdraw_local(mac(1), t));
        for order in [[&moved, &withdrawn], [&withdrawn, &moved]] {
            let mut other = replica(3, t);
            other.merge(name(9), &claimed).unwrap();
            for u in order {
                other.merge(name(3), u).unwrap();
            }
            assert_eq!(other.owner(&mac(1)), Some(name(2)));
        }
    }

    #[test]
    fn tombstones_are_pruned_by_local_age_and_never_pushed_back() {
        let t = Instant::now();
        let (mut a, mut b) = (replica(1, t), replica(2, t));
        publish(&mut a, |c| c.claim_local(mac(1), t));
        let kept = publish(&mut a, |c| c.claim_local(mac(2), t));
        let tombstone = publish(&mut a, |c| c.withdraw_local(mac(1), t));
        b.merge(name(1), &kept).unwrap();
        // b's clock is a minute later when the tombstone arrives: its age counts from there.
        b.set_now(t + MIN);
        b.merge(name(1), &tombstone).unwrap();

        assert_eq!(a.prune_tombstones(t + 5 * MIN, 10 * MIN), 0);
        assert_eq!(a.prune_tombstones(t + 10 * MIN, 10 * MIN), 1);
        assert_eq!(b.prune_tombstones(t + 10 * MIN, 10 * MIN), 0);
        // A peer without the tombstone has the same live state and hash: nothing to exchange.
        assert_eq!(a.digest_hash(), b.digest_hash());
        assert_eq!(
            b.compare_digest(&a.digest(), 1 << 16).unwrap(),
            (vec![], false)
        );
        assert_eq!(
            a.compare_digest(&b.digest(), 1 << 16).unwrap(),
            (vec![], false)
        );
        assert_eq!(b.prune_tombstones(t + 11 * MIN, 10 * MIN), 1);
        // Live claims are never pruned; a keep-for beyond the clock's range prunes nothing.
        assert_eq!(b.owner(&mac(2)), Some(name(1)));
        assert_eq!(b.prune_tombstones(t + 60 * MIN, Duration::MAX), 0);
        assert_eq!(
            b.prune_tombstones(t, 10 * MIN),
            0,
            "the clock never goes back"
        );
    }

    #[test]
    fn a_resurfacing_claim_is_withdrawn_by_its_owner() {
        let t = Instant::now();
        let (mut owner, mut peer, mut stale) = (replica(1, t), replica(2, t), replica(3, t));
        let claimed = publish(&mut owner, |c| c.claim_local(mac(1), t));
        stale.merge(name(1), &claimed).unwrap();
        peer.merge(name(1), &claimed).unwrap();
        // `stale` misses the withdrawal, and everyone else prunes the tombstone.
        let tombstone = publish(&mut owner, |c| c.withdraw_local(mac(1), t));
        peer.merge(name(1), &tombstone).unwrap();
        owner.prune_tombstones(t + 20 * MIN, 10 * MIN);
        peer.prune_tombstones(t + 20 * MIN, 10 * MIN);
        assert!(owner.is_empty() && peer.is_empty());

        // Anti-entropy brings the stale claim back to `peer`…
        let (pushed, wants) = peer.compare_digest(&stale.digest(), 1 << 16).unwrap();
        assert!(pushed.is_empty() && wants);
        let (for_peer, _) = stale.compare_digest(&peer.digest(), 1 << 16).unwrap();
        for part in &for_peer {
            peer.merge(name(3), part).unwrap();
        }
        assert_eq!(peer.owner(&mac(1)), Some(name(1)));
        // …and when it reaches the owner, which does not hold that MAC, the owner withdraws it
        // again and reports the tombstone as its news.
        let correction = owner.merge(name(2), &for_peer[0]).unwrap().unwrap();
        assert_eq!(claims_of(&correction), vec![(mac(1), claim(1, 1, false))]);
        for replica in [&mut peer, &mut stale] {
            replica.merge(name(1), &correction).unwrap();
            assert_eq!(replica.owner(&mac(1)), None);
        }
    }

    #[test]
    fn the_owner_is_the_authority_on_claims_in_its_name() {
        let t = Instant::now();
        // Just restarted: mac 1 is here again and claimed at version 1; mac 2 is gone.
        let mut a = replica(1, t);
        publish(&mut a, |c| c.claim_local(mac(1), t));
        // Claims of an earlier incarnation come back through gossip.
        let old = update(&[(mac(1), claim(5, 1, true)), (mac(2), claim(3, 1, true))]);
        let improved = claims_of(&a.merge(name(2), &old).unwrap().unwrap());
        assert_eq!(
            improved,
            vec![(mac(1), claim(5, 1, true)), (mac(2), claim(3, 1, false))],
            "true claims are kept, claims for MACs not here are withdrawn"
        );
        assert_eq!(a.owner(&mac(1)), Some(name(1)));
        assert_eq!(a.owner(&mac(2)), None);
        // A withdrawal in our name of a MAC that is here is answered one version higher.
        let improved = a
            .merge(name(2), &update(&[(mac(1), claim(7, 1, false))]))
            .unwrap()
            .unwrap();
        assert_eq!(claims_of(&improved), vec![(mac(1), claim(8, 1, true))]);
        assert_eq!(a.owner(&mac(1)), Some(name(1)));
    }

    #[test]
    fn claims_of_departed_peers_become_tombstones() {
        let t = Instant::now();
        let mut a = replica(LOCAL, t);
        publish(&mut a, |c| c.claim_local(mac(9), t));
        let theirs = update(&[(mac(1), claim(4, 1, true)), (mac(2), claim(1, 3, true))]);
        a.merge(name(1), &theirs).unwrap();

        a.peers_gone(&[name(1), name(LOCAL)]);
        assert_eq!(a.claim(&mac(1)), Some(claim(4, 1, false)));
        assert_eq!(a.owner(&mac(2)), Some(name(3)));
        assert_eq!(a.owner(&mac(9)), Some(name(LOCAL)), "our own claims stay");
        // A peer that has not forgotten peer 1 yet pushes its claim: it stays withdrawn.
        assert_eq!(a.merge(name(3), &theirs).unwrap(), None);
        assert_eq!(a.owner(&mac(1)), None);

        // Peer 1 comes back, still hosting the pod: told of its own withdrawal, it re-asserts.
        let mut back = replica(1, t);
        back.claim_local(mac(1), t);
        let reasserted = back
            .merge(name(LOCAL), &update(&[(mac(1), claim(4, 1, false))]))
            .unwrap()
            .unwrap();
        assert_eq!(a.merge(name(1), &reasserted).unwrap(), Some(reasserted));
        assert_eq!(a.owner(&mac(1)), Some(name(1)));
    }

    #[test]
    fn reassert_claims_what_we_lost() {
        let t = Instant::now();
        let mut a = replica(1, t);
        publish(&mut a, |c| c.claim_local(mac(1), t));
        publish(&mut a, |c| c.claim_local(mac(2), t));
        a.claim_local(mac(3), t); // never published
        assert_eq!(
            a.reassert_local(t).map(|u| claims_of(&u)),
            Some(vec![(mac(3), claim(1, 1, true))])
        );
        // Another host wins mac 1 while it is still here.
        a.merge(name(2), &update(&[(mac(1), claim(2, 2, true))]))
            .unwrap();
        let again = a.reassert_local(t).unwrap();
        assert_eq!(
            claims_of(&again),
            vec![(mac(1), claim(3, 1, true)), (mac(3), claim(1, 1, true))]
        );
        publish(&mut a, |_| Some(again));
        assert_eq!(a.reassert_local(t), None);
        // A MAC the datapath saw move away is withdrawn first, and then left alone.
        a.merge(name(2), &update(&[(mac(2), claim(2, 2, true))]))
            .unwrap();
        assert_eq!(a.withdraw_local(mac(2), t), None);
        assert_eq!(a.reassert_local(t), None);
    }

    #[test]
    fn capacity_refuses_network_claims_and_makes_room_for_local_ones() {
        let t = Instant::now();
        let mut a = MacChannel::new(name(LOCAL), 2, t);
        a.merge(name(1), &update(&[(mac(1), claim(1, 1, true))]))
            .unwrap();
        a.set_now(t + MIN);
        let improved = a
            .merge(
                name(1),
                &update(&[(mac(2), claim(1, 1, true)), (mac(3), claim(1, 1, true))]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(claims_of(&improved), vec![(mac(2), claim(1, 1, true))]);
        assert_eq!((a.len(), a.refused(), a.owner(&mac(3))), (2, 1, None));
        // Replacing a stored claim is no growth.
        a.merge(name(3), &update(&[(mac(2), claim(2, 3, true))]))
            .unwrap();
        assert_eq!(a.owner(&mac(2)), Some(name(3)));

        // A local claim evicts the least recently changed live claim of another peer (mac 1).
        publish(&mut a, |c| c.claim_local(mac(4), t + 2 * MIN));
        assert_eq!(
            a.live_entries(),
            vec![(mac(2), name(3)), (mac(4), name(LOCAL))]
        );
        // Tombstones go first, even newer ones.
        a.peers_gone(&[name(3)]);
        publish(&mut a, |c| c.claim_local(mac(5), t + 3 * MIN));
        assert_eq!(
            a.live_entries(),
            vec![(mac(4), name(LOCAL)), (mac(5), name(LOCAL))]
        );
        // Full of our own live claims: a further local MAC is refused, never stored.
        assert_eq!(a.claim_local(mac(6), t), None);
        assert_eq!((a.len(), a.refused()), (2, 2));
        // The bound itself is clamped so the digest fits a frame.
        assert_eq!(
            MacChannel::new(name(1), usize::MAX, t).max_entries,
            MAX_ENTRIES
        );
    }

    #[test]
    fn malformed_input_is_an_error_and_changes_nothing() {
        let t = Instant::now();
        let mut a = replica(1, t);
        let good = (mac(1), claim(1, 2, true));
        let multicast = ([0x01, 0, 0x5e, 0, 0, 1], claim(1, 2, true));
        // The owner varint (0x02, second to last) rewritten as 1 << 48: not a peer name.
        let mut wide: Vec<u8> = update(&[good]);
        let at = wide.len() - 2;
        wide.splice(at..at + 1, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        for invalid in [
            &wide,
            &update(&[good, multicast]),
            &update(&[good, ([0; 6], claim(1, 2, true))]),
        ] {
            assert!(matches!(
                a.merge(name(2), invalid),
                Err(ChannelError::Invalid(_))
            ));
        }
        let mut trailing = update(&[good]);
        trailing.push(0);
        for bytes in [
            vec![],
            vec![0xff; 7],
            trailing,
            wide,
            update(&[good, multicast]),
            update(&[good, ([0; 6], claim(1, 2, true))]),
        ] {
            assert!(a.merge(name(2), &bytes).is_err(), "{bytes:02x?}");
            assert!(a.compare_digest(&bytes, 1 << 16).is_err());
            assert!(digest_owners(&bytes).is_err());
        }
        assert!(a.is_empty(), "a rejected update merges nothing");
        let bad_digest = wire::encode(&MacDigest {
            live: vec![(mac(1), 1, name(2)), ([0xff; 6], 1, name(2))],
        });
        assert!(a.compare_digest(&bad_digest, 1 << 16).is_err());
        assert!(digest_owners(&bad_digest).is_err());
        // Saturated versions (a misbehaving peer) never panic.
        a.merge(name(2), &update(&[(mac(1), claim(u64::MAX, 2, true))]))
            .unwrap();
        assert_eq!(a.claim_local(mac(1), t), None, "cannot outrank");
        let mut b = replica(3, t);
        b.merge(name(2), &update(&[(mac(1), claim(u64::MAX, 2, true))]))
            .unwrap();
        let taken = publish(&mut b, |c| c.claim_local(mac(1), t));
        assert_eq!(claims_of(&taken), vec![(mac(1), claim(u64::MAX, 3, true))]);
        // At the top version the owner cannot outrank a withdrawal in its name: it accepts it
        // (converging on it) rather than fight.
        let stuck = update(&[(mac(1), claim(u64::MAX, 3, false))]);
        assert_eq!(b.merge(name(2), &stuck).unwrap(), Some(stuck));
        assert_eq!(b.owner(&mac(1)), None);
        assert_eq!(b.reassert_local(t), None);
    }

    #[test]
    fn anti_entropy_ships_live_claims_and_tombstones_only_against_stale_claims() {
        let t = Instant::now();
        let (mut a, mut b) = (replica(1, t), replica(2, t));
        let one = publish(&mut a, |c| c.claim_local(mac(1), t));
        publish(&mut a, |c| c.claim_local(mac(2), t));
        b.merge(name(1), &one).unwrap();
        publish(&mut a, |c| c.withdraw_local(mac(1), t));
        publish(&mut a, |c| c.claim_local(mac(3), t));
        publish(&mut a, |c| c.withdraw_local(mac(3), t));
        // Full state: live claims only.
        let full: Vec<_> = a
            .full_state(1 << 16)
            .iter()
            .flat_map(|u| claims_of(u))
            .collect();
        assert_eq!(full, vec![(mac(2), claim(1, 1, true))]);
        // b lists mac 1 live: it gets mac 2 and the tombstone of mac 1, not that of mac 3.
        let (for_b, a_wants) = a.compare_digest(&b.digest(), 1 << 16).unwrap();
        let sent: Vec<_> = for_b.iter().flat_map(|u| claims_of(u)).collect();
        assert_eq!(
            sent,
            vec![(mac(1), claim(1, 1, false)), (mac(2), claim(1, 1, true))]
        );
        assert!(!a_wants);
        let (for_a, b_wants) = b.compare_digest(&a.digest(), 1 << 16).unwrap();
        assert!(b_wants, "a lists mac 2");
        assert_eq!(a.merge(name(2), &for_a.concat()).unwrap_or(None), None);
        for part in for_b {
            b.merge(name(1), &part).unwrap();
        }
        assert_eq!(a.digest_hash(), b.digest_hash());
        assert_eq!(
            digest_owners(&b.digest()).unwrap(),
            BTreeMap::from([(mac(2), name(1))])
        );
    }

    #[test]
    fn parts_respect_the_budget_and_the_digest_fits_a_frame_at_capacity() {
        let t = Instant::now();
        let mut a = replica(LOCAL, t);
        // The largest encodings: versions of ten varint bytes, the largest owner names.
        let biggest = PeerName::from_u64((1 << 48) - 1).unwrap();
        let claims: Vec<(Mac, Claim)> = (0..MAX_ENTRIES as u64 + 10)
            .map(|i| {
                let b = (i + 1).to_be_bytes();
                let mac = [0x02, 0, b[4], b[5], b[6], b[7]];
                let claim = Claim {
                    version: u64::MAX - i,
                    owner: biggest,
                    live: true,
                };
                (mac, claim)
            })
            .collect();
        for part in encode_parts(&claims, 50_000) {
            assert!(part.len() <= 50_000);
            a.merge(biggest, &part).unwrap();
        }
        assert_eq!((a.len(), a.refused()), (MAX_ENTRIES, 10));
        assert!(a.digest().len() <= wire::MAX_FRAME_LEN - 1024);
        // A budget below one claim still makes progress: one claim per part.
        for budget in [0, 1, 100, 10_000] {
            let parts = a.full_state(budget);
            let limit = budget.max(LEN_PREFIX_MAX + CLAIM_MAX_LEN);
            assert!(parts.iter().all(|p| p.len() <= limit));
            if budget == 0 {
                assert_eq!(parts.len(), MAX_ENTRIES);
            }
        }
        let mut b = replica(7, t);
        for part in a.full_state(10_000) {
            b.merge(name(1), &part).unwrap();
        }
        assert_eq!((b.digest(), b.digest_hash()), (a.digest(), a.digest_hash()));
    }

    #[test]
    fn a_shared_handle_is_what_the_mesh_hosts_and_the_router_reads() {
        let t = Instant::now();
        let router = SharedMacChannel::new(replica(1, t));
        let mut hosted: Box<dyn GossipChannel> = Box::new(router.clone());
        let change = router.lock().claim_local(mac(1), t).unwrap();
        // Mesh::publish merges into the hosted handle and broadcasts what improved.
        assert_eq!(hosted.merge(name(1), &change).unwrap(), Some(change));
        assert_eq!(router.lock().owner(&mac(1)), Some(name(1)));
        assert_eq!(
            digest_owners(&hosted.digest()).unwrap(),
            BTreeMap::from([(mac(1), name(1))])
        );
        assert_eq!(hosted.digest_hash(), router.lock().digest_hash());
        hosted
            .merge(name(2), &update(&[(mac(2), claim(1, 2, true))]))
            .unwrap();
        hosted.peers_gone(&[name(2)]);
        assert_eq!(router.lock().claim(&mac(2)), Some(claim(1, 2, false)));
        assert_eq!(hosted.full_state(1 << 16).len(), 1);
        assert!(
            hosted
                .compare_digest(&hosted.digest(), 1 << 16)
                .unwrap()
                .0
                .is_empty()
        );
    }

    // Small pools, so that equal MACs, versions and owners are common. Owners include the
    // replica's own name, so the authority rule is exercised too.
    fn arb_claim(owners: &'static [u64]) -> impl Strategy<Value = (Mac, Claim)> {
        (1u8..5, 0u64..4, prop::sample::select(owners), any::<bool>())
            .prop_map(|(m, version, owner, live)| (mac(m), claim(version, owner, live)))
    }

    const OWNERS: &[u64] = &[1, 2, 3, LOCAL];
    const TWO_LOCALS: &[u64] = &[1, 2, LOCAL, 200];

    fn arb_update() -> impl Strategy<Value = Vec<(Mac, Claim)>> {
        prop::collection::vec(arb_claim(OWNERS), 0..8)
    }

    fn arb_mine() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(1u8..5, 0..3)
    }

    /// A replica for `LOCAL` whose router says `mine` are here (claimed, not published).
    fn with_mine(local: u64, mine: &[u8], t: Instant) -> MacChannel {
        let mut c = replica(local, t);
        for m in mine {
            c.claim_local(mac(*m), t);
        }
        c
    }

    fn owners(c: &MacChannel) -> Vec<Option<PeerName>> {
        (0..6).map(|m| c.owner(&mac(m))).collect()
    }

    fn concat(a: &[(Mac, Claim)], b: &[(Mac, Claim)]) -> Vec<u8> {
        update(&[a, b].concat())
    }

    /// `q`'s digest reaches `p` (answering `p`'s hash): `p` pushes what `q` lacks and, if `q`
    /// lists more, sends its own digest so that `q` pushes too.
    fn exchange(p: &mut MacChannel, q: &mut MacChannel) {
        let (for_q, p_wants) = p.compare_digest(&q.digest(), 1 << 16).unwrap();
        for part in for_q {
            q.merge(p.local_name(), &part).unwrap();
        }
        if p_wants {
            let (for_p, _) = q.compare_digest(&p.digest(), 1 << 16).unwrap();
            for part in for_p {
                p.merge(q.local_name(), &part).unwrap();
            }
        }
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_update(), b in arb_update(), mine in arb_mine()) {
            let t = Instant::now();
            let mut ab = with_mine(LOCAL, &mine, t);
            ab.merge(name(1), &update(&a)).unwrap();
            ab.merge(name(2), &update(&b)).unwrap();
            let mut ba = with_mine(LOCAL, &mine, t);
            ba.merge(name(2), &update(&b)).unwrap();
            ba.merge(name(1), &update(&a)).unwrap();
            prop_assert_eq!(snapshot(&ab), snapshot(&ba));
            prop_assert_eq!(owners(&ab), owners(&ba));
            prop_assert_eq!(ab.digest_hash(), ba.digest_hash());
        }

        #[test]
        fn merge_is_associative(a in arb_update(), b in arb_update(), c in arb_update(), mine in arb_mine()) {
            let t = Instant::now();
            let mut left = with_mine(LOCAL, &mine, t);
            left.merge(name(1), &concat(&a, &b)).unwrap();
            left.merge(name(1), &update(&c)).unwrap();
            let mut right = with_mine(LOCAL, &mine, t);
            right.merge(name(1), &update(&a)).unwrap();
            right.merge(name(1), &concat(&b, &c)).unwrap();
            prop_assert_eq!(snapshot(&left), snapshot(&right));
            prop_assert_eq!(owners(&left), owners(&right));
            prop_assert_eq!(left.digest_hash(), right.digest_hash());

            // Relaying only what improved carries the same information as the whole update.
            let mut hop = with_mine(LOCAL, &mine, t);
            let mut relayed = with_mine(LOCAL, &mine, t);
            for u in [concat(&a, &b), update(&c)] {
                if let Some(improved) = hop.merge(name(1), &u).unwrap() {
                    relayed.merge(name(1), &improved).unwrap();
                }
            }
            prop_assert_eq!(snapshot(&relayed), snapshot(&left));
        }

        #[test]
        fn merge_is_idempotent(a in arb_update(), mine in arb_mine()) {
            let t = Instant::now();
            let mut once = with_mine(LOCAL, &mine, t);
            once.merge(name(1), &update(&a)).unwrap();
            let (state, hash) = (snapshot(&once), once.digest_hash());
            prop_assert_eq!(once.merge(name(2), &update(&a)).unwrap(), None);
            prop_assert_eq!(snapshot(&once), state);
            prop_assert_eq!(once.digest_hash(), hash);
        }

        #[test]
        fn anti_entropy_converges(
            a in prop::collection::vec(arb_claim(TWO_LOCALS), 0..10),
            b in prop::collection::vec(arb_claim(TWO_LOCALS), 0..10),
            mine_a in arb_mine(),
            mine_b in arb_mine(),
            gone in prop::option::of(prop::sample::select(&[1u64, 2][..])),
        ) {
            let t = Instant::now();
            let mut x = with_mine(LOCAL, &mine_a, t);
            let mut y = with_mine(200, &mine_b, t);
            x.merge(name(1), &update(&a)).unwrap();
            y.merge(name(2), &update(&b)).unwrap();
            if let Some(gone) = gone {
                x.peers_gone(&[name(gone)]);
            }
            for _ in 0..3 {
                exchange(&mut x, &mut y);
                exchange(&mut y, &mut x);
            }
            prop_assert_eq!(owners(&x), owners(&y));
            prop_assert_eq!(x.digest_hash(), y.digest_hash());
            prop_assert_eq!(x.digest(), y.digest());
            prop_assert_eq!(x.compare_digest(&y.digest(), 1 << 16).unwrap(), (vec![], false));
            prop_assert_eq!(y.compare_digest(&x.digest(), 1 << 16).unwrap(), (vec![], false));
            // Each replica's own MACs are never claimed for it unless its router said so.
            for m in 1u8..5 {
                if x.owner(&mac(m)) == Some(name(LOCAL)) {
                    prop_assert!(mine_a.contains(&m));
                }
                if x.owner(&mac(m)) == Some(name(200)) {
                    prop_assert!(mine_b.contains(&m));
                }
            }
        }

        /// Updates and digests come from the network: arbitrary bytes may fail, never panic.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let t = Instant::now();
            let mut a = replica(LOCAL, t);
            let _ = a.merge(name(1), &bytes);
            let _ = a.compare_digest(&bytes, 0);
            let _ = digest_owners(&bytes);
        }

        #[test]
        fn any_valid_claims_merge_without_panicking(
            claims in prop::collection::vec(
                (any::<[u8; 6]>(), any::<u64>(), 0u64..(1 << 48), any::<bool>()),
                0..16,
            ),
        ) {
            let t = Instant::now();
            let mut a = MacChannel::new(name(LOCAL), 4, t);
            let claims: Vec<(Mac, Claim)> = claims
                .into_iter()
                .map(|(mut m, version, owner, live)| {
                    m[0] &= 0xfe;
                    m[5] |= 1;
                    (m, Claim { version, owner: name(owner), live })
                })
                .collect();
            a.merge(name(1), &update(&claims)).unwrap();
            prop_assert!(a.len() <= 4);
            for (m, _) in &claims {
                let _ = a.claim_local(*m, t);
                let _ = a.withdraw_local(*m, t);
            }
            let _ = a.reassert_local(t);
            a.peers_gone(&[name(1)]);
            let _ = a.prune_tombstones(t, Duration::ZERO);
        }
    }

    #[test]
    fn a_pinned_mac_is_claimed_back_from_any_other_peer_and_counted() {
        let t = Instant::now();
        let (mut a, mut b, mut c) = (replica(1, t), replica(2, t), replica(3, t));
        let pinned = publish(&mut a, |ch| ch.pin_local(mac(1), t));
        for peer in [&mut b, &mut c] {
            peer.merge(name(1), &pinned).unwrap();
        }
        // b's router learned the MAC from a spoofing pod and claims it, one higher.
        let stolen = publish(&mut b, |ch| ch.claim_local(mac(1), t));
        assert_eq!(claims_of(&stolen), vec![(mac(1), claim(2, 2, true))]);
        c.merge(name(2), &stolen).unwrap();
        assert_eq!(c.owner(&mac(1)), Some(name(2)));
        // a answers with its own claim, higher still, and that is what it stores and spreads.
        let answer = a.merge(name(2), &stolen).unwrap().expect("a correction");
        assert_eq!(claims_of(&answer), vec![(mac(1), claim(3, 1, true))]);
        assert_eq!(a.conflicts(), 1);
        assert_eq!(a.owner(&mac(1)), Some(name(1)));
        for peer in [&mut b, &mut c] {
            peer.merge(name(1), &answer).unwrap();
            assert_eq!(peer.owner(&mac(1)), Some(name(1)));
        }
        // Expiry in the datapath never withdraws a pin; unpinning does.
        assert_eq!(a.withdraw_local(mac(1), t), None);
        assert!(a.is_pinned(&mac(1)));
        let gone = publish(&mut a, |ch| ch.unpin_local(mac(1), t));
        assert_eq!(claims_of(&gone), vec![(mac(1), claim(3, 1, false))]);
        assert!(!a.is_pinned(&mac(1)));
        // Once unpinned, another peer's claim is accepted as usual.
        let again = publish(&mut b, |ch| ch.claim_local(mac(1), t));
        assert_eq!(a.merge(name(2), &again).unwrap(), Some(again.clone()));
        assert_eq!(a.conflicts(), 1);
    }

    #[test]
    fn new_learned_macs_are_claimed_at_a_bounded_rate_and_pins_are_not() {
        let t = Instant::now();
        let mut a = replica(1, t);
        let mut claimed = 0;
        for n in 0..5_000u32 {
            let [_, _, x, y] = n.to_be_bytes();
            if a.claim_local([0x02, 0, 0, 1, x, y], t).is_some() {
                claimed += 1;
            }
        }
        assert_eq!(claimed, CLAIM_BURST);
        assert_eq!(a.rate_limited(), 5_000 - u64::from(CLAIM_BURST));
        // A pin is claimed whatever the budget.
        assert!(a.pin_local(mac(7), t).is_some());
        // Known MACs take no token; a second later the budget has grown by the rate.
        a.claim_local([0x02, 0, 0, 1, 0, 0], t);
        assert_eq!(a.rate_limited(), 5_000 - u64::from(CLAIM_BURST));
        let later = t + Duration::from_secs(1);
        let mut more = 0;
        for n in 10_000..11_000u32 {
            let [_, _, x, y] = n.to_be_bytes();
            if a.claim_local([0x02, 0, 0, 2, x, y], later).is_some() {
                more += 1;
            }
        }
        assert_eq!(more, CLAIM_RATE);
    }

    proptest! {
        /// Merging stays order-independent with pins: two replicas of the pinning peer that
        /// receive the same claims in different orders end equal.
        #[test]
        fn merging_with_pins_is_order_independent(
            claims in prop::collection::vec((0u8..4, 1u64..6, 1u64..4, any::<bool>()), 0..12),
            seed in any::<u64>(),
        ) {
            let t = Instant::now();
            let mut x = replica(1, t);
            let mut y = replica(1, t);
            for ch in [&mut x, &mut y] {
                let pinned = ch.pin_local(mac(0), t).unwrap();
                ch.merge(name(1), &pinned).unwrap();
            }
            let updates: Vec<Vec<u8>> = claims
                .iter()
                .map(|(m, v, o, live)| update(&[(mac(*m), claim(*v, *o + 1, *live))]))
                .collect();
            for u in &updates {
                x.merge(name(2), u).unwrap();
            }
            let mut shuffled = updates.clone();
            let n = shuffled.len();
            if n > 1 {
                shuffled.rotate_left((seed as usize) % n);
            }
            for u in shuffled.iter().rev() {
                y.merge(name(2), u).unwrap();
            }
            prop_assert_eq!(snapshot(&x), snapshot(&y));
            prop_assert_eq!(x.owner(&mac(0)), Some(name(1)));
        }
    }
}
