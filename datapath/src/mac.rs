//! The MAC table: which peer owns each Ethernet address.
//!
//! Entries are learned from source addresses — of frames captured from the local bridge
//! (owner [`MacOwner::Local`]) and of frames received from the mesh (owner
//! [`MacOwner::Remote`] with the frame's origin peer) — refreshed by traffic, and expire after
//! [`DEFAULT_EXPIRY`] unseen. An expired entry is invisible at once, even before
//! [`MacTable::expire`] removes it, so forwarding never depends on how often the caller sweeps.
//! Time is always passed in; the table never reads a clock.
//!
//! # Size bound
//!
//! Source MACs come from traffic, and a peer (or a pod) spoofing random source addresses would
//! otherwise grow the table without limit. The table holds at most `max_entries` entries
//! ([`DEFAULT_MAX_ENTRIES`] unless built with [`MacTable::with_max_entries`]); learning a new
//! address into a full table makes room by this policy:
//! 1. evict the least recently seen *remote* entry (expired ones first, since they are the
//!    least recently seen): remote entries are relearned from the next frame their pod sends,
//!    and meanwhile frames to them are flooded, not lost;
//! 2. only when no remote entry is left, and the new address is local, evict the least recently
//!    seen local entry;
//! 3. a new *remote* address is never learned at the expense of a local one: it is refused
//!    (counted in [`MacTable::refusals`]), so a peer cannot push this host's own pods out.
//!
//! "Recently seen" is the order of [`MacTable::learn`] calls, which is the order of `now` when
//! the caller's clock runs forward. Evictions are counted ([`MacTable::evictions`]). An evicted
//! local entry is not reported to the caller, unlike an expired one; with 65536 local MACs a
//! host has bigger problems than a stale gossip entry.
//!
//! # Attachments are pinned; other local addresses are capped
//!
//! A pod attached by the CNI plugin has a MAC the router chose and knows. The router **pins**
//! it ([`MacTable::pin`]): a pinned entry is local, never expires, is never evicted, and data
//! cannot take it over — a frame from the mesh carrying a pinned MAC as its source (another
//! host's pod spoofing it) is not learned and is counted ([`MacTable::conflicts`]).
//!
//! Every other local address is learned from data, and the TAP cannot tell which bridge port a
//! frame came in on (the bridge hands the TAP frames, not ports). So instead of a per-port
//! limit the table caps the local addresses that are *not* attachments
//! ([`MacTable::with_limits`], [`DEFAULT_MAX_UNATTACHED_LOCAL`]): beyond the cap a new local
//! address (or one moving here) is not learned, and so not gossiped, and is counted
//! ([`MacTable::local_refusals`]). Frames to such an address are flooded, not lost. Attached
//! pods are guarded at their bridge port (the router's nftables rules), so a pod flooding
//! random source MACs is stopped there; the cap bounds what other bridge ports can do.
//!
//! Finding the least recently seen entry costs amortised O(1): each learn appends its MAC to a
//! recency queue of its owner class, or renews the MAC's record in place when that record is
//! the queue's newest (a pod refreshed by frame after frame); records made stale by a later
//! learn, a removal or a move are skipped when met at the front and swept out when they
//! outnumber the live ones. A flood of new addresses therefore costs constant time per frame,
//! not a scan of the table.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::PeerId;

/// A 48-bit Ethernet address.
pub type Mac = [u8; 6];

/// How long an entry lives without traffic from its address.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Entries a table holds unless built with [`MacTable::with_max_entries`]: far more pods than
/// a mesh has, and a few MiB at most.
pub const DEFAULT_MAX_ENTRIES: usize = 65536;

/// Local addresses that are not CNI attachments a table holds unless built with
/// [`MacTable::with_limits`]: the bridge's own, pods attached by other means (an older
/// plugin, hand-made veths), far fewer than a MAC flood.
pub const DEFAULT_MAX_UNATTACHED_LOCAL: usize = 256;

/// Where the owner of a MAC address is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacOwner {
    /// A pod on this host's bridge.
    Local,
    /// A pod behind the given peer.
    Remote(PeerId),
}

/// What [`MacTable::learn`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The address was unknown (or its entry had expired).
    New,
    /// The address was known with the same owner; its age is reset.
    Refreshed,
    /// The address was known with another owner (a pod migrated, or a MAC was reused).
    Moved { from: MacOwner },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: MacOwner,
    last_seen: Instant,
    /// When this entry was last learned, in [`MacTable::learn`] calls; matches exactly one
    /// live record in the recency queue of the owner's class (none for a pinned entry).
    touch: u64,
    /// A CNI attachment's MAC ([`MacTable::pin`]): local, never expires, never evicted, never
    /// taken over by data.
    pinned: bool,
}

impl Entry {
    /// Counts toward the cap on local addresses that are not attachments.
    fn is_unattached_local(&self) -> bool {
        self.owner == MacOwner::Local && !self.pinned
    }

    /// Saturating, so a `now` older than the entry (out-of-order callers) means age zero.
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    fn is_expired(&self, now: Instant, expiry: Duration) -> bool {
        !self.pinned && self.age(now) >= expiry
    }
}

