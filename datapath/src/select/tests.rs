use super::*;
use proptest::prelude::*;

const PORT: u16 = 6784;

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

fn policy() -> Policy {
    Policy {
        local_fast: Ok(()),
        encrypted: false,
        esp: false,
        vxlan_port: PORT,
        fast: DatapathKind::Vxlan,
    }
}

fn down(reason: &str) -> FastHealth {
    FastHealth::Down {
        reason: reason.to_owned(),
    }
}

/// A selector that decided vxlan at `t`.
fn on_vxlan(t: Instant) -> Selector {
    let mut s = Selector::new(SelectorConfig::default(), policy(), true, t);
    assert!(s.update(&FastHealth::Up, t).is_some());
    s
}

fn assert_fixed(s: &mut Selector, reason: &str, t: Instant) {
    assert_eq!(s.current().kind, DatapathKind::Sleeve);
    assert_eq!(s.current().reason, reason);
    assert!(!s.probes_fast());
    assert!(!s.is_starting());
    for (i, health) in [FastHealth::Up, FastHealth::Starting, down("x")]
        .iter()
        .enumerate()
    {
        assert_eq!(s.update(health, t + secs(10.0 * i as f64)), None);
    }
    assert_eq!(s.current().kind, DatapathKind::Sleeve);
    assert_eq!(s.current().reason, reason);
    assert_eq!(s.current().transitions, 0);
    assert_eq!(s.current().since, t);
}

#[test]
fn encrypted_without_esp_stays_on_the_sleeve_and_never_probes() {
    let t = Instant::now();
    let encrypted = Policy {
        encrypted: true,
        ..policy()
    };
    let mut s = Selector::new(SelectorConfig::default(), encrypted, true, t);
    assert_fixed(
        &mut s,
        "encryption requires ESP, which this kernel lacks",
        t,
    );
    // ESP outranks every other reason.
    let neither = Policy {
        encrypted: true,
        local_fast: Err("no VXLAN device".into()),
        ..policy()
    };
    let mut s = Selector::new(SelectorConfig::default(), neither, false, t);
    assert_fixed(&mut s, REASON_ESP, t);
}

#[test]
fn encrypted_with_esp_probes_the_fast_path() {
    let t = Instant::now();
    let esp = Policy {
        encrypted: true,
        esp: true,
        ..policy()
    };
    let s = Selector::new(SelectorConfig::default(), esp, true, t);
    assert!(s.probes_fast());
    assert!(s.is_starting());
}

#[test]
fn a_router_without_a_fast_path_says_why() {
    let t = Instant::now();
    let local = Policy {
        local_fast: Err("--datapath sleeve".into()),
        ..policy()
    };
    let mut s = Selector::new(SelectorConfig::default(), local, true, t);
    assert_fixed(
        &mut s,
        "this router offers no fast datapath: --datapath sleeve",
        t,
    );
}

#[test]
fn a_peer_without_a_fast_path_keeps_the_sleeve() {
    let t = Instant::now();
    let mut s = Selector::new(SelectorConfig::default(), policy(), false, t);
    assert_fixed(&mut s, "peer offers no fast datapath", t);
}

#[test]
fn a_new_connection_waits_for_heartbeats_then_takes_the_fast_path_at_once() {
    let t = Instant::now();
    let mut s = Selector::new(SelectorConfig::default(), policy(), true, t);
    assert!(s.probes_fast());
    assert!(s.is_starting());
    assert_eq!(s.current().kind, DatapathKind::Sleeve);
    assert_eq!(s.current().reason, "fast path: waiting for heartbeats");
    assert_eq!(s.update(&FastHealth::Starting, t + secs(1.0)), None);
    assert!(s.is_starting());
    let up = t + secs(1.5);
    assert_eq!(
        s.update(&FastHealth::Up, up),
        Some(Transition {
            from: DatapathKind::Sleeve,
            to: DatapathKind::Vxlan,
            reason: "fast path up: heartbeats both ways on udp/6784".into(),
        })
    );
    assert!(!s.is_starting());
    assert_eq!(
        s.current(),
        &Selection {
            kind: DatapathKind::Vxlan,
            reason: "fast path up: heartbeats both ways on udp/6784".into(),
            since: up,
            transitions: 1,
        }
    );
    assert_eq!(
        s.update(&FastHealth::Up, up + secs(1.0)),
        None,
        "reported once"
    );
}

#[test]
fn a_first_decision_of_down_keeps_the_sleeve_with_the_reason() {
    let t = Instant::now();
    let mut s = Selector::new(SelectorConfig::default(), policy(), true, t);
    assert_eq!(
        s.update(&down("no heartbeat for 3 s on udp/6784"), t + secs(3.0)),
        None
    );
    assert!(!s.is_starting());
    assert!(s.probes_fast(), "keeps probing");
    assert_eq!(s.current().kind, DatapathKind::Sleeve);
    assert_eq!(
        s.current().reason,
        "fast path: no heartbeat for 3 s on udp/6784"
    );
    assert_eq!(s.current().transitions, 0);
    assert_eq!(s.current().since, t);
    // Coming up later is a return: it waits for the hold-down.
    assert_eq!(s.update(&FastHealth::Up, t + secs(4.0)), None);
    assert_eq!(
        s.current().reason,
        "fast path: up again, holding down for 5 s"
    );
    assert_eq!(s.update(&FastHealth::Up, t + secs(8.9)), None);
    assert!(s.update(&FastHealth::Up, t + secs(9.0)).is_some());
    assert_eq!(s.current().kind, DatapathKind::Vxlan);
}

