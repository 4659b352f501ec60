//! Admission control for unauthenticated connections on the mesh port, as a sans-IO state
//! machine. The accept loop accepts every connection at once (none waits in the kernel's
//! backlog) and asks [`Admission::admit`] whether it may start its handshake:
//!
//! - at most `per_source` pending (pre-handshake) connections per source address;
//! - at most `total` pending connections in all, of which `reserved_known` can only be taken by
//!   addresses the mesh already knows (peers' addresses in the gossiped topology, `--peers` and
//!   `weft connect` targets), so a flood from unknown addresses cannot take the slots known
//!   peers need;
//! - when the share of unknown addresses is full, a newcomer whose address holds fewer pending
//!   connections than the biggest holder evicts that holder's oldest one, preferring connections
//!   that have not sent their hello yet. A legitimate peer sends its hello at once and finishes
//!   in a round trip or two, so an attacker holding idle connections from many addresses cannot
//!   keep a new peer out: its connections are the ones evicted.
//!
//! Refused connections are closed at once and counted, by reason; connections that miss their
//! deadlines (see `conn`) are counted here too, so that `/report` and `/metrics` show one set of
//! numbers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The limits of the mesh port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Pending connections from one source address.
    pub per_source: usize,
    /// Pending connections in all.
    pub total: usize,
    /// Of `total`, the slots only known addresses may take.
    pub reserved_known: usize,
    /// From accept to the peer's plaintext hello and intro.
    pub intro_deadline: Duration,
    /// From accept to the end of the handshake.
    pub handshake_deadline: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            per_source: 4,
            total: 64,
            reserved_known: 16,
            intro_deadline: Duration::from_secs(3),
            handshake_deadline: Duration::from_secs(6),
        }
    }
}

/// Why a connection was not let through to an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// Its source address already held `per_source` pending connections.
    PerSource,
    /// No slot was free for its kind of address, and nothing could be evicted.
    Total,
    /// It was pending and a newcomer from a less busy address took its slot.
    Evicted,
    /// The plaintext hello and intro did not arrive by the intro deadline.
    IntroTimeout,
    /// The handshake did not finish by its deadline.
    HandshakeTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::PerSource,
        Refusal::Total,
        Refusal::Evicted,
        Refusal::IntroTimeout,
        Refusal::HandshakeTimeout,
    ];

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_source",
            Refusal::Total => "total",
            Refusal::Evicted => "evicted",
            Refusal::IntroTimeout => "intro_timeout",
            Refusal::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// One admitted, still pending connection. Release it with [`Admission::release`] when its
/// handshake ends, whichever way.
pub type Ticket = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start the handshake; if `evicted` is set, close that pending connection now.
    Admit {
        ticket: Ticket,
        evicted: Option<Ticket>,
    },
    /// Close the connection at once.
    Refuse(Refusal),
}

#[derive(Debug, Clone)]
struct Pending {
    source: IpAddr,
    known: bool,
    /// The peer's hello arrived: evicted only when no silent connection can be.
    progressed: bool,
}

