//! The connection maker: which addresses to dial and when, without doing any dialing.
//!
//! Targets are the direct peers an operator named (command line, `weft connect`, the persisted
//! list) plus addresses learned from gossip for peers we have no connection to. A failed dial
//! waits a jittered, growing delay (2 s, ×1.5 per failure, at most 5 minutes) so a broken host
//! is not hammered and a mesh that restarts at once does not dial in lock-step. Dials to
//! ourselves and name collisions are never retried. The caller supplies time and randomness,
//! which keeps this testable.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A connection that lived this long resets the backoff: its failure is news, not a pattern.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSource {
    /// Named by an operator; kept until forgotten.
    Direct,
    /// Learned from gossip; dropped when no peer mentions it any more.
    Discovered,
}

impl TargetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSource::Direct => "direct",
            TargetSource::Discovered => "discovered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Will be dialled at `at`.
    Waiting { at: Instant },
    /// A dial or handshake is in progress.
    Attempting,
    /// A connection through this address is up.
    Connected,
    /// Will not be retried (ourselves, a name collision) until an operator asks again.
    Failed,
}

#[derive(Debug, Clone)]
struct Target {
    source: TargetSource,
    state: TargetState,
    backoff: Duration,
    attempts: u32,
    last_error: Option<String>,
}

/// A target as shown in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    pub address: String,
    pub source: TargetSource,
    /// `waiting`, `connecting`, `connected`, `retrying` or `failed`.
    pub state: &'static str,
    pub attempts: u32,
    /// Seconds until the next attempt, when waiting.
    pub retry_in_secs: Option<u64>,
    pub last_error: Option<String>,
}

/// What the dial outcome means for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the backoff.
    Later,
    /// Do not try this address again (it is us, or a name collision).
    Never,
}

#[derive(Debug, Default)]
pub struct ConnectionMaker {
    targets: BTreeMap<String, Target>,
    /// The addresses gossip mentions now. A discovered target whose dial was in flight when
    /// gossip stopped mentioning it is dropped as soon as the dial fails.
    discovered: BTreeSet<String>,
}

