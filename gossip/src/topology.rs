//! The mesh topology as a state-based CRDT: one [`PeerEntry`] per peer, owned and versioned by
//! that peer, merged by keeping the greatest entry per name.
//!
//! "Greatest" is a total order ([`PeerEntry::supersedes`]): `(version, uid)` first, then the rest
//! of the content. Merge is therefore a join on a total order per name, which makes it
//! commutative, associative and idempotent no matter how gossip is duplicated or reordered.
//! Anti-entropy compares compact [`Digest`]s and ships only the entries one side lacks.
//!
//! Our own entry is special: gossip never replaces it. An entry for our name with a different
//! uid is an older incarnation of us (before a restart); the caller bumps our version above it
//! so that our current entry wins everywhere.

use crate::fnv::Fnv64;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::peer::{PeerName, PeerUid};

/// One peer's view of one of its connections.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Where the remote peer accepts connections, as far as the owner knows (used to discover
    /// addresses).
    pub remote_addr: Option<SocketAddr>,
    pub outbound: bool,
    pub established: bool,
}

/// Everything a peer announces about itself. Only the peer itself creates new versions of its
/// entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: PeerName,
    pub nickname: String,
    /// Incarnation: random per process start.
    pub uid: PeerUid,
    /// Bumped by the owner on every change of its entry.
    pub version: u64,
    pub connections: BTreeMap<PeerName, ConnectionInfo>,
}

/// The `(version, uid)` pair that orders entries of one name; also what a [`Digest`] carries.
pub type Stamp = (u64, PeerUid);

/// Orders stamps the way [`PeerEntry::supersedes`] orders entries (ignoring content): if
/// `compare_stamps(a.stamp(), b.stamp())` is `Greater` then `a` supersedes `b`.
pub fn compare_stamps(a: Stamp, b: Stamp) -> Ordering {
    a.cmp(&b)
}

impl PeerEntry {
    pub fn stamp(&self) -> Stamp {
        (self.version, self.uid)
    }

    /// Strictly greater in the merge order: `(version, uid)` first, then the rest of the
    /// content, so that even two entries with equal `(version, uid)` but different content
    /// (impossible unless a peer misbehaves) merge to the same result everywhere.
    pub fn supersedes(&self, other: &PeerEntry) -> bool {
        self.merge_order(other) == Ordering::Greater
    }

    fn merge_order(&self, other: &PeerEntry) -> Ordering {
        compare_stamps(self.stamp(), other.stamp())
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.nickname.cmp(&other.nickname))
            .then_with(|| self.connections.cmp(&other.connections))
    }

    /// A peer cannot be connected to itself; dropping such edges before comparing keeps the
    /// merge order a function of what we actually store.
    fn without_self_edges(mut self) -> Self {
        self.connections.remove(&self.name);
        self
    }
}

/// A set of entries to gossip; built here sorted by name with at most one entry per name,
/// but [`Topology::merge`] accepts any order and duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyUpdate {
    pub entries: Vec<PeerEntry>,
}

