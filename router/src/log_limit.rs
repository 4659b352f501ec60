//! Rate limiting of repeated log events, as a sans-IO state machine: at most `burst` lines per
//! key per `interval`; what is left out is counted and summarized in one line ("… and 1234 more
//! like this in the last 10 s") when the key's interval ends. A flood of failing connections
//! then costs a few lines per interval instead of one per connection; counters in `/metrics`
//! carry the detail.
//!
//! Callers ask [`LogLimiter::check`] before logging an event, and call [`LogLimiter::flush`]
//! now and then (e.g. once per interval) to log the summaries of keys that went quiet.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it; if `summary` is set, first log that many like it were left out before.
    Log { summary: Option<Suppressed> },
    /// Leave it out (it is counted for the summary).
    Suppress,
}

/// Events of one key left out over a span of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u64,
    pub over: Duration,
}

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "… and {} more like this in the last {} s",
            self.count,
            self.over.as_secs()
        )
    }
}

/// A summary from [`LogLimiter::flush`]; `key` is `None` for events of keys that could not be
/// tracked because too many keys were live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<K> {
    pub key: Option<K>,
    pub suppressed: Suppressed,
}

#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug)]
pub struct LogLimiter<K> {
    burst: u32,
    interval: Duration,
    max_keys: usize,
    windows: HashMap<K, Window>,
    /// Events of keys beyond `max_keys`, since `overflow_since`.
    overflow: u64,
    overflow_since: Option<Instant>,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// At most `burst` lines per key per `interval`, tracking at most `max_keys` keys.
    pub fn new(burst: u32, interval: Duration, max_keys: usize) -> Self {
        LogLimiter {
            burst,
            interval,
            max_keys,
            windows: HashMap::new(),
            overflow: 0,
            overflow_since: None,
        }
    }

    pub fn check(&mut self, key: &K, now: Instant) -> LogVerdict {
        if let Some(w) = self.windows.get_mut(key) {
            if now.saturating_duration_since(w.start) >= self.interval {
                let summary = (w.suppressed > 0).then(|| Suppressed {
                    count: w.suppressed,
                    over: now.saturating_duration_since(w.start),
                });
                *w = Window {
                    start: now,
                    logged: 1,
                    suppressed: 0,
                };
                return LogVerdict::Log { summary };
            }
            if w.logged < self.burst {
                w.logged += 1;
                return LogVerdict::Log { summary: None };
            }
            w.suppressed += 1;
            return LogVerdict::Suppress;
        }
        if self.windows.len() >= self.max_keys {
            self.drop_quiet(now);
        }
        if self.windows.len() >= self.max_keys || self.burst == 0 {
            self.overflow += 1;
            self.overflow_since.get_or_insert(now);
            return LogVerdict::Suppress;
        }
        self.windows.insert(
            key.clone(),
            Window {
                start: now,
                logged: 1,
                suppressed: 0,
            },
        );
        LogVerdict::Log { summary: None }
    }

