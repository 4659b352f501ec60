//! `weft ipam check`: each peer's [`IpamView`] of the ring, and [`compare_views`], which says
//! in words an operator reads where peers' views differ. Pure: no channel state.

use super::*;

/// One owner's share of the ring as some peer sees it, in an [`IpamView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerView {
    /// `None`: chunks reclaimed from a departed peer and not adopted yet.
    pub owner: Option<PeerName>,
    pub chunks: u32,
    /// Addresses in those chunks, network and broadcast included (as in status).
    pub addresses: u64,
    /// Free addresses the owner announced (advisory).
    pub free: u64,
}

/// What one peer believes about the ring, compact enough to travel as one unicast frame
/// (`weft ipam check` gathers one from every reachable peer and compares them with
/// [`compare_views`]). At most [`MAX_VIEW_OWNERS`] owners, so a view encodes to under 21 KiB
/// whatever the cluster size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamView {
    pub peer: PeerName,
    pub range: Cidr,
    pub ring: Option<RingId>,
    /// [`GossipChannel::digest_hash`]: equal on two peers iff their rings are equal.
    pub ring_hash: u64,
    /// Per owner of a known chunk, sorted by owner (the unowned chunks, if any, first), cut
    /// after [`MAX_VIEW_OWNERS`] entries.
    pub owners: Vec<OwnerView>,
    /// Owners left out of `owners` by that cut.
    pub owners_omitted: u32,
    /// Local allocations.
    pub allocated: u64,
    /// Duplicate addresses detected here ([`IpamStatus::conflicts`]).
    pub conflicts: u64,
}

/// Owners listed in an [`IpamView`]. Each encodes to at most 20 bytes (tag, 48-bit name, chunk
/// count up to [`MAX_CHUNKS`], two counts up to 2^32), so a view stays under 21 KiB, a third
/// of a 64 KiB frame, and covers clusters of a thousand owning peers completely; beyond that
/// the owners with the largest names are only counted (`owners_omitted`) and the ring hash
/// still tells whether two rings differ.
pub const MAX_VIEW_OWNERS: usize = 1024;

impl IpamView {
    /// Structural checks on a view received from the network: bounded, sorted, consistent
    /// counts. Says nothing about whether it agrees with ours.
    pub(super) fn validate(&self) -> Result<(), ChannelError> {
        let bad = |why: &str| Err(ChannelError::Invalid(format!("bad IPAM view: {why}")));
        if !valid_name(self.peer) || !self.range.valid() {
            return bad("peer name or range");
        }
        if self.ring.is_some_and(|r| !valid_name(r.genesis)) {
            return bad("ring id names no peer");
        }
        if self.owners.len() > MAX_VIEW_OWNERS || self.owners_omitted as usize > MAX_CHUNKS {
            return bad("too many owners");
        }
        if self.ring.is_none() && (!self.owners.is_empty() || self.owners_omitted > 0) {
            return bad("owners without a ring");
        }
        if self.owners.windows(2).any(|w| w[0].owner >= w[1].owner) {
            return bad("owners not sorted or repeated");
        }
        let mut chunks = 0usize;
        for o in &self.owners {
            chunks = chunks.saturating_add(o.chunks as usize);
            if o.owner.is_some_and(|p| !valid_name(p))
                || o.addresses > self.range.size()
                || o.free > o.addresses
            {
                return bad("owner counts");
            }
        }
        if chunks > MAX_CHUNKS {
            return bad("more chunks than a ring has");
        }
        Ok(())
    }

    /// `owner`'s counts `(chunks, addresses, free)` in this view; `None` if the owner may
    /// have been cut from the list, so the view cannot say.
    fn counts_of(&self, owner: Option<PeerName>) -> Option<(u32, u64, u64)> {
        match self.owners.iter().find(|o| o.owner == owner) {
            Some(o) => Some((o.chunks, o.addresses, o.free)),
            None if self.owners_omitted > 0 && self.owners.iter().all(|o| o.owner < owner) => None,
            None => Some((0, 0, 0)),
        }
    }
}

