//! Liveness of one link's UDP path, from heartbeats.
//!
//! Each router sends a sealed heartbeat to every peer it has a link to, every second (faster
//! while the link is not confirmed), and notes when any authenticated datagram last came from
//! the peer. The TCP control connection can be up while UDP is blocked (a firewall that allows
//! 6783/tcp only, say), so the sleeve must find out for itself: a link that hears nothing for
//! `timeout` is down, with a reason an operator can act on, and the router routes data around
//! it while control traffic stays direct. Pure: time comes from the caller.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Silence after which a link that worked is down.
    pub timeout: Duration,
    /// How long a new link may stay unconfirmed before that counts as down.
    pub grace: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            timeout: Duration::from_secs(3),
            grace: Duration::from_secs(3),
        }
    }
}

/// What a link's data path looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing heard yet, still within the grace period.
    Starting,
    Up,
    Down {
        reason: String,
    },
}

/// A change [`Liveness::poll`] reports, once per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    started: Instant,
    last_heard: Option<Instant>,
    /// Heartbeats sent since the last time anything was heard.
    sent_since_heard: u32,
    /// Whether the last reported state was up.
    reported_up: bool,
}

impl Liveness {
    pub fn new(config: LivenessConfig, now: Instant) -> Self {
        Liveness {
            config,
            started: now,
            last_heard: None,
            sent_since_heard: 0,
            reported_up: false,
        }
    }

    /// The silence after which the link is down from now on (a standby link, probed slowly,
    /// gets a longer one). What was heard so far is kept.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.config.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    pub fn on_sent(&mut self, _now: Instant) {
        self.sent_since_heard = self.sent_since_heard.saturating_add(1);
    }

    /// An authenticated datagram came from the peer at `at`.
    pub fn on_heard(&mut self, at: Instant) {
        if self.last_heard.is_none_or(|last| at > last) {
            self.last_heard = Some(at);
            self.sent_since_heard = 0;
        }
    }

    pub fn heartbeat_age(&self, now: Instant) -> Option<Duration> {
        self.last_heard.map(|at| now.saturating_duration_since(at))
    }

    /// Whether [`health`](Self::health) is [`Health::Up`], without building the reason it
    /// would give for a link that is down.
    pub fn is_up(&self, now: Instant) -> bool {
        self.last_heard
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.timeout)
    }

    pub fn health(&self, now: Instant) -> Health {
        match self.last_heard {
            Some(at) if now.saturating_duration_since(at) < self.config.timeout => Health::Up,
            Some(at) => Health::Down {
                reason: format!(
                    "no UDP heartbeat from the peer for {}s ({} sent since)",
                    now.saturating_duration_since(at).as_secs(),
                    self.sent_since_heard
                ),
            },
            None if now.saturating_duration_since(self.started) < self.config.grace => {
                Health::Starting
            }
            None => Health::Down {
                reason: format!(
                    "no UDP heartbeat received since the connection started {}s ago \
                     ({} sent; is UDP port 6783 blocked between the hosts?)",
                    now.saturating_duration_since(self.started).as_secs(),
                    self.sent_since_heard
                ),
            },
        }
    }

    /// Reports a change between up and not up since the last call, once.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        let up = self.health(now) == Health::Up;
        if up == self.reported_up {
            return None;
        }
        // A link that never came up reports Down once its grace period ends.
        if !up && !self.reported_up {
            return None;
        }
        self.reported_up = up;
        Some(if up { Transition::Up } else { Transition::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn a_link_comes_up_when_heard_and_goes_down_after_the_timeout() {
        let t = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t);
        assert_eq!(l.health(t), Health::Starting);
        assert_eq!(l.poll(t), None);
        l.on_sent(t);
        l.on_heard(t + secs(0.2));
        assert_eq!(l.health(t + secs(0.3)), Health::Up);
        assert_eq!(l.poll(t + secs(0.3)), Some(Transition::Up));
        assert_eq!(l.poll(t + secs(0.4)), None, "reported once");
        assert_eq!(l.heartbeat_age(t + secs(1.2)), Some(secs(1.0)));
        for i in 1..=4 {
            l.on_sent(t + secs(f64::from(i)));
        }
        let down = t + secs(3.5);
        let Health::Down { reason } = l.health(down) else {
            panic!("still up after 3.3s of silence");
        };
        assert_eq!(
            reason,
            "no UDP heartbeat from the peer for 3s (4 sent since)"
        );
        assert_eq!(l.poll(down), Some(Transition::Down));
        assert_eq!(l.poll(down), None);
        l.on_heard(down);
        assert_eq!(l.poll(down), Some(Transition::Up));
    }

    #[test]
    fn a_link_never_heard_is_down_after_the_grace_period_with_a_hint() {
        let t = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t);
        for i in 0..15 {
            l.on_sent(t + secs(f64::from(i) * 0.2));
        }
        let Health::Down { reason } = l.health(t + secs(5.0)) else {
            panic!("not down");
        };
        assert!(
            reason.contains("since the connection started 5s ago"),
            "{reason}"
        );
        assert!(reason.contains("15 sent"), "{reason}");
        // It was never reported up, so there is no transition to report.
        assert_eq!(l.poll(t + secs(5.0)), None);
    }

    #[test]
    fn is_up_agrees_with_health() {
        let t = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t);
        let check = |l: &Liveness, at: f64| {
            let now = t + secs(at);
            assert_eq!(l.is_up(now), l.health(now) == Health::Up, "at {at}s");
        };
        for at in [0.0, 1.0, 2.9, 3.0, 5.0] {
            check(&l, at);
        }
        l.on_heard(t + secs(4.0));
        for at in [3.0, 4.0, 6.9, 7.0, 8.0] {
            check(&l, at);
        }
    }

    #[test]
    fn late_or_reordered_reports_never_move_the_clock_back() {
        let t = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t);
        l.on_heard(t + secs(2.0));
        l.on_heard(t + secs(1.0));
        assert_eq!(l.heartbeat_age(t + secs(2.5)), Some(secs(0.5)));
    }
}