impl TopologyUpdate {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Compact summary for anti-entropy: `(name, version, uid)` per peer, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub entries: Vec<(PeerName, u64, PeerUid)>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Entries that replaced or added to our state: what to relay onward (empty => relay
    /// nothing, which stops loops).
    pub improved: TopologyUpdate,
    /// Someone gossiped an entry for OUR name with a different uid and version >= ours (an
    /// older incarnation of us, e.g. before a restart). The caller must bump our version above
    /// this value and re-announce.
    pub stale_self_version: Option<u64>,
}

/// Our replica of the topology CRDT.
#[derive(Debug, Clone)]
pub struct Topology {
    local: PeerName,
    /// Always contains `local`.
    peers: BTreeMap<PeerName, PeerEntry>,
}

impl Topology {
    pub fn new(local: PeerEntry) -> Self {
        let local = local.without_self_edges();
        let name = local.name;
        Self {
            local: name,
            peers: BTreeMap::from([(name, local)]),
        }
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    pub fn local_entry(&self) -> &PeerEntry {
        // `new` inserts it and nothing removes it (merge skips it, gc spares it).
        &self.peers[&self.local]
    }

    /// Mutate our own entry. The version is bumped by 1 if the content changed, and the new
    /// entry (a delta to broadcast) returned; `None` if nothing changed. `name`, `uid` and
    /// `version` are managed here: changes `f` makes to them are discarded.
    pub fn update_local(&mut self, f: impl FnOnce(&mut PeerEntry)) -> Option<PeerEntry> {
        let current = self.local_entry();
        let mut next = current.clone();
        f(&mut next);
        next.name = current.name;
        next.uid = current.uid;
        next.version = current.version;
        let mut next = next.without_self_edges();
        if next == *current {
            return None;
        }
        next.version = next.version.saturating_add(1);
        self.peers.insert(self.local, next.clone());
        Some(next)
    }

    /// Set our version to `max(current, v + 1)` and return the entry to re-announce (used with
    /// [`MergeOutcome::stale_self_version`]).
    pub fn bump_local_version_above(&mut self, v: u64) -> PeerEntry {
        if let Some(local) = self.peers.get_mut(&self.local) {
            local.version = local.version.max(v.saturating_add(1));
        }
        self.local_entry().clone()
    }

    pub fn get(&self, name: PeerName) -> Option<&PeerEntry> {
        self.peers.get(&name)
    }

    /// All entries, ours included, sorted by name.
    pub fn peers(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    pub(crate) fn peer_map(&self) -> &BTreeMap<PeerName, PeerEntry> {
        &self.peers
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Never true: we always hold our own entry.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Merge entries from others. Our own entry is never replaced by gossip (see
    /// [`MergeOutcome::stale_self_version`]). Duplicate names within one update are fine: the
    /// superseding one wins. Self-edges are dropped; nothing else is validated.
    pub fn merge(&mut self, update: TopologyUpdate) -> MergeOutcome {
        let mut improved = BTreeMap::new();
        let mut stale_self_version: Option<u64> = None;
        for entry in update.entries {
            let entry = entry.without_self_edges();
            if entry.name == self.local {
                let ours = self.local_entry();
                if entry.uid != ours.uid && entry.version >= ours.version {
                    stale_self_version = stale_self_version.max(Some(entry.version));
                }
                continue;
            }
            let newer = self
                .peers
                .get(&entry.name)
                .is_none_or(|known| entry.supersedes(known));
            if newer {
                improved.insert(entry.name, entry.clone());
                self.peers.insert(entry.name, entry);
            }
        }
        MergeOutcome {
            improved: TopologyUpdate {
                entries: improved.into_values().collect(),
            },
            stale_self_version,
        }
    }

    pub fn full_update(&self) -> TopologyUpdate {
        TopologyUpdate {
            entries: self.peers.values().cloned().collect(),
        }
    }

    /// The entries we hold for `names` (unknown names skipped), sorted by name, no duplicates.
    pub fn entries_for(&self, names: &[PeerName]) -> TopologyUpdate {
        let mut wanted: Vec<PeerName> = names.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let entries = wanted
            .iter()
            .filter_map(|name| self.peers.get(name))
            .cloned()
            .collect();
        TopologyUpdate { entries }
    }

    pub fn digest(&self) -> Digest {
        let entries = self
            .peers
            .values()
            .map(|e| (e.name, e.version, e.uid))
            .collect();
        Digest { entries }
    }

    /// [`Fnv64`] over the entry count, then `name, version, uid` per entry in name order.
    pub fn digest_hash(&self) -> u64 {
        let mut hash = Fnv64::default();
        hash.word(self.peers.len() as u64);
        for entry in self.peers.values() {
            hash.word(entry.name.as_u64());
            hash.word(entry.version);
            hash.word(entry.uid);
        }
        hash.finish()
    }

    /// Anti-entropy against a peer's digest. Returns the entries we hold that are newer (by
    /// stamp) than or absent from `digest` — to push to the sender — and whether `digest`
    /// names something newer than ours or unknown to us, in which case the caller asks the
    /// sender to push. An entry for our own name counts as newer only when gossip would report
    /// it as [`MergeOutcome::stale_self_version`], since nothing else can change our entry.
    pub fn compare_digest(&self, digest: &Digest) -> (TopologyUpdate, bool) {
        // Tolerate unsorted or duplicated digests: keep the newest stamp per name.
        let mut theirs: BTreeMap<PeerName, Stamp> = BTreeMap::new();
        for &(name, version, uid) in &digest.entries {
            let stamp = theirs.entry(name).or_insert((version, uid));
            if compare_stamps((version, uid), *stamp) == Ordering::Greater {
                *stamp = (version, uid);
            }
        }

        let entries = self
            .peers
            .values()
            .filter(|ours| {
                theirs
                    .get(&ours.name)
                    .is_none_or(|&stamp| compare_stamps(ours.stamp(), stamp) == Ordering::Greater)
            })
            .cloned()
            .collect();

        let they_know_more =
            theirs
                .iter()
                .any(|(&name, &(version, uid))| match self.peers.get(&name) {
                    None => true,
                    Some(ours) if name == self.local => uid != ours.uid && version >= ours.version,
                    Some(ours) => compare_stamps((version, uid), ours.stamp()) == Ordering::Greater,
                });

        (TopologyUpdate { entries }, they_know_more)
    }

    /// Garbage-collect peers not reachable from us along the connections listed in entries
    /// (directed: from each peer we hold an entry for to each peer it lists), except those for
    /// which `keep(name)` is true (peers we hold a live connection to). Our own entry is never
    /// removed. Returns the removed names, sorted.
    pub fn gc(&mut self, keep: impl Fn(PeerName) -> bool) -> Vec<PeerName> {
        let mut reached = std::collections::BTreeSet::from([self.local]);
        let mut frontier = vec![self.local];
        while let Some(name) = frontier.pop() {
            let Some(entry) = self.peers.get(&name) else {
                continue;
            };
            for &next in entry.connections.keys() {
                if reached.insert(next) {
                    frontier.push(next);
                }
            }
        }
        let removed: Vec<PeerName> = self
            .peers
            .keys()
            .copied()
            .filter(|&name| !reached.contains(&name) && !keep(name))
            .collect();
        for name in &removed {
            self.peers.remove(name);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn entry(n: u64, version: u64, uid: PeerUid, connected_to: &[u64]) -> PeerEntry {
        let info = ConnectionInfo {
            remote_addr: None,
            outbound: true,
            established: true,
        };
        PeerEntry {
            name: name(n),
            nickname: format!("peer{n}"),
            uid,
            version,
            connections: connected_to
                .iter()
                .map(|&c| (name(c), info.clone()))
                .collect(),
        }
    }

    fn update(entries: Vec<PeerEntry>) -> TopologyUpdate {
        TopologyUpdate { entries }
    }

    const LOCAL: u64 = 100;

    fn topology() -> Topology {
        Topology::new(entry(LOCAL, 5, 1000, &[1]))
    }

    #[test]
    fn merge_adds_replaces_and_ignores() {
        let mut t = topology();
        let outcome = t.merge(update(vec![entry(1, 3, 7, &[2])]));
        assert_eq!(outcome.improved, update(vec![entry(1, 3, 7, &[2])]));
        assert_eq!(t.len(), 2);

        let newer = entry(1, 4, 7, &[2, 3]);
        assert_eq!(
            t.merge(update(vec![newer.clone()])).improved,
            update(vec![newer.clone()])
        );
        assert_eq!(t.get(name(1)), Some(&newer));

        // Older and equal entries change nothing and relay nothing.
        for stale in [entry(1, 3, 9, &[]), newer.clone()] {
            assert_eq!(t.merge(update(vec![stale])), MergeOutcome::default());
        }
        assert_eq!(t.get(name(1)), Some(&newer));

        // Duplicates within one update: the superseding one wins.
        let best = entry(2, 2, 1, &[]);
        let outcome = t.merge(update(vec![
            entry(2, 1, 1, &[]),
            best.clone(),
            entry(2, 1, 9, &[]),
        ]));
        assert_eq!(outcome.improved, update(vec![best.clone()]));
        assert_eq!(t.get(name(2)), Some(&best));
    }

    #[test]
    fn merge_drops_self_edges() {
        let mut t = topology();
        t.merge(update(vec![entry(1, 1, 1, &[1, 2])]));
        assert_eq!(t.get(name(1)), Some(&entry(1, 1, 1, &[2])));
    }

    #[test]
    fn own_entry_is_never_replaced_but_stale_incarnations_are_reported() {
        let mut t = topology();
        let ours = t.local_entry().clone();

        // Same incarnation echoed back, or an older incarnation with a lower version: ignored.
        for echo in [entry(LOCAL, 9, 1000, &[]), entry(LOCAL, 4, 999, &[])] {
            assert_eq!(t.merge(update(vec![echo])), MergeOutcome::default());
        }
        // An older incarnation with version >= ours: reported, with the highest such version.
        let outcome = t.merge(update(vec![
            entry(LOCAL, 5, 999, &[]),
            entry(LOCAL, 8, 998, &[]),
        ]));
        assert_eq!(
            outcome,
            MergeOutcome {
                improved: TopologyUpdate::default(),
                stale_self_version: Some(8)
            }
        );
        assert_eq!(t.local_entry(), &ours);

        let announced = t.bump_local_version_above(8);
        assert_eq!(announced.version, 9);
        assert_eq!(t.local_entry(), &announced);
        assert_eq!(t.bump_local_version_above(2).version, 9);
        assert_eq!(
            t.merge(update(vec![entry(LOCAL, 8, 998, &[])])),
            MergeOutcome::default()
        );
    }

    #[test]
    fn update_local_bumps_version_only_on_change() {
        let mut t = topology();
        assert_eq!(t.update_local(|_| {}), None);
        assert_eq!(t.update_local(|e| e.nickname = "peer100".into()), None);
        // Name, uid and version are not the closure's to change; self-edges are dropped.
        assert_eq!(t.update_local(|e| e.version = 77), None);
        assert_eq!(
            t.update_local(|e| {
                e.uid = 1;
                e.connections.insert(
                    name(LOCAL),
                    ConnectionInfo {
                        remote_addr: None,
                        outbound: false,
                        established: false,
                    },
                );
            }),
            None
        );
        assert_eq!(t.local_entry().version, 5);

        let changed = t.update_local(|e| e.nickname = "renamed".into()).unwrap();
        assert_eq!(
            (changed.version, changed.uid, changed.name),
            (6, 1000, name(LOCAL))
        );
        assert_eq!(t.local_entry(), &changed);
    }

    #[test]
    fn gc_removes_unreachable_peers_except_kept_ones() {
        let mut t = topology(); // local -> 1
        t.merge(update(vec![
            entry(1, 1, 1, &[2]),
            entry(2, 1, 1, &[]),
            entry(3, 1, 1, &[4]), // only reachable from 4, which nothing reaches
            entry(4, 1, 1, &[3]),
            entry(5, 1, 1, &[LOCAL]), // lists us, but we do not reach it
        ]));
        assert_eq!(t.gc(|peer| peer == name(4)), vec![name(3), name(5)]);
        let left: Vec<PeerName> = t.peers().map(|e| e.name).collect();
        assert_eq!(left, vec![name(1), name(2), name(4), name(LOCAL)]);
        assert_eq!(t.gc(|_| false), vec![name(4)]);
        assert_eq!(t.gc(|_| false), Vec::<PeerName>::new());
    }

    #[test]
    fn compare_digest_finds_what_each_side_lacks() {
        let mut a = topology();
        a.merge(update(vec![
            entry(1, 2, 1, &[]),
            entry(2, 1, 1, &[]),
            entry(3, 5, 1, &[]),
        ]));
        let mut b = Topology::new(entry(200, 1, 2000, &[]));
        b.merge(update(vec![
            entry(1, 1, 1, &[]),
            entry(3, 5, 1, &[]),
            entry(4, 1, 1, &[]),
        ]));

        let (for_b, a_wants_push) = a.compare_digest(&b.digest());
        let names: Vec<PeerName> = for_b.entries.iter().map(|e| e.name).collect();
        assert_eq!(names, vec![name(1), name(2), name(LOCAL)]);
        assert!(a_wants_push, "b has 4 and 200");

        let (for_a, b_wants_push) = b.compare_digest(&a.digest());
        let names: Vec<PeerName> = for_a.entries.iter().map(|e| e.name).collect();
        assert_eq!(names, vec![name(4), name(200)]);
        assert!(b_wants_push, "a has newer 1, and 2 and 100");

        assert_ne!(a.digest_hash(), b.digest_hash());
        a.merge(for_a);
        b.merge(for_b);
        assert_eq!(a.full_update(), b.full_update());
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest_hash(), b.digest_hash());
        assert_eq!(
            a.compare_digest(&b.digest()),
            (TopologyUpdate::default(), false)
        );

        let before = a.digest_hash();
        a.update_local(|e| e.nickname = "changed".into());
        assert_ne!(a.digest_hash(), before);
    }

    #[test]
    fn compare_digest_flags_stale_incarnations_of_us_only() {
        let t = topology();
        let digest = |version, uid| Digest {
            entries: vec![(name(LOCAL), version, uid)],
        };
        assert!(
            t.compare_digest(&digest(5, 1)).1,
            "older incarnation, same version"
        );
        assert!(
            !t.compare_digest(&digest(4, 9999)).1,
            "older version: ours wins anyway"
        );
        assert!(
            !t.compare_digest(&digest(9, 1000)).1,
            "our own uid: gossip cannot change our entry"
        );
        let (ours, _) = t.compare_digest(&digest(5, 1));
        assert_eq!(ours, update(vec![t.local_entry().clone()]));
    }

    #[test]
    fn entries_for_skips_unknown_and_duplicates() {
        let mut t = topology();
        t.merge(update(vec![entry(1, 1, 1, &[]), entry(2, 1, 1, &[])]));
        let got = t.entries_for(&[name(2), name(9), name(2), name(1)]);
        assert_eq!(got, update(vec![entry(1, 1, 1, &[]), entry(2, 1, 1, &[])]));
    }

    #[test]
    fn supersedes_is_a_strict_total_order() {
        let a = entry(1, 2, 5, &[]);
        assert!(!a.supersedes(&a));
        assert!(entry(1, 3, 1, &[]).supersedes(&a));
        assert!(entry(1, 2, 6, &[]).supersedes(&a));
        let b = entry(1, 2, 5, &[3]);
        assert!(
            a.supersedes(&b) != b.supersedes(&a),
            "same stamp, different content: still ordered"
        );
    }

    /// Small pools so that equal names and stamps with different content are common.
    fn arb_entry(names: std::ops::Range<u64>) -> impl Strategy<Value = PeerEntry> {
        let addr = prop_oneof![Just(None), Just(Some("10.0.0.1:6783".parse().unwrap()))];
        let info = (addr, any::<bool>(), any::<bool>()).prop_map(
            |(remote_addr, outbound, established)| ConnectionInfo {
                remote_addr,
                outbound,
                established,
            },
        );
        (
            names.clone(),
            prop_oneof![Just("x"), Just("y")],
            1u64..3,
            0u64..4,
            prop::collection::btree_map(names, info, 0..4),
        )
            .prop_map(|(n, nickname, uid, version, connections)| PeerEntry {
                name: name(n),
                nickname: nickname.into(),
                uid,
                version,
                connections: connections
                    .into_iter()
                    .map(|(c, info)| (name(c), info))
                    .collect(),
            })
    }

    fn arb_update(names: std::ops::Range<u64>) -> impl Strategy<Value = TopologyUpdate> {
        prop::collection::vec(arb_entry(names), 0..8).prop_map(update)
    }

    /// Names 1..=6, plus our own name (local is 100, generated names include it in `WITH_LOCAL`).
    const OTHERS: std::ops::Range<u64> = 1..7;

    fn local_and_others() -> impl Strategy<Value = TopologyUpdate> {
        prop::collection::vec(
            prop_oneof![5 => arb_entry(OTHERS), 1 => arb_entry(LOCAL..LOCAL + 1)],
            0..8,
        )
        .prop_map(update)
    }

    fn concat(a: &TopologyUpdate, b: &TopologyUpdate) -> TopologyUpdate {
        update(a.entries.iter().chain(&b.entries).cloned().collect())
    }

    /// Anti-entropy round as the channel would run it: `from` sends its digest to `to`, which
    /// answers with what `from` lacks and, if asked, receives what it lacks.
    fn anti_entropy(from: &mut Topology, to: &mut Topology) {
        let (for_from, to_wants_push) = to.compare_digest(&from.digest());
        from.merge(for_from);
        if to_wants_push {
            let (for_to, _) = from.compare_digest(&to.digest());
            to.merge(for_to);
        }
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in local_and_others(), b in local_and_others()) {
            let mut ab = topology();
            let stale_ab = [ab.merge(a.clone()).stale_self_version, ab.merge(b.clone()).stale_self_version];
            let mut ba = topology();
            let stale_ba = [ba.merge(b).stale_self_version, ba.merge(a).stale_self_version];
            prop_assert_eq!(ab.full_update(), ba.full_update());
            prop_assert_eq!(stale_ab.iter().max(), stale_ba.iter().max());
            prop_assert_eq!(ab.local_entry(), &entry(LOCAL, 5, 1000, &[1]));
        }

        #[test]
        fn merge_is_associative(a in arb_update(OTHERS), b in arb_update(OTHERS), c in arb_update(OTHERS)) {
            let mut left = topology();
            left.merge(concat(&a, &b));
            left.merge(c.clone());
            let mut right = topology();
            right.merge(a.clone());
            right.merge(concat(&b, &c));
            prop_assert_eq!(left.full_update(), right.full_update());

            // Relaying only what improved carries the same information as the whole update.
            let mut relayed = topology();
            let mut hop = topology();
            relayed.merge(hop.merge(concat(&a, &b)).improved);
            relayed.merge(hop.merge(c).improved);
            prop_assert_eq!(relayed.full_update(), left.full_update());
        }

        #[test]
        fn merge_is_idempotent(a in local_and_others()) {
            let mut once = topology();
            once.merge(a.clone());
            let state = once.full_update();
            let again = once.merge(a);
            prop_assert_eq!(once.full_update(), state);
            prop_assert!(again.improved.is_empty());
        }

        #[test]
        fn anti_entropy_converges(
            entries in prop::collection::vec(arb_entry(OTHERS), 0..12),
            sides in prop::collection::vec(0u8..3, 12),
        ) {
            // One content per (name, version, uid), as real owners guarantee; digests compare
            // stamps only.
            let mut unique: BTreeMap<(PeerName, Stamp), PeerEntry> = BTreeMap::new();
            for e in entries {
                unique.entry((e.name, e.stamp())).or_insert(e);
            }
            let mut a = topology();
            let mut b = Topology::new(entry(200, 3, 2000, &[LOCAL]));
            for (e, side) in unique.into_values().zip(sides) {
                if side != 1 { a.merge(update(vec![e.clone()])); }
                if side != 0 { b.merge(update(vec![e])); }
            }
            anti_entropy(&mut a, &mut b);
            prop_assert_eq!(a.full_update(), b.full_update());
            prop_assert_eq!(a.digest_hash(), b.digest_hash());
            prop_assert_eq!(a.compare_digest(&b.digest()), (TopologyUpdate::default(), false));
            prop_assert_eq!(b.compare_digest(&a.digest()), (TopologyUpdate::default(), false));
        }

        #[test]
        fn digest_hash_follows_state(a in arb_update(OTHERS), b in arb_update(OTHERS)) {
            let mut x = topology();
            x.merge(a);
            let mut y = topology();
            y.merge(x.full_update());
            prop_assert_eq!(x.digest_hash(), y.digest_hash());
            if !y.merge(b).improved.is_empty() && x.digest() != y.digest() {
                prop_assert_ne!(x.digest_hash(), y.digest_hash());
            }
        }
    }
}