/// Peers that share a value in a [`ViewDifference`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeGroup {
    pub range: Cidr,
    pub peers: Vec<PeerName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RingGroup {
    /// `None`: no ring yet.
    pub ring: Option<RingId>,
    pub peers: Vec<PeerName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerCounts {
    pub peers: Vec<PeerName>,
    pub chunks: u32,
    pub addresses: u64,
    pub free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashGroup {
    pub ring_hash: u64,
    pub peers: Vec<PeerName>,
}

/// One way in which peers' [`IpamView`]s disagree; see [`compare_views`]. `Display` says it
/// in an operator's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ViewDifference {
    /// Peers configured with different `--ipalloc-range`s, which ignore each other's rings.
    Range { groups: Vec<RangeGroup> },
    /// Peers of one range holding different rings (or none), oldest ring first.
    Ring { range: Cidr, groups: Vec<RingGroup> },
    /// Peers of one ring that see different shares for `owner` (`None`: unowned chunks).
    Owner {
        ring: RingId,
        owner: Option<PeerName>,
        seen: Vec<OwnerCounts>,
    },
    /// Peers of one ring whose rings differ (different hashes) although the counts of every
    /// owner their views list agree: only entry versions differ.
    Versions {
        ring: RingId,
        groups: Vec<HashGroup>,
    },
    /// A peer that detected duplicate addresses.
    Conflicts { peer: PeerName, conflicts: u64 },
}

/// "a", "a and b", "a, b and c".
fn name_list(peers: &[PeerName]) -> String {
    let names: Vec<String> = peers.iter().map(PeerName::to_string).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// "a sees" / "a and b see".
fn names_verb(peers: &[PeerName], singular: &str, plural: &str) -> String {
    let verb = if peers.len() == 1 { singular } else { plural };
    format!("{} {verb}", name_list(peers))
}

/// "peer a holds" / "peers a and b hold".
fn peers_verb(peers: &[PeerName], singular: &str, plural: &str) -> String {
    let noun = if peers.len() == 1 { "peer" } else { "peers" };
    format!("{noun} {}", names_verb(peers, singular, plural))
}

impl fmt::Display for ViewDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewDifference::Range { groups } => {
                let held: Vec<String> = groups
                    .iter()
                    .map(|g| format!("{} {}", peers_verb(&g.peers, "has", "have"), g.range))
                    .collect();
                write!(
                    f,
                    "different allocation ranges: {}; peers with different ranges ignore each \
                     other's rings, give every peer the same --ipalloc-range",
                    held.join(", ")
                )
            }
            ViewDifference::Ring { range, groups } => {
                let held: Vec<String> = groups
                    .iter()
                    .map(|g| match g.ring {
                        Some(r) => format!("{} ring {r}", peers_verb(&g.peers, "holds", "hold")),
                        None => format!("{} no ring yet", peers_verb(&g.peers, "holds", "hold")),
                    })
                    .collect();
                write!(f, "different rings in {range}: {}", held.join(", "))?;
                let rings: Vec<RingId> = groups.iter().filter_map(|g| g.ring).collect();
                match rings.first() {
                    Some(oldest) if rings.len() > 1 => {
                        write!(f, " (the older ring, {oldest}, wins once they connect)")
                    }
                    Some(only) => {
                        write!(f, " (peers without a ring take {only} once they connect)")
                    }
                    None => Ok(()),
                }
            }
            ViewDifference::Owner { ring, owner, seen } => {
                match owner {
                    Some(o) => write!(f, "owner {o} in ring {ring}: ")?,
                    None => write!(
                        f,
                        "unowned (reclaimed, not yet adopted) chunks in ring {ring}: "
                    )?,
                }
                let seen: Vec<String> = seen
                    .iter()
                    .map(|s| {
                        let who = names_verb(&s.peers, "sees", "see");
                        if s.chunks == 0 {
                            format!("{who} none")
                        } else {
                            format!("{who} {} addresses ({} free)", s.addresses, s.free)
                        }
                    })
                    .collect();
                write!(f, "{}", seen.join(", "))
            }
            ViewDifference::Versions { ring, groups } => {
                let hashes: Vec<String> = groups
                    .iter()
                    .map(|g| format!("{:016x} on {}", g.ring_hash, name_list(&g.peers)))
                    .collect();
                write!(
                    f,
                    "ring {ring} differs between peers (hash {}) although every owner's address \
                     and free counts agree: only entry versions differ, an update has not \
                     reached every peer yet",
                    hashes.join(", ")
                )
            }
            ViewDifference::Conflicts { peer, conflicts } => write!(
                f,
                "peer {peer} detected {conflicts} duplicate address{} (listed in its IPAM status)",
                if *conflicts == 1 { "" } else { "es" }
            ),
        }
    }
}