/// MAC address → owner, with expiry and a size bound.
#[derive(Debug, Clone)]
pub struct MacTable {
    entries: HashMap<Mac, Entry>,
    expiry: Duration,
    moves: u64,
    max_entries: usize,
    /// Recency of remote entries, least recent at the front: (mac, touch) per learn.
    remote_order: VecDeque<(Mac, u64)>,
    /// Recency of local entries, likewise.
    local_order: VecDeque<(Mac, u64)>,
    next_touch: u64,
    evictions: u64,
    refusals: u64,
    /// Cap on local entries that are not pinned, and how many there are (expired ones
    /// included until swept).
    max_unattached_local: usize,
    unattached_local: usize,
    local_refusals: u64,
    conflicts: u64,
}

impl Default for MacTable {
    fn default() -> Self {
        Self::new(DEFAULT_EXPIRY)
    }
}

impl MacTable {
    /// An empty table whose entries expire after `expiry` without traffic, holding at most
    /// [`DEFAULT_MAX_ENTRIES`].
    pub fn new(expiry: Duration) -> Self {
        Self::with_max_entries(expiry, DEFAULT_MAX_ENTRIES)
    }

    /// An empty table holding at most `max_entries` (at least 1) entries; see the module
    /// documentation for what gives way when it is full.
    pub fn with_max_entries(expiry: Duration, max_entries: usize) -> Self {
        Self::with_limits(expiry, max_entries, DEFAULT_MAX_UNATTACHED_LOCAL)
    }

    /// An empty table holding at most `max_entries` (at least 1) entries, of which at most
    /// `max_unattached_local` are local and not pinned (see the module documentation).
    pub fn with_limits(expiry: Duration, max_entries: usize, max_unattached_local: usize) -> Self {
        Self {
            entries: HashMap::new(),
            expiry,
            moves: 0,
            max_entries: max_entries.max(1),
            remote_order: VecDeque::new(),
            local_order: VecDeque::new(),
            next_touch: 0,
            evictions: 0,
            refusals: 0,
            max_unattached_local,
            unattached_local: 0,
            local_refusals: 0,
            conflicts: 0,
        }
    }

    /// A frame with source `mac` was captured from the local bridge (`Local`: a local pod) or
    /// arrived from the mesh with origin peer `p` (`Remote(p)`). Multicast/broadcast source
    /// MACs (bit 0 of byte 0) and all-zero are ignored (return None): no single host owns them.
    /// A new remote MAC is also not learned (None) when the table is full of local entries.
    pub fn learn(&mut self, mac: Mac, owner: MacOwner, now: Instant) -> Option<Learned> {
        if is_multicast(&mac) || mac == [0; 6] {
            return None;
        }
        let touch = self.next_touch;
        let fresh = Entry {
            owner,
            last_seen: now,
            touch,
            pinned: false,
        };
        let existing = self.entries.get(&mac).copied();
        if let Some(entry) = existing.filter(|entry| entry.pinned) {
            // An attachment's MAC: its own frames refresh nothing that matters (it never
            // expires); anyone else's are a conflict, never learned.
            if owner == MacOwner::Local {
                return Some(Learned::Refreshed);
            }
            debug_assert!(entry.owner == MacOwner::Local);
            self.conflicts = self.conflicts.saturating_add(1);
            return None;
        }
        // A new local address, or one moving here, needs room under the unattached cap.
        let becomes_local = owner == MacOwner::Local
            && existing.is_none_or(|entry| {
                entry.owner != MacOwner::Local || entry.is_expired(now, self.expiry)
            });
        let already_counted = existing.is_some_and(|entry| entry.is_unattached_local());
        if becomes_local && !already_counted && self.unattached_local >= self.max_unattached_local {
            self.local_refusals = self.local_refusals.saturating_add(1);
            return None;
        }
        // The entry's live recency record, which `record` may reuse.
        let previous = self.entries.get(&mac).map(|entry| entry.touch);
        let learned = match self.entries.get_mut(&mac) {
            Some(entry) if entry.is_expired(now, self.expiry) => {
                // Invisible already, so relearning it is new, not a move.
                *entry = fresh;
                Learned::New
            }
            Some(entry) if entry.owner == owner => {
                // Frames may be handed over slightly out of order; never move the clock back.
                entry.last_seen = entry.last_seen.max(now);
                entry.touch = touch;
                Learned::Refreshed
            }
            Some(entry) => {
                let from = entry.owner;
                *entry = fresh;
                self.moves = self.moves.saturating_add(1);
                Learned::Moved { from }
            }
            None => {
                if self.entries.len() >= self.max_entries && !self.make_room_for(owner) {
                    self.refusals = self.refusals.saturating_add(1);
                    return None;
                }
                self.entries.insert(mac, fresh);
                Learned::New
            }
        };
        let now_counted = fresh.is_unattached_local();
        match (already_counted, now_counted) {
            (false, true) => self.unattached_local += 1,
            (true, false) => self.unattached_local = self.unattached_local.saturating_sub(1),
            _ => {}
        }
        // 2^64 learns never happen; wrapping keeps even that from panicking.
        self.next_touch = touch.wrapping_add(1);
        self.record(mac, owner, touch, previous);
        Some(learned)
    }