impl ConnectionMaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or re-arms) an operator-named target: it is dialled at once, even if it had failed.
    pub fn add_direct(&mut self, address: &str, now: Instant) {
        let target = self
            .targets
            .entry(address.to_owned())
            .or_insert_with(|| Target::new(TargetSource::Direct, now));
        target.source = TargetSource::Direct;
        if target.state != TargetState::Connected && target.state != TargetState::Attempting {
            target.state = TargetState::Waiting { at: now };
            target.backoff = INITIAL_BACKOFF;
        }
    }

    /// Forgets a target. Returns whether it was known.
    pub fn forget(&mut self, address: &str) -> bool {
        self.targets.remove(address).is_some()
    }

    /// Whether `address` is a target.
    pub fn contains(&self, address: &str) -> bool {
        self.targets.contains_key(address)
    }

    pub fn direct_targets(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|(_, t)| t.source == TargetSource::Direct)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Replaces the set of discovered addresses: new ones are added, discovered targets not in
    /// `addresses` and not in use are dropped. Direct targets are untouched.
    pub fn set_discovered(&mut self, addresses: &BTreeSet<String>, now: Instant) {
        self.discovered.clone_from(addresses);
        self.targets.retain(|address, t| {
            t.source == TargetSource::Direct
                || addresses.contains(address)
                || matches!(t.state, TargetState::Attempting | TargetState::Connected)
        });
        for address in addresses {
            self.targets
                .entry(address.clone())
                .or_insert_with(|| Target::new(TargetSource::Discovered, now));
        }
    }

    /// Targets due for a dial, at most `budget` of them; they become `Attempting`.
    pub fn due(&mut self, now: Instant, budget: usize) -> Vec<String> {
        let mut dials = Vec::new();
        for (address, target) in &mut self.targets {
            if dials.len() >= budget {
                break;
            }
            if let TargetState::Waiting { at } = target.state
                && at <= now
            {
                target.state = TargetState::Attempting;
                target.attempts += 1;
                dials.push(address.clone());
            }
        }
        dials
    }

    /// The earliest time a waiting target becomes due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.state {
                TargetState::Waiting { at } => Some(at),
                _ => None,
            })
            .min()
    }

    /// A dial or handshake failed. `jitter` in `[0, 1)` spreads retries.
    pub fn failed(
        &mut self,
        address: &str,
        now: Instant,
        reason: String,
        retry: Retry,
        jitter: f64,
    ) {
        if self.is_stale(address) {
            self.targets.remove(address);
            return;
        }
        let Some(target) = self.targets.get_mut(address) else {
            return;
        };
        target.last_error = Some(reason);
        match retry {
            Retry::Never => target.state = TargetState::Failed,
            Retry::Later => {
                let delay = jittered(target.backoff, jitter);
                target.state = TargetState::Waiting { at: now + delay };
                target.backoff = target.backoff.mul_f64(1.5).min(MAX_BACKOFF);
            }
        }
    }

    /// A connection through this address is up.
    pub fn connected(&mut self, address: &str) {
        if let Some(target) = self.targets.get_mut(address) {
            target.state = TargetState::Connected;
            target.last_error = None;
        }
    }

    /// A connection through this address ended after living `lived`.
    pub fn disconnected(
        &mut self,
        address: &str,
        now: Instant,
        lived: Duration,
        reason: String,
        jitter: f64,
    ) {
        // No staleness check here: while connected, a peer's address is left out of the
        // discovered set on purpose. The next `set_discovered` prunes it if gossip has
        // forgotten the peer, and keeps its backoff if not.
        let Some(target) = self.targets.get_mut(address) else {
            return;
        };
        if lived >= STABLE_CONNECTION {
            target.backoff = INITIAL_BACKOFF;
            target.state = TargetState::Waiting { at: now };
            target.last_error = Some(reason);
        } else {
            self.failed(address, now, reason, Retry::Later, jitter);
        }
    }

    /// A discovered target that gossip no longer mentions.
    fn is_stale(&self, address: &str) -> bool {
        self.targets
            .get(address)
            .is_some_and(|t| t.source == TargetSource::Discovered)
            && !self.discovered.contains(address)
    }

    pub fn status(&self, now: Instant) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|(address, t)| {
                let (state, retry_in_secs) = match t.state {
                    TargetState::Waiting { at } if t.last_error.is_some() => (
                        "retrying",
                        Some(at.saturating_duration_since(now).as_secs()),
                    ),
                    TargetState::Waiting { at } => {
                        ("waiting", Some(at.saturating_duration_since(now).as_secs()))
                    }
                    TargetState::Attempting => ("connecting", None),
                    TargetState::Connected => ("connected", None),
                    TargetState::Failed => ("failed", None),
                };
                TargetStatus {
                    address: address.clone(),
                    source: t.source,
                    state,
                    attempts: t.attempts,
                    retry_in_secs,
                    last_error: t.last_error.clone(),
                }
            })
            .collect()
    }
}

impl Target {
    fn new(source: TargetSource, now: Instant) -> Self {
        Target {
            source,
            state: TargetState::Waiting { at: now },
            backoff: INITIAL_BACKOFF,
            attempts: 0,
            last_error: None,
        }
    }
}