#[test]
fn falling_back_is_immediate_even_inside_the_hold_down() {
    let t = Instant::now();
    let mut s = on_vxlan(t);
    let at = t + secs(0.5);
    assert_eq!(
        s.update(&down("no heartbeat for 3 s on udp/6784"), at),
        Some(Transition {
            from: DatapathKind::Vxlan,
            to: DatapathKind::Sleeve,
            reason: "fast path: no heartbeat for 3 s on udp/6784".into(),
        })
    );
    assert_eq!(s.current().since, at);
    assert_eq!(s.current().transitions, 2);
    // Still down: the reason follows, no transition.
    assert_eq!(
        s.update(&down("no heartbeat for 4 s on udp/6784"), at),
        None
    );
    assert_eq!(
        s.current().reason,
        "fast path: no heartbeat for 4 s on udp/6784"
    );
    assert_eq!(s.current().transitions, 2);
}

#[test]
fn a_fast_path_starting_over_falls_back_too() {
    let t = Instant::now();
    let mut s = on_vxlan(t);
    let change = s.update(&FastHealth::Starting, t + secs(10.0)).unwrap();
    assert_eq!(change.to, DatapathKind::Sleeve);
    assert_eq!(change.reason, REASON_WAITING);
    assert!(!s.is_starting(), "only the first decision is 'starting'");
}

#[test]
fn returning_needs_the_fast_path_up_without_a_break_for_the_hold_down() {
    let t = Instant::now();
    let mut s = on_vxlan(t);
    let fell = t + secs(20.0);
    assert!(s.update(&down("x"), fell).is_some());
    assert_eq!(s.update(&FastHealth::Up, fell + secs(1.0)), None);
    assert_eq!(
        s.current().reason,
        "fast path: up again, holding down for 5 s"
    );
    assert_eq!(s.current().kind, DatapathKind::Sleeve);
    // A break restarts the count.
    assert_eq!(s.update(&down("y"), fell + secs(3.0)), None);
    assert_eq!(s.current().reason, "fast path: y");
    assert_eq!(s.update(&FastHealth::Up, fell + secs(4.0)), None);
    assert_eq!(s.update(&FastHealth::Up, fell + secs(8.99)), None);
    assert_eq!(s.current().kind, DatapathKind::Sleeve);
    let back = fell + secs(9.0);
    assert_eq!(
        s.update(&FastHealth::Up, back),
        Some(Transition {
            from: DatapathKind::Sleeve,
            to: DatapathKind::Vxlan,
            reason: "fast path up: heartbeats both ways on udp/6784".into(),
        })
    );
    assert_eq!(s.current().since, back);
    assert_eq!(s.current().transitions, 3);
}

#[test]
fn the_hold_down_in_the_reason_is_rounded_up_to_whole_seconds() {
    let t = Instant::now();
    let config = SelectorConfig {
        hold_down: secs(2.5),
    };
    let mut s = Selector::new(config, policy(), true, t);
    s.update(&down("x"), t);
    s.update(&FastHealth::Up, t + secs(1.0));
    assert_eq!(
        s.current().reason,
        "fast path: up again, holding down for 3 s"
    );
    assert_eq!(SelectorConfig::default().hold_down, secs(5.0));
}

/// One random step: a health and how long after the previous step it is fed.
fn arb_steps() -> impl Strategy<Value = Vec<(FastHealth, u64)>> {
    let health = prop_oneof![
        3 => Just(FastHealth::Up),
        1 => Just(FastHealth::Starting),
        2 => Just(down("lost")),
    ];
    prop::collection::vec((health, 0u64..3000), 1..200)
}

/// Two heartbeat streams with echo between the two ends of one connection: each end sends a
/// numbered heartbeat every interval carrying the last number it heard from the other; an end
/// sees the fast path up while it heard the peer within `timeout` and the peer echoed a
/// heartbeat it sent within `timeout` (both directions fresh), starting until `grace` passed.
struct HeartbeatEnd {
    start: Instant,
    sent: Vec<Instant>,
    heard_seq: u32,
    last_heard: Option<Instant>,
    echoed_sent_at: Option<Instant>,
    was_up: bool,
}

const TIMEOUT: Duration = Duration::from_secs(3);
const GRACE: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(100);
/// Heartbeat interval, in ticks.
const INTERVAL: u64 = 5;

impl HeartbeatEnd {
    fn new(start: Instant) -> Self {
        HeartbeatEnd {
            start,
            sent: Vec::new(),
            heard_seq: 0,
            last_heard: None,
            echoed_sent_at: None,
            was_up: false,
        }
    }

