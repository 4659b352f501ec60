//! Who may create the IPAM ring: an agreement among the peers a router was told about.
//!
//! A router with no ring may create one ("genesis") only when
//! - (a) it was told about no peer (its *initial peers*: `--peers`, `WEFT_PEERS` and the
//!   persisted `weft connect` targets): a lone host creates its ring at once; or
//! - (b) every initial peer is reached (connected, so its peer name is known, and routed),
//!   every reachable peer has answered a [`RingQuery`](super::IpamMsg::RingQuery) with "no
//!   ring" since it last became reachable, and this router's name is the smallest among itself
//!   and every reachable peer. (A peer that answers with another allocation range takes no
//!   part: its rings never merge with ours.)
//!
//! Every other ring-less router waits. A peer that has a ring answers a query with the ring
//! itself (and gossip hands it to every new neighbour), so a waiting router gets the ring as
//! soon as it reaches anyone who has one.
//!
//! **Why at most one ring forms among peers told about each other.** Let A and B each be an
//! initial peer of the other, and suppose both create a ring, A at `tA` and B at `tB`. By (b)
//! at `tA` B was reached by A, so B was in A's reachable set and A's name is smaller than B's;
//! by (b) at `tB`, B's name is smaller than A's. Names never change: contradiction. The
//! argument uses nothing but the names, so stale answers, lost messages, partitions and late
//! starters cannot break it; a peer that never creates twice (a ring is only ever replaced by
//! one that wins a merge) then leaves at most one ring per such group. The answers serve
//! progress, not safety: without them a newcomer with the smallest name would create a ring
//! the moment it connects, before the existing ring reached it.
//!
//! **Why hosts that join one at a time never wait.** Each newcomer is told about hosts that
//! already hold the ring; once it reaches them they answer its query with the ring (and
//! gossip sends it too), so it never creates and never waits for a timer.
//!
//! **Why hosts booted together form a ring.** Once every host is up and connected, the
//! smallest name among them has reached all its initial peers, every one answers "no ring"
//! (none may create: each sees the smaller name), and it creates; the ring then spreads. A late
//! starter only delays this: nobody that was told about it creates before reaching it.
//!
//! A router whose initial peers are gone for good waits until an operator forces a ring
//! (`weft ipam force-ring`), which is safe when no other peer it was told about can still
//! create one, i.e. when they are really gone. The initial peers are the router's
//! operator-named targets as they are *now*: `weft forget` of a dead seed has the same effect
//! and the same caveat.
//!
//! A router is never "lone" by accident: the router hands the initial peers over before its
//! first step, and a channel told nothing is taken to be lone.
//!
//! This module keeps the state the rule needs (initial peers, reachable peers, answers, queries
//! in flight) and decides; [`super::IpamChannel`] sends the queries and creates the ring.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::maker::{TargetSource, TargetStatus};
use crate::peer::PeerName;

/// One address this router was told about, as the connection maker sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialPeer {
    pub address: String,
    pub state: InitialPeerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPeerState {
    /// Connected to this peer (or the address is this router itself).
    Reached(PeerName),
    /// Not connected; why (the last failure, or what is under way).
    Unreached(String),
}

impl InitialPeer {
    pub fn reached(address: impl Into<String>, peer: PeerName) -> Self {
        InitialPeer {
            address: address.into(),
            state: InitialPeerState::Reached(peer),
        }
    }

    pub fn unreached(address: impl Into<String>, why: impl Into<String>) -> Self {
        InitialPeer {
            address: address.into(),
            state: InitialPeerState::Unreached(why.into()),
        }
    }
}

/// The initial peers from the connection maker's targets: the operator-named (direct) ones,
/// reached when connected to a known peer (`peer_of`: which peer an address led to) or when
/// the address is this router itself; otherwise with the last failure, or the state, as reason.
pub fn initial_peers(
    local: PeerName,
    targets: &[TargetStatus],
    peer_of: impl Fn(&str) -> Option<PeerName>,
) -> Vec<InitialPeer> {
    targets
        .iter()
        .filter(|t| t.source == TargetSource::Direct)
        .map(|t| match peer_of(&t.address) {
            Some(peer) if peer == local || t.state == "connected" => {
                InitialPeer::reached(t.address.clone(), peer)
            }
            _ => {
                let why = match (&t.last_error, t.state) {
                    (Some(e), _) => e.clone(),
                    (None, "waiting") => "not dialled yet".to_owned(),
                    (None, state) => state.to_owned(),
                };
                InitialPeer::unreached(t.address.clone(), why)
            }
        })
        .collect()
}