/// A delay uniformly in `[base/2, 3·base/2)`.
fn jittered(base: Duration, jitter: f64) -> Duration {
    base.mul_f64(0.5 + jitter.clamp(0.0, 0.999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_direct_targets_are_dialled_at_once() {
        let now = Instant::now();
        let mut maker = ConnectionMaker::new();
        maker.add_direct("10.0.0.2:6783", now);
        assert_eq!(maker.due(now, 10), vec!["10.0.0.2:6783"]);
        assert!(
            maker.due(now, 10).is_empty(),
            "an attempt in progress is not dialled again"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let start = Instant::now();
        let mut now = start;
        let mut maker = ConnectionMaker::new();
        maker.add_direct("a:1", now);
        let mut delays = Vec::new();
        for _ in 0..30 {
            assert_eq!(maker.due(now, 1).len(), 1);
            maker.failed("a:1", now, "refused".into(), Retry::Later, 0.5);
            let at = maker.next_wakeup().unwrap();
            delays.push(at - now);
            assert!(maker.due(at - Duration::from_millis(1), 1).is_empty());
            now = at;
        }
        assert_eq!(delays[0], INITIAL_BACKOFF);
        assert!(delays[1] > delays[0]);
        assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
        // Jitter spreads the delay over [base/2, 3·base/2).
        assert_eq!(
            jittered(Duration::from_secs(2), 0.0),
            Duration::from_secs(1)
        );
        assert!(jittered(Duration::from_secs(2), 1.0) < Duration::from_secs(3));
    }

    #[test]
    fn self_connections_are_never_retried_until_asked_again() {
        let now = Instant::now();
        let mut maker = ConnectionMaker::new();
        maker.add_direct("me:6783", now);
        maker.due(now, 1);
        maker.failed(
            "me:6783",
            now,
            "cannot connect to ourself".into(),
            Retry::Never,
            0.0,
        );
        assert_eq!(maker.next_wakeup(), None);
        assert_eq!(maker.status(now)[0].state, "failed");
        maker.add_direct("me:6783", now);
        assert_eq!(maker.due(now, 1).len(), 1);
    }

    #[test]
    fn the_budget_limits_dials() {
        let now = Instant::now();
        let mut maker = ConnectionMaker::new();
        for i in 0..5 {
            maker.add_direct(&format!("h{i}:1"), now);
        }
        assert_eq!(maker.due(now, 2).len(), 2);
        assert_eq!(maker.due(now, 0).len(), 0);
        assert_eq!(maker.due(now, 10).len(), 3);
    }

    #[test]
    fn discovered_targets_follow_gossip_but_direct_ones_stay() {
        let now = Instant::now();
        let mut maker = ConnectionMaker::new();
        maker.add_direct("d:1", now);
        maker.set_discovered(&["x:1".to_owned(), "y:1".to_owned()].into(), now);
        assert_eq!(maker.due(now, 2), vec!["d:1", "x:1"]);
        maker.connected("x:1");
        maker.set_discovered(&BTreeSet::new(), now);
        let left: Vec<_> = maker.status(now).into_iter().map(|t| t.address).collect();
        assert_eq!(
            left,
            vec!["d:1", "x:1"],
            "y was never connected and is no longer gossiped"
        );
        assert!(maker.forget("d:1"));
        assert!(!maker.forget("d:1"));
    }

    #[test]
    fn a_discovered_target_forgotten_mid_dial_is_dropped_when_the_dial_ends() {
        let now = Instant::now();
        let mut maker = ConnectionMaker::new();
        maker.set_discovered(&["gone:1".to_owned(), "kept:1".to_owned()].into(), now);
        assert_eq!(maker.due(now, 10).len(), 2);
        // Gossip stops mentioning "gone" while its dial is in flight.
        maker.set_discovered(&["kept:1".to_owned()].into(), now);
        maker.failed("gone:1", now, "no route to host".into(), Retry::Later, 0.5);
        maker.failed("kept:1", now, "no route to host".into(), Retry::Later, 0.5);
        let left: Vec<_> = maker.status(now).into_iter().map(|t| t.address).collect();
        assert_eq!(left, vec!["kept:1"]);
    }

    #[test]
    fn a_long_lived_connection_resets_the_backoff() {
        let now = Instant::now();
        let mut maker = ConnectionMaker::new();
        maker.add_direct("a:1", now);
        for _ in 0..5 {
            maker.due(now, 1);
            maker.failed("a:1", now, "x".into(), Retry::Later, 0.5);
            maker.targets.get_mut("a:1").unwrap().state = TargetState::Waiting { at: now };
        }
        maker.due(now, 1);
        maker.connected("a:1");
        maker.disconnected("a:1", now, STABLE_CONNECTION, "reset".into(), 0.5);
        assert_eq!(maker.next_wakeup(), Some(now));
        assert_eq!(maker.targets["a:1"].backoff, INITIAL_BACKOFF);
    }
}