    /// Appends a recency record, sweeping stale records out of the queue once they outnumber
    /// the entries (so the queue stays O(entries) and the sweep amortises to O(1) per learn).
    ///
    /// `previous` is the touch the MAC's entry had before this learn, if it had one: its record
    /// was then live. When that record is the newest of the queue (a MAC refreshed by frame
    /// after frame with nothing learned in between), it is moved to `touch` in place, since
    /// pushing a new record behind it would rank the MAC the same while leaving a stale record
    /// to sweep.
    fn record(&mut self, mac: Mac, owner: MacOwner, touch: u64, previous: Option<u64>) {
        let limit = self.entries.len().saturating_mul(2).saturating_add(32);
        let entries = &self.entries;
        let queue = match owner {
            MacOwner::Local => &mut self.local_order,
            MacOwner::Remote(_) => &mut self.remote_order,
        };
        if let Some(back) = queue.back_mut()
            && Some(*back) == previous.map(|previous| (mac, previous))
        {
            back.1 = touch;
            return;
        }
        queue.push_back((mac, touch));
        if queue.len() > limit {
            queue.retain(|(mac, touch)| is_live_record(entries, mac, *touch));
        }
    }

    /// Evicts one entry so that a new one of `owner` fits; false if policy forbids it (the
    /// table holds only local entries and the newcomer is remote).
    fn make_room_for(&mut self, owner: MacOwner) -> bool {
        if let Some(mac) = pop_least_recent(&mut self.remote_order, &self.entries) {
            self.remove(&mac);
        } else if owner == MacOwner::Local
            && let Some(mac) = pop_least_recent(&mut self.local_order, &self.entries)
        {
            self.remove(&mac);
        } else {
            return false;
        }
        self.evictions = self.evictions.saturating_add(1);
        true
    }

    /// Removes one entry, keeping the unattached count.
    fn remove(&mut self, mac: &Mac) -> Option<Entry> {
        let entry = self.entries.remove(mac)?;
        if entry.is_unattached_local() {
            self.unattached_local = self.unattached_local.saturating_sub(1);
        }
        Some(entry)
    }

    /// `mac` belongs to a pod the CNI plugin attached here: it is local from now on, whatever
    /// data or gossip say, until [`MacTable::unpin`]. Pins take room like any entry (evicting
    /// as a local newcomer would) but are never refused: there is one per attachment.
    /// Group and zero addresses cannot be pinned (false).
    pub fn pin(&mut self, mac: Mac, now: Instant) -> bool {
        if is_multicast(&mac) || mac == [0; 6] {
            return false;
        }
        let touch = self.next_touch;
        self.next_touch = touch.wrapping_add(1);
        let pinned = Entry {
            owner: MacOwner::Local,
            last_seen: now,
            touch,
            pinned: true,
        };
        if self.remove(&mac).is_none() && self.entries.len() >= self.max_entries {
            self.make_room_for(MacOwner::Local);
        }
        self.entries.insert(mac, pinned);
        true
    }

    /// The attachment of `mac` is gone: its entry goes (whatever it was). Returns whether the
    /// entry was pinned.
    pub fn unpin(&mut self, mac: &Mac) -> bool {
        match self.entries.get(mac) {
            Some(entry) if entry.pinned => {
                self.entries.remove(mac);
                true
            }
            _ => false,
        }
    }

    /// Whether `mac` is pinned.
    pub fn is_pinned(&self, mac: &Mac) -> bool {
        self.entries.get(mac).is_some_and(|entry| entry.pinned)
    }

    /// Pinned entries.
    pub fn pinned(&self) -> usize {
        self.entries.values().filter(|entry| entry.pinned).count()
    }

    /// The owner of `mac`, unless unknown or expired.
    pub fn lookup(&self, mac: &Mac, now: Instant) -> Option<MacOwner> {
        self.entries
            .get(mac)
            .filter(|entry| !entry.is_expired(now, self.expiry))
            .map(|entry| entry.owner)
    }

    /// Removes expired entries; returns them, sorted by MAC (so the router can withdraw local
    /// ones from gossip).
    pub fn expire(&mut self, now: Instant) -> Vec<(Mac, MacOwner)> {
        let mut expired = Vec::new();
        let expiry = self.expiry;
        let mut unattached_gone = 0;
        self.entries.retain(|mac, entry| {
            let alive = !entry.is_expired(now, expiry);
            if !alive {
                expired.push((*mac, entry.owner));
                unattached_gone += usize::from(entry.is_unattached_local());
            }
            alive
        });
        self.unattached_local = self.unattached_local.saturating_sub(unattached_gone);
        expired.sort_unstable_by_key(|(mac, _)| *mac);
        expired
    }

