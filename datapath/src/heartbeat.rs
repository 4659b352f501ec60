//! UDP path liveness of one peer link.
//!
//! The control connection to a peer runs over TCP, so it can be up while the UDP path the
//! sleeve uses is blocked (a firewall letting TCP 6783 through but not UDP, a NAT mapping that
//! expired). The router sends a sealed heartbeat datagram to each peer every `interval`
//! ([`Liveness::heartbeat_due`], [`Liveness::on_sent`]) and tells [`Liveness`] whenever *any*
//! authenticated datagram arrives from the peer ([`Liveness::on_heard`]): data proves the path
//! as well as a heartbeat does, and only authenticated datagrams count, so nobody can fake a
//! live path by spoofing UDP.
//!
//! The link is [`Health::Up`] while the peer was heard within `missed_intervals` intervals,
//! [`Health::Down`] with a reason for status when not, and [`Health::Starting`] while nothing
//! has been heard yet but the connection is younger than `startup_grace`.
//! [`Liveness::poll`] reports each change between up and down once, for the router to switch
//! datapaths or log. Pure: time comes in as arguments.

use std::fmt;
use std::time::{Duration, Instant};

/// The mesh's UDP port, named in reasons.
pub const DEFAULT_UDP_PORT: u16 = 6783;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MISSED_INTERVALS: u32 = 3;
/// Longer than the timeout: the first heartbeat also waits for the peer to set up its end of
/// the link, which can lag ours by the rest of the connection handshake.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// How often the router sends a heartbeat.
    pub interval: Duration,
    /// The link is down once the peer was silent for this many intervals (at least 1).
    pub missed_intervals: u32,
    /// How long a link that has never heard from its peer counts as starting, not down.
    pub startup_grace: Duration,
    /// The UDP port heartbeats go to, for the reason text.
    pub udp_port: u16,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            missed_intervals: DEFAULT_MISSED_INTERVALS,
            startup_grace: DEFAULT_STARTUP_GRACE,
            udp_port: DEFAULT_UDP_PORT,
        }
    }
}

impl LivenessConfig {
    /// How long the peer may stay silent before the link is down.
    pub fn timeout(&self) -> Duration {
        self.interval.saturating_mul(self.missed_intervals.max(1))
    }
}

/// Why a link is down, in words for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// The peer was heard before, but not for `silent_for`, while `sent_since` heartbeats went
    /// out.
    Silent {
        silent_for: Duration,
        sent_since: u32,
    },
    /// Nothing was ever heard from the peer, in `since_start`.
    NeverHeard {
        since_start: Duration,
        udp_port: u16,
    },
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Silent {
                silent_for,
                sent_since,
            } => write!(
                f,
                "no UDP heartbeat from the peer for {} (sent {sent_since} since)",
                Age(*silent_for)
            ),
            Self::NeverHeard {
                since_start,
                udp_port,
            } => write!(
                f,
                "no UDP heartbeat received since the connection started {} ago \
                 (UDP port {udp_port} blocked?)",
                Age(*since_start)
            ),
        }
    }
}

/// Whole seconds, or milliseconds below one second.
struct Age(Duration);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_secs(1) {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{}s", self.0.as_secs())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing heard yet, within the startup grace.
    Starting,
    Up,
    Down {
        reason: DownReason,
    },
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting => write!(f, "starting"),
            Self::Up => write!(f, "up"),
            Self::Down { reason } => write!(f, "down: {reason}"),
        }
    }
}

/// A change [`Liveness::poll`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The peer is heard (first time, or again after being down).
    Up,
    /// The link went down (from up, or from starting when the grace ran out).
    Down(DownReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    Starting,
    Up,
    Down,
}

/// Liveness of the UDP path to one peer.
#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    started_at: Instant,
    last_heard: Option<Instant>,
    last_sent: Option<Instant>,
    /// Heartbeats sent since the peer was last heard (or since the start).
    sent_since_heard: u32,
    reported: Reported,
}

