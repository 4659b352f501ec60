//! Anti-replay window over datagram counters.
//!
//! A [`ReplayWindow`] accepts each counter at most once and tolerates reordering up to
//! [`WINDOW`] counters behind the highest one accepted: UDP may reorder, but a datagram that
//! late is dropped as [`ReplayError::TooOld`]. The state is a ring bitmap indexed by
//! `counter % WINDOW`, so checking and recording are O(1) and never allocate; only a jump
//! ahead clears the bits that fall out of the window.

/// How many counters, ending at the highest accepted one, the window remembers.
pub const WINDOW: u64 = 8192;

const WORD_BITS: usize = u64::BITS as usize;
const WORDS: usize = WINDOW as usize / WORD_BITS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("replayed packet")]
    Duplicate,
    #[error("packet older than the replay window")]
    TooOld,
}

/// Sliding anti-replay window: accepts counters in `highest - (WINDOW - 1) ..`, each once.
///
/// Call [`accept`](Self::accept) only after the datagram carrying the counter authenticated.
/// Otherwise a forger could move the window ahead (making genuine datagrams "too old") or mark
/// counters as seen (making genuine datagrams "duplicates"). [`check`](Self::check) changes
/// nothing, so it may run before authentication to drop replays without decrypting them.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Bit `c % WINDOW` is set iff counter `c`, within the window, was accepted.
    seen: [u64; WORDS],
    /// `None` until the first counter is accepted, so that counter 0 can be the first.
    highest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            seen: [0; WORDS],
            highest: None,
        }
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `counter` would be accepted now.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (word, mask) = Self::slot(counter);
        if self.seen[word] & mask != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Checks `counter` and records it as seen. Call only once the datagram authenticated (see
    /// the type's docs).
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                // The slots of the counters we skip over held counters that now fall out of
                // the window; clear them so they read as unseen for their new occupants.
                self.clear_slots(highest.wrapping_add(1), counter - highest);
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (word, mask) = Self::slot(counter);
        self.seen[word] |= mask;
        Ok(())
    }

    /// Clears the slots of `count` consecutive counters starting at `first`.
    fn clear_slots(&mut self, first: u64, count: u64) {
        if count >= WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        // Both below WINDOW, hence fit usize.
        let mut position = (first % WINDOW) as usize;
        let mut remaining = count as usize;
        while remaining > 0 {
            let word = position / WORD_BITS % WORDS;
            let bit = position % WORD_BITS;
            let run = remaining.min(WORD_BITS - bit);
            let mask = if run == WORD_BITS {
                u64::MAX
            } else {
                ((1u64 << run) - 1) << bit
            };
            self.seen[word] &= !mask;
            position = (position + run) % WINDOW as usize;
            remaining -= run;
        }
    }

    /// The bitmap word and bit of `counter`'s slot; the word index is always below `WORDS`.
    fn slot(counter: u64) -> (usize, u64) {
        let position = counter % WINDOW;
        let word = (position / WORD_BITS as u64) as usize % WORDS;
        (word, 1u64 << (position % WORD_BITS as u64))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_in_order_counters_starting_at_zero() {
        let mut window = ReplayWindow::new();
        for counter in 0..20_000 {
            assert_eq!(window.accept(counter), Ok(()));
        }
        assert_eq!(window.highest(), Some(19_999));
    }

    #[test]
    fn rejects_duplicates() {
        let mut window = ReplayWindow::new();
        window.accept(0).unwrap();
        assert_eq!(window.accept(0), Err(ReplayError::Duplicate));
        window.accept(5).unwrap();
        assert_eq!(window.check(5), Err(ReplayError::Duplicate));
        assert_eq!(window.accept(5), Err(ReplayError::Duplicate));
        assert_eq!(window.accept(0), Err(ReplayError::Duplicate));
    }

    #[test]
    fn accepts_reordering_inside_the_window_once() {
        let mut window = ReplayWindow::new();
        for counter in [10, 3, 7, 0, 9, 1, 8] {
            assert_eq!(window.accept(counter), Ok(()), "counter {counter}");
        }
        for counter in [10, 3, 7, 0, 9, 1, 8] {
            assert_eq!(window.accept(counter), Err(ReplayError::Duplicate));
        }
        for counter in [2, 4, 5, 6] {
            assert_eq!(window.accept(counter), Ok(()));
        }
    }

    #[test]
    fn window_edges_are_exact() {
        let mut window = ReplayWindow::new();
        window.accept(100_000).unwrap();
        assert_eq!(window.check(100_000 - (WINDOW - 1)), Ok(()));
        assert_eq!(window.check(100_000 - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(window.accept(100_000 - (WINDOW - 1)), Ok(()));
        assert_eq!(window.accept(100_000 - WINDOW), Err(ReplayError::TooOld));
        // Moving ahead by one drops the oldest slot, which must not read as a duplicate for
        // the counter that now occupies it.
        window.accept(100_001).unwrap();
        assert_eq!(
            window.check(100_000 - (WINDOW - 1)),
            Err(ReplayError::TooOld)
        );
        assert_eq!(window.check(100_001 - (WINDOW - 1)), Ok(()));
    }

    #[test]
    fn far_jumps_clear_the_window_and_old_counters_stay_rejected() {
        let mut window = ReplayWindow::new();
        for counter in 0..100 {
            window.accept(counter).unwrap();
        }
        let far = 1_000_000;
        window.accept(far).unwrap();
        for counter in [0, 50, 99, far - WINDOW] {
            assert_eq!(window.accept(counter), Err(ReplayError::TooOld));
        }
        // Slots shared with old counters (same residue) read as unseen.
        for counter in [far - 1, far - 8000, far - (WINDOW - 1)] {
            assert_eq!(window.accept(counter), Ok(()), "counter {counter}");
        }
        assert_eq!(window.accept(far), Err(ReplayError::Duplicate));
    }

    #[test]
    fn jumps_shorter_than_the_window_clear_only_what_they_skip() {
        let mut window = ReplayWindow::new();
        for counter in 0..WINDOW {
            window.accept(counter).unwrap();
        }
        let ahead = WINDOW + 100;
        window.accept(ahead).unwrap();
        for counter in WINDOW..ahead {
            assert_eq!(window.accept(counter), Ok(()), "counter {counter}");
        }
        for counter in ahead - (WINDOW - 1)..WINDOW {
            assert_eq!(window.check(counter), Err(ReplayError::Duplicate));
        }
        assert_eq!(window.check(ahead - WINDOW), Err(ReplayError::TooOld));
    }

    #[test]
    fn handles_the_top_of_the_counter_space() {
        let mut window = ReplayWindow::new();
        window.accept(u64::MAX).unwrap();
        assert_eq!(window.accept(u64::MAX), Err(ReplayError::Duplicate));
        assert_eq!(window.accept(u64::MAX - 1), Ok(()));
        assert_eq!(window.accept(u64::MAX - (WINDOW - 1)), Ok(()));
        assert_eq!(window.accept(u64::MAX - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(window.accept(0), Err(ReplayError::TooOld));

        let mut window = ReplayWindow::new();
        window.accept(u64::MAX - 3).unwrap();
        window.accept(u64::MAX).unwrap();
        assert_eq!(window.accept(u64::MAX - 2), Ok(()));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(ReplayError::Duplicate.to_string(), "replayed packet");
        assert_eq!(
            ReplayError::TooOld.to_string(),
            "packet older than the replay window"
        );
    }

    /// The obvious implementation: remember every counter ever accepted.
    #[derive(Default)]
    struct Reference {
        accepted: BTreeSet<u64>,
    }

    impl Reference {
        fn check(&self, counter: u64) -> Result<(), ReplayError> {
            match self.accepted.last() {
                Some(&highest) if counter <= highest && highest - counter >= WINDOW => {
                    Err(ReplayError::TooOld)
                }
                _ if self.accepted.contains(&counter) => Err(ReplayError::Duplicate),
                _ => Ok(()),
            }
        }

        fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
            self.check(counter)?;
            self.accepted.insert(counter);
            Ok(())
        }
    }

    /// Counters that mostly stay near each other (so reordering, duplicates and the window
    /// edges get exercised), with occasional far jumps and values at the top of the range.
    fn counters() -> impl Strategy<Value = Vec<u64>> {
        let counter = prop_oneof![
            6 => 0..3 * WINDOW,
            2 => WINDOW - 64..WINDOW + 64,
            1 => any::<u64>(),
            1 => u64::MAX - 2 * WINDOW..=u64::MAX,
        ];
        prop::collection::vec(counter, 0..600)
    }

    proptest! {
        #[test]
        fn matches_the_reference(counters in counters()) {
            let mut window = ReplayWindow::new();
            let mut reference = Reference::default();
            for counter in counters {
                prop_assert_eq!(window.check(counter), reference.check(counter));
                prop_assert_eq!(window.accept(counter), reference.accept(counter));
                prop_assert_eq!(window.highest(), reference.accepted.last().copied());
            }
        }

        #[test]
        fn matches_the_reference_walking_forward(
            steps in prop::collection::vec((0u64..300, 0u64..WINDOW + 100), 0..1000)
        ) {
            // A sender moving ahead in jumps of up to a few words, each datagram followed by a
            // straggler from anywhere in (or just beyond) the window: the window fills densely
            // and every clearing path (partial and whole words, wrapping) gets probed.
            let mut window = ReplayWindow::new();
            let mut reference = Reference::default();
            let mut position = 2 * WINDOW;
            for (jump, back) in steps {
                position += jump;
                prop_assert_eq!(window.accept(position), reference.accept(position));
                let straggler = position - back;
                prop_assert_eq!(window.accept(straggler), reference.accept(straggler));
            }
        }
    }
}