    /// A peer left the mesh: forget its MACs. Returns how many.
    pub fn forget_peer(&mut self, peer: PeerId) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| entry.owner != MacOwner::Remote(peer));
        before - self.entries.len()
    }

    /// Stored entries, including expired ones that [`MacTable::expire`] has not removed yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live entries with their age, sorted by MAC, for status.
    pub fn entries(&self, now: Instant) -> Vec<(Mac, MacOwner, Duration)> {
        let mut live: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, entry)| !entry.is_expired(now, self.expiry))
            .map(|(mac, entry)| (*mac, entry.owner, entry.age(now)))
            .collect();
        live.sort_unstable_by_key(|(mac, _, _)| *mac);
        live
    }

    /// How many times a MAC moved owner.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// The most entries this table holds.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// How many entries were evicted to make room for new addresses.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// How many new remote addresses were not learned because only local entries were left to
    /// evict.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// The most local entries that are not pinned.
    pub fn max_unattached_local(&self) -> usize {
        self.max_unattached_local
    }

    /// Local entries that are not pinned (expired ones included until swept).
    pub fn unattached_local(&self) -> usize {
        self.unattached_local
    }

    /// How many new local addresses were not learned because the unattached cap was reached.
    pub fn local_refusals(&self) -> u64 {
        self.local_refusals
    }

    /// How many frames from the mesh carried a pinned (attached here) MAC as their source.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }
}

/// A queue record is live if it is its MAC's latest learn (later learns, moves and removals
/// all make it stale).
fn is_live_record(entries: &HashMap<Mac, Entry>, mac: &Mac, touch: u64) -> bool {
    entries.get(mac).is_some_and(|entry| entry.touch == touch)
}

