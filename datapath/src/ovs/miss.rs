//! What weft does when a packet misses every flow of its datapath and comes up as an upcall,
//! and when a flow has gone idle. Pure: the table, the flow parameters, packet counts and an
//! `Instant` in; decisions out (the upcall thread and the sweep in `kernel` do the I/O).
//!
//! The MAC table (MAC → the underlay address of its owner, built from the MAC gossip, the
//! routes and each connection's choice of datapath, as for the VXLAN device's FDB) is the
//! authority; the datapath's flows are a cache of it. A miss is answered with exactly the flow
//! the plan of [`super::flows`] would install for it, or not at all: never a flow toward a MAC
//! or a peer the table does not hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::flows::FlowParams;
use super::{Flow, FlowMatch, Upcall, UpcallKind};
use crate::mac::Mac;

/// Why a miss was not answered (the kernel has already dropped its packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unanswered {
    /// An upcall of a flow's `userspace` action, not a miss: weft's flows have none.
    NotAMiss,
    /// Another datapath's, or weft has no datapath (yet).
    OtherDatapath,
    /// The key lacks the in_port or the Ethernet header (a non-Ethernet packet).
    Incomplete,
    /// From a port that is neither the local port nor the VXLAN vport.
    UnknownPort,
    /// From the bridge, to a MAC the table does not hold (a peer's MAC on the sleeve, a
    /// broadcast, a MAC that just left).
    UnknownMac,
    /// From the VXLAN vport without tunnel metadata, or from a sender that owns no MAC of the
    /// table (a peer on the sleeve, a host weft does not know).
    UnknownPeer,
    /// From the VXLAN vport with another VNI.
    WrongVni,
}

impl Unanswered {
    pub const ALL: [Unanswered; 7] = [
        Unanswered::NotAMiss,
        Unanswered::OtherDatapath,
        Unanswered::Incomplete,
        Unanswered::UnknownPort,
        Unanswered::UnknownMac,
        Unanswered::UnknownPeer,
        Unanswered::WrongVni,
    ];

    /// The name in status and in the metric's `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unanswered::NotAMiss => "not_a_miss",
            Unanswered::OtherDatapath => "other_datapath",
            Unanswered::Incomplete => "incomplete",
            Unanswered::UnknownPort => "unknown_port",
            Unanswered::UnknownMac => "unknown_mac",
            Unanswered::UnknownPeer => "unknown_peer",
            Unanswered::WrongVni => "wrong_vni",
        }
    }
}

/// The one flow that answers `upcall`, from `table` (MAC → the owner's underlay address):
/// - from the local port (the bridge) to a group address: the group flow to `group` (the
///   fast leaves; none: a drop);
/// - from the local port (the bridge) to a MAC of the table: that MAC's outbound flow;
/// - from the VXLAN vport, with weft's VNI, from an address that owns a MAC of the table: that
///   peer's inbound flow.
///
/// Anything else is not answered, and why.
pub fn answer(
    params: &FlowParams,
    table: &BTreeMap<Mac, Ipv4Addr>,
    group: &BTreeSet<Ipv4Addr>,
    upcall: &Upcall,
) -> Result<Flow, Unanswered> {
    if upcall.kind != UpcallKind::Miss {
        return Err(Unanswered::NotAMiss);
    }
    let in_port = upcall.in_port.ok_or(Unanswered::Incomplete)?;
    if in_port == params.local {
        let dst = upcall.eth_dst.ok_or(Unanswered::Incomplete)?;
        if crate::mac::is_multicast(&dst) {
            return Ok(params.group(group));
        }
        let peer = table.get(&dst).ok_or(Unanswered::UnknownMac)?;
        Ok(params.outbound(dst, *peer))
    } else if in_port == params.vxlan {
        let tunnel = upcall.tunnel.ok_or(Unanswered::UnknownPeer)?;
        if tunnel.id != params.vni {
            return Err(Unanswered::WrongVni);
        }
        if !table.values().any(|peer| *peer == tunnel.src) {
            return Err(Unanswered::UnknownPeer);
        }
        Ok(params.inbound(tunnel.src))
    } else {
        Err(Unanswered::UnknownPort)
    }
}

/// Answered misses per second, sustained. Each costs two netlink round trips (the flow's put
/// and the packet's execute, tens of microseconds each) on the upcall thread; 500/s keeps that
/// thread at a few percent of a core under any flood. Misses are rare in steady state (flows
/// are installed from gossip before the first frame), so the bound only bites on a burst.
pub const MISS_RATE_PER_SEC: u32 = 500;
/// Answered misses allowed at once after a quiet spell: a node's worth of pods starting, or
/// every flow of the table coming back after a flush, is answered without waiting.
pub const MISS_BURST: u32 = 250;

/// A token bucket over answered misses. A miss beyond it is counted and not answered: the
/// kernel has dropped its packet already, and the next packet of that flow misses again, by
/// then probably within the budget.
#[derive(Debug, Clone)]
pub struct MissLimiter {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Default for MissLimiter {
    fn default() -> Self {
        Self::new(MISS_RATE_PER_SEC, MISS_BURST)
    }
}

impl MissLimiter {
    /// A full bucket of `burst`, refilled at `per_sec`.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            // A clock that went back (it does not, for Instant) refills nothing.
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long a flow may carry no packet before it is deleted. ovs-vswitchd's own default
/// (`max-idle`) is 10 s, because its flows are cheap to make again from OpenFlow tables and it
/// holds up to 200,000 of them; weft's are made again from the same table on the next miss, but
/// a longer timeout spares the upcall path the churn of pods that talk every few tens of
/// seconds. Checked at the engine's 10 s repair, so a flow goes 60-70 s after its last packet.
pub const FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Decides, from successive flow dumps with their packet counts, which flows have carried no
/// packet for the idle timeout.
#[derive(Debug, Clone)]
pub struct IdleExpiry {
    idle: Duration,
    /// Each flow's packet count when last seen, and when it last changed (or was first seen).
    seen: BTreeMap<FlowMatch, (u64, Instant)>,
}

impl Default for IdleExpiry {
    fn default() -> Self {
        Self::new(FLOW_IDLE_TIMEOUT)
    }
}

impl IdleExpiry {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            seen: BTreeMap::new(),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// One dump (each flow's match and packet count) at `now`: the flows to delete. Any change
    /// of the count is traffic (a count that went down is a flow deleted and put again). A flow
    /// first seen starts its idle time now, so an adopted or just-put flow gets the full
    /// timeout. Flows absent from the dump are forgotten; the returned ones too (the caller
    /// deletes them, and one whose delete failed starts over).
    pub fn observe(
        &mut self,
        now: Instant,
        dump: impl IntoIterator<Item = (FlowMatch, u64)>,
    ) -> Vec<FlowMatch> {
        let mut next = BTreeMap::new();
        let mut expired = Vec::new();
        for (matching, packets) in dump {
            let since = match self.seen.get(&matching) {
                Some(&(before, since)) if before == packets => since,
                _ => now,
            };
            if now.saturating_duration_since(since) >= self.idle {
                expired.push(matching);
            } else {
                next.insert(matching, (packets, since));
            }
        }
        self.seen = next;
        expired
    }
}

#[cfg(test)]
mod tests;