    /// Summaries of the keys whose interval has ended with events left out; those keys and the
    /// keys that went quiet are forgotten.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary<K>> {
        let mut out = Vec::new();
        let interval = self.interval;
        self.windows.retain(|key, w| {
            let age = now.saturating_duration_since(w.start);
            if age < interval {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Summary {
                    key: Some(key.clone()),
                    suppressed: Suppressed {
                        count: w.suppressed,
                        over: age,
                    },
                });
            }
            false
        });
        if let Some(since) = self.overflow_since
            && now.saturating_duration_since(since) >= interval
        {
            if self.overflow > 0 {
                out.push(Summary {
                    key: None,
                    suppressed: Suppressed {
                        count: self.overflow,
                        over: now.saturating_duration_since(since),
                    },
                });
            }
            self.overflow = 0;
            self.overflow_since = None;
        }
        out
    }

    /// Forgets keys whose interval ended with nothing left out (nothing to summarize).
    fn drop_quiet(&mut self, now: Instant) {
        let interval = self.interval;
        self.windows
            .retain(|_, w| w.suppressed > 0 || now.saturating_duration_since(w.start) < interval);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn a_flood_costs_burst_lines_and_one_summary_per_interval() {
        let start = Instant::now();
        let mut l = LogLimiter::new(3, TEN_S, 16);
        let mut logged = 0;
        for i in 0..13_877u64 {
            let now = start + Duration::from_micros(i * 700);
            if matches!(l.check(&"io", now), LogVerdict::Log { .. }) {
                logged += 1;
            }
        }
        assert_eq!(logged, 3);
        let summaries = l.flush(start + TEN_S);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].key, Some("io"));
        assert_eq!(summaries[0].suppressed.count, 13_874);
        assert_eq!(
            summaries[0].suppressed.to_string(),
            "… and 13874 more like this in the last 10 s"
        );
        assert!(l.flush(start + TEN_S * 2).is_empty());
    }

    #[test]
    fn the_next_event_after_the_interval_carries_the_summary() {
        let start = Instant::now();
        let mut l = LogLimiter::new(1, TEN_S, 16);
        assert_eq!(l.check(&1, start), LogVerdict::Log { summary: None });
        assert_eq!(l.check(&1, start), LogVerdict::Suppress);
        assert_eq!(l.check(&2, start), LogVerdict::Log { summary: None });
        assert_eq!(
            l.check(&1, start + TEN_S),
            LogVerdict::Log {
                summary: Some(Suppressed {
                    count: 1,
                    over: TEN_S
                })
            }
        );
    }

    #[test]
    fn keys_beyond_the_limit_are_counted_together() {
        let start = Instant::now();
        let mut l = LogLimiter::new(5, TEN_S, 2);
        assert!(matches!(l.check(&1, start), LogVerdict::Log { .. }));
        assert!(matches!(l.check(&2, start), LogVerdict::Log { .. }));
        assert_eq!(l.check(&3, start), LogVerdict::Suppress);
        assert_eq!(l.check(&4, start), LogVerdict::Suppress);
        let summaries = l.flush(start + TEN_S);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].key, None);
        assert_eq!(summaries[0].suppressed.count, 2);
        // Quiet keys are forgotten, so new ones fit again.
        assert!(matches!(l.check(&3, start + TEN_S), LogVerdict::Log { .. }));
    }

    proptest! {
        /// Every event is either logged or counted in exactly one summary, and no key logs more
        /// than `2 * burst` lines in any interval.
        #[test]
        fn nothing_is_lost(
            burst in 1u32..4,
            events in prop::collection::vec((0u8..4, 0u64..3_000), 1..400),
        ) {
            let start = Instant::now();
            let interval = Duration::from_secs(1);
            let mut l = LogLimiter::new(burst, interval, 3);
            let mut events = events;
            events.sort_by_key(|&(_, at)| at);
            let mut logged = 0u64;
            let mut summarized = 0u64;
            let mut lines: HashMap<u8, Vec<u64>> = HashMap::new();
            for &(key, at) in &events {
                let now = start + Duration::from_millis(at);
                match l.check(&key, now) {
                    LogVerdict::Log { summary } => {
                        logged += 1;
                        summarized += summary.map_or(0, |s| s.count);
                        lines.entry(key).or_default().push(at);
                    }
                    LogVerdict::Suppress => {}
                }
                if at % 7 == 0 {
                    summarized += l.flush(now).iter().map(|s| s.suppressed.count).sum::<u64>();
                }
            }
            let end = start + Duration::from_millis(3_000) + interval * 2;
            summarized += l.flush(end).iter().map(|s| s.suppressed.count).sum::<u64>();
            prop_assert_eq!(logged + summarized, events.len() as u64);
            for times in lines.values() {
                // At most `burst` lines per window and windows start at least an interval
                // apart, so any `2 * burst + 1` lines span more than an interval.
                let n = 2 * burst as usize;
                for w in times.windows(n + 1) {
                    prop_assert!(w[n] - w[0] > 1_000);
                }
            }
        }
    }
}
