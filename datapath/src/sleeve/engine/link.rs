//! One link of the sleeve engine (a peer connection): its codec state, counters, and what the
//! housekeeping thread keeps per link (liveness, path-MTU search, standby). The decisions here
//! are pure: time comes from the caller.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use super::IPV4_UDP;
use crate::PeerId;
use crate::heartbeat::{Health, Liveness, LivenessConfig};
use crate::pmtu::{IPV4_FLOOR, PmtuConfig, PmtuPhase, PmtuProber};
use crate::sleeve::codec::{Decapsulator, Encapsulator};

/// Heartbeats on a link whose data path works, and on one still starting or down (faster, so
/// a new or healed link is confirmed quickly).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
pub const HEARTBEAT_INTERVAL_UNCONFIRMED: Duration = Duration::from_millis(200);
/// Silence after which a link in use is down (`heartbeat::LivenessConfig`'s default).
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
/// A standby link (its connection's unicast takes another datapath; the sleeve still carries
/// broadcast, multicast, unknown unicast and relayed frames on it) is probed slowly: a
/// heartbeat every 10 s while it works, and 30 s of silence before it counts as down (three
/// heartbeats lost, as for a link in use). Any datagram from the peer still counts as hearing
/// it, so a standby link that carries broadcasts needs no probes at all.
pub const STANDBY_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
pub const STANDBY_LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// A standby link not (yet, or no longer) confirmed is probed once a second, not every 200 ms:
/// nothing waits for it, but it must be ready when the other datapath fails.
pub const STANDBY_HEARTBEAT_INTERVAL_UNCONFIRMED: Duration = Duration::from_secs(1);
/// A path-MTU probe unanswered this long is lost (hosts of one cluster are milliseconds
/// apart); three losses and its size counts as too big.
const PMTU_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often to send heartbeats on a link: slower when it works, slower still on standby.
pub fn heartbeat_interval(standby: bool, up: bool) -> Duration {
    match (standby, up) {
        (false, true) => HEARTBEAT_INTERVAL,
        (false, false) => HEARTBEAT_INTERVAL_UNCONFIRMED,
        (true, true) => STANDBY_HEARTBEAT_INTERVAL,
        (true, false) => STANDBY_HEARTBEAT_INTERVAL_UNCONFIRMED,
    }
}

/// The silence after which a link counts as down.
pub fn liveness_timeout(standby: bool) -> Duration {
    if standby {
        STANDBY_LIVENESS_TIMEOUT
    } else {
        LIVENESS_TIMEOUT
    }
}

/// Whether a heartbeat is due at `now`, given when the last one went.
pub fn heartbeat_due(last: Option<Instant>, interval: Duration, now: Instant) -> bool {
    last.is_none_or(|sent| now.saturating_duration_since(sent) >= interval)
}

pub(super) struct PeerLink {
    pub(super) peer: PeerId,
    pub(super) conn: u64,
    pub(super) addr: SocketAddr,
    /// The header every datagram to the peer starts with ([`Encapsulator::begin`]): it depends
    /// only on the sender and whether the link seals, so batches take it from here and lock
    /// `encap` only to seal.
    pub(super) header: Box<[u8]>,
    pub(super) encap: Mutex<Encapsulator>,
    pub(super) decap: Mutex<Decapsulator>,
    /// When an authenticated datagram last came from the peer: nanoseconds since the
    /// engine's epoch, 0 for never. Written per datagram, so an atomic, not the lock.
    pub(super) last_heard: AtomicU64,
    /// The largest UDP payload to the peer: the path MTU found by probing, less IP and UDP.
    pub(super) max_datagram: AtomicUsize,
    pub(super) state: Mutex<LinkState>,
    pub(super) counters: LinkCounters,
}

impl PeerLink {
    pub(super) fn new(
        peer: PeerId,
        conn: u64,
        addr: SocketAddr,
        encap: Encapsulator,
        decap: Decapsulator,
        underlay_mtu: u16,
        now: Instant,
    ) -> Self {
        let mut header = Vec::new();
        encap.begin(&mut header);
        PeerLink {
            peer,
            conn,
            addr,
            header: header.into_boxed_slice(),
            encap: Mutex::new(encap),
            decap: Mutex::new(decap),
            last_heard: AtomicU64::new(0),
            max_datagram: AtomicUsize::new(usize::from(IPV4_FLOOR) - IPV4_UDP),
            state: Mutex::new(LinkState::new(underlay_mtu, now)),
            counters: LinkCounters::default(),
        }
    }
}

/// What the housekeeping thread keeps per link.
pub(super) struct LinkState {
    pub(super) liveness: Liveness,
    pub(super) last_heartbeat: Option<Instant>,
    pub(super) pmtu: PmtuProber,
    /// The path MTU search has finished at least once; until then the link carries no data
    /// (a path MTU still rising from the floor would make pods cache a tiny one).
    pub(super) pmtu_settled: bool,
    /// What the router was last told: the data path works.
    pub(super) reported_up: bool,
    /// The link is probed slowly (see [`STANDBY_HEARTBEAT_INTERVAL`]).
    pub(super) standby: bool,
}