/// Pops records until a live one, whose MAC is then the least recently seen of its class.
fn pop_least_recent(
    queue: &mut VecDeque<(Mac, u64)>,
    entries: &HashMap<Mac, Entry>,
) -> Option<Mac> {
    while let Some((mac, touch)) = queue.pop_front() {
        if is_live_record(entries, &mac, touch) {
            return Some(mac);
        }
    }
    None
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Group address (multicast or broadcast): the I/G bit, bit 0 of the first byte.
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 0x01 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const POD_A: Mac = [0x02, 0, 0, 0, 0, 0xa];
    const POD_B: Mac = [0x02, 0, 0, 0, 0, 0xb];
    const PEER_1: PeerId = [0x02, 0, 0, 0, 1, 1];
    const PEER_2: PeerId = [0x02, 0, 0, 0, 2, 2];
    const EXPIRY: Duration = Duration::from_secs(60);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn learns_local_and_remote_owners() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        assert!(table.is_empty());
        assert_eq!(table.learn(POD_A, MacOwner::Local, t0), Some(Learned::New));
        assert_eq!(
            table.learn(POD_B, MacOwner::Remote(PEER_1), t0),
            Some(Learned::New)
        );
        assert_eq!(table.lookup(&POD_A, t0), Some(MacOwner::Local));
        assert_eq!(table.lookup(&POD_B, t0), Some(MacOwner::Remote(PEER_1)));
        assert_eq!(table.lookup(&[0x02, 0, 0, 0, 0, 0xc], t0), None);
        assert_eq!(table.len(), 2);
        assert_eq!(table.moves(), 0);
    }

    #[test]
    fn refreshing_resets_the_age_and_postpones_expiry() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        table.learn(POD_A, MacOwner::Local, t0);
        assert_eq!(
            table.entries(t0 + secs(40)),
            vec![(POD_A, MacOwner::Local, secs(40))]
        );
        assert_eq!(
            table.learn(POD_A, MacOwner::Local, t0 + secs(50)),
            Some(Learned::Refreshed)
        );
        assert_eq!(
            table.entries(t0 + secs(55)),
            vec![(POD_A, MacOwner::Local, secs(5))]
        );
        // Past the first sighting's expiry, alive thanks to the refresh.
        assert_eq!(table.lookup(&POD_A, t0 + secs(100)), Some(MacOwner::Local));
        assert!(table.expire(t0 + secs(100)).is_empty());
        assert_eq!(table.lookup(&POD_A, t0 + secs(110)), None);
    }

    #[test]
    fn moves_between_peers_and_to_local_are_reported_and_counted() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0);
        assert_eq!(
            table.learn(POD_A, MacOwner::Remote(PEER_2), t0 + secs(1)),
            Some(Learned::Moved {
                from: MacOwner::Remote(PEER_1)
            })
        );
        assert_eq!(
            table.learn(POD_A, MacOwner::Local, t0 + secs(2)),
            Some(Learned::Moved {
                from: MacOwner::Remote(PEER_2)
            })
        );
        assert_eq!(table.lookup(&POD_A, t0 + secs(2)), Some(MacOwner::Local));
        assert_eq!(table.moves(), 2);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn entries_expire_after_the_configured_time() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        table.learn(POD_A, MacOwner::Local, t0);
        table.learn(POD_B, MacOwner::Remote(PEER_1), t0 + secs(30));
        let just_before = t0 + EXPIRY - Duration::from_millis(1);
        assert_eq!(table.lookup(&POD_A, just_before), Some(MacOwner::Local));
        assert!(table.expire(just_before).is_empty());

        let at_expiry = t0 + EXPIRY;
        assert_eq!(table.lookup(&POD_A, at_expiry), None);
        assert_eq!(table.entries(at_expiry).len(), 1);
        assert_eq!(table.len(), 2, "still stored until swept");
        assert_eq!(table.expire(at_expiry), vec![(POD_A, MacOwner::Local)]);
        assert_eq!(table.len(), 1);

        assert_eq!(
            table.expire(t0 + secs(1000)),
            vec![(POD_B, MacOwner::Remote(PEER_1))]
        );
        assert!(table.is_empty());
    }

    #[test]
    fn relearning_an_expired_entry_is_new_not_a_move() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0);
        assert_eq!(
            table.learn(POD_A, MacOwner::Local, t0 + EXPIRY),
            Some(Learned::New)
        );
        assert_eq!(table.moves(), 0);
        assert_eq!(table.lookup(&POD_A, t0 + EXPIRY), Some(MacOwner::Local));
    }

    #[test]
    fn forgetting_a_peer_drops_only_its_macs() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0);
        table.learn(POD_B, MacOwner::Remote(PEER_1), t0);
        table.learn([0x02, 0, 0, 0, 0, 0xc], MacOwner::Remote(PEER_2), t0);
        table.learn([0x02, 0, 0, 0, 0, 0xd], MacOwner::Local, t0);
        assert_eq!(table.forget_peer(PEER_1), 2);
        assert_eq!(table.forget_peer(PEER_1), 0);
        assert_eq!(table.lookup(&POD_A, t0), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn group_and_zero_sources_are_ignored() {
        let t0 = Instant::now();
        let mut table = MacTable::new(EXPIRY);
        for mac in [
            [0xff; 6],
            [0x01, 0, 0x5e, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
            [0; 6],
        ] {
            assert_eq!(table.learn(mac, MacOwner::Local, t0), None);
            assert_eq!(table.lookup(&mac, t0), None);
        }
        assert!(table.is_empty());
    }

    #[test]
    fn time_running_backwards_neither_panics_nor_rewinds_an_entry() {
        let t0 = Instant::now() + secs(100);
        let mut table = MacTable::new(EXPIRY);
        table.learn(POD_A, MacOwner::Local, t0);
        assert_eq!(
            table.learn(POD_A, MacOwner::Local, t0 - secs(50)),
            Some(Learned::Refreshed)
        );
        assert_eq!(table.entries(t0 - secs(90))[0].2, Duration::ZERO);
        assert_eq!(table.lookup(&POD_A, t0 + secs(59)), Some(MacOwner::Local));
        assert!(table.expire(t0 - secs(90)).is_empty());
    }

    #[test]
    fn formats_and_classifies_macs() {
        assert_eq!(
            format_mac(&[0xaa, 0xbb, 0x0c, 0x00, 0xee, 0xff]),
            "aa:bb:0c:00:ee:ff"
        );
        assert!(is_multicast(&[0xff; 6]));
        assert!(is_multicast(&[0x01, 0, 0x5e, 0, 0, 1]));
        assert!(!is_multicast(&POD_A));
        assert_eq!(MacTable::default().expiry, DEFAULT_EXPIRY);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Learn {
            mac: usize,
            owner: MacOwner,
            after: Duration,
        },
        Expire {
            after: Duration,
        },
        Forget(PeerId),
    }

    /// A few addresses so that operations collide, including ones that must be ignored.
    const MACS: [Mac; 7] = [
        POD_A,
        POD_B,
        [0x02, 0, 0, 0, 0, 0xc],
        [0x02, 0, 0, 0, 0, 0xd],
        [0x02, 0, 0, 0, 0, 0xe],
        [0xff; 6],
        [0; 6],
    ];
    const PEERS: [PeerId; 3] = [PEER_1, PEER_2, [0x02, 0, 0, 0, 3, 3]];

    fn arb_owner() -> impl Strategy<Value = MacOwner> {
        prop_oneof![
            Just(MacOwner::Local),
            prop::sample::select(&PEERS[..]).prop_map(MacOwner::Remote),
        ]
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let after = (0u64..40).prop_map(Duration::from_secs);
        prop_oneof![
            4 => (0..MACS.len(), arb_owner(), after.clone())
                .prop_map(|(mac, owner, after)| Op::Learn { mac, owner, after }),
            1 => after.prop_map(|after| Op::Expire { after }),
            1 => prop::sample::select(&PEERS[..]).prop_map(Op::Forget),
        ]
    }

    /// Reference: every learned entry kept until swept, forgotten or evicted, visibility
    /// computed from its age, recency from a learn counter, eviction by scanning.
    struct Model {
        entries: BTreeMap<Mac, (MacOwner, Instant, u64)>,
        max_entries: usize,
        learns: u64,
        moves: u64,
        evictions: u64,
        refusals: u64,
    }

    impl Model {
        fn new(max_entries: usize) -> Self {
            Self {
                entries: BTreeMap::new(),
                max_entries,
                learns: 0,
                moves: 0,
                evictions: 0,
                refusals: 0,
            }
        }

        fn live(&self, mac: &Mac, now: Instant) -> Option<MacOwner> {
            self.entries
                .get(mac)
                .filter(|(_, seen, _)| now.duration_since(*seen) < EXPIRY)
                .map(|(owner, _, _)| *owner)
        }

        fn least_recent(&self, local: bool) -> Option<Mac> {
            self.entries
                .iter()
                .filter(|(_, (owner, _, _))| (*owner == MacOwner::Local) == local)
                .min_by_key(|(_, (_, _, learn))| *learn)
                .map(|(mac, _)| *mac)
        }

        fn learn(&mut self, mac: Mac, owner: MacOwner, now: Instant) -> Option<Learned> {
            if is_multicast(&mac) || mac == [0; 6] {
                return None;
            }
            let learned = match self.live(&mac, now) {
                None if self.entries.contains_key(&mac) => Learned::New,
                None => {
                    if self.entries.len() >= self.max_entries {
                        let victim = self.least_recent(false).or_else(|| {
                            (owner == MacOwner::Local)
                                .then(|| self.least_recent(true))
                                .flatten()
                        });
                        let Some(victim) = victim else {
                            self.refusals += 1;
                            return None;
                        };
                        self.entries.remove(&victim);
                        self.evictions += 1;
                    }
                    Learned::New
                }
                Some(old) if old == owner => Learned::Refreshed,
                Some(from) => {
                    self.moves += 1;
                    Learned::Moved { from }
                }
            };
            self.learns += 1;
            self.entries.insert(mac, (owner, now, self.learns));
            Some(learned)
        }
    }

    fn check_against_model(ops: Vec<Op>, max_entries: usize) -> Result<(), TestCaseError> {
        let mut now = Instant::now();
        let mut table = MacTable::with_max_entries(EXPIRY, max_entries);
        let mut model = Model::new(max_entries);
        for op in ops {
            match op {
                Op::Learn { mac, owner, after } => {
                    now += after;
                    let mac = MACS[mac];
                    prop_assert_eq!(table.learn(mac, owner, now), model.learn(mac, owner, now));
                }
                Op::Expire { after } => {
                    now += after;
                    let expected: Vec<_> = model
                        .entries
                        .iter()
                        .filter(|(mac, _)| model.live(mac, now).is_none())
                        .map(|(mac, (owner, _, _))| (*mac, *owner))
                        .collect();
                    for (mac, _) in &expected {
                        model.entries.remove(mac);
                    }
                    prop_assert_eq!(table.expire(now), expected);
                }
                Op::Forget(peer) => {
                    let before = model.entries.len();
                    model
                        .entries
                        .retain(|_, (owner, _, _)| *owner != MacOwner::Remote(peer));
                    prop_assert_eq!(table.forget_peer(peer), before - model.entries.len());
                }
            }
            for mac in &MACS {
                prop_assert_eq!(table.lookup(mac, now), model.live(mac, now));
            }
            prop_assert_eq!(table.moves(), model.moves);
            prop_assert_eq!(table.evictions(), model.evictions);
            prop_assert_eq!(table.refusals(), model.refusals);
            prop_assert_eq!(table.len(), model.entries.len());
            prop_assert!(table.len() <= max_entries);
            let live: Vec<_> = MACS
                .iter()
                .filter_map(|mac| model.live(mac, now).map(|owner| (*mac, owner)))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let listed: Vec<_> = table
                .entries(now)
                .into_iter()
                .map(|(mac, owner, _)| (mac, owner))
                .collect();
            prop_assert_eq!(listed, live);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_a_reference_model(ops in prop::collection::vec(arb_op(), 0..60)) {
            check_against_model(ops, DEFAULT_MAX_ENTRIES)?;
        }

        /// With room for fewer entries than addresses in play, evictions and refusals happen
        /// constantly; the table must agree with the model's policy and never exceed the cap.
        #[test]
        fn a_small_table_evicts_as_the_model_does_and_never_exceeds_its_cap(
            ops in prop::collection::vec(arb_op(), 0..80),
            max_entries in 1usize..4,
        ) {
            check_against_model(ops, max_entries)?;
        }

        /// Many distinct spoofed addresses against a small cap: the size bound holds and the
        /// recency queues stay proportional to the table.
        #[test]
        fn a_flood_of_new_addresses_stays_within_the_cap(
            macs in prop::collection::vec((any::<[u8; 5]>(), any::<bool>()), 0..400),
            max_entries in 1usize..16,
        ) {
            let now = Instant::now();
            let mut table = MacTable::with_max_entries(EXPIRY, max_entries);
            for (tail, local) in macs {
                let mac = [0x02, tail[0], tail[1], tail[2], tail[3], tail[4]];
                let owner = if local { MacOwner::Local } else { MacOwner::Remote(PEER_1) };
                table.learn(mac, owner, now);
                prop_assert!(table.len() <= max_entries);
                prop_assert!(table.remote_order.len() + table.local_order.len() <= 4 * max_entries + 66);
            }
        }
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_seen_remote_entry() {
        let t0 = Instant::now();
        let mut table = MacTable::with_max_entries(EXPIRY, 3);
        let pod_c = [0x02, 0, 0, 0, 0, 0xc];
        let pod_d = [0x02, 0, 0, 0, 0, 0xd];
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0);
        table.learn(POD_B, MacOwner::Remote(PEER_2), t0 + secs(1));
        table.learn(pod_c, MacOwner::Local, t0 + secs(2));
        // A was seen first, but is refreshed: B becomes the least recently seen remote.
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0 + secs(3));
        assert_eq!(
            table.learn(pod_d, MacOwner::Remote(PEER_2), t0 + secs(4)),
            Some(Learned::New)
        );
        assert_eq!(table.len(), 3);
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.lookup(&POD_B, t0 + secs(4)), None);
        assert_eq!(
            table.lookup(&POD_A, t0 + secs(4)),
            Some(MacOwner::Remote(PEER_1))
        );
        assert_eq!(table.lookup(&pod_c, t0 + secs(4)), Some(MacOwner::Local));
    }

    #[test]
    fn local_entries_give_way_only_to_local_ones() {
        let t0 = Instant::now();
        let mut table = MacTable::with_max_entries(EXPIRY, 2);
        table.learn(POD_A, MacOwner::Local, t0);
        table.learn(POD_B, MacOwner::Local, t0 + secs(1));
        let pod_c = [0x02, 0, 0, 0, 0, 0xc];
        // A remote newcomer does not push a local pod out.
        assert_eq!(
            table.learn(pod_c, MacOwner::Remote(PEER_1), t0 + secs(2)),
            None
        );
        assert_eq!(table.refusals(), 1);
        assert_eq!(table.evictions(), 0);
        // A local newcomer takes the place of the least recently seen local entry.
        assert_eq!(
            table.learn(pod_c, MacOwner::Local, t0 + secs(3)),
            Some(Learned::New)
        );
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.lookup(&POD_A, t0 + secs(3)), None);
        assert_eq!(table.lookup(&POD_B, t0 + secs(3)), Some(MacOwner::Local));
        // Refreshing and moving known addresses never needs room.
        assert_eq!(
            table.learn(POD_B, MacOwner::Remote(PEER_1), t0 + secs(4)),
            Some(Learned::Moved {
                from: MacOwner::Local
            })
        );
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_moved_entry_is_ranked_in_its_new_class() {
        let t0 = Instant::now();
        let mut table = MacTable::with_max_entries(EXPIRY, 2);
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0);
        table.learn(POD_B, MacOwner::Local, t0 + secs(1));
        // A becomes local: no remote entry is left to evict for a remote newcomer.
        table.learn(POD_A, MacOwner::Local, t0 + secs(2));
        let pod_c = [0x02, 0, 0, 0, 0, 0xc];
        assert_eq!(
            table.learn(pod_c, MacOwner::Remote(PEER_2), t0 + secs(3)),
            None
        );
        assert_eq!(table.lookup(&POD_A, t0 + secs(3)), Some(MacOwner::Local));
        assert_eq!(table.lookup(&POD_B, t0 + secs(3)), Some(MacOwner::Local));
    }

    #[test]
    fn the_default_cap_and_a_zero_cap() {
        assert_eq!(MacTable::default().max_entries(), DEFAULT_MAX_ENTRIES);
        assert_eq!(MacTable::new(EXPIRY).max_entries(), DEFAULT_MAX_ENTRIES);
        let mut table = MacTable::with_max_entries(EXPIRY, 0);
        assert_eq!(table.max_entries(), 1);
        let t0 = Instant::now();
        table.learn(POD_A, MacOwner::Remote(PEER_1), t0);
        table.learn(POD_B, MacOwner::Remote(PEER_1), t0);
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(&POD_B, t0), Some(MacOwner::Remote(PEER_1)));
    }

    #[test]
    fn a_pinned_mac_is_never_taken_over_by_data_expiry_or_eviction() {
        let t0 = Instant::now();
        let mut table = MacTable::with_max_entries(EXPIRY, 2);
        assert!(table.pin(POD_A, t0));
        assert!(table.is_pinned(&POD_A));
        // Another host's pod sending with the attached MAC: not learned, counted.
        assert_eq!(table.learn(POD_A, MacOwner::Remote(PEER_1), t0), None);
        assert_eq!(table.conflicts(), 1);
        assert_eq!(table.lookup(&POD_A, t0), Some(MacOwner::Local));
        // Its own frames are fine; they change nothing.
        assert_eq!(
            table.learn(POD_A, MacOwner::Local, t0),
            Some(Learned::Refreshed)
        );
        // Never expires.
        let later = t0 + EXPIRY * 10;
        assert!(table.expire(later).is_empty());
        assert_eq!(table.lookup(&POD_A, later), Some(MacOwner::Local));
        // Never evicted: a full table of a pin and a local entry makes room for a local
        // newcomer by evicting the unpinned one.
        table.learn(POD_B, MacOwner::Local, later);
        let pod_c = [0x02, 0, 0, 0, 0, 0xc];
        assert_eq!(
            table.learn(pod_c, MacOwner::Local, later),
            Some(Learned::New)
        );
        assert_eq!(table.lookup(&POD_A, later), Some(MacOwner::Local));
        assert_eq!(table.lookup(&POD_B, later), None);
        assert_eq!(table.pinned(), 1);
        // Unpinning removes it.
        assert!(table.unpin(&POD_A));
        assert!(!table.unpin(&POD_A));
        assert_eq!(table.lookup(&POD_A, later), None);
        assert!(!table.pin([0xff; 6], t0));
    }

    #[test]
    fn pinning_takes_over_a_learned_entry_and_uncounts_it() {
        let t0 = Instant::now();
        let mut table = MacTable::with_limits(EXPIRY, 16, 1);
        table.learn(POD_A, MacOwner::Local, t0);
        assert_eq!(table.unattached_local(), 1);
        table.pin(POD_A, t0);
        assert_eq!(table.unattached_local(), 0);
        // Room again under the cap for an unattached one.
        assert_eq!(table.learn(POD_B, MacOwner::Local, t0), Some(Learned::New));
        // A remote entry pinned here (the attachment came after gossip said otherwise).
        let pod_c = [0x02, 0, 0, 0, 0, 0xc];
        table.learn(pod_c, MacOwner::Remote(PEER_1), t0);
        table.pin(pod_c, t0);
        assert_eq!(table.lookup(&pod_c, t0), Some(MacOwner::Local));
        assert_eq!(table.unattached_local(), 1);
    }

    #[test]
    fn unattached_local_macs_are_capped_and_the_cap_frees_on_expiry() {
        let t0 = Instant::now();
        let mut table = MacTable::with_limits(EXPIRY, 1000, 3);
        for n in 1..=3 {
            assert_eq!(
                table.learn([0x02, 0, 0, 0, 0, n], MacOwner::Local, t0),
                Some(Learned::New)
            );
        }
        // A flood of new source addresses: none learned, each counted.
        for n in 4..=100 {
            assert_eq!(
                table.learn([0x02, 0, 0, 0, 0, n], MacOwner::Local, t0),
                None
            );
        }
        assert_eq!(table.local_refusals(), 97);
        assert_eq!(table.unattached_local(), 3);
        // A remote MAC moving here counts as new here: refused too.
        table.learn(POD_B, MacOwner::Remote(PEER_1), t0);
        assert_eq!(table.learn(POD_B, MacOwner::Local, t0), None);
        assert_eq!(table.lookup(&POD_B, t0), Some(MacOwner::Remote(PEER_1)));
        // Known ones are still refreshed; pins are never refused.
        assert_eq!(
            table.learn([0x02, 0, 0, 0, 0, 1], MacOwner::Local, t0 + secs(30)),
            Some(Learned::Refreshed)
        );
        assert!(table.pin(POD_A, t0));
        // A local entry moving away frees its place.
        table.learn(
            [0x02, 0, 0, 0, 0, 2],
            MacOwner::Remote(PEER_2),
            t0 + secs(30),
        );
        assert_eq!(table.unattached_local(), 2);
        assert_eq!(
            table.learn([0x02, 0, 0, 0, 0, 50], MacOwner::Local, t0 + secs(30)),
            Some(Learned::New)
        );
        // Expired entries free theirs once swept.
        assert_eq!(
            table.expire(t0 + EXPIRY).len(),
            2,
            "the third local one and the remote one"
        );
        assert_eq!(table.unattached_local(), 2);
        table.expire(t0 + secs(30) + EXPIRY);
        assert_eq!(table.unattached_local(), 0);
        assert_eq!(
            table.lookup(&POD_A, t0 + secs(30) + EXPIRY),
            Some(MacOwner::Local)
        );
    }

    proptest! {
        /// Whatever mix of learning, pinning, unpinning and expiry: the unattached count is
        /// exactly the local unpinned entries, never above the cap, and pins are never lost
        /// or moved until unpinned.
        #[test]
        fn pins_hold_and_the_unattached_count_is_exact(
            ops in prop::collection::vec((0usize..8, 0u8..5, 0u64..40), 0..120),
            cap in 0usize..4,
        ) {
            let mut now = Instant::now();
            let mut table = MacTable::with_limits(EXPIRY, 6, cap);
            let mut pins = std::collections::BTreeSet::new();
            for (mac, op, after) in ops {
                now += Duration::from_secs(after);
                let mac = [0x02, 0, 0, 0, 0, mac as u8];
                match op {
                    0 => { table.learn(mac, MacOwner::Local, now); }
                    1 => { table.learn(mac, MacOwner::Remote(PEER_1), now); }
                    2 => { table.pin(mac, now); pins.insert(mac); }
                    3 => { table.unpin(&mac); pins.remove(&mac); }
                    _ => { table.expire(now); }
                }
                let counted = table
                    .entries
                    .values()
                    .filter(|e| e.owner == MacOwner::Local && !e.pinned)
                    .count();
                prop_assert_eq!(table.unattached_local(), counted);
                prop_assert!(counted <= cap);
                for pin in &pins {
                    prop_assert_eq!(table.lookup(pin, now), Some(MacOwner::Local));
                    prop_assert!(table.is_pinned(pin));
                }
            }
        }
    }
}