/// What the mesh port's admission reports in `/report` (`mesh_admission`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmissionReport {
    pub per_source_limit: usize,
    pub total_limit: usize,
    pub reserved_for_known: usize,
    pub intro_deadline_secs: f64,
    pub handshake_deadline_secs: f64,
    /// Connections in their handshake now.
    pub pending: usize,
    /// Of those, from known addresses.
    pub pending_known: usize,
    /// Addresses the mesh knows (preferred when the port is busy).
    pub known_addresses: usize,
    /// Connections admitted to a handshake since start.
    pub admitted: u64,
    /// Connections refused or cut since start, by reason (`per_source`, `total`, `evicted`,
    /// `intro_timeout`, `handshake_timeout`).
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    known: HashSet<IpAddr>,
    /// Ordered by ticket, i.e. by age: the first entries are the oldest.
    pending: BTreeMap<Ticket, Pending>,
    by_source: HashMap<IpAddr, usize>,
    pending_unknown: usize,
    next_ticket: Ticket,
    admitted: u64,
    refused: BTreeMap<Refusal, u64>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            known: HashSet::new(),
            pending: BTreeMap::new(),
            by_source: HashMap::new(),
            pending_unknown: 0,
            next_ticket: 1,
            admitted: 0,
            refused: BTreeMap::new(),
        }
    }

    /// Replaces the set of addresses the mesh knows. Pending connections keep the kind they
    /// were admitted as.
    pub fn set_known(&mut self, known: HashSet<IpAddr>) {
        self.known = known;
    }

    #[cfg(test)]
    fn is_known(&self, source: IpAddr) -> bool {
        self.known.contains(&canonical(source))
    }

    /// Decides about a connection just accepted from `source`. Refusals and evictions are
    /// counted.
    pub fn admit(&mut self, source: IpAddr) -> Decision {
        let source = canonical(source);
        let known = self.known.contains(&source);
        let held = self.by_source.get(&source).copied().unwrap_or(0);
        if held >= self.limits.per_source {
            return self.refuse(Refusal::PerSource);
        }
        let unknown_share = self.limits.total.saturating_sub(self.limits.reserved_known);
        let room = if known {
            self.pending.len() < self.limits.total
        } else {
            self.pending_unknown < unknown_share && self.pending.len() < self.limits.total
        };
        let evicted = if room {
            None
        } else {
            // Only unknown connections are ever evicted; a known source may take an unknown
            // connection's slot whatever it holds.
            let Some(victim) = self.eviction_victim(if known { usize::MAX } else { held }) else {
                return self.refuse(Refusal::Total);
            };
            self.release(victim);
            *self.refused.entry(Refusal::Evicted).or_default() += 1;
            Some(victim)
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.pending.insert(
            ticket,
            Pending {
                source,
                known,
                progressed: false,
            },
        );
        *self.by_source.entry(source).or_default() += 1;
        if !known {
            self.pending_unknown += 1;
        }
        self.admitted += 1;
        Decision::Admit { ticket, evicted }
    }

    /// A pending unknown connection whose source holds more than `held` (what the newcomer's
    /// source holds): one that has not sent its hello if there is one, else any; of those, the
    /// busiest source's oldest.
    fn eviction_victim(&self, held: usize) -> Option<Ticket> {
        [false, true]
            .into_iter()
            .find_map(|progressed| self.busiest_oldest(progressed, held))
    }

    fn busiest_oldest(&self, progressed: bool, held: usize) -> Option<Ticket> {
        let mut best: Option<(usize, Ticket)> = None;
        // Oldest first, so on equal counts the first one seen (the oldest) stays chosen.
        for (&ticket, p) in &self.pending {
            if p.known || p.progressed != progressed {
                continue;
            }
            let count = self.by_source.get(&p.source).copied().unwrap_or(0);
            if best.is_none_or(|(c, _)| count > c) {
                best = Some((count, ticket));
            }
        }
        best.filter(|&(count, _)| held == usize::MAX || count > held)
            .map(|(_, ticket)| ticket)
    }

    /// The connection's peer sent its hello: it is evicted only after silent ones.
    pub fn progressed(&mut self, ticket: Ticket) {
        if let Some(p) = self.pending.get_mut(&ticket) {
            p.progressed = true;
        }
    }

    /// Ends a pending connection (handshake done, failed, timed out or evicted). Unknown or
    /// already released tickets are ignored.
    pub fn release(&mut self, ticket: Ticket) {
        let Some(p) = self.pending.remove(&ticket) else {
            return;
        };
        if let Some(n) = self.by_source.get_mut(&p.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&p.source);
            }
        }
        if !p.known {
            self.pending_unknown -= 1;
        }
    }

    /// Counts a connection cut for missing a deadline (the caller releases its ticket).
    pub fn count(&mut self, refusal: Refusal) {
        *self.refused.entry(refusal).or_default() += 1;
    }

    fn refuse(&mut self, refusal: Refusal) -> Decision {
        self.count(refusal);
        Decision::Refuse(refusal)
    }

    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refused.get(&refusal).copied().unwrap_or(0)
    }

    pub fn report(&self) -> AdmissionReport {
        AdmissionReport {
            per_source_limit: self.limits.per_source,
            total_limit: self.limits.total,
            reserved_for_known: self.limits.reserved_known,
            intro_deadline_secs: self.limits.intro_deadline.as_secs_f64(),
            handshake_deadline_secs: self.limits.handshake_deadline.as_secs_f64(),
            pending: self.pending.len(),
            pending_known: self.pending.len() - self.pending_unknown,
            known_addresses: self.known.len(),
            admitted: self.admitted,
            refused: Refusal::ALL
                .iter()
                .map(|&r| (r.label().to_owned(), self.refused(r)))
                .collect(),
        }
    }
}