impl LinkState {
    pub(super) fn new(underlay_mtu: u16, now: Instant) -> Self {
        LinkState {
            liveness: Liveness::new(
                LivenessConfig {
                    timeout: LIVENESS_TIMEOUT,
                    ..LivenessConfig::default()
                },
                now,
            ),
            last_heartbeat: None,
            pmtu: PmtuProber::new(PmtuConfig {
                probe_timeout: PMTU_PROBE_TIMEOUT,
                ..PmtuConfig::new(IPV4_FLOOR, underlay_mtu)
            }),
            pmtu_settled: false,
            reported_up: false,
            standby: false,
        }
    }

    /// Moves the link to or from standby. Leaving it makes a heartbeat due at once (the link
    /// is about to carry unicast again and the peer should hear from it soon).
    pub(super) fn set_standby(&mut self, standby: bool) {
        if standby == self.standby {
            return;
        }
        self.standby = standby;
        self.liveness.set_timeout(liveness_timeout(standby));
        if !standby {
            self.last_heartbeat = None;
        }
    }

    /// Whether a heartbeat should go now.
    pub(super) fn heartbeat_due(&self, now: Instant) -> bool {
        let interval = heartbeat_interval(self.standby, self.liveness.is_up(now));
        heartbeat_due(self.last_heartbeat, interval, now)
    }

    /// Whether [`data_path`](Self::data_path) is [`Health::Up`], without building a reason.
    pub(super) fn data_path_up(&self, now: Instant) -> bool {
        self.pmtu_settled && self.liveness.is_up(now)
    }

    /// Whether the link carries data, and if not, why.
    pub(super) fn data_path(&self, now: Instant) -> (Health, Option<String>) {
        match self.liveness.health(now) {
            Health::Up if !self.pmtu_settled => {
                let state = self.pmtu.state();
                let probing = match state.phase {
                    PmtuPhase::Probing {
                        probe: Some(size), ..
                    } => format!(", probing {size}"),
                    _ => String::new(),
                };
                let reason = format!("measuring the path MTU ({}{probing})", state.reason);
                (Health::Starting, Some(reason))
            }
            Health::Down { reason } => (
                Health::Down {
                    reason: reason.clone(),
                },
                Some(reason),
            ),
            health => (health, None),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct LinkCounters {
    pub(super) datagrams_out: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) datagrams_in: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) drop_auth: AtomicU64,
    pub(super) drop_replay: AtomicU64,
    pub(super) drop_malformed: AtomicU64,
    pub(super) send_errors: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_standby_link_is_probed_ten_times_slower_and_forgiven_ten_times_longer() {
        assert_eq!(heartbeat_interval(false, true), secs(1));
        assert_eq!(heartbeat_interval(true, true), secs(10));
        assert_eq!(liveness_timeout(false), secs(3));
        assert_eq!(liveness_timeout(true), secs(30));
        // Unconfirmed links are probed faster than confirmed ones, standby or not, and a
        // standby link never faster than a link in use.
        for standby in [false, true] {
            assert!(heartbeat_interval(standby, false) < heartbeat_interval(standby, true));
            // Three heartbeats fit in the timeout: one loss never takes a link down.
            assert_eq!(
                liveness_timeout(standby),
                3 * heartbeat_interval(standby, true)
            );
        }
        for up in [false, true] {
            assert!(heartbeat_interval(true, up) > heartbeat_interval(false, up));
        }
    }

    #[test]
    fn heartbeats_are_due_once_per_interval() {
        let t = Instant::now();
        assert!(heartbeat_due(None, secs(10), t));
        assert!(!heartbeat_due(Some(t), secs(10), t + secs(9)));
        assert!(heartbeat_due(Some(t), secs(10), t + secs(10)));
    }

    #[test]
    fn a_standby_link_stays_up_through_silences_that_take_a_link_in_use_down() {
        let t = Instant::now();
        let mut state = LinkState::new(1500, t);
        state.pmtu_settled = true;
        state.liveness.on_heard(t);
        state.last_heartbeat = Some(t);
        assert!(state.data_path_up(t + secs(1)));
        assert!(!state.data_path_up(t + secs(5)), "3 s timeout in use");
        assert!(state.heartbeat_due(t + secs(1)));

        state.set_standby(true);
        assert!(state.data_path_up(t + secs(20)), "30 s timeout on standby");
        assert!(!state.data_path_up(t + secs(31)));
        assert!(!state.heartbeat_due(t + secs(9)));
        assert!(state.heartbeat_due(t + secs(10)));
        let (health, reason) = state.data_path(t + secs(31));
        assert!(matches!(health, Health::Down { .. }), "{health:?}");
        assert!(reason.unwrap().contains("for 31s"));

        // Back in use: the short timeout again, and a heartbeat at once.
        state.last_heartbeat = Some(t + secs(10));
        state.liveness.on_heard(t + secs(10));
        state.set_standby(false);
        assert!(state.heartbeat_due(t + secs(10)));
        assert!(state.data_path_up(t + secs(12)));
        assert!(!state.data_path_up(t + secs(14)));
    }

    #[test]
    fn a_standby_link_still_unconfirmed_is_probed_every_second() {
        let t = Instant::now();
        let mut state = LinkState::new(1500, t);
        state.set_standby(true);
        state.last_heartbeat = Some(t);
        assert!(!state.heartbeat_due(t + Duration::from_millis(500)));
        assert!(state.heartbeat_due(t + secs(1)));
        // Setting the same value again changes nothing.
        state.set_standby(true);
        assert!(!state.heartbeat_due(t + Duration::from_millis(500)));
    }
}
