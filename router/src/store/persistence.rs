//! Writing the store, and what happens when writing fails: the failure is remembered (so CNI
//! STATUS, `/readyz` and `/report` can say "persistence failing" while it lasts), a database
//! whose write failed is closed and re-opened with backoff (redb refuses every write after an
//! I/O error until it is re-opened: "Previous I/O error occurred"), and the failure clears when
//! a write succeeds again.
//!
//! The [`Writer`] holds the content the router wants on disk and commits all of it on every
//! write, so a write that failed is carried by the next one. The database and files are behind
//! [`Backend`]; the tests drive a fake one.

use std::time::{Duration, Instant};

use super::lastgood::Content;

/// The first wait before re-opening a database whose write failed; it doubles on every failed
/// re-open up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A failed commit, and whether the database must be closed and re-opened before it can be
/// written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitError {
    pub message: String,
    pub reopen: bool,
}

/// The storage the writer commits to.
pub trait Backend {
    fn is_open(&self) -> bool;
    /// Opens (again) the database.
    fn open(&mut self) -> Result<(), String>;
    fn close(&mut self);
    /// Commits `wanted` durably (what changed since the last commit), then the last-good copy.
    /// `force`: write both even if nothing changed (while persistence fails, only a real write
    /// shows that writing works again).
    fn commit(&mut self, wanted: &Content, force: bool) -> Result<(), CommitError>;
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Writes that failed (including retries while failing).
    pub write_failures: u64,
    /// Databases re-opened after a failure.
    pub reopens: u64,
    pub reopen_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub since: Instant,
    pub error: String,
}

pub struct Writer<B> {
    backend: B,
    wanted: Content,
    failing: Option<Failing>,
    backoff: Duration,
    next_reopen: Instant,
    pub counters: Counters,
}

impl<B: Backend> Writer<B> {
    /// `content`: what the backend holds now.
    pub fn new(backend: B, content: Content, now: Instant) -> Self {
        Writer {
            backend,
            wanted: content,
            failing: None,
            backoff: FIRST_BACKOFF,
            next_reopen: now,
            counters: Counters::default(),
        }
    }

    /// What the router wants on disk (all of it is, unless [`Writer::failing`]).
    pub fn content(&self) -> &Content {
        &self.wanted
    }

    pub fn failing(&self) -> Option<&Failing> {
        self.failing.as_ref()
    }

    #[cfg(test)]
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Changes the content and commits it.
    pub fn update(
        &mut self,
        change: impl FnOnce(&mut Content),
        now: Instant,
    ) -> Result<(), String> {
        change(&mut self.wanted);
        self.flush(now)
    }

    /// Commits the content: re-opens the database first when a failure closed it and its
    /// backoff is over; fails at once while the backoff runs.
    pub fn flush(&mut self, now: Instant) -> Result<(), String> {
        if !self.backend.is_open() {
            if now < self.next_reopen {
                self.counters.write_failures += 1;
                let error = self
                    .failing
                    .as_ref()
                    .map_or("the store is closed", |f| f.error.as_str());
                return Err(format!(
                    "{error} (the store is re-opened in {} ms)",
                    (self.next_reopen - now).as_millis()
                ));
            }
            match self.backend.open() {
                Ok(()) => {
                    self.counters.reopens += 1;
                    tracing::info!("state store re-opened after a failed write");
                }
                Err(e) => {
                    self.counters.reopen_failures += 1;
                    self.counters.write_failures += 1;
                    self.schedule_reopen(now);
                    let error = format!("cannot re-open the store: {e}");
                    self.fail(now, &error);
                    return Err(error);
                }
            }
        }
        match self.backend.commit(&self.wanted, self.failing.is_some()) {
            Ok(()) => {
                if let Some(f) = self.failing.take() {
                    tracing::info!(
                        failing_secs = now.saturating_duration_since(f.since).as_secs(),
                        "persistence works again"
                    );
                }
                self.backoff = FIRST_BACKOFF;
                Ok(())
            }
            Err(e) => {
                self.counters.write_failures += 1;
                if e.reopen {
                    self.backend.close();
                    self.schedule_reopen(now);
                }
                self.fail(now, &e.message);
                Err(e.message)
            }
        }
    }