/// An IPv4 address seen through an IPv6 socket counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn limits(per_source: usize, total: usize, reserved_known: usize) -> AdmissionLimits {
        AdmissionLimits {
            per_source,
            total,
            reserved_known,
            ..AdmissionLimits::default()
        }
    }

    fn ticket(d: &Decision) -> Ticket {
        match d {
            Decision::Admit { ticket, .. } => *ticket,
            Decision::Refuse(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn one_source_gets_at_most_its_share() {
        let mut a = Admission::new(limits(4, 64, 16));
        for _ in 0..4 {
            ticket(&a.admit(ip(4)));
        }
        for _ in 0..296 {
            assert_eq!(a.admit(ip(4)), Decision::Refuse(Refusal::PerSource));
        }
        assert_eq!(a.refused(Refusal::PerSource), 296);
        assert_eq!(a.pending(), 4);
        // A new host with its one connection is let in.
        ticket(&a.admit(ip(5)));
    }

    #[test]
    fn released_slots_are_reused() {
        let mut a = Admission::new(limits(2, 4, 0));
        let t1 = ticket(&a.admit(ip(1)));
        ticket(&a.admit(ip(1)));
        assert_eq!(a.admit(ip(1)), Decision::Refuse(Refusal::PerSource));
        a.release(t1);
        a.release(t1);
        ticket(&a.admit(ip(1)));
        assert_eq!(a.pending(), 2);
    }

    #[test]
    fn known_addresses_keep_their_reserved_slots_during_a_flood_from_many_addresses() {
        let mut a = Admission::new(limits(2, 8, 2));
        a.set_known([ip(200)].into_iter().collect());
        // Six unknown addresses fill the unknown share (six slots), one each.
        for n in 1..=6 {
            ticket(&a.admit(ip(n)));
        }
        // A seventh evicts the oldest (everyone holds one, it holds none) ...
        assert!(matches!(
            a.admit(ip(7)),
            Decision::Admit {
                evicted: Some(1),
                ..
            }
        ));
        // ... but a second connection from an address holding as much as anyone is refused.
        assert_eq!(a.admit(ip(2)), Decision::Refuse(Refusal::Total));
        // The known address gets in without evicting anybody.
        assert!(matches!(
            a.admit(ip(200)),
            Decision::Admit { evicted: None, .. }
        ));
        assert_eq!(a.report().pending_known, 1);
    }

    #[test]
    fn a_known_address_evicts_an_unknown_one_when_everything_is_full() {
        let mut a = Admission::new(limits(8, 4, 1));
        a.set_known([ip(200), ip(201)].into_iter().collect());
        let oldest = ticket(&a.admit(ip(1)));
        for _ in 0..2 {
            ticket(&a.admit(ip(1)));
        }
        ticket(&a.admit(ip(200)));
        assert_eq!(
            a.admit(ip(201)),
            Decision::Admit {
                ticket: 5,
                evicted: Some(oldest)
            }
        );
        assert_eq!(a.refused(Refusal::Evicted), 1);
    }

    #[test]
    fn a_newcomer_evicts_the_oldest_connection_of_the_busiest_unknown_source() {
        let mut a = Admission::new(limits(4, 8, 0));
        let mut attacker = Vec::new();
        for n in [1, 2] {
            for _ in 0..4 {
                attacker.push((n, ticket(&a.admit(ip(n)))));
            }
        }
        match a.admit(ip(9)) {
            Decision::Admit {
                evicted: Some(victim),
                ..
            } => assert_eq!(victim, attacker[0].1),
            other => panic!("{other:?}"),
        }
        // Now ip(1) holds 3 and ip(2) 4: the next newcomer evicts from ip(2).
        match a.admit(ip(10)) {
            Decision::Admit {
                evicted: Some(victim),
                ..
            } => assert_eq!(victim, attacker[4].1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connections_that_sent_their_hello_are_evicted_after_silent_ones() {
        let mut a = Admission::new(limits(4, 4, 0));
        let newcomer = ticket(&a.admit(ip(9)));
        a.progressed(newcomer);
        let mut silent = Vec::new();
        for n in 1..=3 {
            silent.push(ticket(&a.admit(ip(n))));
        }
        // Everyone holds one: a fresh address evicts the oldest silent one, never the newcomer
        // whose hello arrived, although it is the oldest.
        for (round, n) in (20..23).enumerate() {
            match a.admit(ip(n)) {
                Decision::Admit {
                    evicted: Some(victim),
                    ..
                } => assert_eq!(victim, silent[round]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let mut a = Admission::new(limits(1, 8, 0));
        ticket(&a.admit(ip(1)));
        let mapped = match ip(1) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        assert_eq!(a.admit(mapped), Decision::Refuse(Refusal::PerSource));
    }

    #[test]
    fn report_names_every_reason() {
        let mut a = Admission::new(AdmissionLimits::default());
        a.count(Refusal::IntroTimeout);
        let r = a.report();
        assert_eq!(r.refused.len(), Refusal::ALL.len());
        assert_eq!(r.refused["intro_timeout"], 1);
        assert_eq!(r.intro_deadline_secs, 3.0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8),
        Release(usize),
        Progress(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..12).prop_map(Op::Admit),
            1 => (0usize..64).prop_map(Op::Release),
            1 => (0usize..64).prop_map(Op::Progress),
        ]
    }

    proptest! {
        /// Whatever the sequence: the limits hold, the counts match the pending set, a known
        /// address is admitted while it holds less than its share, and a source holding
        /// nothing is refused only when every unknown holder holds just one.
        #[test]
        fn limits_always_hold(
            per_source in 1usize..5,
            total in 1usize..20,
            reserved in 0usize..6,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let limits = limits(per_source, total, reserved.min(total));
            let mut a = Admission::new(limits.clone());
            // ip(0) and ip(1) are known.
            a.set_known([ip(0), ip(1)].into_iter().collect());
            let mut live: Vec<Ticket> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit(n) => {
                        let source = ip(n);
                        let held_before = a.by_source.get(&source).copied().unwrap_or(0);
                        let max_unknown_held = a
                            .pending
                            .values()
                            .filter(|p| !p.known)
                            .map(|p| a.by_source[&p.source])
                            .max();
                        match a.admit(source) {
                            Decision::Admit { ticket, evicted } => {
                                if let Some(v) = evicted {
                                    prop_assert!(live.contains(&v));
                                    live.retain(|&t| t != v);
                                }
                                live.push(ticket);
                            }
                            Decision::Refuse(Refusal::PerSource) => {
                                prop_assert_eq!(held_before, limits.per_source);
                            }
                            Decision::Refuse(Refusal::Total) => {
                                prop_assert!(held_before < limits.per_source);
                                if a.is_known(source) {
                                    // Only when no unknown connection could be evicted.
                                    prop_assert!(max_unknown_held.is_none());
                                } else {
                                    prop_assert!(max_unknown_held.is_none_or(|m| m <= held_before));
                                }
                            }
                            Decision::Refuse(other) => prop_assert!(false, "{:?}", other),
                        }
                    }
                    Op::Progress(i) => {
                        if !live.is_empty() {
                            a.progressed(live[i % live.len()]);
                        }
                    }
                    Op::Release(i) => {
                        if !live.is_empty() {
                            let t = live.remove(i % live.len());
                            a.release(t);
                        }
                    }
                }
                prop_assert_eq!(a.pending(), live.len());
                prop_assert!(a.pending() <= limits.total);
                let unknown = a.pending.values().filter(|p| !p.known).count();
                prop_assert_eq!(unknown, a.pending_unknown);
                prop_assert!(unknown <= limits.total - limits.reserved_known);
                prop_assert!(a.by_source.values().all(|&n| n >= 1 && n <= limits.per_source));
                prop_assert_eq!(a.by_source.values().sum::<usize>(), a.pending());
            }
        }
    }
}
