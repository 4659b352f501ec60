//! The datapath selector: which datapath one peer connection uses, and why. Pure: the caller
//! passes the time and the fast path's heartbeat health.
//!
//! Inputs: this router's policy ([`Policy`]: can it offer a fast path at all, is the mesh
//! encrypted, does the kernel have ESP), whether the peer offered a fast path in its
//! handshake, and then, over time, the health of the fast path's heartbeats ([`FastHealth`],
//! "up" only while heartbeats are fresh in both directions).
//!
//! Rules, in order:
//! 1. encrypted and no ESP → sleeve, `encryption requires ESP, which this kernel lacks`; the
//!    fast path is never probed (no plaintext ever leaves the host);
//! 2. this router cannot offer a fast path → sleeve, `this router offers no fast datapath:
//!    <why>`, never probed;
//! 3. the peer offers none → sleeve, `peer offers no fast datapath`, never probed;
//! 4. otherwise the connection starts on the sleeve (`fast path: waiting for heartbeats`) and
//!    [`Selector::is_starting`] holds until the first decision: [`FastHealth::Up`] → the fast kind
//!    (`fast path up: heartbeats both ways on udp/<port>`), [`FastHealth::Down`] → stays on the
//!    sleeve with `fast path: <reason>`.
//!
//! After the first decision the selector damps changes with a **hold-down**
//! ([`SelectorConfig::hold_down`]):
//! - a return from the sleeve to the fast path needs the fast path up *continuously* for the hold-down
//!   (reason meanwhile: `fast path: up again, holding down for <n> s`, n the configured
//!   hold-down in whole seconds, rounded up), and never comes sooner than the hold-down after
//!   the previous transition;
//! - a fallback from the fast path to the sleeve is **immediate** as soon as the fast path is not up
//!   (down, or starting over): safety beats stability, since frames on a dead fast path are
//!   lost, while the sleeve always works. This is the one exception to "no two transitions
//!   closer than the hold-down"; it cannot cause flapping, because the return that would
//!   follow waits for the hold-down.
//!
//! So the kind is vxlan only while the most recent health fed in was [`FastHealth::Up`], and a
//! connection never returns to the fast path more often than once per hold-down.

use std::time::{Duration, Instant};

use crate::DatapathKind;

/// Tuning of a [`Selector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectorConfig {
    /// How long the fast path must stay up before a connection returns to it, and the least
    /// time between two transitions (fallbacks excepted).
    pub hold_down: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            hold_down: Duration::from_secs(5),
        }
    }
}

/// What this router allows on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `Err(why)` when this router has no fast path to offer (no VXLAN device, `--datapath
    /// sleeve`, ...).
    pub local_fast: Result<(), String>,
    /// The mesh has a password: data must be encrypted.
    pub encrypted: bool,
    /// The kernel can encrypt the fast path (IPsec ESP).
    pub esp: bool,
    /// The UDP port of the VXLAN fast path (this router's `--vxlan-port`), for the reason
    /// shown when the fast path is up.
    pub vxlan_port: u16,
    /// What this router's fast path is: [`DatapathKind::Vxlan`] or [`DatapathKind::Ovs`] (both
    /// speak VXLAN on the wire, so a peer's backend does not matter).
    pub fast: DatapathKind,
}

/// The fast path's heartbeat state, as the heartbeat engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastHealth {
    /// Nothing heard yet, still within the grace period.
    Starting,
    /// Heartbeats fresh in both directions.
    Up,
    /// Not up, with the reason (e.g. `no heartbeat for 3 s on udp/6784`).
    Down { reason: String },
}

/// The datapath in use and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub kind: DatapathKind,
    pub reason: String,
    /// When the current kind began.
    pub since: Instant,
    /// Changes of kind so far.
    pub transitions: u64,
}

/// A change of kind, reported once by [`Selector::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: DatapathKind,
    pub to: DatapathKind,
    pub reason: String,
}

/// `encryption requires ESP, which this kernel lacks`.
pub const REASON_ESP: &str = "encryption requires ESP, which this kernel lacks";
/// `peer offers no fast datapath`.
pub const REASON_PEER_OFFERS_NONE: &str = "peer offers no fast datapath";
/// `fast path: waiting for heartbeats`.
pub const REASON_WAITING: &str = "fast path: waiting for heartbeats";