    fn schedule_reopen(&mut self, now: Instant) {
        self.next_reopen = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn fail(&mut self, now: Instant, error: &str) {
        match &mut self.failing {
            Some(f) => f.error = error.to_owned(),
            None => {
                tracing::error!(
                    error,
                    "persistence failing: state is kept in memory, ADDs are refused until a write succeeds"
                );
                self.failing = Some(Failing {
                    since: now,
                    error: error.to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that fails as told: `fail_commits` commits fail (closing the database when
    /// `needs_reopen`), then `fail_opens` re-opens fail.
    #[derive(Default)]
    struct Fake {
        open: bool,
        fail_commits: u32,
        needs_reopen: bool,
        fail_opens: u32,
        opens: u32,
        committed: Option<Content>,
        forced: u32,
    }

    impl Backend for Fake {
        fn is_open(&self) -> bool {
            self.open
        }
        fn open(&mut self) -> Result<(), String> {
            self.opens += 1;
            if self.fail_opens > 0 {
                self.fail_opens -= 1;
                return Err("No space left on device".into());
            }
            self.open = true;
            Ok(())
        }
        fn close(&mut self) {
            self.open = false;
        }
        fn commit(&mut self, wanted: &Content, force: bool) -> Result<(), CommitError> {
            assert!(self.open, "commit on a closed database");
            self.forced += u32::from(force);
            if self.fail_commits > 0 {
                self.fail_commits -= 1;
                return Err(CommitError {
                    message: "Previous I/O error occurred".into(),
                    reopen: self.needs_reopen,
                });
            }
            self.committed = Some(wanted.clone());
            Ok(())
        }
    }

    fn writer(fake: Fake, now: Instant) -> Writer<Fake> {
        Writer::new(Fake { open: true, ..fake }, Content::default(), now)
    }

    fn snapshot(n: u8) -> impl FnOnce(&mut Content) {
        move |c| c.ipam_snapshot = Some(vec![n])
    }

    #[test]
    fn a_write_that_fails_is_reported_until_one_succeeds_and_is_carried_by_it() {
        let t0 = Instant::now();
        let mut w = writer(
            Fake {
                fail_commits: 1,
                ..Fake::default()
            },
            t0,
        );
        assert!(w.update(snapshot(1), t0).is_err());
        assert_eq!(w.failing().map(|f| f.since), Some(t0));
        // Not closed (no re-open needed): the next write is tried at once and carries the first.
        w.update(|c| c.targets = vec!["a:1".into()], t0).unwrap();
        assert!(w.failing().is_none());
        assert_eq!(
            w.backend().forced,
            1,
            "the write after a failure is a real one"
        );
        let committed = w.backend().committed.clone().unwrap();
        assert_eq!(committed.ipam_snapshot, Some(vec![1]));
        assert_eq!(committed.targets, vec!["a:1".to_owned()]);
        assert_eq!(w.counters.write_failures, 1);
        assert_eq!(w.counters.reopens, 0);
    }

    #[test]
    fn after_an_io_error_the_database_is_reopened_with_backoff_and_writes_resume() {
        let t0 = Instant::now();
        let mut w = writer(
            Fake {
                fail_commits: 1,
                needs_reopen: true,
                fail_opens: 2,
                ..Fake::default()
            },
            t0,
        );
        let e = w.update(snapshot(1), t0).unwrap_err();
        assert!(e.contains("Previous I/O error"), "{e}");
        assert!(!w.backend().open, "closed after the failed commit");
        // Within the backoff: no re-open, a clear error.
        let e = w.flush(t0 + FIRST_BACKOFF / 2).unwrap_err();
        assert!(e.contains("re-opened in"), "{e}");
        assert_eq!(w.backend().opens, 0);
        // The backoff over: a re-open that fails doubles the next wait.
        let t1 = t0 + FIRST_BACKOFF;
        assert!(w.flush(t1).unwrap_err().contains("cannot re-open"));
        assert!(w.flush(t1 + FIRST_BACKOFF).is_err(), "still backing off");
        assert_eq!(w.backend().opens, 1);
        let t2 = t1 + FIRST_BACKOFF * 2;
        assert!(w.flush(t2).is_err());
        assert_eq!(w.backend().opens, 2);
        // The disk has space again: the third re-open works and the write with it.
        let t3 = t2 + FIRST_BACKOFF * 4;
        w.update(snapshot(2), t3).unwrap();
        assert!(w.failing().is_none());
        assert_eq!(
            w.backend().committed.as_ref().unwrap().ipam_snapshot,
            Some(vec![2])
        );
        assert_eq!(
            w.counters,
            Counters {
                write_failures: 5,
                reopens: 1,
                reopen_failures: 2
            }
        );
        // The backoff starts over after a success.
        w.backend().fail_commits = 1;
        assert!(w.flush(t3).is_err());
        w.flush(t3 + FIRST_BACKOFF).unwrap();
    }

    #[test]
    fn the_backoff_is_capped() {
        let t0 = Instant::now();
        let mut w = writer(
            Fake {
                fail_commits: 1,
                needs_reopen: true,
                fail_opens: u32::MAX,
                ..Fake::default()
            },
            t0,
        );
        let mut now = t0;
        let _ = w.flush(now);
        for _ in 0..20 {
            now += MAX_BACKOFF;
            let _ = w.flush(now);
        }
        assert_eq!(w.backend().opens, 20, "one re-open per MAX_BACKOFF at most");
        assert_eq!(w.failing().map(|f| f.since), Some(t0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A write; the backend fails the next `fails` commits (closing on failure when
        /// `reopen`) and the next `open_fails` re-opens.
        Write {
            fails: u32,
            reopen: bool,
            open_fails: u32,
        },
        Wait(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u32..3, any::<bool>(), 0u32..3).prop_map(|(fails, reopen, open_fails)| Op::Write {
                fails,
                reopen,
                open_fails
            }),
            (0u64..3000).prop_map(Op::Wait),
        ]
    }

    proptest::proptest! {
        /// Whatever fails and whenever: a write that returns Ok put everything wanted on disk,
        /// the failure is reported exactly while the last write failed, and re-opens are never
        /// closer together than the first backoff.
        #[test]
        fn a_successful_write_means_everything_is_on_disk(ops in proptest::collection::vec(op(), 1..40)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut w = writer(Fake::default(), t0);
            let mut opens_seen = 0;
            let mut last_open: Option<Instant> = None;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                    Op::Write { fails, reopen, open_fails } => {
                        let b = w.backend();
                        b.fail_commits = fails;
                        b.needs_reopen = reopen;
                        b.fail_opens = open_fails;
                        let result = w.update(|c| c.ipam_snapshot = Some(vec![n as u8]), now);
                        let opens = w.backend().opens;
                        if opens > opens_seen {
                            if let Some(at) = last_open {
                                proptest::prop_assert!(now >= at + FIRST_BACKOFF);
                            }
                            last_open = Some(now);
                            opens_seen = opens;
                        }
                        proptest::prop_assert_eq!(result.is_ok(), w.failing().is_none());
                        if result.is_ok() {
                            let wanted = w.content().clone();
                            proptest::prop_assert_eq!(w.backend().committed.clone(), Some(wanted));
                        }
                    }
                }
            }
        }
    }
}
