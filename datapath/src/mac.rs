//! The MAC table: which peer owns each Ethernet address.
//!
//! Entries are learned from source addresses — of frames captured from the local bridge
//! (owner [`MacOwner::Local`]) and of frames received from the mesh (owner
//! [`MacOwner::Remote`] with the frame's origin peer) — refreshed by traffic, and expire after
//! [`DEFAULT_EXPIRY`] unseen. An expired entry is invisible at once, even before
//! [`MacTable::expire`] removes it, so forwarding never depends on how often the caller sweeps.
//! Time is always passed in; the table never reads a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::PeerId;

/// A 48-bit Ethernet address.
pub type Mac = [u8; 6];

/// How long an entry lives without traffic from its address.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(5 * 60);

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
}

impl Entry {
    /// Saturating, so a `now` older than the entry (out-of-order callers) means age zero.
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    fn is_expired(&self, now: Instant, expiry: Duration) -> bool {
        self.age(now) >= expiry
    }
}

/// MAC address → owner, with expiry.
#[derive(Debug, Clone)]
pub struct MacTable {
    entries: HashMap<Mac, Entry>,
    expiry: Duration,
    moves: u64,
}

impl Default for MacTable {
    fn default() -> Self {
        Self::new(DEFAULT_EXPIRY)
    }
}

impl MacTable {
    /// An empty table whose entries expire after `expiry` without traffic.
    pub fn new(expiry: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            expiry,
            moves: 0,
        }
    }

    /// A frame with source `mac` was captured from the local bridge (`Local`: a local pod) or
    /// arrived from the mesh with origin peer `p` (`Remote(p)`). Multicast/broadcast source
    /// MACs (bit 0 of byte 0) and all-zero are ignored (return None): no single host owns them.
    pub fn learn(&mut self, mac: Mac, owner: MacOwner, now: Instant) -> Option<Learned> {
        if is_multicast(&mac) || mac == [0; 6] {
            return None;
        }
        let fresh = Entry {
            owner,
            last_seen: now,
        };
        let Some(entry) = self.entries.get_mut(&mac) else {
            self.entries.insert(mac, fresh);
            return Some(Learned::New);
        };
        if entry.is_expired(now, self.expiry) {
            // Invisible already, so relearning it is new, not a move.
            *entry = fresh;
            return Some(Learned::New);
        }
        if entry.owner == owner {
            // Frames may be handed over slightly out of order; never move the clock back.
            entry.last_seen = entry.last_seen.max(now);
            return Some(Learned::Refreshed);
        }
        let from = entry.owner;
        *entry = fresh;
        self.moves = self.moves.saturating_add(1);
        Some(Learned::Moved { from })
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
        self.entries.retain(|mac, entry| {
            let alive = !entry.is_expired(now, expiry);
            if !alive {
                expired.push((*mac, entry.owner));
            }
            alive
        });
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
    const MACS: [Mac; 5] = [POD_A, POD_B, [0x02, 0, 0, 0, 0, 0xc], [0xff; 6], [0; 6]];
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

    /// Reference: every learned entry kept forever, visibility computed from its age.
    #[derive(Default)]
    struct Model {
        entries: BTreeMap<Mac, (MacOwner, Instant)>,
        moves: u64,
    }

    impl Model {
        fn live(&self, mac: &Mac, now: Instant) -> Option<MacOwner> {
            self.entries
                .get(mac)
                .filter(|(_, seen)| now.duration_since(*seen) < EXPIRY)
                .map(|(owner, _)| *owner)
        }
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_a_reference_model(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut now = Instant::now();
            let mut table = MacTable::new(EXPIRY);
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Learn { mac, owner, after } => {
                        now += after;
                        let mac = MACS[mac];
                        let expected = if is_multicast(&mac) || mac == [0; 6] {
                            None
                        } else {
                            let learned = match model.live(&mac, now) {
                                None => Learned::New,
                                Some(old) if old == owner => Learned::Refreshed,
                                Some(from) => {
                                    model.moves += 1;
                                    Learned::Moved { from }
                                }
                            };
                            model.entries.insert(mac, (owner, now));
                            Some(learned)
                        };
                        prop_assert_eq!(table.learn(mac, owner, now), expected);
                    }
                    Op::Expire { after } => {
                        now += after;
                        let expected: Vec<_> = model
                            .entries
                            .iter()
                            .filter(|(mac, _)| model.live(mac, now).is_none())
                            .map(|(mac, (owner, _))| (*mac, *owner))
                            .collect();
                        for (mac, _) in &expected {
                            model.entries.remove(mac);
                        }
                        prop_assert_eq!(table.expire(now), expected);
                    }
                    Op::Forget(peer) => {
                        let before = model.entries.len();
                        model.entries.retain(|_, (owner, _)| *owner != MacOwner::Remote(peer));
                        prop_assert_eq!(table.forget_peer(peer), before - model.entries.len());
                    }
                }
                for mac in &MACS {
                    prop_assert_eq!(table.lookup(mac, now), model.live(mac, now));
                }
                prop_assert_eq!(table.moves(), model.moves);
                prop_assert_eq!(table.len(), model.entries.len());
                let live: Vec<_> = MACS
                    .iter()
                    .filter_map(|mac| model.live(mac, now).map(|owner| (*mac, owner)))
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect();
                let listed: Vec<_> =
                    table.entries(now).into_iter().map(|(mac, owner, _)| (mac, owner)).collect();
                prop_assert_eq!(listed, live);
            }
        }
    }
}