impl Liveness {
    /// A link whose connection started at `now`.
    pub fn new(config: LivenessConfig, now: Instant) -> Self {
        Self {
            config,
            started_at: now,
            last_heard: None,
            last_sent: None,
            sent_since_heard: 0,
            reported: Reported::Starting,
        }
    }

    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// A heartbeat went out.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = Some(self.last_sent.map_or(now, |last| last.max(now)));
        self.sent_since_heard = self.sent_since_heard.saturating_add(1);
    }

    /// An authenticated datagram (heartbeat or any other) arrived from the peer.
    pub fn on_heard(&mut self, now: Instant) {
        // Datagrams may be handed over slightly out of order; never move the clock back.
        self.last_heard = Some(self.last_heard.map_or(now, |last| last.max(now)));
        self.sent_since_heard = 0;
    }

    /// Whether a heartbeat should go out now: none yet, or the last is an interval old.
    pub fn heartbeat_due(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|last| now.saturating_duration_since(last) >= self.config.interval)
    }

    /// How long ago the peer was last heard; None if never.
    pub fn heartbeat_age(&self, now: Instant) -> Option<Duration> {
        self.last_heard
            .map(|last| now.saturating_duration_since(last))
    }

    pub fn health(&self, now: Instant) -> Health {
        match self.heartbeat_age(now) {
            Some(age) if age <= self.config.timeout() => Health::Up,
            Some(age) => Health::Down {
                reason: DownReason::Silent {
                    silent_for: age,
                    sent_since: self.sent_since_heard,
                },
            },
            None => {
                let since_start = now.saturating_duration_since(self.started_at);
                if since_start < self.config.startup_grace {
                    Health::Starting
                } else {
                    Health::Down {
                        reason: DownReason::NeverHeard {
                            since_start,
                            udp_port: self.config.udp_port,
                        },
                    }
                }
            }
        }
    }

    /// The change since the last report, if any: each change between up and down is
    /// reported once (a flap back and forth between two polls is no change).
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        let (now_reported, transition) = match self.health(now) {
            // Only a clock running backwards leads back here once past it.
            Health::Starting => return None,
            Health::Up => (Reported::Up, Transition::Up),
            Health::Down { reason } => (Reported::Down, Transition::Down(reason)),
        };
        if now_reported == self.reported {
            return None;
        }
        self.reported = now_reported;
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_link_starts_then_comes_up_when_the_peer_is_heard() {
        let t0 = Instant::now();
        let mut link = Liveness::new(LivenessConfig::default(), t0);
        assert_eq!(link.health(t0), Health::Starting);
        assert_eq!(link.heartbeat_age(t0), None);
        assert_eq!(link.poll(t0 + secs(2)), None);
        link.on_heard(t0 + ms(2500));
        assert_eq!(link.health(t0 + secs(3)), Health::Up);
        assert_eq!(link.heartbeat_age(t0 + secs(3)), Some(ms(500)));
        assert_eq!(link.poll(t0 + secs(3)), Some(Transition::Up));
        assert_eq!(link.poll(t0 + secs(3)), None, "reported once");
        assert_eq!(link.health(t0 + secs(3)).to_string(), "up");
    }

    #[test]
    fn a_peer_never_heard_is_down_after_the_grace_with_a_hint_at_the_port() {
        let t0 = Instant::now();
        let mut link = Liveness::new(LivenessConfig::default(), t0);
        for n in 1..=5 {
            link.on_sent(t0 + secs(n));
        }
        assert_eq!(link.health(t0 + ms(4999)), Health::Starting);
        let reason = DownReason::NeverHeard {
            since_start: secs(5),
            udp_port: 6783,
        };
        assert_eq!(link.health(t0 + secs(5)), Health::Down { reason });
        assert_eq!(
            reason.to_string(),
            "no UDP heartbeat received since the connection started 5s ago \
             (UDP port 6783 blocked?)"
        );
        assert_eq!(link.poll(t0 + secs(5)), Some(Transition::Down(reason)));
        assert_eq!(link.poll(t0 + secs(6)), None, "reported once");
        // Heard at last: up.
        link.on_heard(t0 + secs(7));
        assert_eq!(link.poll(t0 + secs(7)), Some(Transition::Up));
    }

    #[test]
    fn a_silent_peer_goes_down_after_three_missed_intervals_and_comes_back() {
        let t0 = Instant::now();
        let mut link = Liveness::new(LivenessConfig::default(), t0);
        link.on_heard(t0 + secs(1));
        assert_eq!(link.poll(t0 + secs(1)), Some(Transition::Up));
        for n in 2..=5 {
            link.on_sent(t0 + secs(n));
        }
        // Three intervals of silence is the limit, still up; a moment more is down.
        assert_eq!(link.health(t0 + secs(4)), Health::Up);
        assert_eq!(link.poll(t0 + secs(4)), None);
        let reason = DownReason::Silent {
            silent_for: secs(4),
            sent_since: 4,
        };
        assert_eq!(link.health(t0 + secs(5)), Health::Down { reason });
        assert_eq!(
            reason.to_string(),
            "no UDP heartbeat from the peer for 4s (sent 4 since)"
        );
        assert_eq!(
            link.health(t0 + secs(5)).to_string(),
            "down: no UDP heartbeat from the peer for 4s (sent 4 since)"
        );
        assert_eq!(link.poll(t0 + secs(5)), Some(Transition::Down(reason)));
        assert_eq!(link.poll(t0 + secs(6)), None, "reported once");

        link.on_heard(t0 + secs(7));
        assert_eq!(link.heartbeat_age(t0 + secs(7)), Some(Duration::ZERO));
        assert_eq!(link.poll(t0 + secs(7)), Some(Transition::Up));
        assert_eq!(link.poll(t0 + secs(8)), None);
        // The count of heartbeats sent restarts with every datagram heard.
        link.on_sent(t0 + secs(8));
        assert_eq!(
            link.health(t0 + secs(11)),
            Health::Down {
                reason: DownReason::Silent {
                    silent_for: secs(4),
                    sent_since: 1
                }
            }
        );
    }

    #[test]
    fn a_flap_between_two_polls_is_no_change() {
        let t0 = Instant::now();
        let mut link = Liveness::new(LivenessConfig::default(), t0);
        link.on_heard(t0);
        assert_eq!(link.poll(t0), Some(Transition::Up));
        // Down at t0+4 unpolled, then heard again at t0+5.
        link.on_heard(t0 + secs(5));
        assert_eq!(link.poll(t0 + secs(5)), None);
    }

    #[test]
    fn heartbeats_are_due_every_interval() {
        let t0 = Instant::now();
        let mut link = Liveness::new(LivenessConfig::default(), t0);
        assert!(link.heartbeat_due(t0));
        link.on_sent(t0);
        assert!(!link.heartbeat_due(t0 + ms(999)));
        assert!(link.heartbeat_due(t0 + secs(1)));
    }

    #[test]
    fn the_config_sets_the_timeout_and_the_words() {
        let config = LivenessConfig {
            interval: ms(200),
            missed_intervals: 5,
            startup_grace: ms(500),
            udp_port: 7000,
        };
        assert_eq!(config.timeout(), secs(1));
        let t0 = Instant::now();
        let link = Liveness::new(config, t0);
        assert_eq!(
            link.health(t0 + ms(600)).to_string(),
            "down: no UDP heartbeat received since the connection started 600ms ago \
             (UDP port 7000 blocked?)"
        );
        let zero = LivenessConfig {
            missed_intervals: 0,
            ..LivenessConfig::default()
        };
        assert_eq!(zero.timeout(), secs(1), "at least one interval");
    }

    #[test]
    fn time_running_backwards_neither_panics_nor_rewinds() {
        let t0 = Instant::now() + secs(100);
        let mut link = Liveness::new(LivenessConfig::default(), t0);
        link.on_heard(t0 + secs(10));
        link.on_heard(t0 + secs(5));
        assert_eq!(link.heartbeat_age(t0 + secs(12)), Some(secs(2)));
        assert_eq!(link.heartbeat_age(t0), Some(Duration::ZERO));
        assert_eq!(link.health(t0 - secs(50)), Health::Up);
        link.on_sent(t0 + secs(20));
        link.on_sent(t0);
        assert!(!link.heartbeat_due(t0 + ms(20500)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Sent(Duration),
        Heard(Duration),
        Poll(Duration),
    }

    proptest! {
        /// Polls alternate between up and down, each transition agreeing with the health at
        /// that moment; down is never reported without a reason that matches the facts.
        #[test]
        fn transitions_alternate_and_agree_with_health(
            ops in prop::collection::vec(
                (0u64..3000, 0u8..3).prop_map(|(ms, kind)| {
                    let after = Duration::from_millis(ms);
                    match kind {
                        0 => Op::Sent(after),
                        1 => Op::Heard(after),
                        _ => Op::Poll(after),
                    }
                }),
                0..100,
            ),
        ) {
            let mut now = Instant::now();
            let mut link = Liveness::new(LivenessConfig::default(), now);
            let mut last: Option<bool> = None;
            for op in ops {
                match op {
                    Op::Sent(after) => {
                        now += after;
                        link.on_sent(now);
                    }
                    Op::Heard(after) => {
                        now += after;
                        link.on_heard(now);
                    }
                    Op::Poll(after) => {
                        now += after;
                        let health = link.health(now);
                        match link.poll(now) {
                            Some(Transition::Up) => {
                                prop_assert_ne!(last, Some(true));
                                prop_assert_eq!(health, Health::Up);
                                last = Some(true);
                            }
                            Some(Transition::Down(reason)) => {
                                prop_assert_ne!(last, Some(false));
                                prop_assert_eq!(health, Health::Down { reason });
                                last = Some(false);
                            }
                            None => match health {
                                Health::Starting => prop_assert_eq!(last, None),
                                Health::Up => prop_assert_eq!(last, Some(true)),
                                Health::Down { .. } => prop_assert_eq!(last, Some(false)),
                            },
                        }
                    }
                }
            }
        }
    }
}