/// Why a ring-less router does not create a ring now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// Some initial peers are not reached: `(address, why)` for each of them.
    InitialPeers {
        reached: usize,
        total: usize,
        unreached: Vec<(String, String)>,
    },
    /// Reachable peers that have not said whether they have a ring.
    Unanswered(Vec<PeerName>),
    /// A reachable ring-less peer with a smaller name creates the ring.
    SmallerPeer(PeerName),
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no ring yet: ")?;
        match self {
            WaitReason::InitialPeers {
                reached,
                total,
                unreached,
            } => {
                write!(f, "{reached} of {total} initial peers reachable: ")?;
                let list: Vec<String> = unreached
                    .iter()
                    .map(|(address, why)| format!("{address} ({why})"))
                    .collect();
                write!(f, "{}", list.join(", "))
            }
            WaitReason::Unanswered(peers) => {
                let list: Vec<String> = peers.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "asking {} reachable peer{} whether they have a ring: {}",
                    peers.len(),
                    if peers.len() == 1 { "" } else { "s" },
                    list.join(", ")
                )
            }
            WaitReason::SmallerPeer(peer) => write!(
                f,
                "all initial peers reachable, none has a ring; waiting for {peer} (the smallest name) to create it"
            ),
        }
    }
}

/// What a ring-less router should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Create,
    Wait(WaitReason),
}

/// The agreement's state on one router (see the module docs).
#[derive(Debug, Clone)]
pub struct RingAgreement {
    local: PeerName,
    initial: Vec<InitialPeer>,
    reachable: BTreeSet<PeerName>,
    /// Reachable peers that answered "no ring" since they last became reachable.
    ringless: BTreeSet<PeerName>,
    /// Reachable peers that answered with another allocation range: their rings can never be
    /// ours, so they take no part (a misconfiguration that `weft ipam check` names).
    foreign: BTreeSet<PeerName>,
    /// Queries in flight: to whom, sent when.
    asked: BTreeMap<PeerName, Instant>,
}

impl RingAgreement {
    pub fn new(local: PeerName) -> Self {
        RingAgreement {
            local,
            initial: Vec::new(),
            reachable: BTreeSet::new(),
            ringless: BTreeSet::new(),
            foreign: BTreeSet::new(),
            asked: BTreeMap::new(),
        }
    }

    /// The initial peers and their state now (the router supplies them on every step).
    pub fn set_initial(&mut self, initial: Vec<InitialPeer>) {
        self.initial = initial;
    }

    pub fn initial(&self) -> &[InitialPeer] {
        &self.initial
    }

    /// The peers reachable now. An answer from a peer that became unreachable is forgotten:
    /// it may have a ring when it returns.
    pub fn set_reachable(&mut self, reachable: &BTreeSet<PeerName>) {
        self.reachable = reachable
            .iter()
            .copied()
            .filter(|p| *p != self.local)
            .collect();
        self.ringless.retain(|p| reachable.contains(p));
        self.foreign.retain(|p| reachable.contains(p));
        self.asked.retain(|p, _| reachable.contains(p));
    }

    /// `peer` answered that it has no ring. Ignored unless it is reachable.
    pub fn answered_ringless(&mut self, peer: PeerName) {
        self.asked.remove(&peer);
        if self.reachable.contains(&peer) {
            self.ringless.insert(peer);
        }
    }

    /// `peer` answered with another allocation range. Ignored unless it is reachable.
    pub fn answered_foreign(&mut self, peer: PeerName) {
        self.asked.remove(&peer);
        if self.reachable.contains(&peer) {
            self.foreign.insert(peer);
        }
    }

    /// The reachable peers of our range: all but those that answered with another range.
    fn participants(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.reachable
            .iter()
            .copied()
            .filter(|p| !self.foreign.contains(p))
    }

    /// The reachable peers to ask now: those that have not answered and were not asked in the
    /// last `resend`. Records them as asked at `now`.
    pub fn queries(&mut self, now: Instant, resend: Duration) -> Vec<PeerName> {
        let due: Vec<PeerName> = self
            .participants()
            .filter(|p| !self.ringless.contains(p))
            .filter(|p| {
                self.asked
                    .get(p)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= resend)
            })
            .collect();
        for p in &due {
            self.asked.insert(*p, now);
        }
        due
    }

    /// The rule of the module docs.
    pub fn decide(&self) -> Decision {
        if self.initial.is_empty() {
            return Decision::Create;
        }
        let unreached: Vec<(String, String)> = self
            .initial
            .iter()
            .filter_map(|p| match &p.state {
                InitialPeerState::Reached(name)
                    if *name == self.local || self.reachable.contains(name) =>
                {
                    None
                }
                InitialPeerState::Reached(name) => Some((
                    p.address.clone(),
                    format!("connected to {name}, no route yet"),
                )),
                InitialPeerState::Unreached(why) => Some((p.address.clone(), why.clone())),
            })
            .collect();
        if !unreached.is_empty() {
            return Decision::Wait(WaitReason::InitialPeers {
                reached: self.initial.len() - unreached.len(),
                total: self.initial.len(),
                unreached,
            });
        }
        let unanswered: Vec<PeerName> = self
            .participants()
            .filter(|p| !self.ringless.contains(p))
            .collect();
        if !unanswered.is_empty() {
            return Decision::Wait(WaitReason::Unanswered(unanswered));
        }
        match self.participants().next() {
            Some(smaller) if smaller < self.local => {
                Decision::Wait(WaitReason::SmallerPeer(smaller))
            }
            _ => Decision::Create,
        }
    }
}

#[cfg(test)]
mod tests;