/// Where peers' views disagree, most fundamental first: allocation ranges; then, per range,
/// rings; then, per ring whose peers' hashes differ, each owner whose share they see
/// differently (or, if every owner's counts agree, that only versions differ); last, peers
/// that detected duplicates. Empty when all agree. A peer given twice counts once.
pub fn compare_views(views: &[IpamView]) -> Vec<ViewDifference> {
    let mut views: Vec<&IpamView> = views.iter().collect();
    // Stable: of a peer given twice, the first view is kept.
    views.sort_by_key(|v| v.peer);
    views.dedup_by_key(|v| v.peer);
    let mut diffs = Vec::new();
    let by_range = group_by(&views, |v| v.range);
    if by_range.len() > 1 {
        let groups = by_range
            .iter()
            .map(|(range, vs)| RangeGroup {
                range: *range,
                peers: vs.iter().map(|v| v.peer).collect(),
            })
            .collect();
        diffs.push(ViewDifference::Range { groups });
    }
    for (range, in_range) in &by_range {
        let by_ring = group_by(in_range, |v| v.ring);
        if by_ring.len() > 1 {
            // Oldest ring first (the one that wins), peers without a ring last.
            let (with, without): (Vec<_>, Vec<_>) =
                by_ring.iter().partition(|(ring, _)| ring.is_some());
            let groups = with
                .into_iter()
                .chain(without)
                .map(|(ring, vs)| RingGroup {
                    ring: *ring,
                    peers: vs.iter().map(|v| v.peer).collect(),
                })
                .collect();
            diffs.push(ViewDifference::Ring {
                range: *range,
                groups,
            });
        }
        for (ring, in_ring) in &by_ring {
            if let Some(ring) = ring {
                compare_ring(*ring, in_ring, &mut diffs);
            }
        }
    }
    for v in &views {
        if v.conflicts > 0 {
            diffs.push(ViewDifference::Conflicts {
                peer: v.peer,
                conflicts: v.conflicts,
            });
        }
    }
    diffs
}

/// Views grouped by `key`, each group in the order given.
fn group_by<'a, K: Ord>(
    views: &[&'a IpamView],
    key: impl Fn(&IpamView) -> K,
) -> BTreeMap<K, Vec<&'a IpamView>> {
    let mut groups: BTreeMap<K, Vec<&IpamView>> = BTreeMap::new();
    for v in views {
        groups.entry(key(v)).or_default().push(*v);
    }
    groups
}

/// Differences among views of one ring, sorted by peer.
fn compare_ring(ring: RingId, views: &[&IpamView], diffs: &mut Vec<ViewDifference>) {
    let by_hash = group_by(views, |v| v.ring_hash);
    if by_hash.len() <= 1 {
        return;
    }
    let owners: BTreeSet<Option<PeerName>> = views
        .iter()
        .flat_map(|v| v.owners.iter().map(|o| o.owner))
        .collect();
    let mut owner_differs = false;
    for owner in owners {
        let mut counts: BTreeMap<(u32, u64, u64), Vec<PeerName>> = BTreeMap::new();
        for v in views {
            if let Some(c) = v.counts_of(owner) {
                counts.entry(c).or_default().push(v.peer);
            }
        }
        if counts.len() <= 1 {
            continue;
        }
        owner_differs = true;
        let mut seen: Vec<OwnerCounts> = counts
            .into_iter()
            .map(|((chunks, addresses, free), peers)| OwnerCounts {
                peers,
                chunks,
                addresses,
                free,
            })
            .collect();
        seen.sort_by_key(|s| s.peers.first().copied());
        diffs.push(ViewDifference::Owner { ring, owner, seen });
    }
    if !owner_differs {
        let groups = by_hash
            .into_iter()
            .map(|(ring_hash, vs)| HashGroup {
                ring_hash,
                peers: vs.iter().map(|v| v.peer).collect(),
            })
            .collect();
        diffs.push(ViewDifference::Versions { ring, groups });
    }
}