    /// A heartbeat: (seq, echo).
    fn send(&mut self, now: Instant) -> (u32, u32) {
        self.sent.push(now);
        (self.sent.len() as u32, self.heard_seq)
    }

    fn receive(&mut self, (seq, echo): (u32, u32), now: Instant) {
        self.heard_seq = seq;
        self.last_heard = Some(now);
        if echo != 0 {
            let at = self.sent[echo as usize - 1];
            self.echoed_sent_at = Some(self.echoed_sent_at.map_or(at, |old| old.max(at)));
        }
    }

    fn health(&mut self, now: Instant) -> FastHealth {
        let fresh = |at: Option<Instant>| at.is_some_and(|at| now - at < TIMEOUT);
        if fresh(self.last_heard) && fresh(self.echoed_sent_at) {
            self.was_up = true;
            FastHealth::Up
        } else if !self.was_up && now - self.start < GRACE {
            FastHealth::Starting
        } else {
            down("no heartbeat for 3 s on udp/6784")
        }
    }
}

/// Checks (b) and (c) on one selector's history as it goes.
struct Watch {
    hold_down: Duration,
    last_transition: Option<Instant>,
}

impl Watch {
    fn check(
        &mut self,
        s: &Selector,
        fed: &FastHealth,
        change: Option<Transition>,
        now: Instant,
    ) -> Result<(), TestCaseError> {
        if s.current().kind == DatapathKind::Vxlan {
            prop_assert_eq!(fed, &FastHealth::Up, "on vxlan after being fed {:?}", fed);
        }
        if let Some(change) = change {
            prop_assert_ne!(change.from, change.to);
            prop_assert_eq!(change.to, s.current().kind);
            prop_assert_eq!(s.current().since, now);
            if change.to == DatapathKind::Vxlan
                && let Some(last) = self.last_transition
            {
                // Fallbacks to the sleeve are the documented exception.
                prop_assert!(
                    now - last >= self.hold_down,
                    "returned to vxlan {:?} after the previous transition",
                    now - last
                );
            }
            self.last_transition = Some(now);
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn vxlan_only_while_up_and_no_return_faster_than_the_hold_down(
        steps in arb_steps(),
        hold_down_ms in 100u64..6000,
        peer_offers in any::<bool>(),
    ) {
        let t = Instant::now();
        let config = SelectorConfig { hold_down: Duration::from_millis(hold_down_ms) };
        let mut s = Selector::new(config, policy(), peer_offers, t);
        let mut watch = Watch { hold_down: config.hold_down, last_transition: None };
        let mut now = t;
        let mut transitions = 0;
        for (health, dt) in &steps {
            now += Duration::from_millis(*dt);
            let change = s.update(health, now);
            transitions += u64::from(change.is_some());
            watch.check(&s, health, change, now)?;
            prop_assert_eq!(s.current().transitions, transitions);
            if !peer_offers {
                prop_assert_eq!(s.current().kind, DatapathKind::Sleeve);
            }
        }
    }

    #[test]
    fn both_ends_converge_once_the_path_is_stable(
        schedule in prop::collection::vec((1u64..80, any::<bool>(), any::<bool>()), 0..10),
        last in (any::<bool>(), any::<bool>()),
        phase in 0..INTERVAL,
        hold_down_ms in 500u64..6000,
    ) {
        let t = Instant::now();
        let config = SelectorConfig { hold_down: Duration::from_millis(hold_down_ms) };
        // Stable for longer than the timeout plus the hold-down (and two intervals of slack
        // for a heartbeat and its echo to cross).
        let stable = (TIMEOUT + config.hold_down).as_millis() as u64 / 100 + 2 * INTERVAL + 1;
        let mut segments = schedule.clone();
        segments.push((stable, last.0, last.1));

        let mut ends = [HeartbeatEnd::new(t), HeartbeatEnd::new(t)];
        let mut selectors = [
            Selector::new(config, policy(), true, t),
            Selector::new(config, policy(), true, t),
        ];
        let mut watches = [
            Watch { hold_down: config.hold_down, last_transition: None },
            Watch { hold_down: config.hold_down, last_transition: None },
        ];
        let mut tick = 0u64;
        for (ticks, a_to_b, b_to_a) in segments {
            for _ in 0..ticks {
                tick += 1;
                let now = t + TICK * tick as u32;
                if tick.is_multiple_of(INTERVAL) {
                    let beat = ends[0].send(now);
                    if a_to_b {
                        ends[1].receive(beat, now);
                    }
                }
                if tick % INTERVAL == phase {
                    let beat = ends[1].send(now);
                    if b_to_a {
                        ends[0].receive(beat, now);
                    }
                }
                for i in 0..2 {
                    let health = ends[i].health(now);
                    let change = selectors[i].update(&health, now);
                    watches[i].check(&selectors[i], &health, change, now)?;
                }
            }
        }
        let kinds = [selectors[0].current().kind, selectors[1].current().kind];
        let want = if last.0 && last.1 { DatapathKind::Vxlan } else { DatapathKind::Sleeve };
        prop_assert_eq!(kinds, [want, want], "schedule {:?} then {:?}", schedule, last);
    }
}