/// The per-connection selector.
#[derive(Debug, Clone)]
pub struct Selector {
    config: SelectorConfig,
    vxlan_port: u16,
    fast: DatapathKind,
    probes: bool,
    starting: bool,
    selection: Selection,
    /// When the last change of kind happened.
    last_transition: Option<Instant>,
    /// Since when the fast path has been up without a break, while on the sleeve.
    up_since: Option<Instant>,
}

impl Selector {
    pub fn new(
        config: SelectorConfig,
        policy: Policy,
        peer_offers_vxlan: bool,
        now: Instant,
    ) -> Self {
        let fixed = if policy.encrypted && !policy.esp {
            Some(REASON_ESP.to_owned())
        } else if let Err(why) = &policy.local_fast {
            Some(format!("this router offers no fast datapath: {why}"))
        } else if !peer_offers_vxlan {
            Some(REASON_PEER_OFFERS_NONE.to_owned())
        } else {
            None
        };
        let probes = fixed.is_none();
        Selector {
            config,
            vxlan_port: policy.vxlan_port,
            fast: policy.fast,
            probes,
            starting: probes,
            selection: Selection {
                kind: DatapathKind::Sleeve,
                reason: fixed.unwrap_or_else(|| REASON_WAITING.to_owned()),
                since: now,
                transitions: 0,
            },
            last_transition: None,
            up_since: None,
        }
    }

    /// Whether fast heartbeats should be sent on this connection at all.
    pub fn probes_fast(&self) -> bool {
        self.probes
    }

    /// Still confirming the first choice (no decision yet: the FDB keeps what it has).
    pub fn is_starting(&self) -> bool {
        self.starting
    }

    pub fn current(&self) -> &Selection {
        &self.selection
    }

    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    /// Feeds the fast path's current health; returns the change of kind, if any (a change of
    /// reason alone shows in [`current`](Self::current) only).
    pub fn update(&mut self, fast: &FastHealth, now: Instant) -> Option<Transition> {
        if !self.probes {
            return None;
        }
        if self.starting {
            return match fast {
                FastHealth::Starting => None,
                FastHealth::Up => {
                    self.starting = false;
                    self.switch(self.fast, self.up_reason(), now)
                }
                FastHealth::Down { reason } => {
                    self.starting = false;
                    self.selection.reason = format!("fast path: {reason}");
                    None
                }
            };
        }
        match (self.selection.kind, fast) {
            (kind, FastHealth::Up) if kind == self.fast => None,
            (_, FastHealth::Starting) => {
                self.up_since = None;
                self.switch(DatapathKind::Sleeve, REASON_WAITING.to_owned(), now)
            }
            (_, FastHealth::Down { reason }) => {
                self.up_since = None;
                self.switch(DatapathKind::Sleeve, format!("fast path: {reason}"), now)
            }
            (_, FastHealth::Up) => {
                let up_since = *self.up_since.get_or_insert(now);
                let hold_down = self.config.hold_down;
                let held = now.saturating_duration_since(up_since) >= hold_down
                    && self
                        .last_transition
                        .is_none_or(|at| now.saturating_duration_since(at) >= hold_down);
                if held {
                    self.up_since = None;
                    self.switch(self.fast, self.up_reason(), now)
                } else {
                    let secs = hold_down.as_secs() + u64::from(hold_down.subsec_nanos() > 0);
                    self.selection.reason =
                        format!("fast path: up again, holding down for {secs} s");
                    None
                }
            }
        }
    }

    fn up_reason(&self) -> String {
        format!(
            "fast path up: heartbeats both ways on udp/{}",
            self.vxlan_port
        )
    }

    /// Moves to `to` with `reason`; a transition when the kind changes.
    fn switch(&mut self, to: DatapathKind, reason: String, now: Instant) -> Option<Transition> {
        let from = self.selection.kind;
        self.selection.reason = reason;
        if from == to {
            return None;
        }
        self.selection.kind = to;
        self.selection.since = now;
        self.selection.transitions += 1;
        self.last_transition = Some(now);
        Some(Transition {
            from,
            to,
            reason: self.selection.reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
