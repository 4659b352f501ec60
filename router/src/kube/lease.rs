//! The reclaim leader election over a `coordination.k8s.io/v1` Lease, sans-IO.
//!
//! One Lease (`weft-reclaim` in the router's namespace); its holder is a Node name. Each round
//! a router reads the Lease and [`Elector::decide`]s:
//! - no Lease: create it, held by us;
//! - held by us: renew it;
//! - held by no one, or by another router whose Lease has not changed for its whole duration
//!   (it stopped renewing): take it over;
//! - otherwise: wait.
//!
//! Every write names the `resourceVersion` it read, so of two routers that race for the same
//! Lease the API server lets one win and answers the other `409 Conflict` (lost). Expiry is
//! measured like client-go does: from when *this* router saw the Lease change, on its own clock,
//! not from the holder's `renewTime`, so clocks that disagree between nodes cannot make two
//! leaders. A leader that cannot renew steps down by itself after two thirds of the duration,
//! before anyone may take the Lease over.

use std::time::{Duration, SystemTime};

/// The Lease's name.
pub const LEASE_NAME: &str = "weft-reclaim";
/// How long a Lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the Lease is read (and renewed by its holder).
pub const RETRY_PERIOD: Duration = Duration::from_secs(5);

/// A Lease as read from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub acquire_time: Option<SystemTime>,
    pub renew_time: Option<SystemTime>,
    pub duration: Option<Duration>,
    pub transitions: i32,
    pub resource_version: Option<String>,
}

/// A Lease to write: created (`resource_version` None) or replaced (only if the Lease is still
/// at `resource_version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub holder: String,
    pub acquire_time: SystemTime,
    pub renew_time: SystemTime,
    pub duration: Duration,
    pub transitions: i32,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create, renew or take over the Lease.
    Write(LeaseWrite),
    /// Another router holds it.
    Wait { holder: String },
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// `409 Conflict` (or `AlreadyExists` on create): another router wrote first.
    Conflict,
    /// Any other failure (API down, 403, …): nothing is known.
    Failed,
}

/// A change of leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Acquired,
    Lost,
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    duration: Duration,
    /// Leader until then (the last successful write plus two thirds of the duration).
    leader_until: Option<SystemTime>,
    /// The Lease version last seen and when it was first seen.
    observed: Option<(Option<String>, SystemTime)>,
    /// The Lease holder as last read.
    holder: Option<String>,
}

impl Elector {
    pub fn new(identity: &str, duration: Duration) -> Self {
        Elector {
            identity: identity.to_owned(),
            duration,
            leader_until: None,
            observed: None,
            holder: None,
        }
    }

    pub fn is_leader(&self, now: SystemTime) -> bool {
        self.leader_until.is_some_and(|until| now < until)
    }

    /// The holder as last read (or written by us).
    #[cfg(test)]
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// What to do with the Lease as read now (`None`: it does not exist). Seeing another
    /// holder ends this router's leadership at once.
    pub fn decide(&mut self, lease: Option<&LeaseRecord>, now: SystemTime) -> Decision {
        let Some(lease) = lease else {
            self.observed = None;
            self.holder = None;
            return Decision::Write(LeaseWrite {
                holder: self.identity.clone(),
                acquire_time: now,
                renew_time: now,
                duration: self.duration,
                transitions: 0,
                resource_version: None,
            });
        };
        let first_seen = match &self.observed {
            Some((version, at)) if *version == lease.resource_version => *at,
            _ => {
                self.observed = Some((lease.resource_version.clone(), now));
                now
            }
        };
        self.holder = lease.holder.clone().filter(|h| !h.is_empty());
        let duration = lease.duration.unwrap_or(self.duration);
        match self.holder.clone() {
            Some(holder) if holder == self.identity => Decision::Write(LeaseWrite {
                holder,
                acquire_time: lease.acquire_time.unwrap_or(now),
                renew_time: now,
                duration: self.duration,
                transitions: lease.transitions,
                resource_version: lease.resource_version.clone(),
            }),
            Some(holder) if now < first_seen + duration => {
                self.leader_until = None;
                Decision::Wait { holder }
            }
            // Free, or its holder stopped renewing.
            _ => Decision::Write(LeaseWrite {
                holder: self.identity.clone(),
                acquire_time: now,
                renew_time: now,
                duration: self.duration,
                transitions: lease.transitions.saturating_add(1),
                resource_version: lease.resource_version.clone(),
            }),
        }
    }

    /// The result of writing `write` (decided at `sent`, when the request left).
    pub fn written(
        &mut self,
        write: &LeaseWrite,
        outcome: Outcome,
        new_version: Option<String>,
        sent: SystemTime,
    ) -> Transition {
        let was = self.is_leader(sent);
        match outcome {
            Outcome::Written => {
                self.leader_until = Some(sent + self.duration * 2 / 3);
                self.holder = Some(write.holder.clone());
                self.observed = Some((new_version, sent));
                if was {
                    Transition::Unchanged
                } else {
                    Transition::Acquired
                }
            }
            Outcome::Conflict => {
                self.leader_until = None;
                self.observed = None;
                if was {
                    Transition::Lost
                } else {
                    Transition::Unchanged
                }
            }
            // Leadership runs out by itself if the API stays away.
            Outcome::Failed => Transition::Unchanged,
        }
    }

    /// Whether leadership ran out since `before` (no successful renewal).
    #[cfg(test)]
    pub fn expired_between(&self, before: SystemTime, now: SystemTime) -> bool {
        self.is_leader(before) && !self.is_leader(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: Duration = LEASE_DURATION;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn held(holder: &str, version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            acquire_time: Some(at(0)),
            renew_time: Some(at(0)),
            duration: Some(D),
            transitions: 2,
            resource_version: Some(version.into()),
        }
    }

    #[test]
    fn no_lease_is_created() {
        let mut e = Elector::new("a", D);
        let Decision::Write(w) = e.decide(None, at(1)) else {
            panic!("not a write");
        };
        assert_eq!(
            (w.holder.as_str(), w.resource_version.as_deref()),
            ("a", None)
        );
        assert_eq!(
            e.written(&w, Outcome::Written, Some("1".into()), at(1)),
            Transition::Acquired
        );
        assert!(e.is_leader(at(2)));
    }

    #[test]
    fn the_holder_renews_with_the_version_it_read() {
        let mut e = Elector::new("a", D);
        let Decision::Write(w) = e.decide(Some(&held("a", "7")), at(3)) else {
            panic!("not a write");
        };
        assert_eq!(w.resource_version.as_deref(), Some("7"));
        assert_eq!(
            (w.renew_time, w.acquire_time, w.transitions),
            (at(3), at(0), 2)
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_it_stops_renewing() {
        let mut e = Elector::new("b", D);
        assert_eq!(
            e.decide(Some(&held("a", "7")), at(100)),
            Decision::Wait { holder: "a".into() }
        );
        // Renewed: the wait starts again.
        assert!(matches!(
            e.decide(Some(&held("a", "8")), at(110)),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            e.decide(Some(&held("a", "8")), at(124)),
            Decision::Wait { .. }
        ));
        // Unchanged for a whole duration on this router's clock (renewTime is not trusted).
        let Decision::Write(w) = e.decide(Some(&held("a", "8")), at(125)) else {
            panic!("not a takeover");
        };
        assert_eq!((w.holder.as_str(), w.transitions), ("b", 3));
        assert_eq!(w.resource_version.as_deref(), Some("8"));
        assert_eq!(e.holder(), Some("a"));
    }

    #[test]
    fn a_free_lease_is_taken_at_once() {
        let mut e = Elector::new("b", D);
        let mut free = held("a", "7");
        free.holder = Some(String::new());
        assert!(matches!(e.decide(Some(&free), at(1)), Decision::Write(_)));
    }

    #[test]
    fn a_conflict_loses_and_a_failure_runs_out() {
        let mut e = Elector::new("a", D);
        let Decision::Write(w) = e.decide(None, at(0)) else {
            panic!()
        };
        e.written(&w, Outcome::Written, Some("1".into()), at(0));
        let Decision::Write(w) = e.decide(Some(&held("a", "1")), at(5)) else {
            panic!()
        };
        assert_eq!(
            e.written(&w, Outcome::Failed, None, at(5)),
            Transition::Unchanged
        );
        assert!(e.is_leader(at(9)));
        assert!(
            !e.is_leader(at(10)),
            "steps down 2/3 of the duration after the last renewal"
        );
        assert!(e.expired_between(at(9), at(10)));
        let Decision::Write(w) = e.decide(Some(&held("a", "1")), at(11)) else {
            panic!()
        };
        assert_eq!(
            e.written(&w, Outcome::Written, Some("2".into()), at(11)),
            Transition::Acquired
        );
        assert_eq!(
            e.written(&w, Outcome::Conflict, None, at(12)),
            Transition::Lost
        );
        assert!(!e.is_leader(at(12)));
    }

    proptest! {
        /// Two electors sharing one Lease with compare-and-swap writes are never both leader
        /// (on one clock), whatever the order of their rounds and whatever writes fail.
        #[test]
        fn at_most_one_leader(rounds in proptest::collection::vec((0usize..2, 0u64..4, any::<bool>()), 1..80)) {
            let mut electors = [Elector::new("a", D), Elector::new("b", D)];
            let mut lease: Option<LeaseRecord> = None;
            let mut version = 0u64;
            let mut now = at(0);
            for (who, step, fails) in rounds {
                now += Duration::from_secs(step * 3);
                let read = lease.clone();
                let decision = electors[who].decide(read.as_ref(), now);
                if let Decision::Write(w) = decision {
                    let current = lease.as_ref().and_then(|l| l.resource_version.clone());
                    let outcome = if fails {
                        Outcome::Failed
                    } else if (w.resource_version.is_none() && lease.is_some()) || (w.resource_version.is_some() && w.resource_version != current) {
                        Outcome::Conflict
                    } else {
                        version += 1;
                        lease = Some(LeaseRecord {
                            holder: Some(w.holder.clone()),
                            acquire_time: Some(w.acquire_time),
                            renew_time: Some(w.renew_time),
                            duration: Some(w.duration),
                            transitions: w.transitions,
                            resource_version: Some(version.to_string()),
                        });
                        Outcome::Written
                    };
                    let new_version = (outcome == Outcome::Written).then(|| version.to_string());
                    electors[who].written(&w, outcome, new_version, now);
                }
                prop_assert!(!(electors[0].is_leader(now) && electors[1].is_leader(now)));
            }
        }
    }
}
